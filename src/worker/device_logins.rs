//! Device logins waiting for the user's approval (RFC 8628): the receiver
//! asks the token endpoint once per login when its polling interval has
//! passed — on threads, bounded by connect_timeout — and stores the answer:
//! still pending, connected with a refresh token, or consent needed.

use crate::store::oauth::{self, PendingDeviceLogin};
use crate::store::restore;
use crate::store::transaction::{in_transaction, try_in_transaction, StoreError};
use crate::threads;
use email_accounts_mail::oauth::{DevicePoll, OAuthError};
use pgrx::prelude::*;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

/// At most this many logins are polled per round (each on its own thread).
const POLLED_AT_ONCE: i64 = 8;

type Polled = (i64, Result<DevicePoll, OAuthError>);

/// Polls the due device logins; returns the time until the next one is due.
pub fn poll_due() -> Option<Duration> {
    let due = try_in_transaction(|| oauth::due_device_logins(POLLED_AT_ONCE));
    match due {
        Ok(due) if !due.is_empty() => record(poll(due)),
        Ok(_) => {}
        Err(error) => log!("email_accounts receiver: cannot look up device logins: {error}"),
    }
    match in_transaction(oauth::seconds_until_next_device_poll) {
        Ok(Ok(Some(seconds))) => Some(Duration::from_secs_f64(seconds.max(0.2))),
        Ok(Ok(None)) => None,
        Ok(Err(_)) | Err(_) => Some(Duration::from_secs(5)),
    }
}

fn poll(due: Vec<PendingDeviceLogin>) -> Vec<Polled> {
    let jobs: Vec<Box<dyn FnOnce() -> Polled + Send>> = due
        .into_iter()
        .map(|login| -> Box<dyn FnOnce() -> Polled + Send> {
            Box::new(move || {
                let secret = login.client.client_secret.clone().unwrap_or_default();
                (login.account_id, login.client.poll_device_login(&login.state).map_err(|error| error.without(&secret)))
            })
        })
        .collect();
    threads::run_all(jobs)
}

fn record(polled: Vec<Polled>) {
    let recorded = in_transaction(AssertUnwindSafe(|| -> Result<(), StoreError> {
        // (Not while a dump is restored: the restore fills account_oauth.)
        if restore::in_progress(restore::Worker::Receiver)?.is_some() {
            return Ok(());
        }
        for (account_id, result) in &polled {
            oauth::record_device_poll(*account_id, result)?;
        }
        Ok(())
    }));
    if let Err(error) = recorded.and_then(|inner| inner) {
        log!("email_accounts receiver: cannot record device logins: {error}");
    }
}
