//! Reads by index without SQL, for the reads every code request and every code check makes.
//!
//! Admitting a send reads the phone's user, its recent sends and the address's rate counters;
//! judging a code reads the phone's live code and the address's failures, and a sign-in whether
//! the user has a verified TOTP factor: a few rows found by key. As SQL statements, most of
//! their cost was the executor's start-up (a node, an expression and a tuple slot per subquery
//! and per column) and the plan cache's checks, not the rows. Each read here is one index scan
//! (genam's `systable_beginscan_ordered`, the way PostgreSQL reads its catalogs and Citus its
//! metadata tables) that copies out the columns it needs.
//!
//! A read sees what a statement in its place would: it runs in [`statement`], which advances
//! the command counter and takes a new snapshot as SPI does for each statement (a fresh one in
//! READ COMMITTED, so rows committed by whoever held the phone's lock before are seen; the
//! transaction's in REPEATABLE READ and SERIALIZABLE), and it locks the table and the index
//! in ACCESS SHARE mode until the transaction ends, as the executor does. Each row found is
//! checked against every condition of the read, not only the index's.

use pg_otp_auth_core::error::{AuthError, Result};
use pgrx::pg_sys;
use rustc_hash::FxHashMap;
use std::cell::{Cell, RefCell};
use std::ffi::CStr;

/// A condition of a read on one column of its index, which the index evaluates.
pub(crate) enum Cond<'a> {
    /// Text equal to this (in the index column's collation).
    TextEq(&'a str),
    /// A timestamptz later than this (microseconds since 2000-01-01, as PostgreSQL keeps it).
    After(i64),
    /// A uuid equal to this.
    UuidEq(uuid::Uuid),
}

/// Which end of the index a read starts from.
#[derive(Clone, Copy)]
pub(crate) enum Order {
    Ascending,
    Descending,
}

/// Runs `f` as one statement would run: with the command counter advanced (the transaction's
/// own earlier writes visible) and a new snapshot as the active one.
pub(crate) fn statement<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    unsafe {
        pg_sys::CommandCounterIncrement();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        pg_sys::UpdateActiveSnapshotCommandId();
    }
    let result = f();
    unsafe { pg_sys::PopActiveSnapshot() };
    result
}

/// A row found by [`scan`]: its columns are read by their position in the scan's `columns`.
pub(crate) struct Row {
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
    attnums: Vec<i32>,
}

impl Row {
    fn datum(&self, column: usize) -> Option<pg_sys::Datum> {
        let mut null = false;
        let datum =
            unsafe { pg_sys::heap_getattr(self.tuple, self.attnums[column], self.desc, &mut null) };
        (!null).then_some(datum)
    }

    /// The bytes of a varlena column (text, bytea).
    fn bytes_of<R>(&self, column: usize, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let datum = self.datum(column)?;
        Some(unsafe { crate::db::with_varlena_bytes(datum, f) })
    }

    pub fn text(&self, column: usize) -> Option<String> {
        self.bytes_of(column, |b| String::from_utf8_lossy(b).into_owned())
    }

    pub fn bytes(&self, column: usize) -> Option<Vec<u8>> {
        self.bytes_of(column, <[u8]>::to_vec)
    }

    /// A uuid column.
    pub fn uuid_value(&self, column: usize) -> Option<uuid::Uuid> {
        let datum = self.datum(column)?;
        Some(uuid::Uuid::from_bytes(unsafe {
            *datum.cast_mut_ptr::<[u8; 16]>()
        }))
    }

    /// A uuid column in its canonical text form.
    pub fn uuid(&self, column: usize) -> Option<String> {
        self.uuid_value(column).map(|u| u.hyphenated().to_string())
    }

    /// A timestamptz column, in microseconds since 2000-01-01.
    pub fn timestamp(&self, column: usize) -> Option<i64> {
        self.datum(column).map(|d| d.value() as i64)
    }

    pub fn boolean(&self, column: usize) -> Option<bool> {
        self.datum(column).map(|d| d.value() != 0)
    }

    /// An integer or smallint column.
    pub fn int(&self, column: usize) -> Option<i64> {
        self.datum(column).map(|d| d.value() as i32 as i64)
    }
}

/// A user id handed to a read ([`Cond::UuidEq`]), from its text.
pub(crate) fn user_uuid(id: &str) -> Result<uuid::Uuid> {
    uuid::Uuid::parse_str(id).map_err(|_| AuthError::internal("A user id is malformed."))
}

thread_local! {
    /// The oids of auth's relations by name: forgotten whenever pg_class changes (a syscache
    /// callback), as PostgreSQL forgets its own cached catalog rows.
    static OIDS: RefCell<FxHashMap<&'static CStr, pg_sys::Oid>> = RefCell::default();
    static OIDS_CALLBACK: Cell<bool> = const { Cell::new(false) };
    /// Attribute numbers by relation and column (the name's address), each checked against the
    /// relation's tuple descriptor where it is used.
    static ATTNUMS: RefCell<FxHashMap<(pg_sys::Oid, usize), i32>> = RefCell::default();
}

unsafe extern "C-unwind" fn forget_oids(_: pg_sys::Datum, _: std::ffi::c_int, _: u32) {
    OIDS.with(|o| o.borrow_mut().clear());
}

/// The oid of relation `name` in schema auth, if there is one: from the cache above, or the
/// catalogs.
pub(crate) fn auth_relation(name: &'static CStr) -> Option<pg_sys::Oid> {
    if let Some(oid) = OIDS.with(|o| o.borrow().get(name).copied()) {
        return Some(oid);
    }
    if !OIDS_CALLBACK.get() {
        unsafe {
            pg_sys::CacheRegisterSyscacheCallback(
                pg_sys::SysCacheIdentifier::RELNAMENSP as i32,
                Some(forget_oids),
                pg_sys::Datum::from(0),
            )
        };
        OIDS_CALLBACK.set(true);
    }
    let oid = unsafe {
        let nsp = pg_sys::get_namespace_oid(c"auth".as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            return None;
        }
        pg_sys::get_relname_relid(name.as_ptr(), nsp)
    };
    let oid = (oid != pg_sys::InvalidOid).then_some(oid)?;
    OIDS.with(|o| o.borrow_mut().insert(name, oid));
    Some(oid)
}

fn relation(name: &'static CStr) -> Result<pg_sys::Oid> {
    auth_relation(name).ok_or_else(|| {
        AuthError::internal(format!(
            "The relation auth.{} is missing.",
            name.to_string_lossy()
        ))
    })
}

/// Whether attribute `attnum` of `desc` is the live column `column`.
fn attribute_is(desc: pg_sys::TupleDesc, attnum: i32, column: &CStr) -> bool {
    let desc = unsafe { pgrx::PgTupleDesc::from_pg_unchecked(desc) };
    attnum >= 1
        && desc.get(attnum as usize - 1).is_some_and(|att| {
            !att.attisdropped && unsafe { CStr::from_ptr(att.attname.data.as_ptr()) } == column
        })
}

/// The attribute number of `column` in `desc` (of relation `relid`).
fn attnum(relid: pg_sys::Oid, desc: pg_sys::TupleDesc, column: &'static CStr) -> Result<i32> {
    let key = (relid, column.as_ptr() as usize);
    if let Some(n) = ATTNUMS.with(|a| a.borrow().get(&key).copied()) {
        if attribute_is(desc, n, column) {
            return Ok(n);
        }
    }
    let natts = unsafe { (*desc).natts };
    // Not cached, or the column moved (a dropped and re-added column): found by name.
    let n = (1..=natts)
        .find(|&n| attribute_is(desc, n, column))
        .ok_or_else(|| {
            AuthError::internal(format!(
                "The column {} is missing.",
                column.to_string_lossy()
            ))
        })?;
    ATTNUMS.with(|a| a.borrow_mut().insert(key, n));
    Ok(n)
}

/// Reads the rows of auth.`table` that index `index` finds for `conds` (each on a column of the
/// index, by name), in the index's `order`, and hands each to `each` until it answers false.
/// `columns` names the columns `each` reads, by position. Must run inside [`statement`].
pub(crate) fn scan(
    table: &'static CStr,
    index: &'static CStr,
    conds: &[(&'static CStr, Cond)],
    order: Order,
    columns: &[&'static CStr],
    mut each: impl FnMut(&Row) -> bool,
) -> Result<()> {
    let relid = relation(table)?;
    let indexid = relation(index)?;
    unsafe {
        let heap = pg_sys::table_open(relid, pg_sys::AccessShareLock as _);
        let irel = pg_sys::index_open(indexid, pg_sys::AccessShareLock as _);
        let desc = (*heap).rd_att;
        let prepared = prepare(relid, heap, irel, conds, columns);
        let (mut keys, attnums) = match prepared {
            Ok(p) => p,
            Err(e) => {
                pg_sys::index_close(irel, pg_sys::NoLock as _);
                pg_sys::table_close(heap, pg_sys::NoLock as _);
                return Err(e);
            }
        };
        let scan = pg_sys::systable_beginscan_ordered(
            heap,
            irel,
            pg_sys::GetActiveSnapshot(),
            keys.len() as i32,
            keys.as_mut_ptr(),
        );
        let direction = match order {
            Order::Ascending => pg_sys::ScanDirection::ForwardScanDirection,
            Order::Descending => pg_sys::ScanDirection::BackwardScanDirection,
        };
        let mut row = Row {
            tuple: std::ptr::null_mut(),
            desc,
            attnums,
        };
        loop {
            let tuple = pg_sys::systable_getnext_ordered(scan, direction);
            if tuple.is_null() {
                break;
            }
            row.tuple = tuple;
            if !each(&row) {
                break;
            }
        }
        pg_sys::systable_endscan_ordered(scan);
        pg_sys::index_close(irel, pg_sys::NoLock as _);
        pg_sys::table_close(heap, pg_sys::NoLock as _);
    }
    Ok(())
}

/// The scan keys of `conds` and the attribute numbers of `columns` in `heap`.
unsafe fn prepare(
    relid: pg_sys::Oid,
    heap: pg_sys::Relation,
    irel: pg_sys::Relation,
    conds: &[(&'static CStr, Cond)],
    columns: &[&'static CStr],
) -> Result<(Vec<pg_sys::ScanKeyData>, Vec<i32>)> {
    let desc = unsafe { (*heap).rd_att };
    let mut keys = Vec::with_capacity(conds.len());
    for (column, cond) in conds {
        let attno = attnum(relid, desc, column)?;
        // Compared in the index column's collation, as the index is ordered.
        let collation = unsafe { index_collation(irel, attno) }.ok_or_else(|| {
            AuthError::internal(format!(
                "The column {} is not in the index.",
                column.to_string_lossy()
            ))
        })?;
        let (strategy, procedure, argument, collation) = match cond {
            Cond::TextEq(s) => (
                pg_sys::BTEqualStrategyNumber,
                pg_sys::F_TEXTEQ,
                pg_sys::Datum::from(unsafe {
                    pg_sys::cstring_to_text_with_len(s.as_ptr().cast(), s.len() as i32)
                }),
                collation,
            ),
            Cond::After(t) => (
                pg_sys::BTGreaterStrategyNumber,
                pg_sys::F_TIMESTAMPTZ_GT,
                pg_sys::Datum::from(*t),
                pg_sys::InvalidOid,
            ),
            Cond::UuidEq(u) => (
                pg_sys::BTEqualStrategyNumber,
                pg_sys::F_UUID_EQ,
                // By reference: a copy that lives as long as the statement's memory.
                pg_sys::Datum::from(unsafe {
                    let copy = pg_sys::palloc(16).cast::<u8>();
                    copy.copy_from_nonoverlapping(u.as_bytes().as_ptr(), 16);
                    copy
                }),
                pg_sys::InvalidOid,
            ),
        };
        let mut key: pg_sys::ScanKeyData = unsafe { std::mem::zeroed() };
        unsafe {
            pg_sys::ScanKeyEntryInitialize(
                &mut key,
                0,
                attno as pg_sys::AttrNumber,
                strategy as pg_sys::StrategyNumber,
                pg_sys::InvalidOid,
                collation,
                pg_sys::Oid::from(procedure),
                argument,
            )
        };
        keys.push(key);
    }
    let attnums = columns
        .iter()
        .map(|c| attnum(relid, desc, c))
        .collect::<Result<Vec<_>>>()?;
    Ok((keys, attnums))
}

/// The collation of the key column of `irel` that indexes heap attribute `attno`.
unsafe fn index_collation(irel: pg_sys::Relation, attno: i32) -> Option<pg_sys::Oid> {
    unsafe {
        let index = (*irel).rd_index;
        let nkeys = (*index).indnkeyatts as usize;
        let indkey = (*index).indkey.values.as_slice(nkeys);
        let position = indkey.iter().position(|&a| a as i32 == attno)?;
        Some(*(*irel).rd_indcollation.add(position))
    }
}

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const UNIX_EPOCH_OFFSET: i64 = (pg_sys::POSTGRES_EPOCH_JDATE - pg_sys::UNIX_EPOCH_JDATE) as i64
    * pg_sys::SECS_PER_DAY as i64
    * 1_000_000;

/// `ts` (microseconds since 2000-01-01) as seconds since the Unix epoch, as
/// `date_part('epoch', ts)` computes it.
pub(crate) fn epoch_seconds(ts: i64) -> f64 {
    (ts + UNIX_EPOCH_OFFSET) as f64 / 1e6
}

/// The seconds of a difference of two timestamptz values (microseconds), as
/// `date_part('epoch', a - b)` computes them: the difference is an interval of whole days and
/// the rest (`justify_hours`).
pub(crate) fn interval_seconds(micros: i64) -> f64 {
    const DAY: i64 = 86_400 * 1_000_000;
    let days = micros / DAY;
    (micros - days * DAY) as f64 / 1e6 + (days * 86_400) as f64
}

/// `now()`: the transaction's start, in microseconds since 2000-01-01.
pub(crate) fn now() -> i64 {
    unsafe { pg_sys::GetCurrentTransactionStartTimestamp() }
}

/// `date_part('epoch', now())`: the transaction's start, in seconds since the Unix epoch.
pub(crate) fn now_seconds() -> f64 {
    epoch_seconds(now())
}

/// `clock_timestamp()`, in microseconds since 2000-01-01.
pub(crate) fn clock() -> i64 {
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// `host(addr::inet)`: the address's canonical text, as counter keys are written.
pub(crate) fn host(addr: &str) -> Result<String> {
    let text = std::ffi::CString::new(addr)
        .map_err(|_| AuthError::internal("The client address is malformed."))?;
    unsafe {
        let inet = pgrx::direct_function_call_as_datum(
            pg_sys::inet_in,
            &[Some(pg_sys::Datum::from(text.as_ptr()))],
        )
        .ok_or_else(|| AuthError::internal("The client address is malformed."))?;
        let host: Option<String> = pgrx::direct_function_call(pg_sys::network_host, &[Some(inet)]);
        host.ok_or_else(|| AuthError::internal("The client address is malformed."))
    }
}
