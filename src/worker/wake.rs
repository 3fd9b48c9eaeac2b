//! What a transaction asks to happen when it commits: once per transaction,
//! never on rollback, through one transaction callback per backend.
//! `wake_sender_at_commit()` is called by the outbox's statement trigger
//! (one sender of the database is woken), `wake_workers_at_commit()` by
//! account changes, and the utility hook (utility_hook.rs) asks for a look at
//! whether the extension is (still) there and for the launcher to be woken.
//! `flush()` wakes every sender immediately. One wake-up comes before the
//! commit: the sender of rows claimed on insert is woken ahead of the
//! commit's flush, to be awake when it ends (new_mail.rs; if the commit
//! fails after all, the sender finds nothing new).

use super::board;
use pgrx::prelude::*;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Wake one sender of the database.
pub const SENDER: u32 = 1;
/// Wake the database's receiver.
pub const RECEIVER: u32 = 2;
/// Look (before the commit, in the catalog) whether `email_accounts` is
/// there, and publish it on the board (waking the launcher and the
/// database's workers when that changed).
pub const EXTENSION: u32 = 4;
/// With EXTENSION: wake the database's workers even if nothing changed
/// (ALTER EXTENSION UPDATE).
pub const EXTENSION_CHANGED: u32 = 8;
/// Wake the launcher (pg_database changed).
pub const LAUNCHER: u32 = 16;
/// Tell the sender the transaction claimed rows for it (new_mail.rs).
pub const NEW_MAIL: u32 = 32;
/// The transaction changes what the workers read of accounts (the
/// statement triggers `count_settings_change` say so): from its PRE_COMMIT
/// until it ends, the board counts it as under way (a sender uses no
/// settings read ahead of a commit across it).
pub const SETTINGS: u32 = 64;

// Per backend: whether our callback is registered, what the current
// transaction asked for, and what the pre-commit look found.
static CALLBACK_REGISTERED: AtomicBool = AtomicBool::new(false);
static AT_COMMIT: AtomicU32 = AtomicU32::new(0);
static FOUND: AtomicU32 = AtomicU32::new(0);
/// The current transaction's settings change is counted as under way.
static SETTINGS_CHANGE_UNDER_WAY: AtomicBool = AtomicBool::new(false);
const FOUND_LOOKED: u32 = 1;
const FOUND_PRESENT: u32 = 2;

/// Asks for `what` (the constants above) when the current transaction commits.
pub fn at_commit(what: u32) {
    register_callback();
    AT_COMMIT.fetch_or(what, Ordering::Relaxed);
}

/// Once per backend: at_transaction_end runs at every transaction's end.
fn register_callback() {
    if !CALLBACK_REGISTERED.swap(true, Ordering::Relaxed) {
        unsafe { pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut()) };
    }
}

/// Counts the current transaction as a settings change under way, from now
/// until it ends (its commit or abort ends it, FATAL included). At
/// PRE_COMMIT for SETTINGS; and before COMMIT PREPARED (utility_hook.rs),
/// whose prepared transaction becomes visible before the PRE_COMMIT of the
/// transaction that runs it.
pub fn settings_change_begins_now() {
    register_callback();
    if !SETTINGS_CHANGE_UNDER_WAY.swap(true, Ordering::Relaxed) {
        board::settings_change_begins();
    }
}

/// For statement triggers of the tables the sending settings come from
/// (sql/account_settings.sql): counted as a settings change at commit.
#[pg_extern(volatile, parallel_unsafe)]
fn settings_change_at_commit() {
    at_commit(SETTINGS);
}

#[pg_extern(volatile, parallel_unsafe)]
fn wake_sender_at_commit() {
    at_commit(SENDER);
}

#[pg_extern(volatile, parallel_unsafe)]
fn wake_workers_at_commit() {
    at_commit(SENDER | RECEIVER);
}

/// Wakes the sender now (e.g. after changing accounts or retrying rows by hand).
#[pg_extern(volatile, parallel_unsafe)]
fn flush() -> bool {
    board::wake_senders(board::my_database())
}

#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(event: pg_sys::XactEvent::Type, _argument: *mut c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT => {
            let asked = AT_COMMIT.load(Ordering::Relaxed);
            // Still inside the transaction: the catalog says what it leaves behind.
            if asked & EXTENSION != 0 {
                let present =
                    unsafe { pg_sys::get_extension_oid(c"email_accounts".as_ptr(), true) } != pg_sys::InvalidOid;
                FOUND.store(FOUND_LOOKED | if present { FOUND_PRESENT } else { 0 }, Ordering::Relaxed);
            }
            // (Before the sender below is woken: it must see this change under way.)
            if asked & SETTINGS != 0 {
                settings_change_begins_now();
            }
            // The sender of rows claimed on insert wakes during the commit's flush.
            if asked & NEW_MAIL != 0 {
                super::new_mail::committing(board::my_database());
            }
        }
        // Committed and visible to new snapshots (never raises from here on).
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT => {
            let asked = AT_COMMIT.swap(0, Ordering::Relaxed);
            let found = FOUND.swap(0, Ordering::Relaxed);
            let database = board::my_database();
            if SETTINGS_CHANGE_UNDER_WAY.swap(false, Ordering::Relaxed) {
                board::settings_change_ends();
            }
            if found & FOUND_LOOKED != 0 {
                board::publish_extension(database, found & FOUND_PRESENT != 0, asked & EXTENSION_CHANGED != 0);
            }
            // The sender rows were claimed for on insert is the one woken.
            let told = asked & NEW_MAIL != 0 && super::new_mail::committed(database);
            if asked & SENDER != 0 && !told {
                board::wake_sender(database);
            }
            if asked & RECEIVER != 0 {
                board::wake_receiver(database);
            }
            if asked & LAUNCHER != 0 {
                board::wake_launcher();
            }
        }
        // A prepared transaction commits elsewhere; the fallback poll finds it.
        pg_sys::XactEvent::XACT_EVENT_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PREPARE => {
            if AT_COMMIT.swap(0, Ordering::Relaxed) & NEW_MAIL != 0 {
                super::new_mail::forget();
            }
            if SETTINGS_CHANGE_UNDER_WAY.swap(false, Ordering::Relaxed) {
                board::settings_change_ends();
            }
            FOUND.store(0, Ordering::Relaxed);
        }
        _ => {}
    }
}
