//! Whether a dump is being restored into the worker's database (see
//! sql/restore.sql): the workers claim and store nothing until it ends.

use super::kept_plans;
use pgrx::spi::SpiError;
use pgrx::Spi;

/// Which worker asks: each has its own lock, so the two never wait for
/// each other (the numbers are sql/restore.sql's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Worker {
    Sender = 1,
    Receiver = 2,
}

/// The process id of a superuser session restoring a dump into this
/// database, or `None`; then this transaction holds off any restore until it
/// ends (so call it first in the transaction that claims or stores).
pub fn in_progress(worker: Worker) -> Result<Option<i32>, SpiError> {
    Spi::connect_mut(|client| {
        let rows =
            kept_plans::update(client, "SELECT email_accounts.restore_in_progress($1)", &[(worker as i32).into()])?;
        match rows.first() {
            Some(row) => row.get::<i32>(1),
            None => Ok(None),
        }
    })
}
