//! The hourly budget's tally in shared memory, when pg_otp_auth is preloaded.
//!
//! Every send that queues a message adds one to the budget's counter rows (8 shards per 15-min
//! bucket, `outbox::BUDGET`), and every send reads them back: up to 40 rows that other sends
//! keep updating, often behind a chain of their dead versions. Preloaded, each database also
//! keeps the same counts in shared memory, summed over the shards (`core::budget::Tally`), and a
//! send reads those instead of the rows. The rows are still written: they are what a restart, a
//! promoted standby or a restored dump starts from, and what a server without preloading reads.
//!
//! - A database's tally is made from its counter rows by the first send that finds none (after
//!   a start, or when a DBA deleted counters), in that send's statement snapshot.
//! - A send adds to the tally when its transaction commits, so a send rolled back (or in a
//!   rolled-back savepoint) counts as little as its rows do. A prepared transaction's sends are
//!   added when it is prepared.
//! - Deleting or truncating counter rows drops the tally when that transaction commits; the next
//!   send makes it again from the rows. (`auth.purge_expired` deletes only counters outside
//!   every window, but the tally is made again all the same: one read.)
//!
//! As with the rows, concurrent sends may each see the others' sends only once committed, so
//! under concurrency the budget holds as closely as it does without preloading. A send that
//! commits while another backend makes the tally from rows it read before that commit may go
//! uncounted until the tally is next made.

use pg_otp_auth_core::budget::{bucket_start, Tally};
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};
use std::cell::{Cell, RefCell};

/// Databases with a tally; beyond that the least recently used one is dropped (and made again
/// from its rows by its next send).
const SLOTS: usize = 64;

#[derive(Copy, Clone, Default)]
struct Slot {
    /// The database, and its auth.rate_counters: a slot is never taken for another install of
    /// the extension in the same database, or for a database that reuses a dropped one's oid.
    dboid: u32,
    relid: u32,
    made: bool,
    used_at: u64,
    tally: Tally,
}

#[derive(Copy, Clone)]
pub struct Tallies {
    slots: [Slot; SLOTS],
    /// Counts the changes to the tallies.
    clock: u64,
    /// The clock when a tally was last dropped or a slot given to another database: a tally
    /// made from rows read before then may be out of date, and is not installed.
    forgotten_at: u64,
}

impl Default for Tallies {
    fn default() -> Self {
        Tallies {
            slots: [Slot::default(); SLOTS],
            clock: 0,
            forgotten_at: 0,
        }
    }
}

unsafe impl PGRXSharedMemory for Tallies {}

static TALLIES: PgLwLock<Tallies> = unsafe { PgLwLock::new(c"pg_otp_auth_budget") };

/// From `_PG_init` while the library is being preloaded.
pub fn init() {
    pg_shmem_init!(TALLIES);
}

/// Which tally: this database and its auth.rate_counters.
#[derive(Copy, Clone, PartialEq, Eq)]
pub(crate) struct Key {
    dboid: u32,
    relid: u32,
}

fn key() -> Option<Key> {
    crate::lookup::auth_relation(c"rate_counters").map(|relid| Key {
        dboid: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        relid: relid.to_u32(),
    })
}

impl Tallies {
    fn find(&self, k: Key) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.dboid == k.dboid && s.relid == k.relid)
    }
}

/// What a send reads for the budget: the tally's rows `(bucket start, age of its latest send,
/// sends)` at `now`, or, when there is no tally to read, when it looked (to make one with).
pub(crate) enum Reading {
    Tallied(Vec<(f64, f64, f64)>),
    FromRows(Option<(Key, u64)>),
}

pub(crate) fn read(now: f64, window: f64, width: i64) -> Reading {
    if !crate::recorder::preloaded() {
        return Reading::FromRows(None);
    }
    let Some(k) = key() else {
        return Reading::FromRows(None);
    };
    // The send counted next in this transaction goes to the same tally: no second lookup.
    register_callbacks();
    KEY.set(Some(k));
    let t = TALLIES.share();
    match t.find(k).map(|i| &t.slots[i]) {
        Some(s) if s.made => Reading::Tallied(s.tally.rows(now, window, width)),
        _ => Reading::FromRows(Some((k, t.clock))),
    }
}

/// Makes the tally from the counter rows a send read at `now` (in a snapshot taken after it
/// looked at the clock `seen`), unless another send made it first or a tally was dropped since.
pub(crate) fn make(from: Option<(Key, u64)>, rows: &[(f64, f64, f64)], now: f64) {
    let Some((k, seen)) = from else {
        return;
    };
    let mut t = TALLIES.exclusive();
    if t.forgotten_at > seen {
        return;
    }
    t.clock += 1;
    let clock = t.clock;
    let i = match t.find(k) {
        Some(i) if t.slots[i].made => return,
        Some(i) => i,
        None => {
            let i = t
                .slots
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| if s.dboid == 0 { 0 } else { s.used_at })
                .map(|(i, _)| i)
                .expect("there are slots");
            if t.slots[i].dboid != 0 {
                t.forgotten_at = clock;
            }
            t.slots[i] = Slot {
                dboid: k.dboid,
                relid: k.relid,
                ..Slot::default()
            };
            i
        }
    };
    let s = &mut t.slots[i];
    s.tally = Tally::from_rows(rows, now);
    s.made = true;
    s.used_at = clock;
}

thread_local! {
    /// This transaction's sends not yet in the tally: (savepoint level, bucket start, when).
    static PENDING: RefCell<Vec<(i32, i64, f64)>> = const { RefCell::new(Vec::new()) };
    /// This transaction deleted counter rows: drop the tally when it commits.
    static DROP_AT_COMMIT: Cell<Option<Key>> = const { Cell::new(None) };
    /// The tally this transaction's sends go to, found when the budget was read or the first
    /// send counted (the catalogs cannot be read once the transaction has committed).
    static KEY: Cell<Option<Key>> = const { Cell::new(None) };
    static CALLBACKS_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

fn register_callbacks() {
    if !CALLBACKS_REGISTERED.get() {
        unsafe {
            pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
        }
        CALLBACKS_REGISTERED.set(true);
    }
}

/// Counts a send of this transaction, made at `at` (its `now()`), when the transaction commits.
pub fn count_at_commit(at: f64, width: i64) {
    if !crate::recorder::preloaded() {
        return;
    }
    if KEY.get().is_none() {
        KEY.set(key());
    }
    register_callbacks();
    let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    PENDING.with_borrow_mut(|p| p.push((level, bucket_start(at, width), at)));
}

/// The statement trigger on auth.rate_counters for DELETE and TRUNCATE (declared in api.sql):
/// the tally no longer matches the rows once the transaction commits.
#[pg_trigger(sql = false)]
fn rate_counters_deleted<'a>(
    _trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgHeapTupleError> {
    if crate::recorder::preloaded() {
        if let Some(k) = key() {
            register_callbacks();
            DROP_AT_COMMIT.set(Some(k));
        }
    }
    Ok(None)
}

fn apply_pending() {
    let pending = PENDING.with_borrow_mut(std::mem::take);
    let dropped = DROP_AT_COMMIT.take();
    let counted = KEY.take();
    if pending.is_empty() && dropped.is_none() {
        return;
    }
    let Some(k) = dropped.or(counted) else {
        return;
    };
    let mut t = TALLIES.exclusive();
    t.clock += 1;
    let clock = t.clock;
    let Some(i) = t.find(k) else { return };
    if dropped.is_some() {
        t.forgotten_at = clock;
        t.slots[i].made = false;
        t.slots[i].tally = Tally::default();
        return;
    }
    let s = &mut t.slots[i];
    if s.made {
        for (_, start, at) in pending {
            s.tally.add(start, at, 1);
        }
        s.used_at = clock;
    }
}

/// Whether this transaction has nothing for the tally, as most have not: the callbacks then
/// return at once, without pgrx's guard (a `sigsetjmp` per transaction event).
fn idle() -> bool {
    PENDING.with_borrow(Vec::is_empty) && DROP_AT_COMMIT.get().is_none() && KEY.get().is_none()
}

unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, arg: *mut std::ffi::c_void) {
    if !idle() {
        unsafe { on_xact_guarded(event, arg) }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact_guarded(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_PREPARE => {
            apply_pending()
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT => {
            PENDING.with_borrow_mut(Vec::clear);
            DROP_AT_COMMIT.set(None);
            KEY.set(None);
        }
        _ => {}
    }
}

unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    my: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    arg: *mut std::ffi::c_void,
) {
    if !PENDING.with_borrow(Vec::is_empty) {
        unsafe { on_subxact_guarded(event, my, parent, arg) }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact_guarded(
    event: pg_sys::SubXactEvent::Type,
    _my: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    match event {
        pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB => {
            PENDING.with_borrow_mut(|p| p.retain(|(l, _, _)| *l < level))
        }
        pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB => PENDING.with_borrow_mut(|p| {
            for e in p.iter_mut().filter(|e| e.0 >= level) {
                e.0 = level - 1;
            }
        }),
        _ => {}
    }
}
