//! The outbox side of sending codes: per-phone serialisation, rate limits, and queueing the
//! message row a dispatcher delivers.

use crate::lookup::{self, Cond, Order};
use crate::{budget, db};
use pg_otp_auth_core::config::Config;
use pg_otp_auth_core::error::{AuthError, Result};
use pg_otp_auth_core::{otp, ratelimit, template};
use serde::Deserialize;
use serde_json::Value;
use std::sync::LazyLock;

/// A family of rate counters in auth.rate_counters: the key's prefix, the bucket width, and how
/// many shards concurrent writers spread over (each backend writes its own).
pub struct Counter {
    pub prefix: &'static str,
    pub bucket_seconds: i64,
    pub shards: i32,
}

/// Code requests per client IP.
pub const SEND_IP: Counter = Counter {
    prefix: "send_ip:",
    bucket_seconds: 60,
    shards: 4,
};
/// Messages queued by the whole install (the hourly budget).
pub const BUDGET: Counter = Counter {
    prefix: "budget",
    bucket_seconds: 900,
    shards: 8,
};
/// Failed code verifications per client IP, written by the attempt recorder (one writer).
pub const VERIFY_IP: Counter = Counter {
    prefix: "verify_ip:",
    bucket_seconds: 300,
    shards: 1,
};

impl Counter {
    /// The SQL of the key: the prefix, followed by the text of `suffix` (an SQL expression).
    pub fn key_sql(&self, suffix: Option<&str>) -> String {
        match suffix {
            Some(e) => format!("'{}' || {e}", self.prefix),
            None => format!("'{}'", self.prefix),
        }
    }

    /// This backend's shard, from its backend number: numbers are small and reused, so
    /// concurrent sessions spread over the shards. Process ids spread them only by chance, and
    /// two sessions whose pids fell on one shard wrote the same row, waiting on each other's
    /// commits, for as long as both lived.
    pub fn shard(&self) -> i32 {
        backend_number().rem_euclid(self.shards)
    }
}

/// This backend's slot among the server's processes.
fn backend_number() -> i32 {
    #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15", feature = "pg16"))]
    let n = unsafe { pgrx::pg_sys::MyBackendId };
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    let n = unsafe { pgrx::pg_sys::MyProcNumber };
    n
}

/// The rows of a counter's key (its prefix followed by `suffix`) still inside a window of
/// `window` seconds ending at `now` (microseconds since 2000-01-01, as PostgreSQL keeps time),
/// as `(bucket start, age of the row's latest event, events)` in seconds: one index scan of at
/// most (window / bucket_seconds + 1) x shards rows.
pub fn counter_rows(
    counter: &Counter,
    suffix: &str,
    window: i64,
    now: i64,
) -> Result<Vec<(f64, f64, f64)>> {
    let key = format!("{}{suffix}", counter.prefix);
    let window_us = window.saturating_mul(1_000_000);
    let oldest_bucket =
        now.saturating_sub(window_us.saturating_add(counter.bucket_seconds * 1_000_000));
    let oldest_event = now.saturating_sub(window_us);
    let mut rows = Vec::new();
    lookup::scan(
        c"rate_counters",
        c"rate_counters_pkey",
        &[
            (c"key", Cond::TextEq(&key)),
            (c"bucket_start", Cond::After(oldest_bucket)),
        ],
        Order::Ascending,
        &[c"bucket_start", c"last_at", c"hits"],
        |r| {
            if let (Some(bucket), Some(last_at)) = (r.timestamp(0), r.timestamp(1)) {
                if last_at > oldest_event {
                    rows.push((
                        lookup::epoch_seconds(bucket),
                        lookup::interval_seconds(now - last_at),
                        r.int(2).unwrap_or(0) as f64,
                    ));
                }
            }
            true
        },
    )?;
    Ok(rows)
}

/// The phone's user, if any: who a code request is for.
#[derive(Debug, Deserialize)]
pub struct Recipient {
    pub id: String,
    pub disabled: bool,
    pub locale: String,
}

/// What a code request is admitted on, read by index (see `lookup`).
struct Admission {
    recipient: Option<Recipient>,
    /// Ages of the phone's latest requests, newest first: those inside the longer of its
    /// window and the cooldown, as many as the larger of its limit and one.
    phone: Vec<f64>,
    /// The address's counter rows (none without an address).
    ip: Vec<(f64, f64, f64)>,
    /// The budget's counter rows, read only when there is no tally to read instead.
    budget: Vec<(f64, f64, f64)>,
}

fn read_admission(
    cfg: &Config,
    phone: &str,
    ip: Option<&str>,
    budget_from_rows: bool,
) -> Result<Admission> {
    let now = lookup::now();
    lookup::statement(|| {
        let mut recipient = None;
        lookup::scan(
            c"users",
            c"users_phone_key",
            &[(c"phone", Cond::TextEq(phone))],
            Order::Ascending,
            &[c"id", c"locale", c"disabled", c"banned_until"],
            |r| {
                // As session::USER_BLOCKED: disabled, or banned until later than now().
                let banned = r.timestamp(3).is_some_and(|until| until > now);
                recipient = r.uuid(0).map(|id| Recipient {
                    id,
                    locale: r.text(1).unwrap_or_default(),
                    disabled: r.boolean(2).unwrap_or(true) || banned,
                });
                false
            },
        )?;
        let reach = cfg.sms_rate_per_phone_window.max(cfg.resend_cooldown);
        let since = now.saturating_sub(reach.saturating_mul(1_000_000));
        let limit = cfg.sms_rate_per_phone.max(1) as usize;
        let mut ages = Vec::new();
        lookup::scan(
            c"send_events",
            c"send_events_phone",
            &[
                (c"phone", Cond::TextEq(phone)),
                (c"created_at", Cond::After(since)),
            ],
            Order::Descending,
            &[c"created_at"],
            |r| {
                if let Some(at) = r.timestamp(0) {
                    ages.push(lookup::interval_seconds(now - at));
                }
                ages.len() < limit
            },
        )?;
        let ip_rows = match ip {
            Some(ip) => counter_rows(
                &SEND_IP,
                &lookup::host(ip)?,
                cfg.sms_rate_per_ip_window,
                now,
            )?,
            None => Vec::new(),
        };
        let budget = if budget_from_rows {
            counter_rows(&BUDGET, "", BUDGET_WINDOW as i64, now)?
        } else {
            Vec::new()
        };
        Ok(Admission {
            recipient,
            phone: ages,
            ip: ip_rows,
            budget,
        })
    })
}

/// The hourly budget's window.
const BUDGET_WINDOW: f64 = 3600.0;

/// Applies the cooldown and the per-phone, per-IP and global limits to a code request for
/// `phone`, and answers the phone's user (read by index with the rest, see `lookup`). The
/// caller holds the phone's lock (`lock_phone`) and then records the request with
/// [`record_send`].
///
/// Sends for one phone are serialised by that lock, so the per-phone limit is exact. The per-IP
/// limit and the global budget are read from bucketed counters (a fixed number of rows) and are
/// approximate only under concurrency; preloaded, the budget is read from its tally in shared
/// memory (see `budget`).
pub fn admit(cfg: &Config, phone: &str, ip: Option<&str>) -> Result<Option<Recipient>> {
    let now = lookup::now_seconds();
    let tallied = budget::read(now, BUDGET_WINDOW, BUDGET.bucket_seconds);
    let u = read_admission(
        cfg,
        phone,
        ip,
        matches!(tallied, budget::Reading::FromRows(_)),
    )?;
    let ip_rows = u.ip;
    let budget_rows = match tallied {
        budget::Reading::Tallied(rows) => rows,
        budget::Reading::FromRows(generation) => {
            budget::make(generation, &u.budget, now);
            u.budget
        }
    };

    let too_many = "Too many codes were requested for this phone number.";
    if let Some(s) =
        ratelimit::cooldown_retry_after(u.phone.first().copied(), cfg.resend_cooldown as f64)
    {
        return Err(AuthError::rate_limited(
            "over-sms-send-rate-limit",
            "A new code can be requested shortly.",
            s,
        ));
    }
    if let Some(s) = ratelimit::sliding_window_retry_after(
        &ratelimit::window_oldest_first(
            &u.phone,
            cfg.sms_rate_per_phone,
            cfg.sms_rate_per_phone_window as f64,
        ),
        cfg.sms_rate_per_phone,
        cfg.sms_rate_per_phone_window as f64,
    ) {
        return Err(AuthError::rate_limited(
            "over-sms-send-rate-limit",
            too_many,
            s,
        ));
    }
    if ip.is_some() {
        if let Some(s) = ratelimit::bucketed_retry_after(
            &ratelimit::buckets_of_shards(&ip_rows),
            cfg.sms_rate_per_ip,
            cfg.sms_rate_per_ip_window as f64,
        ) {
            return Err(AuthError::rate_limited(
                "over-request-rate-limit",
                "Too many requests from this address.",
                s,
            ));
        }
    }
    if let Some(s) = ratelimit::bucketed_retry_after(
        &ratelimit::buckets_of_shards(&budget_rows),
        cfg.sms_budget_per_hour,
        BUDGET_WINDOW,
    ) {
        return Err(AuthError::rate_limited(
            "over-sms-send-rate-limit",
            "The service has sent too many messages; try again later.",
            s,
        ));
    }
    Ok(u.recipient)
}

/// A code to store with the request that [`record_send`] records: it supersedes the phone's
/// earlier live codes of its purpose and their queued messages.
pub struct NewCode<'a> {
    pub user_id: &'a str,
    pub purpose: &'a str,
    pub hash: Vec<u8>,
    pub ttl_seconds: i64,
    /// The rendered message, None for a test number (stored, never sent).
    pub body: Option<String>,
    pub captcha_token: Option<&'a str>,
}

static RECORD_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH event AS (
             INSERT INTO auth.send_events (phone, ip, channel, queued)
             VALUES ($1, $2::inet, $3, $4)),
         counted AS (
             INSERT INTO auth.rate_counters AS r (key, bucket_start, shard, hits, last_at)
             SELECT k, to_timestamp(floor(date_part('epoch', now()) / w) * w), s, 1, now()
             FROM (VALUES ({ip_key}, {ip_width}, $5), ({budget_key}, {budget_width}, $6))
                  AS v (k, w, s)
             WHERE k IS NOT NULL AND (k <> {budget_key} OR $4)
             ON CONFLICT (key, bucket_start, shard)
             DO UPDATE SET hits = r.hits + 1, last_at = greatest(r.last_at, excluded.last_at)),
         superseded_codes AS (
             -- No gate on $7 (a null user matches no row): a one-time filter would add a
             -- Result node for the executor to start on every send.
             UPDATE auth.otp_codes SET invalidated_at = now()
             WHERE subject = $1 AND purpose = $8 AND user_id = $7::uuid
               AND consumed_at IS NULL AND invalidated_at IS NULL),
         superseded_messages AS (
             -- Not yet handed to a provider, they would only deliver a dead code.
             UPDATE auth.sms_outbox
             SET status = 'expired', body = NULL, captcha_token = NULL,
                 last_error = 'superseded by a newer code', updated_at = now()
             WHERE phone = $1 AND purpose = $8 AND user_id = $7::uuid AND status = 'queued'),
         code AS (
             INSERT INTO auth.otp_codes (id, user_id, purpose, subject, code_hash, expires_at)
             SELECT $13::uuid, $7::uuid, $8, $1, $9, now() + make_interval(secs => $10)
             WHERE $7::uuid IS NOT NULL),
         message AS (
             INSERT INTO auth.sms_outbox
                 (id, phone, channel, body, captcha_token, purpose, user_id, expires_at)
             SELECT $14::uuid, $1, $3, $11, $12, $8, $7::uuid, now() + make_interval(secs => $10)
             WHERE $7::uuid IS NOT NULL AND $11::text IS NOT NULL)
         SELECT to_json(now() + make_interval(secs => $10))",
        ip_key = SEND_IP.key_sql(Some("host($2::inet)")),
        budget_key = BUDGET.key_sql(None),
        ip_width = SEND_IP.bucket_seconds,
        budget_width = BUDGET.bucket_seconds,
    )
});

/// Records an admitted code request (the send event and the rate counters; the budget counts
/// it only if a message is queued), and stores `code` and queues its message, all in one
/// statement. Answers the message (or, for a test number, the code); without a code, an id and
/// expiry of the same shape that name nothing, so callers cannot tell the cases apart. The ids
/// are made here (time-ordered, as the tables' defaults), so the statement returns only the
/// expiry, which code and message share.
/// The outbox insert trigger wakes the dispatcher (see `wakeup`).
pub fn record_send(
    cfg: &Config,
    phone: &str,
    ip: Option<&str>,
    channel: &str,
    will_queue: bool,
    code: Option<NewCode>,
) -> Result<Issued> {
    let (user_id, purpose, hash, ttl, body, captcha_token) = match code {
        Some(c) => (
            Some(c.user_id),
            c.purpose,
            Some(c.hash),
            c.ttl_seconds,
            c.body,
            c.captcha_token,
        ),
        None => (None, "", None, cfg.otp_ttl, None, None),
    };
    let code_id = user_id.map(|_| otp::time_ordered_uuid_text());
    let message_id = code_id
        .as_ref()
        .and(body.as_ref())
        .map(|_| otp::time_ordered_uuid_text());
    // The message if one is queued, else the code if one is stored, else an id of nothing.
    let answered = message_id
        .clone()
        .or_else(|| code_id.clone())
        .unwrap_or_else(otp::time_ordered_uuid_text);
    let expires_at: Value = db::row(
        &RECORD_SQL,
        &[
            db::text(phone),
            db::opt_text(ip),
            db::text(channel),
            will_queue.into(),
            SEND_IP.shard().into(),
            BUDGET.shard().into(),
            db::opt_text(user_id),
            db::text(purpose),
            hash.into(),
            ttl.into(),
            db::opt_text(body.as_deref()),
            db::opt_text(captcha_token),
            db::opt_text(code_id.as_deref()),
            db::opt_text(message_id.as_deref()),
        ],
    )?
    .ok_or_else(|| AuthError::internal("The code could not be stored."))?;
    if will_queue {
        budget::count_at_commit(lookup::now_seconds(), BUDGET.bucket_seconds);
    }
    Ok(Issued {
        id: Value::String(answered),
        expires_at,
    })
}

/// Records an admitted code request for `phone` and, when it is `to` a user (id, locale),
/// issues a code of `purpose` and queues its message; answers as `send_sms_otp` does, the same
/// shape whether or not anything was sent.
pub fn send_code(
    cfg: &Config,
    phone: &str,
    ip: Option<&str>,
    channel: &str,
    purpose: &str,
    to: Option<(&str, &str)>,
    captcha_token: Option<&str>,
) -> Result<Value> {
    let code = match to {
        Some((user_id, locale)) => {
            let code = new_code(cfg, phone)?;
            let pepper = crate::config::secret("otp_pepper")?;
            Some(NewCode {
                user_id,
                purpose,
                hash: otp::hash_code(&pepper, purpose, phone, &code.value),
                ttl_seconds: cfg.otp_ttl,
                body: body(cfg, &code, Some(locale), cfg.otp_ttl)?,
                captcha_token,
            })
        }
        None => None,
    };
    let i = record_send(cfg, phone, ip, channel, to.is_some(), code)?;
    Ok(
        serde_json::json!({"message_id": i.id, "phone": pg_otp_auth_core::phone::mask(phone),
                          "channel": channel, "expires_at": i.expires_at}),
    )
}

pub fn lock_phone(phone: &str) -> Result<()> {
    db::lock("phone", phone)
}

pub fn channel(name: &str) -> Result<&'static str> {
    match name {
        "sms" => Ok("sms"),
        "whatsapp" => Ok("whatsapp"),
        _ => Err(AuthError::invalid_request(
            "channel must be sms or whatsapp.",
        )),
    }
}

/// The code to send to `phone`: its fixed code if it is a test number (then nothing is sent),
/// else a fresh random one.
pub struct Code {
    pub value: String,
    pub is_test: bool,
}

pub fn new_code(cfg: &Config, phone: &str) -> Result<Code> {
    Ok(match cfg.test_otp.get(phone) {
        Some(fixed) => Code {
            value: fixed.clone(),
            is_test: true,
        },
        None => Code {
            value: otp::generate_code(cfg.otp_length)?,
            is_test: false,
        },
    })
}

#[derive(Deserialize)]
pub struct Issued {
    pub id: Value,
    pub expires_at: Value,
}

pub struct Message<'a> {
    pub phone: &'a str,
    pub channel: &'a str,
    pub captcha_token: Option<&'a str>,
    pub purpose: &'a str,
    pub user_id: &'a str,
    /// The recipient's locale, which picks the template.
    pub locale: Option<&'a str>,
    /// How long the code lives, for `{{ttl_minutes}}`.
    pub ttl_seconds: i64,
    /// The code's expiry: the dispatcher must not send the message after it.
    pub expires_at: &'a str,
}

/// Renders `code` into the recipient's template and queues the message, unless the code is a
/// test number's (never sent). The insert trigger wakes the dispatcher (see `wakeup`).
pub fn queue_code(cfg: &Config, code: &Code, m: &Message) -> Result<Option<Issued>> {
    match body(cfg, code, m.locale, m.ttl_seconds)? {
        Some(body) => queue(m, &body).map(Some),
        None => Ok(None),
    }
}

/// The message carrying `code` in the template of `locale`; None for a test number's code.
pub fn body(
    cfg: &Config,
    code: &Code,
    locale: Option<&str>,
    ttl_seconds: i64,
) -> Result<Option<String>> {
    if code.is_test {
        return Ok(None);
    }
    let ttl_minutes = (ttl_seconds + 59) / 60;
    template::render(cfg.template_for(locale), &code.value, ttl_minutes).map(Some)
}

fn queue(m: &Message, body: &str) -> Result<Issued> {
    db::row_as(
        "INSERT INTO auth.sms_outbox (phone, channel, body, captcha_token, purpose, user_id, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6::uuid, $7::timestamptz)
         RETURNING jsonb_build_object('id', id, 'expires_at', expires_at)",
        &[
            db::text(m.phone),
            db::text(m.channel),
            db::text(body),
            db::opt_text(m.captcha_token),
            db::text(m.purpose),
            db::text(m.user_id),
            db::text(m.expires_at),
        ],
    )?
    .ok_or_else(|| AuthError::internal("The message could not be queued."))
}
