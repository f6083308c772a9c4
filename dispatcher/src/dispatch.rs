//! The delivery loop: claim due messages, send them concurrently, record every outcome.

use crate::config::Config;
use crate::metrics::Metrics;
use crate::provider::Failure;
use crate::store::{self, Claimed, Store};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

struct Shared {
    cfg: Config,
    store: Store,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    max_attempts: AtomicI64,
    outcomes: mpsc::UnboundedSender<Report>,
}

/// An outcome on its way to the database, and who waits for it to be recorded.
struct Report {
    id: String,
    attempt: i32,
    outcome: Outcome,
    recorded: oneshot::Sender<()>,
}

enum Outcome {
    Sent(String),
    Failed(Failure),
}

/// Runs until `stop` turns true, then finishes in-flight sends (recording their results) within
/// the shutdown timeout. Messages whose results could not be recorded are retried by whichever
/// dispatcher claims them after their lease: delivery is at least once.
pub async fn run(
    cfg: Config,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let store = Store::new(&cfg.database, cfg.concurrency + 2)?;
    // No redirects: following one would re-send credentials, the phone and the code to
    // whichever host the answer names, and take that host's answer as delivery.
    let http = reqwest::Client::builder()
        .user_agent(concat!("pg-otp-dispatcher/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    let (outcomes, reports) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        cfg,
        store,
        http,
        metrics,
        max_attempts: AtomicI64::new(5),
        outcomes,
    });
    let writer = tokio::spawn(write_outcomes(shared.clone(), reports));
    let wake = Arc::new(Notify::new());
    let listener = tokio::spawn(store::listen(shared.cfg.database.clone(), wake.clone()));
    let stats = tokio::spawn(refresh_stats(shared.clone()));
    let cfg = &shared.cfg;
    // Send slots: a slot is held while a message is with the provider (and its captcha check).
    let slots = Arc::new(Semaphore::new(cfg.concurrency));
    let freed = Arc::new(Notify::new());
    // Each task lives until its outcome is recorded; at most this many may wait for that.
    let max_unrecorded = (cfg.concurrency * 4).max(500);
    let mut in_flight = JoinSet::new();
    let mut ready: VecDeque<Claimed> = VecDeque::new();
    let mut db_backoff = Duration::from_millis(100);
    // Set when a claim found fewer due messages than it asked for: the next claim waits for a
    // notification or the poll interval.
    let mut drained_until: Option<Instant> = None;

    // A claim is a commit, and so is recording outcomes: the loop keeps up to `concurrency`
    // claimed messages ready beside those being sent, claims once at least half of that room
    // (at most `batch_size`) is free, and gives a slot back as soon as its send returns, while
    // the outcome is recorded with others in one commit. A claimed message waits at most for a
    // slot, and is sent only while enough of its lease remains (see `lease_allows_send`).
    let room = cfg.concurrency * 2;
    let worthwhile = (cfg.concurrency / 2).clamp(1, cfg.batch_size);
    while !*stop.borrow() {
        start_ready(
            &shared,
            &slots,
            &freed,
            &mut ready,
            &mut in_flight,
            max_unrecorded,
        );
        if drained_until.is_some_and(|t| Instant::now() >= t) {
            drained_until = None;
        }
        let sending = cfg.concurrency - slots.available_permits();
        let want = room
            .saturating_sub(sending + ready.len())
            .min(cfg.batch_size);
        let idle = ready.is_empty() && sending == 0;
        if drained_until.is_none() && want > 0 && (want >= worthwhile || idle) {
            match shared.store.claim(want, cfg.lease).await {
                Ok(batch) => {
                    shared.metrics.db_ok();
                    db_backoff = Duration::from_millis(100);
                    if batch.len() < want {
                        drained_until = Some(Instant::now() + cfg.poll);
                    }
                    if !batch.is_empty() {
                        tracing::debug!(count = batch.len(), "claimed");
                    }
                    ready.extend(batch);
                }
                Err(e) => {
                    Metrics::inc(&shared.metrics.db_errors);
                    tracing::warn!(error = %e, "claiming failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(db_backoff) => {}
                        _ = stop.changed() => {}
                    }
                    db_backoff = (db_backoff * 2).min(Duration::from_secs(5));
                }
            }
            continue;
        }
        // Nothing to do until a slot frees, a task finishes, a message is announced, the poll
        // interval ends or we are told to stop.
        let poll_at = drained_until.map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = freed.notified() => {}
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            _ = wake.notified() => drained_until = None,
            _ = tokio::time::sleep_until(poll_at.unwrap_or_else(tokio::time::Instant::now)), if poll_at.is_some() => {}
            _ = stop.changed() => {}
        }
    }

    tracing::info!(
        in_flight = in_flight.len(),
        claimed = ready.len(),
        "stopping: no new claims; sending what is claimed and finishing in-flight sends"
    );
    let deadline = tokio::time::sleep(shared.cfg.shutdown_timeout);
    tokio::pin!(deadline);
    loop {
        start_ready(
            &shared,
            &slots,
            &freed,
            &mut ready,
            &mut in_flight,
            max_unrecorded,
        );
        if in_flight.is_empty() && ready.is_empty() {
            break;
        }
        tokio::select! {
            _ = freed.notified() => {}
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            _ = &mut deadline => {
                tracing::warn!(left = in_flight.len(), "shutdown timeout; unrecorded messages will be retried after their lease");
                in_flight.abort_all();
                break;
            }
        }
    }
    listener.abort();
    writer.abort();
    stats.abort();
    Ok(())
}

/// Hands claimed messages to free send slots (while not too many outcomes wait to be recorded).
fn start_ready(
    shared: &Arc<Shared>,
    slots: &Arc<Semaphore>,
    freed: &Arc<Notify>,
    ready: &mut VecDeque<Claimed>,
    in_flight: &mut JoinSet<()>,
    max_unrecorded: usize,
) {
    while in_flight.try_join_next().is_some() {}
    while !ready.is_empty() && in_flight.len() < max_unrecorded {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            break;
        };
        let claimed = ready.pop_front().expect("not empty");
        if !lease_allows_send(&shared.cfg, &claimed) {
            lease_short(shared, &claimed);
            continue;
        }
        let (s, freed) = (shared.clone(), freed.clone());
        in_flight.spawn(async move { deliver(&s, claimed, slot, &freed).await });
    }
}

fn lease_short(s: &Shared, c: &Claimed) {
    Metrics::inc(&s.metrics.lease_short);
    tracing::warn!(message_id = %c.message.id, "too little of the lease left to send it now; it is sent after the lease, by the next claim");
}

/// Whether a claimed message may still go to the provider: its send (one HTTP timeout at most)
/// and the recording of its outcome (as long again) must end inside the lease, or another claim
/// could send it a second time.
fn lease_allows_send(cfg: &Config, c: &Claimed) -> bool {
    Instant::now() + cfg.http_timeout * 2 <= c.leased_until
}

async fn deliver(s: &Shared, c: Claimed, slot: OwnedSemaphorePermit, freed: &Notify) {
    let m = &c.message;
    // The database's view of the time left, carried on this process's monotonic clock.
    let expires = Instant::now() + Duration::from_secs_f64(c.expires_in.max(0.0));
    let outcome = if m.body.is_empty() {
        Outcome::Failed(Failure::permanent("the message has no body"))
    } else {
        match captcha_verdict(s, &c).await {
            Err(f) => Outcome::Failed(f),
            Ok(()) if !lease_allows_send(&s.cfg, &c) => {
                // The captcha check took long; the message goes out after the lease instead.
                lease_short(s, &c);
                drop(slot);
                freed.notify_one();
                return;
            }
            Ok(()) if Instant::now() >= expires => {
                Metrics::inc(&s.metrics.expired);
                Outcome::Failed(Failure::permanent(
                    "the code expired before it could be sent",
                ))
            }
            Ok(()) => {
                let started = Instant::now();
                let result = s.cfg.provider.send(&s.http, m, s.cfg.http_timeout).await;
                s.metrics.observe_send(started.elapsed());
                match result {
                    Ok(id) => Outcome::Sent(id),
                    Err(f) => Outcome::Failed(f),
                }
            }
        }
    };
    match &outcome {
        Outcome::Sent(id) => {
            Metrics::inc(&s.metrics.sent);
            tracing::info!(message_id = %m.id, provider_message_id = %id, attempt = m.attempts, "sent");
        }
        Outcome::Failed(f) => {
            Metrics::inc(&s.metrics.failed);
            let will_retry =
                f.retryable && (m.attempts as i64) < s.max_attempts.load(Ordering::Relaxed);
            Metrics::inc(if will_retry {
                &s.metrics.retried
            } else {
                &s.metrics.dead
            });
            tracing::warn!(message_id = %m.id, attempt = m.attempts, retryable = f.retryable, error = %f.message, "delivery failed");
        }
    }
    // The slot is free for the next message; this task ends when the outcome is recorded (or
    // given up on: whoever claims the message after its lease then retries it).
    drop(slot);
    freed.notify_one();
    let (recorded, done) = oneshot::channel();
    let report = Report {
        id: m.id.clone(),
        attempt: m.attempts,
        outcome,
        recorded,
    };
    if s.outcomes.send(report).is_ok() {
        let _ = done.await;
    }
}

/// Records outcomes as they come: whatever has queued up while the previous commit ran goes
/// into the next one, so under load many messages share a commit and at low load nothing waits.
async fn write_outcomes(s: Arc<Shared>, mut reports: mpsc::UnboundedReceiver<Report>) {
    const MAX_BATCH: usize = 500;
    while let Some(first) = reports.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match reports.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let rows: Vec<store::Recorded> = batch
            .iter()
            .map(|r| match &r.outcome {
                Outcome::Sent(pid) => store::Recorded::Sent {
                    id: &r.id,
                    provider_message_id: pid,
                },
                Outcome::Failed(f) => store::Recorded::Failed {
                    id: &r.id,
                    error: &f.message,
                    retryable: f.retryable,
                    attempt: r.attempt,
                },
            })
            .collect();
        let together = s.store.record_batch(&rows).await.is_ok();
        if together {
            s.metrics.db_ok();
        } else {
            for r in &batch {
                record(&s, &r.id, r.attempt, &r.outcome).await;
            }
        }
        for r in batch {
            let _ = r.recorded.send(());
        }
    }
}

async fn captcha_verdict(s: &Shared, c: &Claimed) -> Result<(), Failure> {
    let Some(captcha) = &s.cfg.captcha else {
        return Ok(());
    };
    if c.captcha_verified {
        // Passed on an earlier attempt; tokens are single-use, so asking again would fail.
        return Ok(());
    }
    match c.captcha_token.as_deref() {
        None if s.cfg.captcha_required => {
            Metrics::inc(&s.metrics.captcha_rejected);
            Err(Failure::permanent("no captcha token"))
        }
        None => Ok(()),
        Some(token) => match captcha.verify(&s.http, token, s.cfg.http_timeout).await? {
            true => {
                if let Err(e) = s.store.mark_captcha_passed(&c.message.id).await {
                    tracing::warn!(message_id = %c.message.id, error = %e, "could not record the passed captcha");
                }
                Ok(())
            }
            false => {
                Metrics::inc(&s.metrics.captcha_rejected);
                Err(Failure::permanent("captcha verification failed"))
            }
        },
    }
}

/// Records an outcome, retrying while the database is unreachable (it may be restarting). An
/// error the server itself returns is not retried: the same call would get the same answer.
async fn record(s: &Shared, id: &str, attempt: i32, outcome: &Outcome) {
    let mut delay = Duration::from_millis(100);
    loop {
        let r = match outcome {
            Outcome::Sent(pid) => s.store.mark_sent(id, pid).await,
            Outcome::Failed(f) => {
                s.store
                    .mark_failed(id, &f.message, f.retryable, attempt)
                    .await
            }
        };
        match r {
            Ok(()) => {
                s.metrics.db_ok();
                return;
            }
            Err(e) => {
                Metrics::inc(&s.metrics.db_errors);
                if !e.transient {
                    tracing::error!(message_id = %id, error = %e, "recording the outcome was refused; giving up");
                    return;
                }
                tracing::warn!(message_id = %id, error = %e, "recording the outcome failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// How long to wait before the next refresh of the queue stats: the usual `interval`, or 100
/// times what the last call `took` when that is longer. `auth.sms_queue_stats()` counts the whole
/// outbox, which keeps finished messages until they are purged (a day by default), so on a busy
/// install one call can take seconds; spaced this way it costs the database at most about 1% of
/// one connection, however large the outbox grows.
fn stats_interval(interval: Duration, took: Duration) -> Duration {
    interval.max(took.saturating_mul(100))
}

async fn refresh_stats(s: Arc<Shared>) {
    loop {
        let started = Instant::now();
        match s.store.stats().await {
            Ok(v) => {
                s.metrics.db_ok();
                if let Some(n) = v["max_attempts"].as_i64() {
                    s.max_attempts.store(n, Ordering::Relaxed);
                }
                let counts = v["counts"].as_object().cloned().unwrap_or_default();
                let depth = ["queued", "sending"]
                    .iter()
                    .map(|k| counts.get(*k).and_then(|n| n.as_i64()).unwrap_or(0))
                    .sum();
                s.metrics.queue_depth.store(depth, Ordering::Relaxed);
                *s.metrics.outbox.lock().unwrap() = counts
                    .iter()
                    .map(|(k, n)| (k.clone(), n.as_i64().unwrap_or(0)))
                    .collect();
            }
            Err(e) => {
                Metrics::inc(&s.metrics.db_errors);
                tracing::debug!(error = %e, "stats refresh failed");
            }
        }
        let interval = Duration::from_secs(5)
            .min(s.cfg.poll * 4)
            .max(Duration::from_millis(500));
        tokio::time::sleep(stats_interval(interval, started.elapsed())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_stats_are_spaced_by_a_hundred_times_their_cost() {
        let five = Duration::from_secs(5);
        assert_eq!(stats_interval(five, Duration::from_millis(3)), five);
        assert_eq!(stats_interval(five, Duration::from_millis(50)), five);
        assert_eq!(
            stats_interval(five, Duration::from_secs(2)),
            Duration::from_secs(200)
        );
        assert_eq!(stats_interval(five, Duration::MAX), Duration::MAX);
    }
}
