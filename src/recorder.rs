//! The attempt recorder, when pg_otp_auth is in `shared_preload_libraries`.
//!
//! A wrong guess must be committed before its verdict is revealed (see `autonomous`). Starting a
//! process per guess costs a postmaster fork and a backend start-up each, serialised through the
//! postmaster. Instead, one long-lived background worker per database takes the records of every
//! backend of that database through shared memory and commits them together: several callers'
//! records in one transaction, so a wrong guess costs about a share of one commit. Each caller
//! waits on its latch until the recorder says its record is committed, or failed.
//!
//! A database's recorder is started by the first caller that needs one and exits after a while
//! without work. Until it runs, and whenever the queue is full or the library was not preloaded,
//! `autonomous` falls back to a dynamic worker per record; either way a record that cannot be
//! committed fails the call closed.

use crate::autonomous::Action;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const SLOTS: usize = 128;
const PAYLOAD: usize = 128;
const RECORDERS: usize = 16;
/// How long a caller waits for its record before failing closed.
const WAIT: Duration = Duration::from_secs(10);
/// A recorder with nothing to do for this long exits, giving its worker slot back (and the
/// database: DROP DATABASE without FORCE waits only 5 s for other sessions to leave).
const IDLE_EXIT: Duration = Duration::from_secs(10);
/// The least time between two of the recorder's wake-ups of the dispatcher (it adds at most this
/// to a message's commit-to-provider latency).
const NOTIFY_GAP: Duration = Duration::from_millis(5);
/// A recorder that was asked for but has not come up for this long may be asked for again.
const START_TIMEOUT_SECS: i64 = 10;

#[derive(Copy, Clone, PartialEq, Eq, Debug)]
#[repr(u8)]
enum State {
    Free,
    Pending,
    Taken,
    Done,
    Failed,
}

#[derive(Copy, Clone)]
struct Slot {
    state: State,
    /// The caller stopped waiting (timeout or cancel): whoever finishes the slot frees it.
    abandoned: bool,
    dboid: u32,
    /// The waiting caller's PGPROC, whose latch is set when the slot is finished.
    waiter: usize,
    len: u8,
    payload: [u8; PAYLOAD],
}

#[derive(Copy, Clone)]
struct Recorder {
    dboid: u32,
    /// The recorder's PGPROC once it runs; 0 while it is starting.
    proc_: usize,
    /// When it was asked for (seconds since the epoch); 0 for an unused entry.
    requested_at: i64,
}

#[derive(Copy, Clone)]
pub struct Queue {
    recorders: [Recorder; RECORDERS],
    slots: [Slot; SLOTS],
    /// Databases whose outbox gained rows since their recorder last sent NOTIFY (0: unused).
    wake_dispatcher: [u32; RECORDERS],
}

unsafe impl PGRXSharedMemory for Queue {}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            recorders: [Recorder {
                dboid: 0,
                proc_: 0,
                requested_at: 0,
            }; RECORDERS],
            slots: [Slot {
                state: State::Free,
                abandoned: false,
                dboid: 0,
                waiter: 0,
                len: 0,
                payload: [0; PAYLOAD],
            }; SLOTS],
            wake_dispatcher: [0; RECORDERS],
        }
    }
}

static QUEUE: PgLwLock<Queue> = unsafe { PgLwLock::new(c"pg_otp_auth_recorder") };
/// Set in the postmaster when the library is preloaded; backends inherit it.
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// From `_PG_init`: sets up the queue when the library is being preloaded.
pub fn init() {
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        pg_shmem_init!(QUEUE);
        PRELOADED.store(true, Ordering::Relaxed);
    }
}

pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

unsafe fn set_latch_of(proc_: usize) {
    if proc_ != 0 {
        unsafe { pg_sys::SetLatch(&raw mut (*(proc_ as *mut pg_sys::PGPROC)).procLatch) };
    }
}

fn my_proc() -> usize {
    unsafe { pg_sys::MyProc as usize }
}

fn my_database() -> u32 {
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

/// Marks the slot abandoned if the wait ends without reaching its end (an error or a cancel
/// unwinds through here), so that the recorder frees it when it finishes.
struct Waiting(usize);

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut q = QUEUE.exclusive();
        let s = &mut q.slots[self.0];
        if matches!(s.state, State::Done | State::Failed) {
            s.state = State::Free;
        } else {
            s.abandoned = true;
        }
    }
}

/// Hands `payload` (an encoded [`Action`]) to this database's recorder and waits for its
/// commit. `None`: no recorder can take it now (use the fallback); `Some(committed)` otherwise.
pub fn submit(payload: &str) -> Option<bool> {
    if !preloaded() || payload.len() > PAYLOAD {
        return None;
    }
    let db = my_database();
    let (slot, recorder_proc) = {
        let mut q = QUEUE.exclusive();
        let Some(recorder_proc) = running_recorder(&q, db) else {
            request_recorder(&mut q, db);
            return None;
        };
        let i = q.slots.iter().position(|s| s.state == State::Free)?;
        let mut bytes = [0u8; PAYLOAD];
        bytes[..payload.len()].copy_from_slice(payload.as_bytes());
        q.slots[i] = Slot {
            state: State::Pending,
            abandoned: false,
            dboid: db,
            waiter: my_proc(),
            len: payload.len() as u8,
            payload: bytes,
        };
        unsafe { set_latch_of(recorder_proc) };
        (i, recorder_proc)
    };
    let waiting = Waiting(slot);
    let deadline = Instant::now() + WAIT;
    loop {
        {
            let mut q = QUEUE.exclusive();
            let recorder_gone = !q
                .recorders
                .iter()
                .any(|r| r.dboid == db && r.proc_ == recorder_proc);
            match q.slots[slot].state {
                State::Done => return Some(true),
                State::Failed => return Some(false),
                // The recorder exited before taking it: nobody has it, so it can go elsewhere.
                State::Pending if recorder_gone => {
                    q.slots[slot].state = State::Free;
                    std::mem::forget(waiting);
                    return None;
                }
                _ if Instant::now() >= deadline => {
                    drop(q);
                    drop(waiting);
                    return Some(false);
                }
                _ => {}
            }
        }
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                100,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        pgrx::check_for_interrupts!();
    }
}

/// `db`'s entry in the recorder table (asked for or running), if any.
fn entry_of(q: &Queue, db: u32) -> Option<usize> {
    q.recorders
        .iter()
        .position(|r| r.dboid == db && r.requested_at != 0)
}

/// The running recorder of `db`, if any.
fn running_recorder(q: &Queue, db: u32) -> Option<usize> {
    entry_of(q, db)
        .map(|i| q.recorders[i].proc_)
        .filter(|p| *p != 0)
}

/// Whether `db` has a running recorder (to which the dispatcher's wake-up can be handed).
pub fn running_here() -> bool {
    preloaded() && running_recorder(&QUEUE.share(), my_database()).is_some()
}

/// Starts this database's recorder unless it runs or was asked for recently.
pub fn ensure_running() {
    if !preloaded() {
        return;
    }
    let db = my_database();
    if running_recorder(&QUEUE.share(), db).is_some() {
        return;
    }
    request_recorder(&mut QUEUE.exclusive(), db);
}

/// After a commit that queued messages: the recorder of this database sends one NOTIFY for all
/// the commits since its last (see `wakeup`). Called once the commit is visible, so the
/// dispatcher it wakes finds the rows.
pub fn wake_dispatcher_after_commit() {
    let db = my_database();
    let mut q = QUEUE.exclusive();
    // A wake-up already pending (held back by NOTIFY_GAP, say) covers this commit too, and
    // whoever queued it has set the recorder's latch: no signal per commit.
    let pending = q.wake_dispatcher.contains(&db);
    if !pending {
        if let Some(free) = q.wake_dispatcher.iter().position(|d| *d == 0) {
            q.wake_dispatcher[free] = db;
        }
    }
    match running_recorder(&q, db) {
        Some(recorder) if !pending => unsafe { set_latch_of(recorder) },
        Some(_) => {}
        // It exited since the commit began: a new one takes the wake-up over when it starts.
        None => request_recorder(&mut q, db),
    }
}

/// Whether `db` has a wake-up to send.
fn wake_up_pending(db: u32) -> bool {
    QUEUE.share().wake_dispatcher.contains(&db)
}

/// Takes `db`'s pending wake-up, if any.
fn take_wake_up(db: u32) -> bool {
    let mut q = QUEUE.exclusive();
    match q.wake_dispatcher.iter().position(|d| *d == db) {
        Some(i) => {
            q.wake_dispatcher[i] = 0;
            true
        }
        None => false,
    }
}

/// Asks for a recorder for `db` unless one was asked for recently; the record at hand goes to
/// the fallback meanwhile.
fn request_recorder(q: &mut Queue, db: u32) {
    let now = pg_otp_auth_core::clock::unix_seconds();
    let entry = match entry_of(q, db) {
        Some(i) if now - q.recorders[i].requested_at < START_TIMEOUT_SECS => return,
        Some(i) => i,
        None => match q.recorders.iter().position(|r| r.requested_at == 0) {
            Some(i) => i,
            None => return,
        },
    };
    let started = BackgroundWorkerBuilder::new("pg_otp_auth attempt recorder")
        .set_type("pg_otp_auth recorder")
        .set_library("pg_otp_auth")
        .set_function("pg_otp_auth_recorder_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .set_argument(pg_sys::Oid::from(db).into_datum())
        .load_dynamic()
        .is_ok();
    if started {
        q.recorders[entry] = Recorder {
            dboid: db,
            proc_: 0,
            requested_at: now,
        };
    }
}

/// Takes every pending record of `db`.
fn take(db: u32) -> Vec<(usize, Option<Action>)> {
    let mut q = QUEUE.exclusive();
    let mut batch = Vec::new();
    for (i, s) in q.slots.iter_mut().enumerate() {
        if s.state == State::Pending && s.dboid == db {
            s.state = State::Taken;
            let text = std::str::from_utf8(&s.payload[..s.len as usize]).unwrap_or_default();
            batch.push((i, Action::decode(text)));
        }
    }
    batch
}

/// Finishes the taken slots of `db` (all of them, or those in `only`) and wakes their callers.
fn finish(db: u32, only: Option<&[usize]>, state: State) {
    let mut q = QUEUE.exclusive();
    for (i, s) in q.slots.iter_mut().enumerate() {
        if s.state != State::Taken || s.dboid != db || only.is_some_and(|o| !o.contains(&i)) {
            continue;
        }
        if s.abandoned {
            s.state = State::Free;
            s.abandoned = false;
        } else {
            s.state = state;
            unsafe { set_latch_of(s.waiter) };
        }
    }
}

/// On the recorder's exit, whatever the cause: its taken records fail (their callers answer
/// PT503) and the database may ask for a new recorder.
#[pg_guard]
unsafe extern "C-unwind" fn recorder_exit(_code: i32, arg: pg_sys::Datum) {
    let db = arg.value() as u32;
    finish(db, None, State::Failed);
    let mut q = QUEUE.exclusive();
    for r in q.recorders.iter_mut() {
        if r.dboid == db && r.proc_ == my_proc() {
            *r = Recorder {
                dboid: 0,
                proc_: 0,
                requested_at: 0,
            };
        }
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_otp_auth_recorder_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGTERM);
    let dboid = unsafe { pg_sys::Oid::from_datum(arg, false) }.unwrap_or_default();
    let db = dboid.to_u32();
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(dboid), None);
    {
        let mut q = QUEUE.exclusive();
        let mine = q
            .recorders
            .iter()
            .position(|r| r.dboid == db && r.proc_ == 0);
        let Some(i) = mine else {
            // Another recorder for this database is running already.
            return;
        };
        q.recorders[i].proc_ = my_proc();
    }
    unsafe { pg_sys::before_shmem_exit(Some(recorder_exit), pg_sys::Datum::from(db as usize)) };
    // Records a predecessor took but never finished died with it.
    finish(db, None, State::Failed);
    let mut idle_since = Instant::now();
    let mut last_notify: Option<Instant> = None;
    loop {
        // One NOTIFY per NOTIFY_GAP at most: under load a wake-up per commit would cost a
        // transaction here (and a claim in every listening dispatcher) for each message, while
        // one wake-up finds all the messages queued since the last.
        let notify_wait = last_notify
            .map(|t| NOTIFY_GAP.saturating_sub(t.elapsed()))
            .unwrap_or_default();
        if notify_wait.is_zero() && take_wake_up(db) {
            BackgroundWorker::transaction(|| {
                // NOTIFY gives its transaction an xid, hence a commit record. Nothing in it needs
                // to survive a crash (the messages were committed and flushed by their own
                // transactions, and a restarted dispatcher polls), so it does not wait for a WAL
                // flush: that would double the flushes of a sending install. Both are called
                // directly: through SPI, parsing and planning them cost several times the rest.
                unsafe {
                    pg_sys::set_config_option(
                        c"synchronous_commit".as_ptr(),
                        c"off".as_ptr(),
                        pg_sys::GucContext::PGC_USERSET,
                        pg_sys::GucSource::PGC_S_SESSION,
                        pg_sys::GucAction::GUC_ACTION_LOCAL,
                        true,
                        pg_sys::PGERROR as i32,
                        false,
                    )
                };
                crate::wakeup::notify_dispatcher();
            });
            idle_since = Instant::now();
            last_notify = Some(idle_since);
        }
        let batch = take(db);
        if batch.is_empty() {
            if idle_since.elapsed() >= IDLE_EXIT {
                break;
            }
            // A wake-up held back by NOTIFY_GAP is sent when the gap ends.
            let wait = if !notify_wait.is_zero() && wake_up_pending(db) {
                pg_otp_auth_core::clock::whole_millis(notify_wait)
            } else {
                Duration::from_millis(500)
            };
            if !BackgroundWorker::wait_latch(Some(wait)) {
                break;
            }
            continue;
        }
        let unreadable: Vec<usize> = batch
            .iter()
            .filter(|(_, a)| a.is_none())
            .map(|(i, _)| *i)
            .collect();
        finish(db, Some(&unreadable), State::Failed);
        let actions: Vec<Action> = batch.into_iter().filter_map(|(_, a)| a).collect();
        // One transaction for the whole batch: an error fails every record in it (the process
        // exits and recorder_exit fails them), and each caller fails closed.
        BackgroundWorker::transaction(|| {
            Spi::run("SET LOCAL lock_timeout = '5s'").expect("SET lock_timeout");
            Spi::run("SET LOCAL search_path = pg_catalog, pg_temp").expect("SET search_path");
            for action in &actions {
                crate::autonomous::perform(action);
            }
        });
        finish(db, None, State::Done);
        idle_since = Instant::now();
    }
}
