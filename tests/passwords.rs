//! Passwords stay out of `pg_stat_activity`, the server log and error
//! messages: when they are passed as bind parameters (with the server's
//! default logging settings), and while the workers use them (at
//! log_min_messages = debug5 with every statement logged).
// Run by `make test-integration`; `cargo pgrx test` (feature pg_test) runs only the #[pg_test]s.
#![cfg(not(feature = "pg_test"))]

mod harness;

use harness::{wait_until, MailServers, Postgres};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

    // Hold the key-ring lock (set_password's lock on account_secret, which
    // only its owner can take) so set_password waits in plain sight.
    let mut holder = cluster.connect("postgres");
    let mut holding = holder.transaction().unwrap();
    holding.batch_execute("LOCK TABLE email_accounts.account_secret IN SHARE UPDATE EXCLUSIVE MODE").unwrap();
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
    holding.commit().unwrap();
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
    // One row per side (set_password's default side is both).
    let stored: i64 = admin.query_one("SELECT count(*) FROM email_accounts.account_secret", &[]).unwrap().get(0);
    assert_eq!(stored, 2);
}

#[test]
fn passwords_stay_out_of_the_log_at_debug5_and_out_of_activity_while_the_workers_use_them() {
    const WRONG: &str = "Wrong-Battery-9931";
    let servers = MailServers::start();
    let cluster = Postgres::start(&[
        "email_accounts.fallback_poll_interval = '1h'",
        "email_accounts.imap_idle = off",
        "log_min_messages = debug5",
        "log_error_verbosity = verbose",
        "log_connections = on",
        "log_disconnections = on",
    ]);
    let mut admin = cluster.connect("postgres");
    admin.batch_execute("CREATE EXTENSION email_accounts").unwrap();
    servers.add_example_domain(&mut admin);
    let support = servers.user("support@example.test").password.clone();
    let inbox: Vec<(Vec<u8>, bool)> = (0..500)
        .map(|index| (format!("Subject: watched {index}\r\n\r\nbody {index}\r\n").into_bytes(), false))
        .collect();
    servers.append("support@example.test", "INBOX", &inbox);
    admin
        .batch_execute(
            "INSERT INTO email_accounts.account (name, address, enable_incoming, enable_outgoing, sync_option,
                                                 initial_sync_count, awaiting_password)
             VALUES ('Support', 'support@example.test', true, true, 'all', 1000, true),
                    ('Broken', 'bob@example.test', true, true, 'all', 1000, true);",
        )
        .unwrap();
    // Passwords are set before statement logging starts: PostgreSQL itself
    // logs every argument of every statement under log_statement = all (see README).
    admin.execute("SELECT email_accounts.set_password('Support', $1)", &[&support]).unwrap();
    admin.execute("SELECT email_accounts.set_password('Broken', $1)", &[&WRONG]).unwrap();
    admin.batch_execute("ALTER SYSTEM SET log_statement = 'all'").unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();

    // Watch every backend's current statement while the workers log in, sync and send.
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (watching, connection_string) = (watching.clone(), cluster.connection_string("postgres"));
        std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&connection_string, postgres::NoTls).unwrap();
            let mut seen: Vec<String> = Vec::new();
            while watching.load(Ordering::SeqCst) {
                for row in client.query("SELECT coalesce(query, '') FROM pg_stat_activity", &[]).unwrap() {
                    seen.push(row.get(0));
                }
            }
            seen
        })
    };
    for account in ["Support", "Broken"] {
        admin.query("SELECT * FROM email_accounts.sync_now($1)", &[&account]).unwrap();
    }
    let probe: String = admin.query_one("SELECT email_accounts.test_account('Broken')::text", &[]).unwrap().get(0);
    admin
        .execute(
            "INSERT INTO email_accounts.outbox (account, to_addresses, subject, body_text)
             SELECT account, ARRAY['alice@example.test'], 'watched ' || n, 'body' FROM generate_series(1, 200) AS n,
                    unnest(ARRAY['Support', 'Broken']) AS account",
            &[],
        )
        .unwrap();
    wait_until("the outbox to settle", Duration::from_secs(120), || {
        let waiting: i64 = admin
            .query_one("SELECT count(*) FROM email_accounts.outbox WHERE status IN ('queued', 'sending')", &[])
            .unwrap()
            .get(0);
        (waiting == 0).then_some(())
    });
    watching.store(false, Ordering::SeqCst);
    let activity = watcher.join().unwrap();

    let stored: i64 = admin
        .query_one(
            "SELECT count(*) FROM email_accounts.message JOIN email_accounts.account USING (account_id) WHERE name = 'Support'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(stored, 500, "the sync really ran");
    let sent: i64 =
        admin.query_one("SELECT count(*) FROM email_accounts.outbox WHERE status = 'sent'", &[]).unwrap().get(0);
    assert_eq!(sent, 200, "Support's mail went out; Broken's cannot log in");
    let errors: Vec<String> = admin
        .query(
            "SELECT coalesce(last_error, '') FROM email_accounts.outbox
             UNION ALL SELECT coalesce(last_error, '') FROM email_accounts.sync_state",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(errors.iter().any(|error| error.contains("auth") || error.contains("AUTH")), "{errors:?}");

    let log = cluster.server_log();
    assert!(log.contains("DEBUG:"), "debug5 is in effect");
    assert!(log.contains("LOG:  00000: execute "), "statements are logged");
    assert!(activity.len() > 100, "the activity view was watched ({} samples)", activity.len());
    for secret in [support.as_str(), WRONG] {
        assert!(!log.contains(secret), "the server log holds a password");
        assert!(!activity.iter().any(|query| query.contains(secret)), "pg_stat_activity showed a password");
        assert!(!errors.iter().any(|error| error.contains(secret)), "an error message holds a password");
        assert!(!probe.contains(secret), "test_account's answer holds a password");
    }
}
