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

/// A port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

/// N different ports on 127.0.0.1 that nothing listens on right now. All are
/// held open until all are chosen: ports taken one after another could come
/// back twice (CI once gave Postfix's smtps and LMTP the same one).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> =
        (0..N).map(|_| TcpListener::bind("127.0.0.1:0").expect("no free port on 127.0.0.1")).collect();
    std::array::from_fn(|index| listeners[index].local_addr().expect("a bound address").port())
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
