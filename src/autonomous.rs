//! Writes that must survive the caller's error.
//!
//! A wrong code raises an ERROR, and the ERROR rolls back the caller's transaction, including
//! any attempt counter it bumped. Counting the attempt in the same transaction would therefore
//! give an attacker unlimited guesses. Instead the caller starts a short-lived dynamic
//! background worker, which runs one fixed statement in its own transaction and commits, and
//! waits for it before raising. The worker takes no SQL from the caller: only an action name
//! and its arguments (row ids, phone, IP), all re-validated by casts in fixed statements.
//!
//! Only failure paths start a worker, so successful sign-ins cost nothing extra.

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use std::time::Duration;

/// An autonomous write the worker knows how to perform.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A wrong guess at a stored code: count it and audit it. `code_id` is None when the phone
    /// had no live code (audited only).
    CodeAttemptFailed {
        code_id: Option<String>,
        subject: String,
        ip: Option<String>,
    },
    /// A rotated refresh token presented after the grace period: revoke the whole session.
    RefreshTokenReused {
        token_id: String,
        ip: Option<String>,
    },
    /// A wrong code for an MFA challenge.
    /// The failure is audited against the factor even when the challenge is not visible (it
    /// was created by the failing call itself), so per-factor limits see every guess.
    ChallengeFailed {
        challenge_id: String,
        factor_id: String,
        ip: Option<String>,
    },
    /// A wrong TOTP or recovery code presented with an MFA sign-in ticket.
    TicketFailed {
        ticket_id: String,
        factor_id: Option<String>,
        ip: Option<String>,
    },
}

const SEP: char = '|';
/// bgw_extra is 128 bytes including the terminating NUL.
const MAX_PAYLOAD: usize = 127;

impl Action {
    /// Short tags and dash-less UUIDs keep two ids and a full IPv6 address within bgw_extra.
    fn encode(&self) -> String {
        let o = |v: &Option<String>| v.as_deref().map(compact).unwrap_or_default();
        match self {
            Action::CodeAttemptFailed {
                code_id,
                subject,
                ip,
            } => {
                format!("code{SEP}{}{SEP}{subject}{SEP}{}", o(code_id), o(ip))
            }
            Action::RefreshTokenReused { token_id, ip } => {
                format!("reuse{SEP}{}{SEP}{}", compact(token_id), o(ip))
            }
            Action::ChallengeFailed {
                challenge_id,
                factor_id,
                ip,
            } => {
                format!(
                    "chal{SEP}{}{SEP}{}{SEP}{}",
                    compact(challenge_id),
                    compact(factor_id),
                    o(ip)
                )
            }
            Action::TicketFailed {
                ticket_id,
                factor_id,
                ip,
            } => {
                format!(
                    "tick{SEP}{}{SEP}{}{SEP}{}",
                    compact(ticket_id),
                    o(factor_id),
                    o(ip)
                )
            }
        }
    }

    fn decode(s: &str) -> Option<Action> {
        let parts: Vec<&str> = s.split(SEP).collect();
        let opt = |p: &str| (!p.is_empty()).then(|| p.to_string());
        match parts.as_slice() {
            ["code", code_id, subject, ip] => Some(Action::CodeAttemptFailed {
                code_id: opt(code_id),
                subject: subject.to_string(),
                ip: opt(ip),
            }),
            ["reuse", token_id, ip] => Some(Action::RefreshTokenReused {
                token_id: token_id.to_string(),
                ip: opt(ip),
            }),
            ["chal", challenge_id, factor_id, ip] => Some(Action::ChallengeFailed {
                challenge_id: challenge_id.to_string(),
                factor_id: factor_id.to_string(),
                ip: opt(ip),
            }),
            ["tick", ticket_id, factor_id, ip] => Some(Action::TicketFailed {
                ticket_id: ticket_id.to_string(),
                factor_id: opt(factor_id),
                ip: opt(ip),
            }),
            _ => None,
        }
    }
}

/// PostgreSQL reads a UUID with or without dashes; without saves 4 bytes each.
fn compact(id: &str) -> String {
    id.replace('-', "")
}

/// Performs `action` in its own committed transaction and waits for it.
///
/// If no worker slot frees up within about a second, the write is lost and a WARNING is logged
/// (the caller still answers with its error).
pub fn perform(action: &Action) {
    let payload = action.encode();
    if payload.len() > MAX_PAYLOAD {
        warning!("pg_otp_auth: autonomous write payload too long, not recorded");
        return;
    }
    let dboid = unsafe { pg_sys::MyDatabaseId };
    for _ in 0..100 {
        let builder = BackgroundWorkerBuilder::new("pg_otp_auth autonomous write")
            .set_type("pg_otp_auth")
            .set_library("pg_otp_auth")
            .set_function("pg_otp_auth_autonomous_main")
            .enable_spi_access()
            .set_start_time(BgWorkerStartTime::RecoveryFinished)
            .set_restart_time(None)
            .set_argument(dboid.into_datum())
            .set_extra(&payload)
            .set_notify_pid(unsafe { pg_sys::MyProcPid });
        match builder.load_dynamic() {
            Ok(worker) => {
                if let Err(status) = worker.wait_for_shutdown() {
                    warning!("pg_otp_auth: autonomous write did not finish: {status:?}");
                }
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    warning!("pg_otp_auth: no background worker slot free (max_worker_processes); a failed attempt was not recorded");
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_otp_auth_autonomous_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGTERM);
    let dboid = unsafe { pg_sys::Oid::from_datum(arg, false) };
    BackgroundWorker::connect_worker_to_spi_by_oid(dboid, None);
    let Some(action) = Action::decode(BackgroundWorker::get_extra()) else {
        warning!("pg_otp_auth: unknown autonomous write");
        return;
    };
    BackgroundWorker::transaction(|| {
        // Bounded so that a stuck lock cannot hang the waiting caller for long.
        Spi::run("SET LOCAL lock_timeout = '5s'").expect("SET lock_timeout");
        Spi::run("SET LOCAL search_path = pg_catalog, pg_temp").expect("SET search_path");
        match action {
            Action::CodeAttemptFailed {
                code_id,
                subject,
                ip,
            } => {
                let args: [DatumWithOid; 3] = [code_id.into(), subject.into(), ip.into()];
                Spi::run_with_args(
                    "WITH c AS (
                         UPDATE auth.otp_codes SET attempts = attempts + 1
                         WHERE id = $1::uuid
                         RETURNING user_id, purpose, attempts)
                     INSERT INTO auth.audit_log (event, user_id, phone, ip, detail)
                     SELECT 'verify_failed', c.user_id, $2, $3::inet,
                            jsonb_build_object('purpose', c.purpose, 'attempts', c.attempts)
                     FROM c
                     UNION ALL
                     SELECT 'verify_failed', NULL, $2, $3::inet, jsonb_build_object('no_live_code', true)
                     WHERE NOT EXISTS (SELECT 1 FROM c)",
                    &args,
                )
                .expect("record failed attempt");
            }
            Action::RefreshTokenReused { token_id, ip } => {
                let args: [DatumWithOid; 2] = [token_id.into(), ip.into()];
                Spi::run_with_args(
                    "WITH s AS (
                         UPDATE auth.sessions SET revoked_at = now(), revoked_reason = 'refresh_token_reused'
                         WHERE id = (SELECT session_id FROM auth.refresh_tokens WHERE id = $1::uuid)
                           AND revoked_at IS NULL
                         RETURNING id, user_id)
                     INSERT INTO auth.audit_log (event, user_id, ip, detail)
                     SELECT 'refresh_token_reused', s.user_id, $2::inet,
                            jsonb_build_object('session_id', s.id, 'refresh_token_id', $1::text)
                     FROM s",
                    &args,
                )
                .expect("revoke reused session");
            }
            Action::ChallengeFailed {
                challenge_id,
                factor_id,
                ip,
            } => {
                let args: [DatumWithOid; 3] = [challenge_id.into(), factor_id.into(), ip.into()];
                Spi::run_with_args(
                    "WITH c AS (
                         UPDATE auth.mfa_challenges SET attempts = attempts + 1
                         WHERE id = $1::uuid
                         RETURNING attempts)
                     INSERT INTO auth.audit_log (event, user_id, ip, detail)
                     SELECT 'mfa_verify_failed', f.user_id, $3::inet,
                            jsonb_build_object('factor_id', f.id, 'factor_type', f.factor_type,
                                               'challenge_id', $1::uuid,
                                               'attempts', (SELECT attempts FROM c))
                     FROM auth.mfa_factors f WHERE f.id = $2::uuid",
                    &args,
                )
                .expect("record failed challenge");
            }
            Action::TicketFailed {
                ticket_id,
                factor_id,
                ip,
            } => {
                let args: [DatumWithOid; 3] = [ticket_id.into(), factor_id.into(), ip.into()];
                Spi::run_with_args(
                    "WITH t AS (
                         UPDATE auth.mfa_tickets SET attempts = attempts + 1
                         WHERE id = $1::uuid
                         RETURNING id, user_id, attempts)
                     INSERT INTO auth.audit_log (event, user_id, ip, detail)
                     SELECT 'mfa_signin_failed', t.user_id, $3::inet,
                            jsonb_build_object('ticket_id', t.id, 'attempts', t.attempts,
                                               'factor_id', $2::uuid)
                     FROM t",
                    &args,
                )
                .expect("record failed ticket");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_round_trip_and_fit_the_worker_payload() {
        let long_ip = Some("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".to_string());
        for a in [
            Action::CodeAttemptFailed {
                code_id: Some("6f1c0a4e00004000800000000000000a".into()),
                subject: "+123456789012345".into(),
                ip: long_ip.clone(),
            },
            Action::CodeAttemptFailed {
                code_id: None,
                subject: "+15550001111".into(),
                ip: None,
            },
            Action::RefreshTokenReused {
                token_id: "6f1c0a4e00004000800000000000000a".into(),
                ip: long_ip,
            },
        ] {
            let e = a.encode();
            assert!(e.len() <= MAX_PAYLOAD, "{e}");
            assert_eq!(Action::decode(&e), Some(a));
        }
        assert_eq!(Action::decode("drop_table|x"), None);
        // Dashes are dropped on the way in; PostgreSQL casts either form.
        let a = Action::RefreshTokenReused {
            token_id: "6f1c0a4e-0000-4000-8000-00000000000a".into(),
            ip: None,
        };
        assert_eq!(a.encode(), "reuse|6f1c0a4e00004000800000000000000a|");
    }
}
