//! E.164 phone numbers: normalising user input and masking for display.

use crate::error::{AuthError, Result};

/// Normalises `input` to E.164 (`+` then 8–15 digits, the first 1–9).
///
/// Spaces, dashes and parentheses are formatting and are dropped; anything else that is not a
/// digit makes the number invalid rather than being silently discarded.
pub fn normalize(input: &str) -> Result<String> {
    let mut out = String::with_capacity(16);
    let mut chars = input
        .trim()
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')'));
    if chars.next() != Some('+') {
        return Err(invalid());
    }
    out.push('+');
    for c in chars {
        if !c.is_ascii_digit() {
            return Err(invalid());
        }
        out.push(c);
    }
    let digits = &out[1..];
    if !(8..=15).contains(&digits.len()) || digits.starts_with('0') {
        return Err(invalid());
    }
    Ok(out)
}

fn invalid() -> AuthError {
    AuthError::new(
        400,
        "invalid-phone",
        "The phone number must be in E.164 format: + and 8 to 15 digits.",
    )
}

/// `+11234567890` → `+1******7890`: enough to recognise one's own number, not to harvest it.
pub fn mask(e164: &str) -> String {
    let digits: Vec<char> = e164.trim_start_matches('+').chars().collect();
    if digits.len() < 6 {
        return "+".to_string() + &"*".repeat(digits.len());
    }
    let keep_tail = 4;
    let mut out = String::from("+");
    out.push(digits[0]);
    out.push_str(&"*".repeat(digits.len() - 1 - keep_tail));
    out.extend(&digits[digits.len() - keep_tail..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_formatting_characters() {
        assert_eq!(normalize("+1 (123) 456-7890").unwrap(), "+11234567890");
        assert_eq!(normalize("  +447911123456 ").unwrap(), "+447911123456");
    }

    #[test]
    fn rejects_malformed_numbers() {
        for bad in [
            "",
            "+",
            "11234567890",
            "+0123456789",
            "+1234567",
            "+1234567890123456",
            "+1234x567890",
            "+1.234.567.890",
            "++11234567890",
            "+١٢٣٤٥٦٧٨٩",
        ] {
            let err = normalize(bad).unwrap_err();
            assert_eq!(err.code, "invalid-phone", "{bad:?}");
            assert_eq!(err.status, 400);
        }
    }

    #[test]
    fn accepts_the_length_bounds() {
        assert!(normalize("+12345678").is_ok());
        assert!(normalize("+123456789012345").is_ok());
    }

    #[test]
    fn masks_all_but_country_digit_and_last_four() {
        assert_eq!(mask("+11234567890"), "+1******7890");
        assert_eq!(mask("+12345678"), "+1***5678");
    }
}
