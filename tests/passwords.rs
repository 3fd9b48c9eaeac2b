//! Passwords stay out of `pg_stat_activity`, the server log and error
//! messages when they are passed as bind parameters (with the server's
//! default logging settings).
// Run by `make test-integration`; `cargo pgrx test` (feature pg_test) runs only the #[pg_test]s.
#![cfg(not(feature = "pg_test"))]

mod harness;

use harness::{wait_until, Postgres};
use std::time::Duration;

/// The advisory lock set_password takes while it reads and writes the key file.
const KEY_RING_LOCK: i64 = 0x6561_6b72;
const PASSWORD: &str = "Correct-Horse-4417";

#[test]
fn passwords_never_show_in_activity_logs_or_errors() {
    let cluster = Postgres::start(&["log_min_error_statement = error", "log_error_verbosity = verbose"]);
    let mut admin = cluster.connect("postgres");
    admin
        .batch_execute(
            "CREATE EXTENSION email_accounts;
             INSERT INTO email_accounts.account (name, address, provider, enable_outgoing, ascii_encode_password)
             VALUES ('watched', 'watched@gmail.com', 'gmail', true, true);",
        )
        .unwrap();

    // Hold the key-ring lock so set_password waits in plain sight.
    admin.execute("SELECT pg_advisory_lock($1)", &[&KEY_RING_LOCK]).unwrap();
    let connection_string = cluster.connection_string("postgres");
    let setter = std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&connection_string, postgres::NoTls).unwrap();
        client.execute("SELECT email_accounts.set_password($1, $2)", &[&"watched", &PASSWORD]).unwrap();
    });
    let activity: String = wait_until("set_password to wait for the key-ring lock", Duration::from_secs(30), || {
        admin
            .query_opt(
                "SELECT query FROM pg_stat_activity WHERE query LIKE '%set_password%' AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .map(|row| row.get(0))
    });
    assert_eq!(activity, "SELECT email_accounts.set_password($1, $2)");
    admin.execute("SELECT pg_advisory_unlock($1)", &[&KEY_RING_LOCK]).unwrap();
    setter.join().unwrap();

    // A refused password (non-ASCII with ascii_encode_password) is not echoed.
    let refused = format!("{PASSWORD}-ü");
    let error = admin.execute("SELECT email_accounts.set_password($1, $2)", &[&"watched", &refused]).unwrap_err();
    let database_error = error.as_db_error().unwrap();
    assert_eq!(database_error.code().code(), "22021");
    assert!(!format!("{database_error:?}").contains(PASSWORD));

    let log = cluster.server_log();
    assert!(log.contains("must be ASCII"), "the refusal is logged: {log}");
    assert!(!log.contains(PASSWORD), "the server log holds the password:\n{log}");
    let stored: i64 = admin.query_one("SELECT count(*) FROM email_accounts.account_secret", &[]).unwrap().get(0);
    assert_eq!(stored, 1);
}
