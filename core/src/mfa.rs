//! Multi-factor pieces that need no database: recovery codes, sign-in tickets, factor names.

use crate::error::{AuthError, Result};
use crate::otp::random_bytes;

pub const RECOVERY_CODE_COUNT: usize = 10;
pub const TICKET_PREFIX: &str = "mfaTotp:";
pub const MAX_FRIENDLY_NAME_CHARS: usize = 64;
pub const MAX_ISSUER_CHARS: usize = 64;
/// Lowercase base32 without the look-alike-free guarantees of Crockford, but without padding
/// or case issues: 10 characters carry 50 bits.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Ten fresh codes like `k3vq7-m2xpa` (50 random bits each).
pub fn new_recovery_codes() -> Result<Vec<String>> {
    let mut codes = Vec::with_capacity(RECOVERY_CODE_COUNT);
    for _ in 0..RECOVERY_CODE_COUNT {
        let mut buf = [0u8; 10];
        random_bytes(&mut buf)?;
        let chars: String = buf
            .iter()
            .map(|b| ALPHABET[(b & 31) as usize] as char)
            .collect();
        codes.push(format!("{}-{}", &chars[..5], &chars[5..]));
    }
    Ok(codes)
}

/// The form a recovery code is hashed in: lowercase, separators removed. Anything that cannot
/// be a recovery code is an input error.
pub fn normalize_recovery_code(input: &str) -> Result<String> {
    let code: String = input
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if code.len() != 10 || !code.bytes().all(|b| ALPHABET.contains(&b)) {
        return Err(AuthError::invalid_request(
            "A recovery code has 10 letters and digits, like k3vq7-m2xpa.",
        ));
    }
    Ok(code)
}

pub fn format_ticket(id: &str) -> String {
    format!("{TICKET_PREFIX}{id}")
}

/// The id inside `mfaTotp:<uuid>`, checked for shape only.
pub fn parse_ticket(ticket: &str) -> Result<String> {
    let invalid = || {
        AuthError::new(
            401,
            "invalid-ticket",
            "The MFA ticket is invalid or has expired.",
        )
    };
    let id = ticket.strip_prefix(TICKET_PREFIX).ok_or_else(invalid)?;
    let hex_ok = id.len() == 36
        && id.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    if !hex_ok {
        return Err(invalid());
    }
    Ok(id.to_ascii_lowercase())
}

fn check_label(value: &str, what: &str, max: usize) -> Result<()> {
    let n = value.chars().count();
    if value.trim().is_empty() || n > max || value.chars().any(char::is_control) {
        return Err(AuthError::invalid_request(format!(
            "{what} must be 1 to {max} printable characters."
        )));
    }
    Ok(())
}

pub fn check_friendly_name(name: &str) -> Result<()> {
    check_label(name, "friendly_name", MAX_FRIENDLY_NAME_CHARS)
}

/// Key-URI issuers may not contain ':' (it separates issuer and account in the label).
pub fn check_issuer(issuer: &str) -> Result<()> {
    check_label(issuer, "issuer", MAX_ISSUER_CHARS)?;
    if issuer.contains(':') {
        return Err(AuthError::invalid_request("issuer must not contain ':'."));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_are_ten_distinct_well_formed_codes() {
        let codes = new_recovery_codes().unwrap();
        assert_eq!(codes.len(), 10);
        let mut dedup = codes.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), 10);
        for c in &codes {
            assert_eq!(c.len(), 11);
            assert_eq!(normalize_recovery_code(c).unwrap(), c.replace('-', ""));
            assert_eq!(
                normalize_recovery_code(&c.to_uppercase()).unwrap(),
                c.replace('-', "")
            );
        }
    }

    #[test]
    fn malformed_recovery_codes_are_input_errors() {
        for bad in ["", "abc", "k3vq7-m2xp1", "k3vq7-m2xpa-x", "k3vq7_m2xpa"] {
            assert_eq!(
                normalize_recovery_code(bad).unwrap_err().code,
                "invalid-request",
                "{bad}"
            );
        }
    }

    #[test]
    fn tickets() {
        let id = "6f1c0a4e-0000-4000-8000-00000000000A";
        assert_eq!(parse_ticket(&format_ticket(id)).unwrap(), id.to_lowercase());
        for bad in [
            "",
            "6f1c0a4e-0000-4000-8000-000000000001",
            "mfaTotp:",
            "mfaTotp:not-a-uuid",
            "mfaSms:6f1c0a4e-0000-4000-8000-000000000001",
        ] {
            let e = parse_ticket(bad).unwrap_err();
            assert_eq!((e.status, e.code), (401, "invalid-ticket"), "{bad}");
        }
    }

    #[test]
    fn labels() {
        assert!(check_friendly_name("My phone").is_ok());
        assert!(check_friendly_name(" ").is_err());
        assert!(check_friendly_name(&"x".repeat(65)).is_err());
        assert!(check_issuer("Acme").is_ok());
        assert!(check_issuer("Acme:Evil").is_err());
    }
}
