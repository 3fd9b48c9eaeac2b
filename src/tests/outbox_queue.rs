//! Queueing mail: bad input is refused naming the field, every row gets an
//! account by the documented order (or waits in error), a Message-ID, and
//! per-recipient rows; tenants queue only through their own accounts.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::tests::{assert_fails, assert_ok, outcome_of};
    use pgrx::prelude::*;

    const CHECK: &str = "23514";

    fn accounts() {
        Spi::run(
            "INSERT INTO email_accounts.account (name, tenant, address, provider, enable_outgoing, default_outgoing) VALUES
                 ('global default', NULL, 'noreply@example.com', 'gmail', true, true),
                 ('acme default', 'acme', 'hello@acme.example', 'gmail', true, true),
                 ('acme billing', 'acme', 'billing@acme.example', 'gmail', true, false),
                 ('globex default', 'globex', 'hi@globex.example', 'gmail', true, true),
                 ('incoming only', NULL, 'in@example.com', 'gmail', false, false)",
        )
        .unwrap();
    }

    fn queued(query: &str) -> (String, String, String) {
        let id = Spi::get_one::<i64>(query).unwrap().unwrap();
        let row = Spi::get_three_with_args::<String, String, String>(
            "SELECT coalesce(account, ''), status, message_id FROM email_accounts.outbox WHERE outbox_id = $1",
            &[id.into()],
        )
        .unwrap();
        (row.0.unwrap(), row.1.unwrap(), row.2.unwrap())
    }

    #[pg_test]
    fn bad_input_is_refused_naming_the_field() {
        accounts();
        let send = |arguments: &str| format!("SELECT email_accounts.send({arguments})");
        assert_fails(&send("\"to\" => '{not an address}'"), CHECK, "to_addresses");
        assert_fails(&send("\"to\" => '{a@example.com}', cc => '{bad@}'"), CHECK, "cc_addresses");
        assert_fails(&send("\"to\" => '{a@example.com}', bcc => '{\"\"}'"), CHECK, "bcc_addresses");
        assert_fails(&send("\"to\" => '{a@example.com}', reply_to => '{x}'"), CHECK, "reply_to");
        assert_fails(&send("subject => 'nobody'"), CHECK, "to_addresses");
        assert_fails(
            &send("\"to\" => '{a@example.com}', subject => E'Hi\\r\\nBcc: eve@example.com'"),
            CHECK,
            "subject",
        );
        assert_fails(
            &send("\"to\" => '{a@example.com}', headers => '{\"X-A\": \"1\\r\\nBcc: e@x.com\"}'"),
            CHECK,
            "headers",
        );
        assert_fails(&send("\"to\" => '{a@example.com}', headers => '{\"Bad Name\": \"1\"}'"), CHECK, "headers");
        assert_fails(&send("\"to\" => '{a@example.com}', headers => '{\"Message-ID\": \"<x@y>\"}'"), CHECK, "headers");
        assert_fails(&send("\"to\" => '{a@example.com}', headers => '{\"X-N\": 1}'"), CHECK, "headers");
        assert_fails(&send("\"to\" => '{a@example.com}', account => 'nope'"), "23503", "account");
        assert_fails(&send("\"to\" => '{a@example.com}', account => 'incoming only'"), CHECK, "account");
        assert_fails(&send("\"to\" => '{a@example.com}', sender => 'not a mailbox'"), CHECK, "sender");
        assert_fails(
            &send("\"to\" => '{a@example.com}', attachments => ARRAY[ROW('', 'text/plain', 'x'::bytea, NULL)::email_accounts.attachment]"),
            CHECK,
            "attachments",
        );
        assert_fails(&send("\"to\" => '{a@example.com}', in_reply_to => 'no-brackets'"), CHECK, "in_reply_to");
        assert_fails(
            &send("\"to\" => '{a@example.com}', expires_at => now() - interval '1 hour'"),
            CHECK,
            "expires_at",
        );
        // Nothing else in the queue was touched by the refusals.
        assert_ok(&send("\"to\" => '{a@example.com}'"));
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM email_accounts.outbox"), Ok(Some(1)));
    }

    #[pg_test]
    fn an_attachment_over_the_accounts_limit_is_refused_and_the_queue_is_untouched() {
        accounts();
        assert_ok("SELECT email_accounts.send(\"to\" => '{a@example.com}', subject => 'before')");
        // 50 MB against the default limit of 25 MB, through send() and through a plain INSERT.
        let big =
            "ROW('big.bin', NULL, convert_to(repeat('x', 50 * 1024 * 1024), 'UTF8'), NULL)::email_accounts.attachment";
        let outcome = assert_fails(
            &format!("SELECT email_accounts.send(\"to\" => '{{a@example.com}}', attachments => ARRAY[{big}])"),
            "54000",
            "attachments",
        );
        assert!(outcome.message.contains("over the attachment_size_limit"), "{outcome:?}");
        let queued = Spi::get_one::<i64>("SELECT email_accounts.send(\"to\" => '{a@example.com}', subject => 'plain')")
            .unwrap()
            .unwrap();
        assert_fails(
            &format!(
                "INSERT INTO email_accounts.outbox_attachment (outbox_id, position, filename, content)
                 VALUES ({queued}, 1, 'big.bin', convert_to(repeat('x', 50 * 1024 * 1024), 'UTF8'))"
            ),
            "54000",
            "attachments",
        );
        // Under a raised limit the same file is queued.
        Spi::run("UPDATE email_accounts.account SET attachment_size_limit = 60 * 1024 * 1024").unwrap();
        assert_ok(&format!("SELECT email_accounts.send(\"to\" => '{{a@example.com}}', attachments => ARRAY[{big}])"));
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM email_accounts.outbox"), Ok(Some(3)));
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM email_accounts.outbox_attachment"), Ok(Some(1)));
    }

    #[pg_test]
    fn accounts_are_chosen_in_the_documented_order() {
        accounts();
        // 1. The account named.
        let (account, status, _) =
            queued("SELECT email_accounts.send(\"to\" => '{a@x.com}', account => 'acme billing')");
        assert_eq!((account.as_str(), status.as_str()), ("acme billing", "queued"));
        // 2. The account whose address is the sender.
        let (account, ..) =
            queued("SELECT email_accounts.send(\"to\" => '{a@x.com}', sender => 'Billing <billing@acme.example>')");
        assert_eq!(account, "acme billing");
        // 3. The tenant's default outgoing.
        let (account, ..) = queued("INSERT INTO email_accounts.outbox (to_addresses, tenant) VALUES ('{a@x.com}', 'globex') RETURNING outbox_id");
        assert_eq!(account, "globex default");
        // 4. The global default outgoing.
        let (account, _, message_id) =
            queued("SELECT email_accounts.send(\"to\" => '{a@x.com}', sender => 'stranger@elsewhere.example')");
        assert_eq!(account, "global default");
        assert!(message_id.starts_with('<') && message_id.ends_with("@example.com>"), "{message_id}");
        // 5. Nothing fits: the row waits in error, and retry() picks an account once one fits.
        Spi::run("UPDATE email_accounts.account SET default_outgoing = false WHERE name = 'global default'").unwrap();
        let id = Spi::get_one::<i64>("SELECT email_accounts.send(\"to\" => '{a@x.com}')").unwrap().unwrap();
        let (status, error) = Spi::get_two_with_args::<String, String>(
            "SELECT status, last_error FROM email_accounts.outbox WHERE outbox_id = $1",
            &[id.into()],
        )
        .unwrap();
        assert_eq!(status.as_deref(), Some("error"));
        assert!(error.unwrap().contains("default_outgoing"));
        Spi::run("UPDATE email_accounts.account SET default_outgoing = true WHERE name = 'global default'").unwrap();
        assert_eq!(Spi::get_one_with_args::<bool>("SELECT email_accounts.retry($1)", &[id.into()]), Ok(Some(true)));
        let account = Spi::get_one_with_args::<String>(
            "SELECT account FROM email_accounts.outbox WHERE outbox_id = $1",
            &[id.into()],
        );
        assert_eq!(account, Ok(Some("global default".to_owned())));
        // cancel() stops a queued row; a cancelled row cannot be cancelled twice.
        assert_eq!(Spi::get_one_with_args::<bool>("SELECT email_accounts.cancel($1)", &[id.into()]), Ok(Some(true)));
        assert_eq!(Spi::get_one_with_args::<bool>("SELECT email_accounts.cancel($1)", &[id.into()]), Ok(Some(false)));
    }

    #[pg_test]
    fn rows_get_unique_message_ids_recipients_and_attachments() {
        accounts();
        let id = Spi::get_one::<i64>(
            "SELECT email_accounts.send(\"to\" => '{Ann <ann@example.com>, bob@example.com}', cc => '{ANN@example.com, carol@example.com}',
                 bcc => '{dave@example.com}', subject => 'Hi', body_text => 'Hello', in_reply_to => '<parent@example.com>',
                 attachments => ARRAY[ROW('a.pdf', NULL, 'pdf'::bytea, NULL), ROW('logo.png', 'image/png', 'png'::bytea, 'logo')]::email_accounts.attachment[])",
        )
        .unwrap()
        .unwrap();
        let recipients = Spi::get_one_with_args::<String>(
            "SELECT string_agg(address || ':' || kind, ',' ORDER BY address) FROM email_accounts.outbox_recipient WHERE outbox_id = $1",
            &[id.into()],
        );
        assert_eq!(
            recipients,
            Ok(Some(
                "ANN@example.com:cc,ann@example.com:to,bob@example.com:to,carol@example.com:cc,dave@example.com:bcc"
                    .to_owned()
            ))
        );
        let attachments = Spi::get_one_with_args::<String>(
            "SELECT string_agg(position || ':' || filename || ':' || content_type || ':' || coalesce(content_id, '-'), ',' ORDER BY position)
               FROM email_accounts.outbox_attachment WHERE outbox_id = $1",
            &[id.into()],
        );
        assert_eq!(attachments, Ok(Some("1:a.pdf:application/octet-stream:-,2:logo.png:image/png:logo".to_owned())));
        let references = Spi::get_one_with_args::<String>(
            "SELECT array_to_string(\"references\", ' ') FROM email_accounts.outbox WHERE outbox_id = $1",
            &[id.into()],
        );
        assert_eq!(references, Ok(Some("<parent@example.com>".to_owned())));
        Spi::run("SELECT email_accounts.send(\"to\" => '{a@x.com}') FROM generate_series(1, 20)").unwrap();
        let (rows, distinct) =
            Spi::get_two::<i64, i64>("SELECT count(*), count(DISTINCT message_id) FROM email_accounts.outbox").unwrap();
        assert_eq!(rows, Some(21));
        assert_eq!(distinct, Some(21), "every row has its own Message-ID");
        assert_fails(
            "INSERT INTO email_accounts.outbox (to_addresses, message_id) SELECT '{a@x.com}', message_id FROM email_accounts.outbox LIMIT 1",
            "23505",
            "message_id",
        );
    }

    /// Large bodies, headers and attachments, outgoing and incoming, are
    /// compressed with lz4 (pglz took twice as long for a 12 KB body).
    #[pg_test]
    fn mail_content_is_compressed_with_lz4() {
        accounts();
        let text = "Mail is kept for years; it is written and read far more often than it is compressed. ";
        let id = Spi::get_one_with_args::<i64>(
            "SELECT email_accounts.send(\"to\" => '{ann@example.com}', body_text => repeat($1, 60), body_html => repeat($1, 60),
                 headers => (SELECT jsonb_object_agg('X-Note-' || n, $1) FROM generate_series(1, 60) AS n),
                 attachments => ARRAY[ROW('notes.txt', 'text/plain', convert_to(repeat($1, 60), 'UTF8'), NULL)]::email_accounts.attachment[])",
            &[text.into()],
        )
        .unwrap()
        .unwrap();
        let outgoing = Spi::get_one_with_args::<String>(
            "SELECT concat_ws(',', pg_column_compression(body_text), pg_column_compression(body_html),
                              pg_column_compression(headers),
                              (SELECT pg_column_compression(content) FROM email_accounts.outbox_attachment WHERE outbox_id = $1))
               FROM email_accounts.outbox WHERE outbox_id = $1",
            &[id.into()],
        );
        assert_eq!(outgoing, Ok(Some("lz4,lz4,lz4,lz4".to_owned())));
        let incoming = Spi::get_one::<String>(
            "SELECT string_agg(relname || '.' || attname || ':' || attcompression::text, ',' ORDER BY relname, attname)
               FROM pg_catalog.pg_attribute JOIN pg_catalog.pg_class ON pg_class.oid = attrelid
              WHERE relnamespace = 'email_accounts'::regnamespace AND relname IN ('message', 'message_attachment')
                AND attname IN ('raw', 'body_text', 'body_html', 'headers', 'content')",
        );
        assert_eq!(
            incoming,
            Ok(Some(
                "message.body_html:l,message.body_text:l,message.headers:l,message.raw:l,message_attachment.content:l"
                    .to_owned()
            ))
        );
    }

    #[pg_test]
    fn tenants_queue_only_through_their_own_accounts_and_see_only_their_mail() {
        accounts();
        Spi::run(
            "CREATE ROLE test_acme_app; GRANT email_accounts_sender TO test_acme_app;
             INSERT INTO email_accounts.tenant_member VALUES ('test_acme_app', 'acme');
             INSERT INTO email_accounts.outbox (to_addresses, account) VALUES ('{secret@globex.example}', 'globex default')",
        )
        .unwrap();
        outcome_of("SELECT 1");
        Spi::run("SET LOCAL ROLE test_acme_app").unwrap();
        assert_fails(
            "SELECT email_accounts.send(\"to\" => '{a@x.com}', account => 'globex default')",
            "23503",
            "account",
        );
        // Without an account named, the role's own tenant default is used.
        let (account, status, _) = queued("SELECT email_accounts.send(\"to\" => '{a@x.com}')");
        assert_eq!((account.as_str(), status.as_str()), ("acme default", "queued"));
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM email_accounts.outbox"), Ok(Some(1)));
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM email_accounts.outbox_recipient"), Ok(Some(1)));
        assert_fails("SELECT email_accounts.cancel(1)", "42501", "cancel");
        Spi::run("RESET ROLE").unwrap();
    }

    fn sending_accounts() {
        Spi::run(
            "INSERT INTO email_accounts.account (name, address, enable_outgoing, smtp_host, smtp_port, smtp_security, no_smtp_authentication, awaiting_password)
             VALUES ('ready', 'ready@example.com', true, '127.0.0.1', 25, 'none', true, false),
                    ('also ready', 'also@example.com', true, '127.0.0.1', 25, 'none', true, false),
                    ('not ready', 'waiting@example.com', true, '127.0.0.1', 25, 'starttls', false, true)",
        )
        .unwrap();
    }

    fn queue(account: &str, priority: i32, seconds: i32) -> i64 {
        Spi::get_one::<i64>(&format!(
            "SELECT email_accounts.send(\"to\" => '{{a@example.net}}', account => '{account}', priority => {priority}::smallint,
                                        send_after => now() + interval '{seconds} seconds')"
        ))
        .unwrap()
        .unwrap()
    }

    /// Makes the outbox row `id` claimed by this backend (as the sender's
    /// claim does): a row of outbox_claim with `token`, `attempt` and a lease
    /// until `lease_until` (SQL).
    fn claim_by_hand(id: i64, token: &str, attempt: i32, lease_until: &str) {
        Spi::run(&format!(
            "INSERT INTO email_accounts.outbox_claim
                    (outbox_id, account_id, claim_token, lease_until, sender_process_id, sender_started_at, attempt)
             SELECT outbox_id, account_id, '{token}', {lease_until}, pg_backend_pid(), '{}', {attempt}
               FROM email_accounts.outbox WHERE outbox_id = {id}",
            crate::store::outbox::process_started_at()
        ))
        .unwrap();
    }

    /// The sender's sleep: the earliest waiting row of a ready account over
    /// every priority (negative ones too), or the earliest lapse of a claim;
    /// accounts that are not ready and rows already settled do not count.
    /// (With seq scans off, as the sender plans.)
    #[pg_test]
    fn the_next_due_row_is_found_over_every_priority() {
        sending_accounts();
        Spi::run("SET enable_seqscan = off").unwrap();
        let next_due = || crate::store::outbox::seconds_until_next_due().unwrap().map(f64::round);
        let set = |id: i64, changes: &str| {
            Spi::run(&format!("UPDATE email_accounts.outbox SET {changes} WHERE outbox_id = {id}")).unwrap()
        };
        assert_eq!(next_due(), None);
        queue("ready", 5, 3600);
        queue("ready", 0, 7200);
        queue("also ready", 3, 5000);
        let lowest = queue("also ready", -2, 300);
        queue("not ready", 0, 5);
        assert_eq!(next_due(), Some(300.0));
        // A row waiting to be tried again counts like a queued one.
        set(queue("ready", 1, 9000), "status = 'retry', next_attempt_at = now() + interval '200 seconds'");
        assert_eq!(next_due(), Some(200.0));
        // A row already sent is history, however early it was due.
        set(queue("ready", 9, 1), "status = 'sent', sent_at = now()");
        assert_eq!(next_due(), Some(200.0));
        // A claim lapsing sooner wakes the sender sooner, also one of an
        // account that is not ready (its rows are put back in the queue).
        // (A claimed row is not due: the claim's lease counts instead.)
        claim_by_hand(lowest, "00000000-0000-4000-8000-000000000001", 1, "now() + interval '30 seconds'");
        assert_eq!(next_due(), Some(30.0));
        let not_ready = queue("not ready", 0, 1);
        claim_by_hand(not_ready, "00000000-0000-4000-8000-000000000002", 1, "now() + interval '10 seconds'");
        assert_eq!(next_due(), Some(10.0));
    }

    /// A round's results are recorded only under the claim that is still
    /// current, token and row together: a stale token or another row's
    /// token records nothing. (The rows of one claim share its token, so
    /// between them the row decides.)
    #[pg_test]
    fn results_are_recorded_only_under_the_rows_own_claim() {
        use email_accounts_mail::delivery::RecipientStatus;
        use email_accounts_mail::row_status::{RecipientUpdate, RowStatus};
        sending_accounts();
        let (first, second) = (queue("ready", 0, 0), queue("ready", 0, 0));
        let token = |id: i64| format!("00000000-0000-4000-8000-{id:012}");
        for id in [first, second] {
            claim_by_hand(id, &token(id), 1, "now() + interval '1 minute'");
        }
        let sent = [RecipientUpdate {
            address: "a@example.net".to_owned(),
            status: RecipientStatus::Sent,
            reply: Some("250 ok".to_owned()),
            answered: true,
        }];
        let record = |pairs: &[(i64, String)]| {
            let rows: Vec<crate::store::outbox::RowResult<'_>> = pairs
                .iter()
                .map(|(id, claim_token)| crate::store::outbox::RowResult {
                    outbox_id: *id,
                    claim_token,
                    attempts: 1,
                    status: RowStatus::Sent,
                    last_error: None,
                    recipients: &sent,
                    accepted_at: Some(std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_800_000_000_123_456)),
                })
                .collect();
            crate::store::outbox::record_all(&rows, 60).unwrap();
        };
        let statuses = || {
            Spi::get_two::<String, String>(&format!(
                "SELECT (SELECT status FROM email_accounts.outbox WHERE outbox_id = {first}),
                        (SELECT status FROM email_accounts.outbox WHERE outbox_id = {second})"
            ))
            .unwrap()
        };
        record(&[(first, token(second)), (second, token(first))]);
        record(&[(first, "00000000-0000-4000-8000-999999999999".to_owned())]);
        assert_eq!(statuses(), (Some("queued".to_owned()), Some("queued".to_owned())));
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM email_accounts.outbox_claim"),
            Ok(Some(2)),
            "both still out"
        );
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM email_accounts.outbox_recipient WHERE status <> 'pending'"),
            Ok(Some(0))
        );
        record(&[(first, token(first))]);
        assert_eq!(statuses(), (Some("sent".to_owned()), Some("queued".to_owned())));
        assert_eq!(
            Spi::get_two::<i32, i64>(&format!(
                "SELECT (SELECT attempts FROM email_accounts.outbox WHERE outbox_id = {first}),
                        (SELECT count(*) FROM email_accounts.outbox_claim WHERE outbox_id = {first})"
            )),
            Ok((Some(1), Some(0))),
            "the attempt counted, the claim gone"
        );
        // sent_at is when the server accepted it, not when the round was recorded.
        assert_eq!(
            Spi::get_one::<bool>(&format!(
                "SELECT sent_at = to_timestamp(1800000000.123456) FROM email_accounts.outbox WHERE outbox_id = {first}"
            )),
            Ok(Some(true))
        );
        assert_eq!(
            Spi::get_one::<String>(&format!(
                "SELECT string_agg(status, ',') FROM email_accounts.outbox_recipient WHERE outbox_id = {second}"
            )),
            Ok(Some("pending".to_owned()))
        );
    }

    /// Giving up on a recipient (no answer from the server) stores `failed`
    /// only over one still open: not over a status set while the row was out.
    #[pg_test]
    fn giving_up_leaves_alone_a_recipient_changed_while_the_row_was_out() {
        use email_accounts_mail::delivery::RecipientStatus;
        use email_accounts_mail::row_status::{RecipientUpdate, RowStatus};
        sending_accounts();
        let id = Spi::get_one::<i64>(
            "SELECT email_accounts.send(\"to\" => '{open@example.net, changed@example.net}', account => 'ready')",
        )
        .unwrap()
        .unwrap();
        let token = "00000000-0000-4000-8000-000000000001";
        claim_by_hand(id, token, 5, "now() + interval '1 minute'");
        Spi::run(&format!(
            "UPDATE email_accounts.outbox_recipient SET status = 'suppressed', reply = 'by hand'
              WHERE outbox_id = {id} AND address = 'changed@example.net'"
        ))
        .unwrap();
        let given_up = |address: &str| RecipientUpdate {
            address: address.to_owned(),
            status: RecipientStatus::Failed,
            reply: None,
            answered: false,
        };
        let updates = [given_up("open@example.net"), given_up("changed@example.net")];
        let row = crate::store::outbox::RowResult {
            outbox_id: id,
            claim_token: token,
            attempts: 5,
            status: RowStatus::Failed,
            last_error: Some("gave up"),
            recipients: &updates,
            accepted_at: None,
        };
        crate::store::outbox::record_all(&[row], 60).unwrap();
        assert_eq!(
            Spi::get_one::<String>(&format!(
                "SELECT string_agg(address || ' ' || status, ', ' ORDER BY address)
                   FROM email_accounts.outbox_recipient WHERE outbox_id = {id}"
            )),
            Ok(Some("changed@example.net suppressed, open@example.net failed".to_owned()))
        );
    }

    /// What recording decides a row's status from is read by the claim: the
    /// attempts (this one counted), the recipients still open (not those
    /// accepted, failed or suppressed) and whether one was accepted before.
    #[pg_test]
    fn a_claim_reads_the_attempts_the_open_recipients_and_what_was_accepted_before() {
        sending_accounts();
        Spi::run("INSERT INTO email_accounts.suppression (tenant, address, reason) VALUES (NULL, 'gone@example.net', 'by hand')")
            .unwrap();
        let to = "'{sent@example.net, later@example.net, gone@example.net, rejected@example.net, new@example.net}'";
        let partly = Spi::get_one::<i64>(&format!("SELECT email_accounts.send(\"to\" => {to}, account => 'ready')"))
            .unwrap()
            .unwrap();
        let fresh = queue("ready", 0, 0);
        Spi::run(&format!(
            "UPDATE email_accounts.outbox SET status = 'retry', attempts = 2 WHERE outbox_id = {partly};
             UPDATE email_accounts.outbox_recipient SET status = 'sent' WHERE outbox_id = {partly} AND address = 'sent@example.net';
             UPDATE email_accounts.outbox_recipient SET status = 'deferred' WHERE outbox_id = {partly} AND address = 'later@example.net';
             UPDATE email_accounts.outbox_recipient SET status = 'failed' WHERE outbox_id = {partly} AND address = 'rejected@example.net';"
        ))
        .unwrap();
        Spi::run("SET LOCAL enable_seqscan = off").unwrap();
        let claimed = crate::store::outbox::claim(200, 60, &[], &[], 10, PASS).unwrap();
        let claimed = crate::store::outbox::with_recipients_and_attachments(claimed).unwrap();
        let row = |id: i64| claimed.iter().find(|row| row.outbox_id == id).unwrap();
        assert_eq!(row(partly).attempts, 3);
        assert!(row(partly).accepted_before);
        assert_eq!(row(partly).recipients, ["later@example.net", "new@example.net"]);
        assert_eq!(row(fresh).attempts, 1);
        assert!(!row(fresh).accepted_before);
        assert_eq!(row(fresh).recipients, ["a@example.net"]);
    }

    /// The claim leaves out the recipients on the suppression list of the
    /// row's own tenant (not another tenant's, not the list of mail without
    /// tenant), whatever the case, and marks them suppressed.
    #[pg_test]
    fn a_claim_leaves_out_the_addresses_its_tenant_suppressed() {
        sending_accounts();
        Spi::run(
            "INSERT INTO email_accounts.account (name, tenant, address, enable_outgoing, smtp_host, smtp_port, smtp_security, no_smtp_authentication)
             VALUES ('acme ready', 'acme', 'ready@acme.example', true, '127.0.0.1', 25, 'none', true);
             INSERT INTO email_accounts.suppression (tenant, address, reason)
             VALUES ('acme', 'Gone@Example.net', 'unsubscribed'), (NULL, 'untenanted@example.net', 'by hand'),
                    ('globex', 'kept@example.net', 'unsubscribed')",
        )
        .unwrap();
        let to = "'{gone@example.net, untenanted@example.net, kept@example.net}'";
        let acme = Spi::get_one::<i64>(&format!("SELECT email_accounts.send(\"to\" => {to}, account => 'acme ready')"))
            .unwrap()
            .unwrap();
        let untenanted =
            Spi::get_one::<i64>(&format!("SELECT email_accounts.send(\"to\" => {to}, account => 'ready')"))
                .unwrap()
                .unwrap();
        Spi::run("SET LOCAL enable_seqscan = off").unwrap();
        let claimed = crate::store::outbox::claim(200, 60, &[], &[], 10, PASS).unwrap();
        let claimed = crate::store::outbox::with_recipients_and_attachments(claimed).unwrap();
        let recipients_of = |id: i64| claimed.iter().find(|row| row.outbox_id == id).unwrap().recipients.clone();
        assert_eq!(recipients_of(acme), ["kept@example.net", "untenanted@example.net"]);
        assert_eq!(recipients_of(untenanted), ["gone@example.net", "kept@example.net"]);
        let suppressed = Spi::get_one::<String>(
            "SELECT string_agg(outbox_id || ' ' || address || ': ' || reply, ', ' ORDER BY outbox_id, address)
               FROM email_accounts.outbox_recipient WHERE status = 'suppressed'",
        )
        .unwrap()
        .unwrap_or_default();
        assert_eq!(
            suppressed,
            format!(
                "{acme} gone@example.net: on the suppression list: unsubscribed, \
                 {untenanted} untenanted@example.net: on the suppression list: by hand"
            )
        );
    }

    /// The claim's expiry pass, with the default `max_attempts`.
    const PASS: Option<crate::store::outbox::ExpiryPass> = Some(crate::store::outbox::ExpiryPass { max_attempts: 10 });

    fn record_sent(rows: &[crate::store::outbox::ClaimedRow]) {
        use email_accounts_mail::delivery::RecipientStatus;
        use email_accounts_mail::row_status::{RecipientUpdate, RowStatus};
        let sent = [RecipientUpdate {
            address: "a@example.net".to_owned(),
            status: RecipientStatus::Sent,
            reply: Some("250 ok".to_owned()),
            answered: true,
        }];
        let results: Vec<crate::store::outbox::RowResult<'_>> = rows
            .iter()
            .map(|row| crate::store::outbox::RowResult {
                outbox_id: row.outbox_id,
                claim_token: &row.claim_token,
                attempts: row.attempts,
                status: RowStatus::Sent,
                last_error: None,
                recipients: &sent,
                accepted_at: None,
            })
            .collect();
        crate::store::outbox::record_all(&results, 60).unwrap();
    }

    /// Recording a delivery writes each outbox row's new version on the
    /// row's own page (`fillfactor = 50` leaves room for a round's rows), so
    /// PostgreSQL does not lock the row again while it looks for room
    /// elsewhere; and no BEFORE UPDATE row trigger makes it lock every row
    /// first (it does whatever the trigger's WHEN says). Each lock is a WAL
    /// record more per delivered message.
    #[pg_test]
    fn a_recorded_row_stays_on_its_page_and_no_trigger_locks_it_first() {
        use crate::store::outbox::claim;
        sending_accounts();
        let ids: Vec<i64> = (0..12).map(|_| queue("ready", 0, 0)).collect();
        let pages = |ids: &[i64]| {
            Spi::get_one_with_args::<Vec<i64>>(
                "SELECT array_agg((ctid::text::point)[0]::bigint ORDER BY outbox_id) FROM email_accounts.outbox WHERE outbox_id = ANY ($1)",
                &[ids.to_vec().into()],
            )
            .unwrap()
            .unwrap()
        };
        let before = pages(&ids);
        let claimed = claim(200, 60, &[], &[], 10, PASS).unwrap();
        assert_eq!(claimed.len(), ids.len());
        record_sent(&claimed);
        assert_eq!(
            Spi::get_one_with_args::<i64>(
                "SELECT count(*) FROM email_accounts.outbox WHERE outbox_id = ANY ($1) AND status = 'sent'",
                &[ids.clone().into()]
            ),
            Ok(Some(ids.len() as i64))
        );
        assert_eq!(pages(&ids), before, "each new version on its row's page");
        // tgtype: ROW 1, BEFORE 2, UPDATE 16.
        assert_eq!(
            Spi::get_one::<Vec<String>>(
                "SELECT coalesce(array_agg(tgname::text), '{}') FROM pg_trigger
                  WHERE tgrelid = 'email_accounts.outbox'::regclass AND tgtype & (1 | 2 | 16) = (1 | 2 | 16)"
            ),
            Ok(Some(vec![]))
        );
    }

    /// Rows whose claim lapsed are put back in the queue by the next claim's
    /// expiry pass and taken by it (a new token, the attempt counted), but
    /// not by the sender that has their account on the wire, nor while
    /// another sender holds the account (its round may be on the wire
    /// there); rows under a live lease are left alone; at `max_attempts` a
    /// lapsed claim fails.
    #[pg_test]
    fn a_lapsed_claim_is_taken_back_by_the_next_claim() {
        use crate::store::outbox::claim;
        sending_accounts();
        Spi::run("SET LOCAL enable_seqscan = off").unwrap();
        let (first, second) = (queue("ready", 0, 0), queue("ready", 0, 0));
        let claimed = claim(200, 60, &[], &[], 10, PASS).unwrap();
        assert_eq!(claimed.len(), 2);
        assert_eq!(claim(200, 60, &[], &[], 10, PASS).unwrap().len(), 0, "the lease is live");
        Spi::run(&format!(
            "UPDATE email_accounts.outbox_claim SET lease_until = now() - interval '1 second' WHERE outbox_id IN ({first}, {second})"
        ))
        .unwrap();
        let account = claimed[0].account_id;
        assert_eq!(claim(200, 60, &[], &[account], 10, PASS).unwrap().len(), 0, "its own account on the wire");
        assert_eq!(claim(200, 60, &[account], &[], 10, PASS).unwrap().len(), 0, "an account another sender holds");
        assert_eq!(claim(200, 60, &[], &[], 10, None).unwrap().len(), 0, "only the expiry pass takes them back");
        let again = claim(200, 60, &[], &[], 10, PASS).unwrap();
        assert_eq!(again.len(), 2);
        assert_eq!(
            Spi::get_one::<i64>(&format!(
                "SELECT count(*) FROM email_accounts.outbox
                  WHERE outbox_id IN ({first}, {second}) AND status = 'retry' AND attempts = 1
                    AND last_error LIKE 'the claim of sender process % lapsed%'"
            )),
            Ok(Some(2))
        );
        assert!(again.iter().all(|row| row.attempts == 2));
        assert!(again.iter().all(|row| claimed.iter().all(|old| old.claim_token != row.claim_token)));
        // A claim that lapses at `max_attempts` fails, its open recipients with it.
        Spi::run(&format!(
            "UPDATE email_accounts.outbox_claim SET lease_until = now() - interval '1 second' WHERE outbox_id IN ({first}, {second})"
        ))
        .unwrap();
        let last = Some(crate::store::outbox::ExpiryPass { max_attempts: 2 });
        assert_eq!(claim(200, 60, &[], &[], 10, last).unwrap().len(), 0);
        assert_eq!(
            Spi::get_two::<i64, i64>(&format!(
                "SELECT (SELECT count(*) FROM email_accounts.outbox WHERE outbox_id IN ({first}, {second}) AND status = 'failed'),
                        (SELECT count(*) FROM email_accounts.outbox_recipient WHERE outbox_id IN ({first}, {second}) AND status = 'failed')"
            )),
            Ok((Some(2), Some(2)))
        );
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM email_accounts.outbox_claim"), Ok(Some(0)));
    }

    /// The sleep's look for the first lease to lapse and the expiry pass's
    /// look for lapsed claims read the claims (`outbox_claim_lease`), not
    /// every account: 200 accounts without mail are not read (they had been
    /// probed each: 9 ms a look with 5,000). Counted with the transaction's
    /// own statistics. A claim whose outbox row was deleted while it was out
    /// goes when its lease lapses.
    #[pg_test]
    fn the_sleep_and_the_lapsed_pass_do_not_read_every_account() {
        use crate::store::outbox::{claim, seconds_until_next_due};
        sending_accounts();
        Spi::run(
            "INSERT INTO email_accounts.account (name, address, enable_outgoing, smtp_host, smtp_port, smtp_security, no_smtp_authentication, awaiting_password)
             SELECT 'idle ' || n, 'idle' || n || '@example.com', true, '127.0.0.1', 25, 'none', true, false
               FROM generate_series(1, 200) AS n",
        )
        .unwrap();
        Spi::run("SET LOCAL enable_seqscan = off").unwrap();
        let row = queue("ready", 0, 0);
        claim_by_hand(row, "00000000-0000-4000-8000-000000000001", 1, "now() + interval '40 seconds'");
        // Index scans of outbox_claim_lease; rows read from the account table and its primary key.
        let reads = || {
            let (scans, accounts) = Spi::get_two::<i64, i64>(
                "SELECT pg_stat_get_xact_numscans('email_accounts.outbox_claim_lease'::regclass),
                        pg_stat_get_xact_tuples_returned('email_accounts.account_pkey'::regclass)
                        + pg_stat_get_xact_tuples_returned('email_accounts.account'::regclass)
                        + pg_stat_get_xact_tuples_fetched('email_accounts.account'::regclass)",
            )
            .unwrap();
            (scans.unwrap_or(0), accounts.unwrap_or(0))
        };
        let (scans, accounts) = reads();
        assert_eq!(seconds_until_next_due().unwrap().map(f64::round), Some(40.0), "the live lease");
        assert_eq!(claim(200, 60, &[], &[], 10, PASS).unwrap().len(), 0, "the lease is live");
        let (scans_after, accounts_after) = reads();
        assert!(
            (2..=4).contains(&(scans_after - scans)),
            "one scan of outbox_claim_lease each, not one per account: {scans} -> {scans_after}"
        );
        assert!(accounts_after - accounts < 200, "no look at every account: {accounts} -> {accounts_after}");
        // Lapsed: taken back by the pass (and claimed again at once), still without reading every account.
        Spi::run(&format!(
            "UPDATE email_accounts.outbox_claim SET lease_until = now() - interval '1 second' WHERE outbox_id = {row}"
        ))
        .unwrap();
        let again = claim(200, 60, &[], &[], 10, PASS).unwrap();
        assert_eq!(again.iter().map(|claimed| (claimed.outbox_id, claimed.attempts)).collect::<Vec<_>>(), [(row, 2)]);
        assert!(reads().1 - accounts < 200, "no look at every account when taking back");
        // A claim of a row deleted while it was out.
        let deleted = queue("also ready", 0, 0);
        claim_by_hand(deleted, "00000000-0000-4000-8000-000000000002", 1, "now() - interval '1 hour'");
        Spi::run(&format!("DELETE FROM email_accounts.outbox WHERE outbox_id = {deleted}")).unwrap();
        assert_eq!(claim(200, 60, &[], &[], 10, PASS).unwrap().len(), 0);
        assert_eq!(
            Spi::get_one::<i64>(&format!(
                "SELECT count(*) FROM email_accounts.outbox_claim WHERE outbox_id = {deleted}"
            )),
            Ok(Some(0)),
            "the claim of a deleted row goes at its lease"
        );
    }

    /// Claims, their recording and the sleep read what they take, not the
    /// whole queue, whatever the statistics say: here what a VACUUM ANALYZE
    /// of a drained outbox and outbox_claim leaves (no rows over the pages
    /// still there), with 2,000 rows queued over two accounts, one of them
    /// rate-limited with a history of 2,000 rows sent a week ago. As an
    /// anti-join, the check that a row is not claimed let such a plan walk
    /// the outbox's primary key per account, or every claim per row (1,223
    /// msg/s in `make bench` instead of ~11,000). Counted with the
    /// transaction's own statistics over every index of the outbox, its
    /// recipients and its claims; the kept plans are generic, as in the
    /// sender.
    #[pg_test]
    fn claims_read_what_they_take_when_the_statistics_say_the_queue_is_empty() {
        use crate::store::outbox::{claim, seconds_until_next_due, with_recipients_and_attachments};
        sending_accounts();
        Spi::run(
            "SET LOCAL enable_seqscan = off;
             SET LOCAL enable_bitmapscan = off;
             UPDATE email_accounts.account SET send_limit_per_day = 1000000 WHERE name = 'ready';
             INSERT INTO email_accounts.outbox (account, to_addresses, expires_at)
             SELECT CASE WHEN n % 2 = 0 THEN 'ready' ELSE 'also ready' END, '{a@example.net}', now() + interval '1 day'
               FROM generate_series(1, 2000) AS n;
             -- (Sent the way the sender records it: queued, then updated.
             -- The entries of the queued versions stay in the claim order
             -- until this transaction ends, below the queue: priority -1.)
             INSERT INTO email_accounts.outbox (account, to_addresses, priority)
             SELECT 'ready', '{a@example.net}', -1 FROM generate_series(1, 2000);
             UPDATE email_accounts.outbox SET status = 'sent', sent_at = now() - interval '7 days' WHERE priority = -1;
             -- (Changing pg_class invalidates the plans made before: they are made again from these figures.)
             UPDATE pg_catalog.pg_class SET reltuples = 0, relpages = greatest(1, pg_catalog.pg_relation_size(oid) / 8192)
              WHERE oid IN ('email_accounts.outbox'::regclass, 'email_accounts.outbox_claim'::regclass,
                            'email_accounts.outbox_recipient'::regclass);",
        )
        .unwrap();
        let entries_read = || {
            Spi::get_one::<i64>(
                "SELECT sum(pg_stat_get_xact_tuples_returned(indexrelid))::bigint FROM pg_catalog.pg_index
                  WHERE indrelid IN ('email_accounts.outbox'::regclass, 'email_accounts.outbox_claim'::regclass,
                                     'email_accounts.outbox_recipient'::regclass)",
            )
            .unwrap()
            .unwrap_or(0)
        };
        let before = entries_read();
        let mut claimed = Vec::new();
        for _ in 0..5 {
            let rows = claim(200, 60, &[], &[], 10, PASS).unwrap();
            assert_eq!(rows.len(), 200);
            claimed.extend(rows);
        }
        let first_round = with_recipients_and_attachments(claimed.drain(..200).collect()).unwrap();
        assert!(first_round.iter().all(|row| row.recipients.len() == 1));
        record_sent(&first_round);
        assert!(seconds_until_next_due().unwrap().is_some_and(|seconds| seconds <= 0.0), "rows are due");
        // 19,226 entries here: the claims walk past the rows claimed before
        // them, the sleep past those out (and the history's old entries).
        // The anti-join's plan read 2,006,200 claims; the rate limits' count
        // through an (account_id, status) index 44,226 entries in all.
        let read = entries_read() - before;
        assert!(read <= 25_000, "{read} index entries read for 1,000 rows claimed, 200 recorded and one sleep");
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM email_accounts.outbox_claim"),
            Ok(Some(800)),
            "the 200 recorded rows' claims went"
        );
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM email_accounts.outbox WHERE status = 'sent' AND sent_at > now() - interval '1 day'"),
            Ok(Some(200))
        );
    }

    /// A row out under a claim is the sender's until recorded: cancel() and
    /// retry() leave it, an admin's change of its status is refused (42501),
    /// outbox_status shows it as sending, its reader sees the claim (not
    /// its token), and being_sent() says so to those who see the row only.
    /// Recorded, it is the admin's again.
    #[pg_test]
    fn a_claimed_row_is_the_senders_until_recorded() {
        sending_accounts();
        let id = queue("ready", 0, 0);
        Spi::run(&format!("UPDATE email_accounts.outbox SET status = 'retry', attempts = 1 WHERE outbox_id = {id}"))
            .unwrap();
        claim_by_hand(id, "00000000-0000-4000-8000-000000000001", 2, "now() + interval '1 minute'");
        Spi::run(
            "CREATE ROLE claim_admin IN ROLE email_accounts_admin;
             CREATE ROLE claim_reader IN ROLE email_accounts_sender;
             CREATE ROLE claim_stranger IN ROLE email_accounts_admin;
             INSERT INTO email_accounts.tenant_member
             VALUES ('claim_admin', '*'), ('claim_reader', '*'), ('claim_stranger', 'globex')",
        )
        .unwrap();
        Spi::run("SET LOCAL ROLE claim_admin").unwrap();
        assert_eq!(Spi::get_one::<bool>(&format!("SELECT email_accounts.cancel({id})")), Ok(Some(false)));
        assert_eq!(Spi::get_one::<bool>(&format!("SELECT email_accounts.retry({id})")), Ok(Some(false)));
        assert_fails(
            &format!("UPDATE email_accounts.outbox SET status = 'cancelled' WHERE outbox_id = {id}"),
            "42501",
            "being sent",
        );
        assert_eq!(
            Spi::get_one::<String>(
                "SELECT string_agg(status, ',') FROM email_accounts.outbox_status WHERE account = 'ready'"
            ),
            Ok(Some("sending".to_owned()))
        );
        assert_eq!(Spi::get_one::<bool>(&format!("SELECT email_accounts.being_sent({id})")), Ok(Some(true)));
        Spi::run("RESET ROLE; SET LOCAL ROLE claim_stranger").unwrap();
        assert_eq!(
            Spi::get_one::<bool>(&format!("SELECT email_accounts.being_sent({id})")),
            Ok(Some(false)),
            "another tenant's row"
        );
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM email_accounts.outbox_claim"), Ok(Some(0)));
        Spi::run("RESET ROLE; SET LOCAL ROLE claim_reader").unwrap();
        assert_eq!(
            Spi::get_one::<i32>(&format!("SELECT attempt FROM email_accounts.outbox_claim WHERE outbox_id = {id}")),
            Ok(Some(2))
        );
        assert_fails("SELECT claim_token FROM email_accounts.outbox_claim", "42501", "outbox_claim");
        Spi::run("RESET ROLE").unwrap();
        Spi::run(&format!("DELETE FROM email_accounts.outbox_claim WHERE outbox_id = {id}")).unwrap();
        Spi::run("SET LOCAL ROLE claim_admin").unwrap();
        assert_eq!(Spi::get_one::<bool>(&format!("SELECT email_accounts.cancel({id})")), Ok(Some(true)));
        Spi::run("RESET ROLE").unwrap();
    }

    /// An account's rows out for delivery count against its rate limits, and
    /// so do the rows it sent.
    #[pg_test]
    fn rows_in_flight_count_against_the_rate_limit() {
        use crate::store::outbox::claim;
        sending_accounts();
        Spi::run(
            "SET LOCAL enable_seqscan = off;
             UPDATE email_accounts.account SET send_limit_per_minute = 3 WHERE name = 'ready'",
        )
        .unwrap();
        for _ in 0..5 {
            queue("ready", 0, 0);
        }
        let claimed = claim(2, 60, &[], &[], 10, PASS).unwrap();
        assert_eq!(claimed.len(), 2);
        assert_eq!(claim(200, 60, &[], &[], 10, PASS).unwrap().len(), 1, "3 a minute, 2 in flight");
        assert_eq!(claim(200, 60, &[], &[], 10, PASS).unwrap().len(), 0);
        record_sent(&claimed);
        assert_eq!(claim(200, 60, &[], &[], 10, PASS).unwrap().len(), 0, "sent in the last minute");
    }

    /// The rate limits' count reads the rows in flight and those sent in the
    /// last day, each through its own index, as the sender plans (neither
    /// seq nor bitmap scans): never the account's older history, which grows
    /// for as long as the outbox is kept.
    #[pg_test]
    fn the_rate_limit_count_reads_no_older_history() {
        use crate::store::outbox::claim;
        sending_accounts();
        Spi::run(
            "SET LOCAL enable_seqscan = off;
             SET LOCAL enable_bitmapscan = off;
             UPDATE email_accounts.account SET send_limit_per_day = 100 WHERE name = 'ready';
             INSERT INTO email_accounts.outbox (account, to_addresses) SELECT 'ready', '{a@example.net}' FROM generate_series(1, 2003);
             UPDATE email_accounts.outbox SET status = 'sent', sent_at = now() - interval '7 days';
             UPDATE email_accounts.outbox SET sent_at = now() - interval '1 hour'
              WHERE outbox_id IN (SELECT outbox_id FROM email_accounts.outbox ORDER BY outbox_id LIMIT 3);
             -- (A delivery report's bounce: sent all the same.)
             UPDATE email_accounts.outbox SET status = 'bounced'
              WHERE outbox_id = (SELECT min(outbox_id) FROM email_accounts.outbox);
             UPDATE email_accounts.outbox SET status = 'bounced'
              WHERE outbox_id = (SELECT max(outbox_id) FROM email_accounts.outbox);",
        )
        .unwrap();
        let in_flight = queue("ready", 0, 0);
        assert_eq!(claim(1, 60, &[], &[], 10, PASS).unwrap().len(), 1);
        for _ in 0..100 {
            queue("ready", 0, 0);
        }
        // (The indexes that reach an account's sent rows; the others still
        // hold this transaction's versions of the 2,003 rows while queued.)
        let index_reads = || {
            Spi::get_one::<i64>(
                "SELECT (pg_stat_get_xact_tuples_returned('email_accounts.outbox_account_status_sent_at'::regclass)
                         + pg_stat_get_xact_tuples_returned('email_accounts.outbox_sending'::regclass)
                         + pg_stat_get_xact_tuples_returned('email_accounts.outbox_claim_account'::regclass))::bigint",
            )
            .unwrap()
            .unwrap_or(0)
        };
        let before = index_reads();
        let claimed = claim(200, 60, &[], &[], 10, PASS).unwrap();
        let read = index_reads() - before;
        assert_eq!(claimed.len(), 96, "100 a day: 3 sent in the last day (one bounced since), 1 in flight");
        assert!(!claimed.iter().any(|row| row.outbox_id == in_flight));
        assert!(read < 100, "{read} entries of the sent rows' indexes read: the 2,000 sent a week ago among them");
    }

    /// A claim's rows share one token, a version 4 UUID the sender makes
    /// (not one gen_random_uuid() per row); the next claim's is another.
    #[pg_test]
    fn a_claim_gives_its_rows_one_token_and_the_next_claim_another() {
        use crate::store::outbox::claim;
        sending_accounts();
        Spi::run("SET LOCAL enable_seqscan = off").unwrap();
        for _ in 0..3 {
            queue("ready", 0, 0);
        }
        let first = claim(2, 60, &[], &[], 10, PASS).unwrap();
        let second = claim(2, 60, &[], &[], 10, PASS).unwrap();
        assert_eq!((first.len(), second.len()), (2, 1));
        assert_eq!(first[0].claim_token, first[1].claim_token);
        assert_ne!(first[0].claim_token, second[0].claim_token);
        let stored = Spi::get_one::<String>(&format!(
            "SELECT claim_token::text FROM email_accounts.outbox_claim WHERE outbox_id = {}",
            second[0].outbox_id
        ))
        .unwrap()
        .unwrap();
        assert_eq!(stored, second[0].claim_token);
        let (version, variant) = (&stored[14..15], &stored[19..20]);
        assert!(version == "4" && "89ab".contains(variant), "{stored}: a version 4, variant 1 UUID");
    }

    /// Rows claimed on insert (claim_on_insert) as the sender takes them:
    /// its own untaken rows are read and written nothing (no token: the
    /// sender lists them on the worker board), at most `limit` a take (the
    /// rest is said to be left) and `room` (the rest goes back to the queue
    /// uncounted); rows of a skipped account, of a deleted one, past
    /// `expires_at`, or with less lease left than asked go back to the queue
    /// uncounted; rows of another process, and
    /// rows already taken (named by the sender), are left alone. Whether the account can send
    /// without rate limits is for the sender to decide from its settings
    /// (claim.rs; tests/outbox.rs). The claim never takes a row claimed on
    /// insert. (This backend plays the sender: rows are made its own by hand.)
    #[pg_test]
    fn rows_claimed_on_insert_are_taken_once_by_their_own_sender() {
        use crate::store::outbox::{claim, process_started_at, take_new_mail};
        sending_accounts();
        Spi::run(
            "SET LOCAL enable_seqscan = off;
             UPDATE email_accounts.account SET send_limit_per_day = 1000 WHERE name = 'also ready'",
        )
        .unwrap();
        let started_at = process_started_at();
        let claimed_on_insert = |account: &str, process: &str, lease_seconds: i32| -> i64 {
            let id = queue(account, 0, 0);
            Spi::run(&format!(
                "UPDATE email_accounts.outbox
                    SET status = 'sending', attempts = 1, sender_process_id = {process},
                        sender_started_at = '{started_at}', lease_until = now() + interval '{lease_seconds} seconds'
                  WHERE outbox_id = {id}"
            ))
            .unwrap();
            id
        };
        let mine = claimed_on_insert("ready", "pg_backend_pid()", 300);
        let limited = claimed_on_insert("also ready", "pg_backend_pid()", 300);
        let short_lease = claimed_on_insert("ready", "pg_backend_pid()", 100);
        let others = claimed_on_insert("ready", "pg_backend_pid() + 1", 300);
        assert_eq!(claim(200, 60, &[], &[], 10, None).unwrap().len(), 0, "the claim leaves them to their sender");

        let expired = claimed_on_insert("ready", "pg_backend_pid()", 300);
        Spi::run(&format!(
            "UPDATE email_accounts.outbox SET send_after = now() - interval '1 minute', expires_at = now()
              WHERE outbox_id = {expired}"
        ))
        .unwrap();
        let taken = take_new_mail(&[], 200.0, 200, &[], 32).unwrap();
        assert!(!taken.left && taken.given_back);
        let taken = crate::store::outbox::with_recipients_and_attachments(taken.rows).unwrap();
        let mut taken_ids: Vec<i64> = taken.iter().map(|row| row.outbox_id).collect();
        taken_ids.sort_unstable();
        assert_eq!(taken_ids, [mine, limited]);
        assert!(taken.iter().all(|row| row.attempts == 1 && row.recipients == ["a@example.net"]));
        let state = |id: i64| {
            Spi::get_three::<String, i32, bool>(&format!(
                "SELECT status, attempts, claim_token IS NOT NULL FROM email_accounts.outbox WHERE outbox_id = {id}"
            ))
            .unwrap()
        };
        assert_eq!(state(mine), (Some("sending".into()), Some(1), Some(false)));
        assert_eq!(state(limited), (Some("sending".into()), Some(1), Some(false)), "the sender reads its limits");
        assert_eq!(state(short_lease), (Some("queued".into()), Some(0), Some(false)), "too little lease left");
        assert_eq!(state(expired), (Some("queued".into()), Some(0), Some(false)), "expired: the claim leaves it");
        assert_eq!(state(others), (Some("sending".into()), Some(1), Some(false)), "another process's");
        let mut out = vec![mine, limited];
        let again = take_new_mail(&[], 200.0, 200, &out, 30).unwrap();
        assert_eq!((again.rows.len(), again.left, again.given_back), (0, false, false), "taken once");
        assert!(again.gone.is_empty(), "both still out for this sender");
        // A listed row no longer out for this sender (taken back after a
        // recording that failed, say) is said to be gone: off the list.
        Spi::run(&format!(
            "UPDATE email_accounts.outbox SET status = 'retry', sender_process_id = NULL, sender_started_at = NULL
              WHERE outbox_id = {limited}"
        ))
        .unwrap();
        assert_eq!(take_new_mail(&[], 200.0, 200, &out, 30).unwrap().gone, [limited]);
        Spi::run(&format!("UPDATE email_accounts.outbox SET status = 'cancelled' WHERE outbox_id = {limited}"))
            .unwrap();
        // At most `limit` a take; the rest is left for the next one.
        let (first, second) =
            (claimed_on_insert("ready", "pg_backend_pid()", 300), claimed_on_insert("ready", "pg_backend_pid()", 300));
        let one = take_new_mail(&[], 200.0, 1, &out, 30).unwrap();
        assert_eq!((one.rows.len(), one.left), (1, true));
        out.push(one.rows[0].outbox_id);
        let other = take_new_mail(&[], 200.0, 1, &out, 29).unwrap();
        assert_eq!((other.rows.len(), other.left), (1, false));
        out.push(other.rows[0].outbox_id);
        assert_eq!(
            [one.rows[0].outbox_id, other.rows[0].outbox_id].into_iter().collect::<std::collections::BTreeSet<_>>(),
            [first, second].into_iter().collect()
        );
        // At most `room`: the rest goes back to the queue, uncounted, for the claim.
        let (roomy, crowded) =
            (claimed_on_insert("ready", "pg_backend_pid()", 300), claimed_on_insert("ready", "pg_backend_pid()", 300));
        let squeezed = take_new_mail(&[], 200.0, 200, &out, 1).unwrap();
        assert_eq!(squeezed.rows.iter().map(|row| row.outbox_id).collect::<Vec<_>>(), [roomy], "in their order");
        assert!(!squeezed.left && squeezed.given_back);
        assert_eq!(state(crowded), (Some("queued".into()), Some(0), Some(false)), "no room on the board");
        out.push(roomy);
        Spi::run(&format!("UPDATE email_accounts.outbox SET status = 'cancelled' WHERE outbox_id = {crowded}"))
            .unwrap();

        let ready =
            Spi::get_one::<i64>("SELECT account_id FROM email_accounts.account WHERE name = 'ready'").unwrap().unwrap();
        let skipped = claimed_on_insert("ready", "pg_backend_pid()", 300);
        assert_eq!(take_new_mail(&[ready], 200.0, 200, &out, 32).unwrap().rows.len(), 0);
        assert_eq!(state(skipped), (Some("queued".into()), Some(0), Some(false)), "a skipped account's row");
        // Also while accounts are skipped (`NULL <> ALL (…)` is no answer).
        let orphan = claimed_on_insert("ready", "pg_backend_pid()", 300);
        Spi::run(&format!("UPDATE email_accounts.outbox SET account_id = NULL WHERE outbox_id = {orphan}")).unwrap();
        let taken = take_new_mail(&[ready], 200.0, 200, &out, 32).unwrap();
        assert!(taken.rows.is_empty() && taken.given_back);
        assert_eq!(state(orphan), (Some("queued".into()), Some(0), Some(false)), "a deleted account's row");
        // What went back is claimed the usual way, its attempt counted then
        // (the expired row is left to the expiry pass).
        let claimed = claim(200, 60, &[], &[], 10, None).unwrap();
        let mut claimed_ids: Vec<i64> = claimed.iter().map(|row| row.outbox_id).collect();
        claimed_ids.sort_unstable();
        assert_eq!(claimed_ids, [short_lease, skipped]);
        assert!(claimed.iter().all(|row| row.attempts == 1));
    }

    /// The worker board's list of rows a sender took without a token: what
    /// claim_never_taken() answers from it, any id (0 and negative ones
    /// too), 32 places, a sender it does not know counting as having taken
    /// everything; and a role that is not a superuser hears only about rows
    /// it can see. (This backend plays the sender.)
    #[pg_test]
    fn the_board_lists_the_rows_a_sender_took_without_a_token() {
        use crate::worker::board;
        let started_at = crate::store::outbox::process_started_at();
        let never_taken = |process: &str, id: i64| {
            Spi::get_one::<bool>(&format!("SELECT email_accounts.claim_never_taken({process}, '{started_at}', {id})"))
                .unwrap()
                .unwrap()
        };
        assert!(!never_taken("pg_backend_pid() + 1", 5), "a sender the board does not know: taken");
        board::remember_this_backend_as_a_sender();
        let (listed, room) = board::taken_without_token().unwrap();
        board::unmark_taken(&listed);
        assert_eq!(board::taken_without_token(), Some((vec![], 32)));
        assert!(never_taken("pg_backend_pid()", 5) && never_taken("pg_backend_pid()", 0));
        assert_eq!(room + listed.len(), 32);

        board::mark_taken(&[5, 0, -3]);
        assert!(!never_taken("pg_backend_pid()", 5) && !never_taken("pg_backend_pid()", 0));
        assert!(!never_taken("pg_backend_pid()", -3) && never_taken("pg_backend_pid()", 6));
        assert_eq!(board::taken_without_token(), Some((vec![5, 0, -3], 29)));
        let many: Vec<i64> = (100..130).collect();
        board::mark_taken(&many);
        assert_eq!(board::taken_without_token().unwrap().1, 0, "32 places");
        assert!(!never_taken("pg_backend_pid()", 128) && never_taken("pg_backend_pid()", 129), "only those fit");
        assert!(never_taken("pg_backend_pid()", 6), "a full list lists nothing else");
        board::unmark_taken(&[0, 5, 7]);
        assert!(never_taken("pg_backend_pid()", 0) && never_taken("pg_backend_pid()", 5));
        assert!(!never_taken("pg_backend_pid()", -3));
        board::mark_taken(&[200, 201, 202]);
        let (listed, room) = board::taken_without_token().unwrap();
        assert_eq!((listed.len(), room), (32, 0));
        assert!(listed.contains(&200) && listed.contains(&201) && !listed.contains(&202));
        board::unmark_taken(&listed);

        // A role that is not a superuser hears only about a row it can see.
        sending_accounts();
        let id = queue("ready", 0, 0);
        Spi::run(&format!(
            "UPDATE email_accounts.outbox
                SET tenant = 'acme', status = 'sending', attempts = 1, sender_process_id = pg_backend_pid(),
                    sender_started_at = '{started_at}', lease_until = now() + interval '5 minutes'
              WHERE outbox_id = {id};
             CREATE ROLE acme_reader IN ROLE email_accounts_sender;
             CREATE ROLE globex_reader IN ROLE email_accounts_sender;
             INSERT INTO email_accounts.tenant_member VALUES ('acme_reader', 'acme'), ('globex_reader', 'globex')"
        ))
        .unwrap();
        let as_role = |role: &str| {
            Spi::run(&format!("SET LOCAL ROLE {role}")).unwrap();
            let answer = never_taken("pg_backend_pid()", id);
            Spi::run("RESET ROLE").unwrap();
            answer
        };
        assert!(never_taken("pg_backend_pid()", id));
        assert!(as_role("acme_reader"), "its own tenant's row");
        assert!(!as_role("globex_reader"), "another tenant's row: no answer");
    }

    /// The claim names its sender by the start time pg_stat_get_activity()
    /// reports, which is what take_back_abandoned() compares.
    #[pg_test]
    fn the_claims_start_time_is_the_one_the_activity_view_reports() {
        let reported = Spi::get_one::<bool>(&format!(
            "SELECT backend_start = '{}'::timestamptz FROM pg_stat_get_activity(pg_backend_pid())",
            crate::store::outbox::process_started_at()
        ));
        assert_eq!(reported, Ok(Some(true)));
    }
}
