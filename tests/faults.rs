//! Faults on the SMTP side, each with a queue of 2,000 messages: afterwards
//! every row is `sent` (or failed with the server's words), and the server
//! side counts every Message-ID it accepted, so "nothing lost, nothing twice"
//! is asserted, not assumed. The misbehaving server is our own responder
//! (tests/harness/smtp_responder.rs): a real one will not fail on demand.
// Run by `make test-integration`; `cargo pgrx test` (feature pg_test) runs only the #[pg_test]s.
#![cfg(not(feature = "pg_test"))]

mod harness;

use harness::{free_port, Behaviour, Postgres, SmtpResponder};
use std::time::Duration;

const MESSAGES: i64 = 2000;
const LIMIT: Duration = Duration::from_secs(180);

fn cluster(settings: &[&str]) -> (Postgres, postgres::Client) {
    let mut all = vec!["email_accounts.fallback_poll_interval = '1h'"];
    all.extend_from_slice(settings);
    let cluster = Postgres::start(&all);
    let mut client = cluster.connect("postgres");
    client.batch_execute("CREATE EXTENSION email_accounts").unwrap();
    (cluster, client)
}

/// An outgoing account without authentication on 127.0.0.1:`port`.
fn account(client: &mut postgres::Client, name: &str, port: u16) {
    client
        .execute(
            "INSERT INTO email_accounts.account (name, address, enable_outgoing, smtp_host, smtp_port, smtp_security,
                                                 no_smtp_authentication)
             VALUES ($1, $1 || '@example.test', true, '127.0.0.1', $2, 'none', true)",
            &[&name, &i32::from(port)],
        )
        .unwrap();
}

/// `count` messages through `account` in one transaction; `recipients` is
/// SQL building the to-addresses from `n`.
fn queue(client: &mut postgres::Client, account: &str, count: i64, recipients: &str) {
    client
        .execute(
            &format!(
                "INSERT INTO email_accounts.outbox (account, to_addresses, subject, body_text)
                 SELECT $1, {recipients}, 'fault ' || n, 'message ' || n FROM generate_series(1, $2::bigint) AS n"
            ),
            &[&account, &count],
        )
        .unwrap();
}

fn count(client: &mut postgres::Client, condition: &str) -> i64 {
    client.query_one(&format!("SELECT count(*) FROM email_accounts.outbox WHERE {condition}"), &[]).unwrap().get(0)
}

/// Queues every row waiting to retry again now (the admin's `retry()`).
fn retry_all(client: &mut postgres::Client) {
    client
        .execute("SELECT email_accounts.retry(outbox_id) FROM email_accounts.outbox WHERE status = 'retry'", &[])
        .unwrap();
}

/// Waits until `expected` rows match; on giving up, says where the rows are.
fn wait_for_rows(client: &mut postgres::Client, what: &str, condition: &str, expected: i64) {
    let started = std::time::Instant::now();
    while count(client, condition) != expected {
        if started.elapsed() > LIMIT {
            let summary: Vec<(String, i64, Option<String>)> = client
                .query(
                    "SELECT status, count(*), min(last_error) FROM email_accounts.outbox GROUP BY status ORDER BY 1",
                    &[],
                )
                .unwrap()
                .iter()
                .map(|row| (row.get(0), row.get(1), row.get(2)))
                .collect();
            panic!("gave up waiting for {what}; rows by status: {summary:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_server_that_is_down_for_a_while_gets_every_message_once_when_it_is_back() {
    let (_cluster, mut client) = cluster(&[]);
    let port = free_port();
    account(&mut client, "flaky", port);
    queue(&mut client, "flaky", MESSAGES, "ARRAY['to' || n || '@example.test']");
    wait_for_rows(&mut client, "every row to wait for a retry", "status = 'retry'", MESSAGES);
    assert_eq!(count(&mut client, "last_error ILIKE '%connect%'"), MESSAGES, "the reason is recorded");

    let server = SmtpResponder::start(Some(port), Behaviour::Accept, true);
    retry_all(&mut client);
    wait_for_rows(&mut client, "every row to be sent", "status = 'sent'", MESSAGES);
    assert_eq!(server.distinct_messages(), MESSAGES as usize);
    assert_eq!(server.duplicates(), 0);
    assert_eq!(count(&mut client, "attempts = 2"), MESSAGES);
}

#[test]
fn recipients_a_server_rejects_fail_alone_with_and_without_pipelining() {
    for pipelining in [true, false] {
        let (_cluster, mut client) = cluster(&[]);
        let server = SmtpResponder::start(
            None,
            Behaviour::RefuseRecipients { matching: "unknown".into(), reply: "550 5.1.1 no such user".into() },
            pipelining,
        );
        account(&mut client, "mixed", server.port);
        queue(
            &mut client,
            "mixed",
            MESSAGES,
            "ARRAY['first' || n || '@example.test', 'unknown' || n || '@example.test', 'second' || n || '@example.test']",
        );
        wait_for_rows(&mut client, "every row to be sent", "status = 'sent'", MESSAGES);
        let failed: i64 = client
            .query_one(
                "SELECT count(*) FROM email_accounts.outbox_recipient
                  WHERE status = 'failed' AND address LIKE 'unknown%' AND reply LIKE '550 5.1.1 no such user%'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(failed, MESSAGES, "pipelining {pipelining}");
        let accepted: i64 = client
            .query_one("SELECT count(*) FROM email_accounts.outbox_recipient WHERE status = 'sent'", &[])
            .unwrap()
            .get(0);
        assert_eq!(accepted, 2 * MESSAGES);
        assert_eq!(server.distinct_messages(), MESSAGES as usize);
        assert_eq!(server.duplicates(), 0);
        let message_id: String = client
            .query_one("SELECT message_id FROM email_accounts.outbox ORDER BY outbox_id LIMIT 1", &[])
            .unwrap()
            .get(0);
        let mut recipients = server.recipients_of(&message_id);
        recipients.sort();
        assert_eq!(recipients, ["first1@example.test", "second1@example.test"]);
    }
}
