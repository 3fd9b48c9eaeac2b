//! Mail that comes back (issue 16, part 2), for real: Postfix takes mail for
//! gone@example.test, Dovecot's LMTP refuses it (no such user), and Postfix
//! bounces it with its own DSN to the account's mailbox; the receiver syncs it, recognises it and marks only the
//! recipient it names bounced (and suppressed), never routing the report.
//! Delay warnings and complaints appended to the mailbox are recorded; a
//! report about another tenant's mail matches nothing. Then signed envelope
//! senders, Postfix's own delay warnings, the soft-bounce limit, the
//! on_bounce_function hook and the global default account.
// Run by `make test-integration`; `cargo pgrx test` (feature pg_test) runs only the #[pg_test]s.
#![cfg(not(feature = "pg_test"))]

mod harness;

use harness::{wait_until, MailServers, Postgres};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

struct Setup {
    servers: MailServers,
    _cluster: Postgres,
    client: postgres::Client,
}

impl Setup {
    fn send(&mut self, account: &str, to: &[&str], subject: &str) -> (i64, String) {
        let outbox_id: i64 = self
            .client
            .query_one(
                "SELECT email_accounts.send(\"to\" => $1, subject => $2, body_text => 'Hello', account => $3)",
                &[&to, &subject, &account],
            )
            .unwrap()
            .get(0);
        let message_id: String = self
            .client
            .query_one("SELECT message_id FROM email_accounts.outbox WHERE outbox_id = $1", &[&outbox_id])
            .unwrap()
            .get(0);
        wait_until(&format!("{subject:?} to be sent"), LIMIT, || {
            let status: String = self
                .client
                .query_one("SELECT status FROM email_accounts.outbox WHERE outbox_id = $1", &[&outbox_id])
                .unwrap()
                .get(0);
            (status == "sent").then_some(())
        });
        (outbox_id, message_id)
    }

    fn recipient(&mut self, outbox_id: i64, address: &str) -> (String, Option<String>, Option<String>, Option<String>) {
        let row = self
            .client
            .query_one(
                "SELECT status, report, report_status, report_diagnostic FROM email_accounts.outbox_recipient
                  WHERE outbox_id = $1 AND address = $2",
                &[&outbox_id, &address],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2), row.get(3))
    }

    /// Syncs every receiving account until `check` holds.
    fn sync_until<T>(&mut self, what: &str, mut check: impl FnMut(&mut postgres::Client) -> Option<T>) -> T {
        wait_until(what, LIMIT, || {
            self.client
                .execute(
                    "SELECT (SELECT count(*) FROM email_accounts.sync_now(name)) FROM email_accounts.account
                      WHERE enable_incoming",
                    &[],
                )
                .unwrap();
            check(&mut self.client)
        })
    }

    /// The routing error of the stored message with this subject, once stored.
    fn routing_error_of(&mut self, subject: &str) -> String {
        let subject = subject.to_owned();
        self.sync_until(&format!("{subject:?} to be stored"), |client| {
            let rows = client
                .query("SELECT coalesce(routing_error, '') FROM email_accounts.message WHERE subject = $1", &[&subject])
                .unwrap();
            rows.first().map(|row| row.get::<_, String>(0))
        })
    }
}

fn setup() -> Setup {
    let servers = MailServers::start();
    let (cluster, mut client) = servers.quiet_cluster();
    client
        .batch_execute(
            "INSERT INTO email_accounts.account (name, tenant, address, enable_incoming, enable_outgoing, poll_interval)
             VALUES ('Support', 'acme', 'support@example.test', true, true, '1 hour'),
                    ('Other', 'globex', 'dave@other.test', false, false, '1 hour');
             UPDATE email_accounts.account SET smtp_host = 'localhost', smtp_port = (SELECT smtp_port FROM email_accounts.domain),
                                               smtp_security = 'starttls', enable_outgoing = true,
                                               extra_ca_certificate = (SELECT extra_ca_certificate FROM email_accounts.domain)
              WHERE name = 'Other';",
        )
        .unwrap();
    for (account, address) in [("Support", "support@example.test"), ("Other", "dave@other.test")] {
        let password = servers.user(address).password.clone();
        client.execute("SELECT email_accounts.set_password($1, $2)", &[&account, &password]).unwrap();
    }
    Setup { servers, _cluster: cluster, client }
}

/// A delivery report or complaint, as a fixture of the mail core's corpus
/// names them, about `message_id` and `recipient`.
fn report(kind: &str, message_id: &str, recipient: &str) -> Vec<u8> {
    report_to(kind, message_id, recipient, "support@example.test")
}

/// The same, delivered to `to` (where a signed envelope sender is looked for).
fn report_to(kind: &str, message_id: &str, recipient: &str, to: &str) -> Vec<u8> {
    let (report_type, body) = match kind {
        "full" => (
            "delivery-status",
            format!(
                "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; relay.remote.test\r\n\r\n\
                 Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.2.2\r\n\
                 Diagnostic-Code: smtp; 552 5.2.2 mailbox full\r\n"
            ),
        ),
        "delayed" => (
            "delivery-status",
            format!(
                "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; relay.remote.test\r\n\r\n\
                 Final-Recipient: rfc822; {recipient}\r\nAction: delayed\r\nStatus: 4.4.1\r\n\
                 Diagnostic-Code: X-Postfix; connect to mx.remote.test: Connection timed out\r\n"
            ),
        ),
        _ => (
            "feedback-report",
            format!(
                "Content-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nVersion: 1\r\n\
                 Original-Rcpt-To: <{recipient}>\r\n"
            ),
        ),
    };
    format!(
        "From: MAILER-DAEMON@relay.remote.test\r\nTo: {to}\r\nSubject: report about {message_id}\r\n\
         Message-ID: <{kind}-{}@relay.remote.test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type={report_type}; boundary=\"R\"\r\n\r\n\
         --R\r\nContent-Type: text/plain\r\n\r\nA report.\r\n\r\n--R\r\n{body}\r\n--R\r\n\
         Content-Type: text/rfc822-headers\r\n\r\nFrom: support@example.test\r\nMessage-ID: {message_id}\r\n\r\n--R--\r\n",
        message_id.trim_matches(['<', '>'])
    )
    .into_bytes()
}

#[test]
fn postfix_bounces_mark_only_the_recipient_named_and_reports_are_never_routed() {
    let mut setup = setup();
    // Three recipients, one of which Postfix takes and then bounces.
    let (three, _) =
        setup.send("Support", &["bob@example.test", "carol@example.test", "gone@example.test"], "to three");
    let bounced = setup.sync_until("the bounce of gone@example.test to be recorded", |client| {
        let row = client
            .query_opt(
                "SELECT status, report_status, report_diagnostic FROM email_accounts.outbox_recipient
                  WHERE outbox_id = $1 AND address = 'gone@example.test' AND report IS NOT NULL",
                &[&three],
            )
            .unwrap()?;
        Some((row.get::<_, String>(0), row.get::<_, Option<String>>(1), row.get::<_, Option<String>>(2)))
    });
    assert_eq!((bounced.0.as_str(), bounced.1.as_deref()), ("bounced", Some("5.1.1")));
    assert!(bounced.2.unwrap_or_default().contains("gone@example.test"), "the refusal in the servers' words");
    assert_eq!(setup.recipient(three, "bob@example.test").0, "sent");
    assert_eq!(setup.recipient(three, "carol@example.test").0, "sent");
    let row = setup
        .client
        .query_one(
            "SELECT (SELECT status FROM email_accounts.outbox WHERE outbox_id = $1),
                    (SELECT reason FROM email_accounts.suppression WHERE address = 'gone@example.test' AND tenant = 'acme'),
                    (SELECT count(*) FROM email_accounts.message WHERE kind = 'delivery_report' AND routing_error IS NULL
                        AND reply_to_outbox_id IS NULL AND reference_table IS NULL AND auto_reply_outbox_id IS NULL)",
            &[&three],
        )
        .unwrap();
    let (status, reason, reports): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((status.as_str(), reason.as_str(), reports), ("sent", "bounce", 1), "two recipients still got it");

    // Mail whose only recipient bounces is bounced itself.
    let (one, _) = setup.send("Support", &["gone.too@example.test"], "to one");
    setup.sync_until("the mail to be bounced", |client| {
        let status: String =
            client.query_one("SELECT status FROM email_accounts.outbox WHERE outbox_id = $1", &[&one]).unwrap().get(0);
        (status == "bounced").then_some(())
    });

    // A delay warning: noted, the status is unchanged. A complaint: complained, suppressed.
    let (to_bob, bob_message_id) = setup.send("Support", &["bob@example.test"], "for a delay");
    let (to_carol, carol_message_id) = setup.send("Support", &["carol@example.test"], "for a complaint");
    setup.servers.append(
        "support@example.test",
        "INBOX",
        &[
            (report("delayed", &bob_message_id, "bob@example.test"), false),
            (report("complaint", &carol_message_id, "carol@example.test"), false),
        ],
    );
    setup.sync_until("the delay and the complaint to be recorded", |client| {
        let recorded: i64 = client
            .query_one(
                "SELECT count(*) FROM email_accounts.outbox_recipient WHERE report IN ('delayed', 'complained')",
                &[],
            )
            .unwrap()
            .get(0);
        (recorded == 2).then_some(())
    });
    let delayed = setup.recipient(to_bob, "bob@example.test");
    assert_eq!(
        (delayed.0.as_str(), delayed.1.as_deref(), delayed.2.as_deref()),
        ("sent", Some("delayed"), Some("4.4.1"))
    );
    let complained = setup.recipient(to_carol, "carol@example.test");
    assert_eq!((complained.0.as_str(), complained.1.as_deref()), ("complained", Some("complained")));
    let reason: String = setup
        .client
        .query_one("SELECT reason FROM email_accounts.suppression WHERE address = 'carol@example.test'", &[])
        .unwrap()
        .get(0);
    assert_eq!(reason, "complaint");

    // A refusal that says nothing about the address (mailbox full) is recorded, not suppressed;
    // a "report" with a sender of its own is ordinary mail.
    let (to_full, full_message_id) = setup.send("Support", &["erin@example.test"], "for a full mailbox");
    let mut forged = report("full", &full_message_id, "erin@example.test");
    forged.splice(0..0, b"Return-Path: <mallory@example.test>\r\n".iter().copied());
    let forged_subject = format!("report about {full_message_id}");
    setup.servers.append("support@example.test", "INBOX", &[(forged, false)]);
    let kind = setup.sync_until("the forged report to be stored", |client| {
        let rows =
            client.query("SELECT kind FROM email_accounts.message WHERE subject = $1", &[&forged_subject]).unwrap();
        rows.first().map(|row| row.get::<_, String>(0))
    });
    assert_eq!(kind, "mail", "a report needs the null sender");
    assert_eq!(setup.recipient(to_full, "erin@example.test").1, None);
    setup.client.execute("DELETE FROM email_accounts.message WHERE subject = $1", &[&forged_subject]).unwrap();
    setup.servers.append(
        "support@example.test",
        "INBOX",
        &[(report("full", &full_message_id, "erin@example.test"), false)],
    );
    setup.sync_until("the full mailbox to be recorded", |client| {
        let recorded: i64 = client
            .query_one(
                "SELECT count(*) FROM email_accounts.outbox_recipient WHERE outbox_id = $1 AND report = 'bounced'",
                &[&to_full],
            )
            .unwrap()
            .get(0);
        (recorded == 1).then_some(())
    });
    let suppressed: i64 = setup
        .client
        .query_one("SELECT count(*) FROM email_accounts.suppression WHERE address = 'erin@example.test'", &[])
        .unwrap()
        .get(0);
    assert_eq!(suppressed, 0, "a full mailbox is not a reason never to write again");

    // A report about another tenant's mail, in Support's mailbox: matches nothing.
    let (others, others_message_id) = setup.send("Other", &["bob@example.test"], "another tenant's mail");
    setup.servers.append(
        "support@example.test",
        "INBOX",
        &[(report("delayed", &others_message_id, "bob@example.test"), false)],
    );
    let error = setup.sync_until("the foreign report to be stored", |client| {
        let rows = client
            .query(
                "SELECT routing_error FROM email_accounts.message WHERE subject = $1",
                &[&format!("report about {others_message_id}")],
            )
            .unwrap();
        rows.first().map(|row| row.get::<_, Option<String>>(0))
    });
    assert!(error.unwrap_or_default().contains("no mail of this tenant"));
    assert_eq!(setup.recipient(others, "bob@example.test").1, None);

    // The figures per account and day, and a DBA lifting a suppression.
    let row = setup
        .client
        .query_one(
            "SELECT sent, hard_bounces, delayed, complaints FROM email_accounts.bounces WHERE account = 'Support'",
            &[],
        )
        .unwrap();
    let figures: (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(figures, (7, 3, 1, 1));
    let lifted: i32 =
        setup.client.query_one("SELECT email_accounts.unsuppress('GONE@example.test')", &[]).unwrap().get(0);
    assert_eq!(lifted, 1);
}

/// Signed envelope senders close the forgery a Message-ID allows; Postfix's
/// own delay warnings count toward the soft-bounce limit; on_bounce_function
/// runs as the owner role; bounces of a tenant's mail sent through the
/// global default account come back to that account's mailbox and still
/// reach the tenant's outbox row.
#[test]
fn signed_envelope_senders_delay_warnings_soft_bounce_limit_hook_and_the_global_account() {
    let mut setup = setup();
    setup
        .client
        .batch_execute(
            "CREATE SCHEMA app;
             CREATE TABLE app.bounce_log (outbox_id bigint, address text, called_as name DEFAULT current_user);
             CREATE ROLE support_app;
             GRANT USAGE ON SCHEMA app TO support_app;
             GRANT INSERT ON app.bounce_log TO support_app;
             CREATE FUNCTION app.note_bounce(outbox_id bigint, address text) RETURNS void
                 LANGUAGE sql AS 'INSERT INTO app.bounce_log (outbox_id, address) VALUES ($1, $2)';
             INSERT INTO email_accounts.tenant_member (role_name, tenant) VALUES ('support_app', 'acme');
             UPDATE email_accounts.account
                SET owner_role = 'support_app', on_bounce_function = 'app.note_bounce(bigint, text)',
                    signed_envelope_sender = true, soft_bounce_limit = 2
              WHERE name = 'Support';",
        )
        .unwrap();
    // A hook that takes the wrong arguments is refused, naming the field.
    let refused = setup
        .client
        .execute(
            "UPDATE email_accounts.account SET on_bounce_function = 'pg_catalog.lower(text)' WHERE name = 'Support'",
            &[],
        )
        .unwrap_err();
    let refused = refused.as_db_error().unwrap();
    assert_eq!(refused.code().code(), "23514", "{refused:?}");
    assert_eq!(refused.column(), Some("on_bounce_function"), "{}", refused.message());

    // Each recipient gets its own signed envelope sender; the bounce comes
    // back to gone@'s: only gone@ is recorded, and the hook ran as the owner.
    let (to_gone, _) = setup.send("Support", &["bob@example.test", "gone@example.test"], "signed, to gone");
    setup.sync_until("the signed bounce to be recorded", |client| {
        let status: String = client
            .query_one(
                "SELECT status FROM email_accounts.outbox_recipient WHERE outbox_id = $1 AND address = 'gone@example.test'",
                &[&to_gone],
            )
            .unwrap()
            .get(0);
        (status == "bounced").then_some(())
    });
    assert_eq!(setup.recipient(to_gone, "bob@example.test").0, "sent");
    let log = setup.servers.smtp_log();
    let signed_senders: std::collections::HashSet<&str> =
        log.split(&format!("from=<support+b1-{to_gone}-")).skip(1).filter_map(|rest| rest.split('@').next()).collect();
    assert_eq!(signed_senders.len(), 2, "one signed envelope sender per recipient: {signed_senders:?}");
    let logged: Vec<(i64, String, String)> = setup
        .client
        .query("SELECT outbox_id, address, called_as::text FROM app.bounce_log", &[])
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert_eq!(logged, vec![(to_gone, "gone@example.test".to_owned(), "support_app".to_owned())]);

    // Reports that do not come back signed change nothing: one to the
    // plain address naming a real Message-ID, one with a forged signature.
    let (to_bob, bob_message_id) = setup.send("Support", &["bob@example.test"], "signed, to bob");
    let plain = report_to("delayed", &bob_message_id, "bob@example.test", "support@example.test");
    let forged_address = format!("support+b1-{to_bob}-0123456789abcdef@example.test");
    let forged = report_to("complaint", &bob_message_id, "bob@example.test", &forged_address);
    setup.servers.append("support@example.test", "INBOX", &[(plain, false)]);
    let subject = format!("report about {bob_message_id}");
    let error = setup.routing_error_of(&subject);
    assert!(error.contains("signs its envelope sender"), "{error}");
    setup.client.execute("DELETE FROM email_accounts.message WHERE subject = $1", &[&subject]).unwrap();
    setup.servers.append("support@example.test", "INBOX", &[(forged, false)]);
    let error = setup.routing_error_of(&subject);
    assert!(error.contains("signature does not match"), "{error}");
    assert_eq!(setup.recipient(to_bob, "bob@example.test").0, "sent");
    assert_eq!(setup.recipient(to_bob, "bob@example.test").1, None);
    let suppressed: i64 = setup
        .client
        .query_one("SELECT count(*) FROM email_accounts.suppression WHERE address = 'bob@example.test'", &[])
        .unwrap()
        .get(0);
    assert_eq!(suppressed, 0);

    // Postfix's own delay warnings (late@ is always deferred): the first is
    // noted, the second message's reaches soft_bounce_limit = 2.
    setup.servers.set_postfix(&[
        "delay_warning_time=1s",
        "queue_run_delay=1s",
        "minimal_backoff_time=1s",
        "maximal_backoff_time=2s",
    ]);
    let (first_late, _) = setup.send("Support", &["late@example.test"], "late one");
    let delayed = setup.sync_until("Postfix's delay warning to be recorded", |client| {
        let row = client
            .query_opt(
                "SELECT status, report_status FROM email_accounts.outbox_recipient
                  WHERE outbox_id = $1 AND report = 'delayed'",
                &[&first_late],
            )
            .unwrap()?;
        Some((row.get::<_, String>(0), row.get::<_, Option<String>>(1)))
    });
    assert_eq!(delayed.0, "sent", "a delay changes no status");
    assert!(delayed.1.unwrap_or_default().starts_with("4."), "a 4.x.x status");
    let suppressed = |client: &mut postgres::Client| -> Option<String> {
        client
            .query_opt("SELECT reason FROM email_accounts.suppression WHERE address = 'late@example.test'", &[])
            .unwrap()
            .map(|row| row.get(0))
    };
    assert_eq!(suppressed(&mut setup.client), None, "one delay is below the limit");
    let (_second_late, _) = setup.send("Support", &["late@example.test"], "late two");
    let reason = setup.sync_until("the soft-bounce limit to suppress late@", |client| suppressed(client));
    assert_eq!(reason, "soft_bounce");

    // The global default outgoing account (no tenant, signing) sends for a
    // tenant without accounts; the bounce lands in its own mailbox and still
    // marks the tenant's row, and the tenant's suppression.
    let alice = setup.servers.user("alice@example.test").password.clone();
    setup
        .client
        .batch_execute(
            "INSERT INTO email_accounts.account (name, address, enable_incoming, enable_outgoing, default_outgoing, poll_interval,
                                                 smtp_host, smtp_port, smtp_security, extra_ca_certificate)
             SELECT 'Shared', 'alice@example.test', true, true, true, '1 hour', 'localhost', smtp_port, 'starttls', extra_ca_certificate
               FROM email_accounts.domain;
             -- A tenant's mail through it is matched by signed envelope senders only.
             UPDATE email_accounts.account SET signed_envelope_sender = true WHERE name = 'Shared';",
        )
        .unwrap();
    setup.client.execute("SELECT email_accounts.set_password('Shared', $1)", &[&alice]).unwrap();
    let for_initech: i64 = setup
        .client
        .query_one(
            "SELECT email_accounts.send(\"to\" => ARRAY['gone.too@example.test'], subject => 'for initech',
                                        body_text => 'Hello', tenant => 'initech')",
            &[],
        )
        .unwrap()
        .get(0);
    let row = setup
        .client
        .query_one(
            "SELECT outbox.tenant, account.name FROM email_accounts.outbox JOIN email_accounts.account USING (account_id)
              WHERE outbox_id = $1",
            &[&for_initech],
        )
        .unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), ("initech".to_owned(), "Shared".to_owned()));
    setup.sync_until("the global account's bounce to mark initech's row", |client| {
        let status: String = client
            .query_one("SELECT status FROM email_accounts.outbox WHERE outbox_id = $1", &[&for_initech])
            .unwrap()
            .get(0);
        (status == "bounced").then_some(())
    });
    let tenant: String = setup
        .client
        .query_one("SELECT tenant FROM email_accounts.suppression WHERE address = 'gone.too@example.test'", &[])
        .unwrap()
        .get(0);
    assert_eq!(tenant, "initech");
}
