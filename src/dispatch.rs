//! The database side of the dispatcher that is not plain SQL: recording failed deliveries.

use crate::{config, db};
use pg_otp_auth_core::error::{required, AuthError, Result};
use pg_otp_auth_core::otp::random_bytes;
use pg_otp_auth_core::outbox::{after_failure, retry_delay, AfterFailure};
use pgrx::prelude::*;
use pgrx::Uuid;
use serde::Deserialize;
use serde_json::{json, Value};

const MAX_ERROR_CHARS: usize = 1000;

#[derive(Deserialize)]
struct Attempted {
    attempts: i64,
    status: String,
    seconds_until_expiry: f64,
}

/// A control character cannot be stored in text (NUL) or is noise in a report.
fn clean_error(e: &str) -> String {
    e.chars()
        .filter(|c| !c.is_control() || *c == '\n')
        .take(MAX_ERROR_CHARS)
        .collect()
}

fn jitter() -> Result<f64> {
    let mut b = [0u8; 4];
    random_bytes(&mut b)?;
    Ok(u32::from_be_bytes(b) as f64 / (u32::MAX as f64 + 1.0))
}

fn mark_failed(
    id: Option<Uuid>,
    error: Option<&str>,
    retryable: Option<bool>,
    attempt: Option<i32>,
) -> Result<Value> {
    let id = required(id, "id")?.to_string();
    let error = clean_error(required(error, "error")?);
    let retryable = required(retryable, "retryable")?;
    let cfg = config::load()?;
    let m: Attempted = db::row_as(
        "SELECT jsonb_build_object('attempts', attempts, 'status', status,
                                   'seconds_until_expiry', date_part('epoch', expires_at - now()))
         FROM auth.sms_outbox WHERE id = $1::uuid FOR UPDATE",
        &[db::text(&id)],
    )?
    .ok_or_else(|| AuthError::new(404, "message-not-found", "No such message."))?;
    if m.status != "sending" || attempt.is_some_and(|a| i64::from(a) != m.attempts) {
        // A late report: the lease ran out and the message was claimed again or finished
        // meanwhile. The current holder's outcome is the one that counts.
        return Ok(Value::Null);
    }
    let delay = retry_delay(
        m.attempts,
        cfg.sms_retry_base as f64,
        cfg.sms_retry_max as f64,
        jitter()?,
    );
    let fate = after_failure(
        m.attempts,
        cfg.sms_max_attempts,
        retryable,
        m.seconds_until_expiry,
        delay,
    );
    let (status, delay) = match fate {
        AfterFailure::Retry { delay_seconds } => ("queued", delay_seconds),
        AfterFailure::Dead => ("dead", 0.0),
        AfterFailure::Expired => ("expired", 0.0),
    };
    db::run(
        "UPDATE auth.sms_outbox SET
             status = $2, last_error = $3, lease_until = NULL, updated_at = now(),
             next_attempt_at = now() + make_interval(secs => $4),
             body = CASE WHEN $2 = 'queued' THEN body END,
             captcha_token = CASE WHEN $2 = 'queued' THEN captcha_token END
         WHERE id = $1::uuid",
        &[
            db::text(&id),
            db::text(status),
            db::text(&error),
            delay.into(),
        ],
    )?;
    Ok(json!(status))
}

#[pg_extern(name = "_sms_mark_failed")]
fn sms_mark_failed_impl(
    id: Option<Uuid>,
    error: Option<&str>,
    retryable: Option<bool>,
    attempt: Option<i32>,
) -> crate::Answer {
    crate::respond(mark_failed(id, error, retryable, attempt))
}
