//! Claims made by the inserting transaction (`email_accounts.claim_on_insert`).
//! The outbox's insert trigger asks here for an idle sender and claims a new
//! row for it (status `sending`, the attempt counted, its lease). The
//! application's commit then makes the claim durable, and the sender, told
//! at that commit (wake.rs), sends without a transaction of its own with a
//! flush before the wire: one commit flush less on the way of every message.
//! A rollback leaves nothing to tell.

use super::board;
use super::wake;
use crate::settings;
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU32, Ordering};

/// Rows one transaction claims this way at most. A bulk insert queues the
/// rest, which the sender's claim orders by priority and rate limits.
const ROWS_PER_TRANSACTION: u32 = 10;

// Per backend, for the current transaction: rows claimed so far, the
// sender they were claimed for (its board slot + 1, its process id and
// start), and whether a row was queued past them.
static ROWS: AtomicU32 = AtomicU32::new(0);
static SLOT: AtomicU32 = AtomicU32::new(0);
static PROCESS: AtomicI32 = AtomicI32::new(0);
static STARTED_AT: AtomicI64 = AtomicI64::new(0);
static QUEUED_TOO: AtomicBool = AtomicBool::new(false);

/// One row (or none): the idle sender a new outbox row is claimed for, and
/// the lease of that claim. None when `claim_on_insert` is off, no sender
/// of this database is idle, or the transaction claimed its share already.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn sender_for_new_mail() -> TableIterator<
    'static,
    (
        name!(sender_process_id, i32),
        name!(sender_started_at, TimestampWithTimeZone),
        name!(lease_until, TimestampWithTimeZone),
    ),
> {
    if !settings::claim_on_insert() {
        return TableIterator::new(None);
    }
    let chosen = SLOT.load(Ordering::Relaxed);
    // Past its share, a transaction's rows queue (and the sender is told so).
    if ROWS.load(Ordering::Relaxed) >= ROWS_PER_TRANSACTION {
        QUEUED_TOO.store(true, Ordering::Relaxed);
        return TableIterator::new(None);
    }
    let Some((slot, process, started_at)) = board::sender_taking_new_mail(board::my_database()) else {
        if chosen != 0 {
            QUEUED_TOO.store(true, Ordering::Relaxed);
        }
        return TableIterator::new(None);
    };
    // One transaction tells one sender: its later rows go to the same one or queue.
    if chosen != 0
        && (chosen != slot as u32 + 1
            || PROCESS.load(Ordering::Relaxed) != process
            || STARTED_AT.load(Ordering::Relaxed) != started_at)
    {
        QUEUED_TOO.store(true, Ordering::Relaxed);
        return TableIterator::new(None);
    }
    let lease_microseconds = i64::from(settings::lease_duration_seconds()) * 1_000_000;
    let lease_until = unsafe { pg_sys::GetCurrentTimestamp() } + lease_microseconds;
    let started_at_raw = started_at;
    let (Ok(started_at), Ok(lease_until)) =
        (TimestampWithTimeZone::try_from(started_at), TimestampWithTimeZone::try_from(lease_until))
    else {
        return TableIterator::new(None);
    };
    ROWS.fetch_add(1, Ordering::Relaxed);
    SLOT.store(slot as u32 + 1, Ordering::Relaxed);
    PROCESS.store(process, Ordering::Relaxed);
    STARTED_AT.store(started_at_raw, Ordering::Relaxed);
    wake::at_commit(wake::NEW_MAIL);
    TableIterator::once((process, started_at, lease_until))
}

/// Whether a claim made on insert for the sender process
/// `sender_process_id` that started at `sender_started_at`, and that has no
/// token, was never taken, so its mail has not gone out: true when that
/// sender started in this database since the last server start or crash
/// restart (the worker board remembers them; any role may ask). A take
/// commits the token, and only a crash can lose a committed transaction.
#[pg_extern(volatile, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn claim_never_taken(sender_process_id: i32, sender_started_at: TimestampWithTimeZone) -> bool {
    board::sender_started_here(board::my_database(), sender_process_id, sender_started_at.into_inner())
}

/// At commit (from wake.rs, never raises): the sender is told and woken.
/// False when it could not be (the transaction's wake-up goes to any sender).
pub fn committed(database: u32) -> bool {
    let slot = SLOT.swap(0, Ordering::Relaxed);
    let process = PROCESS.swap(0, Ordering::Relaxed);
    let started_at = STARTED_AT.swap(0, Ordering::Relaxed);
    let queued_too = QUEUED_TOO.swap(false, Ordering::Relaxed);
    ROWS.store(0, Ordering::Relaxed);
    slot != 0 && board::new_mail_committed(database, slot as usize - 1, process, started_at, queued_too)
}

/// At rollback or PREPARE TRANSACTION: nothing to tell. (A prepared
/// transaction's rows are taken back when their lease lapses.)
pub fn forget() {
    SLOT.store(0, Ordering::Relaxed);
    PROCESS.store(0, Ordering::Relaxed);
    STARTED_AT.store(0, Ordering::Relaxed);
    QUEUED_TOO.store(false, Ordering::Relaxed);
    ROWS.store(0, Ordering::Relaxed);
}
