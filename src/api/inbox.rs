//! `sync_now(account)`: asks the receiver worker to sync an account now and
//! waits until it has (the batches commit in the worker's own transactions,
//! so the caller's transaction never holds network I/O). `reparse(message)`:
//! parses a stored message again from its raw bytes.

use super::errors::{internal, raise, raise_access};
use crate::store::accounts::AccountAccessError;
use crate::store::{inbox, privileged};
use crate::worker::board::{self, SyncRequestState};
use crate::worker::role::WorkerId;
use email_accounts_mail::parse::parse;
use pgrx::prelude::*;
use pgrx::PgTryBuilder;

// pgrx needs the named columns spelled out in the signature.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn sync_now(
    account: &str,
    tenant: default!(Option<&str>, "NULL"),
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
    // The receiver would wait for itself if its own routing code asked.
    if privileged::in_restricted_operation() {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "sync_now() cannot be called from a security-restricted operation (such as on_receive_function code)",
            None,
        );
    }
    let visible = match inbox::visible_accounts(account, tenant).unwrap_or_else(|error| internal(error)).as_slice() {
        [] => raise(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("no account named {account:?}"), None),
        [visible] => visible.clone(),
        _ => raise_access(AccountAccessError::Ambiguous(account.to_owned())),
    };
    if visible.hidden {
        inbox::raise_mailbox_hidden(account).unwrap_or_else(|error| internal(error));
    }
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
    let receiver = receiver_when_ready();
    if receiver.pid == 0 || receiver.state != board::WorkerState::Idle {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("the receiver worker is not running in this database ({})", receiver.state.label()),
            Some(
                "See email_accounts.worker_status(); the launcher serves the databases named by email_accounts.databases.",
            ),
        );
    }
    let Some(slot) = board::request_sync(visible.account_id) else {
        raise(PgSqlErrorCode::ERRCODE_TOO_MANY_CONNECTIONS, "too many sync_now() calls are waiting", None)
    };
    // Free the slot however the wait ends (done, cancel, statement_timeout).
    PgTryBuilder::new(|| {
        board::wake_receiver(board::my_database());
        while board::sync_request_state(slot) != SyncRequestState::Done {
            crate::worker::nap(1000);
        }
    })
    .finally(|| board::release_sync_request(slot))
    .execute();
    let rows = inbox::folder_results(visible.account_id).unwrap_or_else(|error| internal(error));
    TableIterator::new(rows)
}

/// The receiver's slot once it is idle, waiting up to 30 s for one the
/// launcher is starting (right after CREATE EXTENSION, or a restart: on a
/// busy server a start took over 10 s, the bound before).
fn receiver_when_ready() -> board::WorkerSlot {
    let id = WorkerId::receiver(board::my_database());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let receiver = board::read(id).unwrap_or_default();
        let starting = matches!(receiver.state, board::WorkerState::NotStarted | board::WorkerState::Starting);
        if !starting || std::time::Instant::now() > deadline {
            return receiver;
        }
        crate::worker::nap(50);
    }
}

/// The caller must see the message (row-level security, as itself); the
/// worker's tables are then rewritten as the extension owner.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn reparse(message_id: i64) -> bool {
    let visible = inbox::message_is_visible(message_id).unwrap_or_else(|error| internal(error));
    if !visible {
        raise(PgSqlErrorCode::ERRCODE_NO_DATA_FOUND, format!("no message with message_id {message_id}"), None)
    }
    privileged::as_extension_owner(|| {
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
    })
    .unwrap_or_else(|error| internal(error))
}
