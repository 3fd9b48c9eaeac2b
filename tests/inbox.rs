//! The inbox end to end: the receiver worker syncs real Dovecot mailboxes
//! over IMAP and POP3 into tables — incrementally, exactly once, without
//! touching \Seen — links replies, creates application rows and answers
//! automatically under RFC 3834.
// Run by `make test-integration`; `cargo pgrx test` (feature pg_test) runs only the #[pg_test]s.
#![cfg(not(feature = "pg_test"))]

mod broken_mime;
mod harness;

use harness::{table_scans, wait_until, worker_timeouts, CuttingProxy, MailServers, Postgres};
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
    servers.add_example_domain(&mut client);
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

#[test]
fn unseen_only_initial_count_and_a_changed_uidvalidity() {
    let mut setup = setup(&[]);
    let address = "support@example.test";
    let mut messages = numbered("u", 0..6);
    messages[1].1 = true;
    messages[4].1 = true;
    setup.servers.append(address, "Support", &messages);
    setup.servers.append(address, "INBOX", &[(message("in the inbox", ""), false)]);
    let flags_before = setup.servers.folder_flags(address, "Support");
    setup.account("Support", address, "folders = '{INBOX,Support}', sync_option = 'unseen', initial_sync_count = 3");

    let both = setup.sync_now("Support");
    assert_eq!(both.iter().map(|row| row.0.as_str()).collect::<Vec<_>>(), ["INBOX", "Support"], "{both:?}");
    setup.client.batch_execute("DELETE FROM email_accounts.message WHERE folder = 'INBOX'").unwrap();
    // Unseen are 0, 2, 3, 5; the newest three of them.
    assert_eq!(setup.subjects("Support"), ["u 002", "u 003", "u 005"]);
    assert_eq!(setup.servers.folder_flags(address, "Support"), flags_before, "\\Seen must not change");

    setup.servers.append(address, "Support", &[(message("u 006", ""), false), (message("u 007", ""), true)]);
    setup.sync_now("Support");
    assert_eq!(setup.subjects("Support"), ["u 002", "u 003", "u 005", "u 006"]);
    let old_validity = setup.count("SELECT uidvalidity FROM email_accounts.sync_state WHERE folder = 'Support'");

    // A new UIDVALIDITY: the folder is read afresh; what is already stored is not stored again.
    setup.servers.recreate_folder(address, "Support");
    let again: Vec<(Vec<u8>, bool)> =
        ["u 002", "u 003", "u 005", "u 006", "u 008"].iter().map(|subject| (message(subject, ""), false)).collect();
    setup.servers.append(address, "Support", &again);
    let result = setup.sync_now("Support");
    assert_eq!(result[1].2, "ok", "{result:?}");
    assert_eq!(result[1].1, 1, "only u 008 is new: {result:?}");
    assert_eq!(setup.subjects("Support"), ["u 002", "u 003", "u 005", "u 006", "u 008"]);
    assert_ne!(setup.count("SELECT uidvalidity FROM email_accounts.sync_state WHERE folder = 'Support'"), old_validity);
    assert_eq!(
        setup.count(
            "SELECT count(*) FROM email_accounts.message
              WHERE uidvalidity = (SELECT uidvalidity FROM email_accounts.sync_state WHERE folder = 'Support')"
        ),
        3,
        "u 005 and u 006 rebound to their new UIDs, u 008 new"
    );
}

fn odd_messages() -> Vec<(&'static str, Vec<u8>)> {
    let big = "A".repeat(6000);
    let small = "B".repeat(60);
    let mut nested = "Subject: level 30\r\n\r\ninnermost\r\n".to_owned();
    for level in (0..30).rev() {
        nested = format!("Subject: level {level}\r\nContent-Type: message/rfc822\r\n\r\n{nested}");
    }
    vec![
        ("windows-1252", b"From: =?windows-1252?Q?Ren=E9?= <rene@example.com>\r\nSubject: =?ISO-8859-1?Q?caf=E9?=\r\nContent-Type: text/plain; charset=windows-1252\r\n\r\nprix: 5 \x80\r\n".to_vec()),
        ("broken headers", b"From bob@example.test\r\nSubject: broken \xff\xfe header\r\nThis line has no colon\r\n: empty name\r\n\r\nbody\r\n".to_vec()),
        ("no message id", b"From: bob@example.test\r\nSubject: no id\r\n\r\nbody\r\n".to_vec()),
        ("nested", nested.into_bytes()),
        ("missing boundary", b"Subject: missing boundary\r\nContent-Type: multipart/mixed; boundary=\"xyz\"\r\n\r\n--xyz\r\nContent-Type: text/plain\r\n\r\nfirst part, never closed\r\n".to_vec()),
        ("nul bytes", b"Subject: nul bytes\r\n\r\nbefore\x00after\r\n".to_vec()),
        ("attachments", format!(
            "Subject: attachments\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"big.bin\"\r\n\r\n{big}\r\n--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=\"small.txt\"\r\n\r\n{small}\r\n--b--\r\n"
        ).into_bytes()),
        ("garbage", b"\x01\x02 this is not a mail message at all".to_vec()),
        ("blank", b"\r\n \r\n\t\r\n".to_vec()),
    ]
}

#[test]
fn odd_messages_and_the_attachment_limit_are_all_stored() {
    let mut setup = setup(&[]);
    let corpus = odd_messages();
    let raw: Vec<(Vec<u8>, bool)> = corpus.iter().map(|(_, bytes)| (bytes.clone(), false)).collect();
    setup.servers.append("support@example.test", "INBOX", &raw);
    setup.account("Support", "support@example.test", "sync_option = 'all', attachment_size_limit = 1000");
    let result = setup.sync_now("Support");
    assert_eq!(result[0].2, "ok", "{result:?}");
    assert_eq!(setup.count("SELECT count(*) FROM email_accounts.message"), corpus.len() as i64);

    let row = setup
        .client
        .query_one(
            "SELECT subject, body_text, from_address FROM email_accounts.message WHERE body_text LIKE 'prix%'",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "café");
    assert!(row.get::<_, String>(1).contains('€'), "windows-1252 decoded");
    assert_eq!(row.get::<_, String>(2), "René <rene@example.com>");
    assert_eq!(
        setup.count("SELECT count(*) FROM email_accounts.message WHERE internet_message_id IS NULL"),
        corpus.len() as i64
    );
    assert_eq!(
        setup.count("SELECT count(*) FROM email_accounts.message WHERE body_text LIKE 'before\u{FFFD}after%'"),
        1
    );
    let parts = setup
        .client
        .query(
            "SELECT filename, size, content IS NULL FROM email_accounts.message_attachment WHERE filename IS NOT NULL ORDER BY filename",
            &[],
        )
        .unwrap();
    let parts: Vec<(String, i64, bool)> = parts.iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect();
    assert_eq!(parts, [("big.bin".to_owned(), 6000, true), ("small.txt".to_owned(), 60, false)]);

    // What cannot be parsed is kept raw with its parse error; reparse() runs the parser again.
    let garbage: i64 = setup
        .client
        .query_one("SELECT message_id FROM email_accounts.message WHERE parse_error = 'the message is empty'", &[])
        .unwrap()
        .get(0);
    assert!(!setup.client.query_one("SELECT email_accounts.reparse($1)", &[&garbage]).unwrap().get::<_, bool>(0));
    let parsed: i64 = setup
        .client
        .query_one("SELECT message_id FROM email_accounts.message WHERE subject = 'attachments'", &[])
        .unwrap()
        .get(0);
    setup.client.execute("UPDATE email_accounts.message SET subject = NULL WHERE message_id = $1", &[&parsed]).unwrap();
    assert!(setup.client.query_one("SELECT email_accounts.reparse($1)", &[&parsed]).unwrap().get::<_, bool>(0));
    assert_eq!(setup.count("SELECT count(*) FROM email_accounts.message WHERE subject = 'attachments'"), 1);
    assert_eq!(
        setup.count(&format!("SELECT count(*) FROM email_accounts.message_attachment WHERE message_id = {parsed}")),
        2
    );
}

/// Lists with every character SQL array literals quote, and a cursor lost
/// while the messages stay: the batch that meets stored messages is stored
/// again skipping them, and the new ones behind them in it are kept.
#[test]
fn address_and_reference_lists_keep_every_character_and_a_lost_cursor_stores_nothing_twice() {
    let mut setup = setup(&[]);
    let odd = format!(
        "From: Bob <bob@example.test>\r\nSubject: odd lists\r\nMessage-ID: <odd@example.test>\r\n{}\r\nBody.\r\n",
        "To: \"Smith, \\\"Jr\\\" {x} \\\\ y\" <smith@example.test>, NULL <null@example.test>\r\n\
         Cc: \"a,b\" <ab@example.test>\r\n\
         References: <a\"b\\c@example.test> <{x},NULL@example.test>\r\n",
    )
    .into_bytes();
    let mut first = vec![(odd.clone(), false)];
    first.extend(numbered("before", 0..4));
    setup.servers.append("support@example.test", "INBOX", &first);
    setup.account("Support", "support@example.test", "sync_option = 'all'");
    assert_eq!(setup.sync_now("Support")[0].2, "ok");

    let parsed = email_accounts_mail::parse::parse(&odd, u64::MAX).unwrap();
    assert!(parsed.to.len() == 2 && parsed.references.len() == 2, "{parsed:?}");
    assert!(parsed.to[0].contains('"') && parsed.references[0].contains('\\'), "{parsed:?}");
    let row = setup
        .client
        .query_one(
            "SELECT to_addresses, cc_addresses, \"references\", reply_to FROM email_accounts.message
              WHERE subject = 'odd lists'",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, Vec<String>>(0), parsed.to);
    assert_eq!(row.get::<_, Vec<String>>(1), parsed.cc);
    assert_eq!(row.get::<_, Vec<String>>(2), parsed.references);
    assert_eq!(row.get::<_, Vec<String>>(3), Vec::<String>::new());

    // The cursor is lost; three new messages come behind the stored ones.
    setup.servers.append("support@example.test", "INBOX", &numbered("after", 0..3));
    setup.client.batch_execute("DELETE FROM email_accounts.sync_state").unwrap();
    let result = setup.sync_now("Support");
    assert_eq!(result[0].2, "ok", "{result:?}");
    assert_eq!(result[0].1, 3, "only the new messages count: {result:?}");
    assert_eq!(setup.count("SELECT count(*) FROM email_accounts.message"), 8);
    assert_eq!(setup.count("SELECT count(DISTINCT uid) FROM email_accounts.message"), 8);
    assert_eq!(setup.count("SELECT count(*) FROM email_accounts.message WHERE subject LIKE 'after%'"), 3);
    assert_eq!(setup.count("SELECT max(last_uid) FROM email_accounts.sync_state"), 8);
}

#[test]
fn a_corpus_of_broken_messages_is_stored_once_each_byte_for_byte_and_the_receiver_keeps_going() {
    let mut setup = setup(&[]);
    let corpus = broken_mime::corpus();
    assert!(corpus.len() >= 40, "the issue asks for at least 40, we have {}", corpus.len());
    let raw: Vec<(Vec<u8>, bool)> = corpus.iter().map(|(_, bytes)| (bytes.clone(), false)).collect();
    setup.servers.append("support@example.test", "INBOX", &raw);
    setup.account("Support", "support@example.test", "sync_option = 'all'");
    let receiver = |client: &mut postgres::Client| -> i32 {
        client.query_one("SELECT pid FROM email_accounts.worker_status() WHERE role = 'receiver'", &[]).unwrap().get(0)
    };
    let receiver_before = receiver(&mut setup.client);

    let result = setup.sync_now("Support");
    assert_eq!(result[0].2, "ok", "{result:?}");
    // (Setting the password already woke the receiver: the sync may have run before sync_now.)
    assert_eq!(setup.count("SELECT count(*) FROM email_accounts.message"), corpus.len() as i64);
    assert_eq!(setup.count("SELECT count(DISTINCT uid) FROM email_accounts.message"), corpus.len() as i64);
    // Every message is kept as it arrived. Dovecot itself turns bare LF or
    // CR into CRLF and NUL into 0x80 when it saves: compare without those.
    let without_line_ends = |raw: &[u8]| -> Vec<u8> {
        raw.iter()
            .filter(|byte| **byte != b'\r' && **byte != b'\n')
            .map(|byte| if *byte == 0 { 0x80 } else { *byte })
            .collect()
    };
    let stored: std::collections::HashSet<Vec<u8>> = setup
        .client
        .query("SELECT raw FROM email_accounts.message", &[])
        .unwrap()
        .iter()
        .map(|row| without_line_ends(row.get::<_, &[u8]>(0)))
        .collect();
    for (name, bytes) in &corpus {
        assert!(stored.contains(&without_line_ends(bytes)), "{name} is stored with its bytes");
    }
    assert_eq!(
        setup.count("SELECT count(*) FROM email_accounts.message WHERE internet_message_id = '<same@example.test>'"),
        3,
        "three messages with one Message-ID are three messages"
    );
    let huge: i64 =
        setup.count("SELECT length(subject)::bigint FROM email_accounts.message WHERE subject LIKE 'SSSS%'");
    assert!(huge >= 10 * 1024 * 1024, "the 10 MB subject is kept whole ({huge})");

    // The receiver never went down, and a second sync finds nothing new.
    assert_eq!(receiver(&mut setup.client), receiver_before);
    let again = setup.sync_now("Support");
    assert_eq!((again[0].1, again[0].2.as_str()), (0, "ok"));
    assert_eq!(setup.count("SELECT count(*) FROM email_accounts.message"), corpus.len() as i64);
}

#[test]
fn pop3_keeps_or_deletes_messages_only_after_they_are_committed() {
    let mut setup = setup(&["email_accounts.receive_max_backoff = '4h'"]);
    let pop3 = format!(
        "incoming_protocol = 'pop3', incoming_port = {}, incoming_security = 'ssl', folders = '{{INBOX}}'",
        setup.servers.pop3s
    );
    for address in ["bob@example.test", "carol@example.test", "erin@example.test"] {
        setup.servers.append(address, "INBOX", &numbered(address.split('@').next().unwrap(), 0..3));
    }
    setup.servers.append("carol@example.test", "INBOX", &[(message("refuse me", ""), false)]);
    // The database refuses one of Carol's messages: it must stay on the server.
    setup
        .client
        .batch_execute(
            "CREATE SEQUENCE public.refusals;
             GRANT USAGE ON SEQUENCE public.refusals TO PUBLIC;
             CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.subject = 'refuse me' THEN
                 PERFORM nextval('public.refusals');  -- counted also when rolled back
                 RAISE EXCEPTION 'refused by a test trigger';
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON email_accounts.message FOR EACH ROW EXECUTE FUNCTION public.refuse();",
        )
        .unwrap();

    // Everything is in place before the accounts exist (creating one syncs it at once).
    setup.account("Bob", "bob@example.test", &format!("{pop3}, pop3_retrieval = 'keep'"));
    setup.account("Carol", "carol@example.test", &format!("{pop3}, pop3_retrieval = 'delete_after_store'"));
    setup.account(
        "Erin",
        "erin@example.test",
        &format!("{pop3}, login_id = 'erin.login', pop3_retrieval = 'delete_after_days', pop3_delete_after_days = 2"),
    );
    for name in ["Bob", "Carol", "Erin"] {
        setup.sync_now(name);
    }
    assert_eq!(setup.subjects("Bob").len(), 3);
    assert_eq!(setup.servers.mailbox("bob@example.test").len(), 3, "keep leaves mail on the server");
    assert_eq!(setup.subjects("Carol").len(), 3);
    let left = setup.servers.mailbox("carol@example.test");
    assert_eq!(left.len(), 1, "only the refused message stays");
    assert!(left[0].contains("refuse me"));
    let refusals = |setup: &mut Setup| setup.count("SELECT last_value FROM public.refusals");
    let refused_before = refusals(&mut setup);
    let carol = setup.sync_now("Carol");
    assert_eq!(carol[0].2, "failing", "{carol:?}");
    // Tried once in the batch, once alone: a refusal that is no duplicate
    // key is not tried again as a batch that skips stored messages.
    assert_eq!(refusals(&mut setup) - refused_before, 2);
    assert!(carol[0].3.as_deref().unwrap_or_default().contains("refused by a test trigger"), "{carol:?}");
    // Failures in a row: the next attempt backs off to at least 2 × poll_interval (1 hour), capped at 4 hours.
    assert_eq!(
        setup.count(
            "SELECT count(*) FROM email_accounts.sync_state JOIN email_accounts.account USING (account_id)
              WHERE name = 'Carol' AND consecutive_failures >= 2 AND next_attempt_at > now() + interval '119 minutes'"
        ),
        1
    );
    assert_eq!(setup.subjects("Erin").len(), 3);
    assert_eq!(setup.servers.mailbox("erin@example.test").len(), 3, "not old enough to delete");

    setup.client.batch_execute("DROP TRIGGER refuse ON email_accounts.message").unwrap();
    setup
        .client
        .batch_execute(
            "UPDATE email_accounts.message SET received_at = now() - interval '3 days'
              WHERE subject = 'erin 000'",
        )
        .unwrap();
    for name in ["Bob", "Carol", "Erin"] {
        let result = setup.sync_now(name);
        assert_eq!(result[0].2, "ok", "{name}: {result:?}");
    }
    assert_eq!(setup.subjects("Bob").len(), 3, "no duplicates");
    assert_eq!(setup.subjects("Carol").len(), 4);
    assert!(setup.servers.mailbox("carol@example.test").is_empty());
    assert_eq!(setup.servers.mailbox("erin@example.test").len(), 2, "the message stored 3 days ago is deleted");
    assert_eq!(setup.subjects("Erin").len(), 3);

    // Years of mail kept in the database, a near-empty mailbox on the server:
    // a sync reads only what the server lists, not every stored UIDL.
    setup
        .client
        .batch_execute(
            "INSERT INTO email_accounts.message (account_id, folder, unique_id, size, raw, raw_sha256)
             SELECT account_id, 'INBOX', 'archived-' || n, 1, 'x', sha256('x') FROM email_accounts.account, generate_series(1, 30000) AS n
              WHERE name = 'Carol';
             SELECT pg_stat_force_next_flush();",
        )
        .unwrap();
    setup.servers.append("carol@example.test", "INBOX", &[(message("after the archive", ""), false)]);
    // The earlier syncs' statistics all in first (a late flush would count for this sync's wait below).
    wait_until("the receiver's statistics to settle", LIMIT, || {
        let before = sync_state_writes(&mut setup.client);
        std::thread::sleep(Duration::from_millis(1500));
        (sync_state_writes(&mut setup.client) == before).then_some(())
    });
    let (rows_read, syncs) = (message_rows_read(&mut setup.client), sync_state_writes(&mut setup.client));
    assert_eq!(setup.sync_now("Carol")[0].2, "ok");
    // The receiver flushes its statistics after its step: the read counts are in once its sync_state write is.
    wait_until("the receiver's statistics", LIMIT, || (sync_state_writes(&mut setup.client) > syncs).then_some(()));
    let read = message_rows_read(&mut setup.client) - rows_read;
    assert!(read < 100, "the sync read {read} stored messages for one new message on the server");
    assert_eq!(setup.count("SELECT count(*) FROM email_accounts.message WHERE subject = 'after the archive'"), 1);
    assert!(setup.servers.mailbox("carol@example.test").is_empty());
}

/// Rows of email_accounts.message read so far (sequential and through indexes).
fn message_rows_read(client: &mut postgres::Client) -> i64 {
    table_statistic(client, "message", "seq_tup_read + idx_tup_fetch")
}

/// Rows of email_accounts.sync_state written so far.
fn sync_state_writes(client: &mut postgres::Client) -> i64 {
    table_statistic(client, "sync_state", "n_tup_ins + n_tup_upd")
}

/// A sum of pg_stat_user_tables counters of one of the extension's tables.
fn table_statistic(client: &mut postgres::Client, table: &str, counters: &str) -> i64 {
    client
        .query_one(
            &format!(
                "SELECT coalesce({counters}, 0)::bigint FROM pg_stat_user_tables
                  WHERE schemaname = 'email_accounts' AND relname = $1"
            ),
            &[&table],
        )
        .unwrap()
        .get(0)
}

#[test]
fn replies_are_linked_new_mail_creates_rows_and_gets_one_auto_reply() {
    let mut setup = setup(&[]);
    setup
        .client
        .batch_execute(
            "CREATE TABLE public.ticket (id bigserial PRIMARY KEY, title text, raised_by text, description text);
             CREATE TABLE public.received_log (message_id bigint);
             CREATE FUNCTION public.note_message(id bigint) RETURNS void LANGUAGE sql
                 AS 'INSERT INTO public.received_log VALUES (id)';
             -- The routing code runs as this role: no superuser, bound to the account's tenant.
             CREATE ROLE support_desk NOLOGIN;
             GRANT INSERT, SELECT ON public.ticket, public.received_log TO support_desk;
             GRANT USAGE ON SEQUENCE public.ticket_id_seq TO support_desk;
             INSERT INTO email_accounts.tenant_member VALUES ('support_desk', '*');",
        )
        .unwrap();
    setup.account(
        "Support",
        "support@example.test",
        "sync_option = 'all', enable_outgoing = true, default_outgoing = true, enable_auto_reply = true,
         auto_reply_message = 'We got your message.', owner_role = 'support_desk', append_to_table = 'public.ticket',
         append_to_columns = '{\"title\": \"subject\", \"raised_by\": \"sender_address\", \"description\": \"body\"}',
         on_receive_function = 'public.note_message(bigint)'",
    );
    let queued: i64 = setup
        .client
        .query_one(
            "SELECT email_accounts.send(\"to\" => '{bob@example.test}', subject => 'Your order', body_text => 'Shipped.',
                                        reference_table => 'public.ticket', reference_id => '42')",
            &[],
        )
        .unwrap()
        .get(0);
    let sent: String = setup
        .client
        .query_one("SELECT message_id FROM email_accounts.outbox WHERE outbox_id = $1", &[&queued])
        .unwrap()
        .get(0);
    let incoming = vec![
        (b"From: Carol <carol@example.test>\r\nSubject: Printer broken\r\nMessage-ID: <a@example.test>\r\n\r\nIt smokes.\r\n".to_vec(), false),
        (format!("From: bob@example.test\r\nSubject: Re: Your order\r\nMessage-ID: <b@example.test>\r\nIn-Reply-To: {sent}\r\n\r\nThanks\r\n").into_bytes(), false),
        (format!("From: bob@example.test\r\nSubject: Re: Re: Your order\r\nMessage-ID: <c@example.test>\r\nReferences: <root@example.test> {sent}\r\n\r\nAgain\r\n").into_bytes(), false),
        (b"From: carol@example.test\r\nSubject: Also the scanner\r\nMessage-ID: <d@example.test>\r\n\r\nSame.\r\n".to_vec(), false),
        (b"From: dave@other.test\r\nSubject: Out of office\r\nMessage-ID: <e@example.test>\r\nAuto-Submitted: auto-replied\r\n\r\nAway.\r\n".to_vec(), false),
        (b"From: carol@example.test\r\nSubject: Re: Printer broken\r\nMessage-ID: <f@example.test>\r\nIn-Reply-To: <a@example.test>\r\n\r\nStill smoking.\r\n".to_vec(), false),
    ];
    setup.servers.append("support@example.test", "INBOX", &incoming);
    let result = setup.sync_now("Support");
    assert_eq!(result[0].2, "ok", "{result:?}");

    let link = |setup: &mut Setup, id: &str| -> (Option<i64>, Option<i64>, Option<String>, Option<String>) {
        let row = setup
            .client
            .query_one(
                "SELECT reply_to_outbox_id, reply_to_message_id, reference_table::text, reference_id
                   FROM email_accounts.message WHERE internet_message_id = $1",
                &[&id],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2), row.get(3))
    };
    let by_in_reply_to = link(&mut setup, "<b@example.test>");
    assert!(by_in_reply_to.0.is_some());
    assert_eq!((by_in_reply_to.2.as_deref(), by_in_reply_to.3.as_deref()), (Some("ticket"), Some("42")));
    let by_references = link(&mut setup, "<c@example.test>");
    assert_eq!(by_references.0, by_in_reply_to.0, "linked through References only");
    assert_eq!(by_references.3.as_deref(), Some("42"));
    let new_mail = link(&mut setup, "<a@example.test>");
    assert_eq!(new_mail.2.as_deref(), Some("ticket"));
    let ticket = new_mail.3.clone().expect("a ticket row");
    let row = setup
        .client
        .query_one("SELECT title, raised_by, description FROM public.ticket WHERE id::text = $1", &[&ticket])
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1), row.get::<_, String>(2).trim_end().to_owned()),
        ("Printer broken".to_owned(), "carol@example.test".to_owned(), "It smokes.".to_owned())
    );
    let answer_to_new = link(&mut setup, "<f@example.test>");
    assert!(answer_to_new.1.is_some(), "linked to the earlier incoming message");
    assert_eq!(answer_to_new.3, Some(ticket), "inherits its ticket");
    // Not replies: a, d, e (the auto-submitted one still becomes a ticket).
    assert_eq!(setup.count("SELECT count(*) FROM public.ticket"), 3);
    assert_eq!(setup.count("SELECT count(*) FROM public.received_log"), 6);

    // One automatic reply: to Carol's first message only.
    let reasons = setup
        .client
        .query(
            "SELECT internet_message_id, auto_reply_outbox_id IS NOT NULL, no_auto_reply_reason
               FROM email_accounts.message ORDER BY internet_message_id",
            &[],
        )
        .unwrap();
    let reasons: Vec<(String, bool, Option<String>)> =
        reasons.iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect();
    assert!(reasons[0].1, "{reasons:?}");
    assert!(reasons[3].2.as_deref().unwrap_or_default().contains("already got an automatic reply"), "{reasons:?}");
    assert!(reasons[4].2.as_deref().unwrap_or_default().contains("Auto-Submitted"), "{reasons:?}");
    assert!(reasons[2].2.as_deref().unwrap_or_default().contains("already got an automatic reply"), "{reasons:?}");
    assert_eq!(reasons.iter().filter(|(_, replied, _)| *replied).count(), 2, "Carol's and Bob's first: {reasons:?}");
    let carol_mail = wait_until("the auto reply in Carol's mailbox", LIMIT, || {
        let mailbox = setup.servers.mailbox("carol@example.test");
        (!mailbox.is_empty()).then_some(mailbox)
    });
    assert_eq!(carol_mail.len(), 1);
    assert!(carol_mail[0].contains("Auto-Submitted: auto-replied"), "{}", carol_mail[0]);
    assert!(carol_mail[0].contains("Subject: Auto: Printer broken"), "{}", carol_mail[0]);
    assert!(carol_mail[0].contains("In-Reply-To: <a@example.test>"), "{}", carol_mail[0]);
}

#[test]
fn a_changed_uidvalidity_on_a_folder_of_2000_stores_nothing_twice() {
    const MESSAGES: usize = 2000;
    let mut setup = setup(&[]);
    let address = "support@example.test";
    setup.servers.append(address, "Archive", &numbered("archived", 0..MESSAGES));
    setup.account(
        "Support",
        address,
        // A folder synced afresh reads the newest initial_sync_count: all of it here.
        &format!("sync_option = 'all', initial_sync_count = {}, folders = '{{Archive}}'", MESSAGES + 10),
    );
    assert_eq!(setup.sync_now("Support")[0].2, "ok");
    assert_eq!(setup.count("SELECT count(*) FROM email_accounts.message"), MESSAGES as i64);

    // The folder is recreated (a new UIDVALIDITY) with the same mail and ten more.
    setup.servers.recreate_folder(address, "Archive");
    setup.servers.append(address, "Archive", &numbered("archived", 0..MESSAGES + 10));
    let result = setup.sync_now("Support");
    assert_eq!((result[0].1, result[0].2.as_str()), (10, "ok"), "{result:?}");
    assert_eq!(setup.count("SELECT count(*) FROM email_accounts.message"), MESSAGES as i64 + 10);
    assert_eq!(setup.count("SELECT count(DISTINCT subject) FROM email_accounts.message"), MESSAGES as i64 + 10);
    assert_eq!(
        setup.count(
            "SELECT count(*) FROM email_accounts.message
              WHERE uidvalidity = (SELECT uidvalidity FROM email_accounts.sync_state WHERE folder = 'Archive')"
        ),
        MESSAGES as i64 + 10,
        "every stored message rebound to its new UID"
    );
}

#[test]
fn imap_and_pop3_cut_mid_fetch_then_a_server_restart_resume_without_gaps_or_duplicates() {
    const MESSAGES: i64 = 2000;
    let mut setup = setup(&[]);
    let padding = "x".repeat(500);
    let messages: Vec<(Vec<u8>, bool)> = (0..MESSAGES)
        .map(|index| (message(&format!("cut {index:04}"), &format!("X-Padding: {padding}\r\n")), false))
        .collect();
    let imap = CuttingProxy::start(setup.servers.imaps);
    let pop3 = CuttingProxy::start(setup.servers.pop3s);
    setup.servers.append("support@example.test", "INBOX", &messages);
    setup.servers.append("bob@example.test", "INBOX", &messages);
    // Each cut comes in the middle of the mailbox (about 1.5 MB of it).
    imap.cut_next_connection_after(600_000);
    pop3.cut_next_connection_after(600_000);
    // The whole mailbox on the first sync, not the newest initial_sync_count.
    setup.account(
        "Support",
        "support@example.test",
        &format!("sync_option = 'all', initial_sync_count = {MESSAGES}, incoming_port = {}", imap.port),
    );
    setup.account(
        "Bob",
        "bob@example.test",
        &format!(
            "incoming_protocol = 'pop3', incoming_port = {}, incoming_security = 'ssl', folders = '{{INBOX}}', \
             pop3_retrieval = 'keep', initial_sync_count = {MESSAGES}",
            pop3.port
        ),
    );
    // Creating an account syncs it at once: wait for both cuts to land.
    wait_until("both connections to be cut", LIMIT, || (imap.cuts() == 1 && pop3.cuts() == 1).then_some(()));
    let stored_before = |setup: &mut Setup, account: &str| {
        setup.count(&format!(
            "SELECT count(*) FROM email_accounts.message
              WHERE account_id = (SELECT account_id FROM email_accounts.account WHERE name = '{account}')"
        ))
    };
    let imap_stored = wait_until("the IMAP sync to fail", LIMIT, || {
        let state = setup.count(
            "SELECT count(*) FROM email_accounts.sync_state JOIN email_accounts.account USING (account_id)
              WHERE name = 'Support' AND consecutive_failures > 0",
        );
        (state == 1).then(|| stored_before(&mut setup, "Support"))
    });
    assert!(imap_stored < MESSAGES, "the cut came mid-mailbox: {imap_stored} stored");
    assert_eq!(
        setup.count(
            "SELECT last_uid FROM email_accounts.sync_state JOIN email_accounts.account USING (account_id)
              WHERE name = 'Support'"
        ),
        imap_stored,
        "the IMAP cursor is where the commits are"
    );

    // The server restarts before the next attempt: the same mailboxes, a new process.
    setup.servers.restart_dovecot();
    for account in ["Support", "Bob"] {
        let resumed = setup.sync_now(account);
        assert_eq!(resumed[0].2, "ok", "{account}: {resumed:?}");
        assert_eq!(stored_before(&mut setup, account), MESSAGES, "{account}: every message");
    }
    assert_eq!(
        setup.count("SELECT count(DISTINCT (account_id, coalesce(uid::text, unique_id))) FROM email_accounts.message"),
        2 * MESSAGES,
        "each message once"
    );
    assert_eq!(
        setup.count("SELECT count(DISTINCT (account_id, subject)) FROM email_accounts.message"),
        2 * MESSAGES,
        "no gaps: every subject of both mailboxes"
    );
    // Bob's POP3 account keeps mail on the server: all 2,000 are still there.
    assert_eq!(setup.servers.folder_flags("bob@example.test", "INBOX").len(), MESSAGES as usize);
}

#[test]
fn an_idle_receiver_runs_no_statements_but_its_poll_still_sees_sync_state_changed_behind_its_back() {
    let mut setup = setup(&["email_accounts.fallback_poll_interval = '200ms'"]);
    setup.account("Support", "support@example.test", "sync_option = 'all'");
    setup.sync_now("Support");
    setup.client.batch_execute("SELECT pg_stat_force_next_flush()").unwrap();
    let settled = worker_timeouts(&mut setup.client, "receiver");
    wait_until("the receiver to poll a few times", LIMIT, || {
        (worker_timeouts(&mut setup.client, "receiver") >= settled + 3).then_some(())
    });
    let scans = table_scans(&mut setup.client, &["account", "sync_state"]);
    let polls = worker_timeouts(&mut setup.client, "receiver");
    wait_until("five more polls", LIMIT, || {
        (worker_timeouts(&mut setup.client, "receiver") >= polls + 5).then_some(())
    });
    assert_eq!(
        table_scans(&mut setup.client, &["account", "sync_state"]),
        scans,
        "an idle receiver does not query its tables"
    );

    // Mail arrives and the DBA makes the folder due by hand, waking nobody:
    // the poll notices the changed sync state and syncs.
    setup.servers.append("support@example.test", "INBOX", &[(message("found by the poll", ""), false)]);
    setup.client.batch_execute("UPDATE email_accounts.sync_state SET next_attempt_at = now()").unwrap();
    wait_until("the poll to sync the new message", LIMIT, || {
        (setup.count("SELECT count(*) FROM email_accounts.message WHERE subject = 'found by the poll'") == 1)
            .then_some(())
    });
}

#[test]
fn imap_idle_brings_new_mail_in_without_polling() {
    let mut setup = setup(&["email_accounts.imap_idle = on"]);
    setup.account("Support", "support@example.test", "sync_option = 'all'");
    setup.sync_now("Support");
    // Give the watcher a moment to enter IDLE.
    std::thread::sleep(Duration::from_secs(2));
    setup.servers.append("support@example.test", "INBOX", &[(message("while idle", ""), false)]);
    wait_until("the message to arrive through IDLE", Duration::from_secs(30), || {
        (setup.count("SELECT count(*) FROM email_accounts.message") == 1).then_some(())
    });
}
