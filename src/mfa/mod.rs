//! Multi-factor authentication, by part of the domain:
//! - [`factors`]: enrolling, listing and removing TOTP and phone factors;
//! - [`challenges`]: step-up of a session to aal2 with a factor (challenge, verify);
//! - [`tickets`]: sign-in that owes a second factor (tickets, then TOTP or a recovery code);
//! - [`recovery`]: recovery codes;
//! - [`codes`]: the `auth.totp` / `auth.hotp` SQL helpers.
//!
//! Here: what they share, the caller's factors and the per-factor limit on wrong codes.

mod challenges;
mod codes;
mod factors;
mod recovery;
mod tickets;

pub use tickets::issue_ticket;

use crate::request::CurrentSession;
use crate::{audit, db};
use pg_otp_auth_core::config::Config;
use pg_otp_auth_core::error::{AuthError, Result};
use pg_otp_auth_core::ratelimit;
use pg_otp_auth_core::totp::{self, Algorithm, Params};
use serde::Deserialize;
use serde_json::Value;

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
    // Newest first, without an aggregate: its executor start-up costs more than the rows.
    let newest_first: Vec<f64> = db::row_as(
        "SELECT to_json(ARRAY(
             SELECT date_part('epoch', clock_timestamp() - created_at) FROM auth.audit_log
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
    match ratelimit::sliding_window_retry_after(
        &ratelimit::window_oldest_first(
            &newest_first,
            cfg.mfa_failure_limit,
            cfg.mfa_failure_window as f64,
        ),
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
