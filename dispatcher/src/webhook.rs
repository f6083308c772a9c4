//! Standard Webhooks signatures (https://www.standardwebhooks.com/).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A signing secret given as `whsec_<base64>`.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn parse(text: &str) -> Result<Secret, String> {
        let b64 = text
            .strip_prefix("whsec_")
            .ok_or("the webhook secret must look like whsec_<base64>")?;
        let key = STANDARD
            .decode(b64)
            .map_err(|_| "the webhook secret after whsec_ is not valid base64")?;
        if key.len() < 16 {
            return Err("the webhook secret must be at least 16 bytes".into());
        }
        Ok(Secret(key))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`
pub fn sign(secret: &Secret, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret.0).expect("HMAC accepts any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The webhook id of an outbox message: the same for every retry, so receivers can dedupe.
pub fn webhook_id(message_id: &str) -> String {
    format!("msg_{}", message_id.replace('-', ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproduces_the_specification_test_vector() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            sign(
                &secret,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn any_change_changes_the_signature() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let base = sign(&secret, "msg_1", 1, b"{}");
        assert_ne!(base, sign(&secret, "msg_2", 1, b"{}"));
        assert_ne!(base, sign(&secret, "msg_1", 2, b"{}"));
        assert_ne!(base, sign(&secret, "msg_1", 1, b"{ }"));
    }

    #[test]
    fn secrets_must_be_whsec_base64() {
        assert!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(Secret::parse("whsec_not base64!").is_err());
        assert!(Secret::parse("whsec_c2hvcnQ=").is_err());
        assert_eq!(
            format!(
                "{:?}",
                Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
            ),
            "Secret(..)"
        );
    }

    #[test]
    fn webhook_ids_are_stable() {
        assert_eq!(
            webhook_id("0b5c7f1e-0000-4000-8000-000000000001"),
            "msg_0b5c7f1e000040008000000000000001"
        );
    }
}
