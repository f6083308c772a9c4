//! Command-line and environment configuration, validated before anything starts.

use crate::captcha::Captcha;
use crate::provider::Provider;
use crate::webhook;
use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq)]
pub enum ProviderKind {
    Twilio,
    Messagebird,
    Vonage,
    Textlocal,
    Webhook,
    Log,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq)]
pub enum CaptchaKind {
    None,
    Hcaptcha,
    Turnstile,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Delivers pg_otp_auth's outbox (auth.sms_outbox) through an SMS/WhatsApp provider, at least
/// once. Every option can also be given as the environment variable shown.
#[derive(Debug, Parser)]
#[command(name = "pg-otp-dispatcher", version)]
pub struct Args {
    /// PostgreSQL connection string (URL or key=value); the role needs only auth.grant_dispatcher().
    /// sslmode (disable, prefer, require, verify-ca, verify-full) and sslrootcert as in libpq;
    /// without sslrootcert, the system's root certificates are trusted.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Which provider delivers the messages.
    #[arg(long, env = "OTP_PROVIDER", value_enum)]
    pub provider: ProviderKind,

    /// Provider API base URL (defaults to the provider's public API; point tests at a fake server).
    #[arg(long, env = "OTP_PROVIDER_BASE_URL")]
    pub provider_base_url: Option<String>,

    /// Sender: a phone number, or an alphanumeric sender id where the provider allows one.
    #[arg(long, env = "OTP_FROM")]
    pub from: Option<String>,

    /// Twilio account SID.
    #[arg(long, env = "TWILIO_ACCOUNT_SID")]
    pub twilio_account_sid: Option<String>,
    /// Twilio auth token.
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub twilio_auth_token: Option<String>,
    /// Twilio messaging service SID (instead of --from).
    #[arg(long, env = "TWILIO_MESSAGING_SERVICE_SID")]
    pub twilio_messaging_service_sid: Option<String>,

    /// MessageBird access key.
    #[arg(long, env = "MESSAGEBIRD_ACCESS_KEY", hide_env_values = true)]
    pub messagebird_access_key: Option<String>,

    /// Vonage API key.
    #[arg(long, env = "VONAGE_API_KEY")]
    pub vonage_api_key: Option<String>,
    /// Vonage API secret.
    #[arg(long, env = "VONAGE_API_SECRET", hide_env_values = true)]
    pub vonage_api_secret: Option<String>,

    /// Textlocal API key.
    #[arg(long, env = "TEXTLOCAL_API_KEY", hide_env_values = true)]
    pub textlocal_api_key: Option<String>,

    /// Webhook URL that receives each message as signed JSON (Standard Webhooks).
    #[arg(long, env = "OTP_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Webhook signing secret, whsec_<base64>.
    #[arg(long, env = "OTP_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// Verify captcha tokens carried by messages before sending them.
    #[arg(long, env = "OTP_CAPTCHA_PROVIDER", value_enum, default_value = "none")]
    pub captcha_provider: CaptchaKind,
    /// Captcha verification secret.
    #[arg(long, env = "OTP_CAPTCHA_SECRET", hide_env_values = true)]
    pub captcha_secret: Option<String>,
    /// Captcha verification base URL (defaults to hCaptcha's or Cloudflare's).
    #[arg(long, env = "OTP_CAPTCHA_BASE_URL")]
    pub captcha_base_url: Option<String>,
    /// Drop messages that carry no captcha token (when a captcha provider is set).
    #[arg(long, env = "OTP_CAPTCHA_REQUIRED")]
    pub captcha_required: bool,

    /// Messages sent at the same time.
    #[arg(long, env = "OTP_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,
    /// Messages claimed per database round trip.
    #[arg(long, env = "OTP_BATCH_SIZE", default_value_t = 50)]
    pub batch_size: usize,
    /// Seconds a claimed message is reserved (at least 3 x --http-timeout-seconds); after that
    /// another dispatcher may send it.
    #[arg(long, env = "OTP_LEASE_SECONDS", default_value_t = 30)]
    pub lease_seconds: u64,
    /// Seconds between polls when no notification arrives.
    #[arg(long, env = "OTP_POLL_SECONDS", default_value_t = 5.0)]
    pub poll_seconds: f64,
    /// Seconds before a provider request is abandoned (and retried later).
    #[arg(long, env = "OTP_HTTP_TIMEOUT_SECONDS", default_value_t = 10.0)]
    pub http_timeout_seconds: f64,
    /// Seconds to finish in-flight sends after SIGTERM/SIGINT.
    #[arg(long, env = "OTP_SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 30.0)]
    pub shutdown_timeout_seconds: f64,
    /// Address of the /metrics (Prometheus) and /health endpoints; "off" disables them.
    #[arg(long, env = "OTP_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: String,
    /// Allow plain http:// provider, webhook and captcha URLs. For local testing only: over
    /// http the credentials, phone numbers and codes cross the network unencrypted.
    #[arg(long, env = "OTP_ALLOW_INSECURE_HTTP")]
    pub allow_insecure_http: bool,
    /// Log output format.
    #[arg(long, env = "OTP_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database: crate::tls::Database,
    pub provider: Provider,
    pub captcha: Option<Captcha>,
    pub captcha_required: bool,
    pub concurrency: usize,
    pub batch_size: usize,
    pub lease: Duration,
    pub poll: Duration,
    pub http_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub metrics_addr: Option<SocketAddr>,
}

fn need(v: &Option<String>, flag: &str, provider: &str) -> Result<String, String> {
    match v {
        Some(s) if !s.trim().is_empty() => Ok(s.clone()),
        _ => Err(format!("--{flag} is required for --provider {provider}")),
    }
}

/// A provider, webhook or captcha URL: https, or http with --allow-insecure-http. Errors name
/// the flag, never the URL (it may carry a token).
fn endpoint(
    given: &Option<String>,
    default: &str,
    flag: &str,
    allow_http: bool,
) -> Result<String, String> {
    let url = given.clone().unwrap_or_else(|| default.to_string());
    let parsed = reqwest::Url::parse(&url).map_err(|e| format!("--{flag} is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            return Err(format!(
                "--{flag} is http://; credentials and codes would cross the network unencrypted \
                 (use https, or --allow-insecure-http for local testing)"
            ))
        }
        _ => return Err(format!("--{flag} must be an https URL")),
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn seconds(v: f64, flag: &str, min: f64, max: f64) -> Result<Duration, String> {
    if !(min..=max).contains(&v) {
        return Err(format!("--{flag} must be between {min} and {max}"));
    }
    Ok(Duration::from_secs_f64(v))
}

impl Args {
    pub fn validate(&self) -> Result<Config, String> {
        let provider = match self.provider {
            ProviderKind::Twilio => {
                if self.from.is_none() && self.twilio_messaging_service_sid.is_none() {
                    return Err("--from or --twilio-messaging-service-sid is required for --provider twilio".into());
                }
                Provider::Twilio {
                    base_url: endpoint(
                        &self.provider_base_url,
                        "https://api.twilio.com",
                        "provider-base-url",
                        self.allow_insecure_http,
                    )?,
                    account_sid: need(&self.twilio_account_sid, "twilio-account-sid", "twilio")?,
                    auth_token: need(&self.twilio_auth_token, "twilio-auth-token", "twilio")?,
                    from: self.from.clone(),
                    messaging_service_sid: self.twilio_messaging_service_sid.clone(),
                }
            }
            ProviderKind::Messagebird => Provider::MessageBird {
                base_url: endpoint(
                    &self.provider_base_url,
                    "https://rest.messagebird.com",
                    "provider-base-url",
                    self.allow_insecure_http,
                )?,
                access_key: need(
                    &self.messagebird_access_key,
                    "messagebird-access-key",
                    "messagebird",
                )?,
                originator: need(&self.from, "from", "messagebird")?,
            },
            ProviderKind::Vonage => Provider::Vonage {
                base_url: endpoint(
                    &self.provider_base_url,
                    "https://rest.nexmo.com",
                    "provider-base-url",
                    self.allow_insecure_http,
                )?,
                api_key: need(&self.vonage_api_key, "vonage-api-key", "vonage")?,
                api_secret: need(&self.vonage_api_secret, "vonage-api-secret", "vonage")?,
                from: need(&self.from, "from", "vonage")?,
            },
            ProviderKind::Textlocal => Provider::Textlocal {
                base_url: endpoint(
                    &self.provider_base_url,
                    "https://api.txtlocal.com",
                    "provider-base-url",
                    self.allow_insecure_http,
                )?,
                api_key: need(&self.textlocal_api_key, "textlocal-api-key", "textlocal")?,
                sender: need(&self.from, "from", "textlocal")?,
            },
            ProviderKind::Webhook => Provider::Webhook {
                url: match &self.webhook_url {
                    None => return Err("--webhook-url is required for --provider webhook".into()),
                    url => endpoint(url, "", "webhook-url", self.allow_insecure_http)?,
                },
                secret: webhook::Secret::parse(&need(
                    &self.webhook_secret,
                    "webhook-secret",
                    "webhook",
                )?)?,
            },
            ProviderKind::Log => Provider::Log,
        };
        let captcha = match self.captcha_provider {
            CaptchaKind::None if self.captcha_required => {
                return Err("--captcha-required needs --captcha-provider".into());
            }
            CaptchaKind::None => None,
            kind => {
                let secret = need(&self.captcha_secret, "captcha-secret", "captcha")?;
                let (default, path) = match kind {
                    CaptchaKind::Hcaptcha => ("https://api.hcaptcha.com", "/siteverify"),
                    _ => (
                        "https://challenges.cloudflare.com",
                        "/turnstile/v0/siteverify",
                    ),
                };
                Some(Captcha {
                    verify_url: format!(
                        "{}{path}",
                        endpoint(
                            &self.captcha_base_url,
                            default,
                            "captcha-base-url",
                            self.allow_insecure_http
                        )?
                    ),
                    secret,
                })
            }
        };
        if self.concurrency == 0 || self.concurrency > 1000 {
            return Err("--concurrency must be between 1 and 1000".into());
        }
        if self.batch_size == 0 || self.batch_size > 10_000 {
            return Err("--batch-size must be between 1 and 10000".into());
        }
        let http_timeout = seconds(
            self.http_timeout_seconds,
            "http-timeout-seconds",
            0.1,
            120.0,
        )?;
        let lease = seconds(self.lease_seconds as f64, "lease-seconds", 1.0, 3600.0)?;
        if lease < http_timeout * 3 {
            // A lease must outlast a captcha check, a send and recording the result, or a
            // second dispatcher resends the message in normal operation.
            return Err(
                "--lease-seconds must be at least three times --http-timeout-seconds".into(),
            );
        }
        let metrics_addr = match self.metrics_addr.as_str() {
            "off" => None,
            a => Some(
                a.parse()
                    .map_err(|_| format!("--metrics-addr {a} is not host:port"))?,
            ),
        };
        let database = crate::tls::parse(&self.database_url)?;
        Ok(Config {
            database,
            provider,
            captcha,
            captcha_required: self.captcha_required,
            concurrency: self.concurrency,
            batch_size: self.batch_size,
            lease,
            poll: seconds(self.poll_seconds, "poll-seconds", 0.05, 3600.0)?,
            http_timeout,
            shutdown_timeout: seconds(
                self.shutdown_timeout_seconds,
                "shutdown-timeout-seconds",
                0.0,
                3600.0,
            )?,
            metrics_addr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["pg-otp-dispatcher", "--database-url", "host=/tmp dbname=x"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .validate()
    }

    #[test]
    fn log_provider_needs_nothing_else() {
        let c = parse(&["--provider", "log"]).unwrap();
        assert_eq!(c.provider.name(), "log");
        assert_eq!(
            (c.concurrency, c.batch_size, c.lease.as_secs()),
            (8, 50, 30)
        );
    }

    #[test]
    fn missing_credentials_are_named() {
        assert!(parse(&["--provider", "twilio", "--from", "+1555"])
            .unwrap_err()
            .contains("--twilio-account-sid"));
        assert!(parse(&[
            "--provider",
            "vonage",
            "--vonage-api-key",
            "k",
            "--vonage-api-secret",
            "s"
        ])
        .unwrap_err()
        .contains("--from"));
        assert!(parse(&[
            "--provider",
            "webhook",
            "--webhook-url",
            "https://127.0.0.1:1/x"
        ])
        .unwrap_err()
        .contains("--webhook-secret"));
        assert!(parse(&[
            "--provider",
            "webhook",
            "--webhook-url",
            "https://127.0.0.1:1/x",
            "--webhook-secret",
            "nope"
        ])
        .unwrap_err()
        .contains("whsec_"));
        assert!(
            parse(&["--provider", "log", "--captcha-provider", "hcaptcha"])
                .unwrap_err()
                .contains("--captcha-secret")
        );
    }

    #[test]
    fn bad_numbers_and_urls_are_refused() {
        assert!(parse(&["--provider", "log", "--concurrency", "0"]).is_err());
        assert!(parse(&["--provider", "log", "--lease-seconds", "29"])
            .unwrap_err()
            .contains("three times"));
        assert!(parse(&["--provider", "log", "--captcha-required"])
            .unwrap_err()
            .contains("--captcha-provider"));
        assert!(parse(&["--provider", "log", "--metrics-addr", "nowhere"]).is_err());
        assert!(parse(&[
            "--provider",
            "messagebird",
            "--messagebird-access-key",
            "k",
            "--from",
            "A",
            "--provider-base-url",
            "ftp://x"
        ])
        .is_err());
        assert!(parse(&["--provider", "sms-o-matic"]).is_err());
    }

    #[test]
    fn plain_http_needs_the_flag_and_errors_never_echo_the_url() {
        let vonage = |url: &'static str, extra: &[&'static str]| {
            let mut argv = vec![
                "--provider",
                "vonage",
                "--vonage-api-key",
                "k",
                "--vonage-api-secret",
                "s",
                "--from",
                "Acme",
                "--provider-base-url",
                url,
            ];
            argv.extend_from_slice(extra);
            parse(&argv)
        };
        let e = vonage("http://127.0.0.1:1/sms?token=s3cret", &[]).unwrap_err();
        assert!(
            e.contains("--allow-insecure-http") && !e.contains("s3cret"),
            "{e}"
        );
        assert!(vonage(
            "http://127.0.0.1:1/sms?token=s3cret",
            &["--allow-insecure-http"]
        )
        .is_ok());
        assert!(vonage("https://127.0.0.1:1/sms", &[]).is_ok());
        let e = vonage("not a url s3cret", &[]).unwrap_err();
        assert!(
            e.contains("--provider-base-url") && !e.contains("s3cret"),
            "{e}"
        );
        let e = parse(&[
            "--provider",
            "webhook",
            "--webhook-secret",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "--webhook-url",
            "http://hooks.example/x",
        ])
        .unwrap_err();
        assert!(e.contains("--webhook-url"), "{e}");
        let e = parse(&[
            "--provider",
            "log",
            "--captcha-provider",
            "hcaptcha",
            "--captcha-secret",
            "c",
            "--captcha-base-url",
            "http://captcha.example",
        ])
        .unwrap_err();
        assert!(e.contains("--captcha-base-url"), "{e}");
    }

    #[test]
    fn defaults_point_at_the_public_apis() {
        let c = parse(&[
            "--provider",
            "twilio",
            "--from",
            "+1555",
            "--twilio-account-sid",
            "AC",
            "--twilio-auth-token",
            "t",
            "--captcha-provider",
            "turnstile",
            "--captcha-secret",
            "s",
        ])
        .unwrap();
        match c.provider {
            Provider::Twilio { base_url, .. } => assert_eq!(base_url, "https://api.twilio.com"),
            _ => panic!(),
        }
        assert_eq!(
            c.captcha.unwrap().verify_url,
            "https://challenges.cloudflare.com/turnstile/v0/siteverify"
        );
    }
}
