//! Server settings (GUCs) of the extension. Read by the workers and by SQL
//! functions; defined once in `_PG_init`.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;
use std::time::Duration;

/// The database the background workers connect to.
pub static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));

/// Seconds the postmaster waits before restarting a worker that died.
pub static WORKER_RESTART_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(5);

/// How often an idle worker wakes up without being signalled, in milliseconds.
pub static FALLBACK_POLL_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(10_000);

/// Bound on connecting to a mail server and on each read and write, in milliseconds.
pub static CONNECT_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(10_000);

pub fn register() {
    GucRegistry::define_string_guc(
        c"email_accounts.database",
        c"Database the email_accounts background workers connect to.",
        c"The extension must be created in this database for the workers to do anything; until then they wait quietly.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"email_accounts.worker_restart_interval",
        c"Seconds before the postmaster restarts an email_accounts worker that exited abnormally.",
        c"",
        &WORKER_RESTART_INTERVAL,
        1,
        3600,
        GucContext::Postmaster,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"email_accounts.fallback_poll_interval",
        c"How often an idle email_accounts worker looks for work it was not woken for.",
        c"Workers are woken at commit; this slow poll only catches work queued by other means.",
        &FALLBACK_POLL_INTERVAL,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"email_accounts.connect_timeout",
        c"Bound on connecting to a mail server and on each read or write.",
        c"Used by test_account() and by the workers; a server slower than this counts as a timeout.",
        &CONNECT_TIMEOUT,
        100,
        600_000,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
}

pub fn database() -> String {
    DATABASE.get().map(|name| name.to_string_lossy().into_owned()).unwrap_or_else(|| "postgres".to_owned())
}

pub fn worker_restart_interval() -> Duration {
    Duration::from_secs(WORKER_RESTART_INTERVAL.get().max(1) as u64)
}

pub fn fallback_poll_interval() -> Duration {
    Duration::from_millis(FALLBACK_POLL_INTERVAL.get().max(10) as u64)
}

pub fn connect_timeout() -> Duration {
    Duration::from_millis(CONNECT_TIMEOUT.get().max(100) as u64)
}
