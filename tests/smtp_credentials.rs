//! SMTP credentials of their own (issue 19): an account that reads erin@
//! as erin.login over IMAP and sends through Postfix as another Dovecot
//! user (relay@), each side with its own password. Real PostgreSQL,
//! Dovecot and Postfix.
// Run by `make test-integration`; `cargo pgrx test` (feature pg_test) runs only the #[pg_test]s.
#![cfg(not(feature = "pg_test"))]

mod harness;

use harness::{failure, wait_until, MailServers};
use serde_json::Value;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

fn test_account(client: &mut postgres::Client) -> Value {
    client.query_one("SELECT email_accounts.test_account('Erin')", &[]).unwrap().get(0)
}

/// (password_is_set, smtp_password_is_set, ready_to_receive, ready_to_send)
fn readiness(client: &mut postgres::Client) -> (bool, bool, bool, bool) {
    let row = client
        .query_one(
            "SELECT password_is_set, smtp_password_is_set, ready_to_receive, ready_to_send
               FROM email_accounts.account_settings WHERE name = 'Erin'",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

/// The incoming side's stored password as it is kept (ciphertext, when written).
fn incoming_secret(client: &mut postgres::Client) -> (Vec<u8>, String) {
    let row = client
        .query_one(
            "SELECT secret.ciphertext, secret.updated_at::text || ' ' || account.password_set_at::text
               FROM email_accounts.account_secret AS secret JOIN email_accounts.account USING (account_id)
              WHERE account.name = 'Erin' AND secret.side = 'incoming'",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

fn send(client: &mut postgres::Client, subject: &str) -> i64 {
    client
        .query_one(
            "SELECT email_accounts.send(\"to\" => '{alice@example.test}', subject => $1, body_text => 'hello', account => 'Erin')",
            &[&subject],
        )
        .unwrap()
        .get(0)
}

/// Waits until the row is no longer queued or being sent; its status and last_error.
fn settled(client: &mut postgres::Client, outbox_id: i64) -> (String, Option<String>) {
    wait_until(&format!("outbox row {outbox_id} to settle"), LIMIT, || {
        let row = client
            .query_one("SELECT status, last_error FROM email_accounts.outbox WHERE outbox_id = $1", &[&outbox_id])
            .unwrap();
        let status: String = row.get(0);
        (!matches!(status.as_str(), "queued" | "sending")).then(|| (status, row.get(1)))
    })
}

fn messages_of_erin(client: &mut postgres::Client) -> i64 {
    client.query("SELECT * FROM email_accounts.sync_now('Erin')", &[]).unwrap();
    client
        .query_one(
            "SELECT count(*) FROM email_accounts.message JOIN email_accounts.account USING (account_id) WHERE name = 'Erin'",
            &[],
        )
        .unwrap()
        .get(0)
}

fn incoming(subject: &str) -> (Vec<u8>, bool) {
    let raw = format!(
        "From: someone@elsewhere.test\r\nTo: erin@example.test\r\nSubject: {subject}\r\nMessage-ID: <{subject}@elsewhere.test>\r\n\r\nhi\r\n"
    );
    (raw.into_bytes(), false)
}

#[test]
fn each_side_signs_in_with_its_own_login_and_password() {
    let servers = MailServers::start();
    let (_cluster, mut client) = servers.quiet_cluster();
    client
        .batch_execute(
            "INSERT INTO email_accounts.account (name, address, login_id, smtp_login_id, enable_incoming, enable_outgoing,
                                                 poll_interval, append_to_sent_folder, sent_folder)
             VALUES ('Erin', 'erin@example.test', 'erin.login', 'relay@example.test', true, true, '1 hour', true, 'Sent')",
        )
        .unwrap();

    // The incoming side's password alone: receiving works, sending waits.
    client.execute("SELECT email_accounts.set_password('Erin', 'erin-password', side => 'incoming')", &[]).unwrap();
    assert_eq!(readiness(&mut client), (true, false, true, false));
    let logins: (String, String) = {
        let row = client
            .query_one("SELECT login_id, smtp_login_id FROM email_accounts.account_settings WHERE name = 'Erin'", &[])
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(logins, ("erin.login".to_owned(), "relay@example.test".to_owned()));
    let report = test_account(&mut client);
    assert_eq!(report["imap"]["ok"], true, "{report:#}");
    assert_eq!(report["smtp"]["ok"], false, "{report:#}");
    assert!(
        report["smtp"]["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no password is set for the smtp side"),
        "{report:#}"
    );
    assert_eq!(report["smtp_login_id"], "relay@example.test", "{report:#}");

    // The SMTP side's own password: both sides work, each as its own user.
    client.execute("SELECT email_accounts.set_password('Erin', 'relay-password', side => 'smtp')", &[]).unwrap();
    assert_eq!(readiness(&mut client), (true, true, true, true));
    let report = test_account(&mut client);
    assert_eq!(report["ok"], true, "{report:#}");

    let first = send(&mut client, "through the relay login");
    assert_eq!(settled(&mut client, first), ("sent".to_owned(), None));
    assert!(servers.smtp_log().contains("sasl_username=relay@example.test"), "Postfix saw another login");
    wait_until("the mail in alice's mailbox", LIMIT, || {
        servers.mailbox("alice@example.test").iter().any(|raw| raw.contains("through the relay login")).then_some(())
    });
    // The copy to the Sent folder goes over IMAP, as the incoming side's user.
    wait_until("the copy in erin's Sent folder", LIMIT, || {
        (!servers.folder_flags("erin@example.test", "Sent").is_empty()).then_some(())
    });
    servers.append("erin@example.test", "INBOX", &[incoming("first")]);
    assert_eq!(messages_of_erin(&mut client), 1);

    // A new SMTP password leaves the incoming side's exactly as it was.
    let before = incoming_secret(&mut client);
    client
        .execute("SELECT email_accounts.set_password('Erin', 'not-the-relay-password', side => 'smtp')", &[])
        .unwrap();
    assert_eq!(incoming_secret(&mut client), before, "the incoming side's password and its time are untouched");
    servers.append("erin@example.test", "INBOX", &[incoming("second")]);
    assert_eq!(messages_of_erin(&mut client), 2, "receiving still signs in");
    let refused = send(&mut client, "with the wrong relay password");
    let (status, error) = settled(&mut client, refused);
    assert_ne!(status, "sent");
    assert!(error.as_deref().unwrap_or_default().contains("535"), "{status}: {error:?}");
    client.execute("SELECT email_accounts.set_password('Erin', 'relay-password', side => 'smtp')", &[]).unwrap();
    client.execute("SELECT email_accounts.retry($1)", &[&refused]).unwrap();
    assert_eq!(settled(&mut client, refused), ("sent".to_owned(), None));

    // And the other way round: a new incoming password leaves SMTP's.
    client.execute("SELECT email_accounts.set_password('Erin', 'wrong', side => 'incoming')", &[]).unwrap();
    let unchanged = send(&mut client, "incoming password changed");
    assert_eq!(settled(&mut client, unchanged).0, "sent");

    // A side that signs in with no password does not keep the account
    // awaiting one: sending off, the servers change, the incoming side's new
    // password is all it needs (the SMTP side's row stays bound to the old ones).
    client
        .batch_execute(
            "UPDATE email_accounts.account SET enable_outgoing = false, smtp_host = '127.0.0.1' WHERE name = 'Erin'",
        )
        .unwrap();
    let awaiting: bool = client
        .query_one("SELECT awaiting_password FROM email_accounts.account WHERE name = 'Erin'", &[])
        .unwrap()
        .get(0);
    assert!(awaiting, "the servers changed: the passwords are not sent to them");
    client.execute("SELECT email_accounts.set_password('Erin', 'erin-password', side => 'incoming')", &[]).unwrap();
    assert_eq!(readiness(&mut client), (true, true, true, false));
    servers.append("erin@example.test", "INBOX", &[incoming("third")]);
    assert_eq!(messages_of_erin(&mut client), 3);
    // Sending on again: its password is for the old servers, so the account awaits one.
    client.batch_execute("UPDATE email_accounts.account SET enable_outgoing = true WHERE name = 'Erin'").unwrap();
    assert_eq!(readiness(&mut client), (true, true, false, false));
    client.execute("SELECT email_accounts.set_password('Erin', 'relay-password', side => 'smtp')", &[]).unwrap();
    assert_eq!(readiness(&mut client), (true, true, true, true));

    let (code, message) = failure(&mut client, "SELECT email_accounts.set_password('Erin', 'x', side => 'imap')");
    assert_eq!(code, "22023", "{message}");
    assert!(message.contains("side"), "{message}");
}
