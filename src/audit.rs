//! The audit log: who did what, from where. Rows that must survive a failing call are written by
//! the attempt worker instead (see `autonomous`).

use crate::db;
use pg_otp_auth_core::error::Result;
use serde_json::Value;

pub fn record(
    event: &str,
    user_id: Option<&str>,
    phone: Option<&str>,
    ip: Option<&str>,
    detail: Value,
) -> Result<()> {
    db::run(
        "INSERT INTO auth.audit_log (event, user_id, phone, ip, detail)
         VALUES ($1, $2::uuid, $3, $4::inet, $5)",
        &[
            db::text(event),
            db::opt_text(user_id),
            db::opt_text(phone),
            db::opt_text(ip),
            db::jsonb(detail),
        ],
    )
}
