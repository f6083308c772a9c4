//! Multi-factor authentication: TOTP and phone factors, challenges, aal2 sessions, sign-in
//! tickets and recovery codes.

use crate::autonomous::{self, Action, Target};
use crate::outbox::{self, lock_phone, Issued};
use crate::request::{self, CurrentSession};
use crate::session::USER_BLOCKED;
use crate::{audit, config, db, session};
use pg_otp_auth_core::clock::unix_seconds;
use pg_otp_auth_core::config::Config;
use pg_otp_auth_core::error::{required, AuthError, Result};
use pg_otp_auth_core::mfa::{
    check_friendly_name, check_issuer, format_ticket, new_recovery_codes, normalize_recovery_code,
    parse_ticket,
};
use pg_otp_auth_core::session::refresh_token_hash;
use pg_otp_auth_core::totp::{self, Algorithm, Params};
use pg_otp_auth_core::{otp, phone, ratelimit};
use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

const CHALLENGE_PURPOSE: &str = "mfa_challenge";
const RECOVERY_PURPOSE: &str = "recovery";
const TOTP_SECRET_BYTES: usize = 20;

pub(crate) fn factor_not_found() -> AuthError {
    AuthError::new(404, "mfa-factor-not-found", "No such factor.")
}

fn invalid_totp() -> AuthError {
    AuthError::new(401, "invalid-totp", "The code is invalid or has expired.")
}

pub(crate) fn insufficient_aal(message: &str) -> AuthError {
    AuthError::new(403, "insufficient-aal", message)
}

fn totp_already_active() -> AuthError {
    AuthError::new(
        409,
        "totp-already-active",
        "A TOTP factor is already active.",
    )
}

fn invalid_ticket() -> AuthError {
    AuthError::new(
        401,
        "invalid-ticket",
        "The MFA ticket is invalid or has expired.",
    )
}

/// An audit row about the user's MFA.
fn audit(event: &str, user_id: &str, ip: Option<&str>, detail: Value) -> Result<()> {
    audit::record(event, Some(user_id), None, ip, detail)
}

#[derive(Deserialize)]
struct Factor {
    id: String,
    factor_type: String,
    status: String,
    secret: Option<String>,
    algorithm: String,
    digits: u32,
    period: u32,
    last_used_step: Option<i64>,
    phone: Option<String>,
}

impl Factor {
    fn params(&self) -> Result<Params> {
        Ok(Params {
            digits: self.digits,
            period: self.period,
            algorithm: Algorithm::parse(&self.algorithm)?,
        })
    }

    fn secret(&self) -> Vec<u8> {
        self.secret.as_deref().map(db::from_hex).unwrap_or_default()
    }

    /// The step `code` matches if it is newer than the last accepted one (replay protection).
    fn fresh_totp_step(&self, code: &str, now: i64, window: u32) -> Result<Option<u64>> {
        let step = totp::verify(&self.secret(), code, now, self.params()?, window)?;
        Ok(step.filter(|s| self.last_used_step.is_none_or(|last| (*s as i64) > last)))
    }
}

const FACTOR_JSON: &str = "jsonb_build_object(
    'id', f.id, 'factor_type', f.factor_type, 'status', f.status,
    'secret', encode(f.secret, 'hex'), 'algorithm', f.algorithm, 'digits', f.digits,
    'period', f.period, 'last_used_step', f.last_used_step, 'phone', f.phone)";

fn my_factor(me: &CurrentSession, factor_id: &str) -> Result<Factor> {
    db::row_as(
        &format!("SELECT {FACTOR_JSON} FROM auth.mfa_factors f WHERE f.id = $1::uuid AND f.user_id = $2::uuid"),
        &[db::text(factor_id), db::text(&me.user_id)],
    )?
    .ok_or_else(factor_not_found)
}

fn verified_totp_factor(user_id: &str) -> Result<Option<Factor>> {
    db::row_as(
        &format!(
            "SELECT {FACTOR_JSON} FROM auth.mfa_factors f
             WHERE f.user_id = $1::uuid AND f.factor_type = 'totp' AND f.status = 'verified'
             ORDER BY f.created_at LIMIT 1"
        ),
        &[db::text(user_id)],
    )
}

/// Bounds guesses per factor across all its challenges and tickets: a fresh challenge per guess
/// (as mfa_challenge_and_verify makes) must not reset the count.
fn check_factor_failures(cfg: &Config, user_id: &str, factor_id: &str) -> Result<()> {
    // Newest first, without an aggregate (see outbox::Counter::rows_sql).
    let newest_first: Vec<f64> = db::row_as(
        "SELECT to_jsonb(ARRAY(
             SELECT extract(epoch FROM clock_timestamp() - created_at)::float8 FROM auth.audit_log
             WHERE user_id = $1::uuid AND event IN ('mfa_verify_failed', 'mfa_signin_failed')
               AND detail ->> 'factor_id' = $2
               AND created_at > clock_timestamp() - make_interval(secs => $3)
             ORDER BY created_at DESC LIMIT $4))",
        &[
            db::text(user_id),
            db::text(factor_id),
            cfg.mfa_failure_window.into(),
            cfg.mfa_failure_limit.into(),
        ],
    )?
    .unwrap_or_default();
    let ages: Vec<f64> = newest_first.into_iter().rev().collect();
    match ratelimit::sliding_window_retry_after(
        &ages,
        cfg.mfa_failure_limit,
        cfg.mfa_failure_window as f64,
    ) {
        Some(wait) => Err(AuthError::rate_limited(
            "too-many-attempts",
            "Too many wrong codes for this factor.",
            wait,
        )),
        None => Ok(()),
    }
}

/// Records that `factor` accepted `step`; false if a concurrent call got there first.
fn consume_totp_step(factor_id: &str, step: u64) -> Result<bool> {
    Ok(db::row(
        "UPDATE auth.mfa_factors SET last_used_step = $2, updated_at = now()
         WHERE id = $1::uuid AND (last_used_step IS NULL OR last_used_step < $2)
         RETURNING to_jsonb(true)",
        &[db::text(factor_id), (step as i64).into()],
    )?
    .is_some())
}

fn enroll(
    factor_type: Option<&str>,
    friendly_name: Option<&str>,
    phone_number: Option<&str>,
    issuer: Option<&str>,
) -> Result<Value> {
    let factor_type = required(factor_type, "factor_type")?;
    if !matches!(factor_type, "totp" | "phone") {
        return Err(AuthError::new(
            400,
            "mfa-type-not-found",
            "factor_type must be totp or phone.",
        ));
    }
    if let Some(n) = friendly_name {
        check_friendly_name(n)?;
    }
    let phone_number = match (factor_type, phone_number) {
        ("phone", Some(p)) => Some(phone::normalize(p)?),
        ("phone", None) => return Err(AuthError::missing("phone")),
        (_, Some(_)) => {
            return Err(AuthError::invalid_request(
                "phone is only for phone factors.",
            ))
        }
        (_, None) => None,
    };
    if factor_type == "phone" && issuer.is_some() {
        return Err(AuthError::invalid_request(
            "issuer is only for TOTP factors.",
        ));
    }
    let me = request::current_session()?;
    let cfg = config::load()?;
    let issuer = issuer.unwrap_or(&cfg.mfa_totp_issuer).to_string();
    check_issuer(&issuer)?;
    db::lock("user", &me.user_id)?;
    // Enrollments abandoned for a day make room (and free their names) for new ones.
    db::run(
        "DELETE FROM auth.mfa_factors WHERE user_id = $1::uuid AND status = 'unverified'
           AND created_at < now() - interval '1 day'",
        &[db::text(&me.user_id)],
    )?;
    #[derive(Deserialize)]
    struct Existing {
        count: i64,
        any_verified: bool,
        totp_active: bool,
        name_taken: bool,
        account: String,
    }
    let e: Existing = db::row_as(
        "SELECT jsonb_build_object(
             'count', (SELECT count(*) FROM auth.mfa_factors WHERE user_id = u.id),
             'any_verified', EXISTS (SELECT 1 FROM auth.mfa_factors WHERE user_id = u.id
                                     AND status = 'verified'),
             'totp_active', EXISTS (SELECT 1 FROM auth.mfa_factors WHERE user_id = u.id
                                    AND factor_type = 'totp' AND status = 'verified'),
             'name_taken', EXISTS (SELECT 1 FROM auth.mfa_factors WHERE user_id = u.id
                                   AND friendly_name = $2),
             'account', coalesce(u.phone, u.id::text))
         FROM auth.users u WHERE u.id = $1::uuid",
        &[db::text(&me.user_id), db::opt_text(friendly_name)],
    )?
    .ok_or_else(AuthError::not_authenticated)?;
    // Otherwise a stolen aal1 session could add its own factor and verify its way to aal2.
    if e.any_verified && !me.is_aal2() {
        return Err(insufficient_aal(
            "Adding a factor when one is verified needs an aal2 session.",
        ));
    }
    if e.count >= cfg.mfa_max_factors {
        return Err(AuthError::new(
            409,
            "too-many-factors",
            "The maximum number of factors is enrolled.",
        ));
    }
    if e.name_taken {
        return Err(AuthError::new(
            409,
            "factor-name-conflict",
            "A factor with this friendly name exists.",
        ));
    }
    let answer = if factor_type == "totp" {
        if e.totp_active {
            return Err(totp_already_active());
        }
        let mut secret = [0u8; TOTP_SECRET_BYTES];
        otp::random_bytes(&mut secret)?;
        let secret_b32 = totp::base32_encode(&secret);
        let uri = totp::key_uri(&issuer, &e.account, &secret_b32, Params::default());
        let id = insert_factor(&me, "totp", friendly_name, Some(&secret), None)?;
        json!({"id": id, "type": "totp", "friendly_name": friendly_name,
               "totp": {"qr_code": totp::qr_svg(&uri)?, "secret": secret_b32, "uri": uri}})
    } else {
        let id = insert_factor(&me, "phone", friendly_name, None, phone_number.as_deref())?;
        json!({"id": id, "type": "phone", "friendly_name": friendly_name, "phone": phone_number})
    };
    audit(
        "mfa_enrolled",
        &me.user_id,
        request::client_ip(&cfg)?.as_deref(),
        json!({"factor_id": answer["id"], "factor_type": factor_type}),
    )?;
    Ok(answer)
}

fn insert_factor(
    me: &CurrentSession,
    factor_type: &str,
    friendly_name: Option<&str>,
    secret: Option<&[u8]>,
    phone_number: Option<&str>,
) -> Result<Value> {
    db::row(
        "INSERT INTO auth.mfa_factors (user_id, factor_type, friendly_name, secret, phone)
         VALUES ($1::uuid, $2, $3, $4, $5) RETURNING to_jsonb(id)",
        &[
            db::text(&me.user_id),
            db::text(factor_type),
            db::opt_text(friendly_name),
            secret.map(<[u8]>::to_vec).into(),
            db::opt_text(phone_number),
        ],
    )?
    .ok_or_else(|| AuthError::internal("The factor could not be stored."))
}

fn challenge(factor_id: Option<Uuid>, channel: Option<&str>) -> Result<Value> {
    let factor_id = required(factor_id, "factor_id")?.to_string();
    let channel = outbox::channel(required(channel, "channel")?)?;
    let me = request::current_session()?;
    let cfg = config::load()?;
    let factor = my_factor(&me, &factor_id)?;
    if factor.status != "verified" {
        // Refused before a code is sent: the caller could not use it.
        check_setup_allowed(&me, &factor)?;
    }
    let ip = request::client_ip(&cfg)?;
    let issued = start_challenge(&cfg, &me, &factor, channel, ip.as_deref())?;
    Ok(json!({"id": issued.id, "type": factor.factor_type, "expires_at": issued.expires_at}))
}

fn start_challenge(
    cfg: &Config,
    me: &CurrentSession,
    factor: &Factor,
    channel: &str,
    ip: Option<&str>,
) -> Result<Issued> {
    let mut code = None;
    let mut code_hash: Option<Vec<u8>> = None;
    if let Some(number) = factor.phone.as_deref() {
        // Phone challenges are sends like sign-in codes: same lock, cooldown and limits.
        lock_phone(number)?;
        outbox::admit(cfg, number, ip)?;
        outbox::record_send(cfg, number, ip, channel, true, None)?;
        let c = outbox::new_code(cfg, number)?;
        let pepper = config::secret("otp_pepper")?;
        code_hash = Some(otp::hash_code(
            &pepper,
            CHALLENGE_PURPOSE,
            &factor.id,
            &c.value,
        ));
        code = Some(c);
    }
    let issued: Issued = db::row_as(
        "INSERT INTO auth.mfa_challenges (factor_id, session_id, code_hash, ip, expires_at)
         VALUES ($1::uuid, $2::uuid, $3, $4::inet, now() + make_interval(secs => $5))
         RETURNING jsonb_build_object('id', id, 'expires_at', expires_at)",
        &[
            db::text(&factor.id),
            db::text(&me.session_id),
            code_hash.into(),
            db::opt_text(ip),
            cfg.mfa_challenge_ttl.into(),
        ],
    )?
    .ok_or_else(|| AuthError::internal("The challenge could not be stored."))?;
    if let (Some(number), Some(code)) = (factor.phone.as_deref(), code) {
        let locale = db::row(
            "SELECT to_jsonb(locale) FROM auth.users WHERE id = $1::uuid",
            &[db::text(&me.user_id)],
        )?;
        outbox::queue_code(
            cfg,
            &code,
            &outbox::Message {
                phone: number,
                channel,
                captcha_token: None,
                purpose: CHALLENGE_PURPOSE,
                user_id: &me.user_id,
                locale: locale.as_ref().and_then(Value::as_str),
                ttl_seconds: cfg.mfa_challenge_ttl,
                expires_at: issued.expires_at.as_str().unwrap_or_default(),
            },
        )?;
    }
    Ok(issued)
}

#[derive(Deserialize)]
struct ChallengeRow {
    id: String,
    session_id: String,
    code_hash: Option<String>,
    attempts: i64,
    live: bool,
}

fn verify(
    factor_id: Option<Uuid>,
    challenge_id: Option<Uuid>,
    code: Option<&str>,
) -> Result<Value> {
    let factor_id = required(factor_id, "factor_id")?.to_string();
    let challenge_id = required(challenge_id, "challenge_id")?.to_string();
    let code = required(code, "code")?;
    autonomous::require_own_transaction()?;
    let me = request::current_session()?;
    let cfg = config::load()?;
    let factor = my_factor(&me, &factor_id)?;
    let ip = request::client_ip(&cfg)?;
    verify_challenge(
        &cfg,
        &me,
        &factor,
        &challenge_id,
        false,
        code,
        ip.as_deref(),
    )
}

/// `made_in_this_call`: the challenge was created by this same call (mfa_challenge_and_verify),
/// so the attempt worker cannot see it and only the factor-level record binds.
fn verify_challenge(
    cfg: &Config,
    me: &CurrentSession,
    factor: &Factor,
    challenge_id: &str,
    made_in_this_call: bool,
    code: &str,
    ip: Option<&str>,
) -> Result<Value> {
    let is_totp = factor.factor_type == "totp";
    otp::check_format(
        code,
        if is_totp {
            factor.digits as usize
        } else {
            cfg.otp_length
        },
    )?;
    // One verification at a time per factor, so attempt counts and TOTP steps are exact. A
    // factor's setup is also serialised per user, as enrollment is: it depends on the others.
    if factor.status != "verified" {
        db::lock("user", &me.user_id)?;
    }
    db::lock("factor", &factor.id)?;
    let factor = my_factor(me, &factor.id)?;
    let completes_setup = factor.status != "verified";
    if completes_setup {
        check_setup_allowed(me, &factor)?;
    }
    check_factor_failures(cfg, &me.user_id, &factor.id)?;
    let c: ChallengeRow = db::row_as(
        "SELECT jsonb_build_object('id', id, 'session_id', session_id,
                                   'code_hash', encode(code_hash, 'hex'), 'attempts', attempts,
                                   'live', verified_at IS NULL AND expires_at > clock_timestamp())
         FROM auth.mfa_challenges WHERE id = $1::uuid AND factor_id = $2::uuid",
        &[db::text(challenge_id), db::text(&factor.id)],
    )?
    .ok_or_else(|| AuthError::new(404, "mfa-challenge-not-found", "No such challenge."))?;
    let usable = c.live && c.attempts < cfg.mfa_max_attempts && c.session_id == me.session_id;
    let wrong = || {
        if is_totp {
            invalid_totp()
        } else {
            AuthError::invalid_otp()
        }
    };
    if !usable {
        return Err(wrong());
    }
    let step = if is_totp {
        factor.fresh_totp_step(code, unix_seconds(), cfg.totp_window)?
    } else {
        let pepper = config::secret("otp_pepper")?;
        let stored = c.code_hash.as_deref().map(db::from_hex).unwrap_or_default();
        otp::verify_code(&pepper, CHALLENGE_PURPOSE, &factor.id, code, &stored).then_some(0)
    };
    autonomous::record(&Action::Attempt {
        audit_id: otp::time_ordered_uuid_text(),
        target: Target::Challenge {
            challenge_id: (!made_in_this_call).then(|| c.id.clone()),
            factor_id: factor.id.clone(),
        },
        failed: step.is_none(),
        ip: ip.map(str::to_string),
    })?;
    let Some(step) = step else {
        return Err(wrong());
    };
    let consumed = db::row(
        "UPDATE auth.mfa_challenges SET verified_at = now()
         WHERE id = $1::uuid AND verified_at IS NULL RETURNING to_jsonb(true)",
        &[db::text(&c.id)],
    )?;
    if consumed.is_none() || (is_totp && !consume_totp_step(&factor.id, step)?) {
        return Err(wrong());
    }
    if completes_setup {
        // Enrollments left unverified (perhaps planted by another session) cannot outlive setup.
        db::run(
            "UPDATE auth.mfa_factors SET status = 'verified', updated_at = now() WHERE id = $1::uuid",
            &[db::text(&factor.id)],
        )?;
        db::run(
            "DELETE FROM auth.mfa_factors
             WHERE user_id = $1::uuid AND status = 'unverified' AND id <> $2::uuid",
            &[db::text(&me.user_id), db::text(&factor.id)],
        )?;
    }
    let raised = raise_to_aal2(me, if is_totp { "totp" } else { "mfa/phone" })?;
    audit(
        "mfa_verified",
        &me.user_id,
        ip,
        json!({"factor_id": factor.id, "factor_type": factor.factor_type,
               "completed_setup": completes_setup, "sessions_revoked": raised}),
    )?;
    session::issue(cfg, &me.session_id, None)
}

/// Verifying a factor that is not verified yet completes its setup. Beside a verified factor
/// that adds a second one, which only aal2 may do (as in enroll): otherwise a factor planted by
/// an aal1 session before MFA was set up would later raise that session to aal2. And at most one
/// TOTP factor is verified per user (the schema holds this too).
fn check_setup_allowed(me: &CurrentSession, factor: &Factor) -> Result<()> {
    #[derive(Deserialize)]
    struct Verified {
        any: bool,
        totp: bool,
    }
    let v: Verified = db::row_as(
        "SELECT jsonb_build_object(
             'any', EXISTS (SELECT 1 FROM auth.mfa_factors
                            WHERE user_id = $1::uuid AND status = 'verified'),
             'totp', EXISTS (SELECT 1 FROM auth.mfa_factors
                             WHERE user_id = $1::uuid AND status = 'verified' AND factor_type = 'totp'))",
        &[db::text(&me.user_id)],
    )?
    .ok_or_else(|| AuthError::internal("The factors could not be read."))?;
    if v.any && !me.is_aal2() {
        return Err(insufficient_aal(
            "Verifying a new factor when one is verified needs an aal2 session.",
        ));
    }
    if factor.factor_type == "totp" && v.totp {
        return Err(totp_already_active());
    }
    Ok(())
}

/// Raises the caller's session to aal2 after a second factor passed. Every credential issued
/// before the rise is replaced, as GoTrue does: the session's earlier refresh tokens are deleted
/// (only the one issued next is valid, so a token stolen at aal1 never mints aal2 access tokens)
/// and the user's other sessions below aal2 are revoked. Returns how many sessions were revoked.
fn raise_to_aal2(me: &CurrentSession, method: &str) -> Result<i64> {
    // A session rising from aal1 loses its earlier refresh tokens, and the user's other
    // sessions below aal2 are revoked.
    let rising = me.aal != "aal2";
    Ok(db::row(
        "WITH raised AS (
             UPDATE auth.sessions SET aal = 'aal2',
                 amr = amr || jsonb_build_array(jsonb_build_object(
                     'method', $3::text, 'timestamp', floor(extract(epoch FROM now()))::bigint))
             WHERE id = $2::uuid),
         earlier_tokens AS (
             DELETE FROM auth.refresh_tokens WHERE $4 AND session_id = $2::uuid),
         revoked AS (
             UPDATE auth.sessions SET revoked_at = now(), revoked_reason = 'mfa_upgrade'
             WHERE $4 AND user_id = $1::uuid AND id <> $2::uuid AND aal <> 'aal2'
               AND revoked_at IS NULL
             RETURNING 1)
         SELECT to_jsonb(count(*)) FROM revoked",
        &[
            db::text(&me.user_id),
            db::text(&me.session_id),
            db::text(method),
            rising.into(),
        ],
    )?
    .and_then(|v| v.as_i64())
    .unwrap_or(0))
}

fn challenge_and_verify(factor_id: Option<Uuid>, code: Option<&str>) -> Result<Value> {
    let factor_id = required(factor_id, "factor_id")?.to_string();
    let code = required(code, "code")?;
    autonomous::require_own_transaction()?;
    let me = request::current_session()?;
    let cfg = config::load()?;
    let factor = my_factor(&me, &factor_id)?;
    if factor.factor_type != "totp" {
        return Err(AuthError::invalid_request(
            "Phone factors need mfa_challenge first, to send the code.",
        ));
    }
    let ip = request::client_ip(&cfg)?;
    let issued = start_challenge(&cfg, &me, &factor, "sms", ip.as_deref())?;
    let id = issued.id.as_str().unwrap_or_default().to_string();
    verify_challenge(&cfg, &me, &factor, &id, true, code, ip.as_deref())
}

fn unenroll(factor_id: Option<Uuid>) -> Result<Value> {
    let factor_id = required(factor_id, "factor_id")?.to_string();
    let me = request::current_session()?;
    let factor = my_factor(&me, &factor_id)?;
    if factor.status == "verified" && !me.is_aal2() {
        return Err(insufficient_aal(
            "Removing a verified factor needs an aal2 session.",
        ));
    }
    db::run(
        "DELETE FROM auth.mfa_factors WHERE id = $1::uuid",
        &[db::text(&factor.id)],
    )?;
    audit(
        "mfa_unenrolled",
        &me.user_id,
        request::client_ip(&*config::load()?)?.as_deref(),
        json!({"factor_id": factor.id, "factor_type": factor.factor_type}),
    )?;
    Ok(json!({"id": factor.id}))
}

fn list_factors() -> Result<Value> {
    let me = request::current_session()?;
    let all = db::rows(
        "SELECT jsonb_build_object('id', id, 'type', factor_type, 'friendly_name', friendly_name,
                                   'status', status, 'created_at', created_at, 'updated_at', updated_at)
         FROM auth.mfa_factors WHERE user_id = $1::uuid ORDER BY created_at, id",
        &[db::text(&me.user_id)],
    )?;
    let verified = |t: &str| -> Vec<Value> {
        all.iter()
            .filter(|f| f["type"] == t && f["status"] == "verified")
            .cloned()
            .collect()
    };
    Ok(json!({"all": all, "totp": verified("totp"), "phone": verified("phone")}))
}

fn assurance_level() -> Result<Value> {
    let me = request::current_session()?;
    let has_verified = db::row(
        "SELECT to_jsonb(EXISTS (SELECT 1 FROM auth.mfa_factors
                                 WHERE user_id = $1::uuid AND status = 'verified'))",
        &[db::text(&me.user_id)],
    )? == Some(Value::Bool(true));
    let current = me.effective_aal();
    Ok(json!({
        "current_level": current,
        "next_level": if has_verified { "aal2" } else { current },
        "current_authentication_methods": me.amr,
    }))
}

/// Called by verify_sms_otp when the user owes a second factor: a ticket instead of a session.
/// A sign-in ticket for a user whose sign-in needs a second factor (`mfa_signin_requires_totp`
/// and a verified TOTP factor): the session is started only by `signin_mfa_*` with the ticket.
pub fn issue_ticket(cfg: &Config, user_id: &str, ip: Option<&str>) -> Result<Value> {
    let ticket = format_ticket(&otp::random_uuid()?);
    db::run(
        "INSERT INTO auth.mfa_tickets (ticket_hash, user_id, first_amr, ip, expires_at)
         VALUES ($1, $2::uuid,
                 jsonb_build_array(jsonb_build_object('method', 'sms',
                                   'timestamp', floor(extract(epoch FROM now()))::bigint)),
                 $3::inet, now() + make_interval(secs => $4))",
        &[
            refresh_token_hash(&ticket).into(),
            db::text(user_id),
            db::opt_text(ip),
            cfg.mfa_ticket_ttl.into(),
        ],
    )?;
    audit("mfa_ticket_issued", user_id, ip, json!({}))?;
    Ok(json!({"ticket": ticket}))
}

#[derive(Deserialize)]
struct Ticket {
    id: String,
    user_id: String,
    first_amr: Value,
    attempts: i64,
    live: bool,
    disabled: bool,
}

fn load_ticket(cfg: &Config, ticket: &str) -> Result<Ticket> {
    parse_ticket(ticket)?;
    let hash = refresh_token_hash(ticket);
    db::lock("ticket", &db::to_hex(&hash))?;
    let t: Ticket = db::row_as(
        &format!(
            "SELECT jsonb_build_object('id', t.id, 'user_id', t.user_id, 'first_amr', t.first_amr,
                                       'attempts', t.attempts, 'disabled', {USER_BLOCKED},
                                       'live', t.consumed_at IS NULL
                                               AND t.expires_at > clock_timestamp())
             FROM auth.mfa_tickets t JOIN auth.users u ON u.id = t.user_id
             WHERE t.ticket_hash = $1"
        ),
        &[hash.into()],
    )?
    .ok_or_else(invalid_ticket)?;
    if !t.live || t.attempts >= cfg.mfa_max_attempts {
        return Err(invalid_ticket());
    }
    Ok(t)
}

fn finish_ticket(cfg: &Config, t: &Ticket, method: &str, ip: Option<&str>) -> Result<Value> {
    let consumed = db::row(
        "UPDATE auth.mfa_tickets SET consumed_at = now()
         WHERE id = $1::uuid AND consumed_at IS NULL RETURNING to_jsonb(true)",
        &[db::text(&t.id)],
    )?;
    if consumed.is_none() {
        return Err(invalid_ticket());
    }
    if t.disabled {
        return Err(AuthError::disabled_user());
    }
    db::run(
        "UPDATE auth.users SET last_sign_in_at = now(), updated_at = now() WHERE id = $1::uuid",
        &[db::text(&t.user_id)],
    )?;
    let s = session::start_with(cfg, &t.user_id, "aal2", t.first_amr.clone(), method, ip)?;
    audit("sign_in", &t.user_id, ip, json!({"mfa": method}))?;
    Ok(json!({"session": s, "mfa": null}))
}

fn signin_totp(ticket: Option<&str>, code: Option<&str>) -> Result<Value> {
    let ticket = required(ticket, "ticket")?;
    let code = required(code, "otp")?;
    autonomous::require_own_transaction()?;
    let cfg = config::load()?;
    let t = load_ticket(&cfg, ticket)?;
    let factor = verified_totp_factor(&t.user_id)?.ok_or_else(invalid_ticket)?;
    otp::check_format(code, factor.digits as usize)?;
    db::lock("factor", &factor.id)?;
    check_factor_failures(&cfg, &t.user_id, &factor.id)?;
    let ip = request::client_ip(&cfg)?;
    let step = factor.fresh_totp_step(code, unix_seconds(), cfg.totp_window)?;
    autonomous::record(&Action::Attempt {
        audit_id: otp::time_ordered_uuid_text(),
        target: Target::Ticket {
            ticket_id: t.id.clone(),
            factor_id: Some(factor.id.clone()),
        },
        failed: step.is_none(),
        ip: ip.clone(),
    })?;
    let Some(step) = step else {
        return Err(invalid_totp());
    };
    if !consume_totp_step(&factor.id, step)? {
        return Err(invalid_totp());
    }
    finish_ticket(&cfg, &t, "totp", ip.as_deref())
}

fn signin_recovery(ticket: Option<&str>, code: Option<&str>) -> Result<Value> {
    let ticket = required(ticket, "ticket")?;
    let code = normalize_recovery_code(required(code, "code")?)?;
    autonomous::require_own_transaction()?;
    let cfg = config::load()?;
    let t = load_ticket(&cfg, ticket)?;
    let ip = request::client_ip(&cfg)?;
    let pepper = config::secret("otp_pepper")?;
    let presented = otp::hash_code(&pepper, RECOVERY_PURPOSE, &t.user_id, &code);
    let unused = db::rows(
        "SELECT jsonb_build_object('id', id, 'hash', encode(code_hash, 'hex'))
         FROM auth.mfa_recovery_codes WHERE user_id = $1::uuid AND used_at IS NULL",
        &[db::text(&t.user_id)],
    )?;
    // Compare against every unused code, in constant time each, whichever matches.
    let mut matched = None;
    for row in &unused {
        let stored = db::from_hex(row["hash"].as_str().unwrap_or_default());
        if stored.len() == presented.len() && bool::from(stored.ct_eq(&presented)) {
            matched = row["id"].as_str().map(str::to_string);
        }
    }
    autonomous::record(&Action::Attempt {
        audit_id: otp::time_ordered_uuid_text(),
        target: Target::Ticket {
            ticket_id: t.id.clone(),
            factor_id: None,
        },
        failed: matched.is_none(),
        ip: ip.clone(),
    })?;
    let spent = match matched {
        Some(id) => db::row(
            "UPDATE auth.mfa_recovery_codes SET used_at = now()
             WHERE id = $1::uuid AND used_at IS NULL RETURNING to_jsonb(true)",
            &[db::text(&id)],
        )?
        .is_some(),
        None => false,
    };
    if !spent {
        return Err(AuthError::new(
            401,
            "invalid-recovery-code",
            "The recovery code is invalid or already used.",
        ));
    }
    audit("recovery_code_used", &t.user_id, ip.as_deref(), json!({}))?;
    finish_ticket(&cfg, &t, "recovery", ip.as_deref())
}

fn generate_recovery_codes() -> Result<Value> {
    let me = request::current_session()?;
    if !me.is_aal2() {
        return Err(insufficient_aal("Recovery codes need an aal2 session."));
    }
    let pepper = config::secret("otp_pepper")?;
    let codes = new_recovery_codes()?;
    let hashes: Vec<Value> = codes
        .iter()
        .map(|c| {
            let h = otp::hash_code(&pepper, RECOVERY_PURPOSE, &me.user_id, &c.replace('-', ""));
            Value::String(db::to_hex(&h))
        })
        .collect();
    db::run(
        "DELETE FROM auth.mfa_recovery_codes WHERE user_id = $1::uuid",
        &[db::text(&me.user_id)],
    )?;
    db::run(
        "INSERT INTO auth.mfa_recovery_codes (user_id, code_hash)
         SELECT $1::uuid, decode(h, 'hex') FROM jsonb_array_elements_text($2) AS h",
        &[db::text(&me.user_id), db::jsonb(Value::Array(hashes))],
    )?;
    audit(
        "recovery_codes_generated",
        &me.user_id,
        request::client_ip(&*config::load()?)?.as_deref(),
        json!({}),
    )?;
    Ok(json!(codes))
}

fn hotp_fn(
    secret: Option<Vec<u8>>,
    counter: Option<i64>,
    digits: Option<i32>,
    algorithm: Option<&str>,
) -> Result<Value> {
    let secret = required(secret, "secret")?;
    let counter = required(counter, "counter")?;
    let digits = required(digits, "digits")?;
    let algorithm = Algorithm::parse(required(algorithm, "algorithm")?)?;
    if counter < 0 {
        return Err(AuthError::invalid_request("counter must not be negative."));
    }
    if secret.is_empty() {
        return Err(AuthError::invalid_request("secret must not be empty."));
    }
    Ok(json!(totp::hotp(
        &secret,
        counter as u64,
        u32::try_from(digits).unwrap_or(0),
        algorithm
    )?))
}

fn totp_fn(
    secret: Option<&str>,
    at: Option<i64>,
    digits: Option<i32>,
    period: Option<i32>,
    algorithm: Option<&str>,
) -> Result<Value> {
    let secret = totp::base32_decode(required(secret, "secret")?)?;
    let at = required(at, "at")?;
    let digits = u32::try_from(required(digits, "digits")?).unwrap_or(0);
    let period = u32::try_from(required(period, "period")?).unwrap_or(0);
    let algorithm = Algorithm::parse(required(algorithm, "algorithm")?)?;
    Ok(json!(totp::totp(&secret, at, digits, period, algorithm)?))
}

#[pg_extern(name = "_mfa_enroll")]
fn mfa_enroll_impl(
    factor_type: Option<&str>,
    friendly_name: Option<&str>,
    phone: Option<&str>,
    issuer: Option<&str>,
) -> JsonB {
    crate::respond(enroll(factor_type, friendly_name, phone, issuer))
}

#[pg_extern(name = "_mfa_challenge")]
fn mfa_challenge_impl(factor_id: Option<Uuid>, channel: Option<&str>) -> JsonB {
    crate::respond(challenge(factor_id, channel))
}

#[pg_extern(name = "_mfa_verify")]
fn mfa_verify_impl(
    factor_id: Option<Uuid>,
    challenge_id: Option<Uuid>,
    code: Option<&str>,
) -> JsonB {
    crate::respond(verify(factor_id, challenge_id, code))
}

#[pg_extern(name = "_mfa_challenge_and_verify")]
fn mfa_challenge_and_verify_impl(factor_id: Option<Uuid>, code: Option<&str>) -> JsonB {
    crate::respond(challenge_and_verify(factor_id, code))
}

#[pg_extern(name = "_mfa_unenroll")]
fn mfa_unenroll_impl(factor_id: Option<Uuid>) -> JsonB {
    crate::respond(unenroll(factor_id))
}

#[pg_extern(name = "_mfa_list_factors")]
fn mfa_list_factors_impl() -> JsonB {
    crate::respond(list_factors())
}

#[pg_extern(name = "_mfa_get_authenticator_assurance_level")]
fn mfa_aal_impl() -> JsonB {
    crate::respond(assurance_level())
}

#[pg_extern(name = "_signin_mfa_totp")]
fn signin_mfa_totp_impl(ticket: Option<&str>, otp: Option<&str>) -> JsonB {
    crate::respond(signin_totp(ticket, otp))
}

#[pg_extern(name = "_signin_mfa_recovery_code")]
fn signin_mfa_recovery_code_impl(ticket: Option<&str>, code: Option<&str>) -> JsonB {
    crate::respond(signin_recovery(ticket, code))
}

#[pg_extern(name = "_mfa_generate_recovery_codes")]
fn mfa_generate_recovery_codes_impl() -> JsonB {
    crate::respond(generate_recovery_codes())
}

#[pg_extern(name = "_hotp", immutable, parallel_safe)]
fn hotp_impl(
    secret: Option<Vec<u8>>,
    counter: Option<i64>,
    digits: Option<i32>,
    algorithm: Option<&str>,
) -> JsonB {
    crate::respond(hotp_fn(secret, counter, digits, algorithm))
}

#[pg_extern(name = "_totp", immutable, parallel_safe)]
fn totp_impl(
    secret: Option<&str>,
    at_epoch: Option<i64>,
    digits: Option<i32>,
    period: Option<i32>,
    algorithm: Option<&str>,
) -> JsonB {
    crate::respond(totp_fn(secret, at_epoch, digits, period, algorithm))
}
