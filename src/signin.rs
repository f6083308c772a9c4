//! Phone sign-in: sending one-time codes and exchanging them for sessions.

use crate::autonomous::{self, Action, Target};
use crate::lookup::{Cond, Order};
use crate::outbox::{self, admit, channel, lock_phone, Recipient, VERIFY_IP};
use crate::session::{user_json_text, USER_BLOCKED};
use crate::{audit, config, db, lookup, request, session};
use pg_otp_auth_core::config::Config;
use pg_otp_auth_core::error::{required, AuthError, Result};
use pg_otp_auth_core::profile::{self, Profile};
use pg_otp_auth_core::session::{new_refresh_token, refresh_token_hash, AuthMethod};
use pg_otp_auth_core::{otp, phone, ratelimit};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::LazyLock;

const PURPOSE: &str = "signin";
const MAX_CAPTCHA_TOKEN: usize = 4096;

fn captcha(token: Option<&str>) -> Result<Option<&str>> {
    match token {
        Some(t)
            if t.is_empty() || t.len() > MAX_CAPTCHA_TOKEN || t.chars().any(char::is_control) =>
        {
            Err(AuthError::invalid_request("captcha_token is malformed."))
        }
        other => Ok(other),
    }
}

fn insert_user(phone: &str, p: &Profile, ip: Option<&str>) -> Result<Recipient> {
    let user: Recipient = db::row_as(
        "INSERT INTO auth.users (phone, locale, default_role, roles, metadata, display_name)
         VALUES ($1, $2, $3, ARRAY(SELECT jsonb_array_elements_text($4)), $5, $6)
         RETURNING jsonb_build_object('id', id, 'disabled', disabled, 'locale', locale)",
        &[
            db::text(phone),
            db::text(&p.locale),
            db::text(&p.default_role),
            db::jsonb(&p.roles),
            db::jsonb(&p.metadata),
            db::opt_text(p.display_name.as_deref()),
        ],
    )?
    .ok_or_else(|| AuthError::internal("The user could not be created."))?;
    audit::record("user_created", Some(&user.id), Some(phone), ip, json!({}))?;
    Ok(user)
}

/// Records the admitted request and, for a user, issues a code and queues its message; for
/// `user == None` it answers the same shape without storing or queueing anything, so callers
/// cannot tell the two apart.
fn deliver(
    cfg: &Config,
    phone: &str,
    ip: Option<&str>,
    user: Option<&Recipient>,
    channel: &str,
    captcha_token: Option<&str>,
) -> Result<Value> {
    let to = user.map(|u| (u.id.as_str(), u.locale.as_str()));
    outbox::send_code(cfg, phone, ip, channel, PURPOSE, to, captcha_token)
}

fn send_sms_otp(
    phone: Option<&str>,
    create_user: Option<bool>,
    data: Option<JsonB>,
    captcha_token: Option<&str>,
    channel_name: Option<&str>,
) -> Result<Value> {
    let phone = phone::normalize(required(phone, "phone")?)?;
    let create = required(create_user, "create_user")?;
    let JsonB(data) = required(data, "data")?;
    profile::check_metadata(&data)?;
    let channel = channel(required(channel_name, "channel")?)?;
    let captcha_token = captcha(captcha_token)?;
    let cfg = config::load()?;
    let ip = request::client_ip(&cfg)?;
    lock_phone(&phone)?;
    let existing = admit(&cfg, &phone, ip.as_deref())?;
    let creating = existing.is_none() && create && !cfg.disable_signup;
    let user = if creating {
        let profile = Profile {
            metadata: data,
            ..Profile::default_for(&cfg.policy())
        };
        Some(insert_user(&phone, &profile, ip.as_deref())?)
    } else {
        existing.filter(|u| !u.disabled)
    };
    deliver(
        &cfg,
        &phone,
        ip.as_deref(),
        user.as_ref(),
        channel,
        captcha_token,
    )
}

fn last_channel(phone: &str) -> Result<&'static str> {
    let c = db::row(
        "SELECT to_jsonb(channel) FROM auth.send_events WHERE phone = $1 ORDER BY created_at DESC LIMIT 1",
        &[db::text(phone)],
    )?;
    channel(c.as_ref().and_then(Value::as_str).unwrap_or("sms"))
}

fn resend_sms_otp(phone: Option<&str>) -> Result<Value> {
    let phone = phone::normalize(required(phone, "phone")?)?;
    let cfg = config::load()?;
    let ip = request::client_ip(&cfg)?;
    lock_phone(&phone)?;
    let user = admit(&cfg, &phone, ip.as_deref())?;
    let target = user.as_ref().filter(|u| !u.disabled);
    // The channel of the last request for this phone, registered or not, so the answer does not
    // depend on whether anything was ever queued for it.
    let channel = last_channel(&phone)?;
    deliver(&cfg, &phone, ip.as_deref(), target, channel, None)
}

fn signup_sms_otp(phone: Option<&str>, options: Option<JsonB>) -> Result<Value> {
    let phone = phone::normalize(required(phone, "phone")?)?;
    let JsonB(options) = required(options, "options")?;
    let cfg = config::load()?;
    let profile = profile::from_options(&options, &cfg.policy())?;
    if cfg.disable_signup {
        return Err(AuthError::new(
            403,
            "signup-disabled",
            "Sign-up is disabled.",
        ));
    }
    let ip = request::client_ip(&cfg)?;
    lock_phone(&phone)?;
    if admit(&cfg, &phone, ip.as_deref())?.is_some() {
        // Same answer as a new sign-up, and nothing is sent or changed.
        deliver(&cfg, &phone, ip.as_deref(), None, "sms", None)?;
        return Ok(json!("OK"));
    }
    let user = insert_user(&phone, &profile, ip.as_deref())?;
    deliver(&cfg, &phone, ip.as_deref(), Some(&user), "sms", None)?;
    Ok(json!("OK"))
}

/// The phone's latest live code of a purpose.
struct LiveCode {
    id: String,
    user_id: Option<String>,
    hash: Vec<u8>,
    attempts: i64,
    /// Not expired at the time of the read.
    live: bool,
}

/// The phone's latest live code of `purpose` (of user `user_id`, if given), read by index
/// (see `lookup`): the newest row of `otp_codes_live` that is still unconsumed, not
/// superseded, and the user's.
fn live_code(phone: &str, purpose: &str, user_id: Option<&str>) -> Result<Option<LiveCode>> {
    let user = user_id.map(lookup::user_uuid).transpose()?;
    let clock = lookup::clock();
    let mut found = None;
    lookup::scan(
        c"otp_codes",
        c"otp_codes_live",
        &[
            (c"subject", Cond::TextEq(phone)),
            (c"purpose", Cond::TextEq(purpose)),
        ],
        // The index keeps each phone's codes newest first.
        Order::Ascending,
        &[
            c"id",
            c"code_hash",
            c"attempts",
            c"expires_at",
            c"consumed_at",
            c"invalidated_at",
            c"user_id",
        ],
        |r| {
            let unused = r.timestamp(4).is_none() && r.timestamp(5).is_none();
            let users = user.is_none() || r.uuid_value(6) == user;
            if !(unused && users) {
                return true;
            }
            found = r.uuid(0).map(|id| LiveCode {
                id,
                user_id: r.uuid(6),
                hash: r.bytes(1).unwrap_or_default(),
                attempts: r.int(2).unwrap_or(i64::MAX),
                live: r.timestamp(3).is_some_and(|at| at > clock),
            });
            false
        },
    )?;
    Ok(found)
}

/// Judges `code` against the phone's latest live code of `purpose` (of `user_id`, if given),
/// after the per-IP limit on wrong codes. The caller holds the phone's lock, so guesses at one
/// phone are judged one at a time. Every failed attempt is durably recorded before the answer,
/// with or without a usable code: the two cases then cost the same (no registration oracle in
/// the timing) and fail closed alike. Answers the matched code, still unconsumed.
pub(crate) fn judge_code(
    cfg: &Config,
    phone: &str,
    purpose: &str,
    user_id: Option<&str>,
    code: &str,
    ip: Option<&str>,
) -> Result<Matched> {
    let (latest, ip_failures) = lookup::statement(|| {
        let latest = live_code(phone, purpose, user_id)?;
        let failures = match ip {
            Some(ip) => outbox::counter_rows(
                &VERIFY_IP,
                &lookup::host(ip)?,
                cfg.verify_rate_per_ip_window,
                lookup::clock(),
            )?,
            None => Vec::new(),
        };
        Ok((latest, failures))
    })?;
    if ip.is_some() {
        check_verify_rate(cfg, &ip_failures)?;
    }
    let pepper = config::secret("otp_pepper")?;
    let stored = latest
        .as_ref()
        .map(|c| c.hash.as_slice())
        .unwrap_or_default();
    let matches = otp::verify_code(&pepper, purpose, phone, code, stored);
    let live = latest.filter(|c| c.live && c.attempts < cfg.otp_max_attempts);
    match live {
        Some(live) if matches => Ok(Matched {
            id: live.id,
            user_id: live.user_id,
        }),
        live => {
            autonomous::record(&Action::Attempt {
                audit_id: otp::time_ordered_uuid_text(),
                target: Target::Code {
                    code_id: live.map(|c| c.id),
                    phone: phone.to_string(),
                },
                failed: true,
                ip: ip.map(str::to_string),
            })?;
            Err(AuthError::invalid_otp())
        }
    }
}

/// A code that [`judge_code`] found right.
pub(crate) struct Matched {
    pub id: String,
    /// The user it was issued to.
    pub user_id: Option<String>,
}

/// Whether user `user_id` has a verified TOTP factor, read by index (see `lookup`) from the
/// index that allows one per user.
fn has_verified_totp(user_id: &str) -> Result<bool> {
    let user = lookup::user_uuid(user_id)?;
    let mut found = false;
    lookup::statement(|| {
        lookup::scan(
            c"mfa_factors",
            c"mfa_factors_one_verified_totp",
            &[(c"user_id", Cond::UuidEq(user))],
            Order::Ascending,
            &[c"factor_type", c"status"],
            |r| {
                found = r.text(0).as_deref() == Some("totp")
                    && r.text(1).as_deref() == Some("verified");
                !found
            },
        )
    })?;
    Ok(found)
}

/// The per-IP limit on wrong codes (right ones consume their code and need no limit). The
/// failures are counted by the attempt recorder in auth.rate_counters (see autonomous), so the
/// limit binds although each failed call rolls back.
fn check_verify_rate(cfg: &Config, failures: &[(f64, f64, f64)]) -> Result<()> {
    match ratelimit::bucketed_retry_after(
        &ratelimit::buckets_of_shards(failures),
        cfg.verify_rate_per_ip,
        cfg.verify_rate_per_ip_window as f64,
    ) {
        Some(wait) => Err(AuthError::rate_limited(
            "over-request-rate-limit",
            "Too many verification attempts from this address.",
            wait,
        )),
        None => Ok(()),
    }
}

/// A right code's sign-in, in the caller's transaction and one statement: the attempt is counted
/// and audited and the code consumed (single use: of concurrent calls with the right code exactly
/// one updates the row), the phone of a user who is not disabled confirmed, and, unless the user
/// must also pass TOTP ($8), the sign-in audited and the new session $2 (aal1, amr $11, ip $7)
/// and its refresh token $10 ($3 hashed, lifetime $4) made. Answers the code's user and the
/// updated user object, whose active second factor ($9) the caller has read (see
/// `has_verified_totp`); no row if the code is no longer live. The ids are made by the caller,
/// which knows the rest of the session. Both audit rows are one insert.
///
/// The code is found by its primary key: `num_nulls` states "unused" in a form that does not
/// imply `otp_codes_live`'s predicate, so the planner cannot choose a scan of that whole index
/// (cheap only while few codes are live). The user's update returns only its id and the user
/// object, not the whole row that every later reader of it would carry.
static SIGN_IN_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH code AS (
         UPDATE auth.otp_codes SET attempts = attempts + 1, consumed_at = now()
         WHERE id = $1::uuid AND num_nulls(consumed_at, invalidated_at) = 2
           AND expires_at > clock_timestamp() AND attempts < $5
         RETURNING user_id, purpose, attempts),
     signed_in AS (
         UPDATE auth.users u SET phone_confirmed_at = coalesce(u.phone_confirmed_at, now()),
                                 last_sign_in_at = now(), updated_at = now()
         FROM code c WHERE u.id = c.user_id AND NOT {USER_BLOCKED}
         RETURNING u.id, {} AS user_json),
     audited AS (
         INSERT INTO auth.audit_log (event, user_id, phone, ip, detail)
         SELECT 'verify_attempt', c.user_id, $6, $7::inet,
                jsonb_build_object('purpose', c.purpose, 'attempts', c.attempts)
         FROM code c
         UNION ALL
         SELECT 'sign_in', s.id, $6, $7::inet, '{{}}' FROM signed_in s WHERE NOT $8),
     s AS (
         INSERT INTO auth.sessions (id, user_id, aal, amr, ip)
         SELECT $2::uuid, si.id, 'aal1', $11::jsonb, $7::inet FROM signed_in si WHERE NOT $8),
     t AS (
         INSERT INTO auth.refresh_tokens (id, session_id, token_hash, expires_at)
         SELECT $10::uuid, $2::uuid, $3, now() + make_interval(secs => $4)
         FROM signed_in si WHERE NOT $8)
     SELECT json_build_object('user_id', c.user_id, 'user', si.user_json)
     FROM code c LEFT JOIN signed_in si ON true",
        user_json_text("$9::text"),
    )
});

#[derive(Deserialize)]
struct SignedIn {
    user_id: Option<String>,
    /// Absent when the user is disabled or banned.
    user: Option<Box<serde_json::value::RawValue>>,
}

fn verify_sms_otp(phone: Option<&str>, code: Option<&str>) -> Result<session::Granted> {
    let phone = phone::normalize(required(phone, "phone")?)?;
    let code = required(code, "otp")?;
    autonomous::require_own_transaction()?;
    let cfg = config::load()?;
    otp::check_format(code, cfg.otp_length)?;
    let ip = request::client_ip(&cfg)?;
    // Serialise guesses at one phone: each is recorded before the next is judged.
    lock_phone(&phone)?;
    let code = judge_code(&cfg, &phone, PURPOSE, None, code, ip.as_deref())?;
    let totp = match &code.user_id {
        Some(user) => has_verified_totp(user)?,
        None => false,
    };
    let needs_totp = cfg.mfa_signin_requires_totp && totp;
    let refresh_token = new_refresh_token()?;
    let session_id = otp::time_ordered_uuid_text();
    let refresh_token_id = otp::time_ordered_uuid_text();
    // Signed in by SMS at the transaction's start, in whole seconds.
    let now = lookup::now_seconds().floor() as i64;
    let amr = vec![AuthMethod {
        method: "sms".into(),
        timestamp: now,
    }];
    let signed: SignedIn = db::row_as(
        &SIGN_IN_SQL,
        &[
            db::text(&code.id),
            db::text(&session_id),
            refresh_token_hash(&refresh_token).into(),
            cfg.refresh_token_ttl.into(),
            cfg.otp_max_attempts.into(),
            db::text(&phone),
            db::opt_text(ip.as_deref()),
            needs_totp.into(),
            db::opt_text(totp.then_some("totp")),
            db::text(&refresh_token_id),
            db::jsonb(&amr),
        ],
    )?
    // Consumed, superseded, expired or out of attempts since it was judged.
    .ok_or_else(AuthError::invalid_otp)?;
    let user_id = signed.user_id.ok_or_else(AuthError::invalid_otp)?;
    let user = signed.user.ok_or_else(AuthError::disabled_user)?;
    if needs_totp {
        let mfa = crate::mfa::issue_ticket(&cfg, &user_id, ip.as_deref())?;
        return Ok(session::Granted::mfa(mfa));
    }
    let row = session::SessionRow::started(session_id, amr, now, user, refresh_token_id);
    Ok(session::Granted::session(session::tokens(
        &cfg,
        row,
        refresh_token,
    )?))
}

crate::answer::api_function!(
    auth_send_sms_otp,
    (
        phone: Option<&str>,
        create_user: Option<bool>,
        data: Option<JsonB>,
        captcha_token: Option<&str>,
        channel: Option<&str>,
    ) => send_sms_otp(phone, create_user, data, captcha_token, channel)
);

crate::answer::api_function!(
    auth_resend_sms_otp,
    (phone: Option<&str>) => resend_sms_otp(phone)
);

#[pg_extern(name = "_signup_sms_otp")]
fn signup_sms_otp_impl(phone: Option<&str>, options: Option<JsonB>) -> crate::Answer {
    crate::respond(signup_sms_otp(phone, options))
}

crate::answer::api_function!(
    auth_verify_sms_otp,
    (phone: Option<&str>, otp: Option<&str>) => verify_sms_otp(phone, otp)
);
