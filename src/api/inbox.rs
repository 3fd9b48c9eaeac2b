//! `sync_now(account)`: asks the receiver worker to sync an account now and
//! waits until it has (the batches commit in the worker's own transactions,
//! so the caller's transaction never holds network I/O). `reparse(message)`:
//! parses a stored message again from its raw bytes.

use super::errors::raise;
use crate::store::inbox;
use crate::worker::board::{self, SyncRequestState};
use crate::worker::role::Role;
use email_accounts_mail::parse::parse;
use pgrx::prelude::*;
use pgrx::PgTryBuilder;

fn internal(error: pgrx::spi::SpiError) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, error.to_string(), None)
}

// pgrx needs the named columns spelled out in the signature.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe)]
fn sync_now(
    account: &str,
) -> TableIterator<
    'static,
    (
        name!(folder, String),
        name!(new_messages, i32),
        name!(state, String),
        name!(error_kind, Option<String>),
        name!(error, Option<String>),
    ),
> {
    let visible = inbox::visible_account(account).unwrap_or_else(|error| internal(error)).unwrap_or_else(|| {
        raise(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("no account named {account:?}"), None)
    });
    if !visible.enable_incoming {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("account {account:?} does not receive mail (enable_incoming is off)"),
            None,
        );
    }
    if !visible.ready_to_receive {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("account {account:?} is not ready to receive: it is awaiting its password"),
            Some("Call email_accounts.set_password() first."),
        );
    }
    let receiver = board::read(Role::Receiver);
    if receiver.pid == 0 || receiver.state != board::WorkerState::Idle {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("the receiver worker is not running in this database ({})", receiver.state.label()),
            Some(
                "See email_accounts.worker_status(); the workers run in the database named by email_accounts.database.",
            ),
        );
    }
    let Some(slot) = board::request_sync(visible.account_id) else {
        raise(PgSqlErrorCode::ERRCODE_TOO_MANY_CONNECTIONS, "too many sync_now() calls are waiting", None)
    };
    // Free the slot however the wait ends (done, cancel, statement_timeout).
    PgTryBuilder::new(|| {
        board::wake(Role::Receiver);
        while board::sync_request_state(slot) != SyncRequestState::Done {
            let events = pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH;
            unsafe {
                pg_sys::WaitLatch(pg_sys::MyLatch, events as i32, 1000, pg_sys::PG_WAIT_EXTENSION);
                pg_sys::ResetLatch(pg_sys::MyLatch);
            }
            pg_sys::check_for_interrupts!();
        }
    })
    .finally(|| board::release_sync_request(slot))
    .execute();
    let rows = inbox::folder_results(visible.account_id).unwrap_or_else(|error| internal(error));
    TableIterator::new(rows)
}

#[pg_extern(volatile, parallel_unsafe)]
fn reparse(message_id: i64) -> bool {
    let (raw, attachment_size_limit) =
        inbox::raw_message(message_id).unwrap_or_else(|error| internal(error)).unwrap_or_else(|| {
            raise(PgSqlErrorCode::ERRCODE_NO_DATA_FOUND, format!("no message with message_id {message_id}"), None)
        });
    let parsed = parse(&raw, attachment_size_limit);
    let ok = parsed.is_ok();
    if let Err(error) = inbox::replace_parsed(message_id, parsed.as_ref().map_err(|error| error.to_string())) {
        internal(error)
    }
    ok
}
