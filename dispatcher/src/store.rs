//! The dispatcher's database calls. It uses only the four functions auth.grant_dispatcher()
//! grants: sms_claim, sms_mark_sent, sms_mark_failed and sms_queue_stats.

use crate::provider::Outgoing;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};

pub const CHANNEL: &str = "pg_otp_auth_outbox";

#[derive(Clone)]
pub struct Store {
    pool: Pool,
}

pub struct Claimed {
    pub message: Outgoing,
    pub captcha_token: Option<String>,
    pub expired: bool,
}

impl Store {
    pub fn new(database_url: &str, size: usize) -> Result<Store, String> {
        let pg: tokio_postgres::Config = database_url.parse().map_err(|e| format!("{e}"))?;
        let manager = Manager::from_config(
            pg,
            NoTls,
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
        Ok(Store { pool })
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, String> {
        self.pool
            .get()
            .await
            .map_err(|e| format!("database unavailable: {e}"))
    }

    pub async fn claim(&self, batch: usize, lease: Duration) -> Result<Vec<Claimed>, String> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT id::text, phone, channel, body, captcha_token, attempts, expires_at <= now()
                 FROM auth.sms_claim($1::int, make_interval(secs => $2::float8))",
                &[&(batch as i32), &lease.as_secs_f64()],
            )
            .await
            .map_err(|e| format!("sms_claim failed: {e}"))?;
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
                expired: r.get(6),
            })
            .collect())
    }

    pub async fn mark_sent(&self, id: &str, provider_message_id: &str) -> Result<(), String> {
        let c = self.client().await?;
        c.execute(
            "SELECT auth.sms_mark_sent($1::text::uuid, $2)",
            &[&id, &provider_message_id],
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("sms_mark_sent failed: {e}"))
    }

    pub async fn mark_failed(&self, id: &str, error: &str, retryable: bool) -> Result<(), String> {
        let c = self.client().await?;
        c.execute(
            "SELECT auth.sms_mark_failed($1::text::uuid, $2, $3)",
            &[&id, &error, &retryable],
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("sms_mark_failed failed: {e}"))
    }

    pub async fn stats(&self) -> Result<serde_json::Value, String> {
        let c = self.client().await?;
        let row = c
            .query_one("SELECT auth.sms_queue_stats()::text", &[])
            .await
            .map_err(|e| format!("sms_queue_stats failed: {e}"))?;
        serde_json::from_str(row.get::<_, &str>(0)).map_err(|e| e.to_string())
    }
}

/// Keeps a LISTEN connection open (reconnecting as needed) and wakes `wake` on every
/// notification, and once after each (re)connect in case something was missed meanwhile.
pub async fn listen(database_url: String, wake: Arc<Notify>) {
    let mut delay = Duration::from_millis(200);
    loop {
        match tokio_postgres::connect(&database_url, NoTls).await {
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
