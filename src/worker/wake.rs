//! Waking the sender worker when a transaction that queued mail commits:
//! once per transaction, never on rollback. `wake_sender_at_commit()` is
//! called by the outbox's statement trigger; `flush()` wakes it at once.

use super::board;
use super::role::Role;
use pgrx::prelude::*;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};

// Per backend: whether our callback is registered, and whether the current
// transaction queued mail.
static CALLBACK_REGISTERED: AtomicBool = AtomicBool::new(false);
static WAKE_AT_COMMIT: AtomicBool = AtomicBool::new(false);

#[pg_extern(volatile, parallel_unsafe)]
fn wake_sender_at_commit() {
    if !CALLBACK_REGISTERED.swap(true, Ordering::Relaxed) {
        unsafe { pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut()) };
    }
    WAKE_AT_COMMIT.store(true, Ordering::Relaxed);
}

/// Wakes the sender now (e.g. after changing accounts or retrying rows by hand).
#[pg_extern(volatile, parallel_unsafe)]
fn flush() -> bool {
    board::wake(Role::Sender)
}

#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(event: pg_sys::XactEvent::Type, _argument: *mut c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT => {
            if WAKE_AT_COMMIT.swap(false, Ordering::Relaxed) {
                board::wake(Role::Sender);
            }
        }
        // A prepared transaction commits elsewhere; the fallback poll finds it.
        pg_sys::XactEvent::XACT_EVENT_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PREPARE => WAKE_AT_COMMIT.store(false, Ordering::Relaxed),
        _ => {}
    }
}
