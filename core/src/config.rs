//! Install settings: their names, kinds, defaults and validation.
//!
//! The database stores only overrides (`auth.config`); a setting that is not overridden has the
//! default below. Durations are whole seconds here; the SQL setter also accepts interval text.

use crate::error::{AuthError, Result};
use crate::{otp, phone, template};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Int {
        min: i64,
        max: i64,
    },
    Seconds {
        min: i64,
        max: i64,
    },
    Bool,
    Text,
    TextList,
    /// locale → template
    Templates,
    /// phone → fixed code
    TestOtp,
}

pub struct Setting {
    pub name: &'static str,
    pub kind: Kind,
    pub default: fn() -> Value,
    pub description: &'static str,
}

const DAY: i64 = 86_400;

pub const SETTINGS: &[Setting] = &[
    Setting { name: "jwt_exp", kind: Kind::Seconds { min: 60, max: 7 * DAY }, default: || json!(3600), description: "Lifetime of access tokens." },
    Setting { name: "jwt_aud", kind: Kind::Text, default: || json!("authenticated"), description: "The `aud` claim of access tokens." },
    Setting { name: "jwt_issuer", kind: Kind::Text, default: || json!("pg_otp_auth"), description: "The `iss` claim of access tokens." },
    Setting { name: "otp_length", kind: Kind::Int { min: 6, max: 10 }, default: || json!(6), description: "Digits in a one-time code." },
    Setting { name: "otp_ttl", kind: Kind::Seconds { min: 30, max: DAY }, default: || json!(300), description: "How long a code stays valid." },
    Setting { name: "otp_max_attempts", kind: Kind::Int { min: 1, max: 100 }, default: || json!(5), description: "Wrong guesses after which a code is dead." },
    Setting { name: "resend_cooldown", kind: Kind::Seconds { min: 0, max: DAY }, default: || json!(60), description: "Minimum time between two codes sent to one phone." },
    Setting { name: "sms_rate_per_phone", kind: Kind::Int { min: 0, max: 1_000_000 }, default: || json!(3), description: "Codes one phone may be sent per window." },
    Setting { name: "sms_rate_per_phone_window", kind: Kind::Seconds { min: 1, max: 30 * DAY }, default: || json!(300), description: "Window of sms_rate_per_phone." },
    Setting { name: "sms_rate_per_ip", kind: Kind::Int { min: 0, max: 1_000_000 }, default: || json!(10), description: "Code requests one client IP may make per window." },
    Setting { name: "sms_rate_per_ip_window", kind: Kind::Seconds { min: 1, max: 30 * DAY }, default: || json!(600), description: "Window of sms_rate_per_ip." },
    Setting { name: "verify_rate_per_ip", kind: Kind::Int { min: 1, max: 1_000_000 }, default: || json!(360), description: "Code verifications one client IP may attempt per window." },
    Setting { name: "verify_rate_per_ip_window", kind: Kind::Seconds { min: 1, max: DAY }, default: || json!(3600), description: "Window of verify_rate_per_ip." },
    Setting { name: "sms_budget_per_hour", kind: Kind::Int { min: 0, max: 100_000_000 }, default: || json!(1000), description: "Messages the whole install may queue per hour." },
    Setting { name: "sms_template", kind: Kind::Text, default: || json!("Your code is {{code}}"), description: "Message body; placeholders {{code}} and {{ttl_minutes}}." },
    Setting { name: "sms_templates", kind: Kind::Templates, default: || json!({}), description: "Per-locale message bodies, e.g. {\"fr\": \"Votre code : {{code}}\"}." },
    Setting { name: "test_otp", kind: Kind::TestOtp, default: || json!({}), description: "Test phones with fixed codes, never sent, e.g. {\"+15550000000\": \"123456\"}." },
    Setting { name: "allowed_roles", kind: Kind::TextList, default: || json!(["authenticated"]), description: "Roles a user may be given." },
    Setting { name: "default_role", kind: Kind::Text, default: || json!("authenticated"), description: "Role of new users and the `role` claim; must be in allowed_roles." },
    Setting { name: "allowed_locales", kind: Kind::TextList, default: || json!(["en"]), description: "Locales a user may choose." },
    Setting { name: "default_locale", kind: Kind::Text, default: || json!("en"), description: "Locale of new users; must be in allowed_locales." },
    Setting { name: "allowed_redirect_prefixes", kind: Kind::TextList, default: || json!([]), description: "URL prefixes a sign-up redirectTo may start with." },
    Setting { name: "disable_signup", kind: Kind::Bool, default: || json!(false), description: "Refuse to create users." },
    Setting { name: "hasura_claims", kind: Kind::Bool, default: || json!(false), description: "Add the Hasura claims namespace to access tokens." },
    Setting { name: "sms_max_attempts", kind: Kind::Int { min: 1, max: 100 }, default: || json!(5), description: "Delivery attempts before a message is dead-lettered." },
    Setting { name: "sms_retry_base", kind: Kind::Seconds { min: 1, max: 3600 }, default: || json!(5), description: "First retry delay; doubles per attempt, with jitter." },
    Setting { name: "sms_retry_max", kind: Kind::Seconds { min: 1, max: DAY }, default: || json!(300), description: "Longest retry delay." },
    Setting { name: "refresh_token_ttl", kind: Kind::Seconds { min: 60, max: 365 * DAY }, default: || json!(30 * DAY), description: "Lifetime of a refresh token." },
    Setting { name: "mfa_totp_issuer", kind: Kind::Text, default: || json!("pg_otp_auth"), description: "Issuer shown by authenticator apps for new TOTP factors." },
    Setting { name: "mfa_max_factors", kind: Kind::Int { min: 1, max: 100 }, default: || json!(10), description: "Factors one user may enroll." },
    Setting { name: "mfa_max_attempts", kind: Kind::Int { min: 1, max: 100 }, default: || json!(5), description: "Wrong codes after which an MFA challenge or sign-in ticket is dead." },
    Setting { name: "mfa_challenge_ttl", kind: Kind::Seconds { min: 30, max: 3600 }, default: || json!(300), description: "How long an MFA challenge stays valid." },
    Setting { name: "mfa_ticket_ttl", kind: Kind::Seconds { min: 30, max: 3600 }, default: || json!(300), description: "How long an MFA sign-in ticket stays valid." },
    Setting { name: "mfa_signin_requires_totp", kind: Kind::Bool, default: || json!(true), description: "Users with a verified TOTP factor get a ticket, not a session, from verify_sms_otp." },
    Setting { name: "mfa_failure_limit", kind: Kind::Int { min: 1, max: 1000 }, default: || json!(10), description: "Wrong second-factor codes one factor may see per mfa_failure_window, across all challenges and tickets." },
    Setting { name: "mfa_failure_window", kind: Kind::Seconds { min: 60, max: DAY }, default: || json!(900), description: "Window of mfa_failure_limit." },
    Setting { name: "totp_window", kind: Kind::Int { min: 0, max: 10 }, default: || json!(1), description: "TOTP time steps accepted either side of now." },
    Setting { name: "trusted_proxy_hops", kind: Kind::Int { min: 0, max: 10 }, default: || json!(1), description: "Reverse proxies in front of PostgREST whose forwarding headers are believed; the client address is the entry the last of them appended (0: ignore the headers)." },
    Setting { name: "client_ip_header", kind: Kind::Text, default: || json!("x-forwarded-for"), description: "Header carrying the client address: x-forwarded-for, forwarded (RFC 7239), or one a proxy sets whole, such as cf-connecting-ip or x-real-ip." },
    Setting { name: "notify_phone_change", kind: Kind::Bool, default: || json!(true), description: "Tell the old number by SMS when a user moves their account to a new one (auth.verify_phone_change)." },
    Setting { name: "refresh_reuse_grace", kind: Kind::Seconds { min: 0, max: 300 }, default: || json!(10), description: "How long a rotated refresh token may still be presented before reuse revokes the session." },
];

pub fn setting(name: &str) -> Result<&'static Setting> {
    SETTINGS
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| AuthError::invalid_request(format!("Unknown setting {name}.")))
}

/// The resolved settings of an install.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub jwt_exp: i64,
    pub jwt_aud: String,
    pub jwt_issuer: String,
    pub otp_length: usize,
    pub otp_ttl: i64,
    pub otp_max_attempts: i64,
    pub resend_cooldown: i64,
    pub sms_rate_per_phone: i64,
    pub sms_rate_per_phone_window: i64,
    pub sms_rate_per_ip: i64,
    pub sms_rate_per_ip_window: i64,
    pub sms_budget_per_hour: i64,
    pub verify_rate_per_ip: i64,
    pub verify_rate_per_ip_window: i64,
    pub sms_template: String,
    pub sms_templates: BTreeMap<String, String>,
    pub test_otp: BTreeMap<String, String>,
    pub allowed_roles: Vec<String>,
    pub default_role: String,
    pub allowed_locales: Vec<String>,
    pub default_locale: String,
    pub allowed_redirect_prefixes: Vec<String>,
    pub disable_signup: bool,
    pub hasura_claims: bool,
    pub refresh_token_ttl: i64,
    pub refresh_reuse_grace: i64,
    pub mfa_totp_issuer: String,
    pub mfa_max_factors: i64,
    pub mfa_max_attempts: i64,
    pub mfa_challenge_ttl: i64,
    pub mfa_ticket_ttl: i64,
    pub mfa_signin_requires_totp: bool,
    pub totp_window: u32,
    pub mfa_failure_limit: i64,
    pub mfa_failure_window: i64,
    pub sms_max_attempts: i64,
    pub sms_retry_base: i64,
    pub sms_retry_max: i64,
    pub trusted_proxy_hops: usize,
    pub client_ip_header: String,
    pub notify_phone_change: bool,
}

impl Config {
    /// What sign-up options and profile changes are checked against.
    pub fn policy(&self) -> crate::profile::Policy<'_> {
        crate::profile::Policy {
            allowed_roles: &self.allowed_roles,
            default_role: &self.default_role,
            allowed_locales: &self.allowed_locales,
            default_locale: &self.default_locale,
            allowed_redirect_prefixes: &self.allowed_redirect_prefixes,
        }
    }

    /// Defaults overlaid with the stored overrides. Unknown stored keys are ignored so that a
    /// downgrade does not brick sign-in.
    pub fn from_overrides(overrides: &Map<String, Value>) -> Result<Config> {
        let mut all = Map::new();
        for s in SETTINGS {
            all.insert(
                s.name.to_string(),
                overrides.get(s.name).cloned().unwrap_or_else(s.default),
            );
        }
        serde_json::from_value(Value::Object(all))
            .map_err(|e| AuthError::internal(format!("Stored settings are unreadable: {e}")))
    }

    /// Rules that span settings.
    pub fn validate(&self) -> Result<()> {
        if !self.allowed_roles.contains(&self.default_role) {
            return Err(AuthError::new(
                400,
                "default-role-must-be-in-allowed-roles",
                "default_role must be one of allowed_roles.",
            ));
        }
        if !self.allowed_locales.contains(&self.default_locale) {
            return Err(AuthError::new(
                400,
                "locale-not-allowed",
                "default_locale must be one of allowed_locales.",
            ));
        }
        if !crate::client_ip::valid_header_name(&self.client_ip_header) {
            return Err(AuthError::invalid_request(
                "client_ip_header must be a lower-case header name.",
            ));
        }
        template::validate(&self.sms_template)?;
        crate::mfa::check_issuer(&self.mfa_totp_issuer)?;
        for (locale, t) in &self.sms_templates {
            if !self.allowed_locales.contains(locale) {
                return Err(AuthError::new(
                    400,
                    "locale-not-allowed",
                    format!(
                        "sms_templates names locale {locale}, which is not in allowed_locales."
                    ),
                ));
            }
            template::validate(t)?;
        }
        for (phone_number, code) in &self.test_otp {
            if phone::normalize(phone_number)? != *phone_number {
                return Err(AuthError::invalid_request(format!(
                    "test_otp phone {phone_number} must be written in E.164 without spaces."
                )));
            }
            otp::check_format(code, self.otp_length)?;
        }
        Ok(())
    }

    pub fn template_for(&self, locale: Option<&str>) -> &str {
        locale
            .and_then(|l| self.sms_templates.get(l))
            .unwrap_or(&self.sms_template)
    }
}

/// Seconds from a duration a DBA typed: a whole number of seconds, `HH:MM[:SS]`, or
/// number-unit pairs such as `5 minutes`, `1 hour 30 min`, `90s`.
pub fn parse_duration(value: &Value) -> Result<i64> {
    let bad =
        || AuthError::invalid_request("A duration must be seconds, HH:MM:SS, or like '5 minutes'.");
    let text = match value {
        Value::Number(n) => return n.as_i64().ok_or_else(bad),
        Value::String(s) => s.trim().to_ascii_lowercase(),
        _ => return Err(bad()),
    };
    if text.contains(':') {
        let parts: Vec<&str> = text.split(':').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(bad());
        }
        let mut total = 0i64;
        for (i, p) in parts.iter().enumerate() {
            let n: i64 = p.parse().map_err(|_| bad())?;
            if n < 0 || (i > 0 && n >= 60) {
                return Err(bad());
            }
            total = total * 60 + n;
        }
        return Ok(if parts.len() == 2 { total * 60 } else { total });
    }
    let mut total = 0i64;
    let mut rest = text.as_str();
    let mut any = false;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: i64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "" | "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => DAY,
            "w" | "week" | "weeks" => 7 * DAY,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(factor)
            .and_then(|x| x.checked_add(total))
            .ok_or_else(bad)?;
        rest = rest[unit_len..].trim_start();
        any = true;
    }
    if any {
        Ok(total)
    } else {
        Err(bad())
    }
}

/// Checks one value against its setting's kind and returns the form to store.
pub fn check_value(name: &str, value: &Value) -> Result<Value> {
    let s = setting(name)?;
    let bad = |what: &str| AuthError::invalid_request(format!("{name} must be {what}."));
    match s.kind {
        Kind::Int { min, max } | Kind::Seconds { min, max } => {
            let n = value.as_i64().ok_or_else(|| bad("a whole number"))?;
            if !(min..=max).contains(&n) {
                let unit = if matches!(s.kind, Kind::Seconds { .. }) {
                    " seconds"
                } else {
                    ""
                };
                return Err(bad(&format!("between {min} and {max}{unit}")));
            }
        }
        Kind::Bool => {
            value.as_bool().ok_or_else(|| bad("true or false"))?;
        }
        Kind::Text => {
            let t = value.as_str().ok_or_else(|| bad("a string"))?;
            if t.trim().is_empty() || t.len() > 1000 {
                return Err(bad("a non-empty string of at most 1000 bytes"));
            }
        }
        Kind::TextList => {
            let list = value.as_array().ok_or_else(|| bad("an array of strings"))?;
            if !list
                .iter()
                .all(|v| v.as_str().is_some_and(|t| !t.trim().is_empty()))
            {
                return Err(bad("an array of non-empty strings"));
            }
        }
        Kind::Templates | Kind::TestOtp => {
            let map = value
                .as_object()
                .ok_or_else(|| bad("an object of strings"))?;
            if !map.values().all(Value::is_string) {
                return Err(bad("an object of strings"));
            }
        }
    }
    Ok(value.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(overrides: Value) -> Result<Config> {
        Config::from_overrides(overrides.as_object().unwrap())
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = cfg(json!({})).unwrap();
        assert_eq!(
            (c.jwt_exp, c.otp_length, c.otp_ttl, c.otp_max_attempts),
            (3600, 6, 300, 5)
        );
        assert_eq!(
            (
                c.resend_cooldown,
                c.sms_rate_per_phone,
                c.sms_rate_per_phone_window
            ),
            (60, 3, 300)
        );
        assert_eq!((c.sms_rate_per_ip, c.sms_rate_per_ip_window), (10, 600));
        assert_eq!(c.sms_template, "Your code is {{code}}");
        assert_eq!(c.default_role, "authenticated");
        assert_eq!(c.refresh_reuse_grace, 10);
        assert_eq!(
            (
                c.mfa_max_factors,
                c.mfa_max_attempts,
                c.mfa_challenge_ttl,
                c.totp_window
            ),
            (10, 5, 300, 1)
        );
        assert!(c.mfa_signin_requires_totp);
        c.validate().unwrap();
    }

    #[test]
    fn overrides_apply_and_unknown_keys_are_ignored() {
        let c = cfg(json!({"otp_length": 8, "retired_setting": 1})).unwrap();
        assert_eq!(c.otp_length, 8);
    }

    #[test]
    fn values_are_checked_against_their_kind() {
        assert!(check_value("otp_length", &json!(8)).is_ok());
        for (k, v) in [
            ("otp_length", json!(5)),
            ("otp_length", json!(11)),
            ("otp_length", json!("6")),
            ("otp_ttl", json!(5)),
            ("disable_signup", json!("yes")),
            ("jwt_aud", json!("")),
            ("allowed_roles", json!(["ok", 1])),
            ("test_otp", json!({"+15550000000": 123456})),
            ("no_such_setting", json!(1)),
        ] {
            assert_eq!(
                check_value(k, &v).unwrap_err().code,
                "invalid-request",
                "{k} = {v}"
            );
        }
    }

    #[test]
    fn durations_parse_from_seconds_clock_and_units() {
        for (v, secs) in [
            (json!(90), 90),
            (json!("90"), 90),
            (json!("90s"), 90),
            (json!("5 minutes"), 300),
            (json!("1 hour 30 min"), 5400),
            (json!("00:05:00"), 300),
            (json!("01:30"), 5400),
            (json!("2 days"), 172_800),
        ] {
            assert_eq!(parse_duration(&v).unwrap(), secs, "{v}");
        }
        for v in [
            json!("five minutes"),
            json!("5 fortnights"),
            json!(""),
            json!("1:99"),
            json!(true),
            json!(1.5),
        ] {
            assert_eq!(
                parse_duration(&v).unwrap_err().code,
                "invalid-request",
                "{v}"
            );
        }
    }

    #[test]
    fn cross_setting_rules() {
        let e = cfg(json!({"default_role": "admin"}))
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.code, "default-role-must-be-in-allowed-roles");
        let e = cfg(json!({"sms_templates": {"fr": "Code {{code}}"}}))
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.code, "locale-not-allowed");
        let c =
            cfg(json!({"allowed_locales": ["en", "fr"], "sms_templates": {"fr": "Code {{code}}"}}))
                .unwrap();
        c.validate().unwrap();
        assert_eq!(c.template_for(Some("fr")), "Code {{code}}");
        assert_eq!(c.template_for(Some("de")), "Your code is {{code}}");
        assert!(cfg(json!({"test_otp": {"+15550000000": "12345"}}))
            .unwrap()
            .validate()
            .is_err());
        assert!(cfg(json!({"test_otp": {"+1 555 000 0000": "123456"}}))
            .unwrap()
            .validate()
            .is_err());
        assert!(cfg(json!({"test_otp": {"+15550000000": "123456"}}))
            .unwrap()
            .validate()
            .is_ok());
        assert!(cfg(json!({"sms_template": "no code"}))
            .unwrap()
            .validate()
            .is_err());
    }
}
