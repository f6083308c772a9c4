//! The error every caller-visible failure turns into.
//!
//! `status` is the HTTP status PostgREST should answer with; the SQL layer raises SQLSTATE
//! `PT<status>` with `code` in DETAIL (see shared/CONVENTIONS.md).

use serde::Serialize;
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl AuthError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        AuthError {
            status,
            code,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(400, "invalid-request", message)
    }

    /// A NULL where the API needs a value.
    pub fn missing(argument: &str) -> Self {
        Self::invalid_request(format!("The argument {argument} is required."))
    }

    /// The one answer for a wrong, expired, used-up or never-sent code: callers must not be able
    /// to tell these apart.
    pub fn invalid_otp() -> Self {
        Self::new(401, "invalid-otp", "The code is invalid or has expired.")
    }

    pub fn disabled_user() -> Self {
        Self::new(403, "disabled-user", "This account is disabled.")
    }

    pub fn not_authenticated() -> Self {
        Self::new(
            401,
            "not-authenticated",
            "This call needs a signed-in session.",
        )
    }

    pub fn invalid_refresh_token() -> Self {
        Self::new(
            401,
            "invalid-refresh-token",
            "The refresh token is invalid or has expired.",
        )
    }

    pub fn rate_limited(code: &'static str, message: &str, retry_after_seconds: i64) -> Self {
        Self::new(429, code, message).with_hint(format!(
            "retry after {} seconds",
            retry_after_seconds.max(1)
        ))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal-error", message)
    }

    /// The tagged form the SQL wrappers unwrap: `{"error": {...}}`.
    pub fn to_result_json(&self) -> Value {
        json!({ "error": self })
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PT{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for AuthError {}

pub type Result<T> = std::result::Result<T, AuthError>;

/// A SQL argument that must not be NULL.
pub fn required<T>(value: Option<T>, argument: &str) -> Result<T> {
    value.ok_or_else(|| AuthError::missing(argument))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_json_carries_status_code_and_hint() {
        let e = AuthError::rate_limited("over-sms-send-rate-limit", "Too many codes.", 42);
        let v = e.to_result_json();
        assert_eq!(v["error"]["status"], 429);
        assert_eq!(v["error"]["code"], "over-sms-send-rate-limit");
        assert_eq!(v["error"]["hint"], "retry after 42 seconds");
    }

    #[test]
    fn required_names_the_missing_argument() {
        assert_eq!(required(Some(1), "x"), Ok(1));
        let e = required::<i32>(None, "phone").unwrap_err();
        assert_eq!((e.status, e.code), (400, "invalid-request"));
        assert!(e.message.contains("phone"));
    }

    #[test]
    fn hint_is_omitted_when_absent_and_retry_is_at_least_one_second() {
        assert!(AuthError::invalid_otp().to_result_json()["error"]
            .get("hint")
            .is_none());
        let e = AuthError::rate_limited("over-request-rate-limit", "x", 0);
        assert_eq!(e.hint.as_deref(), Some("retry after 1 seconds"));
    }
}
