//! The integration-test harness: a throwaway PostgreSQL 15 cluster with the
//! extension preloaded, and real mail servers (Dovecot for IMAP/POP3/LMTP,
//! Postfix for SMTP) on 127.0.0.1, each on free ports with a per-run CA.
//! Everything is stopped and removed when the values are dropped, also when a
//! test panics. The servers are started by `scripts/services/*.sh`, which the
//! demo uses too.
#![allow(dead_code, unused_imports)] // each test binary uses a different part of it

mod mail_servers;
mod postgres;
mod proxy;
mod smtp_responder;
mod token_service;
mod wait;

pub use mail_servers::{MailServers, MailUser};
pub use postgres::Postgres;
pub use proxy::CuttingProxy;
pub use smtp_responder::{Behaviour, SmtpResponder};
pub use token_service::TokenService;
pub use wait::wait_until;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The condition that an outbox row is out for delivery: claimed on insert
/// (`sending` in the row), or by a sender's claim (`being_sent()`: a row
/// of outbox_claim; the outbox row keeps `queued` or `retry`).
pub const OUT_FOR_DELIVERY: &str = "(status = 'sending' OR email_accounts.being_sent(outbox_id))";

/// SQLSTATE and message of a statement that must fail (empty when it succeeded).
pub fn failure(client: &mut ::postgres::Client, statement: &str) -> (String, String) {
    match client.batch_execute(statement) {
        Ok(()) => (String::new(), String::new()),
        Err(error) => {
            let database = error.as_db_error().unwrap_or_else(|| panic!("{statement}: {error}"));
            (database.code().code().to_owned(), database.message().to_owned())
        }
    }
}

/// A port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

/// N different ports on 127.0.0.1 that nothing listens on right now, for
/// servers a script starts later. They come from below the kernel's
/// ephemeral range: a port the kernel handed out and took back could go to
/// a client connection of a test running in parallel before our server binds
/// it (CI once saw "could not bind 127.0.0.1: Address already in use" from
/// PostgreSQL). A per-process counter starting at a place chosen by the
/// process id keeps parallel tests, and test binaries run side by side, apart;
/// each candidate is checked by binding it.
pub fn free_ports<const N: usize>() -> [u16; N] {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOWEST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let highest = ephemeral_range_start().saturating_sub(1).max(LOWEST + 1_000);
    let span = highest - LOWEST;
    let _ = NEXT.compare_exchange(0, 1 + (std::process::id() * 211) % span, Ordering::SeqCst, Ordering::SeqCst);
    let mut held: Vec<TcpListener> = Vec::with_capacity(N);
    for _ in 0..span {
        if held.len() == N {
            break;
        }
        let port = LOWEST + NEXT.fetch_add(1, Ordering::SeqCst) % span;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port as u16)) {
            held.push(listener);
        }
    }
    assert_eq!(held.len(), N, "no {N} free ports on 127.0.0.1 between {LOWEST} and {highest}");
    std::array::from_fn(|index| held[index].local_addr().expect("a bound address").port())
}

/// The first port the kernel gives to outgoing connections (32768 unless
/// configured otherwise).
fn ephemeral_range_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A directory for one run's servers that the `postgres` and `mail` users can
/// enter (a plain temp dir is root-only).
pub fn run_directory(label: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix(&format!("email_accounts-{label}-"))
        .tempdir()
        .expect("cannot create a temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
    dir
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services").join(name)
}

/// Runs one of the service scripts and panics with its output if it fails.
fn run_script(name: &str, arguments: &[&str]) {
    let output = Command::new("bash")
        .arg(script(name))
        .args(arguments)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {name}: {error}"));
    assert!(
        output.status.success(),
        "{name} {arguments:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A throwaway CA and certificates it signs in `directory` (see
/// scripts/services/certificates.sh): ca.pem, server.pem/.key for
/// localhost and 127.0.0.1, elsewhere.pem/.key for another name.
pub fn make_certificates(directory: &Path) {
    run_script("certificates.sh", &[&directory.to_string_lossy()]);
}

/// Sequential plus index scans of these tables of the extension so far: a
/// worker's statements show up here, so an idle worker's count stands still.
pub fn table_scans(client: &mut ::postgres::Client, tables: &[&str]) -> i64 {
    client
        .query_one(
            "SELECT coalesce(sum(coalesce(seq_scan, 0) + coalesce(idx_scan, 0)), 0)::bigint FROM pg_stat_user_tables
              WHERE schemaname = 'email_accounts' AND relname = ANY ($1)",
            &[&tables],
        )
        .unwrap()
        .get(0)
}

/// Times a worker woke because its fallback poll interval passed.
pub fn worker_timeouts(client: &mut ::postgres::Client, role: &str) -> i64 {
    client.query_one("SELECT timeouts FROM email_accounts.worker_status() WHERE role = $1", &[&role]).unwrap().get(0)
}

/// An outgoing account `name` (address `name@example.test`) that sends
/// without authentication to 127.0.0.1:`port` (our SMTP responder).
pub fn add_account_without_login(client: &mut ::postgres::Client, name: &str, port: u16) {
    client
        .execute(
            "INSERT INTO email_accounts.account (name, address, enable_outgoing, smtp_host, smtp_port, smtp_security,
                                                 no_smtp_authentication)
             VALUES ($1, $1 || '@example.test', true, '127.0.0.1', $2, 'none', true)",
            &[&name, &i32::from(port)],
        )
        .expect("INSERT INTO email_accounts.account");
}

/// This database's workers whose state (worker_status()) is LIKE `state`.
pub fn workers_here(client: &mut ::postgres::Client, state: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM email_accounts.worker_status() WHERE database = current_database() AND state LIKE $1",
            &[&state],
        )
        .unwrap()
        .get(0)
}

/// Waits until both workers of the client's database hold off as a copy of another database.
pub fn wait_until_held_as_copy(client: &mut ::postgres::Client) {
    wait_until("the copy's workers to hold off", std::time::Duration::from_secs(60), || {
        (workers_here(client, "held: a copy%") == 2).then_some(())
    });
}
