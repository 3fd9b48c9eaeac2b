//! Email templates (issue 17), for real: a trigger on an application table
//! sends templated mail in three languages through Postfix into Dovecot;
//! language and tenant fallbacks; HTML escaped in the HTML body only;
//! includes; every kind of mistake a clear 22023 with nothing queued; a
//! changed template (or included one) used at once by the same session;
//! attachments; the automatic reply made from a template; who may change what.
// Run by `make test-integration`; `cargo pgrx test` (feature pg_test) runs only the #[pg_test]s.
#![cfg(not(feature = "pg_test"))]

mod harness;

use harness::{wait_until, MailServers, Postgres};
use std::time::Duration;

struct Setup {
    servers: MailServers,
    _cluster: Postgres,
    client: postgres::Client,
}

fn setup() -> Setup {
    let servers = MailServers::start();
    let (cluster, mut client) = servers.quiet_cluster();
    client
        .batch_execute(
            "INSERT INTO email_accounts.account (name, tenant, address, enable_incoming, enable_outgoing, default_outgoing,
                                                 poll_interval)
             VALUES ('Support', 'acme', 'support@example.test', true, true, true, '1 hour');
             -- Shared by every tenant: a footer, and a template a tenant may override.
             INSERT INTO email_accounts.template (tenant, name, body_text, body_html)
             VALUES (NULL, 'footer', E'\\n-- {{ company }}', '<hr><p>{{ company }}</p>');
             INSERT INTO email_accounts.template (tenant, name, subject, body_text)
             VALUES (NULL, 'welcome', 'Welcome (shared)', 'Hello');
             INSERT INTO email_accounts.template (tenant, name, language, subject, body_text, body_html, description) VALUES
               ('acme', 'order_shipped', NULL, 'Order {{ order_id }} has shipped',
                E'Hello {{ name }},\\n{% for item in items %}- {{ item.title }}: {{ item.price | number }}\\n{% endfor %}Shipped {{ shipped_on | date }}{% include ''footer'' %}',
                '<p>Hello {{ name }}</p>{% include ''footer'' %}', 'order confirmation'),
               ('acme', 'order_shipped', 'de', 'Bestellung {{ order_id }} ist unterwegs',
                E'Hallo {{ name }},\\n{% for item in items %}- {{ item.title }}: {{ item.price | number }}\\n{% endfor %}Versandt am {{ shipped_on | date }}{% include ''footer'' %}',
                '<p>Hallo {{ name }}</p>{% include ''footer'' %}', NULL),
               ('acme', 'order_shipped', 'pt', 'Pedido {{ order_id }} enviado',
                E'Olá {{ name }},\\n{% for item in items %}- {{ item.title }}: {{ item.price | number }}\\n{% endfor %}Enviado em {{ shipped_on | date }}{% include ''footer'' %}',
                '<p>Olá {{ name }}</p>{% include ''footer'' %}', NULL);
             INSERT INTO email_accounts.template (tenant, name, subject, body_text)
             VALUES ('globex', 'secret', 'Globex only', 'not for acme');
             CREATE SCHEMA app;
             CREATE TABLE app.orders (id integer PRIMARY KEY, email text, name text, language text, shipped_on date,
                                      items jsonb, company text);
             CREATE FUNCTION app.order_shipped() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM email_accounts.send(\"to\" => ARRAY[NEW.email], template => 'order_shipped',
                                             context => to_jsonb(NEW) || jsonb_build_object('order_id', NEW.id),
                                             language => NEW.language, reference_table => 'app.orders',
                                             reference_id => NEW.id::text, tenant => 'acme');
                 RETURN NEW;
             END $$;
             CREATE TRIGGER mail_the_customer AFTER INSERT ON app.orders FOR EACH ROW EXECUTE FUNCTION app.order_shipped();",
        )
        .unwrap();
    let password = servers.user("support@example.test").password.clone();
    client.execute("SELECT email_accounts.set_password('Support', $1, 'acme')", &[&password]).unwrap();
    Setup { servers, _cluster: cluster, client }
}

fn outbox_count(client: &mut postgres::Client) -> i64 {
    client.query_one("SELECT count(*) FROM email_accounts.outbox", &[]).unwrap().get(0)
}

/// The SQLSTATE and message of a statement that must fail.
fn refused(client: &mut postgres::Client, statement: &str) -> (String, String) {
    let error = client.batch_execute(statement).expect_err(statement);
    let error = error.as_db_error().unwrap_or_else(|| panic!("{statement}: {error}"));
    (error.code().code().to_owned(), error.message().to_owned())
}

const ITEMS: &str = r#"[{"title": "Tea", "price": 1234.5}, {"title": "Cup", "price": 3}]"#;

#[test]
fn a_trigger_sends_templated_mail_in_three_languages() {
    let mut setup = setup();
    setup
        .client
        .batch_execute(&format!(
            "INSERT INTO app.orders VALUES
               (1, 'bob@example.test', '<script>alert(1)</script>', 'en-US', '2026-12-02', '{ITEMS}', 'Acme & Co'),
               (2, 'carol@example.test', 'Carla', 'pt-BR', '2026-12-02', '{ITEMS}', 'Acme & Co'),
               (3, 'alice@example.test', 'Anna', 'de', '2026-12-02', '{ITEMS}', 'Acme & Co');"
        ))
        .unwrap();
    let rows = setup
        .client
        .query(
            "SELECT reference_id, subject, body_text, body_html, template, language, template_language
               FROM email_accounts.outbox ORDER BY reference_id",
            &[],
        )
        .unwrap();
    let row = |index: usize| -> (String, String, String, String, Option<String>) {
        let row = &rows[index];
        (row.get(1), row.get(2), row.get(3), row.get::<_, Option<String>>(4).unwrap(), row.get(6))
    };
    // en-US: no English row, so the default; the HTML escapes the name, the text does not.
    let (subject, text, html, template, language) = row(0);
    assert_eq!((subject.as_str(), template.as_str(), language), ("Order 1 has shipped", "order_shipped", None));
    assert_eq!(
        text,
        "Hello <script>alert(1)</script>,\n- Tea: 1,234.50\n- Cup: 3.00\nShipped December 2, 2026\n-- Acme & Co"
    );
    assert_eq!(html, "<p>Hello &lt;script&gt;alert(1)&lt;&#x2f;script&gt;</p><hr><p>Acme &amp; Co</p>");
    // pt-BR falls back to pt, and numbers and dates are Brazilian.
    let (subject, text, _, _, language) = row(1);
    assert_eq!((subject.as_str(), language.as_deref()), ("Pedido 2 enviado", Some("pt")));
    assert!(text.contains("- Tea: 1.234,50\n") && text.contains("Enviado em 2 de dezembro de 2026"), "{text}");
    let (subject, text, _, _, language) = row(2);
    assert_eq!((subject.as_str(), language.as_deref()), ("Bestellung 3 ist unterwegs", Some("de")));
    assert!(text.contains("Versandt am 2. Dezember 2026"), "{text}");

    // Dovecot has the rendered mail.
    let received = wait_until("Anna's mail to arrive", Duration::from_secs(60), || {
        setup.servers.mailbox("alice@example.test").into_iter().find(|raw| raw.contains("Bestellung 3"))
    });
    assert!(received.contains("Versandt am 2. Dezember 2026"), "{received}");
    assert!(received.contains("text/html"), "both bodies");

    // Previewing in psql, and the tenant's own template before the shared one.
    let preview = setup
        .client
        .query_one(
            "SELECT subject, template_language FROM email_accounts.render_template('order_shipped',
                 jsonb_build_object('order_id', 9, 'name', 'x', 'items', '[]'::jsonb, 'shipped_on', '2026-01-05', 'company', 'c'),
                 'de-AT', 'acme')",
            &[],
        )
        .unwrap();
    assert_eq!(
        (preview.get::<_, String>(0), preview.get::<_, Option<String>>(1)),
        ("Bestellung 9 ist unterwegs".into(), Some("de".into()))
    );
    setup
        .client
        .batch_execute(
            "INSERT INTO email_accounts.template (tenant, name, subject, body_text) VALUES ('acme', 'welcome', 'Welcome to Acme', 'Hi')",
        )
        .unwrap();
    let subject: String = setup
        .client
        .query_one("SELECT subject FROM email_accounts.render_template('welcome', '{}', NULL, 'acme')", &[])
        .unwrap()
        .get(0);
    assert_eq!(subject, "Welcome to Acme");
    let subject: String = setup
        .client
        .query_one("SELECT subject FROM email_accounts.render_template('welcome', '{}', NULL, 'globex')", &[])
        .unwrap()
        .get(0);
    assert_eq!(subject, "Welcome (shared)");
}

#[test]
fn mistakes_are_clear_errors_and_queue_nothing() {
    let mut setup = setup();
    let before = outbox_count(&mut setup.client);
    // A missing variable: named, with the template, language and part (the
    // trigger's insert fails with it, and its row is not stored either).
    let (code, message) = refused(
        &mut setup.client,
        "SELECT email_accounts.send(\"to\" => ARRAY['bob@example.test'], template => 'order_shipped',
                                    context => '{\"order_id\": 5}', language => 'de', tenant => 'acme')",
    );
    assert_eq!(code, "22023");
    assert!(
        message.contains("order_shipped")
            && message.contains("(language de)")
            && message.contains("variable name at line 1"),
        "{message}"
    );
    let (code, _) = refused(
        &mut setup.client,
        "CREATE OR REPLACE FUNCTION app.order_shipped() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM email_accounts.send(\"to\" => ARRAY[NEW.email], template => 'order_shipped',
                                         context => jsonb_build_object('order_id', NEW.id), tenant => 'acme');
             RETURN NEW;
         END $$;
         INSERT INTO app.orders (id, email) VALUES (5, 'bob@example.test');",
    );
    assert_eq!(code, "22023");
    let orders: i64 = setup.client.query_one("SELECT count(*) FROM app.orders", &[]).unwrap().get(0);
    assert_eq!(orders, 0, "the application's insert failed with it");
    // The same columns on a direct INSERT: an unknown template, another tenant's.
    for name in ["no_such_template", "secret"] {
        let (code, message) = refused(
            &mut setup.client,
            &format!(
                "INSERT INTO email_accounts.outbox (tenant, to_addresses, template, context)
                 VALUES ('acme', '{{bob@example.test}}', '{name}', '{{}}')"
            ),
        );
        assert_eq!(code, "22023", "{message}");
        assert!(message.contains(&format!("no template '{name}'")), "{message}");
    }
    assert_eq!(outbox_count(&mut setup.client), before, "nothing queued");

    // Saving: a syntax error names the part and the line; an unknown include is refused.
    let (code, message) = refused(
        &mut setup.client,
        "INSERT INTO email_accounts.template (tenant, name, subject, body_text)
         VALUES ('acme', 'broken', 'ok', E'line one\\n{% if %}')",
    );
    assert_eq!(code, "22023");
    assert!(message.contains("body_text") && message.contains("line 2"), "{message}");
    let (code, message) = refused(
        &mut setup.client,
        "INSERT INTO email_accounts.template (tenant, name, body_text) VALUES ('acme', 'lost', '{% include ''nowhere'' %}')",
    );
    assert_eq!(code, "22023");
    assert!(message.contains("nowhere"), "{message}");
    // Itself, and an attachment without content.
    let (code, message) = refused(
        &mut setup.client,
        "INSERT INTO email_accounts.template (tenant, name, body_text) VALUES ('acme', 'loop', '{% include ''loop'' %}')",
    );
    assert_eq!(code, "22023");
    assert!(message.contains("includes itself"), "{message}");
    let (code, message) = refused(
        &mut setup.client,
        "INSERT INTO email_accounts.template (tenant, name, body_text, attachments)
         VALUES ('acme', 'empty_file', 'x', ARRAY[ROW('a.txt', 'text/plain', NULL, NULL)::email_accounts.attachment])",
    );
    assert_eq!(code, "22023");
    assert!(message.contains("attachment 1"), "{message}");
    let (code, _) = refused(
        &mut setup.client,
        "INSERT INTO email_accounts.template (tenant, name, body_text, attachments)
         VALUES ('acme', 'bad_cid', 'x', ARRAY[ROW('a.png', 'image/png', 'x'::bytea, E'a>\\nb')::email_accounts.attachment])",
    );
    assert_eq!(code, "22023", "a content_id the outbox would refuse is refused when saved");
    // A shared template may not include a tenant's.
    let (code, _) = refused(
        &mut setup.client,
        "INSERT INTO email_accounts.template (tenant, name, body_text) VALUES (NULL, 'leaky', '{% include ''order_shipped'' %}')",
    );
    assert_eq!(code, "22023");
}

#[test]
fn a_changed_template_is_used_at_once_and_rows_keep_their_text() {
    let mut setup = setup();
    let context = format!(
        "jsonb_build_object('order_id', 1, 'name', 'Bob', 'items', '{ITEMS}'::jsonb, 'shipped_on', '2026-12-02', 'company', 'Acme')"
    );
    let send = |client: &mut postgres::Client| -> i64 {
        client
            .query_one(
                &format!(
                    "SELECT email_accounts.send(\"to\" => ARRAY['bob@example.test'], template => 'order_shipped',
                                                context => {context}, tenant => 'acme')"
                ),
                &[],
            )
            .unwrap()
            .get(0)
    };
    let first = send(&mut setup.client);
    setup
        .client
        .batch_execute(
            "UPDATE email_accounts.template SET subject = 'Shipped: order {{ order_id }}' WHERE name = 'order_shipped' AND language IS NULL;
             UPDATE email_accounts.template SET body_text = E'\\n-- {{ company }}, since 1900' WHERE name = 'footer';",
        )
        .unwrap();
    let second = send(&mut setup.client);
    let texts: Vec<(String, String)> = setup
        .client
        .query(
            "SELECT subject, body_text FROM email_accounts.outbox WHERE outbox_id = ANY ($1) ORDER BY outbox_id",
            &[&vec![first, second]],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(texts[0].0, "Order 1 has shipped");
    assert!(texts[0].1.ends_with("-- Acme"), "{}", texts[0].1);
    assert_eq!(texts[1].0, "Shipped: order 1", "the changed template, in the same session");
    assert!(texts[1].1.ends_with("-- Acme, since 1900"), "the changed include: {}", texts[1].1);

    // Changed twice in one transaction (xmin stays the same): the second change is used too.
    let subjects: Vec<String> = {
        let mut transaction = setup.client.transaction().unwrap();
        let mut subjects = Vec::new();
        for subject in ["First {{ order_id }}", "Second {{ order_id }}"] {
            transaction
                .execute(
                    "UPDATE email_accounts.template SET subject = $1 WHERE name = 'order_shipped' AND language IS NULL",
                    &[&subject],
                )
                .unwrap();
            let rendered: String = transaction
                .query_one(
                    &format!(
                        "SELECT subject FROM email_accounts.render_template('order_shipped', {context}, NULL, 'acme')"
                    ),
                    &[],
                )
                .unwrap()
                .get(0);
            subjects.push(rendered);
        }
        transaction.rollback().unwrap();
        subjects
    };
    assert_eq!(subjects, vec!["First 1", "Second 1"]);

    // Explicit parts override the template's; its attachments come first.
    setup
        .client
        .batch_execute(
            "UPDATE email_accounts.template SET attachments = ARRAY[ROW('terms.txt', 'text/plain', 'Terms'::bytea, NULL)::email_accounts.attachment]
              WHERE name = 'order_shipped' AND language IS NULL",
        )
        .unwrap();
    let third: i64 = setup
        .client
        .query_one(
            &format!(
                "SELECT email_accounts.send(\"to\" => ARRAY['bob@example.test'], template => 'order_shipped', context => {context},
                                            subject => 'My own subject', tenant => 'acme',
                                            attachments => ARRAY[ROW('invoice.txt', 'text/plain', 'Invoice'::bytea, NULL)::email_accounts.attachment])"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    let row = setup
        .client
        .query_one(
            "SELECT subject, (SELECT string_agg(filename, ',' ORDER BY position) FROM email_accounts.outbox_attachment
                               WHERE outbox_id = $1)
               FROM email_accounts.outbox WHERE outbox_id = $1",
            &[&third],
        )
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("My own subject".into(), "terms.txt,invoice.txt".into())
    );
}

#[test]
fn the_automatic_reply_is_made_from_a_template_and_roles_keep_to_their_tenant() {
    let mut setup = setup();
    setup
        .client
        .batch_execute(
            "INSERT INTO email_accounts.template (tenant, name, subject, body_text)
             VALUES ('acme', 'away', '{{ reply_subject }} (we are away)', 'Dear {{ from }}, we read mail about \"{{ subject }}\" on Monday.');
             UPDATE email_accounts.account SET enable_auto_reply = true, auto_reply_template = 'away', sync_option = 'all'
              WHERE name = 'Support';",
        )
        .unwrap();
    // Naming a template the tenant does not have (or has only in some
    // languages: the reply uses the row without language) is refused, naming the field.
    setup
        .client
        .batch_execute(
            "INSERT INTO email_accounts.template (tenant, name, language, body_text) VALUES ('acme', 'german_only', 'de', 'Hallo')",
        )
        .unwrap();
    let error = setup
        .client
        .execute("UPDATE email_accounts.account SET auto_reply_template = 'german_only' WHERE name = 'Support'", &[])
        .unwrap_err();
    assert_eq!(error.as_db_error().unwrap().column(), Some("auto_reply_template"));
    let error = setup
        .client
        .execute("UPDATE email_accounts.account SET auto_reply_template = 'secret' WHERE name = 'Support'", &[])
        .unwrap_err();
    assert_eq!(error.as_db_error().unwrap().column(), Some("auto_reply_template"));
    // The account's first sync (which answers no mail already there) is over before the mail arrives.
    setup.client.execute("SELECT * FROM email_accounts.sync_now('Support', 'acme')", &[]).unwrap();
    setup.servers.append(
        "support@example.test",
        "INBOX",
        &[(
            b"From: Ann <ann@example.test>\r\nTo: support@example.test\r\nSubject: Broken kettle\r\nMessage-ID: <kettle@example.test>\r\n\r\nHelp\r\n"
                .to_vec(),
            false,
        )],
    );
    let reply = wait_until("the automatic reply to be queued", Duration::from_secs(60), || {
        setup.client.execute("SELECT * FROM email_accounts.sync_now('Support', 'acme')", &[]).unwrap();
        let row = setup
            .client
            .query_opt(
                "SELECT subject, body_text, template FROM email_accounts.outbox WHERE headers ->> 'Auto-Submitted' = 'auto-replied'",
                &[],
            )
            .unwrap()?;
        Some((row.get::<_, String>(0), row.get::<_, String>(1), row.get::<_, Option<String>>(2)))
    });
    assert_eq!(reply.0, "Auto: Broken kettle (we are away)");
    assert!(reply.1.contains("Dear Ann <ann@example.test>") && reply.1.contains("\"Broken kettle\""), "{}", reply.1);
    assert_eq!(reply.2.as_deref(), Some("away"));

    // A sender of acme reads acme's and shared templates, changes none; an
    // admin of acme changes acme's, never the shared ones or globex's.
    setup
        .client
        .batch_execute(
            "CREATE ROLE acme_sender LOGIN IN ROLE email_accounts_sender;
             CREATE ROLE acme_admin LOGIN IN ROLE email_accounts_admin;
             INSERT INTO email_accounts.tenant_member (role_name, tenant) VALUES ('acme_sender', 'acme'), ('acme_admin', 'acme');",
        )
        .unwrap();
    setup.client.batch_execute("CREATE ROLE nobodys IN ROLE email_accounts_sender; SET ROLE nobodys").unwrap();
    let seen: i64 = setup.client.query_one("SELECT count(*) FROM email_accounts.template", &[]).unwrap().get(0);
    assert_eq!(seen, 0, "a role bound to no tenant sees no template, shared ones neither");
    setup.client.batch_execute("RESET ROLE; SET ROLE acme_sender").unwrap();
    let visible: Vec<String> = setup
        .client
        .query("SELECT DISTINCT coalesce(tenant, 'shared') FROM email_accounts.template ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(visible, vec!["acme", "shared"]);
    let (code, _) =
        refused(&mut setup.client, "UPDATE email_accounts.template SET description = 'x' WHERE name = 'away'");
    assert_eq!(code, "42501");
    setup.client.batch_execute("RESET ROLE; SET ROLE acme_admin").unwrap();
    setup
        .client
        .batch_execute("UPDATE email_accounts.template SET description = 'holidays' WHERE name = 'away'")
        .unwrap();
    let changed =
        setup.client.execute("UPDATE email_accounts.template SET description = 'x' WHERE tenant IS NULL", &[]).unwrap();
    assert_eq!(changed, 0, "shared templates are not the admin's to change");
    let (code, _) = refused(
        &mut setup.client,
        "INSERT INTO email_accounts.template (tenant, name, body_text) VALUES ('globex', 'planted', 'x')",
    );
    assert_eq!(code, "42501");
    setup.client.batch_execute("RESET ROLE").unwrap();
}
