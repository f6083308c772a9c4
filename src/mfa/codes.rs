//! `auth.hotp` and `auth.totp`: the codes of a secret, for DBAs and tests (RFC 4226, RFC 6238).

use pg_otp_auth_core::error::{required, AuthError, Result};
use pg_otp_auth_core::totp::{self, Algorithm};
use pgrx::prelude::*;
use serde_json::{json, Value};

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

#[pg_extern(name = "_hotp", immutable, parallel_safe)]
fn hotp_impl(
    secret: Option<Vec<u8>>,
    counter: Option<i64>,
    digits: Option<i32>,
    algorithm: Option<&str>,
) -> crate::Answer {
    crate::respond(hotp_fn(secret, counter, digits, algorithm))
}

#[pg_extern(name = "_totp", immutable, parallel_safe)]
fn totp_impl(
    secret: Option<&str>,
    at_epoch: Option<i64>,
    digits: Option<i32>,
    period: Option<i32>,
    algorithm: Option<&str>,
) -> crate::Answer {
    crate::respond(totp_fn(secret, at_epoch, digits, period, algorithm))
}
