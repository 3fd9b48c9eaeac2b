//! Whether a dump is being restored into the worker's database (see
//! sql/restore.sql): the workers claim and store nothing until it ends.

use super::kept_plans;
use pgrx::pg_sys;
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
    // The usual answer without a statement: the lock is free and now held
    // (what restore_in_progress() does first; a statement and PL/pgSQL cost
    // ~25 µs, on every wake-up and claim).
    if holds_off_restores(worker) {
        return Ok(None);
    }
    Spi::connect_mut(|client| {
        let rows =
            kept_plans::update(client, "SELECT email_accounts.restore_in_progress($1)", &[(worker as i32).into()])?;
        match rows.first() {
            Some(row) => row.get::<i32>(1),
            None => Ok(None),
        }
    })
}

unsafe extern "C-unwind" {
    /// PostgreSQL's own, for DirectFunctionCall (pgrx's binding wraps it as a Rust function).
    fn pg_try_advisory_xact_lock_int4(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
}

/// sql/restore.sql's advisory lock key: 'mail' in ASCII.
const RESTORE_LOCK: i32 = 1835100524;

/// Takes the worker's restore lock for the transaction if it is free
/// (`pg_try_advisory_xact_lock(1835100524, worker)`).
fn holds_off_restores(worker: Worker) -> bool {
    // SAFETY: a built-in function called with two int4 arguments inside a
    // transaction; it returns a bool datum (an error, such as running out of
    // lock memory, is raised as a PostgreSQL error the transaction catches).
    unsafe {
        pg_sys::DirectFunctionCall2Coll(
            Some(pg_try_advisory_xact_lock_int4),
            pg_sys::InvalidOid,
            pg_sys::Datum::from(RESTORE_LOCK),
            pg_sys::Datum::from(worker as i32),
        )
        .value()
            != 0
    }
}
