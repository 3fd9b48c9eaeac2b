//! The outbox end to end: mail queued from SQL inside a transaction is
//! delivered by the sender worker through the harness's real Postfix into
//! Dovecot and read back over IMAP; a rolled-back message never arrives.
// Run by `make test-integration`; `cargo pgrx test` (feature pg_test) runs only the #[pg_test]s.
#![cfg(not(feature = "pg_test"))]

mod harness;

use harness::{table_scans, wait_until, worker_timeouts, MailServers, Postgres, OUT_FOR_DELIVERY};
use mail_parser::MimeHeaders;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

struct Setup {
    servers: MailServers,
    _cluster: Postgres,
    client: postgres::Client,
}

/// A cluster whose sender polls only hourly (every delivery below is woken
/// by a commit), an outgoing account for alice on the harness's Postfix, and
/// a default incoming account for replies.
fn setup() -> Setup {
    setup_with(&[])
}

fn setup_with(settings: &[&str]) -> Setup {
    let servers = MailServers::start();
    let mut all_settings = vec!["email_accounts.fallback_poll_interval = '1h'"];
    all_settings.extend_from_slice(settings);
    let cluster = Postgres::start(&all_settings);
    let mut client = cluster.connect("postgres");
    client.batch_execute("CREATE EXTENSION email_accounts").unwrap();
    let alice = servers.user("alice@example.test").clone();
    let support = servers.user("support@example.test").clone();
    servers.add_example_domain(&mut client);
    client
        .batch_execute(
            "INSERT INTO email_accounts.account (name, address, enable_outgoing, default_outgoing, add_signature, signature)
             VALUES ('Alice at Example', 'alice@example.test', true, true, true, 'Alice\nExample Ltd');
             INSERT INTO email_accounts.account (name, address, enable_incoming, default_incoming)
             VALUES ('Support', 'support@example.test', true, true);",
        )
        .unwrap();
    client.execute("SELECT email_accounts.set_password('Alice at Example', $1)", &[&alice.password]).unwrap();
    client.execute("SELECT email_accounts.set_password('Support', $1)", &[&support.password]).unwrap();
    Setup { servers, _cluster: cluster, client }
}

fn status_of(client: &mut impl postgres::GenericClient, id: i64) -> (String, Option<String>) {
    let row =
        client.query_one("SELECT status, last_error FROM email_accounts.outbox WHERE outbox_id = $1", &[&id]).unwrap();
    (row.get(0), row.get(1))
}

#[test]
fn queued_mail_is_delivered_after_commit_and_rolled_back_mail_never() {
    let mut setup = setup();

    let mut transaction = setup.client.transaction().unwrap();
    let rolled_back: i64 = transaction
        .query_one("SELECT email_accounts.send(\"to\" => '{bob@example.test}', subject => 'never')", &[])
        .unwrap()
        .get(0);
    transaction.rollback().unwrap();

    let mut transaction = setup.client.transaction().unwrap();
    let id: i64 = transaction
        .query_one(
            "SELECT email_accounts.send(
                 \"to\" => '{Bob <bob@example.test>}', cc => '{carol@example.test}', bcc => '{dave@other.test}',
                 subject => 'Invoice 42', body_text => 'Please find it attached.',
                 body_html => '<p>Please find it <b>attached</b>.</p>',
                 sender => 'Billing <billing@example.test>',
                 headers => '{\"X-Invoice\": \"42\"}',
                 attachments => ARRAY[ROW('invoice.pdf', 'application/pdf', '%PDF-1.4 test'::bytea, NULL),
                                      ROW('a-terms.txt', 'text/plain', 'Terms'::bytea, NULL)]::email_accounts.attachment[])",
            &[],
        )
        .unwrap()
        .get(0);
    // Nothing is sent before the commit (the row may already be claimed for
    // an idle sender: email_accounts.claim_on_insert).
    let status = status_of(&mut transaction, id).0;
    assert!(status == "queued" || status == "sending", "{status}");
    assert!(setup.servers.mailbox("bob@example.test").is_empty());
    transaction.commit().unwrap();

    wait_until("the row to be sent", LIMIT, || {
        let (status, error) = status_of(&mut setup.client, id);
        assert!(status != "failed" && status != "error", "{status}: {error:?}");
        (status == "sent").then_some(())
    });
    let message_id: String = setup
        .client
        .query_one("SELECT message_id FROM email_accounts.outbox WHERE outbox_id = $1", &[&id])
        .unwrap()
        .get(0);
    // sent_at is the server's 250, which came before the round was recorded.
    let accepted_before_recorded: bool = setup
        .client
        .query_one(
            "SELECT outbox.created_at < outbox.sent_at AND outbox.sent_at < min(recipient.updated_at)
               FROM email_accounts.outbox JOIN email_accounts.outbox_recipient AS recipient USING (outbox_id)
              WHERE outbox_id = $1 GROUP BY outbox.outbox_id",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert!(accepted_before_recorded, "sent_at lies between the row's creation and its recording");
    let recipients: Vec<(String, String)> = setup
        .client
        .query(
            "SELECT address, status FROM email_accounts.outbox_recipient WHERE outbox_id = $1 ORDER BY address",
            &[&id],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(
        recipients,
        [
            ("bob@example.test".to_owned(), "sent".to_owned()),
            ("carol@example.test".to_owned(), "sent".to_owned()),
            ("dave@other.test".to_owned(), "sent".to_owned())
        ]
    );

    for reader in ["bob@example.test", "carol@example.test", "dave@other.test"] {
        let messages = wait_until("the message in every mailbox", LIMIT, || {
            let messages = setup.servers.mailbox(reader);
            (!messages.is_empty()).then_some(messages)
        });
        assert_eq!(messages.len(), 1, "{reader} received only the committed message");
        let raw = &messages[0];
        let parsed = mail_parser::MessageParser::default().parse(raw.as_bytes()).unwrap();
        assert_eq!(parsed.message_id().map(|id| format!("<{id}>")), Some(message_id.clone()));
        assert_eq!(parsed.subject(), Some("Invoice 42"));
        let from = parsed.from().and_then(|from| from.first()).unwrap();
        assert_eq!((from.name(), from.address()), (Some("Billing"), Some("billing@example.test")));
        let reply_to = parsed.reply_to().and_then(|reply_to| reply_to.first()).unwrap();
        assert_eq!(reply_to.address(), Some("support@example.test"), "replies go to the default incoming account");
        assert!(parsed.body_text(0).unwrap().contains("Please find it attached.\r\n\r\n-- \r\nAlice"), "signature");
        assert!(parsed.body_html(0).unwrap().contains("<b>attached</b>"));
        // In the order given (not by name).
        assert_eq!(parsed.attachment(0).and_then(|part| part.attachment_name()), Some("invoice.pdf"));
        assert_eq!(parsed.attachment(1).and_then(|part| part.attachment_name()), Some("a-terms.txt"));
        assert!(raw.contains("X-Invoice: 42"));
        assert!(!raw.to_lowercase().contains("\r\nbcc:"), "no Bcc header");
        if reader != "dave@other.test" {
            assert!(!raw.contains("dave@other.test"), "the Bcc recipient is hidden from {reader}");
        }
    }
    let never: i64 = setup
        .client
        .query_one("SELECT count(*) FROM email_accounts.outbox WHERE outbox_id = $1", &[&rolled_back])
        .unwrap()
        .get(0);
    assert_eq!(never, 0);
}

#[test]
fn a_rejected_recipient_fails_alone_with_the_servers_words() {
    let mut setup = setup();
    let id: i64 = setup
        .client
        .query_one(
            "SELECT email_accounts.send(\"to\" => '{bob@example.test, nobody@example.test}', subject => 'partly')",
            &[],
        )
        .unwrap()
        .get(0);
    wait_until("the row to be finished", LIMIT, || {
        let (status, _) = status_of(&mut setup.client, id);
        (status == "sent").then_some(())
    });
    let rejected: (String, String) = setup
        .client
        .query_one(
            "SELECT status, reply FROM email_accounts.outbox_recipient WHERE outbox_id = $1 AND address = 'nobody@example.test'",
            &[&id],
        )
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    assert_eq!(rejected.0, "failed");
    assert!(rejected.1.starts_with("550") && rejected.1.contains("User unknown"), "{}", rejected.1);
    let (_, last_error) = status_of(&mut setup.client, id);
    assert!(last_error.unwrap().contains("nobody@example.test: 550"));
    wait_until("bob's copy", LIMIT, || (!setup.servers.mailbox("bob@example.test").is_empty()).then_some(()));

    // A message whose only recipient is rejected fails.
    let id: i64 = setup
        .client
        .query_one("SELECT email_accounts.send(\"to\" => '{nobody@example.test}', subject => 'nobody')", &[])
        .unwrap()
        .get(0);
    wait_until("the row to fail", LIMIT, || (status_of(&mut setup.client, id).0 == "failed").then_some(()));
}

fn header_value(raw: &str, name: &str) -> Option<String> {
    let parsed = mail_parser::MessageParser::default().parse(raw.as_bytes())?;
    parsed.header_raw(name).map(|value| value.trim().to_owned())
}

/// Sends `subject` to the recipients and waits until the row is sent.
fn send_and_wait_until_sent(client: &mut postgres::Client, to: &[&str], subject: &str) -> i64 {
    let id: i64 = client
        .query_one("SELECT email_accounts.send(\"to\" => $1::text[], subject => $2)", &[&to, &subject])
        .unwrap()
        .get(0);
    wait_until(&format!("{subject} to be sent"), LIMIT, || (status_of(client, id).0 == "sent").then_some(()));
    id
}

fn token_in(url: &str) -> String {
    url.split("token=").nth(1).unwrap().trim_end_matches('>').split(['"', '&']).next().unwrap().to_owned()
}

#[test]
fn unsubscribe_links_suppress_later_mail_and_opens_are_counted() {
    let mut setup = setup_with(&["email_accounts.public_base_url = 'https://app.example.test/mail/'"]);
    setup
        .client
        .batch_execute(
            "UPDATE email_accounts.account SET send_unsubscribe_message = true, track_email_status = true
              WHERE name = 'Alice at Example'",
        )
        .unwrap();
    let first: i64 = setup
        .client
        .query_one(
            "SELECT email_accounts.send(\"to\" => '{bob@example.test, carol@example.test}', subject => 'Newsletter 1',
                 body_text => 'News', body_html => '<p>News</p>')",
            &[],
        )
        .unwrap()
        .get(0);
    wait_until("the newsletter to be sent", LIMIT, || (status_of(&mut setup.client, first).0 == "sent").then_some(()));

    let bob_copy = wait_until("bob's copy", LIMIT, || setup.servers.mailbox("bob@example.test").into_iter().next());
    let carol_copy =
        wait_until("carol's copy", LIMIT, || setup.servers.mailbox("carol@example.test").into_iter().next());
    let bob_unsubscribe = header_value(&bob_copy, "List-Unsubscribe").unwrap();
    let carol_unsubscribe = header_value(&carol_copy, "List-Unsubscribe").unwrap();
    assert!(bob_unsubscribe.starts_with("<https://app.example.test/mail/unsubscribe?token="), "{bob_unsubscribe}");
    assert_ne!(bob_unsubscribe, carol_unsubscribe, "each recipient gets a personal link");
    assert_eq!(header_value(&bob_copy, "List-Unsubscribe-Post").as_deref(), Some("List-Unsubscribe=One-Click"));
    let parsed = mail_parser::MessageParser::default().parse(bob_copy.as_bytes()).unwrap();
    let html = parsed.body_html(0).unwrap().into_owned();
    let pixel = html.split("src=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    assert!(pixel.starts_with("https://app.example.test/mail/open?token="), "{html}");

    // The application serving the links calls the functions with the tokens.
    let opened: bool =
        setup.client.query_one("SELECT email_accounts.mark_opened($1)", &[&token_in(&pixel)]).unwrap().get(0);
    assert!(opened);
    let (open_count, opened_at): (i32, bool) = setup
        .client
        .query_one(
            "SELECT open_count, opened_at IS NOT NULL FROM email_accounts.outbox WHERE outbox_id = $1",
            &[&first],
        )
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    assert_eq!((open_count, opened_at), (1, true));
    let token = token_in(&bob_unsubscribe);
    let added: bool = setup.client.query_one("SELECT email_accounts.unsubscribe($1)", &[&token]).unwrap().get(0);
    assert!(added);
    let again: bool = setup.client.query_one("SELECT email_accounts.unsubscribe($1)", &[&token]).unwrap().get(0);
    assert!(!again, "already suppressed");
    let forged = format!("{}x", token);
    let error = setup.client.query_one("SELECT email_accounts.unsubscribe($1)", &[&forged]).unwrap_err();
    assert_eq!(error.as_db_error().unwrap().code().code(), "22023");
    let wrong_purpose = setup.client.query_one("SELECT email_accounts.mark_opened($1)", &[&token]).unwrap_err();
    assert_eq!(wrong_purpose.as_db_error().unwrap().code().code(), "22023");

    // The next mail skips bob and reaches carol.
    let second =
        send_and_wait_until_sent(&mut setup.client, &["bob@example.test", "carol@example.test"], "Newsletter 2");
    let bob_status: String = setup
        .client
        .query_one(
            "SELECT status FROM email_accounts.outbox_recipient WHERE outbox_id = $1 AND address = 'bob@example.test'",
            &[&second],
        )
        .unwrap()
        .get(0);
    assert_eq!(bob_status, "suppressed");
    wait_until("carol's second copy", LIMIT, || (setup.servers.mailbox("carol@example.test").len() == 2).then_some(()));
    assert_eq!(setup.servers.mailbox("bob@example.test").len(), 1, "bob received nothing more");

    // The list is per tenant and ignores case: another tenant's entry for
    // carol does not stop this tenant's mail to her; an entry for Erin@ does.
    setup
        .client
        .batch_execute(
            "INSERT INTO email_accounts.suppression (tenant, address, reason)
             VALUES ('another tenant', 'carol@example.test', 'unsubscribed'), (NULL, 'Erin@Example.test', 'by hand')",
        )
        .unwrap();
    let third =
        send_and_wait_until_sent(&mut setup.client, &["carol@example.test", "erin@example.test"], "Newsletter 3");
    let statuses: Vec<(String, String, Option<String>)> = setup
        .client
        .query(
            "SELECT address, status, reply FROM email_accounts.outbox_recipient WHERE outbox_id = $1 ORDER BY address",
            &[&third],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert_eq!(statuses[0].0, "carol@example.test");
    assert_eq!(statuses[0].1, "sent");
    assert_eq!(
        (statuses[1].0.as_str(), statuses[1].1.as_str(), statuses[1].2.as_deref()),
        ("erin@example.test", "suppressed", Some("on the suppression list: by hand"))
    );
    wait_until("carol's third copy", LIMIT, || (setup.servers.mailbox("carol@example.test").len() == 3).then_some(()));
}

#[test]
fn a_temporary_failure_is_retried_until_it_succeeds() {
    let mut setup = setup_with(&["email_accounts.retry_base_delay = '1s'"]);
    setup.servers.set_recipient_reply("bob@example.test", Some("450 4.2.0 mailbox busy, try later"));
    let id: i64 = setup
        .client
        .query_one(
            "SELECT email_accounts.send(\"to\" => '{bob@example.test, carol@example.test}', subject => 'later')",
            &[],
        )
        .unwrap()
        .get(0);
    let (attempts, error) = wait_until("the first attempt to be deferred", LIMIT, || {
        let row = setup
            .client
            .query_one("SELECT status, attempts, last_error FROM email_accounts.outbox WHERE outbox_id = $1", &[&id])
            .unwrap();
        (row.get::<_, String>(0) == "retry").then(|| (row.get::<_, i32>(1), row.get::<_, Option<String>>(2)))
    });
    assert_eq!(attempts, 1);
    let error = error.unwrap();
    assert!(error.contains("450 4.2.0") && error.contains("mailbox busy"), "the server's own words: {error}");
    let carol: String = setup
        .client
        .query_one(
            "SELECT status FROM email_accounts.outbox_recipient WHERE outbox_id = $1 AND address = 'carol@example.test'",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(carol, "sent", "the accepted recipient is done");

    // The server accepts again: the retry (due in about a second) delivers to bob only.
    setup.servers.set_recipient_reply("bob@example.test", None);
    wait_until("the retry to succeed", LIMIT, || (status_of(&mut setup.client, id).0 == "sent").then_some(()));
    let attempts: i32 = setup
        .client
        .query_one("SELECT attempts FROM email_accounts.outbox WHERE outbox_id = $1", &[&id])
        .unwrap()
        .get(0);
    assert!(attempts >= 2);
    wait_until("bob's copy", LIMIT, || (setup.servers.mailbox("bob@example.test").len() == 1).then_some(()));
    assert_eq!(setup.servers.mailbox("carol@example.test").len(), 1, "carol was not sent it twice");
}

#[test]
fn rows_claimed_by_another_sender_wait_for_its_lease() {
    let mut setup = setup();
    // Another sender holds a lease on the row (as after a crash mid-batch).
    let mut transaction = setup.client.transaction().unwrap();
    let id: i64 = transaction
        .query_one("SELECT email_accounts.send(\"to\" => '{bob@example.test}', subject => 'leased')", &[])
        .unwrap()
        .get(0);
    transaction
        .execute(
            "UPDATE email_accounts.outbox SET status = 'sending', attempts = 1, claim_token = gen_random_uuid(),
                    lease_until = now() + interval '1 hour' WHERE outbox_id = $1",
            &[&id],
        )
        .unwrap();
    transaction.commit().unwrap();
    let other: i64 = setup
        .client
        .query_one("SELECT email_accounts.send(\"to\" => '{carol@example.test}', subject => 'free')", &[])
        .unwrap()
        .get(0);
    wait_until("the unleased row to be sent", LIMIT, || {
        (status_of(&mut setup.client, other).0 == "sent").then_some(())
    });
    assert_eq!(status_of(&mut setup.client, id).0, "sending", "a row under someone else's lease is not touched");
    assert!(setup.servers.mailbox("bob@example.test").is_empty());

    // The lease lapses: the row is taken again and sent once.
    setup
        .client
        .execute(
            "UPDATE email_accounts.outbox SET lease_until = now() - interval '1 second' WHERE outbox_id = $1",
            &[&id],
        )
        .unwrap();
    setup.client.execute("SELECT email_accounts.flush()", &[]).unwrap();
    wait_until("the lapsed row to be sent", LIMIT, || (status_of(&mut setup.client, id).0 == "sent").then_some(()));
    let attempts: i32 = setup
        .client
        .query_one("SELECT attempts FROM email_accounts.outbox WHERE outbox_id = $1", &[&id])
        .unwrap()
        .get(0);
    assert_eq!(attempts, 2);
    wait_until("bob's copy", LIMIT, || (setup.servers.mailbox("bob@example.test").len() == 1).then_some(()));
}

#[test]
fn sent_mail_is_copied_to_the_sent_folder() {
    let mut setup = setup();
    setup
        .client
        .batch_execute("UPDATE email_accounts.account SET append_to_sent_folder = true WHERE name = 'Alice at Example'")
        .unwrap();
    let id: i64 = setup
        .client
        .query_one("SELECT email_accounts.send(\"to\" => '{bob@example.test}', subject => 'keep a copy')", &[])
        .unwrap()
        .get(0);
    wait_until("the row to be sent", LIMIT, || (status_of(&mut setup.client, id).0 == "sent").then_some(()));
    let (status, last_error) = status_of(&mut setup.client, id);
    assert_eq!((status.as_str(), last_error), ("sent", None));

    let mut session = setup.servers.imap_session("alice@example.test");
    assert_eq!(session.examine("Sent").unwrap().exists, 1);
    let fetches = session.fetch("1", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])").unwrap();
    let fetch = fetches.iter().next().unwrap();
    assert!(fetch.flags().contains(&imap::types::Flag::Seen));
    assert!(String::from_utf8_lossy(fetch.header().unwrap()).contains("keep a copy"));
    session.logout().unwrap();
}

#[test]
fn an_account_sends_no_more_than_its_rate_limit() {
    let mut setup = setup();
    setup
        .client
        .batch_execute("UPDATE email_accounts.account SET send_limit_per_minute = 2 WHERE name = 'Alice at Example'")
        .unwrap();
    // Claimed on insert for the idle sender (claim_on_insert is on by
    // default), which leaves rows of accounts with rate limits to the claim.
    wait_for_a_sender_taking_new_mail(&mut setup.client);
    let mut transaction = setup.client.transaction().unwrap();
    transaction
        .batch_execute("SELECT email_accounts.send(\"to\" => '{bob@example.test}', subject => 'n' || n) FROM generate_series(1, 5) AS n")
        .unwrap();
    let claimed: i64 = transaction
        .query_one("SELECT count(*) FROM email_accounts.outbox WHERE status = 'sending'", &[])
        .unwrap()
        .get(0);
    assert_eq!(claimed, 5, "claimed on insert");
    transaction.commit().unwrap();
    let count = |client: &mut postgres::Client, status: &str| -> i64 {
        client.query_one("SELECT count(*) FROM email_accounts.outbox WHERE status = $1", &[&status]).unwrap().get(0)
    };
    wait_until("two messages to be sent", LIMIT, || (count(&mut setup.client, "sent") == 2).then_some(()));
    // Held-back rows are looked at again every second: let the sender look twice more.
    let wakeups = |client: &mut postgres::Client| -> i64 {
        client
            .query_one("SELECT latch_wakeups + timeouts FROM email_accounts.worker_status() WHERE role = 'sender'", &[])
            .unwrap()
            .get(0)
    };
    let seen = wakeups(&mut setup.client);
    wait_until("the sender to look again", LIMIT, || (wakeups(&mut setup.client) >= seen + 2).then_some(()));
    assert_eq!(count(&mut setup.client, "sent"), 2, "the limit holds within the minute");
    assert_eq!(count(&mut setup.client, "queued"), 3);
}

#[test]
fn a_row_that_cannot_be_recorded_does_not_hold_up_the_others() {
    let mut setup = setup();
    // Sabotage: recording carol's delivery raises an error.
    setup
        .client
        .batch_execute(
            "CREATE FUNCTION public.refuse_carol() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.address = 'carol@example.test' AND NEW.status = 'sent' THEN
                     RAISE EXCEPTION 'sabotaged for the test';
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_carol BEFORE UPDATE ON email_accounts.outbox_recipient
                 FOR EACH ROW EXECUTE FUNCTION public.refuse_carol();",
        )
        .unwrap();
    let mut transaction = setup.client.transaction().unwrap();
    let poisoned: i64 =
        transaction.query_one("SELECT email_accounts.send(\"to\" => '{carol@example.test}')", &[]).unwrap().get(0);
    let healthy: i64 =
        transaction.query_one("SELECT email_accounts.send(\"to\" => '{bob@example.test}')", &[]).unwrap().get(0);
    transaction.commit().unwrap();
    wait_until("the healthy row to be recorded", LIMIT, || {
        (status_of(&mut setup.client, healthy).0 == "sent").then_some(())
    });
    // (Claimed on insert it reads `sending`; claimed by the sender's claim, as
    // when the sender was not idle yet at the commit, `queued` with a claim.)
    let query = format!("SELECT {OUT_FOR_DELIVERY} FROM email_accounts.outbox WHERE outbox_id = $1");
    let out: bool = setup.client.query_one(&query, &[&poisoned]).unwrap().get(0);
    assert!(
        out,
        "it keeps its claim and is retried when its lease lapses: {:?}",
        status_of(&mut setup.client, poisoned)
    );
    let log = setup._cluster.server_log();
    assert!(
        log.contains(&format!("cannot record outbox row {poisoned}")) && log.contains("sabotaged for the test"),
        "{log}"
    );
}

/// Makes Alice's account wait for its password (nothing of it can go out)
/// and queues mail to Bob that expires in a second.
fn queue_expiring_while_alice_waits(setup: &mut Setup, subject: &str) -> i64 {
    setup
        .client
        .batch_execute("UPDATE email_accounts.account SET awaiting_password = true WHERE name = 'Alice at Example'")
        .unwrap();
    setup
        .client
        .query_one(
            "SELECT email_accounts.send(\"to\" => '{bob@example.test}', subject => $1,
                                        expires_at => now() + interval '1 second')",
            &[&subject],
        )
        .unwrap()
        .get(0)
}

/// Alice's account gets its password back (which wakes the sender).
fn give_alice_her_password(setup: &mut Setup) {
    let alice = setup.servers.user("alice@example.test").password.clone();
    setup.client.execute("SELECT email_accounts.set_password('Alice at Example', $1)", &[&alice]).unwrap();
}

#[test]
fn mail_not_sent_before_expires_at_expires() {
    let mut setup = setup();
    let id = queue_expiring_while_alice_waits(&mut setup, "expiring");
    std::thread::sleep(Duration::from_millis(1500));
    // Past its expiry before the account could send it.
    give_alice_her_password(&mut setup);
    wait_until("the row to expire", LIMIT, || (status_of(&mut setup.client, id).0 == "expired").then_some(()));
    assert!(status_of(&mut setup.client, id).1.unwrap().contains("expired at"));
    assert!(setup.servers.mailbox("bob@example.test").is_empty());
}

/// A row past its expiry that another transaction holds locked is skipped
/// by the claim's expiry pass, not waited for (a wait past lock_timeout
/// ended the whole claim, so nothing went out while the lock was held); it
/// expires once the lock is gone.
#[test]
fn a_locked_row_past_its_expiry_holds_up_nothing() {
    // (Every row through the claim, whose expiry pass is what is tested.)
    let mut setup = setup_with(&["email_accounts.claim_on_insert = off"]);
    let expiring = queue_expiring_while_alice_waits(&mut setup, "too late");
    // Locked before it expires (the sender wakes at its expiry to mark it).
    let mut locker = setup._cluster.connect("postgres");
    locker.batch_execute("BEGIN").unwrap();
    locker.execute("SELECT FROM email_accounts.outbox WHERE outbox_id = $1 FOR SHARE", &[&expiring]).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    give_alice_her_password(&mut setup);
    let other = send(&mut setup.client, "in time");

    wait_until("the other row to be sent", LIMIT, || (status_of(&mut setup.client, other).0 == "sent").then_some(()));
    assert_eq!(status_of(&mut setup.client, expiring).0, "queued", "left alone while locked");
    locker.batch_execute("COMMIT").unwrap();
    // (Nothing wakes the sender for it: it looks again each second while a
    // row past its expiry waits.)
    wait_until("the locked row to expire", LIMIT, || {
        (status_of(&mut setup.client, expiring).0 == "expired").then_some(())
    });
    let messages = setup.servers.mailbox("bob@example.test");
    assert_eq!(messages.len(), 1, "only the row in time went out");
    assert!(messages[0].contains("in time"));
}

/// Points Alice's account at another SMTP port; the password is bound to its
/// servers, so it is given again in the same transaction.
fn move_smtp(client: &mut postgres::Client, port: u16, password: &str) {
    let mut transaction = client.transaction().unwrap();
    transaction
        .execute(&format!("UPDATE email_accounts.account SET smtp_port = {port} WHERE name = 'Alice at Example'"), &[])
        .unwrap();
    transaction.execute("SELECT email_accounts.set_password('Alice at Example', $1)", &[&password]).unwrap();
    transaction.commit().unwrap();
}

#[test]
fn a_sender_killed_mid_batch_is_replaced_by_one_that_sends_its_row_without_waiting_for_the_lease() {
    // A lease far longer than the test may wait: the row must not wait for it.
    let mut setup = setup_with(&["email_accounts.lease_duration = '1h'", "email_accounts.connect_timeout = '60s'"]);
    // A server that accepts and never answers keeps the batch in flight.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let alice = setup.servers.user("alice@example.test").password.clone();
    move_smtp(&mut setup.client, silent_port, &alice);
    let id: i64 =
        setup.client.query_one("SELECT email_accounts.send(\"to\" => '{bob@example.test}')", &[]).unwrap().get(0);
    // Claimed by its own insert (`sending`) or, when the sender was not idle yet, by the sender's claim.
    let out_for_delivery = |client: &mut postgres::Client| -> bool {
        let query = format!("SELECT {OUT_FOR_DELIVERY} FROM email_accounts.outbox WHERE outbox_id = $1");
        client.query_one(&query, &[&id]).unwrap().get(0)
    };
    wait_until("the row to be claimed", LIMIT, || out_for_delivery(&mut setup.client).then_some(()));
    let _held = silent.accept().unwrap();

    let sender: i32 = setup
        .client
        .query_one("SELECT pid FROM email_accounts.worker_status() WHERE role = 'sender'", &[])
        .unwrap()
        .get(0);
    // The stuck sender still talks to the silent server; the next one will use the real one.
    move_smtp(&mut setup.client, setup.servers.smtp, &alice);
    assert!(out_for_delivery(&mut setup.client));
    assert!(std::process::Command::new("kill").args(["-KILL", &sender.to_string()]).status().unwrap().success());
    // Restarted once a new sender shows in the (reinitialised) shared memory.
    let (mut client, _) = setup._cluster.reconnect_until("a new sender after the crash", |client| {
        let pid: Option<i32> =
            client.query_one("SELECT pid FROM email_accounts.worker_status() WHERE role = 'sender'", &[])?.get(0);
        Ok(pid.filter(|pid| *pid != sender))
    });
    // The dead sender's claim is taken back when the new one starts, not after the hour's lease.
    wait_until("the row to be sent by the new sender", LIMIT, || {
        (status_of(&mut client, id).0 == "sent").then_some(())
    });
    let attempts: i32 =
        client.query_one("SELECT attempts FROM email_accounts.outbox WHERE outbox_id = $1", &[&id]).unwrap().get(0);
    assert_eq!(attempts, 2);
    wait_until("bob's copy", LIMIT, || (setup.servers.mailbox("bob@example.test").len() == 1).then_some(()));
}

#[test]
fn pg_dump_keeps_accounts_secrets_and_the_queue() {
    let setup = setup();
    let mut client = setup._cluster.connect("postgres");
    client
        .execute("SELECT email_accounts.send(\"to\" => '{nobody-yet@example.test}', subject => 'in the dump')", &[])
        .unwrap();
    let output = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_dump", "-h", "127.0.0.1", "-p"])
        .arg(setup._cluster.port.to_string())
        .args(["-U", "postgres", "--data-only", "postgres"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let dump = String::from_utf8_lossy(&output.stdout);
    for table in ["account", "account_secret", "domain", "outbox", "outbox_recipient", "link_signing_key"] {
        assert!(dump.contains(&format!("COPY email_accounts.{table} ")), "{table} is not in the dump");
    }
    assert!(dump.contains("in the dump"));
    // Every preset is dumped (a restored one replaces the built-in one CREATE EXTENSION makes; tests/backup.rs).
    let presets = dump.split("COPY email_accounts.provider ").nth(1).and_then(|rest| rest.split("\\.\n").next());
    assert!(presets.unwrap_or_default().contains("imap.gmail.com"), "built-in presets are not dumped: {presets:?}");
}

#[test]
fn an_idle_sender_runs_no_statements_but_its_poll_still_finds_rows_that_did_not_wake_it() {
    let mut setup = setup_with(&["email_accounts.fallback_poll_interval = '200ms'"]);
    // This session's own statistics (CREATE EXTENSION, setup) reach shared
    // memory lazily; flush them first so they do not land in the window.
    setup.client.batch_execute("SELECT pg_stat_force_next_flush()").unwrap();
    // Let the sender settle: a few polls after setup.
    let settled = worker_timeouts(&mut setup.client, "sender");
    wait_until("the sender to poll a few times", LIMIT, || {
        (worker_timeouts(&mut setup.client, "sender") >= settled + 3).then_some(())
    });
    let scans = table_scans(&mut setup.client, &["outbox"]);
    let polls = worker_timeouts(&mut setup.client, "sender");
    wait_until("five more polls", LIMIT, || (worker_timeouts(&mut setup.client, "sender") >= polls + 5).then_some(()));
    assert_eq!(table_scans(&mut setup.client, &["outbox"]), scans, "an idle sender does not query the outbox");

    // A row that arrives without waking the sender (its trigger disabled, as
    // a restore or a replication apply would) is found by the poll.
    setup.client.batch_execute("ALTER TABLE email_accounts.outbox DISABLE TRIGGER wake_sender").unwrap();
    let id: i64 = setup
        .client
        .query_one("SELECT email_accounts.send(\"to\" => '{bob@example.test}', subject => 'no wake-up')", &[])
        .unwrap()
        .get(0);
    setup.client.batch_execute("ALTER TABLE email_accounts.outbox ENABLE TRIGGER wake_sender").unwrap();
    wait_until("the poll to find and send the row", LIMIT, || {
        (status_of(&mut setup.client, id).0 == "sent").then_some(())
    });
}

/// Waits until the sender takes new rows as they are inserted (after its
/// look at the queue that the last commit woke it for): asked twice, 200 ms
/// apart, in transactions that are rolled back.
fn wait_for_a_sender_taking_new_mail(client: &mut postgres::Client) {
    let taking = |client: &mut postgres::Client| {
        let mut transaction = client.transaction().unwrap();
        let takers: i64 =
            transaction.query_one("SELECT count(*) FROM email_accounts.sender_for_new_mail(0)", &[]).unwrap().get(0);
        transaction.rollback().unwrap();
        takers == 1
    };
    wait_until("the sender to take new mail on insert", LIMIT, || {
        if !taking(client) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
        taking(client).then_some(())
    });
}

fn send(client: &mut impl postgres::GenericClient, subject: &str) -> i64 {
    client
        .query_one("SELECT email_accounts.send(\"to\" => '{bob@example.test}', subject => $1)", &[&subject])
        .unwrap()
        .get(0)
}

fn claim_of(client: &mut impl postgres::GenericClient, id: i64) -> (String, i32, Option<i32>, bool) {
    let row = client
        .query_one(
            "SELECT status, attempts, sender_process_id, claim_token IS NOT NULL FROM email_accounts.outbox WHERE outbox_id = $1",
            &[&id],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

#[test]
fn a_row_claimed_by_its_inserting_transaction_goes_out_once_at_commit() {
    let mut setup = setup_with(&["email_accounts.claim_on_insert = on"]);
    let sender: i32 = setup
        .client
        .query_one("SELECT pid FROM email_accounts.worker_status() WHERE role = 'sender'", &[])
        .unwrap()
        .get(0);

    // Claimed in the inserting transaction: the attempt counted, the sender
    // named, no token until the sender takes it; nothing goes out before the commit.
    wait_for_a_sender_taking_new_mail(&mut setup.client);
    let mut transaction = setup.client.transaction().unwrap();
    let id = send(&mut transaction, "claimed on insert");
    assert_eq!(claim_of(&mut transaction, id), ("sending".to_owned(), 1, Some(sender), false));
    transaction.commit().unwrap();
    wait_until("the row to be sent", LIMIT, || (status_of(&mut setup.client, id).0 == "sent").then_some(()));
    assert_eq!(claim_of(&mut setup.client, id).1, 1, "one attempt, counted on insert");

    // A rollback leaves nothing; a row cancelled in its own transaction is
    // cancelled, its attempt uncounted, and never sent.
    wait_for_a_sender_taking_new_mail(&mut setup.client);
    let mut transaction = setup.client.transaction().unwrap();
    let rolled_back = send(&mut transaction, "rolled back");
    transaction.rollback().unwrap();
    let mut transaction = setup.client.transaction().unwrap();
    let cancelled = send(&mut transaction, "cancelled");
    assert_eq!(claim_of(&mut transaction, cancelled).0, "sending");
    let was_cancelled: bool = transaction.query_one("SELECT email_accounts.cancel($1)", &[&cancelled]).unwrap().get(0);
    assert!(was_cancelled);
    transaction.commit().unwrap();
    assert_eq!(claim_of(&mut setup.client, cancelled), ("cancelled".to_owned(), 0, None, false));
    // The same for an admin who is no superuser (the claim is dropped by a
    // trigger: admins may not write a worker's claim themselves).
    setup
        .client
        .batch_execute(
            "CREATE ROLE mail_admin LOGIN; GRANT email_accounts_admin TO mail_admin;
             INSERT INTO email_accounts.tenant_member (role_name, tenant) VALUES ('mail_admin', '*');",
        )
        .unwrap();
    // (The role's commits wake the sender, which takes no new mail while it
    // looks: the insert is tried until the idle sender gets it.)
    let mut tries = 0;
    let cancelled_by_admin = loop {
        tries += 1;
        assert!(tries <= 50, "no row claimed on insert");
        wait_for_a_sender_taking_new_mail(&mut setup.client);
        let mut transaction = setup.client.transaction().unwrap();
        transaction.batch_execute("SET LOCAL ROLE mail_admin").unwrap();
        let id = send(&mut transaction, "cancelled");
        if claim_of(&mut transaction, id).0 != "sending" {
            transaction.rollback().unwrap();
            continue;
        }
        let was_cancelled: bool = transaction.query_one("SELECT email_accounts.cancel($1)", &[&id]).unwrap().get(0);
        assert!(was_cancelled);
        transaction.commit().unwrap();
        break id;
    };
    assert_eq!(claim_of(&mut setup.client, cancelled_by_admin), ("cancelled".to_owned(), 0, None, false));

    // One transaction claims ten rows at most; the rest queue. Every row goes out once.
    wait_for_a_sender_taking_new_mail(&mut setup.client);
    let mut transaction = setup.client.transaction().unwrap();
    let many: Vec<i64> = (0..12).map(|n| send(&mut transaction, &format!("many {n}"))).collect();
    let claimed = many.iter().filter(|id| claim_of(&mut transaction, **id).0 == "sending").count();
    assert_eq!(claimed, 10);
    transaction.commit().unwrap();
    for id in &many {
        wait_until("every row to be sent", LIMIT, || (status_of(&mut setup.client, *id).0 == "sent").then_some(()));
        assert_eq!(claim_of(&mut setup.client, *id).1, 1);
    }

    // An account with a rate limit: its row goes back to the queue
    // (uncounted) and the claim, which keeps the limits, sends it.
    setup
        .client
        .batch_execute("UPDATE email_accounts.account SET send_limit_per_hour = 100 WHERE name = 'Alice at Example'")
        .unwrap();
    wait_for_a_sender_taking_new_mail(&mut setup.client);
    let mut transaction = setup.client.transaction().unwrap();
    let limited = send(&mut transaction, "rate limited");
    assert_eq!(claim_of(&mut transaction, limited).0, "sending");
    transaction.commit().unwrap();
    wait_until("the limited row to be sent", LIMIT, || {
        (status_of(&mut setup.client, limited).0 == "sent").then_some(())
    });
    assert_eq!(claim_of(&mut setup.client, limited).1, 1, "the give-back uncounted the attempt, the claim counted it");

    // An account that cannot send when the sender takes the row (it stops
    // here in the inserting transaction): the row goes back to the queue,
    // uncounted, waits while the account cannot send, and goes out once it can.
    wait_for_a_sender_taking_new_mail(&mut setup.client);
    let mut transaction = setup.client.transaction().unwrap();
    let not_ready = send(&mut transaction, "not ready");
    assert_eq!(claim_of(&mut transaction, not_ready).0, "sending");
    transaction
        .execute("UPDATE email_accounts.account SET awaiting_password = true WHERE name = 'Alice at Example'", &[])
        .unwrap();
    transaction.commit().unwrap();
    wait_until("the row to go back to the queue", LIMIT, || {
        (claim_of(&mut setup.client, not_ready).0 == "queued").then_some(())
    });
    assert_eq!(claim_of(&mut setup.client, not_ready), ("queued".to_owned(), 0, None, false), "uncounted");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(status_of(&mut setup.client, not_ready).0, "queued", "not sent while the account cannot send");
    setup
        .client
        .batch_execute("UPDATE email_accounts.account SET awaiting_password = false WHERE name = 'Alice at Example'")
        .unwrap();
    wait_until("the row to be sent once the account can send", LIMIT, || {
        (status_of(&mut setup.client, not_ready).0 == "sent").then_some(())
    });
    assert_eq!(claim_of(&mut setup.client, not_ready).1, 1);

    let messages = wait_until("every message in bob's mailbox", LIMIT, || {
        let messages = setup.servers.mailbox("bob@example.test");
        (messages.len() >= 15).then_some(messages)
    });
    let subjects: Vec<String> = messages
        .iter()
        .map(|raw| mail_parser::MessageParser::default().parse(raw.as_bytes()).unwrap().subject().unwrap().to_owned())
        .collect();
    assert_eq!(messages.len(), 15, "each row once: {subjects:?}");
    // (A second copy would come moments after the first.)
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(setup.servers.mailbox("bob@example.test").len(), 15, "still each row once");
    assert!(!subjects.iter().any(|subject| subject == "rolled back" || subject == "cancelled"));
    let left: i64 = setup
        .client
        .query_one("SELECT count(*) FROM email_accounts.outbox WHERE outbox_id = $1", &[&rolled_back])
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

/// A transaction that claims a row on insert wakes its sender ahead of its
/// commit's flush. When the commit then fails after all (here SERIALIZABLE's
/// check at commit, which runs after that wake-up), nothing goes out, and
/// the sender goes on taking mail claimed on insert.
#[test]
fn a_commit_that_fails_after_waking_the_sender_sends_nothing() {
    let mut setup = setup_with(&["email_accounts.claim_on_insert = on"]);
    setup
        .client
        .batch_execute(
            "CREATE TABLE on_call (doctor text, on_duty boolean); INSERT INTO on_call VALUES ('a', true), ('b', true)",
        )
        .unwrap();
    let mut other = setup._cluster.connect("postgres");
    wait_for_a_sender_taking_new_mail(&mut setup.client);
    // Write skew: each reads both rows and takes one doctor off duty.
    let mut first = on_call_serializably(&mut other);
    let mut second = on_call_serializably(&mut setup.client);
    first.execute("UPDATE on_call SET on_duty = false WHERE doctor = 'a'", &[]).unwrap();
    second.execute("UPDATE on_call SET on_duty = false WHERE doctor = 'b'", &[]).unwrap();
    let doomed = send(&mut second, "never committed");
    assert_eq!(claim_of(&mut second, doomed).0, "sending", "claimed on insert");
    first.commit().unwrap();
    let error = second.commit().expect_err("the second commit breaks serializability");
    assert_eq!(error.code(), Some(&postgres::error::SqlState::T_R_SERIALIZATION_FAILURE), "{error}");

    wait_for_a_sender_taking_new_mail(&mut setup.client);
    let mut transaction = setup.client.transaction().unwrap();
    let next = send(&mut transaction, "committed");
    assert_eq!(claim_of(&mut transaction, next).0, "sending", "claimed on insert");
    transaction.commit().unwrap();
    wait_until("the next row to be sent", LIMIT, || (status_of(&mut setup.client, next).0 == "sent").then_some(()));
    let subjects: Vec<String> = setup
        .servers
        .mailbox("bob@example.test")
        .iter()
        .map(|raw| mail_parser::MessageParser::default().parse(raw.as_bytes()).unwrap().subject().unwrap().to_owned())
        .collect();
    assert_eq!(subjects, ["committed"]);
    let rows: i64 = setup.client.query_one("SELECT count(*) FROM email_accounts.outbox", &[]).unwrap().get(0);
    assert_eq!(rows, 1);
}

/// The sender woken ahead of a commit of rows claimed for it reads their
/// accounts' settings during the commit's flush. A transaction that changes
/// the account itself (here: it stops it sending) is not seen by that read:
/// whatever the flush's length, its own mail goes by the settings it
/// committed (back to the queue, uncounted), never by those read ahead.
#[test]
fn settings_read_during_the_commit_never_hide_the_inserting_transactions_own_change() {
    // A flush that takes commit_delay (the harness's clusters run without
    // fsync); each shorter than the sender's watch for it (2 ms), so the
    // sender takes the rows in the step it read ahead in.
    let mut setup = setup_with(&["email_accounts.claim_on_insert = on", "fsync = on"]);
    let mut rows = Vec::new();
    for delay_microseconds in [250, 500, 750, 1_000, 1_500] {
        wait_for_a_sender_taking_new_mail(&mut setup.client);
        let mut transaction = setup.client.transaction().unwrap();
        transaction
            .batch_execute(&format!("SET LOCAL commit_siblings = 0; SET LOCAL commit_delay = {delay_microseconds}"))
            .unwrap();
        let id = send(&mut transaction, &format!("flush of {delay_microseconds} µs"));
        assert_eq!(claim_of(&mut transaction, id).0, "sending", "claimed on insert");
        transaction
            .execute("UPDATE email_accounts.account SET awaiting_password = true WHERE name = 'Alice at Example'", &[])
            .unwrap();
        transaction.commit().unwrap();
        wait_until("the row to go back to the queue", LIMIT, || {
            (claim_of(&mut setup.client, id).0 != "sending").then_some(())
        });
        assert_eq!(claim_of(&mut setup.client, id), ("queued".to_owned(), 0, None, false), "{delay_microseconds} µs");
        setup
            .client
            .batch_execute(
                "UPDATE email_accounts.account SET awaiting_password = false WHERE name = 'Alice at Example'",
            )
            .unwrap();
        wait_until("the row to be sent once the account can send", LIMIT, || {
            (status_of(&mut setup.client, id).0 == "sent").then_some(())
        });
        rows.push(id);
    }
    for id in rows {
        assert_eq!(claim_of(&mut setup.client, id).1, 1, "sent once, by the claim");
    }

    // Mail sent as someone else answers to the default incoming account;
    // one deleted by the inserting transaction is no longer named (a delete
    // counts as a settings change, as every write to the account table).
    assert_eq!(reply_to_of_mail_as_carol(&mut setup, None, 500).as_deref(), Some("support@example.test"));
    assert_eq!(reply_to_of_mail_as_carol(&mut setup, Some("Support"), 250), None);
    for delay_microseconds in [500, 750, 1_000, 1_500] {
        setup
            .client
            .batch_execute(&format!(
                "INSERT INTO email_accounts.account (name, address, enable_incoming, default_incoming)
                 VALUES ('Support {delay_microseconds}', 'support{delay_microseconds}@example.test', true, true)"
            ))
            .unwrap();
        let deleted = format!("Support {delay_microseconds}");
        assert_eq!(reply_to_of_mail_as_carol(&mut setup, Some(&deleted), delay_microseconds), None);
    }
}

/// Sends mail as Carol through Alice's account in a transaction that first
/// deletes the account named `delete` and flushes for `delay_microseconds`;
/// returns the Reply-To bob got.
fn reply_to_of_mail_as_carol(setup: &mut Setup, delete: Option<&str>, delay_microseconds: u32) -> Option<String> {
    let subject = format!("as carol, deleting {}, flush of {delay_microseconds} us", delete.unwrap_or("none"));
    wait_for_a_sender_taking_new_mail(&mut setup.client);
    let mut transaction = setup.client.transaction().unwrap();
    transaction
        .batch_execute(&format!("SET LOCAL commit_siblings = 0; SET LOCAL commit_delay = {delay_microseconds}"))
        .unwrap();
    if let Some(name) = delete {
        transaction.execute("DELETE FROM email_accounts.account WHERE name = $1", &[&name]).unwrap();
    }
    let id: i64 = transaction
        .query_one(
            "SELECT email_accounts.send(\"to\" => '{bob@example.test}', subject => $1,
                                        sender => 'Carol <carol@example.test>')",
            &[&subject],
        )
        .unwrap()
        .get(0);
    assert_eq!(claim_of(&mut transaction, id).0, "sending", "claimed on insert");
    transaction.commit().unwrap();
    wait_until("the row to be sent", LIMIT, || (status_of(&mut setup.client, id).0 == "sent").then_some(()));
    let message = wait_until("carol's message at bob's", LIMIT, || {
        setup.servers.mailbox("bob@example.test").into_iter().find(|raw| raw.contains(&subject))
    });
    header_value(&message, "Reply-To")
}

/// A SERIALIZABLE transaction that has read who is on call.
fn on_call_serializably(client: &mut postgres::Client) -> postgres::Transaction<'_> {
    let mut transaction =
        client.build_transaction().isolation_level(postgres::IsolationLevel::Serializable).start().unwrap();
    let on_duty: i64 = transaction.query_one("SELECT count(*) FROM on_call WHERE on_duty", &[]).unwrap().get(0);
    assert_eq!(on_duty, 2);
    transaction
}

/// A row claimed on insert for a sender that stops before the inserting
/// transaction commits is given back by the sender that took its place,
/// told by the commit, and sent long before the lease lapses: its attempt
/// uncounted, since the stopped sender never took it (no crash since it
/// started, so a take would have left its token).
#[test]
fn a_row_claimed_for_a_sender_that_stopped_is_given_back_and_sent() {
    let mut setup = setup_with(&["email_accounts.claim_on_insert = on"]);
    wait_for_a_sender_taking_new_mail(&mut setup.client);
    let mut transaction = setup.client.transaction().unwrap();
    let id: i64 = transaction
        .query_one("SELECT email_accounts.send(\"to\" => '{bob@example.test}', subject => 'orphan')", &[])
        .unwrap()
        .get(0);
    let (status, _, claimed_for, _) = claim_of(&mut transaction, id);
    assert_eq!(status, "sending");
    let mut other = setup._cluster.connect("postgres");
    let stopped: bool = other.query_one("SELECT pg_terminate_backend($1)", &[&claimed_for.unwrap()]).unwrap().get(0);
    assert!(stopped);
    wait_until("a new sender", LIMIT, || {
        let pid: Option<i32> = other
            .query_one("SELECT pid FROM email_accounts.worker_status() WHERE role = 'sender'", &[])
            .unwrap()
            .get(0);
        pid.filter(|pid| Some(*pid) != claimed_for).map(|_| ())
    });
    transaction.commit().unwrap();
    // (The lease is 5 minutes; LIMIT is one.)
    wait_until("the row to be sent", LIMIT, || (status_of(&mut setup.client, id).0 == "sent").then_some(()));
    assert_eq!(claim_of(&mut setup.client, id).1, 1, "the stopped sender never took it: one attempt");
    let messages = wait_until("the message", LIMIT, || {
        let messages = setup.servers.mailbox("bob@example.test");
        (!messages.is_empty()).then_some(messages)
    });
    assert_eq!(messages.len(), 1);
}

/// A prepared transaction's rows claimed on insert: its COMMIT PREPARED (in
/// another session) tells no sender, so they wait for their lease; then,
/// never taken by a sender that still runs, they go back to the queue with
/// their attempt uncounted and are sent once.
#[test]
fn rows_claimed_by_a_prepared_transaction_go_back_uncounted_when_their_lease_lapses() {
    let mut setup = setup_with(&[
        "email_accounts.claim_on_insert = on",
        "email_accounts.lease_duration = 10",
        "max_prepared_transactions = 2",
        // (Nothing wakes the sender for a prepared transaction: its poll looks.)
        "email_accounts.fallback_poll_interval = '2s'",
    ]);
    wait_for_a_sender_taking_new_mail(&mut setup.client);
    setup.client.batch_execute("BEGIN").unwrap();
    let id = send(&mut setup.client, "prepared");
    assert_eq!(claim_of(&mut setup.client, id).0, "sending");
    setup.client.batch_execute("PREPARE TRANSACTION 'mail'").unwrap();
    setup.client.batch_execute("COMMIT PREPARED 'mail'").unwrap();
    wait_until("the row to be sent", LIMIT, || (status_of(&mut setup.client, id).0 == "sent").then_some(()));
    let row = setup
        .client
        .query_one("SELECT attempts, last_error FROM email_accounts.outbox WHERE outbox_id = $1", &[&id])
        .unwrap();
    assert_eq!((row.get::<_, i32>(0), row.get::<_, Option<String>>(1)), (1, None), "never sent before: one attempt");
    let messages = wait_until("the message", LIMIT, || {
        let messages = setup.servers.mailbox("bob@example.test");
        (!messages.is_empty()).then_some(messages)
    });
    assert_eq!(messages.len(), 1);
}

/// A row claimed on insert that another transaction holds locked (an
/// attachment being added to it, a cancel() under way) is skipped by the
/// take, never waited for: other mail goes out meanwhile, and the row once
/// the lock is gone, with one attempt. (A restore holds the sender off
/// while the lock is taken, so the take cannot come first.)
#[test]
fn a_locked_row_claimed_on_insert_holds_up_nothing_and_goes_out_once_free() {
    let mut setup = setup_with(&["email_accounts.claim_on_insert = on"]);
    setup.client.batch_execute("CREATE ROLE restored_role").unwrap();
    wait_for_a_sender_taking_new_mail(&mut setup.client);
    let mut transaction = setup.client.transaction().unwrap();
    let locked = send(&mut transaction, "locked");
    assert_eq!(claim_of(&mut transaction, locked).0, "sending");

    // A session writing as a restore does: the sender waits for it to end.
    let mut restoring = setup._cluster.connect("postgres");
    restoring
        .batch_execute(
            "SET row_security = off;
             INSERT INTO email_accounts.tenant_member (role_name, tenant) VALUES ('restored_role', 'acme');",
        )
        .unwrap();
    let mut watcher = setup._cluster.connect("postgres");
    wait_until("the sender to wait for the restore", LIMIT, || {
        // (Woken, it looks and finds the restore.)
        watcher.batch_execute("SELECT email_accounts.flush()").unwrap();
        let state: String = watcher
            .query_one("SELECT state FROM email_accounts.worker_status() WHERE role = 'sender'", &[])
            .unwrap()
            .get(0);
        (state == "waiting for a restore to end").then_some(())
    });
    transaction.commit().unwrap();
    let mut locker = setup._cluster.connect("postgres");
    locker.batch_execute("BEGIN").unwrap();
    locker.execute("SELECT FROM email_accounts.outbox WHERE outbox_id = $1 FOR SHARE", &[&locked]).unwrap();
    let other = send(&mut setup.client, "other");
    drop(restoring);

    wait_until("the other row to be sent", LIMIT, || (status_of(&mut setup.client, other).0 == "sent").then_some(()));
    assert_eq!(claim_of(&mut setup.client, locked).0, "sending");
    assert!(!claim_of(&mut setup.client, locked).3, "not taken while locked");
    locker.batch_execute("COMMIT").unwrap();
    wait_until("the locked row to be sent", LIMIT, || (status_of(&mut setup.client, locked).0 == "sent").then_some(()));
    assert_eq!(claim_of(&mut setup.client, locked).1, 1);
    let messages = wait_until("both messages", LIMIT, || {
        let messages = setup.servers.mailbox("bob@example.test");
        (messages.len() >= 2).then_some(messages)
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(messages.len(), 2);
    assert_eq!(setup.servers.mailbox("bob@example.test").len(), 2, "each once");
}
