//! SPI helpers. Every query returns one jsonb column, so results land in serde types instead
//! of per-column datum juggling.
//!
//! Each statement is prepared once per backend and kept (SPI_keepplan): parsing and planning
//! the same few dozen statements on every call cost more than running them. Kept plans are
//! invalidated and rebuilt by PostgreSQL when the objects they use change, and prepared afresh
//! by us after a number of uses (see `REPLAN_AFTER`): PostgreSQL switches a kept statement to
//! one generic plan after five executions and keeps it until the next ANALYZE, so a plan made
//! while a table was nearly empty (a new install, or one analyzed when empty) would keep
//! scanning it whole as it grows to millions of rows. A fresh plan sees the table's size.

use pg_otp_auth_core::error::{AuthError, Result};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::PgOid;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::JsonB;
use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::cell::RefCell;

pub type Arg<'a> = DatumWithOid<'a>;

fn spi_error(e: pgrx::spi::SpiError) -> AuthError {
    // The detail is for the server log, not for the caller.
    pgrx::warning!("pg_otp_auth: SPI call failed: {e}");
    AuthError::internal("An internal database call failed.")
}

/// Executions of a kept plan before it is prepared afresh: 16 at first, four times more after
/// each renewal (tables grow fastest, relative to their size, when they are new), then at most
/// `REPLAN_AFTER`.
const FIRST_REPLAN: u32 = 16;
const REPLAN_AFTER: u32 = 1024;

/// A kept plan of a statement, for its arguments' type oids and mode (may it write).
struct Kept {
    oids: Vec<u32>,
    mutating: bool,
    plan: OwnedPreparedStatement,
    uses: u32,
    renew_at: u32,
}

thread_local! {
    /// Kept plans by statement text. Looked up by the text without copying it (statements run
    /// to a few kilobytes), with a hash cheaper than SipHash over that much text.
    static PLANS: RefCell<FxHashMap<String, Vec<Kept>>> = RefCell::new(FxHashMap::default());
}

/// Runs `f` with the kept plan of `sql` for `args`' types, preparing it on first use.
fn with_plan<R>(
    sql: &str,
    args: &[Arg],
    mutating: bool,
    f: impl FnOnce(&OwnedPreparedStatement) -> Result<R>,
) -> Result<R> {
    // Taken out while it runs (a statement may call back into this library) and put back after.
    let (text, mut kept) = PLANS
        .with(|p| p.borrow_mut().remove_entry(sql))
        .unwrap_or_else(|| (sql.to_string(), Vec::new()));
    let found = kept.iter().position(|k| {
        k.mutating == mutating
            && k.oids.len() == args.len()
            && k.oids.iter().zip(args).all(|(o, a)| *o == a.oid().to_u32())
    });
    let plan = match found.map(|i| kept.swap_remove(i)) {
        Some(k) if k.uses < k.renew_at => Ok(k),
        stale => {
            let renew_at = stale.map_or(FIRST_REPLAN, |k| (k.renew_at * 4).min(REPLAN_AFTER));
            let types: Vec<PgOid> = args.iter().map(|a| PgOid::from(a.oid())).collect();
            Spi::connect(|client| {
                if mutating {
                    client.prepare_mut(sql, &types)
                } else {
                    client.prepare(sql, &types)
                }
                .map(|p| p.keep())
            })
            .map_err(spi_error)
            .map(|plan| Kept {
                oids: args.iter().map(|a| a.oid().to_u32()).collect(),
                mutating,
                plan,
                uses: 0,
                renew_at,
            })
        }
    };
    let result = plan.and_then(|k| {
        // Put back before the result is looked at: an error must not lose the plan.
        let result = f(&k.plan);
        kept.push(Kept {
            uses: k.uses + 1,
            ..k
        });
        result
    });
    PLANS.with(|p| p.borrow_mut().insert(text, kept));
    result
}

/// Hands `f` the text of a json or jsonb datum: json's own bytes, jsonb's output form.
///
/// # Safety
/// `datum` must be a valid json (`type_oid` JSONOID) or jsonb value.
unsafe fn with_json_text<R>(
    datum: pg_sys::Datum,
    type_oid: pg_sys::Oid,
    f: impl FnOnce(&[u8]) -> R,
) -> R {
    unsafe {
        if type_oid == pg_sys::JSONOID {
            let stored = datum.cast_mut_ptr::<pg_sys::varlena>();
            let detoasted = pg_sys::pg_detoast_datum_packed(stored);
            let text = std::slice::from_raw_parts(
                pgrx::varlena::vardata_any(detoasted).cast::<u8>(),
                pgrx::varlena::varsize_any_exhdr(detoasted),
            );
            let result = f(text);
            if detoasted != stored {
                pg_sys::pfree(detoasted.cast());
            }
            result
        } else {
            // jsonb_out never answers NULL for a value.
            let text =
                pgrx::direct_function_call::<&std::ffi::CStr>(pg_sys::jsonb_out, &[Some(datum)])
                    .expect("jsonb_out answered NULL");
            let result = f(text.to_bytes());
            pg_sys::pfree(text.as_ptr().cast_mut().cast());
            result
        }
    }
}

/// The rows of a statement whose single column is json or jsonb (NULLs skipped; at most
/// `limit`), each parsed straight from its text into `T`. json results skip jsonb's binary
/// form both ways (built, then printed), which the hot statements' results do not need.
fn query<T: DeserializeOwned>(
    sql: &str,
    args: &[Arg],
    mutating: bool,
    limit: usize,
) -> Result<Vec<T>> {
    with_plan(sql, args, mutating, |plan| {
        let read = |mut table: pgrx::spi::SpiTupleTable| -> Result<Vec<T>> {
            let mut out = Vec::with_capacity(table.len().min(limit));
            // A statement without a result (no RETURNING) has no tuple table: no rows.
            let Ok(type_oid) = table.column_type_oid(1).map(|t| t.value()) else {
                return Ok(out);
            };
            if type_oid != pg_sys::JSONOID && type_oid != pg_sys::JSONBOID {
                return Err(AuthError::internal(format!(
                    "A statement answered type {type_oid:?} where json was expected."
                )));
            }
            while out.len() < limit && table.next().is_some() {
                let Some(datum) = table.get_datum_by_ordinal(1).map_err(spi_error)? else {
                    continue;
                };
                let parsed = unsafe {
                    with_json_text(datum, type_oid, |text| serde_json::from_slice::<T>(text))
                };
                out.push(
                    parsed
                        .map_err(|e| AuthError::internal(format!("Unexpected row shape: {e}")))?,
                );
            }
            Ok(out)
        };
        if mutating {
            Spi::connect_mut(|client| read(client.update(plan, None, args).map_err(spi_error)?))
        } else {
            Spi::connect(|client| read(client.select(plan, None, args).map_err(spi_error)?))
        }
    })
}

/// All rows of a query whose single column is json or jsonb.
pub fn rows(sql: &str, args: &[Arg]) -> Result<Vec<Value>> {
    query(sql, args, true, usize::MAX)
}

/// A read-only query (SPI read-only mode). Unlike [`rows`], it does not make pgrx assign a
/// transaction id, so it can ask whether the caller's transaction has written anything.
pub fn read_row(sql: &str, args: &[Arg]) -> Result<Option<Value>> {
    Ok(query(sql, args, false, 1)?.pop())
}

/// The first row of a query whose single column is json or jsonb, if any.
pub fn row(sql: &str, args: &[Arg]) -> Result<Option<Value>> {
    row_as(sql, args)
}

/// Like [`row`], deserialised.
pub fn row_as<T: DeserializeOwned>(sql: &str, args: &[Arg]) -> Result<Option<T>> {
    Ok(query(sql, args, true, 1)?.pop())
}

/// A statement whose result is not needed.
pub fn run(sql: &str, args: &[Arg]) -> Result<()> {
    with_plan(sql, args, true, |plan| {
        Spi::connect_mut(|client| {
            client
                .update(plan, None, args)
                .map(|_| ())
                .map_err(spi_error)
        })
    })
}

/// PostgreSQL's own SQL-callable functions, as the fmgr pointers DirectFunctionCall takes (pgrx
/// binds them only as Rust functions).
mod fmgr {
    use pgrx::pg_sys::{Datum, FunctionCallInfo};
    unsafe extern "C-unwind" {
        pub fn hashtextextended(fcinfo: FunctionCallInfo) -> Datum;
        pub fn pg_advisory_xact_lock_int8(fcinfo: FunctionCallInfo) -> Datum;
    }
}

/// Serialises work on one key (a phone, a factor, a ticket, a user) until the transaction ends:
/// `pg_advisory_xact_lock(hashtextextended('pg_otp_auth:<kind>:<key>', 0))`, the same lock a SQL
/// caller takes with that expression, called directly rather than through a statement.
pub fn lock(kind: &str, key: &str) -> Result<()> {
    let name = format!("pg_otp_auth:{kind}:{key}");
    unsafe {
        let text = pg_sys::cstring_to_text_with_len(name.as_ptr().cast(), name.len() as i32);
        let hash = pg_sys::DirectFunctionCall2Coll(
            Some(fmgr::hashtextextended),
            pg_sys::DEFAULT_COLLATION_OID,
            pg_sys::Datum::from(text),
            pg_sys::Datum::from(0i64),
        );
        pg_sys::pfree(text.cast());
        pg_sys::DirectFunctionCall1Coll(
            Some(fmgr::pg_advisory_xact_lock_int8),
            pg_sys::InvalidOid,
            hash,
        );
    }
    Ok(())
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
