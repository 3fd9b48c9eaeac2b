//! Who may read a mailbox (issue 19): a private mailbox's mail is its owner
//! role's, a shared one's also the roles it is shared with, and admins of the
//! tenant see all. Four roles of one tenant (owner, a colleague the shared
//! mailbox is shared with, an intern it is not, an admin) and one of another
//! tenant, against every table and view of mail and every function that
//! reads, sends or syncs it. Real PostgreSQL, Dovecot and Postfix.
// Run by `make test-integration`; `cargo pgrx test` (feature pg_test) runs only the #[pg_test]s.
#![cfg(not(feature = "pg_test"))]

mod harness;

use harness::{failure, MailServers};

/// The tables and views of mail, each with a query naming the accounts (or,
/// for attachments and recipients, the marks of the accounts) whose rows a role sees.
const SEEN: &[(&str, &str)] = &[
    ("message", "SELECT account.name FROM email_accounts.message JOIN email_accounts.account USING (account_id)"),
    ("message_attachment", "SELECT split_part(filename, '.', 1) FROM email_accounts.message_attachment"),
    ("inbox", "SELECT account FROM email_accounts.inbox"),
    ("sync_state", "SELECT account.name FROM email_accounts.sync_state JOIN email_accounts.account USING (account_id)"),
    ("sync_status", "SELECT account FROM email_accounts.sync_status"),
    ("outbox", "SELECT account FROM email_accounts.outbox"),
    ("outbox_recipient", "SELECT split_part(address, '@', 1) FROM email_accounts.outbox_recipient"),
    ("outbox_attachment", "SELECT split_part(filename, '.', 1) FROM email_accounts.outbox_attachment"),
    ("outbox_status", "SELECT account FROM email_accounts.outbox_status"),
    ("bounces", "SELECT account FROM email_accounts.bounces"),
];

/// The accounts (sorted, distinct) each table and view shows `client`.
fn seen(client: &mut postgres::Client) -> Vec<(&'static str, String)> {
    SEEN.iter()
        .map(|(relation, query)| {
            let names: String = client
                .query_one(&format!("SELECT coalesce(string_agg(DISTINCT name, ',' ORDER BY name), '') FROM ({query}) AS seen (name)"), &[])
                .unwrap_or_else(|error| panic!("{relation}: {error}"))
                .get(0);
            (*relation, names)
        })
        .collect()
}

fn everywhere(names: &str) -> Vec<(&'static str, String)> {
    SEEN.iter().map(|(relation, _)| (*relation, names.to_owned())).collect()
}

/// A message with one attachment named after the account.
fn message(account: &str) -> Vec<u8> {
    format!(
        "From: Someone <someone@elsewhere.test>\r\nTo: {account}@example.test\r\nSubject: for {account}\r\n\
         Message-ID: <{account}@elsewhere.test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nHello {account}\r\n\
         --b\r\nContent-Type: text/plain; name={account}.txt\r\nContent-Disposition: attachment; filename={account}.txt\r\n\r\n\
         for {account}\r\n--b--\r\n"
    )
    .into_bytes()
}

#[test]
fn private_and_shared_mailboxes_show_their_mail_only_to_whom_they_belong() {
    let servers = MailServers::start();
    let (cluster, mut admin) = servers.quiet_cluster();
    // Accounts are named after their mailbox's local part, so what a role
    // sees can be told by name, attachment or recipient.
    admin
        .batch_execute(
            "CREATE ROLE acme_owner LOGIN IN ROLE email_accounts_sender;
             CREATE ROLE acme_colleague LOGIN IN ROLE email_accounts_sender;
             CREATE ROLE acme_intern LOGIN IN ROLE email_accounts_sender;
             CREATE ROLE acme_admin LOGIN IN ROLE email_accounts_admin;
             CREATE ROLE globex_app LOGIN IN ROLE email_accounts_sender;
             CREATE ROLE acme_sales NOLOGIN;
             GRANT acme_sales TO acme_colleague;
             INSERT INTO email_accounts.tenant_member VALUES
                 ('acme_owner', 'acme'), ('acme_colleague', 'acme'), ('acme_intern', 'acme'), ('acme_admin', 'acme'),
                 ('globex_app', 'globex');
             INSERT INTO email_accounts.account (name, tenant, address, owner_role, enable_incoming, enable_outgoing,
                                                 poll_interval, visibility, shared_with)
             VALUES ('alice', 'acme', 'alice@example.test', 'acme_owner', true, true, '1 hour', 'private', '{}'),
                    ('bob', 'acme', 'bob@example.test', 'acme_owner', true, true, '1 hour', 'shared', '{acme_sales}'),
                    ('carol', 'acme', 'carol@example.test', 'acme_owner', true, true, '1 hour', 'tenant', '{}'),
                    ('support', 'globex', 'support@example.test', 'globex_app', true, true, '1 hour', 'private', '{}');",
        )
        .unwrap();
    for account in ["alice", "bob", "carol", "support"] {
        let address = format!("{account}@example.test");
        let password = servers.user(&address).password.clone();
        admin.execute("SELECT email_accounts.set_password($1, $2)", &[&account, &password]).unwrap();
        servers.append(&address, "INBOX", &[(message(account), false)]);
        // (The receiver may take it first: it syncs an account as soon as it is ready.)
        admin.query("SELECT * FROM email_accounts.sync_now($1)", &[&account]).unwrap();
        let stored: i64 = admin
            .query_one(
                "SELECT count(*) FROM email_accounts.message JOIN email_accounts.account USING (account_id) WHERE name = $1",
                &[&account],
            )
            .unwrap()
            .get(0);
        assert_eq!(stored, 1, "{account}");
        // Two messages queued for tomorrow (the rows stay as they are while
        // the roles look); the first then counts as sent and bounced.
        let tenant = if account == "support" { "globex" } else { "acme" };
        for _ in 0..2 {
            admin
                .execute(
                    "SELECT email_accounts.send(\"to\" => ARRAY[$1 || '@elsewhere.test'], subject => 'from ' || $1,
                                                body_text => 'x', account => $1, tenant => $2,
                                                send_after => now() + interval '1 day',
                                                attachments => ARRAY[ROW($1 || '.txt', 'text/plain', 'x'::bytea, NULL)::email_accounts.attachment])",
                    &[&account, &tenant],
                )
                .unwrap();
        }
    }
    admin
        .batch_execute(
            "WITH first AS (SELECT min(outbox_id) AS outbox_id FROM email_accounts.outbox GROUP BY account),
                  sent AS (UPDATE email_accounts.outbox SET status = 'sent', sent_at = now()
                            WHERE outbox_id IN (SELECT outbox_id FROM first) RETURNING outbox_id)
             UPDATE email_accounts.outbox_recipient SET status = 'bounced', report = 'bounced', updated_at = now()
              WHERE outbox_id IN (SELECT outbox_id FROM sent)",
        )
        .unwrap();

    let mut owner = cluster.connect_as("postgres", "acme_owner");
    let mut colleague = cluster.connect_as("postgres", "acme_colleague");
    let mut intern = cluster.connect_as("postgres", "acme_intern");
    let mut tenant_admin = cluster.connect_as("postgres", "acme_admin");
    let mut globex = cluster.connect_as("postgres", "globex_app");

    // Who sees which mailbox's mail, in every table and view of mail.
    assert_eq!(seen(&mut owner), everywhere("alice,bob,carol"), "the owner sees its private and shared mailboxes");
    assert_eq!(
        seen(&mut colleague),
        everywhere("bob,carol"),
        "shared with acme_sales, of which the colleague is a member"
    );
    assert_eq!(seen(&mut intern), everywhere("carol"), "the intern sees only the tenant's mailbox");
    assert_eq!(seen(&mut tenant_admin), everywhere("alice,bob,carol"), "admins see every mailbox of their tenant");
    assert_eq!(seen(&mut globex), everywhere("support"), "another tenant sees its own only");
    // The accounts themselves stay listed for the whole tenant.
    let listed: String = intern
        .query_one("SELECT string_agg(name, ',' ORDER BY name) FROM email_accounts.account_settings", &[])
        .unwrap()
        .get(0);
    assert_eq!(listed, "alice,bob,carol");

    // Sending: through a private mailbox only its owner (and admins); 42501 naming it for the others.
    let send = |account: &str| {
        format!(
            "SELECT email_accounts.send(\"to\" => '{{{account}@elsewhere.test}}', subject => 's', body_text => 'b',
                                        account => '{account}', send_after => now() + interval '1 day')"
        )
    };
    for (client, allowed) in [
        (&mut owner, ["alice", "bob", "carol"].as_slice()),
        (&mut colleague, ["bob", "carol"].as_slice()),
        (&mut intern, ["carol"].as_slice()),
        (&mut tenant_admin, ["alice", "bob", "carol"].as_slice()),
    ] {
        for account in ["alice", "bob", "carol"] {
            let (code, message) = failure(client, &send(account));
            if allowed.contains(&account) {
                assert_eq!(code, "", "{account}: {message}");
            } else {
                assert_eq!(code, "42501", "{account}: {message}");
                assert!(message.contains(&format!("account '{account}'")), "{message}");
            }
        }
    }
    // Naming another tenant's mailbox says nothing of it; naming its id does not help either.
    assert_eq!(failure(&mut owner, &send("support")).0, "23503");
    let (code, _) = failure(
        &mut intern,
        "INSERT INTO email_accounts.outbox (to_addresses, subject, account_id)
         SELECT '{x@elsewhere.test}', 's', account_id FROM email_accounts.account WHERE name = 'alice'",
    );
    assert_eq!(code, "", "account_id is chosen by the trigger, not taken from the row");
    let chosen: i64 = intern
        .query_one(
            "SELECT count(*) FROM email_accounts.outbox JOIN email_accounts.account USING (account_id) WHERE account.name = 'alice'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(chosen, 0, "the intern's row did not go through alice");
    admin.batch_execute("DELETE FROM email_accounts.outbox WHERE account_id IS NULL").unwrap();

    // Syncing: sync_now() follows the same rule.
    let sync_now = |client: &mut postgres::Client, account: &str, expected: &str| {
        let (code, message) = failure(client, &format!("SELECT * FROM email_accounts.sync_now('{account}')"));
        assert_eq!(code, expected, "sync_now({account}): {message}");
    };
    sync_now(&mut intern, "alice", "42501");
    sync_now(&mut intern, "bob", "42501");
    sync_now(&mut colleague, "alice", "42501");
    sync_now(&mut colleague, "bob", "");
    sync_now(&mut owner, "alice", "");
    sync_now(&mut tenant_admin, "alice", "");
    sync_now(&mut globex, "alice", "42704");
    // Testing and passwords stay with the owner role and admins.
    for (client, expected) in
        [(&mut colleague, "42501"), (&mut intern, "42501"), (&mut owner, ""), (&mut tenant_admin, "")]
    {
        assert_eq!(failure(client, "SELECT email_accounts.test_account('bob')").0, expected);
    }
    // reparse(), cancel() and retry() are admins' (row-level security applies to them as well).
    let alice_message: i64 = admin
        .query_one(
            "SELECT message_id FROM email_accounts.message JOIN email_accounts.account USING (account_id) WHERE account.name = 'alice'",
            &[],
        )
        .unwrap()
        .get(0);
    let alice_outbox: i64 = admin
        .query_one(
            "SELECT max(outbox_id) FROM email_accounts.outbox WHERE account = 'alice' AND status = 'queued'",
            &[],
        )
        .unwrap()
        .get(0);
    for statement in [
        format!("SELECT email_accounts.reparse({alice_message})"),
        format!("SELECT email_accounts.cancel({alice_outbox})"),
        format!("SELECT email_accounts.retry({alice_outbox})"),
    ] {
        assert_eq!(failure(&mut colleague, &statement).0, "42501", "{statement}");
    }
    let reparsed: bool =
        tenant_admin.query_one(&format!("SELECT email_accounts.reparse({alice_message})"), &[]).unwrap().get(0);
    assert!(reparsed);
    let cancelled: bool =
        tenant_admin.query_one(&format!("SELECT email_accounts.cancel({alice_outbox})"), &[]).unwrap().get(0);
    assert!(cancelled);
    // A reply links to mail its readers may see: one in carol's mailbox (the
    // tenant's) to alice's sent mail stays unlinked, one in alice's own is
    // linked; one in alice's (private to acme_owner) to bob's (acme_owner's,
    // shared) is linked, one in bob's to alice's is not (acme_sales sees bob).
    let mut sent_by = |account: &str| -> String {
        admin
            .query_one(
                "SELECT message_id FROM email_accounts.outbox WHERE account = $1 ORDER BY outbox_id LIMIT 1",
                &[&account],
            )
            .unwrap()
            .get(0)
    };
    let (alice_sent, bob_sent) = (sent_by("alice"), sent_by("bob"));
    for (mailbox, subject, answered) in [
        ("carol", "reply-1-in-carol-to-alice", &alice_sent),
        ("alice", "reply-2-in-alice-to-alice", &alice_sent),
        ("alice", "reply-3-in-alice-to-bob", &bob_sent),
        ("bob", "reply-4-in-bob-to-alice", &alice_sent),
    ] {
        let raw = format!(
            "From: x@elsewhere.test\r\nTo: {mailbox}@example.test\r\nSubject: {subject}\r\nMessage-ID: <{subject}@elsewhere.test>\r\n\
             In-Reply-To: {answered}\r\n\r\nanswer\r\n"
        );
        servers.append(&format!("{mailbox}@example.test"), "INBOX", &[(raw.into_bytes(), false)]);
        admin.query("SELECT * FROM email_accounts.sync_now($1)", &[&mailbox]).unwrap();
    }
    let links: Vec<(String, bool)> = admin
        .query(
            "SELECT subject, reply_to_outbox_id IS NOT NULL FROM email_accounts.message WHERE subject LIKE 'reply-%' ORDER BY subject",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let expected = [
        ("reply-1-in-carol-to-alice", false),
        ("reply-2-in-alice-to-alice", true),
        ("reply-3-in-alice-to-bob", true),
        ("reply-4-in-bob-to-alice", false),
    ];
    assert_eq!(links, expected.map(|(subject, linked)| (subject.to_owned(), linked)));

    // A suppression that alice's mail caused does not tell the tenant whom alice wrote to.
    admin
        .batch_execute(
            "INSERT INTO email_accounts.suppression (tenant, address, outbox_id)
             SELECT 'acme', to_addresses[1], outbox_id FROM email_accounts.outbox WHERE account IN ('alice', 'carol') AND status = 'sent'",
        )
        .unwrap();
    let suppressed = |client: &mut postgres::Client| -> String {
        client
            .query_one("SELECT string_agg(address, ',' ORDER BY address) FROM email_accounts.suppression", &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(suppressed(&mut intern), "carol@elsewhere.test");
    assert_eq!(suppressed(&mut owner), "alice@elsewhere.test,carol@elsewhere.test");
    assert_eq!(suppressed(&mut tenant_admin), "alice@elsewhere.test,carol@elsewhere.test");
    let unsuppressed: i32 =
        tenant_admin.query_one("SELECT email_accounts.unsuppress('alice@elsewhere.test')", &[]).unwrap().get(0);
    assert_eq!(unsuppressed, 1, "admins maintain every suppression of their tenant");

    // Only admins change who sees a mailbox, and the change holds at once.
    for client in [&mut owner, &mut colleague] {
        let (code, message) =
            failure(client, "UPDATE email_accounts.account SET visibility = 'tenant' WHERE name = 'alice'");
        assert_eq!(code, "42501", "{message}");
    }
    let (code, message) = failure(
        &mut tenant_admin,
        "UPDATE email_accounts.account SET visibility = 'shared', shared_with = '{no_such_role}' WHERE name = 'alice'",
    );
    assert_eq!((code.as_str(), message.contains("shared_with")), ("23514", true), "{message}");
    let (code, message) = failure(
        &mut tenant_admin,
        "UPDATE email_accounts.account SET visibility = 'shared', shared_with = '{pg_read_all_data}' WHERE name = 'alice'",
    );
    assert_eq!((code.as_str(), message.contains("shared_with")), ("23514", true), "not a predefined role: {message}");
    let (code, message) =
        failure(&mut tenant_admin, "UPDATE email_accounts.account SET visibility = 'shared' WHERE name = 'alice'");
    assert_eq!(code, "23514", "shared with nobody: {message}");
    tenant_admin.batch_execute("UPDATE email_accounts.account SET visibility = 'tenant' WHERE name = 'alice'").unwrap();
    assert_eq!(seen(&mut intern), everywhere("alice,carol"), "open to the tenant: the intern sees alice's mail now");
    tenant_admin
        .batch_execute("UPDATE email_accounts.account SET visibility = 'private' WHERE name = 'carol'")
        .unwrap();
    assert_eq!(seen(&mut intern), everywhere("alice"), "made private: carol's mail is gone from the intern's view");
    assert_eq!(seen(&mut owner), everywhere("alice,bob,carol"));

    // Deleted, a private mailbox takes its outbox rows along (without their
    // account they would be the whole tenant's); a tenant one leaves them.
    let outbox_of = |client: &mut postgres::Client, account: &str| -> i64 {
        client
            .query_one("SELECT count(*) FROM email_accounts.outbox WHERE subject = 'from ' || $1", &[&account])
            .unwrap()
            .get(0)
    };
    assert_eq!((outbox_of(&mut admin, "carol"), outbox_of(&mut admin, "alice")), (2, 2));
    tenant_admin.batch_execute("DELETE FROM email_accounts.account WHERE name IN ('carol', 'alice')").unwrap();
    assert_eq!(outbox_of(&mut admin, "carol"), 0, "carol was private");
    assert_eq!(outbox_of(&mut intern, "alice"), 2, "alice was the tenant's: her rows stay, without account");

    // Names are unique per tenant only: sync_now() of acme's bob answers for
    // acme's bob alone, also to a role that sees another tenant's bob.
    admin
        .batch_execute(
            "INSERT INTO email_accounts.account (name, tenant, address, owner_role, enable_incoming, poll_interval)
             VALUES ('bob', 'globex', 'bob@example.test', 'globex_app', true, '1 hour');
             SELECT email_accounts.set_password('bob', 'bob-password', 'globex');",
        )
        .unwrap();
    let folders: i64 =
        admin.query_one("SELECT count(*) FROM email_accounts.sync_now('bob', tenant => 'acme')", &[]).unwrap().get(0);
    assert_eq!(folders, 1, "one folder (INBOX) of one account");
}
