//! Waking the dispatcher when messages are queued.
//!
//! `NOTIFY` serialises the commits of every notifying transaction in the cluster: PostgreSQL
//! holds one lock from a notifying transaction's pre-commit until its commit is flushed, so that
//! notifications queue in commit order. A NOTIFY per send would cap sending at one commit flush
//! at a time. When pg_otp_auth is preloaded and the database's recorder runs, a transaction that
//! queued messages instead tells the recorder once its commit is visible, and the recorder sends
//! one NOTIFY for every commit since its last. Otherwise the transaction notifies itself, as
//! before.

use crate::recorder;
use pgrx::prelude::*;
use std::cell::Cell;

unsafe extern "C-unwind" {
    /// PostgreSQL's NOTIFY (commands/async.h), which pgrx does not bind.
    fn Async_Notify(channel: *const std::ffi::c_char, payload: *const std::ffi::c_char);
}

thread_local! {
    /// This transaction queued a message.
    static QUEUED: Cell<bool> = const { Cell::new(false) };
    /// At pre-commit the recorder ran: it sends the wake-up after the commit.
    static HAND_OVER: Cell<bool> = const { Cell::new(false) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// NOTIFY on the dispatcher's channel with an empty payload, sent when the current transaction
/// commits.
pub fn notify_dispatcher() {
    // Guarded: an ERROR in it unwinds through the Rust frames as a panic instead of jumping
    // over them.
    unsafe {
        pg_sys::ffi::pg_guard_ffi_boundary(|| {
            Async_Notify(c"pg_otp_auth_outbox".as_ptr(), c"".as_ptr())
        })
    };
}

/// Most transactions queue no message: they return at once, without pgrx's guard (a
/// `sigsetjmp` per transaction event).
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, arg: *mut std::ffi::c_void) {
    if QUEUED.get() || HAND_OVER.get() {
        unsafe { on_xact_guarded(event, arg) }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact_guarded(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT if QUEUED.get() => {
            if recorder::running_here() {
                HAND_OVER.set(true);
            } else {
                // Still inside the transaction: notify as it commits.
                notify_dispatcher();
            }
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT => {
            if HAND_OVER.get() {
                recorder::wake_dispatcher_after_commit();
            }
            QUEUED.set(false);
            HAND_OVER.set(false);
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PREPARE => {
            // A prepared transaction's messages are found by the dispatcher's next poll.
            QUEUED.set(false);
            HAND_OVER.set(false);
        }
        _ => {}
    }
}

/// The outbox's insert trigger (`auth._sms_outbox_notify`, declared in api.sql). A transaction
/// that notifies itself names the message in the payload; a wake-up sent by the recorder covers
/// many and names none.
#[pg_trigger(sql = false)]
fn sms_outbox_notify<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgHeapTupleError> {
    if !recorder::preloaded() {
        let id = trigger
            .new()
            .and_then(|row| row.get_by_name::<pgrx::Uuid>("id").ok().flatten())
            .map(|id| id.to_string())
            .unwrap_or_default();
        crate::db::run(
            "SELECT pg_catalog.pg_notify('pg_otp_auth_outbox', $1)",
            &[crate::db::text(&id)],
        )
        .unwrap_or_else(|e| error!("{}", e.message));
        return Ok(None);
    }
    // The first sends after a quiet spell notify themselves while the recorder starts.
    recorder::ensure_running();
    if !CALLBACK_REGISTERED.get() {
        unsafe { pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut()) };
        CALLBACK_REGISTERED.set(true);
    }
    QUEUED.set(true);
    Ok(None)
}
