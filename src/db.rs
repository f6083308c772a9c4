//! SPI helpers. Every query returns one jsonb column, so results land in serde types instead
//! of per-column datum juggling.
//!
//! Each statement is prepared once per backend and kept (SPI_keepplan): parsing and planning
//! the same few dozen statements on every call cost more than running them. Kept plans are
//! generic from their first execution (CURSOR_OPT_GENERIC_PLAN): left to choose, PostgreSQL
//! plans a kept statement afresh for each of its first five executions before it settles on
//! the generic plan it then keeps, and the big statements of a sign-in each cost more to plan
//! than to run, so every preparation (a new connection's first calls, and each renewal below)
//! paid for five plannings of each. The statements' parameters select no partition and no
//! partial index (those conditions are written as constants), so a custom plan is no better.
//! Kept plans are invalidated and rebuilt by PostgreSQL when the objects they use change, and
//! prepared afresh by us after a number of uses (see `REPLAN_AFTER`): PostgreSQL keeps a
//! generic plan until the next ANALYZE, so a plan made while a table was nearly empty (a new
//! install, or one analyzed when empty) would keep scanning it whole as it grows to millions of
//! rows. A fresh plan sees the table's size.

use pg_otp_auth_core::error::{AuthError, Result};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::cell::RefCell;
use std::ffi::CString;
use std::ptr::NonNull;

pub type Arg<'a> = DatumWithOid<'a>;

fn spi_error(detail: impl std::fmt::Display) -> AuthError {
    // The detail is for the server log, not for the caller.
    pgrx::warning!("pg_otp_auth: SPI call failed: {detail}");
    AuthError::internal("An internal database call failed.")
}

/// A statement prepared with SPI and kept for the life of the backend (SPI_keepplan), freed
/// when dropped.
struct Plan(NonNull<pg_sys::_SPI_plan>);

impl Drop for Plan {
    fn drop(&mut self) {
        unsafe { pg_sys::SPI_freeplan(self.0.as_ptr()) };
    }
}

impl Plan {
    /// Prepares `sql` for `args`' types, with a generic plan from its first execution.
    fn prepare(sql: &str, args: &[Arg]) -> Result<Plan> {
        let text = CString::new(sql).map_err(spi_error)?;
        let mut types: Vec<pg_sys::Oid> = args.iter().map(|a| a.oid()).collect();
        Spi::connect(|_| unsafe {
            let plan = pg_sys::SPI_prepare_cursor(
                text.as_ptr(),
                types.len() as i32,
                types.as_mut_ptr(),
                pg_sys::CURSOR_OPT_GENERIC_PLAN as i32,
            );
            let Some(plan) = NonNull::new(plan) else {
                let status = pg_sys::SPI_result;
                return Err(spi_error(format!("SPI_prepare: {status}")));
            };
            // Kept in a long-lived context, owned (and freed) by the Plan from here on.
            let kept = Plan(plan);
            match pg_sys::SPI_keepplan(kept.0.as_ptr()) {
                0 => Ok(kept),
                rc => {
                    std::mem::forget(kept);
                    Err(spi_error(format!("SPI_keepplan: {rc}")))
                }
            }
        })
    }

    /// Runs the plan with `args` and hands `read` its result rows' first column, as pgrx's
    /// SPI client runs a prepared statement: a statement that `mutating` first makes the
    /// transaction take its id, and a statement runs read-only while the transaction has none.
    fn execute<R>(
        &self,
        args: &[Arg],
        mutating: bool,
        read: impl FnOnce(&mut dyn Iterator<Item = (pg_sys::Datum, pg_sys::Oid)>) -> Result<R>,
    ) -> Result<R> {
        let mut values: Vec<pg_sys::Datum> = Vec::with_capacity(args.len());
        let mut nulls: Vec<std::ffi::c_char> = Vec::with_capacity(args.len());
        for a in args {
            match a.datum() {
                Some(d) => {
                    values.push(d.sans_lifetime());
                    nulls.push(b' ' as std::ffi::c_char);
                }
                None => {
                    values.push(pg_sys::Datum::from(0usize));
                    nulls.push(b'n' as std::ffi::c_char);
                }
            }
        }
        Spi::connect_mut(|_| unsafe {
            if mutating {
                pg_sys::GetCurrentTransactionId();
            }
            let read_only = pg_sys::GetCurrentTransactionIdIfAny() == pg_sys::InvalidTransactionId;
            pg_sys::SPI_tuptable = std::ptr::null_mut();
            let rc = pg_sys::SPI_execute_plan(
                self.0.as_ptr(),
                values.as_mut_ptr(),
                nulls.as_ptr(),
                read_only,
                0,
            );
            if rc < 0 {
                return Err(spi_error(format!("SPI_execute_plan: {rc}")));
            }
            let table = pg_sys::SPI_tuptable;
            // A statement without a result (no RETURNING) has no tuple table: no rows.
            let processed = pg_sys::SPI_processed as usize;
            if table.is_null() || processed == 0 || (*(*table).tupdesc).natts < 1 {
                return read(&mut std::iter::empty());
            }
            let desc = (*table).tupdesc;
            let type_oid = pg_sys::SPI_gettypeid(desc, 1);
            let rows = std::slice::from_raw_parts((*table).vals, processed);
            read(&mut rows.iter().filter_map(|&tuple| {
                let mut null = false;
                let datum = pg_sys::SPI_getbinval(tuple, desc, 1, &mut null);
                (!null).then_some((datum, type_oid))
            }))
        })
    }
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
    plan: Plan,
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
    f: impl FnOnce(&Plan) -> Result<R>,
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
            Plan::prepare(sql, args).map(|plan| Kept {
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

/// Hands `f` the bytes of a varlena datum (text, bytea, json), detoasted if it must be.
///
/// # Safety
/// `datum` must be a valid varlena value.
pub(crate) unsafe fn with_varlena_bytes<R>(datum: pg_sys::Datum, f: impl FnOnce(&[u8]) -> R) -> R {
    unsafe {
        let stored = datum.cast_mut_ptr::<pg_sys::varlena>();
        let detoasted = pg_sys::pg_detoast_datum_packed(stored);
        let bytes = std::slice::from_raw_parts(
            pgrx::varlena::vardata_any(detoasted).cast::<u8>(),
            pgrx::varlena::varsize_any_exhdr(detoasted),
        );
        let result = f(bytes);
        if detoasted != stored {
            pg_sys::pfree(detoasted.cast());
        }
        result
    }
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
            with_varlena_bytes(datum, f)
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
        plan.execute(args, mutating, |rows| {
            let mut out = Vec::new();
            for (datum, type_oid) in rows {
                if out.len() >= limit {
                    break;
                }
                if type_oid != pg_sys::JSONOID && type_oid != pg_sys::JSONBOID {
                    return Err(AuthError::internal(format!(
                        "A statement answered type {type_oid:?} where json was expected."
                    )));
                }
                let parsed = unsafe {
                    with_json_text(datum, type_oid, |text| serde_json::from_slice::<T>(text))
                };
                out.push(
                    parsed
                        .map_err(|e| AuthError::internal(format!("Unexpected row shape: {e}")))?,
                );
            }
            Ok(out)
        })
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
    with_plan(sql, args, true, |plan| plan.execute(args, true, |_| Ok(())))
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

/// A jsonb argument, built directly from `v` (see `jsonb`) rather than printed for `jsonb_in`
/// to parse. What jsonb refuses (a NUL character) raises an error, as `jsonb_in` did.
pub fn jsonb(v: impl serde::Serialize) -> Arg<'static> {
    let datum = crate::jsonb::to_jsonb(&v).unwrap_or_else(|e| pgrx::error!("pg_otp_auth: {e}"));
    // SAFETY: a jsonb datum in the current memory context, which outlives the statement.
    unsafe { DatumWithOid::new(datum, pg_sys::JSONBOID) }
}

pub fn text(s: &str) -> Arg<'_> {
    s.into()
}

pub fn opt_text(s: Option<&str>) -> Arg<'_> {
    s.into()
}
