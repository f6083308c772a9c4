//! SPI helpers. Every query returns one jsonb column, so results land in serde types instead
//! of per-column datum juggling.

use pg_otp_auth_core::error::{AuthError, Result};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub type Arg<'a> = DatumWithOid<'a>;

fn spi_error(e: pgrx::spi::SpiError) -> AuthError {
    // The detail is for the server log, not for the caller.
    pgrx::warning!("pg_otp_auth: SPI call failed: {e}");
    AuthError::internal("An internal database call failed.")
}

/// All rows of a query whose single column is jsonb.
pub fn rows(sql: &str, args: &[Arg]) -> Result<Vec<Value>> {
    Spi::connect_mut(|client| {
        let table = client.update(sql, None, args).map_err(spi_error)?;
        let mut out = Vec::with_capacity(table.len());
        for row in table {
            if let Some(JsonB(v)) = row.get::<JsonB>(1).map_err(spi_error)? {
                out.push(v);
            }
        }
        Ok(out)
    })
}

/// A read-only query (SPI read-only mode). Unlike [`rows`], it does not make pgrx assign a
/// transaction id, so it can ask whether the caller's transaction has written anything.
pub fn read_row(sql: &str, args: &[Arg]) -> Result<Option<Value>> {
    Spi::connect(|client| {
        let table = client.select(sql, None, args).map_err(spi_error)?;
        for row in table {
            if let Some(JsonB(v)) = row.get::<JsonB>(1).map_err(spi_error)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    })
}

/// The first row of a query whose single column is jsonb, if any.
pub fn row(sql: &str, args: &[Arg]) -> Result<Option<Value>> {
    Ok(rows(sql, args)?.into_iter().next())
}

/// Like [`row`], deserialised.
pub fn row_as<T: DeserializeOwned>(sql: &str, args: &[Arg]) -> Result<Option<T>> {
    row(sql, args)?
        .map(|v| {
            serde_json::from_value(v)
                .map_err(|e| AuthError::internal(format!("Unexpected row shape: {e}")))
        })
        .transpose()
}

/// A statement whose result is not needed.
pub fn run(sql: &str, args: &[Arg]) -> Result<()> {
    Spi::connect_mut(|client| {
        client
            .update(sql, None, args)
            .map(|_| ())
            .map_err(spi_error)
    })
}

pub fn bytes(sql: &str, args: &[Arg]) -> Result<Option<Vec<u8>>> {
    Spi::connect_mut(|client| {
        let table = client.update(sql, None, args).map_err(spi_error)?;
        if table.is_empty() {
            return Ok(None);
        }
        table.first().get_one::<Vec<u8>>().map_err(spi_error)
    })
}

/// Serialises work on one key (a phone, a factor, a ticket, a user) until the transaction ends.
pub fn lock(kind: &str, key: &str) -> Result<()> {
    run(
        "SELECT pg_advisory_xact_lock(hashtextextended('pg_otp_auth:' || $1 || ':' || $2, 0))",
        &[text(kind), text(key)],
    )
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes from `encode(bytea, 'hex')`, which is how queries hand back hashes inside jsonb.
pub fn from_hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

pub fn jsonb(v: Value) -> Arg<'static> {
    JsonB(v).into()
}

pub fn text(s: &str) -> Arg<'_> {
    s.into()
}

pub fn opt_text(s: Option<&str>) -> Arg<'_> {
    s.into()
}
