//! Phone sign-in: sending one-time codes and exchanging them for sessions.

use crate::autonomous::{self, Action, Target};
use crate::outbox::{self, admit_send, channel, lock_phone, Issued, VERIFY_IP};
use crate::{audit, config, db, request, session};
use pg_otp_auth_core::config::Config;
use pg_otp_auth_core::error::{required, AuthError, Result};
use pg_otp_auth_core::profile::{self, Policy, Profile};
use pg_otp_auth_core::{otp, phone, ratelimit};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde::Deserialize;
use serde_json::{json, Value};

const PURPOSE: &str = "signin";
const MAX_CAPTCHA_TOKEN: usize = 4096;

#[derive(Debug, Deserialize)]
struct UserRef {
    id: String,
    disabled: bool,
    locale: String,
}

fn policy(cfg: &Config) -> Policy<'_> {
    Policy {
        allowed_roles: &cfg.allowed_roles,
        default_role: &cfg.default_role,
        allowed_locales: &cfg.allowed_locales,
        default_locale: &cfg.default_locale,
        allowed_redirect_prefixes: &cfg.allowed_redirect_prefixes,
    }
}

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

fn find_user(phone: &str) -> Result<Option<UserRef>> {
    db::row_as(
        "SELECT jsonb_build_object('id', id, 'disabled', disabled, 'locale', locale)
         FROM auth.users WHERE phone = $1",
        &[db::text(phone)],
    )
}

fn insert_user(phone: &str, p: &Profile, ip: Option<&str>) -> Result<UserRef> {
    let user: UserRef = db::row_as(
        "INSERT INTO auth.users (phone, locale, default_role, roles, metadata, display_name)
         VALUES ($1, $2, $3, ARRAY(SELECT jsonb_array_elements_text($4)), $5, $6)
         RETURNING jsonb_build_object('id', id, 'disabled', disabled, 'locale', locale)",
        &[
            db::text(phone),
            db::text(&p.locale),
            db::text(&p.default_role),
            db::jsonb(json!(p.roles)),
            db::jsonb(p.metadata.clone()),
            db::opt_text(p.display_name.as_deref()),
        ],
    )?
    .ok_or_else(|| AuthError::internal("The user could not be created."))?;
    audit::record("user_created", Some(&user.id), Some(phone), ip, json!({}))?;
    Ok(user)
}

/// Issues a code for `phone` and queues its message, or (for `user == None`) answers the same
/// shape without storing or queueing anything, so callers cannot tell the two apart.
fn deliver(
    cfg: &Config,
    phone: &str,
    user: Option<&UserRef>,
    channel: &str,
    captcha_token: Option<&str>,
) -> Result<Value> {
    let answer = |i: Issued| json!({"message_id": i.id, "phone": phone::mask(phone), "channel": channel, "expires_at": i.expires_at});
    let Some(user) = user else {
        let fake: Issued = db::row_as(
            "SELECT jsonb_build_object('id', gen_random_uuid(), 'expires_at', now() + make_interval(secs => $1))",
            &[cfg.otp_ttl.into()],
        )?
        .ok_or_else(|| AuthError::internal("now() failed"))?;
        return Ok(answer(fake));
    };
    db::run(
        "UPDATE auth.otp_codes SET invalidated_at = now()
         WHERE subject = $1 AND purpose = $2 AND consumed_at IS NULL AND invalidated_at IS NULL",
        &[db::text(phone), db::text(PURPOSE)],
    )?;
    // Their messages, if not yet handed to a provider, would only deliver a dead code.
    db::run(
        "UPDATE auth.sms_outbox SET status = 'expired', body = NULL, captcha_token = NULL,
                                    last_error = 'superseded by a newer code', updated_at = now()
         WHERE phone = $1 AND purpose = $2 AND status = 'queued'",
        &[db::text(phone), db::text(PURPOSE)],
    )?;
    let code = outbox::new_code(cfg, phone)?;
    let pepper = config::secret("otp_pepper")?;
    let issued: Issued = db::row_as(
        "INSERT INTO auth.otp_codes (user_id, purpose, subject, code_hash, expires_at)
         VALUES ($1::uuid, $2, $3, $4, now() + make_interval(secs => $5))
         RETURNING jsonb_build_object('id', id, 'expires_at', expires_at)",
        &[
            db::text(&user.id),
            db::text(PURPOSE),
            db::text(phone),
            otp::hash_code(&pepper, PURPOSE, phone, &code.value).into(),
            cfg.otp_ttl.into(),
        ],
    )?
    .ok_or_else(|| AuthError::internal("The code could not be stored."))?;
    let message = outbox::queue_code(
        cfg,
        &code,
        &outbox::Message {
            phone,
            channel,
            captcha_token,
            purpose: PURPOSE,
            user_id: &user.id,
            locale: Some(&user.locale),
            ttl_seconds: cfg.otp_ttl,
            expires_at: issued.expires_at.as_str().unwrap_or_default(),
        },
    )?;
    // A test number's code is stored but never sent; the answer has the same shape.
    Ok(answer(message.unwrap_or(issued)))
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
    let existing = find_user(&phone)?;
    let creating = existing.is_none() && create && !cfg.disable_signup;
    let queues = creating || existing.as_ref().is_some_and(|u| !u.disabled);
    admit_send(&cfg, &phone, ip.as_deref(), channel, queues)?;
    let user = if creating {
        let profile = Profile {
            metadata: data,
            ..Profile::default_for(&policy(&cfg))
        };
        Some(insert_user(&phone, &profile, ip.as_deref())?)
    } else {
        existing.filter(|u| !u.disabled)
    };
    deliver(&cfg, &phone, user.as_ref(), channel, captcha_token)
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
    let user = find_user(&phone)?;
    let target = user.as_ref().filter(|u| !u.disabled);
    // The channel of the last request for this phone, registered or not, so the answer does not
    // depend on whether anything was ever queued for it.
    let channel = last_channel(&phone)?;
    admit_send(&cfg, &phone, ip.as_deref(), channel, target.is_some())?;
    deliver(&cfg, &phone, target, channel, None)
}

fn signup_sms_otp(phone: Option<&str>, options: Option<JsonB>) -> Result<Value> {
    let phone = phone::normalize(required(phone, "phone")?)?;
    let JsonB(options) = required(options, "options")?;
    let cfg = config::load()?;
    let profile = profile::from_options(&options, &policy(&cfg))?;
    if cfg.disable_signup {
        return Err(AuthError::new(
            403,
            "signup-disabled",
            "Sign-up is disabled.",
        ));
    }
    let ip = request::client_ip(&cfg)?;
    lock_phone(&phone)?;
    if find_user(&phone)?.is_some() {
        // Same answer as a new sign-up, and nothing is sent or changed.
        admit_send(&cfg, &phone, ip.as_deref(), "sms", false)?;
        return Ok(json!("OK"));
    }
    admit_send(&cfg, &phone, ip.as_deref(), "sms", true)?;
    let user = insert_user(&phone, &profile, ip.as_deref())?;
    deliver(&cfg, &phone, Some(&user), "sms", None)?;
    Ok(json!("OK"))
}

/// The per-IP limit on verification attempts, counted from the attempts already recorded (so
/// it binds although each failed call rolls back).
/// The per-IP limit on wrong codes (right ones consume their code and need no limit). The
/// failures are counted by the attempt recorder in auth.rate_counters (see autonomous).
fn admit_verify(cfg: &Config, ip: Option<&str>) -> Result<()> {
    let Some(ip) = ip else { return Ok(()) };
    let buckets: Vec<(f64, i64)> = db::row_as(
        &format!(
            "SELECT {}",
            VERIFY_IP.buckets_sql(Some("host($1::inet)"), "$2", "clock_timestamp()")
        ),
        &[db::text(ip), cfg.verify_rate_per_ip_window.into()],
    )?
    .unwrap_or_default();
    match ratelimit::bucketed_retry_after(
        &buckets,
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

#[derive(Deserialize)]
struct LiveCode {
    id: String,
    hash: String,
    attempts: i64,
    live: bool,
}

fn verify_sms_otp(phone: Option<&str>, code: Option<&str>) -> Result<Value> {
    let phone = phone::normalize(required(phone, "phone")?)?;
    let code = required(code, "otp")?;
    autonomous::require_own_transaction()?;
    let cfg = config::load()?;
    otp::check_format(code, cfg.otp_length)?;
    let ip = request::client_ip(&cfg)?;
    admit_verify(&cfg, ip.as_deref())?;
    // Serialise guesses at one phone: each is recorded before the next is judged.
    lock_phone(&phone)?;
    let live: Option<LiveCode> = db::row_as(
        "SELECT jsonb_build_object('id', id, 'hash', encode(code_hash, 'hex'),
                                   'attempts', attempts, 'live', expires_at > clock_timestamp())
         FROM auth.otp_codes
         WHERE subject = $1 AND purpose = $2 AND consumed_at IS NULL AND invalidated_at IS NULL
         ORDER BY created_at DESC LIMIT 1",
        &[db::text(&phone), db::text(PURPOSE)],
    )?;
    let pepper = config::secret("otp_pepper")?;
    let stored = live
        .as_ref()
        .map(|c| db::from_hex(&c.hash))
        .unwrap_or_default();
    let matches = otp::verify_code(&pepper, PURPOSE, &phone, code, &stored);
    let live = live.filter(|c| c.live && c.attempts < cfg.otp_max_attempts);
    // Every attempt is recorded before the answer, with or without a usable code: the two cases
    // then cost the same (no registration oracle in the timing) and fail closed alike.
    autonomous::record(&Action::Attempt {
        audit_id: otp::random_uuid()?,
        target: Target::Code {
            code_id: live.as_ref().map(|c| c.id.clone()),
            phone: phone.clone(),
        },
        failed: !(matches && live.is_some()),
        ip: ip.clone(),
    })?;
    let Some(live) = live else {
        return Err(AuthError::invalid_otp());
    };
    if !matches {
        return Err(AuthError::invalid_otp());
    }
    // Single use: of concurrent calls with the right code, exactly one updates the row. This
    // attempt is already counted, hence <=.
    let user_id = db::row(
        "UPDATE auth.otp_codes SET consumed_at = now()
         WHERE id = $1::uuid AND consumed_at IS NULL AND invalidated_at IS NULL
           AND expires_at > clock_timestamp() AND attempts <= $2
         RETURNING to_jsonb(user_id)",
        &[db::text(&live.id), cfg.otp_max_attempts.into()],
    )?
    .and_then(|v| v.as_str().map(str::to_string))
    .ok_or_else(AuthError::invalid_otp)?;
    let signed_in = db::row(
        "UPDATE auth.users SET phone_confirmed_at = coalesce(phone_confirmed_at, now()),
                               last_sign_in_at = now(), updated_at = now()
         WHERE id = $1::uuid AND NOT disabled
         RETURNING to_jsonb(true)",
        &[db::text(&user_id)],
    )?;
    if signed_in.is_none() {
        return Err(AuthError::disabled_user());
    }
    if let Some(mfa) = crate::mfa::issue_ticket(&cfg, &user_id, ip.as_deref())? {
        return Ok(json!({"session": null, "mfa": mfa}));
    }
    let session = session::start(&cfg, &user_id, "sms", ip.as_deref())?;
    audit::record(
        "sign_in",
        Some(&user_id),
        Some(&phone),
        ip.as_deref(),
        json!({}),
    )?;
    Ok(json!({"session": session, "mfa": null}))
}

#[pg_extern(name = "_send_sms_otp")]
fn send_sms_otp_impl(
    phone: Option<&str>,
    create_user: Option<bool>,
    data: Option<JsonB>,
    captcha_token: Option<&str>,
    channel: Option<&str>,
) -> JsonB {
    crate::respond(send_sms_otp(
        phone,
        create_user,
        data,
        captcha_token,
        channel,
    ))
}

#[pg_extern(name = "_resend_sms_otp")]
fn resend_sms_otp_impl(phone: Option<&str>) -> JsonB {
    crate::respond(resend_sms_otp(phone))
}

#[pg_extern(name = "_signup_sms_otp")]
fn signup_sms_otp_impl(phone: Option<&str>, options: Option<JsonB>) -> JsonB {
    crate::respond(signup_sms_otp(phone, options))
}

#[pg_extern(name = "_verify_sms_otp")]
fn verify_sms_otp_impl(phone: Option<&str>, otp: Option<&str>) -> JsonB {
    crate::respond(verify_sms_otp(phone, otp))
}
