//! `ALTER EXTENSION email_accounts UPDATE` from every released version ends
//! in exactly the schema a fresh install has, and keeps the rows. The install
//! script of each released version is kept in tests/upgrade/ as pgrx
//! generated it then.
// Run by `make test-integration`; `cargo pgrx test` (feature pg_test) runs only the #[pg_test]s.
#![cfg(not(feature = "pg_test"))]

mod harness;

use harness::Postgres;
use std::path::Path;
use std::process::Command;

const RELEASED: &[&str] = &["0.1.0"];

/// Puts a released version's install script next to the installed extension,
/// so CREATE EXTENSION ... VERSION can install it.
fn install_released_script(version: &str) {
    let output = Command::new("/usr/lib/postgresql/15/bin/pg_config").arg("--sharedir").output().expect("pg_config");
    let share = String::from_utf8(output.stdout).expect("UTF-8 path").trim().to_owned();
    let name = format!("email_accounts--{version}.sql");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upgrade").join(&name);
    std::fs::copy(&source, Path::new(&share).join("extension").join(&name))
        .unwrap_or_else(|error| panic!("cannot install {name}: {error}"));
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
";

#[test]
fn an_upgraded_database_equals_a_fresh_install_and_keeps_its_rows() {
    let cluster = Postgres::start(&[]);
    let mut admin = cluster.connect("postgres");
    for version in RELEASED {
        install_released_script(version);
        let database = format!("upgraded_from_{}", version.replace('.', "_"));
        admin.batch_execute(&format!("CREATE DATABASE {database}")).unwrap();
        let mut upgraded = cluster.connect(&database);
        upgraded.batch_execute(&format!("CREATE EXTENSION email_accounts VERSION '{version}'")).unwrap();
        if *version == "0.1.0" {
            upgraded.batch_execute(FILL_0_1_0).unwrap();
        }
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
            // ... and 0.1.0's link key is key 1, so links in mail already sent keep working.
            assert_eq!(counts, (2, "01:00:00".to_owned(), 2, 1, 1, 1));
            // The passwords stored by 0.1.0 stay usable where they were set.
            let ready: i64 = upgraded
                .query_one("SELECT count(*) FROM email_accounts.account_settings WHERE ready_to_send", &[])
                .unwrap()
                .get(0);
            assert_eq!(ready, 2);
        }
    }
}
