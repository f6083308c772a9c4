//! SMS/WhatsApp providers: the request each one documents, and how each answer is read.
//!
//! Building requests and reading answers are pure functions, tested without a network; `send`
//! only carries them over HTTP.

use crate::errors::{with_causes, without_urls};
use crate::webhook;
use serde_json::{json, Value};
use std::time::Duration;

/// A message as claimed from the outbox.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: String,
    pub phone: String,
    pub channel: String,
    pub body: String,
    pub attempts: i32,
}

/// Why a delivery failed, and whether trying again could help.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub retryable: bool,
    pub message: String,
}

impl Failure {
    pub fn permanent(message: impl Into<String>) -> Self {
        Failure {
            retryable: false,
            message: message.into(),
        }
    }
    pub fn transient(message: impl Into<String>) -> Self {
        Failure {
            retryable: true,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Form(Vec<(String, String)>),
    Json(Value),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub basic_auth: Option<(String, String)>,
    pub body: Body,
}

#[derive(Debug, Clone)]
pub enum Provider {
    Twilio {
        base_url: String,
        account_sid: String,
        auth_token: String,
        from: Option<String>,
        messaging_service_sid: Option<String>,
    },
    MessageBird {
        base_url: String,
        access_key: String,
        originator: String,
    },
    Vonage {
        base_url: String,
        api_key: String,
        api_secret: String,
        from: String,
    },
    Textlocal {
        base_url: String,
        api_key: String,
        sender: String,
    },
    Webhook {
        url: String,
        secret: webhook::Secret,
    },
    Log,
}

/// Twilio error codes that mean the number itself is bad: retrying cannot help.
const TWILIO_BAD_NUMBER: &[i64] = &[
    21211, 21214, 21217, 21219, 21408, 21610, 21612, 21614, 30005, 30006,
];

fn digits(phone: &str) -> String {
    phone.trim_start_matches('+').to_string()
}

fn http_class(status: u16, what: &str) -> Failure {
    if status == 429 || status == 408 || status >= 500 {
        Failure::transient(format!("{what}: HTTP {status}"))
    } else {
        Failure::permanent(format!("{what}: HTTP {status}"))
    }
}

/// A redirect is never followed (the client has no redirect policy): the request, with its
/// credentials and code, was meant for the configured host only. Retrying would get the same
/// answer, so the message is dead at once.
pub fn redirect_refused(what: &str, status: u16) -> Failure {
    Failure::permanent(format!(
        "{what}: HTTP {status} redirect refused (redirects are never followed; configure the final URL)"
    ))
}

/// A request error without its URL, with its underlying cause, for logs and the outbox's
/// last_error.
pub fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    without_urls(&with_causes(&e.without_url()))
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or(Value::Null)
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Provider {
    pub fn name(&self) -> &'static str {
        match self {
            Provider::Twilio { .. } => "twilio",
            Provider::MessageBird { .. } => "messagebird",
            Provider::Vonage { .. } => "vonage",
            Provider::Textlocal { .. } => "textlocal",
            Provider::Webhook { .. } => "webhook",
            Provider::Log => "log",
        }
    }

    /// The HTTP request that delivers `m` (None for the log provider).
    pub fn request(&self, m: &Outgoing, now_unix: i64) -> Result<Option<Request>, Failure> {
        let sms_only = |name: &str| {
            if m.channel == "sms" {
                Ok(())
            } else {
                Err(Failure::permanent(format!(
                    "{name} is configured for SMS only; channel {} is not supported",
                    m.channel
                )))
            }
        };
        let req = match self {
            Provider::Twilio {
                base_url,
                account_sid,
                auth_token,
                from,
                messaging_service_sid,
            } => {
                let wa = |n: &str| {
                    if m.channel == "whatsapp" {
                        format!("whatsapp:{n}")
                    } else {
                        n.to_string()
                    }
                };
                let mut form = vec![
                    ("To".to_string(), wa(&m.phone)),
                    ("Body".to_string(), m.body.clone()),
                ];
                match (messaging_service_sid, from) {
                    (Some(sid), _) => form.push(("MessagingServiceSid".into(), sid.clone())),
                    (None, Some(f)) => form.push(("From".into(), wa(f))),
                    (None, None) => return Err(Failure::permanent("twilio needs a sender")),
                }
                Request {
                    url: format!(
                        "{}/2010-04-01/Accounts/{account_sid}/Messages.json",
                        base_url.trim_end_matches('/')
                    ),
                    headers: vec![],
                    basic_auth: Some((account_sid.clone(), auth_token.clone())),
                    body: Body::Form(form),
                }
            }
            Provider::MessageBird {
                base_url,
                access_key,
                originator,
            } => {
                sms_only("messagebird")?;
                Request {
                    url: format!("{}/messages", base_url.trim_end_matches('/')),
                    headers: vec![("Authorization".into(), format!("AccessKey {access_key}"))],
                    basic_auth: None,
                    body: Body::Json(json!({
                        "recipients": [digits(&m.phone)],
                        "originator": originator,
                        "body": m.body,
                        "reference": m.id,
                    })),
                }
            }
            Provider::Vonage {
                base_url,
                api_key,
                api_secret,
                from,
            } => {
                sms_only("vonage")?;
                let mut form = vec![
                    ("api_key".to_string(), api_key.clone()),
                    ("api_secret".to_string(), api_secret.clone()),
                    ("from".to_string(), from.clone()),
                    ("to".to_string(), digits(&m.phone)),
                    ("text".to_string(), m.body.clone()),
                    ("client-ref".to_string(), m.id.clone()),
                ];
                if !m.body.is_ascii() {
                    form.push(("type".into(), "unicode".into()));
                }
                Request {
                    url: format!("{}/sms/json", base_url.trim_end_matches('/')),
                    headers: vec![],
                    basic_auth: None,
                    body: Body::Form(form),
                }
            }
            Provider::Textlocal {
                base_url,
                api_key,
                sender,
            } => {
                sms_only("textlocal")?;
                Request {
                    url: format!("{}/send/", base_url.trim_end_matches('/')),
                    headers: vec![],
                    basic_auth: None,
                    body: Body::Form(vec![
                        ("apikey".into(), api_key.clone()),
                        ("numbers".into(), digits(&m.phone)),
                        ("sender".into(), sender.clone()),
                        ("message".into(), m.body.clone()),
                        ("custom".into(), m.id.clone()),
                    ]),
                }
            }
            Provider::Webhook { url, secret } => {
                let payload = json!({
                    "message_id": m.id,
                    "phone": m.phone,
                    "channel": m.channel,
                    "body": m.body,
                    "attempt": m.attempts,
                });
                let bytes = serde_json::to_vec(&payload).expect("JSON");
                let id = webhook::webhook_id(&m.id);
                Request {
                    url: url.clone(),
                    headers: vec![
                        (
                            "webhook-signature".into(),
                            webhook::sign(secret, &id, now_unix, &bytes),
                        ),
                        ("webhook-id".into(), id),
                        ("webhook-timestamp".into(), now_unix.to_string()),
                    ],
                    basic_auth: None,
                    body: Body::Json(payload),
                }
            }
            Provider::Log => return Ok(None),
        };
        Ok(Some(req))
    }

    /// Reads the provider's answer: the provider's message id, or why it failed.
    pub fn interpret(&self, m: &Outgoing, status: u16, body: &str) -> Result<String, Failure> {
        let v = json_of(body);
        match self {
            Provider::Twilio { .. } => {
                if !(200..300).contains(&status) {
                    let code = v["code"].as_i64().unwrap_or(0);
                    let msg = format!(
                        "twilio: HTTP {status} {code} {}",
                        v["message"].as_str().unwrap_or("")
                    );
                    return Err(if TWILIO_BAD_NUMBER.contains(&code) {
                        Failure::permanent(msg)
                    } else {
                        Failure {
                            message: msg,
                            ..http_class(status, "twilio")
                        }
                    });
                }
                let st = v["status"].as_str().unwrap_or("");
                if matches!(st, "failed" | "undelivered") {
                    let code = v["error_code"].as_i64().unwrap_or(0);
                    let msg = format!("twilio: message {st} ({code})");
                    return Err(if TWILIO_BAD_NUMBER.contains(&code) {
                        Failure::permanent(msg)
                    } else {
                        Failure::transient(msg)
                    });
                }
                text_of(&v["sid"]).ok_or_else(|| Failure::transient("twilio: answer without sid"))
            }
            Provider::MessageBird { .. } => {
                if !(200..300).contains(&status) {
                    let detail = v["errors"][0]["description"].as_str().unwrap_or("");
                    return Err(Failure {
                        message: format!("messagebird: HTTP {status} {detail}"),
                        ..http_class(status, "messagebird")
                    });
                }
                text_of(&v["id"])
                    .ok_or_else(|| Failure::transient("messagebird: answer without id"))
            }
            Provider::Vonage { .. } => {
                if !(200..300).contains(&status) {
                    return Err(http_class(status, "vonage"));
                }
                let first = &v["messages"][0];
                match first["status"].as_str() {
                    Some("0") => text_of(&first["message-id"])
                        .ok_or_else(|| Failure::transient("vonage: answer without message-id")),
                    Some(code) => {
                        let msg = format!(
                            "vonage: status {code} {}",
                            first["error-text"].as_str().unwrap_or("")
                        );
                        // 1 = throttled, 5 = internal error: worth another try; the rest are about the request.
                        Err(if matches!(code, "1" | "5") {
                            Failure::transient(msg)
                        } else {
                            Failure::permanent(msg)
                        })
                    }
                    None => Err(Failure::transient("vonage: unreadable answer")),
                }
            }
            Provider::Textlocal { .. } => {
                if !(200..300).contains(&status) {
                    return Err(http_class(status, "textlocal"));
                }
                if v["status"] == "success" {
                    return text_of(&v["messages"][0]["id"])
                        .or_else(|| text_of(&v["batch_id"]))
                        .ok_or_else(|| Failure::transient("textlocal: answer without id"));
                }
                let e = &v["errors"][0];
                let msg = format!(
                    "textlocal: error {} {}",
                    e["code"],
                    e["message"].as_str().unwrap_or("")
                );
                Err(if v["status"] == "failure" {
                    Failure::permanent(msg)
                } else {
                    Failure::transient(msg)
                })
            }
            Provider::Webhook { .. } => {
                if !(200..300).contains(&status) {
                    return Err(http_class(status, "webhook"));
                }
                Ok(text_of(&v["id"]).unwrap_or_else(|| webhook::webhook_id(&m.id)))
            }
            Provider::Log => Ok(format!("log-{}", m.id)),
        }
    }

    /// Delivers `m`: Ok(provider message id) or the failure.
    pub async fn send(
        &self,
        http: &reqwest::Client,
        m: &Outgoing,
        timeout: Duration,
    ) -> Result<String, Failure> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let Some(req) = self.request(m, now)? else {
            // The development provider: the message goes to standard output.
            println!("[{}] to {}: {}", m.channel, m.phone, m.body);
            return self.interpret(m, 200, "");
        };
        let mut b = http.post(&req.url).timeout(timeout);
        for (k, v) in &req.headers {
            b = b.header(k, v);
        }
        if let Some((u, p)) = &req.basic_auth {
            b = b.basic_auth(u, Some(p));
        }
        b = match &req.body {
            Body::Form(f) => b.form(f),
            Body::Json(j) => b.json(j),
        };
        let resp = b
            .send()
            .await
            .map_err(|e| Failure::transient(format!("{}: {}", self.name(), describe(e))))?;
        let status = resp.status().as_u16();
        if resp.status().is_redirection() {
            return Err(redirect_refused(self.name(), status));
        }
        let text = resp.text().await.map_err(|e| {
            Failure::transient(format!(
                "{}: reading the answer failed: {}",
                self.name(),
                describe(e)
            ))
        })?;
        self.interpret(m, status, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(channel: &str) -> Outgoing {
        Outgoing {
            id: "0b5c7f1e-0000-4000-8000-000000000001".into(),
            phone: "+15550001111".into(),
            channel: channel.into(),
            body: "Your code is 123456".into(),
            attempts: 1,
        }
    }

    fn form(r: &Request) -> Vec<(&str, &str)> {
        match &r.body {
            Body::Form(f) => f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
            _ => panic!("not a form"),
        }
    }

    fn twilio() -> Provider {
        Provider::Twilio {
            base_url: "http://x/".into(),
            account_sid: "AC1".into(),
            auth_token: "tok".into(),
            from: Some("+15559990000".into()),
            messaging_service_sid: None,
        }
    }

    #[test]
    fn redirects_are_permanent_failures() {
        let f = redirect_refused("vonage", 307);
        assert!(!f.retryable && f.message.contains("HTTP 307 redirect refused"));
    }

    #[test]
    fn twilio_request_and_whatsapp_prefix() {
        let r = twilio().request(&msg("sms"), 0).unwrap().unwrap();
        assert_eq!(r.url, "http://x/2010-04-01/Accounts/AC1/Messages.json");
        assert_eq!(r.basic_auth, Some(("AC1".into(), "tok".into())));
        assert_eq!(
            form(&r),
            vec![
                ("To", "+15550001111"),
                ("Body", "Your code is 123456"),
                ("From", "+15559990000")
            ]
        );
        let r = twilio().request(&msg("whatsapp"), 0).unwrap().unwrap();
        assert_eq!(form(&r)[0], ("To", "whatsapp:+15550001111"));
        assert_eq!(form(&r)[2], ("From", "whatsapp:+15559990000"));
    }

    #[test]
    fn twilio_answers() {
        let p = twilio();
        let m = msg("sms");
        assert_eq!(
            p.interpret(&m, 201, r#"{"sid":"SM1","status":"queued"}"#),
            Ok("SM1".into())
        );
        assert!(
            !p.interpret(
                &m,
                400,
                r#"{"code":21211,"message":"Invalid 'To' Phone Number"}"#
            )
            .unwrap_err()
            .retryable
        );
        assert!(
            !p.interpret(&m, 401, r#"{"code":20003}"#)
                .unwrap_err()
                .retryable
        );
        assert!(
            p.interpret(&m, 429, r#"{"code":20429}"#)
                .unwrap_err()
                .retryable
        );
        assert!(p.interpret(&m, 503, "").unwrap_err().retryable);
        assert!(
            p.interpret(
                &m,
                201,
                r#"{"sid":"SM1","status":"failed","error_code":30003}"#
            )
            .unwrap_err()
            .retryable
        );
        assert!(
            !p.interpret(
                &m,
                201,
                r#"{"sid":"SM1","status":"undelivered","error_code":30005}"#
            )
            .unwrap_err()
            .retryable
        );
    }

    #[test]
    fn messagebird() {
        let p = Provider::MessageBird {
            base_url: "http://x".into(),
            access_key: "k".into(),
            originator: "Acme".into(),
        };
        let r = p.request(&msg("sms"), 0).unwrap().unwrap();
        assert_eq!(r.url, "http://x/messages");
        assert_eq!(
            r.headers,
            vec![("Authorization".to_string(), "AccessKey k".to_string())]
        );
        assert_eq!(
            r.body,
            Body::Json(
                json!({"recipients": ["15550001111"], "originator": "Acme", "body": "Your code is 123456", "reference": "0b5c7f1e-0000-4000-8000-000000000001"})
            )
        );
        assert!(!p.request(&msg("whatsapp"), 0).unwrap_err().retryable);
        assert_eq!(
            p.interpret(&msg("sms"), 201, r#"{"id":"mb-1"}"#),
            Ok("mb-1".into())
        );
        assert!(
            !p.interpret(
                &msg("sms"),
                422,
                r#"{"errors":[{"code":10,"description":"no (correct) recipients found"}]}"#
            )
            .unwrap_err()
            .retryable
        );
    }

    #[test]
    fn vonage() {
        let p = Provider::Vonage {
            base_url: "http://x".into(),
            api_key: "k".into(),
            api_secret: "s".into(),
            from: "Acme".into(),
        };
        let r = p.request(&msg("sms"), 0).unwrap().unwrap();
        assert_eq!(r.url, "http://x/sms/json");
        assert_eq!(
            &form(&r)[..5],
            &[
                ("api_key", "k"),
                ("api_secret", "s"),
                ("from", "Acme"),
                ("to", "15550001111"),
                ("text", "Your code is 123456")
            ]
        );
        let mut unicode = msg("sms");
        unicode.body = "Votre code : 123456 ✓".into();
        assert!(form(&p.request(&unicode, 0).unwrap().unwrap()).contains(&("type", "unicode")));
        let m = msg("sms");
        assert_eq!(
            p.interpret(
                &m,
                200,
                r#"{"message-count":"1","messages":[{"status":"0","message-id":"v-1"}]}"#
            ),
            Ok("v-1".into())
        );
        assert!(
            p.interpret(
                &m,
                200,
                r#"{"messages":[{"status":"1","error-text":"Throttled"}]}"#
            )
            .unwrap_err()
            .retryable
        );
        assert!(
            !p.interpret(
                &m,
                200,
                r#"{"messages":[{"status":"3","error-text":"Invalid to"}]}"#
            )
            .unwrap_err()
            .retryable
        );
    }

    #[test]
    fn textlocal() {
        let p = Provider::Textlocal {
            base_url: "http://x".into(),
            api_key: "k".into(),
            sender: "Acme".into(),
        };
        let r = p.request(&msg("sms"), 0).unwrap().unwrap();
        assert_eq!(r.url, "http://x/send/");
        assert_eq!(
            &form(&r)[..4],
            &[
                ("apikey", "k"),
                ("numbers", "15550001111"),
                ("sender", "Acme"),
                ("message", "Your code is 123456")
            ]
        );
        let m = msg("sms");
        assert_eq!(p.interpret(&m, 200, r#"{"status":"success","batch_id":7,"messages":[{"id":"1151346216","recipient":15550001111}]}"#), Ok("1151346216".into()));
        assert!(
            !p.interpret(
                &m,
                200,
                r#"{"status":"failure","errors":[{"code":32,"message":"Invalid number format"}]}"#
            )
            .unwrap_err()
            .retryable
        );
        assert!(p.interpret(&m, 502, "").unwrap_err().retryable);
    }

    #[test]
    fn webhook_request_is_signed_with_a_stable_id() {
        let secret = webhook::Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let p = Provider::Webhook {
            url: "http://x/hook".into(),
            secret: secret.clone(),
        };
        let mut m = msg("whatsapp");
        let r1 = p.request(&m, 1000).unwrap().unwrap();
        m.attempts = 2;
        let r2 = p.request(&m, 2000).unwrap().unwrap();
        let h = |r: &Request, k: &str| r.headers.iter().find(|(n, _)| n == k).unwrap().1.clone();
        assert_eq!(h(&r1, "webhook-id"), h(&r2, "webhook-id"));
        assert_eq!(h(&r1, "webhook-timestamp"), "1000");
        let Body::Json(body) = &r1.body else { panic!() };
        assert_eq!(body["phone"], "+15550001111");
        assert_eq!(body["channel"], "whatsapp");
        let bytes = serde_json::to_vec(body).unwrap();
        assert_eq!(
            h(&r1, "webhook-signature"),
            webhook::sign(&secret, &h(&r1, "webhook-id"), 1000, &bytes)
        );
        assert_eq!(p.interpret(&m, 204, ""), Ok(h(&r1, "webhook-id")));
        assert!(!p.interpret(&m, 400, "").unwrap_err().retryable);
        assert!(p.interpret(&m, 500, "").unwrap_err().retryable);
    }
}
