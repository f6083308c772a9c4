//! One-time codes: generation from the OS CSPRNG and keyed hashing.
//!
//! A code is never stored. What is stored is HMAC-SHA256 under a per-install pepper, over the
//! purpose (sign-in, MFA challenge, ...), the subject (phone number or factor id) and the code,
//! so a hash leaked from one row cannot be replayed against another phone or another purpose,
//! and a stolen table without the pepper cannot be brute-forced offline.

use crate::error::{AuthError, Result};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub const MIN_LENGTH: usize = 6;
pub const MAX_LENGTH: usize = 10;
const DOMAIN: &[u8] = b"pg_otp_auth:otp:v1";

/// Fills `buf` from the operating system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) -> Result<()> {
    getrandom::getrandom(buf).map_err(|_| AuthError::internal("The random source is unavailable."))
}

/// A random (version 4) UUID in canonical text form.
pub fn random_uuid() -> Result<String> {
    let mut b = [0u8; 16];
    random_bytes(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(uuid_text(&b))
}

/// A time-ordered (version 7) UUID: 48 bits of Unix milliseconds, then 74 random bits. The ids of
/// rows written on every call use it, so that their primary-key inserts land on the index's
/// latest pages instead of a random page each (which, in a large table, is a page read and,
/// after every checkpoint, a full-page image in the WAL). Not for secrets: the time is readable.
/// The random bits come from the OS CSPRNG, read ahead (see [`RandomAhead`]).
pub fn time_ordered_uuid() -> [u8; 16] {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let random = RANDOM_AHEAD.with(|r| r.borrow_mut().take::<10>(std::process::id()));
    *uuid::Builder::from_unix_timestamp_millis(now.as_millis() as u64, &random)
        .into_uuid()
        .as_bytes()
}

/// Bytes from the OS CSPRNG, read a few kilobytes at a time instead of with a system call per
/// id, and each handed out once. The buffer belongs to the process that filled it: a forked
/// child (every PostgreSQL backend is one) never takes its parent's bytes, since it would
/// then hand out the ids its parent hands out.
struct RandomAhead {
    pid: u32,
    bytes: Vec<u8>,
}

thread_local! {
    static RANDOM_AHEAD: std::cell::RefCell<RandomAhead> =
        const { std::cell::RefCell::new(RandomAhead { pid: 0, bytes: Vec::new() }) };
}

impl RandomAhead {
    const READ: usize = 4096;

    /// `N` bytes for process `pid` (this process's id).
    fn take<const N: usize>(&mut self, pid: u32) -> [u8; N] {
        if self.pid != pid {
            self.pid = pid;
            self.bytes.clear();
        }
        if self.bytes.len() < N {
            self.bytes.resize(Self::READ, 0);
            // The CSPRNG of Linux does not fail once seeded; if it ever did, the ids would
            // still be distinct by time but guessable, so fail loudly instead.
            getrandom::getrandom(&mut self.bytes).expect("the OS random source failed");
        }
        let mut out = [0u8; N];
        let rest = self.bytes.len() - N;
        out.copy_from_slice(&self.bytes[rest..]);
        // Each byte is handed out once.
        self.bytes.truncate(rest);
        out
    }
}

/// [`time_ordered_uuid`] in canonical text form (the ids of audit rows written for a caller).
pub fn time_ordered_uuid_text() -> String {
    uuid_text(&time_ordered_uuid())
}

/// 16 bytes as a UUID in canonical text form.
pub fn uuid_text(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A uniformly random string of `length` decimal digits.
pub fn generate_code(length: usize) -> Result<String> {
    if !(MIN_LENGTH..=MAX_LENGTH).contains(&length) {
        return Err(AuthError::internal("otp_length is out of range."));
    }
    let mut code = String::with_capacity(length);
    let mut buf = [0u8; 32];
    while code.len() < length {
        random_bytes(&mut buf)?;
        // Rejection sampling: 250 is the largest multiple of 10 ≤ 256, so accepting only bytes
        // below it keeps every digit equally likely.
        for b in buf.iter().filter(|b| **b < 250) {
            if code.len() == length {
                break;
            }
            code.push(char::from(b'0' + b % 10));
        }
    }
    Ok(code)
}

/// Checks that a code a caller typed has the shape the install issues.
pub fn check_format(code: &str, expected_length: usize) -> Result<()> {
    if code.len() != expected_length || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthError::invalid_request(format!(
            "The code must be exactly {expected_length} digits."
        )));
    }
    Ok(())
}

/// The stored form of a code: HMAC-SHA256(pepper, domain ‖ purpose ‖ subject ‖ code).
pub fn hash_code(pepper: &[u8], purpose: &str, subject: &str, code: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(pepper).expect("HMAC accepts any key length");
    for part in [
        DOMAIN,
        purpose.as_bytes(),
        subject.as_bytes(),
        code.as_bytes(),
    ] {
        // Length-prefixing keeps ("ab","c") and ("a","bc") from hashing alike.
        mac.update(&(part.len() as u32).to_be_bytes());
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// Constant-time comparison of a presented code against a stored hash.
pub fn verify_code(pepper: &[u8], purpose: &str, subject: &str, code: &str, stored: &[u8]) -> bool {
    let candidate = hash_code(pepper, purpose, subject, code);
    candidate.len() == stored.len() && bool::from(candidate.ct_eq(stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_digits_of_the_requested_length() {
        for len in MIN_LENGTH..=MAX_LENGTH {
            let code = generate_code(len).unwrap();
            assert_eq!(code.len(), len);
            assert!(code.bytes().all(|b| b.is_ascii_digit()));
        }
        assert!(generate_code(5).is_err());
        assert!(generate_code(11).is_err());
    }

    #[test]
    fn digits_are_roughly_uniform() {
        let mut counts = [0usize; 10];
        for _ in 0..2000 {
            for b in generate_code(10).unwrap().bytes() {
                counts[(b - b'0') as usize] += 1;
            }
        }
        // 20,000 digits: each expected 2,000; a biased generator (e.g. b % 10 without rejection,
        // or a constant) falls far outside ±15%.
        for c in counts {
            assert!((1700..2300).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn codes_do_not_repeat() {
        let a: Vec<String> = (0..50).map(|_| generate_code(10).unwrap()).collect();
        let mut b = a.clone();
        b.sort();
        b.dedup();
        assert_eq!(a.len(), b.len());
    }

    #[test]
    fn time_ordered_uuids_are_version_7_ordered_by_time_and_random_within() {
        let a = time_ordered_uuid();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = time_ordered_uuid();
        let text = uuid_text(&a);
        assert_eq!(&text[14..15], "7");
        assert!("89ab".contains(&text[19..20]), "{text}");
        assert!(a < b, "{text} then {}", uuid_text(&b));
        let ms = u64::from_be_bytes([0, 0, a[0], a[1], a[2], a[3], a[4], a[5]]);
        let now = crate::clock::unix_seconds() as u64 * 1000;
        assert!(ms <= now + 1000 && ms + 5000 >= now, "{ms} vs {now}");
        // The same millisecond still gives distinct ids (74 random bits), across refills of
        // the bytes read ahead.
        let many: std::collections::HashSet<[u8; 16]> =
            (0..5000).map(|_| time_ordered_uuid()).collect();
        assert_eq!(many.len(), 5000);
    }

    #[test]
    fn bytes_read_ahead_are_handed_out_once_and_never_to_another_process() {
        let filled = || RandomAhead {
            pid: 1,
            bytes: (0..64).collect(),
        };
        let mut r = filled();
        assert_eq!(r.take::<10>(1), [54, 55, 56, 57, 58, 59, 60, 61, 62, 63]);
        assert_eq!(r.take::<10>(1), [44, 45, 46, 47, 48, 49, 50, 51, 52, 53]);
        assert_eq!(r.bytes.len(), 44);
        // A forked child (another pid) reads its own bytes instead of its parent's.
        let mut child = filled();
        let first = child.take::<16>(2);
        assert_eq!(child.pid, 2);
        assert_eq!(child.bytes.len(), RandomAhead::READ - 16);
        assert!(!(0..64u8)
            .collect::<Vec<_>>()
            .windows(16)
            .any(|w| w == first));
    }

    #[test]
    fn random_uuids_are_version_4_and_distinct() {
        let a = random_uuid().unwrap();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!("89ab".contains(&a[19..20]), "{a}");
        assert_ne!(a, random_uuid().unwrap());
    }

    #[test]
    fn hash_binds_pepper_purpose_subject_and_code() {
        let h = hash_code(b"pepper", "signin", "+11234567890", "123456");
        assert_eq!(h.len(), 32);
        assert!(verify_code(
            b"pepper",
            "signin",
            "+11234567890",
            "123456",
            &h
        ));
        assert!(!verify_code(
            b"pepper",
            "signin",
            "+11234567890",
            "123457",
            &h
        ));
        assert!(!verify_code(
            b"other",
            "signin",
            "+11234567890",
            "123456",
            &h
        ));
        assert!(!verify_code(b"pepper", "mfa", "+11234567890", "123456", &h));
        assert!(!verify_code(
            b"pepper",
            "signin",
            "+11234567891",
            "123456",
            &h
        ));
        assert!(!verify_code(
            b"pepper",
            "signin",
            "+11234567890",
            "123456",
            &h[..31]
        ));
    }

    #[test]
    fn hash_matches_an_independent_hmac_computation() {
        // Computed with Python: hmac.new(b"k", b"".join(len(p).to_bytes(4,"big")+p for p in
        // [b"pg_otp_auth:otp:v1", b"signin", b"+15550001111", b"123456"]), "sha256").hexdigest()
        let h = hash_code(b"k", "signin", "+15550001111", "123456");
        let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, EXPECTED_HEX);
    }

    const EXPECTED_HEX: &str = "1e671645b3d769fcccea3228115a8c766054aafe9b6d787611d2cce95c64a03b";

    #[test]
    fn format_check_requires_exact_digit_count() {
        assert!(check_format("123456", 6).is_ok());
        for bad in ["12345", "1234567", "12345a", "12 456", "１２３４５６", ""] {
            let e = check_format(bad, 6).unwrap_err();
            assert_eq!((e.status, e.code), (400, "invalid-request"), "{bad:?}");
        }
    }
}
