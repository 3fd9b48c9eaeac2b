//! The inbox end to end: the receiver worker syncs real Dovecot mailboxes
//! over IMAP and POP3 into tables — incrementally, exactly once, without
//! touching \Seen — links replies, creates application rows and answers
//! automatically under RFC 3834.
// Run by `make test-integration`; `cargo pgrx test` (feature pg_test) runs only the #[pg_test]s.
#![cfg(not(feature = "pg_test"))]

mod harness;

use harness::{wait_until, CuttingProxy, MailServers, Postgres};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

struct Setup {
    servers: MailServers,
    cluster: Postgres,
    client: postgres::Client,
}

/// Servers, a cluster whose workers are only woken (never poll), and the
/// example.test domain pointing at Dovecot (IMAPS, POP3S) and Postfix.
fn setup(settings: &[&str]) -> Setup {
    let servers = MailServers::start();
    let mut all = vec!["email_accounts.fallback_poll_interval = '1h'", "email_accounts.imap_idle = off"];
    all.extend_from_slice(settings);
    let cluster = Postgres::start(&all);
    let mut client = cluster.connect("postgres");
    client.batch_execute("CREATE EXTENSION email_accounts").unwrap();
    client
        .execute(
            &format!(
                "INSERT INTO email_accounts.domain (domain_name, incoming_protocol, incoming_host, incoming_port,
                     incoming_security, smtp_host, smtp_port, smtp_security, extra_ca_certificate)
                 VALUES ('example.test', 'imap', 'localhost', {}, 'ssl', 'localhost', {}, 'starttls', $1)",
                servers.imaps, servers.smtp
            ),
            &[&servers.ca_pem()],
        )
        .unwrap();
    Setup { servers, cluster, client }
}

impl Setup {
    /// An incoming account for a harness mailbox; `settings` are extra column = value pairs.
    fn account(&mut self, name: &str, address: &str, settings: &str) {
        let extra = if settings.is_empty() { String::new() } else { format!(", {settings}") };
        self.client
            .batch_execute(&format!(
                "INSERT INTO email_accounts.account (name, address, enable_incoming, poll_interval, awaiting_password)
                 VALUES ('{name}', '{address}', true, '1 hour', true);
                 UPDATE email_accounts.account SET awaiting_password = true{extra} WHERE name = '{name}';"
            ))
            .unwrap();
        let password = self.servers.user(address).password.clone();
        self.client.execute("SELECT email_accounts.set_password($1, $2)", &[&name, &password]).unwrap();
    }

    /// sync_now(): (folder, new messages, state, error) per folder.
    fn sync_now(&mut self, name: &str) -> Vec<(String, i32, String, Option<String>)> {
        self.client
            .query("SELECT folder, new_messages, state, error FROM email_accounts.sync_now($1)", &[&name])
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
            .collect()
    }

    fn count(&mut self, query: &str) -> i64 {
        self.client.query_one(query, &[]).unwrap().get(0)
    }

    fn subjects(&mut self, account: &str) -> Vec<String> {
        self.client
            .query(
                "SELECT subject FROM email_accounts.message JOIN email_accounts.account USING (account_id)
                  WHERE account.name = $1 ORDER BY subject",
                &[&account],
            )
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    }
}

/// A small message with a Message-ID and `extra` header lines.
fn message(subject: &str, extra: &str) -> Vec<u8> {
    let id = subject.replace(' ', ".");
    format!(
        "From: Bob <bob@example.test>\r\nTo: support@example.test\r\nSubject: {subject}\r\n\
         Message-ID: <{id}@example.test>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n{extra}\r\nBody of {subject}.\r\n"
    )
    .into_bytes()
}

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<(Vec<u8>, bool)> {
    range.map(|index| (message(&format!("{prefix} {index:03}"), ""), false)).collect()
}

#[test]
fn imap_sync_is_incremental_across_restarts_and_never_changes_seen() {
    let mut setup = setup(&[]);
    let mut first = numbered("first", 0..5);
    first[1].1 = true;
    setup.servers.append("support@example.test", "INBOX", &first);
    let flags_before = setup.servers.folder_flags("support@example.test", "INBOX");
    setup.account("Support", "support@example.test", "sync_option = 'all'");

    let result = setup.sync_now("Support");
    assert_eq!(result.len(), 1, "{result:?}");
    assert_eq!(result[0].2, "ok", "{result:?}");
    assert_eq!(setup.count("SELECT count(*) FROM email_accounts.message"), 5);
    assert_eq!(setup.count("SELECT count(*) FROM email_accounts.message WHERE seen"), 1);
    assert_eq!(setup.servers.folder_flags("support@example.test", "INBOX"), flags_before, "\\Seen must not change");

    // More mail while the server restarts: the cursor is in the database.
    setup.servers.append("support@example.test", "INBOX", &numbered("second", 0..3));
    setup.cluster.stop("fast");
    setup.cluster.start_again();
    setup.client = setup.cluster.connect_when_ready("postgres");
    wait_until("the receiver to run again", LIMIT, || {
        let state: String = setup
            .client
            .query_one("SELECT state FROM email_accounts.worker_status() WHERE role = 'receiver'", &[])
            .ok()?
            .get(0);
        (state == "idle").then_some(())
    });
    setup.sync_now("Support");
    let subjects = setup.subjects("Support");
    assert_eq!(subjects.len(), 8, "{subjects:?}");
    assert_eq!(setup.count("SELECT count(DISTINCT uid) FROM email_accounts.message"), 8);
    assert_eq!(setup.count("SELECT last_uid FROM email_accounts.sync_state"), 8);
    let again = setup.sync_now("Support");
    assert_eq!(again[0].1, 0, "nothing new: {again:?}");
    assert_eq!(setup.count("SELECT count(*) FROM email_accounts.message"), 8);
    assert_eq!(setup.servers.folder_flags("support@example.test", "INBOX").iter().filter(|(_, seen)| *seen).count(), 1);
}
