//! Captcha verification (hCaptcha or Cloudflare Turnstile siteverify).

use crate::provider::{describe, redirect_refused, Failure};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Captcha {
    pub verify_url: String,
    pub secret: String,
}

impl Captcha {
    /// Ok(true) if the token is valid, Ok(false) if the verifier rejects it, Err if the verifier
    /// could not be asked (worth retrying).
    pub async fn verify(
        &self,
        http: &reqwest::Client,
        token: &str,
        timeout: Duration,
    ) -> Result<bool, Failure> {
        let resp = http
            .post(&self.verify_url)
            .timeout(timeout)
            .form(&[("secret", self.secret.as_str()), ("response", token)])
            .send()
            .await
            .map_err(|e| Failure::transient(format!("captcha verification: {}", describe(e))))?;
        let status = resp.status().as_u16();
        if resp.status().is_redirection() {
            return Err(redirect_refused("captcha verification", status));
        }
        if status == 429 || status >= 500 {
            return Err(Failure::transient(format!(
                "captcha verification: HTTP {status}"
            )));
        }
        let v: serde_json::Value = resp.json().await.unwrap_or_default();
        Ok(v["success"] == true)
    }
}
