//! Sessions: access-token claims, HS256 signing, and opaque refresh tokens.

use crate::error::{AuthError, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const HASURA_NAMESPACE: &str = "https://hasura.io/jwt/claims";
/// HS256 keys shorter than the hash output weaken the MAC; PostgREST also wants ≥ 32 characters.
pub const MIN_JWT_SECRET_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthMethod {
    pub method: String,
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HasuraClaims {
    #[serde(rename = "x-hasura-user-id")]
    pub user_id: String,
    #[serde(rename = "x-hasura-default-role")]
    pub default_role: String,
    #[serde(rename = "x-hasura-allowed-roles")]
    pub allowed_roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub sub: String,
    pub role: String,
    pub aud: String,
    pub iss: String,
    pub iat: i64,
    pub exp: i64,
    pub session_id: String,
    pub phone: String,
    pub aal: String,
    pub amr: Vec<AuthMethod>,
    pub is_anonymous: bool,
    pub app_metadata: Value,
    pub user_metadata: Value,
    #[serde(
        rename = "https://hasura.io/jwt/claims",
        skip_serializing_if = "Option::is_none"
    )]
    pub hasura: Option<HasuraClaims>,
}

/// Everything about a user and a session that goes into an access token.
#[derive(Debug, Clone)]
pub struct TokenSubject<'a> {
    pub user_id: &'a str,
    pub phone: &'a str,
    pub default_role: &'a str,
    pub roles: &'a [String],
    pub session_id: &'a str,
    pub aal: &'a str,
    pub amr: Vec<AuthMethod>,
    pub is_anonymous: bool,
    pub user_metadata: Value,
}

#[derive(Debug, Clone)]
pub struct TokenSettings<'a> {
    pub audience: &'a str,
    pub issuer: &'a str,
    pub lifetime_seconds: i64,
    pub hasura_claims: bool,
}

pub fn build_claims(subject: &TokenSubject, settings: &TokenSettings, now: i64) -> AccessClaims {
    let hasura = settings.hasura_claims.then(|| HasuraClaims {
        user_id: subject.user_id.to_string(),
        default_role: subject.default_role.to_string(),
        allowed_roles: subject.roles.to_vec(),
    });
    AccessClaims {
        sub: subject.user_id.to_string(),
        role: subject.default_role.to_string(),
        aud: settings.audience.to_string(),
        iss: settings.issuer.to_string(),
        iat: now,
        exp: now + settings.lifetime_seconds,
        session_id: subject.session_id.to_string(),
        phone: subject.phone.to_string(),
        aal: subject.aal.to_string(),
        amr: subject.amr.clone(),
        is_anonymous: subject.is_anonymous,
        app_metadata: serde_json::json!({
            "provider": "phone",
            "providers": ["phone"],
            "roles": subject.roles,
            "default_role": subject.default_role,
        }),
        user_metadata: subject.user_metadata.clone(),
        hasura,
    }
}

pub fn sign_hs256(claims: &AccessClaims, secret: &[u8]) -> Result<String> {
    if secret.len() < MIN_JWT_SECRET_LEN {
        return Err(AuthError::internal("The JWT secret is too short."));
    }
    encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|_| AuthError::internal("The access token could not be signed."))
}

/// A new refresh token: 256 random bits, URL-safe so it survives JSON, headers and cookies.
pub fn new_refresh_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    crate::otp::random_bytes(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// What is stored of a refresh token. The token has 256 bits of entropy, so an unkeyed hash is
/// already preimage-safe; a lookup by hash needs the hash to be deterministic.
pub fn refresh_token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Refresh tokens this install issued are exactly 43 URL-safe base64 characters; anything else
/// is rejected before touching the database.
pub fn refresh_token_well_formed(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};

    fn subject(roles: &[String]) -> TokenSubject<'_> {
        TokenSubject {
            user_id: "6f1c0a4e-0000-4000-8000-000000000001",
            phone: "+15550001111",
            default_role: "authenticated",
            roles,
            session_id: "6f1c0a4e-0000-4000-8000-000000000002",
            aal: "aal1",
            amr: vec![AuthMethod {
                method: "sms".into(),
                timestamp: 1_700_000_000,
            }],
            is_anonymous: false,
            user_metadata: serde_json::json!({"plan": "pro"}),
        }
    }

    fn settings(hasura: bool) -> TokenSettings<'static> {
        TokenSettings {
            audience: "authenticated",
            issuer: "pg_otp_auth",
            lifetime_seconds: 3600,
            hasura_claims: hasura,
        }
    }

    #[test]
    fn claims_have_the_documented_shape() {
        let roles = vec!["authenticated".to_string()];
        let c = build_claims(&subject(&roles), &settings(false), 1_700_000_000);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["exp"], 1_700_003_600);
        assert_eq!(v["aal"], "aal1");
        assert_eq!(v["amr"][0]["method"], "sms");
        assert_eq!(v["user_metadata"]["plan"], "pro");
        assert_eq!(v["app_metadata"]["provider"], "phone");
        assert!(v.get(HASURA_NAMESPACE).is_none());
    }

    #[test]
    fn hasura_namespace_is_added_when_enabled() {
        let roles = vec!["user".to_string(), "me".to_string()];
        let c = build_claims(&subject(&roles), &settings(true), 1);
        let v = serde_json::to_value(&c).unwrap();
        let h = &v[HASURA_NAMESPACE];
        assert_eq!(
            h["x-hasura-user-id"],
            "6f1c0a4e-0000-4000-8000-000000000001"
        );
        assert_eq!(
            h["x-hasura-allowed-roles"],
            serde_json::json!(["user", "me"])
        );
        assert_eq!(h["x-hasura-default-role"], "authenticated");
    }

    #[test]
    fn signed_token_verifies_with_the_secret_only() {
        let roles = vec!["authenticated".to_string()];
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let c = build_claims(&subject(&roles), &settings(false), now);
        let secret = b"0123456789abcdef0123456789abcdef";
        let token = sign_hs256(&c, secret).unwrap();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&["authenticated"]);
        let decoded =
            decode::<AccessClaims>(&token, &DecodingKey::from_secret(secret), &validation).unwrap();
        assert_eq!(decoded.claims, c);
        assert!(decode::<AccessClaims>(
            &token,
            &DecodingKey::from_secret(b"another-secret-another-secret-xx"),
            &validation
        )
        .is_err());
    }

    #[test]
    fn short_secrets_are_refused() {
        let roles = vec![];
        let c = build_claims(&subject(&roles), &settings(false), 1);
        assert!(sign_hs256(&c, b"short").is_err());
    }

    #[test]
    fn refresh_tokens_are_random_and_well_formed() {
        let a = new_refresh_token().unwrap();
        let b = new_refresh_token().unwrap();
        assert_ne!(a, b);
        assert!(refresh_token_well_formed(&a));
        assert!(!refresh_token_well_formed("short"));
        assert!(!refresh_token_well_formed(&format!("{}=", &a[..42])));
        assert_eq!(refresh_token_hash(&a).len(), 32);
        assert_ne!(refresh_token_hash(&a), refresh_token_hash(&b));
    }
}
