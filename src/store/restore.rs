//! Whether a dump is being restored into the worker's database (see
//! sql/restore.sql): the workers claim and store nothing until it ends.

use super::kept_plans;
use pgrx::spi::SpiError;
use pgrx::Spi;

/// The process id of a superuser session restoring a dump into this
/// database, or `None`; then this transaction holds off any restore until it
/// ends (so call it in the transaction that claims or stores).
pub fn in_progress() -> Result<Option<i32>, SpiError> {
    Spi::connect_mut(|client| {
        match kept_plans::update(client, "SELECT email_accounts.restore_in_progress()", &[])?.first() {
            Some(row) => row.get::<i32>(1),
            None => Ok(None),
        }
    })
}
