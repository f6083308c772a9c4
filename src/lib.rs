//! pg_otp_auth: phone one-time-code sign-in and sessions inside PostgreSQL.
//!
//! The public SQL API is declared in `sql/api.sql`: its functions are the entry points defined
//! here (a few through PL/pgSQL wrappers); the logic lives in the `pg_otp_auth_core` crate.

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

pub(crate) use answer::{respond, Answer};

mod account;
mod admin;
mod answer;
mod audit;
mod autonomous;
mod budget;
mod config;
mod db;
mod dispatch;
mod jsonb;
mod lookup;
mod mfa;
mod outbox;
mod recorder;
mod request;
mod retired;
mod session;
mod signin;
mod wakeup;

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    recorder::init();
    if recorder::preloaded() {
        budget::init();
    }
}
extension_sql_file!("../sql/api.sql", name = "api", finalize);

/// `auth._uuid_v7()`, the default id of the tables written on every call (declared in
/// schema.sql, before the tables).
#[pg_extern(sql = false)]
fn uuid_v7() -> pgrx::Uuid {
    pgrx::Uuid::from_bytes(pg_otp_auth_core::otp::time_ordered_uuid())
}

/// Random bytes from the OS CSPRNG, for generating secrets at CREATE EXTENSION.
#[pg_extern(name = "_random_bytes")]
fn random_bytes(n: i32) -> Vec<u8> {
    let mut buf = vec![0u8; n.clamp(1, 1024) as usize];
    pg_otp_auth_core::otp::random_bytes(&mut buf).unwrap_or_else(|e| error!("{}", e.message));
    buf
}

/// A random printable secret of `n` URL-safe base64 characters (6 random bits each), as
/// PostgREST's jwt-secret expects a string.
#[pg_extern(name = "_random_secret_text")]
fn random_secret_text(n: i32) -> String {
    use base64::Engine;
    let n = n.clamp(32, 256) as usize;
    let mut encoded =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(n as i32));
    encoded.truncate(n);
    encoded
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;
    use pgrx::JsonB;
    use serde_json::Value;

    fn json(sql: &str) -> Value {
        Spi::get_one::<JsonB>(sql).unwrap().expect("a row").0
    }

    #[pg_test]
    fn secrets_are_generated_at_create_extension() {
        let len = Spi::get_one::<i32>("SELECT octet_length(auth.jwt_secret())").unwrap();
        assert_eq!(len, Some(48));
        let pepper = Spi::get_one::<i32>(
            "SELECT octet_length(value) FROM auth.secrets WHERE name = 'otp_pepper'",
        )
        .unwrap();
        assert_eq!(pepper, Some(32));
    }

    #[pg_test]
    fn internal_functions_return_tagged_errors() {
        let v = json("SELECT auth._signup_sms_otp('12345', '{}')");
        assert_eq!(v["error"]["status"], 400);
        assert_eq!(v["error"]["code"], "invalid-phone");
        let v = json("SELECT auth._sign_out(NULL)");
        assert_eq!(v["error"]["code"], "invalid-request");
    }

    #[pg_test(error = "The phone number must be in E.164 format: + and 8 to 15 digits.")]
    fn an_api_function_raises_its_error() {
        Spi::run("SELECT auth.send_sms_otp(phone => 'nope')").unwrap();
    }

    #[pg_test(error = "The phone number must be in E.164 format: + and 8 to 15 digits.")]
    fn a_wrapped_api_function_raises_its_error() {
        Spi::run("SELECT auth.signup_sms_otp(phone => 'nope')").unwrap();
    }

    #[pg_test]
    fn send_queues_one_message_and_stores_only_a_hash() {
        let sent =
            json("SELECT auth.send_sms_otp(phone => '+44 7911 123456', channel => 'whatsapp')");
        assert_eq!(sent["phone"], "+4*******3456");
        assert_eq!(sent["channel"], "whatsapp");
        let body = Spi::get_one::<String>("SELECT body FROM auth.sms_outbox")
            .unwrap()
            .unwrap();
        let code = body.trim_start_matches("Your code is ");
        assert_eq!(code.len(), 6);
        let plain = Spi::get_one_with_args::<i64>(
            "SELECT count(*) FROM auth.otp_codes WHERE position(convert_to($1, 'UTF8') IN code_hash) > 0",
            &[code.into()],
        )
        .unwrap();
        assert_eq!(plain, Some(0));
    }

    /// Judging a code in the transaction that sent it is refused: the attempt worker could not
    /// see the uncommitted code, so guesses would go uncounted.
    #[pg_test(
        error = "Codes and tokens must be checked in a READ COMMITTED transaction that has written nothing yet."
    )]
    fn a_code_is_not_judged_in_the_transaction_that_sent_it() {
        Spi::run("SELECT auth.send_sms_otp(phone => '+447911123456')").unwrap();
        Spi::run("SELECT auth.verify_sms_otp(phone => '+447911123456', otp => '123456')").unwrap();
    }

    #[pg_test]
    fn statement_results_are_read_as_json_or_refused() {
        use crate::db;
        assert_eq!(
            db::row("SELECT json_build_object('a', 1)", &[]).unwrap(),
            Some(serde_json::json!({"a": 1}))
        );
        assert_eq!(
            db::row("SELECT jsonb_build_object('b', true)", &[]).unwrap(),
            Some(serde_json::json!({"b": true}))
        );
        // NULL rows are skipped: the first non-NULL one answers.
        assert_eq!(
            db::row(
                "SELECT v FROM (VALUES (NULL::json), ('2'), ('3')) t (v)",
                &[]
            )
            .unwrap(),
            Some(serde_json::json!(2))
        );
        // Anything else is an error, not text read as jsonb.
        let refused = db::row("SELECT 42", &[]).unwrap_err();
        assert_eq!(refused.code, "internal-error");
        // A statement without a result answers no row.
        Spi::run("CREATE TEMP TABLE t (x int)").unwrap();
        assert_eq!(db::row("INSERT INTO t VALUES (1)", &[]).unwrap(), None);
    }

    #[pg_test]
    fn settings_round_trip() {
        Spi::run("SELECT auth.set_setting('otp_ttl', '\"2 minutes\"')").unwrap();
        let v = Spi::get_one::<JsonB>("SELECT value FROM auth.settings() WHERE name = 'otp_ttl'")
            .unwrap()
            .unwrap();
        assert_eq!(v.0, Value::from(120));
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
