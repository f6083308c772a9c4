//! Step-up: a challenge of one of the caller's factors and its verification, which raises the
//! session to aal2 (or completes the factor's setup).

use super::{
    audit, check_factor_failures, consume_totp_step, insufficient_aal, invalid_totp, my_factor,
    totp_already_active, Factor,
};
use crate::autonomous::{self, Action, Target};
use crate::outbox::{self, lock_phone, Issued};
use crate::request::{self, CurrentSession};
use crate::{config, db, session};
use pg_otp_auth_core::clock::unix_seconds;
use pg_otp_auth_core::config::Config;
use pg_otp_auth_core::error::{required, AuthError, Result};
use pg_otp_auth_core::otp;
use pgrx::Uuid;
use serde::Deserialize;
use serde_json::{json, Value};

const CHALLENGE_PURPOSE: &str = "mfa_challenge";

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
) -> Result<session::Tokens> {
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
        Challenge::Stored(&challenge_id),
        code,
        ip.as_deref(),
    )
}

/// The challenge a verification answers.
enum Challenge<'a> {
    /// One made earlier (mfa_challenge), by id: read under the factor's lock.
    Stored(&'a str),
    /// One this same call has just made (mfa_challenge_and_verify) for the caller's session: a
    /// TOTP challenge, unused and live. The attempt worker cannot see it, so only the
    /// factor-level record binds.
    MadeInThisCall(String),
}

fn verify_challenge(
    cfg: &Config,
    me: &CurrentSession,
    factor: &Factor,
    challenge: Challenge,
    code: &str,
    ip: Option<&str>,
) -> Result<session::Tokens> {
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
    let made_in_this_call = matches!(challenge, Challenge::MadeInThisCall(_));
    let c = match challenge {
        Challenge::Stored(id) => db::row_as(
            "SELECT jsonb_build_object('id', id, 'session_id', session_id,
                                       'code_hash', encode(code_hash, 'hex'), 'attempts', attempts,
                                       'live', verified_at IS NULL AND expires_at > clock_timestamp())
             FROM auth.mfa_challenges WHERE id = $1::uuid AND factor_id = $2::uuid",
            &[db::text(id), db::text(&factor.id)],
        )?
        .ok_or_else(|| AuthError::new(404, "mfa-challenge-not-found", "No such challenge."))?,
        // It expires mfa_challenge_ttl after the transaction's start (start_challenge).
        Challenge::MadeInThisCall(id) => ChallengeRow {
            id,
            session_id: me.session_id.clone(),
            code_hash: None,
            attempts: 0,
            live: crate::lookup::clock()
                < crate::lookup::now().saturating_add(cfg.mfa_challenge_ttl * 1_000_000),
        },
    };
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
                     'method', $3::text, 'timestamp', floor(date_part('epoch', now()))::bigint))
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

fn challenge_and_verify(factor_id: Option<Uuid>, code: Option<&str>) -> Result<session::Tokens> {
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
    verify_challenge(
        &cfg,
        &me,
        &factor,
        Challenge::MadeInThisCall(id),
        code,
        ip.as_deref(),
    )
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

crate::answer::api_function!(
    auth_mfa_challenge,
    (factor_id: Option<Uuid>, channel: Option<&str>) => challenge(factor_id, channel)
);

crate::answer::api_function!(
    auth_mfa_verify,
    (
        factor_id: Option<Uuid>,
        challenge_id: Option<Uuid>,
        code: Option<&str>,
    ) => verify(factor_id, challenge_id, code)
);

crate::answer::api_function!(
    auth_mfa_challenge_and_verify,
    (factor_id: Option<Uuid>, code: Option<&str>) => challenge_and_verify(factor_id, code)
);

crate::answer::api_function!(
    auth_mfa_get_authenticator_assurance_level,
    () => assurance_level()
);
