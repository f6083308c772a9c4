//! HOTP (RFC 4226) and TOTP (RFC 6238) with SHA-1, SHA-256 and SHA-512; base32 (RFC 4648);
//! Google Authenticator key URIs and their QR codes.

use crate::error::{AuthError, Result};
use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn parse(name: &str) -> Result<Algorithm> {
        match name.to_ascii_lowercase().as_str() {
            "sha1" => Ok(Algorithm::Sha1),
            "sha256" => Ok(Algorithm::Sha256),
            "sha512" => Ok(Algorithm::Sha512),
            _ => Err(AuthError::invalid_request(
                "algorithm must be sha1, sha256 or sha512.",
            )),
        }
    }

    pub fn uri_name(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha256 => "SHA256",
            Algorithm::Sha512 => "SHA512",
        }
    }
}

pub fn check_digits(digits: u32) -> Result<()> {
    if !(6..=8).contains(&digits) {
        return Err(AuthError::invalid_request("digits must be 6, 7 or 8."));
    }
    Ok(())
}

fn mac(algorithm: Algorithm, key: &[u8], msg: &[u8]) -> Vec<u8> {
    macro_rules! run {
        ($h:ty) => {{
            let mut m = Hmac::<$h>::new_from_slice(key).expect("HMAC accepts any key length");
            m.update(msg);
            m.finalize().into_bytes().to_vec()
        }};
    }
    match algorithm {
        Algorithm::Sha1 => run!(sha1::Sha1),
        Algorithm::Sha256 => run!(sha2::Sha256),
        Algorithm::Sha512 => run!(sha2::Sha512),
    }
}

/// RFC 4226 HOTP with dynamic truncation.
pub fn hotp(secret: &[u8], counter: u64, digits: u32, algorithm: Algorithm) -> Result<String> {
    check_digits(digits)?;
    let h = mac(algorithm, secret, &counter.to_be_bytes());
    let offset = (h[h.len() - 1] & 0x0f) as usize;
    let bin = u32::from_be_bytes([
        h[offset] & 0x7f,
        h[offset + 1],
        h[offset + 2],
        h[offset + 3],
    ]);
    let code = bin % 10u32.pow(digits);
    Ok(format!("{code:0width$}", width = digits as usize))
}

/// The time step of Unix time `t` (seconds) for a period.
pub fn step_at(t: i64, period: u32) -> Result<u64> {
    if period == 0 {
        return Err(AuthError::invalid_request("period must be positive."));
    }
    if t < 0 {
        return Err(AuthError::invalid_request("TOTP needs a time after 1970."));
    }
    Ok((t as u64) / period as u64)
}

pub fn totp(
    secret: &[u8],
    t: i64,
    digits: u32,
    period: u32,
    algorithm: Algorithm,
) -> Result<String> {
    hotp(secret, step_at(t, period)?, digits, algorithm)
}

/// Finds the step within ±`window` of time `t` whose code equals `code`, comparing every
/// candidate in constant time (all candidates are computed, whichever matches).
pub fn verify(
    secret: &[u8],
    code: &str,
    t: i64,
    params: Params,
    window: u32,
) -> Result<Option<u64>> {
    let now = step_at(t, params.period)?;
    let mut found = None;
    for step in now.saturating_sub(window as u64)..=now + window as u64 {
        let candidate = hotp(secret, step, params.digits, params.algorithm)?;
        if bool::from(candidate.as_bytes().ct_eq(code.as_bytes())) {
            found = Some(step);
        }
    }
    Ok(found)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub digits: u32,
    pub period: u32,
    pub algorithm: Algorithm,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            digits: 6,
            period: 30,
            algorithm: Algorithm::Sha1,
        }
    }
}

const B32: base32::Alphabet = base32::Alphabet::Rfc4648 { padding: false };

pub fn base32_encode(data: &[u8]) -> String {
    base32::encode(B32, data)
}

/// Case-insensitive; `=` padding, spaces and dashes (as authenticator apps show keys) are
/// ignored.
pub fn base32_decode(text: &str) -> Result<Vec<u8>> {
    let cleaned: String = text
        .trim_end_matches('=')
        .chars()
        .filter(|c| !matches!(c, ' ' | '-'))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    match base32::decode(B32, &cleaned) {
        Some(bytes) if !bytes.is_empty() => Ok(bytes),
        _ => Err(AuthError::invalid_request(
            "The secret is not valid base32.",
        )),
    }
}

/// Everything but RFC 3986 unreserved characters is percent-encoded.
const NOT_UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub fn uri_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, NOT_UNRESERVED).to_string()
}

/// `otpauth://totp/ISSUER:ACCOUNT?secret=…&issuer=…&algorithm=…&digits=…&period=…`
pub fn key_uri(issuer: &str, account: &str, secret_b32: &str, p: Params) -> String {
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm={}&digits={}&period={}",
        uri_encode(issuer),
        uri_encode(account),
        secret_b32,
        uri_encode(issuer),
        p.algorithm.uri_name(),
        p.digits,
        p.period
    )
}

/// An SVG image of the QR code for `text`.
pub fn qr_svg(text: &str) -> Result<String> {
    let code = qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::M)
        .map_err(|_| AuthError::invalid_request("The enrollment URI is too long for a QR code."))?;
    let svg = code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build();
    // Drop the XML declaration so the value can be used inline in HTML or as a data URI.
    let start = svg.find("<svg").unwrap_or(0);
    Ok(svg[start..].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED20: &[u8] = b"12345678901234567890";
    const SEED32: &[u8] = b"12345678901234567890123456789012";
    const SEED64: &[u8] = b"1234567890123456789012345678901234567890123456789012345678901234";

    #[test]
    fn rfc4226_appendix_d() {
        let expected = [
            "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583",
            "399871", "520489",
        ];
        for (counter, want) in expected.iter().enumerate() {
            assert_eq!(
                hotp(SEED20, counter as u64, 6, Algorithm::Sha1).unwrap(),
                *want
            );
        }
    }

    #[test]
    fn rfc6238_appendix_b() {
        let rows: [(i64, &str, &str, &str); 6] = [
            (59, "94287082", "46119246", "90693936"),
            (1111111109, "07081804", "68084774", "25091201"),
            (1111111111, "14050471", "67062674", "99943326"),
            (1234567890, "89005924", "91819424", "93441116"),
            (2000000000, "69279037", "90698825", "38618901"),
            (20000000000, "65353130", "77737706", "47863826"),
        ];
        for (t, sha1, sha256, sha512) in rows {
            assert_eq!(
                totp(SEED20, t, 8, 30, Algorithm::Sha1).unwrap(),
                sha1,
                "t={t}"
            );
            assert_eq!(
                totp(SEED32, t, 8, 30, Algorithm::Sha256).unwrap(),
                sha256,
                "t={t}"
            );
            assert_eq!(
                totp(SEED64, t, 8, 30, Algorithm::Sha512).unwrap(),
                sha512,
                "t={t}"
            );
        }
    }

    #[test]
    fn verify_accepts_the_window_and_reports_the_step() {
        let p = Params::default();
        let t = 1_700_000_000;
        let prev = totp(SEED20, t - 30, 6, 30, Algorithm::Sha1).unwrap();
        let next = totp(SEED20, t + 30, 6, 30, Algorithm::Sha1).unwrap();
        let far = totp(SEED20, t + 90, 6, 30, Algorithm::Sha1).unwrap();
        let now_step = step_at(t, 30).unwrap();
        assert_eq!(verify(SEED20, &prev, t, p, 1).unwrap(), Some(now_step - 1));
        assert_eq!(verify(SEED20, &next, t, p, 1).unwrap(), Some(now_step + 1));
        assert_eq!(verify(SEED20, &far, t, p, 1).unwrap(), None);
        assert_eq!(verify(SEED20, &prev, t, p, 0).unwrap(), None);
    }

    #[test]
    fn parameters_are_checked() {
        assert!(hotp(SEED20, 0, 5, Algorithm::Sha1).is_err());
        assert!(hotp(SEED20, 0, 9, Algorithm::Sha1).is_err());
        assert!(totp(SEED20, 0, 6, 0, Algorithm::Sha1).is_err());
        assert!(totp(SEED20, -1, 6, 30, Algorithm::Sha1).is_err());
        assert_eq!(Algorithm::parse("SHA256").unwrap(), Algorithm::Sha256);
        assert!(Algorithm::parse("md5").is_err());
    }

    #[test]
    fn base32_round_trips_and_matches_rfc4648() {
        // RFC 4648 section 10 vectors (padding omitted on encode).
        for (plain, enc) in [
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32_encode(plain.as_bytes()), enc);
            assert_eq!(base32_decode(enc).unwrap(), plain.as_bytes());
        }
        assert_eq!(base32_decode("mzxw6ytboi======").unwrap(), b"foobar");
        assert_eq!(base32_decode("GEZD GNBV GY3T QOJQ").unwrap(), b"1234567890");
        assert!(base32_decode("MZXW1").is_err());
        assert!(base32_decode("").is_err());
        let data: Vec<u8> = (0..=255).collect();
        assert_eq!(base32_decode(&base32_encode(&data)).unwrap(), data);
        assert!(base32_decode("====").is_err());
    }

    #[test]
    fn key_uri_encodes_label_and_issuer() {
        let uri = key_uri(
            "Acme Co",
            "+15550001111",
            "JBSWY3DPEHPK3PXP",
            Params::default(),
        );
        assert_eq!(
            uri,
            "otpauth://totp/Acme%20Co:%2B15550001111?secret=JBSWY3DPEHPK3PXP&issuer=Acme%20Co&algorithm=SHA1&digits=6&period=30"
        );
    }

    #[test]
    fn qr_code_is_an_svg() {
        let svg = qr_svg("otpauth://totp/a:b?secret=JBSWY3DPEHPK3PXP").unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
