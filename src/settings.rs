//! Server settings (GUCs) of the extension. Read by the workers and by SQL
//! functions; defined once in `_PG_init`.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;
use std::time::Duration;

/// The databases the launcher serves: `*` (every database where the
/// extension is created) or a comma-separated list of names.
pub static DATABASES: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"*"));

/// Before 0.4.0 the one database the workers served; still honoured (only
/// it is served) while `databases` is `*`, so an upgrade changes nothing
/// until the DBA removes it.
pub static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Sender processes per database.
pub static SENDERS: GucSetting<i32> = GucSetting::<i32>::new(1);

/// Senders a database may have at most (slots on the worker board).
pub const MAX_SENDERS: usize = 8;

/// Seconds the postmaster waits before restarting a worker that died.
pub static WORKER_RESTART_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(5);

/// How often an idle worker wakes up without being signalled, in milliseconds.
pub static FALLBACK_POLL_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(60_000);

/// Bound on connecting to a mail server and on each read and write, in milliseconds.
pub static CONNECT_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(10_000);

/// Where the application serves unsubscribe and tracking links.
pub static PUBLIC_BASE_URL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Outbox rows a sender claims at once.
pub static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(200);
/// SMTP connections (accounts in parallel) per sender batch.
pub static SMTP_CONNECTIONS: GucSetting<i32> = GucSetting::<i32>::new(4);
/// The inserting transaction claims a new row for an idle sender.
pub static CLAIM_ON_INSERT: GucSetting<bool> = GucSetting::<bool>::new(true);
/// How long a claim on outbox rows holds, in seconds.
pub static LEASE_DURATION: GucSetting<i32> = GucSetting::<i32>::new(300);
/// First retry delay in seconds; it doubles with every attempt (capped at an hour).
pub static RETRY_BASE_DELAY: GucSetting<i32> = GucSetting::<i32>::new(30);

/// How long one message's append_to_table or on_receive_function code may run, in milliseconds.
pub static ROUTING_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(30_000);

/// How long unsubscribe and tracking links stay valid, in seconds.
pub static LINK_TOKEN_LIFETIME: GucSetting<i32> = GucSetting::<i32>::new(365 * 86_400);

/// Delivery attempts before a row is given up as failed.
pub static MAX_ATTEMPTS: GucSetting<i32> = GucSetting::<i32>::new(10);

/// Accounts the receiver syncs in parallel (one connection each).
pub static RECEIVE_CONNECTIONS: GucSetting<i32> = GucSetting::<i32>::new(4);
/// Incoming messages committed per transaction.
pub static RECEIVE_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(200);
/// Messages larger than this (kB) are stored with their headers only.
pub static MAX_MESSAGE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(50 * 1024);
/// Longest delay between retries of a failing account, in seconds.
pub static RECEIVE_MAX_BACKOFF: GucSetting<i32> = GucSetting::<i32>::new(3600);
/// Keep an IMAP IDLE connection on each account's first folder.
pub static IMAP_IDLE: GucSetting<bool> = GucSetting::<bool>::new(true);

pub fn register() {
    GucRegistry::define_string_guc(
        c"email_accounts.databases",
        c"Databases the email_accounts launcher starts workers in: * for every database where the extension is created, or a comma-separated list of names.",
        c"Template databases (datistemplate) and databases that refuse connections are never served.",
        &DATABASES,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"email_accounts.database",
        c"Deprecated (0.3.0): the one database served while email_accounts.databases is *.",
        c"Kept so that an upgrade from 0.3.0 serves what it served before; use email_accounts.databases.",
        &DATABASE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"email_accounts.senders",
        c"Sender processes per database; they share the outbox, one account on one sender at a time.",
        c"Each database served takes 1 + senders background worker processes (max_worker_processes).",
        &SENDERS,
        1,
        MAX_SENDERS as i32,
        GucContext::Sighup,
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
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    register_sender();
    register_receiver();
}

fn register_receiver() {
    GucRegistry::define_int_guc(
        c"email_accounts.receive_connections",
        c"Accounts the receiver syncs in parallel, one connection each.",
        c"",
        &RECEIVE_CONNECTIONS,
        1,
        256,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"email_accounts.receive_batch_size",
        c"Incoming messages stored per transaction (with the folder's cursor).",
        c"",
        &RECEIVE_BATCH_SIZE,
        1,
        10_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"email_accounts.max_message_size",
        c"Incoming messages larger than this are stored with their headers only (headers_only).",
        c"The size is checked (RFC822.SIZE, POP3 LIST) before the message is fetched.",
        &MAX_MESSAGE_SIZE,
        1,
        1024 * 1024,
        GucContext::Sighup,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"email_accounts.receive_max_backoff",
        c"Longest delay between sync attempts of an account whose server keeps failing.",
        c"After a failure the delay is the account's poll_interval, doubling with each further failure up to this.",
        &RECEIVE_MAX_BACKOFF,
        10,
        7 * 86_400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_bool_guc(
        c"email_accounts.imap_idle",
        c"Keep an IMAP IDLE connection on each IMAP account's first folder, so new mail is synced within moments.",
        c"Off: accounts are synced every poll_interval only.",
        &IMAP_IDLE,
        GucContext::Sighup,
        GucFlags::default(),
    );
}

fn register_sender() {
    GucRegistry::define_string_guc(
        c"email_accounts.public_base_url",
        c"Base URL under which the application serves /unsubscribe?token=… and /open?token=… for outgoing mail.",
        c"Accounts with send_unsubscribe_message or track_email_status get links only when this is set.",
        &PUBLIC_BASE_URL,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"email_accounts.batch_size",
        c"Outbox rows the sender claims and sends per batch.",
        c"",
        &BATCH_SIZE,
        1,
        100_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"email_accounts.smtp_connections",
        c"SMTP connections the sender uses in parallel (one per account at a time).",
        c"",
        &SMTP_CONNECTIONS,
        1,
        256,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"email_accounts.claim_on_insert",
        c"An outbox row inserted while a sender is idle is claimed for it by the inserting transaction.",
        c"Its commit makes the claim durable, so the sender needs no transaction of its own with a flush before sending: lower latency. The row reads 'sending' from its INSERT on.",
        &CLAIM_ON_INSERT,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"email_accounts.lease_duration",
        c"How long the sender's claim on outbox rows holds; after that another sender may take them again.",
        c"",
        &LEASE_DURATION,
        10,
        86_400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"email_accounts.routing_timeout",
        c"How long an account's append_to_table or on_receive_function code may run for one message.",
        c"Past it the code is cancelled, the error recorded on the message, and the receiver carries on.",
        &ROUTING_TIMEOUT,
        100,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"email_accounts.link_token_lifetime",
        c"How long unsubscribe and open-tracking links in outgoing mail stay valid.",
        c"rotate_link_signing_key() drops a key once every link it made has expired.",
        &LINK_TOKEN_LIFETIME,
        86_400,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"email_accounts.retry_base_delay",
        c"Delay before the first retry of a temporarily failed message; it doubles with each attempt, up to an hour, with 20% jitter.",
        c"",
        &RETRY_BASE_DELAY,
        1,
        3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"email_accounts.max_attempts",
        c"Delivery attempts before an outbox row is given up as failed.",
        c"",
        &MAX_ATTEMPTS,
        1,
        1000,
        GucContext::Sighup,
        GucFlags::default(),
    );
}

/// Whether the launcher serves the database of this name.
pub fn serves_database(name: &str) -> bool {
    let list = DATABASES.get().map(|list| list.to_string_lossy().into_owned()).unwrap_or_default();
    let old = DATABASE.get().map(|old| old.to_string_lossy().into_owned()).filter(|old| !old.trim().is_empty());
    match old {
        Some(old) if list.trim() == "*" => old.trim() == name,
        _ => database_listed(&list, name),
    }
}

/// `*` lists every database; otherwise the comma-separated names, exactly
/// (quotes around a name are allowed, as in other list settings).
fn database_listed(list: &str, name: &str) -> bool {
    list.split(',').map(|entry| entry.trim().trim_matches('"')).any(|entry| entry == "*" || entry == name)
}

pub fn senders() -> usize {
    (SENDERS.get().max(1) as usize).min(MAX_SENDERS)
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

pub fn batch_size() -> i64 {
    BATCH_SIZE.get().max(1) as i64
}

pub fn smtp_connections() -> usize {
    SMTP_CONNECTIONS.get().max(1) as usize
}

pub fn lease_duration_seconds() -> i32 {
    LEASE_DURATION.get().max(10)
}

pub fn routing_timeout_milliseconds() -> i32 {
    ROUTING_TIMEOUT.get().max(100)
}

pub fn link_token_lifetime_seconds() -> i64 {
    i64::from(LINK_TOKEN_LIFETIME.get().max(86_400))
}

pub fn max_attempts() -> i32 {
    MAX_ATTEMPTS.get().max(1)
}

pub fn public_base_url() -> Option<String> {
    PUBLIC_BASE_URL
        .get()
        .map(|url| url.to_string_lossy().trim_end_matches('/').to_owned())
        .filter(|url| !url.is_empty())
}

pub fn retry_base_delay_seconds() -> i32 {
    RETRY_BASE_DELAY.get().max(1)
}

pub fn receive_connections() -> usize {
    RECEIVE_CONNECTIONS.get().max(1) as usize
}

pub fn receive_batch_size() -> usize {
    RECEIVE_BATCH_SIZE.get().max(1) as usize
}

pub fn max_message_size_bytes() -> u64 {
    MAX_MESSAGE_SIZE.get().max(1) as u64 * 1024
}

pub fn receive_max_backoff_seconds() -> i32 {
    RECEIVE_MAX_BACKOFF.get().max(10)
}

pub fn claim_on_insert() -> bool {
    CLAIM_ON_INSERT.get()
}

pub fn imap_idle() -> bool {
    IMAP_IDLE.get()
}

/// Whether commits wait for synchronous standbys (PostgreSQL's
/// `synchronous_standby_names` is set).
pub fn synchronous_standbys() -> bool {
    // SAFETY: reads a setting's current value; the string is PostgreSQL's.
    let names = unsafe { pgrx::pg_sys::GetConfigOption(c"synchronous_standby_names".as_ptr(), true, false) };
    !names.is_null() && !unsafe { std::ffi::CStr::from_ptr(names) }.to_bytes().iter().all(u8::is_ascii_whitespace)
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::database_listed;
    use pgrx::prelude::*;

    #[pg_test]
    fn database_lists() {
        assert!(database_listed("*", "app"));
        assert!(database_listed("app, shop", "shop"));
        assert!(database_listed("\"App\"", "App"));
        assert!(!database_listed("app", "App"));
        assert!(!database_listed("", "app"));
    }
}

/// What `ALTER DATABASE … SET` (which a database owner may run) would change
/// about the workers' own sessions, put back: they run read-write, READ
/// COMMITTED, without statement or idle timeouts, and with the settings
/// every worker transaction runs with (the pinned search_path, lock_timeout,
/// jit), and our PL/pgSQL compiled as written, whatever the database says.
pub fn pin_worker_session() {
    let pinned: [(&std::ffi::CStr, &std::ffi::CStr); 9] = [
        // Off, a superuser's writes look like a restore to the triggers
        // (email_accounts.restoring()), and a database owner may set it.
        (c"row_security", c"on"),
        (c"default_transaction_read_only", c"off"),
        (c"default_transaction_isolation", c"read committed"),
        (c"default_transaction_deferrable", c"off"),
        (c"statement_timeout", c"0"),
        (c"idle_in_transaction_session_timeout", c"0"),
        // (extra_errors 'all', which a database owner may set, turns a
        // SELECT INTO that finds two rows, or a shadowed variable, into an
        // error; use_column, a superuser's, changes what a name means.)
        (c"plpgsql.extra_errors", c"none"),
        (c"plpgsql.extra_warnings", c"none"),
        (c"plpgsql.variable_conflict", c"error"),
    ];
    // (With the settings every transaction runs with: each then finds them so.)
    for (name, value) in pinned.into_iter().chain(crate::store::transaction::TRANSACTION_SETTINGS) {
        override_setting(name, value);
    }
}

/// Sets a setting for the rest of the worker's session, above whatever
/// `ALTER DATABASE … SET` or `ALTER ROLE … SET` say.
fn override_setting(name: &std::ffi::CStr, value: &std::ffi::CStr) {
    // SAFETY: NUL-terminated strings that outlive the call; valid values.
    unsafe {
        pgrx::pg_sys::SetConfigOption(
            name.as_ptr(),
            value.as_ptr(),
            pgrx::pg_sys::GucContext::PGC_SUSET,
            pgrx::pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
}

/// For the sender's session: plans that never read a whole table when an
/// index reaches the rows. Its statements all go through indexes and it runs
/// no code of a tenant's; a plan kept from a moment the outbox looked empty
/// (just after a purge or a VACUUM) read the whole outbox per statement once
/// rows came, and the two- and three-sender drains of make bench ran at
/// 831 and 584 msg/s instead of 7,115 and 6,511. (Where no index fits, a
/// whole index is walked instead: about the cost of the scan it replaces.)
/// No bitmap scans either: such a plan, kept from an outbox without
/// statistics, read each claimed row's recipients and attachments by a
/// bitmap scan and a sort, rebuilt per row (8.25 against 5.75 µs of CPU per
/// row). No statement over the outbox ORs two of its indexes (the rate
/// limits' count reads each of its parts through one index).
pub fn prefer_indexes() {
    override_setting(c"enable_seqscan", c"off");
    override_setting(c"enable_bitmapscan", c"off");
}
