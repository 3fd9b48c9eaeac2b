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
use std::cell::Cell;

/// Rows one transaction claims this way at most. A bulk insert queues the
/// rest, which the sender's claim orders by priority and rate limits.
const ROWS_PER_TRANSACTION: u32 = 10;

/// What the current transaction of this backend claimed on insert.
#[derive(Clone, Copy)]
struct Claimed {
    /// Rows claimed so far.
    rows: u32,
    /// The sender they were claimed for: its board slot, process id and start.
    sender: Option<(usize, i32, i64)>,
    /// A row was queued past them.
    queued_too: bool,
    /// Their accounts (0: a free place), told ahead of the commit.
    accounts: [i64; board::ACCOUNTS_TOLD],
}

/// Nothing claimed (a transaction's start).
const NOTHING: Claimed = Claimed { rows: 0, sender: None, queued_too: false, accounts: [0; board::ACCOUNTS_TOLD] };

thread_local! {
    static CLAIMED: Cell<Claimed> = const { Cell::new(NOTHING) };
}

/// One row (or none): the idle sender a new outbox row of `account_id` is
/// claimed for, and the lease of that claim. None when `claim_on_insert` is
/// off, no sender of this database is idle, or the transaction claimed its
/// share already.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn sender_for_new_mail(
    account_id: i64,
) -> TableIterator<
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
    let mut claimed = CLAIMED.with(Cell::get);
    let queue = |mut claimed: Claimed| {
        // (Told to the sender at commit, if one was chosen.)
        claimed.queued_too |= claimed.sender.is_some();
        CLAIMED.with(|cell| cell.set(claimed));
        TableIterator::new(None)
    };
    // Past its share, a transaction's rows queue (and the sender is told so).
    if claimed.rows >= ROWS_PER_TRANSACTION {
        return queue(claimed);
    }
    let Some(sender) = board::sender_taking_new_mail(board::my_database()) else {
        return queue(claimed);
    };
    // One transaction tells one sender (the same incarnation): its later
    // rows go to the same one or queue.
    if claimed.sender.is_some_and(|chosen| chosen != sender) {
        return queue(claimed);
    }
    let (_, _, started_at) = sender;
    let lease_microseconds = i64::from(settings::lease_duration_seconds()) * 1_000_000;
    let lease_until = unsafe { pg_sys::GetCurrentTimestamp() } + lease_microseconds;
    let (Ok(started_at), Ok(lease_until)) =
        (TimestampWithTimeZone::try_from(started_at), TimestampWithTimeZone::try_from(lease_until))
    else {
        return TableIterator::new(None);
    };
    claimed.rows += 1;
    claimed.sender = Some(sender);
    board::add_accounts(&mut claimed.accounts, &[account_id]);
    CLAIMED.with(|cell| cell.set(claimed));
    wake::at_commit(wake::NEW_MAIL);
    TableIterator::once((sender.1, started_at, lease_until))
}

/// Whether the outbox row `outbox_id`, claimed on insert for the sender
/// process `sender_process_id` that started at `sender_started_at`, and
/// without a token, was never taken, so its mail has not gone out: true
/// when that sender started in this database since the last server start
/// or crash restart and does not list the row as taken (the worker board
/// keeps both; any role may ask). A take writes nothing to the row: it
/// lists it on the board while it holds the row's lock, so a caller that
/// locked the row first (cancel()) gets an answer that stays true.
///
/// A role that is not a superuser gets an answer only about a row it can
/// see claimed that way (false otherwise): what another tenant's mail is
/// doing is not its business.
///
/// Costly to the planner on purpose: where it filters locked rows, every
/// cheaper condition (the lock's subquery) goes first.
#[pg_extern(volatile, parallel_safe, cost = 1000)]
#[search_path(pg_catalog, pg_temp)]
fn claim_never_taken(sender_process_id: i32, sender_started_at: TimestampWithTimeZone, outbox_id: i64) -> bool {
    // SAFETY: reads the current user's role.
    let superuser = unsafe { pg_sys::superuser() };
    (superuser || crate::store::outbox::sees_claim(outbox_id, sender_process_id, sender_started_at).unwrap_or(false))
        && board::claim_never_taken(board::my_database(), sender_process_id, sender_started_at.into_inner(), outbox_id)
}

/// At commit (from wake.rs, never raises): the sender is told and woken.
/// False when it could not be (the transaction's wake-up goes to any sender).
pub fn committed(database: u32) -> bool {
    let claimed = CLAIMED.with(|cell| cell.replace(NOTHING));
    claimed.sender.is_some_and(|(slot, process, started_at)| {
        board::new_mail_committed(database, slot, process, started_at, claimed.queued_too)
    })
}

/// Before the commit (from wake.rs, never raises): the sender rows were
/// claimed for is woken ahead of the commit's flush, and told their
/// accounts (it reads their settings meanwhile), unless the commit waits
/// for synchronous standbys (it could take long; the sender would watch
/// for it in vain).
pub fn committing(database: u32) {
    let claimed = CLAIMED.with(Cell::get);
    if let Some((slot, process, started_at)) = claimed.sender {
        if !settings::synchronous_standbys() {
            board::new_mail_committing(database, slot, process, started_at, &claimed.accounts);
        }
    }
}

/// At rollback or PREPARE TRANSACTION: nothing to tell. (A prepared
/// transaction's rows are taken back when their lease lapses.)
pub fn forget() {
    CLAIMED.with(|cell| cell.set(NOTHING));
}
