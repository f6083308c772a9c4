//! Sign-in that owes a second factor: verify_sms_otp answers a ticket instead of a session, and
//! the session starts only when the ticket is presented with a TOTP code or a recovery code.

use super::{audit, check_factor_failures, consume_totp_step, invalid_totp, verified_totp_factor};
use crate::autonomous::{self, Action, Target};
use crate::session::USER_BLOCKED;
use crate::{config, db, request, session};
use pg_otp_auth_core::clock::unix_seconds;
use pg_otp_auth_core::config::Config;
use pg_otp_auth_core::error::{required, AuthError, Result};
use pg_otp_auth_core::mfa::{format_ticket, normalize_recovery_code, parse_ticket};
use pg_otp_auth_core::otp;
use pg_otp_auth_core::session::refresh_token_hash;
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

fn invalid_ticket() -> AuthError {
    AuthError::new(
        401,
        "invalid-ticket",
        "The MFA ticket is invalid or has expired.",
    )
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
                                   'timestamp', floor(date_part('epoch', now()))::bigint)),
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

fn finish_ticket(
    cfg: &Config,
    t: &Ticket,
    method: &str,
    ip: Option<&str>,
) -> Result<session::Granted> {
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
    Ok(session::Granted::session(s))
}

fn signin_totp(ticket: Option<&str>, code: Option<&str>) -> Result<session::Granted> {
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

fn signin_recovery(ticket: Option<&str>, code: Option<&str>) -> Result<session::Granted> {
    let ticket = required(ticket, "ticket")?;
    let code = normalize_recovery_code(required(code, "code")?)?;
    autonomous::require_own_transaction()?;
    let cfg = config::load()?;
    let t = load_ticket(&cfg, ticket)?;
    let ip = request::client_ip(&cfg)?;
    let pepper = config::secret("otp_pepper")?;
    let presented = super::recovery::code_hash(&pepper, &t.user_id, &code);
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

crate::answer::api_function!(
    auth_signin_mfa_totp,
    (ticket: Option<&str>, otp: Option<&str>) => signin_totp(ticket, otp)
);

crate::answer::api_function!(
    auth_signin_mfa_recovery_code,
    (ticket: Option<&str>, code: Option<&str>) => signin_recovery(ticket, code)
);
