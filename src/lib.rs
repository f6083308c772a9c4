//! pg_otp_auth: phone one-time-code sign-in and sessions inside PostgreSQL.
//!
//! The public SQL API lives in `sql/api.sql` as thin wrappers around the internal `auth._*`
//! functions defined here; the logic lives in the `pg_otp_auth_core` crate.

use pg_otp_auth_core::error::Result;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};

::pgrx::pg_module_magic!(name, version);

mod autonomous;
mod config;
mod db;
mod request;
mod session;
mod signin;

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/api.sql", name = "api", finalize);

/// The tagged result the SQL wrappers unwrap (and raise from).
pub(crate) fn respond(result: Result<Value>) -> JsonB {
    match result {
        Ok(v) => JsonB(json!({ "ok": v })),
        Err(e) => JsonB(e.to_result_json()),
    }
}

/// Random bytes from the OS CSPRNG, for generating secrets at CREATE EXTENSION.
#[pg_extern(name = "_random_bytes")]
fn random_bytes(n: i32) -> Vec<u8> {
    let mut buf = vec![0u8; n.clamp(1, 1024) as usize];
    pg_otp_auth_core::otp::random_bytes(&mut buf).unwrap_or_else(|e| error!("{}", e.message));
    buf
}

/// A random printable secret (URL-safe base64 of `n` random bytes), as PostgREST's
/// jwt-secret expects a string.
#[pg_extern(name = "_random_secret_text")]
fn random_secret_text(n: i32) -> String {
    use pg_otp_auth_core::session::new_refresh_token;
    let mut s = String::new();
    while s.len() < (n.clamp(32, 256) as usize) {
        s.push_str(&new_refresh_token().unwrap_or_else(|e| error!("{}", e.message)));
    }
    s.truncate(n.clamp(32, 256) as usize);
    s
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn jwt_secret_is_generated_at_create_extension() {
        let len = Spi::get_one::<i32>("SELECT octet_length(auth.jwt_secret())").unwrap();
        assert_eq!(len, Some(48));
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
