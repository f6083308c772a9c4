//! Recovery codes: single-use codes, stored as keyed hashes, that stand in for a lost factor at
//! sign-in (see `tickets`).

use super::{audit, insufficient_aal};
use crate::{config, db, request};
use pg_otp_auth_core::error::Result;
use pg_otp_auth_core::mfa::new_recovery_codes;
use pg_otp_auth_core::otp;
use pgrx::prelude::*;
use serde_json::{json, Value};

const RECOVERY_PURPOSE: &str = "recovery";

/// The stored form of recovery code `code` (normalised, without dashes) of user `user_id`.
pub(super) fn code_hash(pepper: &[u8], user_id: &str, code: &str) -> Vec<u8> {
    otp::hash_code(pepper, RECOVERY_PURPOSE, user_id, code)
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
            let h = code_hash(&pepper, &me.user_id, &c.replace('-', ""));
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

#[pg_extern(name = "_mfa_generate_recovery_codes")]
fn mfa_generate_recovery_codes_impl() -> crate::Answer {
    crate::respond(generate_recovery_codes())
}
