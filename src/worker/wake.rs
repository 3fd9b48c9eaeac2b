//! Waking workers when a transaction commits: once per transaction, never
//! on rollback. `wake_sender_at_commit()` is called by the outbox's
//! statement trigger (one sender of the database is woken),
//! `wake_workers_at_commit()` by account changes; `flush()` wakes every
//! sender immediately. Whether the extension itself came or went is the
//! utility hook's business (utility_hook.rs).

use super::board;
use super::role::Role;
use pgrx::prelude::*;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

// Per backend: whether our callback is registered, and which roles the
// current transaction wants woken (one bit per role index).
static CALLBACK_REGISTERED: AtomicBool = AtomicBool::new(false);
static WAKE_AT_COMMIT: AtomicU32 = AtomicU32::new(0);

fn wake_at_commit(roles: &[Role]) {
    if !CALLBACK_REGISTERED.swap(true, Ordering::Relaxed) {
        unsafe { pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut()) };
    }
    let bits = roles.iter().fold(0, |bits, role| bits | 1 << role_bit(*role));
    WAKE_AT_COMMIT.fetch_or(bits, Ordering::Relaxed);
}

fn role_bit(role: Role) -> u32 {
    match role {
        Role::Launcher => 0,
        Role::Sender => 1,
        Role::Receiver => 2,
    }
}

#[pg_extern(volatile, parallel_unsafe)]
fn wake_sender_at_commit() {
    wake_at_commit(&[Role::Sender]);
}

#[pg_extern(volatile, parallel_unsafe)]
fn wake_workers_at_commit() {
    wake_at_commit(&[Role::Sender, Role::Receiver]);
}

/// Wakes the sender now (e.g. after changing accounts or retrying rows by hand).
#[pg_extern(volatile, parallel_unsafe)]
fn flush() -> bool {
    board::wake_senders(board::my_database())
}

#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(event: pg_sys::XactEvent::Type, _argument: *mut c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT => {
            let bits = WAKE_AT_COMMIT.swap(0, Ordering::Relaxed);
            let database = board::my_database();
            if bits & 1 << role_bit(Role::Sender) != 0 {
                board::wake_sender(database);
            }
            if bits & 1 << role_bit(Role::Receiver) != 0 {
                board::wake_receiver(database);
            }
        }
        // A prepared transaction commits elsewhere; the fallback poll finds it.
        pg_sys::XactEvent::XACT_EVENT_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PREPARE => WAKE_AT_COMMIT.store(0, Ordering::Relaxed),
        _ => {}
    }
}
