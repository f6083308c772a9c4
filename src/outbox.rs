//! The outbox side of sending codes: per-phone serialisation, rate limits, and queueing the
//! message row a dispatcher delivers.

use crate::db;
use pg_otp_auth_core::config::Config;
use pg_otp_auth_core::error::{AuthError, Result};
use pg_otp_auth_core::{otp, ratelimit, template};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct Usage {
    phone: Vec<f64>,
    last: Option<f64>,
    ip: Vec<f64>,
    global: Vec<f64>,
}

/// Applies the cooldown and the per-phone, per-IP and global limits, then records this request.
///
/// Sends for one phone are serialised by an advisory lock so that concurrent requests cannot
/// all slip under the limit; per-IP and global limits are approximate under concurrency.
pub fn admit_send(
    cfg: &Config,
    phone: &str,
    ip: Option<&str>,
    channel: &str,
    will_queue: bool,
) -> Result<()> {
    let u: Usage = db::row_as(
        "SELECT jsonb_build_object(
            'phone', (SELECT coalesce(jsonb_agg(a ORDER BY a DESC), '[]') FROM (
                SELECT extract(epoch FROM now() - created_at)::float8 a FROM auth.send_events
                WHERE phone = $1 AND created_at > now() - make_interval(secs => $2)
                ORDER BY created_at DESC LIMIT $3) x),
            'last', (SELECT extract(epoch FROM now() - max(created_at))::float8
                     FROM auth.send_events WHERE phone = $1),
            'ip', (SELECT coalesce(jsonb_agg(a ORDER BY a DESC), '[]') FROM (
                SELECT extract(epoch FROM now() - created_at)::float8 a FROM auth.send_events
                WHERE $4::inet IS NOT NULL AND ip = $4::inet
                  AND created_at > now() - make_interval(secs => $5)
                ORDER BY created_at DESC LIMIT $6) x),
            'global', (SELECT coalesce(jsonb_agg(a ORDER BY a DESC), '[]') FROM (
                SELECT extract(epoch FROM now() - created_at)::float8 a FROM auth.send_events
                WHERE queued AND created_at > now() - interval '1 hour'
                ORDER BY created_at DESC LIMIT $7) x))",
        &[
            db::text(phone),
            cfg.sms_rate_per_phone_window.into(),
            cfg.sms_rate_per_phone.into(),
            db::opt_text(ip),
            cfg.sms_rate_per_ip_window.into(),
            cfg.sms_rate_per_ip.into(),
            cfg.sms_budget_per_hour.into(),
        ],
    )?
    .ok_or_else(|| AuthError::internal("Rate-limit state is unreadable."))?;

    let too_many = "Too many codes were requested for this phone number.";
    if let Some(s) = ratelimit::cooldown_retry_after(u.last, cfg.resend_cooldown as f64) {
        return Err(AuthError::rate_limited(
            "over-sms-send-rate-limit",
            "A new code can be requested shortly.",
            s,
        ));
    }
    if let Some(s) = ratelimit::sliding_window_retry_after(
        &u.phone,
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
        if let Some(s) = ratelimit::sliding_window_retry_after(
            &u.ip,
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
    if let Some(s) =
        ratelimit::sliding_window_retry_after(&u.global, cfg.sms_budget_per_hour, 3600.0)
    {
        return Err(AuthError::rate_limited(
            "over-sms-send-rate-limit",
            "The service has sent too many messages; try again later.",
            s,
        ));
    }
    db::run(
        "INSERT INTO auth.send_events (phone, ip, channel, queued) VALUES ($1, $2::inet, $3, $4)",
        &[
            db::text(phone),
            db::opt_text(ip),
            db::text(channel),
            will_queue.into(),
        ],
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
/// test number's (never sent). The insert trigger notifies `pg_otp_auth_outbox`.
pub fn queue_code(cfg: &Config, code: &Code, m: &Message) -> Result<Option<Issued>> {
    if code.is_test {
        return Ok(None);
    }
    let ttl_minutes = (m.ttl_seconds + 59) / 60;
    let body = template::render(cfg.template_for(m.locale), &code.value, ttl_minutes)?;
    queue(m, &body).map(Some)
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
