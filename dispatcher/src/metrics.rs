//! Prometheus metrics and the health endpoint.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

pub struct Metrics {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub dead: AtomicU64,
    pub expired: AtomicU64,
    pub lease_short: AtomicU64,
    pub captcha_rejected: AtomicU64,
    pub db_errors: AtomicU64,
    pub queue_depth: AtomicI64,
    pub outbox: Mutex<Vec<(String, i64)>>,
    latency: Mutex<(Vec<u64>, f64, u64)>,
    last_db_ok: Mutex<Option<Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            lease_short: AtomicU64::new(0),
            captcha_rejected: AtomicU64::new(0),
            db_errors: AtomicU64::new(0),
            queue_depth: AtomicI64::new(0),
            outbox: Mutex::new(Vec::new()),
            latency: Mutex::new((vec![0; BUCKETS.len()], 0.0, 0)),
            last_db_ok: Mutex::new(None),
        }
    }
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe_send(&self, d: Duration) {
        let s = d.as_secs_f64();
        let mut l = self.latency.lock().unwrap();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                l.0[i] += 1;
            }
        }
        l.1 += s;
        l.2 += 1;
    }

    pub fn db_ok(&self) {
        *self.last_db_ok.lock().unwrap() = Some(Instant::now());
    }

    /// Healthy when the database answered recently.
    pub fn healthy(&self, within: Duration) -> bool {
        self.last_db_ok
            .lock()
            .unwrap()
            .is_some_and(|t| t.elapsed() <= within)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let r = Ordering::Relaxed;
        counter(
            &mut out,
            "pg_otp_dispatcher_sent_total",
            "Messages delivered to the provider.",
            self.sent.load(r),
        );
        counter(
            &mut out,
            "pg_otp_dispatcher_failed_total",
            "Delivery attempts that failed.",
            self.failed.load(r),
        );
        counter(
            &mut out,
            "pg_otp_dispatcher_retried_total",
            "Failed attempts that will be retried.",
            self.retried.load(r),
        );
        counter(
            &mut out,
            "pg_otp_dispatcher_dead_total",
            "Messages given up on (permanent error or out of attempts).",
            self.dead.load(r),
        );
        counter(
            &mut out,
            "pg_otp_dispatcher_expired_total",
            "Claimed messages not sent because their code had expired.",
            self.expired.load(r),
        );
        counter(
            &mut out,
            "pg_otp_dispatcher_lease_short_total",
            "Claimed messages left unsent because too little of their lease remained; another claim sends them after it.",
            self.lease_short.load(r),
        );
        counter(
            &mut out,
            "pg_otp_dispatcher_captcha_rejected_total",
            "Messages dropped because their captcha failed.",
            self.captcha_rejected.load(r),
        );
        counter(
            &mut out,
            "pg_otp_dispatcher_db_errors_total",
            "Database calls that failed.",
            self.db_errors.load(r),
        );
        let _ = writeln!(out, "# HELP pg_otp_outbox_queue_depth Messages queued or being sent.\n# TYPE pg_otp_outbox_queue_depth gauge\npg_otp_outbox_queue_depth {}", self.queue_depth.load(r));
        let _ = writeln!(out, "# HELP pg_otp_outbox_messages Outbox rows by status.\n# TYPE pg_otp_outbox_messages gauge");
        for (status, n) in self.outbox.lock().unwrap().iter() {
            let _ = writeln!(out, "pg_otp_outbox_messages{{status=\"{status}\"}} {n}");
        }
        let l = self.latency.lock().unwrap();
        let name = "pg_otp_dispatcher_send_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time to deliver one message to the provider.\n# TYPE {name} histogram"
        );
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", l.0[i]);
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
            l.2, l.1, l.2
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = Metrics::default();
        Metrics::inc(&m.sent);
        Metrics::inc(&m.sent);
        m.observe_send(Duration::from_millis(30));
        m.observe_send(Duration::from_secs(3));
        *m.outbox.lock().unwrap() = vec![("queued".into(), 4)];
        let text = m.render();
        assert!(text.contains("pg_otp_dispatcher_sent_total 2\n"));
        assert!(text.contains("pg_otp_dispatcher_send_duration_seconds_bucket{le=\"0.025\"} 0\n"));
        assert!(text.contains("pg_otp_dispatcher_send_duration_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(text.contains("pg_otp_dispatcher_send_duration_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("pg_otp_dispatcher_send_duration_seconds_count 2\n"));
        assert!(text.contains("pg_otp_outbox_messages{status=\"queued\"} 4\n"));
    }

    #[test]
    fn health_follows_the_last_database_success() {
        let m = Metrics::default();
        assert!(!m.healthy(Duration::from_secs(10)));
        m.db_ok();
        assert!(m.healthy(Duration::from_secs(10)));
    }
}
