//! Faults on the SMTP side, each with a queue of 2,000 messages: afterwards
//! every row is `sent` (or failed with the server's words), and the server
//! side counts every Message-ID it accepted, so "nothing lost, nothing twice"
//! is asserted, not assumed. The misbehaving server is our own responder
//! (tests/harness/smtp_responder.rs): a real one will not fail on demand.
// Run by `make test-integration`; `cargo pgrx test` (feature pg_test) runs only the #[pg_test]s.
#![cfg(not(feature = "pg_test"))]

mod harness;

use harness::{
    add_account_without_login, free_port, make_certificates, Behaviour, Postgres, SmtpResponder, OUT_FOR_DELIVERY,
};
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
    add_account_without_login(&mut client, "flaky", port);
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
        add_account_without_login(&mut client, "mixed", server.port);
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

#[test]
fn temporary_refusals_and_421_are_retried_and_every_message_arrives_once() {
    let (_cluster, mut client) = cluster(&[]);
    let server = SmtpResponder::start(None, Behaviour::RefuseMail("451 4.3.0 try again later".into()), true);
    add_account_without_login(&mut client, "busy", server.port);
    queue(&mut client, "busy", MESSAGES, "ARRAY['to' || n || '@example.test']");
    wait_for_rows(&mut client, "every row to wait for a retry", "status = 'retry'", MESSAGES);
    assert_eq!(count(&mut client, "last_error LIKE '%451 4.3.0 try again later%'"), MESSAGES);

    // 421 closes the connection after its reply: the rest of the round
    // waits for the next connection, which gets 421 again.
    server.set(Behaviour::RefuseMail("421 4.3.2 shutting down".into()));
    retry_all(&mut client);
    wait_for_rows(&mut client, "every row to wait for a retry again", "status = 'retry' AND attempts = 2", MESSAGES);
    assert!(count(&mut client, "last_error LIKE '%421 4.3.2%'") > 0, "some rows carry the 421");
    assert_eq!(server.distinct_messages(), 0);

    server.set(Behaviour::Accept);
    retry_all(&mut client);
    wait_for_rows(&mut client, "every row to be sent", "status = 'sent'", MESSAGES);
    assert_eq!(server.distinct_messages(), MESSAGES as usize);
    assert_eq!(server.duplicates(), 0);
}

#[test]
fn a_server_that_never_answers_holds_up_only_its_own_account() {
    // The silent server holds its connection for the whole timeout.
    let (_cluster, mut client) = cluster(&["email_accounts.connect_timeout = '40s'"]);
    let silent = SmtpResponder::start(None, Behaviour::Silent, true);
    let healthy = SmtpResponder::start(None, Behaviour::Accept, true);
    add_account_without_login(&mut client, "silent", silent.port);
    add_account_without_login(&mut client, "healthy", healthy.port);
    queue(&mut client, "silent", 20, "ARRAY['to' || n || '@example.test']");
    queue(&mut client, "healthy", MESSAGES, "ARRAY['to' || n || '@example.test']");
    wait_for_rows(&mut client, "the healthy account's rows to be sent", "status = 'sent'", MESSAGES);
    assert_eq!(
        count(
            &mut client,
            &format!("account_id = (SELECT account_id FROM email_accounts.account WHERE name = 'silent') AND {OUT_FOR_DELIVERY}")
        ),
        20,
        "the silent account's rows are still on the wire"
    );
    assert_eq!(healthy.distinct_messages(), MESSAGES as usize);

    // New mail for the healthy account still goes out at once.
    queue(&mut client, "healthy", 1, "ARRAY['late@example.test']");
    wait_for_rows(&mut client, "the late message to be sent", "status = 'sent'", MESSAGES + 1);

    // After the timeout the silent account's rows wait for a retry, with the reason.
    wait_for_rows(&mut client, "the silent rows to time out", "status = 'retry'", 20);
    assert_eq!(count(&mut client, "status = 'retry' AND last_error ILIKE '%timed out%'"), 20);
    assert_eq!(silent.distinct_messages(), 0);

    silent.set(Behaviour::Accept);
    retry_all(&mut client);
    wait_for_rows(&mut client, "every row to be sent", "status = 'sent'", MESSAGES + 21);
    assert_eq!(silent.distinct_messages(), 20);
    assert_eq!(silent.duplicates() + healthy.duplicates(), 0);
}

/// A row claimed on insert keeps no token when its sender takes it: the
/// worker board lists it as taken. While the server holds it, cancel()
/// refuses it (the mail may be going out), and when the sender is stopped
/// with it still on the wire it is not given back uncounted: the next
/// sender takes it back with its attempt counted, and claims it again.
#[test]
fn a_row_taken_on_insert_is_not_cancelled_while_it_is_out() {
    // (The server holds the connection longer than a stopping sender waits.)
    let (_cluster, mut client) =
        cluster(&["email_accounts.claim_on_insert = on", "email_accounts.connect_timeout = '30s'"]);
    let silent = SmtpResponder::start(None, Behaviour::Silent, true);
    add_account_without_login(&mut client, "silent", silent.port);
    let started = std::time::Instant::now();
    let id: i64 = loop {
        assert!(started.elapsed() < LIMIT, "no row was claimed on insert");
        let mut transaction = client.transaction().unwrap();
        let id: i64 = transaction
            .query_one(
                "INSERT INTO email_accounts.outbox (account, to_addresses, subject, body_text)
                 VALUES ('silent', '{held@example.test}', 'held', 'held') RETURNING outbox_id",
                &[],
            )
            .unwrap()
            .get(0);
        let claimed: bool = transaction
            .query_one("SELECT status = 'sending' FROM email_accounts.outbox WHERE outbox_id = $1", &[&id])
            .unwrap()
            .get(0);
        if claimed {
            transaction.commit().unwrap();
            break id;
        }
        // (The sender was busy looking; it takes new mail again in a moment.)
        transaction.rollback().unwrap();
        std::thread::sleep(Duration::from_millis(100));
    };
    let never_taken = |client: &mut postgres::Client| -> bool {
        client
            .query_one(
                "SELECT email_accounts.claim_never_taken(sender_process_id, sender_started_at, outbox_id)
                   FROM email_accounts.outbox WHERE outbox_id = $1",
                &[&id],
            )
            .unwrap()
            .get::<_, Option<bool>>(0)
            .unwrap_or(false)
    };
    let started = std::time::Instant::now();
    while never_taken(&mut client) {
        assert!(started.elapsed() < LIMIT, "the sender never took the row");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Taken is not yet on the wire: a round waiting for its delivery thread
    // is handed back uncounted when the sender stops (it never went out).
    // On the wire once the server has the connection.
    let started = std::time::Instant::now();
    while silent.connections() == 0 {
        assert!(started.elapsed() < LIMIT, "the sender never connected");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, token): (String, bool) = client
        .query_one("SELECT status, claim_token IS NOT NULL FROM email_accounts.outbox WHERE outbox_id = $1", &[&id])
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    assert_eq!((status.as_str(), token), ("sending", false), "taken on the wire, without a token");
    let cancelled: bool = client.query_one("SELECT email_accounts.cancel($1)", &[&id]).unwrap().get(0);
    assert!(!cancelled, "a row on the wire is not cancelled");
    assert_eq!(count(&mut client, &format!("outbox_id = {id} AND status = 'sending'")), 1);

    // Stopped with the row on the wire, the sender leaves it listed; the
    // next sender takes it back counted (it may have gone out) and claims
    // it again: its second attempt. (Given back uncounted, it would be on
    // its first again.)
    client
        .execute("SELECT pg_terminate_backend(pid) FROM email_accounts.worker_status() WHERE role = 'sender'", &[])
        .unwrap();
    wait_for_rows(
        &mut client,
        "the row to be claimed again, counted",
        // (Claimed by the claim: the attempt is the claim's until recorded.)
        &format!(
            "outbox_id = {id} AND attempts = 1
             AND EXISTS (SELECT FROM email_accounts.outbox_claim WHERE outbox_id = {id} AND attempt = 2)"
        ),
        1,
    );
    let last_error: String =
        client.query_one("SELECT last_error FROM email_accounts.outbox WHERE outbox_id = $1", &[&id]).unwrap().get(0);
    assert!(last_error.contains("stopped before it recorded"), "{last_error}");
    assert_eq!(silent.distinct_messages(), 0);
}

/// An outgoing account on 127.0.0.1:`port` with this security, a login and
/// password, and optionally an extra CA to trust.
fn secured_account(client: &mut postgres::Client, name: &str, port: u16, security: &str, ca: Option<&str>) {
    client
        .execute(
            "INSERT INTO email_accounts.account (name, address, enable_outgoing, smtp_host, smtp_port, smtp_security,
                                                 extra_ca_certificate)
             VALUES ($1, $1 || '@example.test', true, '127.0.0.1', $2, $3, $4)",
            &[&name, &i32::from(port), &security, &ca],
        )
        .unwrap();
    client.execute("SELECT email_accounts.set_password($1, 'secret-of-' || $1)", &[&name]).unwrap();
}

fn rows_of(account: &str, condition: &str) -> String {
    format!("account_id = (SELECT account_id FROM email_accounts.account WHERE name = '{account}') AND {condition}")
}

#[test]
fn a_certificate_that_is_not_trusted_or_does_not_match_and_a_stripped_starttls_send_nothing() {
    let certificates = tempfile::tempdir().unwrap();
    make_certificates(certificates.path());
    let read = |name: &str| std::fs::read(certificates.path().join(name)).unwrap();
    let ca = String::from_utf8(read("ca.pem")).unwrap();
    // One attempt: every row ends `failed` with its reason.
    let (_cluster, mut client) = cluster(&["email_accounts.max_attempts = 1"]);
    // Signed by a CA the account does not trust.
    let untrusted = SmtpResponder::start_implicit_tls(Behaviour::Accept, &read("server.pem"), &read("server.key"));
    secured_account(&mut client, "untrusted", untrusted.port, "ssl", None);
    // Trusted CA, but the certificate names another host.
    let elsewhere =
        SmtpResponder::start_implicit_tls(Behaviour::Accept, &read("elsewhere.pem"), &read("elsewhere.key"));
    secured_account(&mut client, "mismatch", elsewhere.port, "ssl", Some(&ca));
    // A man in the middle that removes STARTTLS from the server's EHLO.
    let stripped = SmtpResponder::start(None, Behaviour::Accept, true);
    secured_account(&mut client, "stripped", stripped.port, "starttls", None);
    for account in ["untrusted", "mismatch", "stripped"] {
        queue(&mut client, account, MESSAGES, "ARRAY['to' || n || '@example.test']");
    }
    wait_for_rows(&mut client, "every row to fail", "status = 'failed'", 3 * MESSAGES);

    // Each fails with the reason; the TLS servers never got past the handshake.
    assert_eq!(count(&mut client, &rows_of("untrusted", "last_error ILIKE '%certificate verify failed%'")), MESSAGES);
    assert_eq!(count(&mut client, &rows_of("mismatch", "last_error ILIKE '%certificate verify failed%'")), MESSAGES);
    assert_eq!(count(&mut client, &rows_of("stripped", "last_error LIKE '%does not offer STARTTLS%'")), MESSAGES);
    for server in [&untrusted, &elsewhere] {
        assert!(server.failed_handshakes() > 0);
        assert!(server.verbs().is_empty(), "no command reached a server whose certificate was refused");
    }
    // Over the stripped connection: EHLO and nothing after it (no AUTH, no MAIL).
    let verbs = stripped.verbs();
    assert!(!verbs.is_empty() && verbs.iter().all(|verb| verb == "EHLO" || verb == "QUIT"), "{verbs:?}");
    assert_eq!(untrusted.distinct_messages() + elsewhere.distinct_messages() + stripped.distinct_messages(), 0);

    // Trusting the CA mends the first account: every message once. A new CA
    // is a change of servers, so the password is given again with it.
    let mut mend = client.transaction().unwrap();
    mend.execute("UPDATE email_accounts.account SET extra_ca_certificate = $1 WHERE name = 'untrusted'", &[&ca])
        .unwrap();
    mend.execute("SELECT email_accounts.set_password('untrusted', 'secret-of-untrusted')", &[]).unwrap();
    mend.commit().unwrap();
    client
        .execute(
            &format!(
                "SELECT email_accounts.retry(outbox_id) FROM email_accounts.outbox WHERE {}",
                rows_of("untrusted", "true")
            ),
            &[],
        )
        .unwrap();
    wait_for_rows(&mut client, "the mended account's rows to be sent", "status = 'sent'", MESSAGES);
    assert_eq!(untrusted.distinct_messages(), MESSAGES as usize);
    assert_eq!(untrusted.duplicates(), 0);
}

/// Waits (checking often, so a fault lands mid-batch) until `at_least` rows are sent.
fn until_sent(client: &mut postgres::Client, at_least: i64) {
    let started = std::time::Instant::now();
    while count(client, "status = 'sent'") < at_least {
        assert!(started.elapsed() < LIMIT, "gave up waiting for {at_least} rows to be sent");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The sender's process id from the board.
fn sender_pid(client: &mut postgres::Client) -> Result<Option<i32>, postgres::Error> {
    client.query_one("SELECT pid FROM email_accounts.worker_status() WHERE role = 'sender'", &[])?.try_get(0)
}

#[test]
fn a_crash_mid_batch_loses_nothing_and_repeats_at_most_the_round_on_the_wire() {
    const BATCH: i64 = 200;
    for crash in ["SIGKILL of the sender", "pg_ctl stop -m immediate"] {
        // A short lease, so rows the dead sender held are taken again soon.
        let (cluster, mut client) =
            cluster(&["email_accounts.lease_duration = '10s'", &format!("email_accounts.batch_size = {BATCH}")]);
        let server = SmtpResponder::start(None, Behaviour::AcceptSlowly(2), true);
        add_account_without_login(&mut client, "steady", server.port);
        queue(&mut client, "steady", MESSAGES, "ARRAY['to' || n || '@example.test']");
        until_sent(&mut client, 300);

        let before = sender_pid(&mut client).unwrap().unwrap();
        let in_flight = count(&mut client, OUT_FOR_DELIVERY);
        if crash.starts_with("SIGKILL") {
            let killed = std::process::Command::new("kill").args(["-KILL", &before.to_string()]).status().unwrap();
            assert!(killed.success());
        } else {
            cluster.stop("immediate");
            cluster.start_again();
        }
        let (mut client, _) =
            cluster.reconnect_until("a new sender", |client| Ok(sender_pid(client)?.filter(|pid| *pid != before)));
        wait_for_rows(&mut client, "every row to be sent after the crash", "status = 'sent'", MESSAGES);
        assert_eq!(server.distinct_messages(), MESSAGES as usize, "{crash}: nothing lost");
        // Only messages the server accepted whose 250 never got recorded go
        // out again: at most the one account's round that was on the wire.
        let duplicates = server.duplicates();
        assert!(duplicates as i64 <= BATCH.min(in_flight), "{crash}: {duplicates} duplicates, {in_flight} in flight");
        eprintln!(
            "{crash}: {MESSAGES} messages, {in_flight} rows claimed just before the crash, {duplicates} sent twice"
        );
    }
}

#[test]
fn dropping_another_database_mid_batch_neither_waits_for_nor_disturbs_the_workers() {
    let (cluster, mut client) = cluster(&[]);
    let server = SmtpResponder::start(None, Behaviour::AcceptSlowly(2), true);
    add_account_without_login(&mut client, "steady", server.port);
    queue(&mut client, "steady", MESSAGES, "ARRAY['to' || n || '@example.test']");
    let before = sender_pid(&mut client).unwrap().unwrap();
    // CREATE and DROP DATABASE wait for every backend to absorb a barrier:
    // a worker busy sending must still answer it.
    client.batch_execute("CREATE DATABASE other").unwrap();
    let mut other = cluster.connect("other");
    other.batch_execute("CREATE TABLE keep (n int)").unwrap();
    drop(other);
    assert!(count(&mut client, "status IN ('queued', 'sending')") > 0, "the drop lands mid-batch");
    client.batch_execute("DROP DATABASE other").unwrap();
    wait_for_rows(&mut client, "every row to be sent", "status = 'sent'", MESSAGES);
    assert_eq!(sender_pid(&mut client).unwrap(), Some(before), "the same sender throughout");
    assert_eq!(server.distinct_messages(), MESSAGES as usize);
    assert_eq!(server.duplicates(), 0);
}

#[test]
fn drop_extension_mid_batch_then_create_it_again_and_the_sender_carries_on() {
    let (_cluster, mut client) = cluster(&[]);
    let server = SmtpResponder::start(None, Behaviour::AcceptSlowly(2), true);
    add_account_without_login(&mut client, "steady", server.port);
    queue(&mut client, "steady", MESSAGES, "ARRAY['first' || n || '@example.test']");
    until_sent(&mut client, 100);
    let before = sender_pid(&mut client).unwrap().unwrap();
    // The DBA drops the extension, queue and all, while a round is on the
    // wire: the worker yields its locks and leaves, losing nothing it still holds.
    client.batch_execute("DROP EXTENSION email_accounts CASCADE").unwrap();
    let delivered_before_drop = server.distinct_messages();
    assert!(delivered_before_drop < MESSAGES as usize, "the drop landed mid-batch");
    client.batch_execute("CREATE EXTENSION email_accounts").unwrap();
    add_account_without_login(&mut client, "steady", server.port);
    queue(&mut client, "steady", MESSAGES, "ARRAY['second' || n || '@example.test']");
    wait_for_rows(&mut client, "the new queue to be sent", "status = 'sent'", MESSAGES);
    // The sender left with the extension; the launcher started a new one.
    assert_ne!(sender_pid(&mut client).unwrap(), Some(before), "a new sender after CREATE EXTENSION");
    // The new queue arrived once each; the old one stopped where the drop cut it.
    assert_eq!(server.duplicates(), 0);
    assert!(server.distinct_messages() >= MESSAGES as usize + 100);
}
