//! Transactions for background workers: an error inside one is caught, the
//! transaction is rolled back, and the worker carries on.

use pgrx::pg_sys;
use pgrx::pg_sys::errcodes::PgSqlErrorCode;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::PgTryBuilder;

/// A PostgreSQL error raised inside a worker's transaction.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    pub message: String,
    /// The error's SQLSTATE, when PostgreSQL raised it.
    pub code: Option<PgSqlErrorCode>,
}

impl StoreError {
    /// A duplicate key in a unique index (SQLSTATE 23505).
    pub fn is_unique_violation(&self) -> bool {
        self.code == Some(PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION)
    }
}

impl From<pgrx::spi::SpiError> for StoreError {
    fn from(error: pgrx::spi::SpiError) -> Self {
        StoreError { message: error.to_string(), code: None }
    }
}

impl From<super::oauth::OAuthStoreError> for StoreError {
    fn from(error: super::oauth::OAuthStoreError) -> Self {
        StoreError { message: error.to_string(), code: None }
    }
}

impl From<CaughtError> for StoreError {
    fn from(error: CaughtError) -> Self {
        let (message, code) = match error {
            CaughtError::PostgresError(report) | CaughtError::ErrorReport(report) => {
                (report.message().to_owned(), report.sql_error_code())
            }
            CaughtError::RustPanic { ereport, .. } => (ereport.message().to_owned(), ereport.sql_error_code()),
        };
        StoreError { message, code: Some(code) }
    }
}

/// The only search_path the workers' statements and the code they run as an
/// account's owner role ever see: a function or operator that a role created
/// in another schema (`public.format`, `public.||`) can never be chosen.
pub const PINNED_SEARCH_PATH: &std::ffi::CStr = c"pg_catalog, pg_temp";

/// Sets a setting without a statement to parse: `GUC_ACTION_LOCAL` for the
/// current transaction (SET LOCAL), `GUC_ACTION_SAVE` for the current GUC
/// nesting level (as a function's SET clause).
pub(crate) fn set_setting(name: &std::ffi::CStr, value: &std::ffi::CStr, action: pg_sys::GucAction::Type) {
    // SAFETY: both strings are NUL-terminated and outlive the call; an invalid
    // setting raises an ERROR, which the caller's PgTryBuilder catches.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            action,
            true,
            pg_sys::PGERROR as i32,
            false,
        );
    }
}

/// What every worker transaction runs with (the worker's session is set
/// so at its start, settings.rs).
pub const TRANSACTION_SETTINGS: [(&std::ffi::CStr, &std::ffi::CStr); 3] = [
    // Whatever ALTER DATABASE ... SET search_path or earlier code left.
    (c"search_path", PINNED_SEARCH_PATH),
    // (See in_transaction.) In milliseconds, as GetConfigOption shows it.
    (c"lock_timeout", c"200"),
    // The workers' statements are small; after a burst the planner's
    // estimates can pass jit_above_cost, and compiling then took ~80 ms
    // of every claim (make bench: p50 latency 6 -> 140 ms).
    (c"jit", c"off"),
];

/// Sets `TRANSACTION_SETTINGS` for the current transaction where they differ:
/// code run by an earlier transaction (a trigger's session-wide SET) can
/// have changed them. Setting one that is already so would cost its assign
/// hooks twice a transaction (search_path: the namespace look-ups again).
fn pin_transaction_settings() {
    for (name, value) in TRANSACTION_SETTINGS {
        // SAFETY: a NUL-terminated name of a setting that exists; the value
        // it returns is a string GUC owns, read at once.
        let current = unsafe { pg_sys::GetConfigOption(name.as_ptr(), false, false) };
        if current.is_null() || unsafe { std::ffi::CStr::from_ptr(current) } != value {
            set_setting(name, value, pg_sys::GucAction::GUC_ACTION_LOCAL);
        }
    }
}

/// Runs `body` in its own transaction with a snapshot and commits it; on any
/// error the transaction is aborted and the error returned.
///
/// The worker, not a DBA's DDL, gives way when they meet: a lock wait
/// shorter than deadlock_timeout ends the worker's transaction (it tries
/// again later) before a DROP EXTENSION could be picked as a deadlock victim.
pub fn in_transaction<R>(body: impl FnOnce() -> R + std::panic::UnwindSafe) -> Result<R, StoreError> {
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    PgTryBuilder::new(|| {
        pin_transaction_settings();
        let result = body();
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        }
        Ok(result)
    })
    .catch_others(|error| {
        unsafe { pg_sys::AbortCurrentTransaction() };
        Err(StoreError::from(error))
    })
    .execute()
}

/// `in_transaction` for a body that can fail by itself: one error either way.
pub fn try_in_transaction<T, E: Into<StoreError>>(
    body: impl FnOnce() -> Result<T, E> + std::panic::UnwindSafe,
) -> Result<T, StoreError> {
    in_transaction(body)?.map_err(Into::into)
}

/// Runs `body` in a subtransaction of the current transaction: when it
/// raises an error or returns one, only the subtransaction is rolled back
/// (nothing it did is kept half done), and the caller carries on (as a
/// PL/pgSQL exception block does). Used so one bad row never undoes the rest.
pub fn try_in_subtransaction<T, E: Into<StoreError>>(
    body: impl FnOnce() -> Result<T, E> + std::panic::UnwindSafe,
) -> Result<T, StoreError> {
    let memory_context = unsafe { pg_sys::CurrentMemoryContext };
    let resource_owner = unsafe { pg_sys::CurrentResourceOwner };
    let end = |commit: bool| unsafe {
        pg_sys::MemoryContextSwitchTo(memory_context);
        if commit {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(memory_context);
        pg_sys::CurrentResourceOwner = resource_owner;
    };
    unsafe {
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(memory_context);
    }
    PgTryBuilder::new(|| {
        let result = body().map_err(Into::into);
        end(result.is_ok());
        result
    })
    .catch_others(|error| {
        end(false);
        Err(StoreError::from(error))
    })
    .execute()
}
