//! Per-call cost of the extension's cryptographic primitives, in process (no SQL call around
//! them): TOTP verification (±1 step, as `mfa_verify` checks a code) and HS256 signing of an
//! access token with the claims a sign-in issues. Used by the benchmark (bench/driver.py),
//! which prints them beside the PL/pgSQL + pgcrypto versions timed inside PostgreSQL.
//!
//!   cargo run --release -p pg_otp_auth_core --example primitives -- [ITERATIONS]
//!
//! Prints one JSON object: nanoseconds per call, the best of five rounds.

use pg_otp_auth_core::session::{
    build_claims, sign_hs256, AuthMethod, TokenSettings, TokenSubject,
};
use pg_otp_auth_core::totp::{self, Params};
use std::hint::black_box;
use std::time::Instant;

fn best_of_five(n: u32, mut f: impl FnMut(u32)) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for i in 0..n {
                f(i);
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let secret = *b"12345678901234567890";
    let t0 = 1_700_000_000i64;
    let code = totp::totp(&secret, t0, 6, 30, totp::Algorithm::Sha1).expect("totp");
    let totp_verify = best_of_five(n, |i| {
        // The same code against the clock 0..29 s later: found in the current step.
        let found = totp::verify(&secret, &code, t0 + (i % 30) as i64, Params::default(), 1)
            .expect("verify");
        black_box(found);
    });

    let roles = vec!["authenticated".to_string()];
    let jwt_secret = [7u8; 48];
    let settings = TokenSettings {
        audience: "authenticated",
        issuer: "pg_otp_auth",
        lifetime_seconds: 3600,
        hasura_claims: false,
    };
    let jwt_sign = best_of_five(n, |i| {
        let subject = TokenSubject {
            user_id: "6f1c1d1e-3b0a-4c55-9a55-0c3f8e9f2b11",
            phone: "+15550104242",
            default_role: "authenticated",
            roles: &roles,
            session_id: "0b6d8a7e-6c1f-4f0e-8c2e-5b9a1d2c3e4f",
            aal: "aal1",
            amr: vec![AuthMethod {
                method: "otp".into(),
                timestamp: t0,
            }],
            is_anonymous: false,
            user_metadata: serde_json::json!({}),
        };
        let claims = build_claims(&subject, &settings, t0 + i as i64);
        black_box(sign_hs256(&claims, &jwt_secret).expect("sign"));
    });
    println!(
        "{}",
        serde_json::json!({"iterations": n, "totp_verify_ns": totp_verify, "jwt_sign_ns": jwt_sign})
    );
}
