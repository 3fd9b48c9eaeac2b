//! Automatic linking (issue 16, part 1): every application row has a mail
//! address of its own (document_address()); mail sent there through the
//! real Postfix (recipient delimiter `+`) lands in the account's Dovecot
//! mailbox and is linked to the row when the receiver stores it — only for a
//! row that exists and that the account's owner role can read, and only for
//! accounts of the same tenant. Mail about a row carries its document
//! address as Reply-To.
// Run by `make test-integration`; `cargo pgrx test` (feature pg_test) runs only the #[pg_test]s.
#![cfg(not(feature = "pg_test"))]

mod harness;

use harness::{wait_until, MailServers, Postgres};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);
/// A key with a space, `/`, `+`, `=` and non-ASCII, in a table whose name needs quoting.
const ORDER: &str = "SO 1/+=ü";

struct Setup {
    servers: MailServers,
    _cluster: Postgres,
    client: postgres::Client,
}

impl Setup {
    fn document_address(&mut self, table: &str, id: &str, account: &str) -> String {
        self.client
            .query_one("SELECT email_accounts.document_address($1::text::regclass, $2, $3)", &[&table, &id, &account])
            .unwrap()
            .get(0)
    }

    fn send_to(&mut self, to: &str, subject: &str) {
        self.client
            .execute(
                "SELECT email_accounts.send(\"to\" => ARRAY[$1], subject => $2, body_text => 'About it', account => 'Support')",
                &[&to, &subject],
            )
            .unwrap();
    }

    /// Syncs Support until the message with this subject is stored; its link and routing error.
    fn received(&mut self, subject: &str) -> (Option<String>, Option<String>, Option<String>) {
        wait_until(&format!("{subject:?} to be stored"), LIMIT, || {
            self.client.execute("SELECT * FROM email_accounts.sync_now('Support', 'acme')", &[]).unwrap();
            let rows = self
                .client
                .query(
                    "SELECT reference_table::text, reference_id, routing_error FROM email_accounts.message WHERE subject = $1",
                    &[&subject],
                )
                .unwrap();
            rows.first().map(|row| (row.get(0), row.get(1), row.get(2)))
        })
    }
}

fn setup() -> Setup {
    let servers = MailServers::start();
    let (cluster, mut client) = servers.quiet_cluster();
    client
        .batch_execute(&format!(
            "CREATE SCHEMA app;
             CREATE TABLE app.\"Sales Order\" (name text PRIMARY KEY, customer text);
             INSERT INTO app.\"Sales Order\" VALUES ('{ORDER}', 'Acme');
             CREATE TABLE app.secret_notes (id integer PRIMARY KEY);
             INSERT INTO app.secret_notes VALUES (7);
             CREATE ROLE support_app;
             GRANT USAGE ON SCHEMA app TO support_app;
             GRANT SELECT ON app.\"Sales Order\" TO support_app;
             INSERT INTO email_accounts.tenant_member (role_name, tenant) VALUES ('support_app', 'acme');
             INSERT INTO email_accounts.account (name, tenant, address, owner_role, enable_incoming, enable_outgoing,
                                                 poll_interval, enable_automatic_linking, reply_to_document_address)
             VALUES ('Support', 'acme', 'support@example.test', 'support_app', true, true, '1 hour', true, true);
             CREATE ROLE globex_app;
             INSERT INTO email_accounts.tenant_member (role_name, tenant) VALUES ('globex_app', 'globex');
             INSERT INTO email_accounts.account (name, tenant, address, owner_role, enable_incoming, poll_interval,
                                                 enable_automatic_linking, awaiting_password)
             VALUES ('Other', 'globex', 'carol@example.test', 'globex_app', false, '1 hour', true, true);"
        ))
        .unwrap();
    let password = servers.user("support@example.test").password.clone();
    client.execute("SELECT email_accounts.set_password('Support', $1, 'acme')", &[&password]).unwrap();
    Setup { servers, _cluster: cluster, client }
}

#[test]
fn mail_to_a_rows_address_is_linked_to_it_and_mail_about_it_asks_for_answers_there() {
    let mut setup = setup();
    let order_address = setup.document_address("app.\"Sales Order\"", ORDER, "Support");
    assert!(order_address.starts_with("support+app_2E_22Sales_20Order_22="), "{order_address}");
    assert!(order_address.ends_with("@example.test"), "{order_address}");

    // Through Postfix (user+detail is user) into Support's mailbox: linked, though it answers nothing.
    setup.send_to(&order_address, "to the order");
    let (table, id, error) = setup.received("to the order");
    assert_eq!((table.as_deref(), id.as_deref(), error), (Some("app.\"Sales Order\""), Some(ORDER), None));

    // A row that does not exist, and a table the owner role may not read: stored, not linked, said why.
    let missing = setup.document_address("app.\"Sales Order\"", "SO-404", "Support");
    setup.send_to(&missing, "to a missing order");
    let (table, _, error) = setup.received("to a missing order");
    assert_eq!(table, None);
    assert!(error.as_deref().unwrap_or_default().contains("no such row"), "{error:?}");
    let secret = setup.document_address("app.secret_notes", "7", "Support");
    setup.send_to(&secret, "to a secret note");
    let (table, _, error) = setup.received("to a secret note");
    assert_eq!(table, None);
    assert!(error.as_deref().unwrap_or_default().contains("permission denied"), "{error:?}");

    // The extension's own tables are never linked.
    let own = setup
        .client
        .query_one("SELECT email_accounts.tagged_address('support@example.test', 'email_accounts.account', '1')", &[])
        .unwrap()
        .get::<_, String>(0);
    setup.send_to(&own, "to an account row");
    let (table, _, error) = setup.received("to an account row");
    assert_eq!(table, None);
    assert!(error.as_deref().unwrap_or_default().contains("not an application table"), "{error:?}");

    // Whoever sends the mail names the table, and the look-up runs the
    // table's code as the owner role: a table of a role without the owner
    // role's rights is not looked up (its row-level security policy would
    // have run as support_app and linked).
    setup
        .client
        .batch_execute(
            "CREATE ROLE mallory;
             CREATE SCHEMA mallory AUTHORIZATION mallory;
             GRANT USAGE ON SCHEMA mallory TO PUBLIC;
             SET ROLE mallory;
             CREATE TABLE mallory.loot (taken_as text);
             GRANT INSERT ON mallory.loot TO PUBLIC;
             CREATE FUNCTION mallory.steal() RETURNS boolean LANGUAGE plpgsql
                 AS $$ BEGIN INSERT INTO mallory.loot VALUES (current_user); RETURN true; END $$;
             CREATE TABLE mallory.trap (id integer PRIMARY KEY);
             INSERT INTO mallory.trap VALUES (1);
             ALTER TABLE mallory.trap ENABLE ROW LEVEL SECURITY;
             CREATE POLICY everyone ON mallory.trap USING (mallory.steal());
             GRANT SELECT ON mallory.trap TO PUBLIC;
             RESET ROLE;",
        )
        .unwrap();
    let trap = setup.document_address("mallory.trap", "1", "Support");
    setup.send_to(&trap, "to a trap");
    let (table, _, error) = setup.received("to a trap");
    assert_eq!(table, None);
    assert!(error.as_deref().unwrap_or_default().contains("its owner mallory lacks the rights"), "{error:?}");
    let taken: i64 = setup.client.query_one("SELECT count(*) FROM mallory.loot", &[]).unwrap().get(0);
    assert_eq!(taken, 0, "mallory's policy never ran as the owner role");

    // Another tenant's document address in Support's mailbox links nothing.
    let others = setup
        .client
        .query_one("SELECT email_accounts.tagged_address('carol@example.test', 'app.\"Sales Order\"', $1)", &[&ORDER]);
    let others: String = others.unwrap().get(0);
    let raw = format!(
        "From: mallory@example.test\r\nTo: {others}\r\nSubject: across tenants\r\nMessage-ID: <across@example.test>\r\n\r\nHi\r\n"
    );
    setup.servers.append("support@example.test", "INBOX", &[(raw.into_bytes(), false)]);
    let (table, _, error) = setup.received("across tenants");
    assert_eq!((table, error), (None, None));

    // Mail about the row asks for answers at its address (the account's default), unless told otherwise.
    setup
        .client
        .batch_execute(&format!(
            "SELECT email_accounts.send(\"to\" => '{{bob@example.test}}', subject => 'your order', account => 'Support',
                                        reference_table => 'app.\"Sales Order\"', reference_id => '{ORDER}');
             SELECT email_accounts.send(\"to\" => '{{bob@example.test}}', subject => 'plain reply-to', account => 'Support',
                                        reference_table => 'app.\"Sales Order\"', reference_id => '{ORDER}',
                                        reply_to_document => false);"
        ))
        .unwrap();
    let (with, without) = wait_until("bob to have both", LIMIT, || {
        let mailbox = setup.servers.mailbox("bob@example.test");
        let find = |subject: &str| mailbox.iter().find(|raw| raw.contains(&format!("Subject: {subject}"))).cloned();
        Some((find("your order")?, find("plain reply-to")?))
    });
    assert!(with.contains(&format!("Reply-To: {order_address}")), "{with}");
    assert!(!without.contains("Reply-To: support+"), "{without}");

    // Only members of the owner role turn automatic linking on (the row look-up runs as it).
    setup
        .client
        .batch_execute(
            "CREATE ROLE acme_admin IN ROLE email_accounts_admin;
             INSERT INTO email_accounts.tenant_member (role_name, tenant) VALUES ('acme_admin', 'acme');
             UPDATE email_accounts.account SET enable_automatic_linking = false WHERE name = 'Support';
             SET ROLE acme_admin;",
        )
        .unwrap();
    let denied = setup
        .client
        .batch_execute("UPDATE email_accounts.account SET enable_automatic_linking = true WHERE name = 'Support'")
        .unwrap_err();
    assert_eq!(denied.as_db_error().map(|error| error.code().code()), Some("42501"), "{denied:?}");
    setup.client.batch_execute("RESET ROLE").unwrap();

    // Automatic linking off: no document address.
    setup
        .client
        .batch_execute("UPDATE email_accounts.account SET enable_automatic_linking = false WHERE name = 'Support'")
        .unwrap();
    let refused = setup
        .client
        .query_one("SELECT email_accounts.document_address('app.secret_notes', '7', 'Support')", &[])
        .unwrap_err();
    assert_eq!(refused.as_db_error().map(|error| error.code().code()), Some("55000"), "{refused:?}");
}
