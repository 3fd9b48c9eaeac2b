//! `ALTER EXTENSION email_accounts UPDATE` from every released version ends
//! in exactly the schema a fresh install has, and keeps the rows; the workers
//! of a new library wait for the update and then send what was queued. The
//! install script of each released version is kept in sql/released/ as pgrx
//! generated it then (`make install` installs them).
// Run by `make test-integration`; `cargo pgrx test` (feature pg_test) runs only the #[pg_test]s.
#![cfg(not(feature = "pg_test"))]

mod harness;

use harness::{add_account_without_login, wait_until, Behaviour, Postgres, SmtpResponder};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const RELEASED: &[&str] = &["0.1.0", "0.2.0", "0.3.0"];

/// `make install` put every released version's install script next to the
/// installed extension, so CREATE EXTENSION ... VERSION can install it.
fn assert_released_script_installed(version: &str) {
    let output = Command::new("/usr/lib/postgresql/15/bin/pg_config").arg("--sharedir").output().expect("pg_config");
    let share = String::from_utf8(output.stdout).expect("UTF-8 path").trim().to_owned();
    let name = format!("email_accounts--{version}.sql");
    let installed = std::fs::read(Path::new(&share).join("extension").join(&name))
        .unwrap_or_else(|error| panic!("{name} is not installed (make install copies sql/released/): {error}"));
    let released = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/released").join(&name)).unwrap();
    assert!(installed == released, "the installed {name} is not the released one");
}

fn describe(client: &mut postgres::Client) -> Vec<String> {
    let query = include_str!("upgrade/describe_schema.sql");
    client.query(query, &[]).unwrap().iter().map(|row| row.get(0)).collect()
}

/// A little of everything 0.1.0 had, written with 0.1.0's own rules.
const FILL_0_1_0: &str = "
INSERT INTO email_accounts.domain (domain_name, smtp_host, smtp_port, smtp_security, incoming_protocol, incoming_host,
                                   incoming_port, incoming_security)
VALUES ('example.test', 'mail.example.test', 587, 'starttls', 'imap', 'mail.example.test', 993, 'ssl');
CREATE ROLE upgrade_app;
INSERT INTO email_accounts.tenant_member VALUES ('upgrade_app', 'acme');
INSERT INTO email_accounts.account (name, tenant, address, enable_outgoing, enable_incoming, default_outgoing,
                                    enable_auto_reply, auto_reply_message, auto_reply_interval)
VALUES ('Acme', 'acme', 'acme@example.test', true, true, true, true, 'Thanks', '0'),
       ('Shared', NULL, 'shared@example.test', true, false, true, false, NULL, '7 days');
INSERT INTO email_accounts.account_secret (account_id, key_id, nonce, ciphertext)
SELECT account_id, 1, '\\x00', '\\x01' FROM email_accounts.account;
UPDATE email_accounts.account SET password_set_at = now();
INSERT INTO email_accounts.outbox (to_addresses, subject, account) VALUES ('{ann@example.test}', 'queued in 0.1.0', 'Acme');
INSERT INTO email_accounts.outbox_attachment (outbox_id, position, filename, content)
SELECT outbox_id, 1, 'a.txt', 'x' FROM email_accounts.outbox;
INSERT INTO email_accounts.suppression (tenant, address, outbox_id)
SELECT 'acme', 'ann@example.test', outbox_id FROM email_accounts.outbox;
INSERT INTO email_accounts.provider (name, description, smtp_host, smtp_port, smtp_security)
VALUES ('in_house', 'Our own', 'smtp.in-house.test', 465, 'ssl');
INSERT INTO email_accounts.message (account_id, tenant, folder, uidvalidity, uid, internet_message_id, subject, size, raw,
                                    raw_sha256)
SELECT account_id, 'acme', 'INBOX', 7, 1, '<m1@example.test>', 'hello', 3, 'raw', sha256('raw')
  FROM email_accounts.account WHERE name = 'Acme';
INSERT INTO email_accounts.message (account_id, tenant, folder, uidvalidity, uid, internet_message_id, subject, size, raw,
                                    raw_sha256, reply_to_message_id)
SELECT account_id, tenant, 'INBOX', 7, 2, '<m2@example.test>', 'Re: hello', 3, 'ra2', sha256('ra2'), message_id
  FROM email_accounts.message WHERE uid = 1;
INSERT INTO email_accounts.message_attachment (message_id, position, filename, content_type, size, content)
SELECT message_id, 1, 'p.jpg', 'image/jpeg', 1, 'y' FROM email_accounts.message WHERE uid = 1;
INSERT INTO email_accounts.sync_state (account_id, folder, uidvalidity, last_uid, messages_stored)
SELECT account_id, 'INBOX', 7, 2, 2 FROM email_accounts.account WHERE name = 'Acme';
";

#[test]
fn an_upgraded_database_equals_a_fresh_install_and_keeps_its_rows() {
    // No workers in the compared databases: nothing changes their rows meanwhile.
    let cluster = Postgres::start(&["email_accounts.databases = 'postgres'"]);
    let mut admin = cluster.connect("postgres");
    for version in RELEASED {
        assert_released_script_installed(version);
        let database = format!("upgraded_from_{}", version.replace('.', "_"));
        admin.batch_execute(&format!("CREATE DATABASE {database}")).unwrap();
        let mut upgraded = cluster.connect(&database);
        upgraded.batch_execute(&format!("CREATE EXTENSION email_accounts VERSION '{version}'")).unwrap();
        match *version {
            "0.1.0" => upgraded.batch_execute(FILL_0_1_0).unwrap(),
            _ => upgraded.batch_execute(include_str!("backup/fill.sql")).unwrap(),
        }
        let rows_before = row_counts(&mut upgraded);
        let empty: Vec<&String> = rows_before.iter().filter(|(_, rows)| *rows == 0).map(|(table, _)| table).collect();
        assert!(empty.is_empty(), "from {version}: the fill leaves no table empty: {empty:?}");
        upgraded.batch_execute("ALTER EXTENSION email_accounts UPDATE").unwrap();
        let installed: String = upgraded
            .query_one("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'email_accounts'", &[])
            .unwrap()
            .get(0);
        assert_eq!(installed, env!("CARGO_PKG_VERSION"));

        let fresh_database = format!("fresh_for_{}", version.replace('.', "_"));
        admin.batch_execute(&format!("CREATE DATABASE {fresh_database}")).unwrap();
        let mut fresh = cluster.connect(&fresh_database);
        fresh.batch_execute("CREATE EXTENSION email_accounts").unwrap();

        let (upgraded_facts, fresh_facts) = (describe(&mut upgraded), describe(&mut fresh));
        let only_upgraded: Vec<&String> = upgraded_facts.iter().filter(|fact| !fresh_facts.contains(fact)).collect();
        let only_fresh: Vec<&String> = fresh_facts.iter().filter(|fact| !upgraded_facts.contains(fact)).collect();
        assert!(
            only_upgraded.is_empty() && only_fresh.is_empty(),
            "from {version}:\n--- only after the upgrade:\n{}\n--- only in a fresh install:\n{}",
            only_upgraded.iter().map(|fact| fact.as_str()).collect::<Vec<_>>().join("\n"),
            only_fresh.iter().map(|fact| fact.as_str()).collect::<Vec<_>>().join("\n")
        );
        assert!(upgraded_facts.len() > 300, "{} facts", upgraded_facts.len());
        let rows_after: Vec<(String, i64)> = row_counts(&mut upgraded)
            .into_iter()
            .filter(|(table, _)| rows_before.iter().any(|(before, _)| before == table))
            .collect();
        // 0.4.0 keeps a password per side: each stored one now serves both.
        let expected: Vec<(String, i64)> = rows_before
            .iter()
            .map(|(table, rows)| (table.clone(), if table == "account_secret" { rows * 2 } else { *rows }))
            .collect();
        assert_eq!(rows_after, expected, "from {version}: every row is kept");
        let sides: Vec<(String, i64)> = upgraded
            .query("SELECT side, count(*) FROM email_accounts.account_secret GROUP BY side ORDER BY side", &[])
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let secrets = rows_before.iter().find(|(table, _)| table == "account_secret").map_or(0, |(_, rows)| *rows);
        assert_eq!(sides, [("incoming".to_owned(), secrets), ("smtp".to_owned(), secrets)], "from {version}");
        let unset: i64 = upgraded
            .query_one(
                "SELECT count(*) FROM email_accounts.account WHERE smtp_password_set_at IS DISTINCT FROM password_set_at",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(unset, 0, "from {version}: the SMTP side's password counts as set where the password was");
        if *version != "0.1.0" {
            // The row out for delivery (fill.sql's 'queued 5', claimed the old
            // way) keeps its claim in outbox_claim: back to queued with the
            // attempts before it, not due before the old lease lapses.
            let row = upgraded
                .query_one(
                    "SELECT outbox.status, outbox.attempts, claim.attempt, outbox.claim_token IS NULL,
                            outbox.next_attempt_at > now() + interval '4 minutes'
                       FROM email_accounts.outbox JOIN email_accounts.outbox_claim AS claim USING (outbox_id)
                      WHERE outbox.subject = 'queued 5'",
                    &[],
                )
                .unwrap();
            let moved: (String, i32, i32, bool, bool) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
            assert_eq!(moved, ("queued".to_owned(), 0, 1, true, true), "from {version}: the claim moved");
        }

        if *version == "0.1.0" {
            let row = upgraded
                .query_one(
                    "SELECT (SELECT count(*) FROM email_accounts.account),
                            (SELECT auto_reply_interval::text FROM email_accounts.account WHERE name = 'Acme'),
                            (SELECT count(*) FROM email_accounts.account_secret WHERE bound_servers IS NOT NULL),
                            (SELECT count(*) FROM email_accounts.outbox WHERE status = 'queued'),
                            (SELECT count(*) FROM email_accounts.tenant_member),
                            (SELECT count(*) FROM email_accounts.link_signing_key WHERE key_id = 1)",
                    &[],
                )
                .unwrap();
            let counts: (i64, String, i64, i64, i64, i64) =
                (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4), row.get(5));
            // ... (two passwords, one row per side each), and 0.1.0's link key
            // is key 1, so links in mail already sent keep working.
            assert_eq!(counts, (2, "01:00:00".to_owned(), 4, 1, 1, 1));
            // The passwords stored by 0.1.0 stay usable where they were set.
            let ready: i64 = upgraded
                .query_one("SELECT count(*) FROM email_accounts.account_settings WHERE ready_to_send", &[])
                .unwrap()
                .get(0);
            assert_eq!(ready, 2);
        }
    }
}

/// Rows in each table of the extension.
fn row_counts(client: &mut postgres::Client) -> Vec<(String, i64)> {
    let tables: Vec<String> = client
        .query("SELECT tablename::text FROM pg_catalog.pg_tables WHERE schemaname = 'email_accounts' ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    tables
        .into_iter()
        .map(|table| {
            let rows = client.query_one(&format!("SELECT count(*) FROM email_accounts.{table}"), &[]).unwrap().get(0);
            (table, rows)
        })
        .collect()
}

#[test]
fn the_workers_wait_for_the_update_then_send_what_was_queued_once() {
    let cluster = Postgres::start(&["email_accounts.fallback_poll_interval = '1h'"]);
    let server = SmtpResponder::start(None, Behaviour::Accept, true);
    let mut client = cluster.connect("postgres");
    // The workers' database is still at 0.1.0 while this library runs them.
    client.batch_execute("CREATE EXTENSION email_accounts VERSION '0.1.0'").unwrap();
    wait_until("both workers to wait for the update", Duration::from_secs(30), || {
        (cluster.server_log().matches("is waiting for ALTER EXTENSION email_accounts UPDATE").count() >= 2)
            .then_some(())
    });
    add_account_without_login(&mut client, "steady", server.port);
    client
        .batch_execute(
            "INSERT INTO email_accounts.outbox (account, to_addresses, subject)
             SELECT 'steady', ARRAY['to' || n || '@example.test'], 'queued before the update ' || n
               FROM generate_series(1, 50) AS n",
        )
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(server.distinct_messages(), 0, "nothing is sent with the old schema");

    // The update's commit wakes the workers.
    client.batch_execute("ALTER EXTENSION email_accounts UPDATE").unwrap();
    wait_until("the queued mail to be sent", Duration::from_secs(30), || {
        let sent: i64 =
            client.query_one("SELECT count(*) FROM email_accounts.outbox WHERE status = 'sent'", &[]).unwrap().get(0);
        (sent == 50).then_some(())
    });
    assert_eq!(server.distinct_messages(), 50);
    assert_eq!(server.duplicates(), 0);
}
