//! The dispatcher's database calls. It uses only the functions auth.grant_dispatcher() grants:
//! sms_claim, sms_mark_sent_many (sms_mark_sent where that is missing), sms_mark_failed,
//! sms_mark_captcha_passed and sms_queue_stats.

use crate::errors::with_causes;
use crate::provider::Outgoing;
use crate::tls::Database;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_postgres::error::SqlState;
use tokio_postgres::AsyncMessage;

pub const CHANNEL: &str = "pg_otp_auth_outbox";
/// No database call may hang a send slot forever (a half-open connection, say).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// A failed database call, and whether trying again could help.
#[derive(Debug)]
pub struct DbError {
    pub transient: bool,
    pub message: String,
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn pg_error(what: &str, e: tokio_postgres::Error) -> DbError {
    // An error with an SQLSTATE came from a working server (e.g. PT404 for a deleted row);
    // repeating the call would get the same answer. No SQLSTATE: the connection failed.
    DbError {
        transient: e.code().is_none(),
        message: format!("{what} failed: {}", with_causes(&e)),
    }
}

fn unreachable(e: impl std::error::Error + 'static) -> DbError {
    DbError {
        transient: true,
        message: format!("database unavailable: {}", with_causes(&e)),
    }
}

async fn timed<T>(f: impl std::future::Future<Output = Result<T, DbError>>) -> Result<T, DbError> {
    tokio::time::timeout(CALL_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| {
            Err(DbError {
                transient: true,
                message: "database unavailable: call timed out".into(),
            })
        })
}

/// PostgreSQL text cannot hold NUL; providers' error text is not trusted to be clean.
fn without_nul(s: &str) -> String {
    s.chars().filter(|c| *c != '\0').collect()
}

/// A delivery outcome to record.
pub enum Recorded<'a> {
    Sent {
        id: &'a str,
        provider_message_id: &'a str,
    },
    Failed {
        id: &'a str,
        error: &'a str,
        retryable: bool,
        attempt: i32,
    },
}

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// Whether auth.sms_mark_sent_many can be used (false once it was missing or not granted).
    batched: Arc<AtomicBool>,
}

pub struct Claimed {
    pub message: Outgoing,
    pub captcha_token: Option<String>,
    pub captcha_verified: bool,
    /// Seconds until the code expires, measured by the database clock at claim time.
    pub expires_in: f64,
    /// When the lease ends at the latest, on this process's clock: the claim was asked for
    /// before the database stamped its lease, so the real lease ends a little later.
    pub leased_until: Instant,
}

impl Store {
    pub fn new(database: &Database, size: usize) -> Result<Store, String> {
        let mut pg = database.config.clone();
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(5));
        }
        pg.keepalives_idle(Duration::from_secs(30));
        let manager = Manager::from_config(
            pg,
            database.connector()?,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(size)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(5)))
            .wait_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Store {
            pool,
            batched: Arc::new(AtomicBool::new(true)),
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, DbError> {
        self.pool.get().await.map_err(unreachable)
    }

    pub async fn claim(&self, batch: usize, lease: Duration) -> Result<Vec<Claimed>, DbError> {
        let leased_until = Instant::now() + lease;
        timed(async {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT id::text, phone, channel, body, captcha_token, attempts, captcha_verified,
                            extract(epoch FROM expires_at - clock_timestamp())::float8
                     FROM auth.sms_claim($1::int, make_interval(secs => $2::float8))",
                    &[&(batch as i32), &lease.as_secs_f64()],
                )
                .await
                .map_err(|e| pg_error("sms_claim", e))?;
            Ok(rows
                .iter()
                .map(|r| Claimed {
                    message: Outgoing {
                        id: r.get(0),
                        phone: r.get(1),
                        channel: r.get(2),
                        body: r.get::<_, Option<String>>(3).unwrap_or_default(),
                        attempts: r.get(5),
                    },
                    captcha_token: r.get(4),
                    captcha_verified: r.get(6),
                    expires_in: r.get(7),
                    leased_until,
                })
                .collect())
        })
        .await
    }

    pub async fn mark_sent(&self, id: &str, provider_message_id: &str) -> Result<(), DbError> {
        timed(async {
            let c = self.client().await?;
            c.execute(
                "SELECT auth.sms_mark_sent($1::text::uuid, $2)",
                &[&id, &provider_message_id],
            )
            .await
            .map(|_| ())
            .map_err(|e| pg_error("sms_mark_sent", e))
        })
        .await
    }

    pub async fn mark_failed(
        &self,
        id: &str,
        error: &str,
        retryable: bool,
        attempt: i32,
    ) -> Result<(), DbError> {
        let error = without_nul(error);
        timed(async {
            let c = self.client().await?;
            c.execute(
                "SELECT auth.sms_mark_failed($1::text::uuid, $2, $3, $4)",
                &[&id, &error, &retryable, &attempt],
            )
            .await
            .map(|_| ())
            .map_err(|e| pg_error("sms_mark_failed", e))
        })
        .await
    }

    /// Records several outcomes in one transaction: one commit instead of one per message, and
    /// one statement for all deliveries. A delivery of a message that no longer exists is
    /// logged and skipped. If the server refuses anything else, none is kept and the caller
    /// records them one at a time.
    pub async fn record_batch(&self, outcomes: &[Recorded<'_>]) -> Result<(), DbError> {
        if !self.batched.load(Ordering::Relaxed) {
            return Err(DbError {
                transient: false,
                message: "batched recording is unavailable".into(),
            });
        }
        timed(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(|e| pg_error("BEGIN", e))?;
            // Deliveries (nearly all outcomes) in one statement; failures one call each,
            // pipelined on the connection.
            let (mut ids, mut provider_ids) = (Vec::new(), Vec::new());
            for o in outcomes {
                if let Recorded::Sent {
                    id,
                    provider_message_id,
                } = o
                {
                    ids.push(*id);
                    provider_ids.push(*provider_message_id);
                }
            }
            let sent = async {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                tx.query(
                    "SELECT id::text FROM auth.sms_mark_sent_many($1::text[]::uuid[], $2::text[]) AS id",
                    &[&ids, &provider_ids],
                )
                .await
            };
            let failed = tx
                .prepare_cached("SELECT auth.sms_mark_failed($1::text::uuid, $2, $3, $4)")
                .await
                .map_err(|e| pg_error("sms_mark_failed", e))?;
            let failures = outcomes.iter().filter_map(|o| match o {
                Recorded::Failed {
                    id,
                    error,
                    retryable,
                    attempt,
                } => {
                    let (tx, failed) = (&tx, &failed);
                    Some(async move {
                        let error = without_nul(error);
                        tx.execute(failed, &[id, &error, retryable, attempt]).await
                    })
                }
                Recorded::Sent { .. } => None,
            });
            let (sent, failures) =
                futures_util::join!(sent, futures_util::future::try_join_all(failures));
            let unknown = match sent {
                Ok(rows) => rows,
                Err(e) => {
                    if matches!(
                        e.code(),
                        Some(&SqlState::UNDEFINED_FUNCTION | &SqlState::INSUFFICIENT_PRIVILEGE)
                    ) {
                        // A database from before 0.2.0, or a role granted before it: one call
                        // per outcome still works.
                        self.batched.store(false, Ordering::Relaxed);
                        tracing::warn!(error = %with_causes(&e), "recording outcomes one at a time: auth.sms_mark_sent_many is missing or not granted (upgrade the extension and run auth.grant_dispatcher for this role again)");
                    }
                    return Err(pg_error("sms_mark_sent_many", e));
                }
            };
            failures.map_err(|e| pg_error("recording outcomes", e))?;
            for r in unknown {
                tracing::error!(message_id = %r.get::<_, &str>(0), "recording the delivery was refused: no such message (deleted meanwhile)");
            }
            tx.commit().await.map_err(|e| pg_error("COMMIT", e))
        })
        .await
    }

    pub async fn mark_captcha_passed(&self, id: &str) -> Result<(), DbError> {
        timed(async {
            let c = self.client().await?;
            c.execute(
                "SELECT auth.sms_mark_captcha_passed($1::text::uuid)",
                &[&id],
            )
            .await
            .map(|_| ())
            .map_err(|e| pg_error("sms_mark_captcha_passed", e))
        })
        .await
    }

    pub async fn stats(&self) -> Result<serde_json::Value, DbError> {
        timed(async {
            let c = self.client().await?;
            let row = c
                .query_one("SELECT auth.sms_queue_stats()::text", &[])
                .await
                .map_err(|e| pg_error("sms_queue_stats", e))?;
            serde_json::from_str(row.get::<_, &str>(0)).map_err(|e| DbError {
                transient: false,
                message: e.to_string(),
            })
        })
        .await
    }
}

/// Keeps a LISTEN connection open (reconnecting as needed) and wakes `wake` on every
/// notification, and once after each (re)connect in case something was missed meanwhile.
pub async fn listen(database: Database, wake: Arc<Notify>) {
    let mut delay = Duration::from_millis(200);
    loop {
        let connected = match database.connector() {
            Ok(tls) => database
                .config
                .connect(tls)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match connected {
            Ok((client, mut connection)) => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let pump = tokio::spawn(async move {
                    let mut stream =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(msg) = stream.next().await {
                        match msg {
                            Ok(AsyncMessage::Notification(_)) => {
                                let _ = tx.send(());
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                });
                if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                    tracing::warn!(error = %e, "LISTEN failed");
                } else {
                    tracing::debug!("listening for outbox notifications");
                    delay = Duration::from_millis(200);
                    wake.notify_one();
                    while rx.recv().await.is_some() {
                        wake.notify_one();
                    }
                    tracing::warn!("notification connection lost; reconnecting");
                }
                pump.abort();
            }
            Err(e) => tracing::warn!(error = %e, "notification connection failed; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
