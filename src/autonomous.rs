//! Writes that must survive the caller's error.
//!
//! A wrong code raises an ERROR, and the ERROR rolls back the caller's transaction, including
//! any attempt counter it bumped. Counting the attempt in the same transaction would therefore
//! give an attacker unlimited guesses. Instead the caller starts a short-lived dynamic
//! background worker, which runs one fixed statement in its own transaction and commits, and
//! waits for it. The worker takes no SQL from the caller: only an action tag and its arguments
//! (row ids, phone, IP), all re-validated by casts in fixed statements.
//!
//! Every judged attempt is recorded *before* its verdict is revealed, and the caller checks
//! that a failure's record was committed (by the audit row id it chose). If it was not (no
//! worker slot, a lock timeout), the call fails closed, so an unrecorded guess teaches nothing.
//!
//! A right answer needs no worker: its attempt is written by the same statement in the caller's
//! own transaction, and commits together with what it grants (the code consumed, the session).
//! If that transaction rolls back, nothing was granted and the right code stays usable, which
//! teaches an attacker nothing they did not already know.

use crate::db;
use pg_otp_auth_core::error::{AuthError, Result};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use std::time::Duration;

/// What an attempt was made against.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A sign-in code (by row) for a phone; `code_id` is None when the phone has no usable code
    /// (the attempt is still recorded, so the two cases take the same path and time).
    Code {
        code_id: Option<String>,
        phone: String,
    },
    /// An MFA challenge; `challenge_id` is None when the failing call created it itself (and
    /// the worker cannot see it), in which case only the factor-level record is made.
    Challenge {
        challenge_id: Option<String>,
        factor_id: String,
    },
    /// An MFA sign-in ticket, with the factor it was checked against (none for recovery codes).
    Ticket {
        ticket_id: String,
        factor_id: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// An attempt at a secret: count it on its row and audit it.
    Attempt {
        audit_id: String,
        target: Target,
        failed: bool,
        ip: Option<String>,
    },
    /// A rotated refresh token presented after the grace period: revoke the whole session.
    RefreshTokenReused {
        audit_id: String,
        token_id: String,
        ip: Option<String>,
    },
}

const SEP: char = '|';
/// bgw_extra is 128 bytes including the terminating NUL.
const MAX_PAYLOAD: usize = 127;

/// A UUID as 22 URL-safe base64 characters, so two ids, an audit id and a full IPv6 address fit
/// in bgw_extra.
fn pack(uuid: &str) -> String {
    use base64::Engine;
    let hex: String = uuid.chars().filter(|c| *c != '-').collect();
    let bytes: Vec<u8> = (0..16)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unpack(packed: &str) -> Option<String> {
    use base64::Engine;
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(packed)
        .ok()?;
    Some(pg_otp_auth_core::otp::uuid_text(&b.try_into().ok()?))
}

impl Action {
    fn encode(&self) -> String {
        let ip = |v: &Option<String>| v.clone().unwrap_or_default();
        let opt = |v: &Option<String>| v.as_deref().map(pack).unwrap_or_default();
        match self {
            Action::Attempt {
                audit_id,
                target,
                failed,
                ip: addr,
            } => {
                let f = if *failed { "1" } else { "0" };
                let (tag, a, b) = match target {
                    Target::Code { code_id, phone } => ("c", opt(code_id), phone.clone()),
                    Target::Challenge {
                        challenge_id,
                        factor_id,
                    } => ("h", opt(challenge_id), pack(factor_id)),
                    Target::Ticket {
                        ticket_id,
                        factor_id,
                    } => ("t", pack(ticket_id), opt(factor_id)),
                };
                format!(
                    "{tag}{SEP}{}{SEP}{f}{SEP}{a}{SEP}{b}{SEP}{}",
                    pack(audit_id),
                    ip(addr)
                )
            }
            Action::RefreshTokenReused {
                audit_id,
                token_id,
                ip: addr,
            } => {
                format!(
                    "r{SEP}{}{SEP}{}{SEP}{}",
                    pack(audit_id),
                    pack(token_id),
                    ip(addr)
                )
            }
        }
    }

    pub(crate) fn decode(s: &str) -> Option<Action> {
        let parts: Vec<&str> = s.split(SEP).collect();
        let ip = |p: &str| (!p.is_empty()).then(|| p.to_string());
        let opt = |p: &str| {
            if p.is_empty() {
                Some(None)
            } else {
                unpack(p).map(Some)
            }
        };
        match parts.as_slice() {
            [tag @ ("c" | "h" | "t"), audit, f, a, b, addr] => {
                let target = match *tag {
                    "c" => Target::Code {
                        code_id: opt(a)?,
                        phone: b.to_string(),
                    },
                    "h" => Target::Challenge {
                        challenge_id: opt(a)?,
                        factor_id: unpack(b)?,
                    },
                    _ => Target::Ticket {
                        ticket_id: unpack(a)?,
                        factor_id: opt(b)?,
                    },
                };
                Some(Action::Attempt {
                    audit_id: unpack(audit)?,
                    target,
                    failed: *f == "1",
                    ip: ip(addr),
                })
            }
            ["r", audit, token, addr] => Some(Action::RefreshTokenReused {
                audit_id: unpack(audit)?,
                token_id: unpack(token)?,
                ip: ip(addr),
            }),
            _ => None,
        }
    }

    fn audit_id(&self) -> &str {
        match self {
            Action::Attempt { audit_id, .. } | Action::RefreshTokenReused { audit_id, .. } => {
                audit_id
            }
        }
    }
}

fn unavailable() -> AuthError {
    AuthError::new(
        503,
        "temporarily-unavailable",
        "The attempt could not be recorded; try again shortly.",
    )
    .with_hint("retry after 1 seconds")
}

/// Performs `action` in its own committed transaction, waits for it, and confirms that it was
/// committed. Err (PT503) if it was not: the caller must then not reveal its verdict.
pub fn record(action: &Action) -> Result<()> {
    if let Action::Attempt { failed: false, .. } = action {
        let (sql, args) = statement(action);
        return db::run(sql, &args);
    }
    let payload = action.encode();
    if payload.len() > MAX_PAYLOAD {
        return Err(AuthError::internal("autonomous write payload too long"));
    }
    // The preloaded recorder answers only after its commit.
    match crate::recorder::submit(&payload) {
        Some(true) => return Ok(()),
        Some(false) => {
            warning!(
                "pg_otp_auth: an attempt could not be recorded (the recorder failed or timed out)"
            );
            return Err(unavailable());
        }
        None => {}
    }
    let dboid = unsafe { pg_sys::MyDatabaseId };
    let mut done = false;
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
        if let Ok(worker) = builder.load_dynamic() {
            done = worker.wait_for_shutdown().is_ok();
            break;
        }
        // Let a cancel or statement timeout end the wait.
        pgrx::check_for_interrupts!();
        std::thread::sleep(Duration::from_millis(10));
    }
    // Read committed: this statement sees what the worker committed.
    let committed = done
        && db::row(
            "SELECT to_jsonb(true) FROM auth.audit_log WHERE id = $1::uuid",
            &[db::text(action.audit_id())],
        )?
        .is_some();
    if committed {
        Ok(())
    } else {
        warning!("pg_otp_auth: an attempt could not be recorded (worker slots exhausted or worker failed)");
        Err(unavailable())
    }
}

/// Refuses to judge secrets where the worker's records would not bind: in REPEATABLE READ or
/// SERIALIZABLE the caller cannot see what the worker commits, and in a transaction that has
/// already written, the worker cannot see what the caller wrote (such as a code it just sent).
/// Must be the caller's first database access (see [`db::read_row`]).
pub fn require_own_transaction() -> Result<()> {
    let read_committed = unsafe { pg_sys::XactIsoLevel } == pg_sys::XACT_READ_COMMITTED as i32;
    let nothing_written =
        unsafe { pg_sys::GetTopTransactionIdIfAny() } == pg_sys::InvalidTransactionId;
    if read_committed && nothing_written {
        Ok(())
    } else {
        Err(AuthError::invalid_request(
            "Codes and tokens must be checked in a READ COMMITTED transaction that has written nothing yet.",
        ))
    }
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
        perform(&action);
    });
}

/// Performs `action` in the current transaction (of a worker or the recorder).
pub(crate) fn perform(action: &Action) {
    let (sql, args) = statement(action);
    Spi::run_with_args(sql, &args).expect("autonomous write");
}

/// The one fixed statement that performs `action`, with its arguments.
/// A code's attempt: count it on the code (if it is live) and audit it; a failure also counts
/// against the client address (auth.rate_counters, as outbox::VERIFY_IP reads it).
const CODE_ATTEMPT: &str = "WITH c AS (
                         UPDATE auth.otp_codes SET attempts = attempts + 1 WHERE id = $3::uuid
                         RETURNING user_id, purpose, attempts),
                     ip AS (
                         INSERT INTO auth.rate_counters AS r (key, bucket_start, shard, hits, last_at)
                         SELECT 'verify_ip:' || host($5::inet),
                                to_timestamp(floor(date_part('epoch', clock_timestamp()) / 300) * 300),
                                0, 1, clock_timestamp()
                         WHERE $2 AND $5 IS NOT NULL
                         ON CONFLICT (key, bucket_start, shard)
                         DO UPDATE SET hits = r.hits + 1, last_at = greatest(r.last_at, excluded.last_at))
                     INSERT INTO auth.audit_log (id, event, user_id, phone, ip, detail)
                     SELECT $1::uuid, CASE WHEN $2 THEN 'verify_failed' ELSE 'verify_attempt' END,
                            c.user_id, $4, $5::inet,
                            jsonb_build_object('purpose', c.purpose, 'attempts', c.attempts)
                     FROM c
                     UNION ALL
                     SELECT $1::uuid, 'verify_failed', NULL, $4, $5::inet,
                            jsonb_build_object('no_live_code', true)
                     WHERE NOT EXISTS (SELECT 1 FROM c)";

/// A challenge's attempt: count it on the challenge and audit it against the factor.
const CHALLENGE_ATTEMPT: &str = "WITH c AS (
                         UPDATE auth.mfa_challenges SET attempts = attempts + 1
                         WHERE id = $3::uuid RETURNING attempts)
                     INSERT INTO auth.audit_log (id, event, user_id, ip, detail)
                     SELECT $1::uuid, CASE WHEN $2 THEN 'mfa_verify_failed' ELSE 'mfa_verify_attempt' END,
                            f.user_id, $5::inet,
                            jsonb_build_object('factor_id', f.id, 'factor_type', f.factor_type,
                                               'challenge_id', $3::uuid,
                                               'attempts', (SELECT attempts FROM c))
                     FROM auth.mfa_factors f WHERE f.id = $4::uuid";

/// A sign-in ticket's attempt: count it on the ticket and audit it.
const TICKET_ATTEMPT: &str = "WITH t AS (
                         UPDATE auth.mfa_tickets SET attempts = attempts + 1
                         WHERE id = $3::uuid RETURNING id, user_id, attempts)
                     INSERT INTO auth.audit_log (id, event, user_id, ip, detail)
                     SELECT $1::uuid, CASE WHEN $2 THEN 'mfa_signin_failed' ELSE 'mfa_signin_attempt' END,
                            t.user_id, $5::inet,
                            jsonb_build_object('ticket_id', t.id, 'attempts', t.attempts,
                                               'factor_id', $4::uuid)
                     FROM t";

/// A rotated refresh token presented after the grace period: revoke its session.
const REFRESH_TOKEN_REUSED: &str = "WITH s AS (
                 UPDATE auth.sessions SET revoked_at = clock_timestamp(),
                                          revoked_reason = 'refresh_token_reused'
                 WHERE id = (SELECT session_id FROM auth.refresh_tokens WHERE id = $2::uuid)
                   AND revoked_at IS NULL
                 RETURNING id, user_id)
             INSERT INTO auth.audit_log (id, event, user_id, ip, detail)
             SELECT $1::uuid, 'refresh_token_reused',
                    (SELECT s.user_id FROM auth.sessions s JOIN auth.refresh_tokens r
                         ON r.session_id = s.id WHERE r.id = $2::uuid),
                    $3::inet,
                    jsonb_build_object('refresh_token_id', $2::uuid,
                                       'revoked_now', EXISTS (SELECT 1 FROM s))";

fn statement(action: &Action) -> (&'static str, Vec<DatumWithOid<'static>>) {
    match action.clone() {
        Action::Attempt {
            audit_id,
            target,
            failed,
            ip,
        } => {
            let (sql, a, b) = match target {
                Target::Code { code_id, phone } => (CODE_ATTEMPT, code_id, Some(phone)),
                Target::Challenge {
                    challenge_id,
                    factor_id,
                } => (CHALLENGE_ATTEMPT, challenge_id, Some(factor_id)),
                Target::Ticket {
                    ticket_id,
                    factor_id,
                } => (TICKET_ATTEMPT, Some(ticket_id), factor_id),
            };
            (
                sql,
                vec![
                    audit_id.into(),
                    failed.into(),
                    a.into(),
                    b.into(),
                    ip.into(),
                ],
            )
        }
        Action::RefreshTokenReused {
            audit_id,
            token_id,
            ip,
        } => (
            REFRESH_TOKEN_REUSED,
            vec![audit_id.into(), token_id.into(), ip.into()],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "6f1c0a4e-0000-4000-8000-00000000000a";
    const B: &str = "6f1c0a4e-0000-4000-8000-00000000000b";
    const C: &str = "6f1c0a4e-0000-4000-8000-00000000000c";

    #[test]
    fn actions_round_trip_and_fit_the_worker_payload() {
        let long_ip = Some("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".to_string());
        for a in [
            Action::Attempt {
                audit_id: A.into(),
                target: Target::Code {
                    code_id: Some(B.into()),
                    phone: "+123456789012345".into(),
                },
                failed: true,
                ip: long_ip.clone(),
            },
            Action::Attempt {
                audit_id: A.into(),
                target: Target::Challenge {
                    challenge_id: Some(B.into()),
                    factor_id: C.into(),
                },
                failed: false,
                ip: long_ip.clone(),
            },
            Action::Attempt {
                audit_id: A.into(),
                target: Target::Challenge {
                    challenge_id: None,
                    factor_id: C.into(),
                },
                failed: true,
                ip: None,
            },
            Action::Attempt {
                audit_id: A.into(),
                target: Target::Ticket {
                    ticket_id: B.into(),
                    factor_id: Some(C.into()),
                },
                failed: true,
                ip: long_ip.clone(),
            },
            Action::Attempt {
                audit_id: A.into(),
                target: Target::Ticket {
                    ticket_id: B.into(),
                    factor_id: None,
                },
                failed: true,
                ip: None,
            },
            Action::RefreshTokenReused {
                audit_id: A.into(),
                token_id: B.into(),
                ip: long_ip,
            },
        ] {
            let e = a.encode();
            assert!(e.len() <= MAX_PAYLOAD, "{} bytes: {e}", e.len());
            assert_eq!(Action::decode(&e), Some(a));
        }
        assert_eq!(Action::decode("drop_table|x"), None);
        assert_eq!(Action::decode("r|notbase64!|x|"), None);
    }

    #[test]
    fn failed_verifications_feed_the_per_ip_counter_the_limit_reads() {
        use crate::outbox::VERIFY_IP;
        let sql = CODE_ATTEMPT;
        assert!(sql.contains(&VERIFY_IP.key_sql(Some("host($5::inet)"))));
        assert!(sql.contains(&format!("/ {0}) * {0}", VERIFY_IP.bucket_seconds)));
        assert_eq!(VERIFY_IP.shards, 1);
    }

    #[test]
    fn uuids_pack_to_22_characters() {
        assert_eq!(pack(A).len(), 22);
        assert_eq!(unpack(&pack(A)).as_deref(), Some(A));
        assert_eq!(unpack("short"), None);
    }
}
