//! The attack suite: the roles a real deployment has — a tenant's
//! application role, a tenant admin, another tenant, a tenant without a
//! mailbox, a non-superuser database owner, an anonymous web caller, and
//! strangers sending mail — each trying what issue 13 found, and the obvious
//! variants. Every attack must fail, and its errors must say nothing of
//! another tenant. Real PostgreSQL, Dovecot and Postfix (see harness).
// Run by `make test-integration`; `cargo pgrx test` (feature pg_test) runs only the #[pg_test]s.
#![cfg(not(feature = "pg_test"))]

mod harness;

use harness::{failure, wait_until, Behaviour, MailServers, Postgres, SmtpResponder};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

struct Deployment {
    servers: MailServers,
    cluster: Postgres,
    admin: postgres::Client,
}

/// Three tenants (acme and globex with accounts, initech without), a global
/// default outgoing account, and login roles for each part a deployment has.
fn deployment() -> Deployment {
    let servers = MailServers::start();
    let cluster = Postgres::start(&["email_accounts.fallback_poll_interval = '1h'", "email_accounts.imap_idle = off"]);
    let mut admin = cluster.connect("postgres");
    admin.batch_execute("CREATE EXTENSION email_accounts").unwrap();
    servers.add_example_domain(&mut admin);
    admin
        .batch_execute(
            "CREATE ROLE acme_app LOGIN IN ROLE email_accounts_sender;
             CREATE ROLE acme_admin LOGIN IN ROLE email_accounts_admin;
             CREATE ROLE acme_owner LOGIN IN ROLE email_accounts_sender;
             CREATE ROLE globex_app LOGIN IN ROLE email_accounts_sender;
             CREATE ROLE initech_app LOGIN IN ROLE email_accounts_sender;
             CREATE ROLE web LOGIN;
             GRANT USAGE ON SCHEMA email_accounts TO web;
             INSERT INTO email_accounts.tenant_member VALUES
                 ('acme_app', 'acme'), ('acme_admin', 'acme'), ('acme_owner', 'acme'),
                 ('globex_app', 'globex'), ('initech_app', 'initech');
             INSERT INTO email_accounts.account (name, tenant, address, owner_role, enable_outgoing, enable_incoming,
                                                 default_outgoing, poll_interval, awaiting_password)
             VALUES ('Acme', 'acme', 'alice@example.test', 'acme_owner', true, true, true, '1 hour', true),
                    ('Globex', 'globex', 'bob@example.test', 'postgres', true, true, true, '1 hour', true),
                    ('System', NULL, 'support@example.test', 'postgres', true, false, true, '1 hour', true);",
        )
        .unwrap();
    for (name, address) in
        [("Acme", "alice@example.test"), ("Globex", "bob@example.test"), ("System", "support@example.test")]
    {
        let password = servers.user(address).password.clone();
        admin.execute("SELECT email_accounts.set_password($1, $2)", &[&name, &password]).unwrap();
    }
    Deployment { servers, cluster, admin }
}

impl Deployment {
    fn connect_as(&self, role: &str) -> postgres::Client {
        self.cluster.connect_as("postgres", role)
    }

    /// A connection as `role` that keeps the NOTICEs the server sends it.
    fn connect_keeping_notices(&self, role: &str) -> (postgres::Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = notices.clone();
        let mut config: postgres::Config = self.cluster.connection_string_as("postgres", role).parse().unwrap();
        config.notice_callback(move |notice| sink.lock().unwrap().push(notice.message().to_owned()));
        (config.connect(postgres::NoTls).unwrap(), notices)
    }

    fn value<T: for<'a> postgres::types::FromSql<'a>>(&mut self, query: &str) -> T {
        self.admin.query_one(query, &[]).unwrap().get(0)
    }

    fn wait_for_status(&mut self, outbox_id: i64, wanted: &str) {
        wait_until(&format!("outbox row {outbox_id} to be {wanted}"), LIMIT, || {
            let status: String = self
                .admin
                .query_one("SELECT status FROM email_accounts.outbox WHERE outbox_id = $1", &[&outbox_id])
                .unwrap()
                .get(0);
            (status == wanted).then_some(())
        });
    }
}

/// Asserts that `statement` fails with `sqlstate` and says nothing of globex.
fn refused(client: &mut postgres::Client, statement: &str, sqlstate: &str) -> String {
    let (code, message) = failure(client, statement);
    assert_eq!(code, sqlstate, "{statement} → {message}");
    assert!(!message.to_lowercase().contains("bob@"), "{statement} leaks: {message}");
    message
}

fn count(client: &mut postgres::Client, query: &str) -> i64 {
    client.query_one(query, &[]).unwrap().get(0)
}

/// Every row of every table and view of the extension that `client` can read, as text.
fn everything_readable(client: &mut postgres::Client) -> String {
    let relations: Vec<String> = client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'email_accounts' AND c.relkind IN ('r', 'v') ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(relations.len() >= 14, "{relations:?}");
    let mut seen = String::new();
    for relation in relations {
        let query = format!("SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM {relation} t");
        match client.query_one(&query, &[]) {
            Ok(row) => seen.push_str(&row.get::<_, String>(0)),
            Err(error) => {
                let code = error.as_db_error().map(|db| db.code().code().to_owned()).unwrap_or_default();
                assert_eq!(code, "42501", "{relation}: {error}");
            }
        }
    }
    seen
}

#[test]
fn tenant_roles_stay_in_their_tenant_whatever_role_they_set() {
    let mut deployment = deployment();
    let globex_queued: i64 = deployment.value(
        "SELECT email_accounts.send(\"to\" => '{carol@example.test}', subject => 'globex secret', account => 'Globex')",
    );
    let globex_id: i64 = deployment.value("SELECT account_id FROM email_accounts.account WHERE name = 'Globex'");
    deployment.wait_for_status(globex_queued, "sent");
    deployment.servers.append(
        "bob@example.test",
        "INBOX",
        &[(
            b"From: carol@example.test\r\nSubject: globex inbox\r\nMessage-ID: <g1@example.test>\r\n\r\nfor globex\r\n"
                .to_vec(),
            false,
        )],
    );
    deployment.admin.batch_execute("SELECT * FROM email_accounts.sync_now('Globex')").unwrap();
    let globex_message: i64 = deployment.value("SELECT max(message_id) FROM email_accounts.message");

    for attacker in ["acme_app", "acme_admin", "acme_owner"] {
        let mut client = deployment.connect_as(attacker);
        let roles: Vec<String> = client
            .query("SELECT rolname::text FROM pg_catalog.pg_roles WHERE pg_catalog.pg_has_role(session_user, oid, 'MEMBER') ORDER BY 1", &[])
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        for role in &roles {
            client.batch_execute(&format!("SET ROLE {role}")).unwrap();
            let seen = everything_readable(&mut client).to_lowercase();
            assert!(!seen.contains("globex") && !seen.contains("bob@"), "{attacker} as {role} sees globex:\n{seen}");
            if role.starts_with("email_accounts_") {
                assert_eq!(count(&mut client, "SELECT count(*) FROM email_accounts.account"), 0, "{role} sees nothing");
                // Through the group role, not even its own tenant's account.
                refused(
                    &mut client,
                    "SELECT email_accounts.send(\"to\" => '{a@example.test}', account => 'Acme')",
                    "23503",
                );
            }
            let unknown =
                failure(&mut client, "SELECT email_accounts.send(\"to\" => '{a@example.test}', account => 'Nobody')");
            let other =
                failure(&mut client, "SELECT email_accounts.send(\"to\" => '{a@example.test}', account => 'Globex')");
            assert_eq!(unknown.0, other.0, "another tenant's account looks like no account");
            for function in ["set_password('Globex', 'x')", "test_account('Globex')"] {
                refused(&mut client, &format!("SELECT email_accounts.{function}"), "42704");
            }
            refused(&mut client, "SELECT * FROM email_accounts.sync_now('Globex')", "42704");
            client.batch_execute("RESET ROLE").unwrap();
        }
    }

    // The tenant admin: cannot re-point its own mail at another tenant's
    // account, change whose a row is, or reach another tenant's rows.
    let mut acme_admin = deployment.connect_as("acme_admin");
    let own: i64 = acme_admin
        .query_one(
            "SELECT email_accounts.send(\"to\" => '{carol@example.test}', send_after => now() + interval '1 hour')",
            &[],
        )
        .unwrap()
        .get(0);
    refused(
        &mut acme_admin,
        &format!("UPDATE email_accounts.outbox SET account_id = {globex_id} WHERE outbox_id = {own}"),
        "23514",
    );
    refused(
        &mut acme_admin,
        &format!("UPDATE email_accounts.outbox SET tenant = 'globex' WHERE outbox_id = {own}"),
        "42501",
    );
    refused(
        &mut acme_admin,
        &format!("UPDATE email_accounts.outbox SET claim_token = gen_random_uuid() WHERE outbox_id = {own}"),
        "42501",
    );
    // Only the sender makes a row sending or sent (a fake in-flight row would
    // eat the account's rate limit forever).
    refused(
        &mut acme_admin,
        &format!("UPDATE email_accounts.outbox SET status = 'sending' WHERE outbox_id = {own}"),
        "42501",
    );
    refused(
        &mut acme_admin,
        &format!("UPDATE email_accounts.outbox SET lease_until = now() WHERE outbox_id = {own}"),
        "42501",
    );
    // Mail that went out keeps the account it went through (the rate limits
    // count it there): not re-pointed at the system's account, whose limits
    // every tenant shares.
    let sent: i64 = acme_admin
        .query_one(
            "SELECT email_accounts.send(\"to\" => '{carol@example.test}', send_after => now() + interval '1 hour')",
            &[],
        )
        .unwrap()
        .get(0);
    deployment
        .admin
        .batch_execute(&format!(
            "UPDATE email_accounts.outbox SET status = 'sent', sent_at = now() WHERE outbox_id = {sent}"
        ))
        .unwrap();
    let message = refused(
        &mut acme_admin,
        &format!(
            "UPDATE email_accounts.outbox SET account_id = (SELECT account_id FROM email_accounts.global_default_outgoing())
              WHERE outbox_id = {sent}"
        ),
        "42501",
    );
    assert!(message.contains("account_id") && message.contains("keeps the account it went through"), "{message}");
    // Nor claims one, nor lets one go.
    refused(
        &mut acme_admin,
        &format!(
            "INSERT INTO email_accounts.outbox_claim
                    (outbox_id, account_id, claim_token, lease_until, sender_process_id, sender_started_at, attempt)
             SELECT outbox_id, account_id, gen_random_uuid(), now() + interval '1 day', 0, now(), 1
               FROM email_accounts.outbox WHERE outbox_id = {own}"
        ),
        "42501",
    );
    refused(&mut acme_admin, "DELETE FROM email_accounts.outbox_claim", "42501");
    // Re-pointing its own mail at the system's account does not let it send as anyone.
    acme_admin
        .batch_execute(&format!(
            "SELECT email_accounts.cancel({own});
             UPDATE email_accounts.outbox SET account_id = (SELECT account_id FROM email_accounts.global_default_outgoing())
              WHERE outbox_id = {own}"
        ))
        .unwrap();
    let spoofed = acme_admin
        .query_one(
            "SELECT email_accounts.send(\"to\" => '{carol@example.test}', sender => 'ceo@bank.example',
                                        send_after => now() + interval '1 hour')",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0);
    acme_admin
        .batch_execute(&format!(
            "UPDATE email_accounts.outbox SET account_id = (SELECT account_id FROM email_accounts.global_default_outgoing())
              WHERE outbox_id = {spoofed}"
        ))
        .unwrap();
    let sender: Option<String> = acme_admin
        .query_one("SELECT sender FROM email_accounts.outbox WHERE outbox_id = $1", &[&spoofed])
        .unwrap()
        .get(0);
    assert_eq!(sender, None, "From is the system account's own address");
    let reply_to: Vec<String> = acme_admin
        .query_one("SELECT reply_to FROM email_accounts.outbox WHERE outbox_id = $1", &[&spoofed])
        .unwrap()
        .get(0);
    assert_eq!(reply_to, ["ceo@bank.example"], "the sender it asked for gets the replies");
    let moved = acme_admin
        .execute("UPDATE email_accounts.outbox SET status = 'queued' WHERE outbox_id = $1", &[&globex_queued])
        .unwrap();
    assert_eq!(moved, 0);
    let changed = acme_admin
        .execute("UPDATE email_accounts.account SET signature = 'pwned' WHERE account_id = $1", &[&globex_id])
        .unwrap();
    assert_eq!(changed, 0);
    refused(&mut acme_admin, "UPDATE email_accounts.domain SET smtp_host = 'evil.example' WHERE true; INSERT INTO email_accounts.domain (domain_name) VALUES ('evil.example')", "42501");
    refused(
        &mut acme_admin,
        &format!("INSERT INTO email_accounts.outbox_attachment (outbox_id, position, filename, content) VALUES ({globex_queued}, 9, 'x', '\\x00')"),
        "42501",
    );
    refused(
        &mut acme_admin,
        &format!("INSERT INTO email_accounts.suppression (tenant, address, outbox_id) VALUES ('acme', 'x@example.test', {globex_queued})"),
        "23503",
    );
    refused(&mut acme_admin, &format!("SELECT email_accounts.reparse({globex_message})"), "P0002");
    // Names and addresses are unique per tenant: nothing to probe or reserve.
    acme_admin
        .batch_execute(
            "INSERT INTO email_accounts.account (name, tenant, address, owner_role) VALUES ('Globex', 'acme', 'bob@example.test', 'acme_admin')",
        )
        .unwrap();
    // A group role or another tenant's role cannot own an account, and
    // routing can only be changed by members of the owner role.
    refused(
        &mut acme_admin,
        "UPDATE email_accounts.account SET owner_role = 'email_accounts_admin' WHERE name = 'Globex'",
        "23514",
    );
    refused(
        &mut acme_admin,
        "UPDATE email_accounts.account SET append_to_columns = '{\"x\": \"subject\"}' WHERE name = 'Acme'",
        "42501",
    );
    refused(
        &mut acme_admin,
        "UPDATE email_accounts.account SET auto_reply_interval = '0' WHERE name = 'Acme'",
        "23514",
    );

    // reparse() works for the admin of the message's tenant.
    deployment.servers.append(
        "alice@example.test",
        "INBOX",
        &[(
            b"From: carol@example.test\r\nSubject: for acme\r\nMessage-ID: <a1@example.test>\r\n\r\nhello\r\n".to_vec(),
            false,
        )],
    );
    acme_admin.batch_execute("SELECT * FROM email_accounts.sync_now('Acme')").unwrap();
    let acme_message: i64 =
        acme_admin.query_one("SELECT max(message_id) FROM email_accounts.message", &[]).unwrap().get(0);
    let reparsed: bool = acme_admin.query_one("SELECT email_accounts.reparse($1)", &[&acme_message]).unwrap().get(0);
    assert!(reparsed);

    // A tenant without a mailbox falls back to the system's default outbox;
    // the row stays its own.
    let mut initech = deployment.connect_as("initech_app");
    let fallback: i64 = initech
        .query_one(
            "SELECT email_accounts.send(\"to\" => '{carol@example.test}', subject => 'initech via the system',
                                        sender => 'CEO <ceo@initech.example>')",
            &[],
        )
        .unwrap()
        .get(0);
    let (tenant, account): (Option<String>, Option<String>) = {
        let row = initech
            .query_one("SELECT tenant, account FROM email_accounts.outbox WHERE outbox_id = $1", &[&fallback])
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((tenant.as_deref(), account.as_deref()), (Some("initech"), Some("System")));
    // Through the system's account a tenant does not send as anyone it likes:
    // From is the system's address, the sender asked for gets the replies.
    let (sender, reply_to): (Option<String>, Vec<String>) = {
        let row = initech
            .query_one("SELECT sender, reply_to FROM email_accounts.outbox WHERE outbox_id = $1", &[&fallback])
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((sender, reply_to), (None, vec!["CEO <ceo@initech.example>".to_owned()]));
    assert_eq!(
        count(&mut acme_admin, &format!("SELECT count(*) FROM email_accounts.outbox WHERE outbox_id = {fallback}")),
        0
    );
    deployment.wait_for_status(fallback, "sent");
    assert_eq!(count(&mut initech, "SELECT count(*) FROM email_accounts.outbox WHERE status = 'sent'"), 1);

    // Other sessions' statements (the workers', the other tenant's) are not
    // shown to a tenant role, and the server log holds no password.
    let foreign_queries = count(
        &mut acme_admin,
        "SELECT count(*) FROM pg_catalog.pg_stat_activity
          WHERE usename IS DISTINCT FROM current_user AND query IS NOT NULL AND query NOT IN ('', '<insufficient privilege>')",
    );
    assert_eq!(foreign_queries, 0);
    let bob_password = deployment.servers.user("bob@example.test").password.clone();
    assert!(!deployment.cluster.server_log().contains(&bob_password));

    // What runs as the extension owner is a short, known list, each with a
    // pinned search_path: trigger functions (not callable directly), the
    // token functions, and the global default's identity.
    let definers: Vec<(String, Option<Vec<String>>)> = deployment
        .admin
        .query(
            "SELECT proname::text, proconfig FROM pg_catalog.pg_proc
              WHERE pronamespace = 'email_accounts'::regnamespace AND prosecdef ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let names: Vec<&str> = definers.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "account_keeps_its_tenant",
            "account_keeps_private_mail_private",
            "account_servers_changed",
            "forget_deleted_replies",
            "global_default_outgoing",
            "inherited_settings_changed",
            "mark_opened",
            "outbox_after_insert",
            "outbox_cancel_untaken_claim",
            "system_sends_as_itself",
            "unsubscribe"
        ]
    );
    for (name, config) in &definers {
        assert_eq!(config.as_deref(), Some(&["search_path=pg_catalog, pg_temp".to_owned()][..]), "{name}");
    }
    // Those that are trigger functions write the rows NEW and OLD name: no
    // role may attach one to a table of its own, where it makes up both.
    let attachable: Vec<String> = deployment
        .admin
        .query(
            "SELECT proname::text FROM pg_catalog.pg_proc
              WHERE pronamespace = 'email_accounts'::regnamespace AND prosecdef
                AND prorettype = 'pg_catalog.trigger'::regtype
                AND has_function_privilege('acme_admin', oid, 'EXECUTE')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(attachable, Vec::<String>::new());
    refused(
        &mut acme_admin,
        "CREATE TEMPORARY TABLE made_up (outbox_id bigint, attempts integer);
         CREATE TRIGGER made_up AFTER UPDATE ON made_up
             FOR EACH ROW EXECUTE FUNCTION email_accounts.outbox_cancel_untaken_claim()",
        "42501",
    );

    // Every function whose SQL is parsed when it runs (PL/pgSQL, SQL with a
    // string body) or that runs SQL from Rust pins its search_path: a caller's
    // search_path (or the database's) never picks what it calls. The C
    // functions left run no SQL.
    let unpinned: Vec<String> = deployment
        .admin
        .query(
            "SELECT function.proname::text FROM pg_catalog.pg_proc AS function
               JOIN pg_catalog.pg_language AS language ON language.oid = function.prolang
              WHERE function.pronamespace = 'email_accounts'::regnamespace
                AND NOT (language.lanname = 'sql' AND function.prosqlbody IS NOT NULL)
                AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (function.proconfig), false)
              ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        unpinned,
        [
            "current_user_is_superuser",
            "flush",
            "header_problem",
            "is_valid_address",
            "is_valid_certificate",
            "is_valid_mailbox",
            "mailbox_address",
            "random_bytes",
            "restoring",
            "settings_change_at_commit",
            "wake_sender_at_commit",
            "wake_workers_at_commit",
            "worker_status"
        ]
    );

    // The anonymous web caller: token functions only, nothing else.
    let mut web = deployment.connect_as("web");
    refused(&mut web, "SELECT email_accounts.unsubscribe('not-a-token')", "22023");
    refused(&mut web, "SELECT * FROM email_accounts.global_default_outgoing()", "42501");
    refused(&mut web, "SELECT * FROM email_accounts.account", "42501");
    refused(&mut web, "SELECT * FROM email_accounts.outbox", "42501");
    let seen = everything_readable(&mut web);
    assert!(seen.lines().all(|line| !line.contains('@')), "web reads addresses:\n{seen}");
}

/// Functions and operators a non-superuser database owner can put in
/// `public` to catch unqualified calls of the workers' statements.
const SHADOWS: &str = "
CREATE TABLE public.hijacked (called text, as_user text);
GRANT INSERT ON public.hijacked TO PUBLIC;
CREATE FUNCTION public.format(text, timestamptz) RETURNS text LANGUAGE sql AS
  $$ INSERT INTO public.hijacked VALUES ('format', current_user); SELECT pg_catalog.format($1, $2) $$;
CREATE FUNCTION public.format(text, text) RETURNS text LANGUAGE sql AS
  $$ INSERT INTO public.hijacked VALUES ('format', current_user); SELECT pg_catalog.format($1, $2) $$;
CREATE FUNCTION public.concat_ws(text, text, text) RETURNS text LANGUAGE sql AS
  $$ INSERT INTO public.hijacked VALUES ('concat_ws', current_user); SELECT pg_catalog.concat_ws($1, $2, $3) $$;
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE sql AS
  $$ INSERT INTO public.hijacked VALUES ('now', current_user); SELECT pg_catalog.now() $$;
CREATE FUNCTION public.md5(text) RETURNS text LANGUAGE sql AS
  $$ INSERT INTO public.hijacked VALUES ('md5', current_user); SELECT pg_catalog.md5($1) $$;
CREATE FUNCTION public.lower(text) RETURNS text LANGUAGE sql AS
  $$ INSERT INTO public.hijacked VALUES ('lower', current_user); SELECT pg_catalog.lower($1) $$;
CREATE FUNCTION public.quote_ident(text) RETURNS text LANGUAGE sql AS
  $$ INSERT INTO public.hijacked VALUES ('quote_ident', current_user); SELECT pg_catalog.quote_ident($1) $$;
CREATE FUNCTION public.to_regrole(text) RETURNS regrole LANGUAGE sql AS
  $$ INSERT INTO public.hijacked VALUES ('to_regrole', current_user); SELECT pg_catalog.to_regrole($1) $$;
CREATE FUNCTION public.gen_random_uuid() RETURNS uuid LANGUAGE sql AS
  $$ INSERT INTO public.hijacked VALUES ('gen_random_uuid', current_user); SELECT pg_catalog.gen_random_uuid() $$;
CREATE FUNCTION public.text_concat(text, text) RETURNS text LANGUAGE sql AS
  $$ INSERT INTO public.hijacked VALUES ('||', current_user); SELECT pg_catalog.textcat($1, $2) $$;
CREATE OPERATOR public.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = public.text_concat);
CREATE FUNCTION public.text_equal(text, text) RETURNS boolean LANGUAGE sql AS
  $$ INSERT INTO public.hijacked VALUES ('= text', current_user); SELECT pg_catalog.texteq($1, $2) $$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.text_equal);
CREATE FUNCTION public.bigint_equal(bigint, bigint) RETURNS boolean LANGUAGE sql AS
  $$ INSERT INTO public.hijacked VALUES ('= bigint', current_user); SELECT pg_catalog.int8eq($1, $2) $$;
CREATE OPERATOR public.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = public.bigint_equal);
CREATE FUNCTION public.time_before(timestamptz, timestamptz) RETURNS boolean LANGUAGE sql AS
  $$ INSERT INTO public.hijacked VALUES ('<= timestamptz', current_user); SELECT pg_catalog.timestamptz_le($1, $2) $$;
CREATE OPERATOR public.<= (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = public.time_before);
CREATE FUNCTION public.time_plus(timestamptz, interval) RETURNS timestamptz LANGUAGE sql AS
  $$ INSERT INTO public.hijacked VALUES ('+ interval', current_user); SELECT pg_catalog.timestamptz_pl_interval($1, $2) $$;
CREATE OPERATOR public.+ (LEFTARG = timestamptz, RIGHTARG = interval, FUNCTION = public.time_plus);
ALTER DATABASE postgres SET search_path = public, pg_catalog;
ALTER DATABASE postgres SET default_transaction_read_only = on;
-- What our PL/pgSQL means and when it fails. (PL/pgSQL loaded first: until
-- then its settings are placeholders, which only a superuser may set.)
DO $$ BEGIN END $$;
ALTER DATABASE postgres SET plpgsql.extra_errors = 'all';
-- Off, a superuser's inserts would look like a restore and skip the triggers' checks.
ALTER DATABASE postgres SET row_security = off;
";

#[test]
fn nobody_borrows_the_workers_superuser() {
    let mut deployment = deployment();
    // A database owner who is not a superuser (on PostgreSQL 15 it may
    // create in public) shadows what the workers call and points the
    // database's search_path at it.
    let globex_id: i64 = deployment.value("SELECT account_id FROM email_accounts.account WHERE name = 'Globex'");
    deployment
        .admin
        .batch_execute(&format!(
            "CREATE ROLE dbowner LOGIN;
             ALTER DATABASE postgres OWNER TO dbowner;
             -- The owner role also manages its tenant: its code may update outbox rows.
             GRANT email_accounts_admin TO acme_owner;
             CREATE TABLE public.attempts (what text);
             GRANT INSERT ON public.attempts TO acme_owner;
             -- The account's routing code, as its owner role: it tries to
             -- leave its nesting level, switch user, and reach another
             -- tenant's password.
             CREATE FUNCTION public.acme_on_receive(id bigint) RETURNS void LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM pg_catalog.set_config('search_path', 'public, pg_catalog', false);
                 -- (pg_catalog.concat: its own shadowed || would count as a hijack.)
                 INSERT INTO public.attempts VALUES (pg_catalog.concat('ran as ', current_user));
                 BEGIN
                     PERFORM email_accounts.set_password('Globex', 'stolen');
                 EXCEPTION WHEN OTHERS THEN INSERT INTO public.attempts VALUES (pg_catalog.concat('set_password Globex: ', SQLERRM));
                 END;
                 BEGIN
                     PERFORM email_accounts.test_account('Globex');
                 EXCEPTION WHEN OTHERS THEN INSERT INTO public.attempts VALUES (pg_catalog.concat('test_account Globex: ', SQLERRM));
                 END;
                 BEGIN
                     PERFORM * FROM email_accounts.sync_now('Acme');
                 EXCEPTION WHEN OTHERS THEN INSERT INTO public.attempts VALUES (pg_catalog.concat('sync_now: ', SQLERRM));
                 END;
                 BEGIN
                     RESET ROLE;
                 EXCEPTION WHEN OTHERS THEN INSERT INTO public.attempts VALUES (pg_catalog.concat('reset role: ', SQLERRM));
                 END;
                 BEGIN
                     PERFORM email_accounts.rotate_encryption_key();
                 EXCEPTION WHEN OTHERS THEN INSERT INTO public.attempts VALUES (pg_catalog.concat('rotate: ', SQLERRM));
                 END;
                 -- The worker's session is a superuser's: the outbox checks must still see acme_owner.
                 BEGIN
                     UPDATE email_accounts.outbox SET account_id = {globex_id} WHERE tenant OPERATOR(pg_catalog.=) 'acme';
                     INSERT INTO public.attempts VALUES ('re-pointed acme mail at Globex');
                 EXCEPTION WHEN OTHERS THEN INSERT INTO public.attempts VALUES (pg_catalog.concat('re-point: ', SQLERRM));
                 END;
                 BEGIN
                     UPDATE email_accounts.outbox SET status = 'sent' WHERE tenant OPERATOR(pg_catalog.=) 'acme';
                     INSERT INTO public.attempts VALUES ('marked acme mail sent');
                 EXCEPTION WHEN OTHERS THEN INSERT INTO public.attempts VALUES (pg_catalog.concat('mark sent: ', SQLERRM));
                 END;
             END $$;
             GRANT EXECUTE ON FUNCTION public.acme_on_receive(bigint) TO acme_owner;"
        ))
        .unwrap();
    let mut dbowner = deployment.connect_as("dbowner");
    dbowner.batch_execute(SHADOWS).unwrap();
    drop(dbowner);
    let globex_secret: Vec<u8> =
        deployment.value("SELECT string_agg(ciphertext, '' ORDER BY side) FROM email_accounts.account_secret JOIN email_accounts.account USING (account_id) WHERE name = 'Globex'");
    deployment
        .admin
        .batch_execute(
            "UPDATE email_accounts.account SET on_receive_function = 'public.acme_on_receive(bigint)',
                    enable_auto_reply = true, auto_reply_message = 'Thanks' WHERE name = 'Acme'",
        )
        .unwrap();
    // Another tenant naming an account 'Acme' does not disturb Acme's auto replies.
    deployment
        .admin
        .batch_execute(
            "INSERT INTO email_accounts.account (name, tenant, address, owner_role) VALUES ('Acme', 'globex', 'acme@globex.example', 'postgres')",
        )
        .unwrap();
    // The workers reconnect and get the database's search_path.
    deployment.cluster.stop("fast");
    deployment.cluster.start_again();
    deployment.admin = deployment.cluster.connect_when_ready("postgres");
    deployment
        .admin
        .batch_execute("SET search_path = pg_catalog; SET default_transaction_read_only = off; SET row_security = on")
        .unwrap();
    assert_eq!(deployment.value::<String>("SELECT pg_catalog.current_setting('search_path')"), "pg_catalog");

    let sent: i64 = deployment.value(
        "SELECT email_accounts.send(\"to\" => '{carol@example.test}', subject => 'normal', account => 'Acme', tenant => 'acme')",
    );
    let expiring: i64 = deployment.value(
        "SELECT email_accounts.send(\"to\" => '{carol@example.test}', account => 'Acme', tenant => 'acme',
                                    send_after => pg_catalog.now() OPERATOR(pg_catalog.-) interval '2 hours',
                                    expires_at => pg_catalog.now() OPERATOR(pg_catalog.-) interval '1 hour')",
    );
    deployment.wait_for_status(sent, "sent");
    deployment.wait_for_status(expiring, "expired");
    deployment.servers.append(
        "alice@example.test",
        "INBOX",
        &[
            (b"From: carol@example.test\r\nSubject: one\r\nMessage-ID: <s1@example.test>\r\n\r\n1\r\n".to_vec(), false),
            (b"From: dave@other.test\r\nSubject: two\r\nMessage-ID: <s2@example.test>\r\n\r\n2\r\n".to_vec(), false),
            // A stranger aiming our auto reply at a third party.
            (b"Return-Path: <victim@elsewhere.example>\r\nFrom: carol@example.test\r\nSubject: three\r\nMessage-ID: <s3@example.test>\r\n\r\n3\r\n".to_vec(), false),
        ],
    );
    deployment.admin.batch_execute("SELECT * FROM email_accounts.sync_now('Acme', 'acme')").unwrap();
    // (The restarted receiver may have synced on its own first: count what is stored.)
    let synced: i64 = deployment.value("SELECT count(*) FROM email_accounts.message");
    assert_eq!(synced, 3);
    let replies: i64 =
        deployment.value("SELECT count(*) FROM email_accounts.message WHERE auto_reply_outbox_id IS NOT NULL");
    assert_eq!(replies, 2, "the worker carried on normally");
    let forged: String = deployment.value(
        "SELECT no_auto_reply_reason FROM email_accounts.message WHERE internet_message_id = '<s3@example.test>'",
    );
    assert!(forged.contains("unrelated domains"), "{forged}");

    let hijacked: Vec<(String, String)> = deployment
        .admin
        .query("SELECT called, as_user FROM public.hijacked", &[])
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert!(hijacked.is_empty(), "shadowed functions ran: {hijacked:?}");

    let attempts: Vec<String> = deployment
        .admin
        .query("SELECT what FROM public.attempts ORDER BY what", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let text = attempts.join("\n");
    assert_eq!(attempts.iter().filter(|line| *line == "ran as acme_owner").count(), 3, "{text}");
    assert!(text.contains("set_password Globex: no account named \"Globex\""), "{text}");
    assert!(text.contains("test_account Globex: no account named \"Globex\""), "{text}");
    assert!(text.contains("sync_now: sync_now() cannot be called from a security-restricted operation"), "{text}");
    // (PostgreSQL names the user switch a "security-definer function" here.)
    assert!(text.contains("reset role: cannot set parameter \"role\" within security-"), "{text}");
    assert!(text.contains("rotate: permission denied"), "{text}");
    assert!(
        text.contains("re-point: account_id: account") && text.contains("is not an account of the row's tenant"),
        "{text}"
    );
    assert!(text.contains("mark sent: status: a row that is"), "{text}");
    assert!(!text.contains("re-pointed") && !text.contains("marked acme mail sent"), "{text}");
    let unchanged: Vec<u8> =
        deployment.value("SELECT string_agg(ciphertext, '' ORDER BY side) FROM email_accounts.account_secret JOIN email_accounts.account USING (account_id) WHERE name = 'Globex'");
    assert_eq!(unchanged, globex_secret, "Globex's password was not touched");
    let errors: i64 = deployment.value("SELECT count(*) FROM email_accounts.message WHERE routing_error IS NOT NULL");
    assert_eq!(errors, 0);
}

#[test]
fn a_password_goes_only_to_the_servers_it_was_set_for() {
    let mut deployment = deployment();
    let catcher = SmtpResponder::start(None, Behaviour::Accept, true);
    // The tenant admin (not in the account's owner role) points the account
    // at a server of its own.
    let mut acme_admin = deployment.connect_as("acme_admin");
    acme_admin
        .batch_execute(&format!(
            "UPDATE email_accounts.account SET smtp_host = '127.0.0.1', smtp_port = {}, smtp_security = 'none',
                    allow_plaintext_authentication = true, enable_incoming = false WHERE name = 'Acme'",
            catcher.port
        ))
        .unwrap();
    let awaiting: bool = deployment.value("SELECT awaiting_password FROM email_accounts.account WHERE name = 'Acme'");
    assert!(awaiting, "the account needs its password again");
    let report: serde_json::Value =
        acme_admin.query_one("SELECT email_accounts.test_account('Acme')", &[]).unwrap().get(0);
    assert_eq!(report["smtp"]["error"]["kind"], "auth", "{report}");
    // Clearing the flag does not help: the trigger sets it again...
    acme_admin
        .batch_execute("UPDATE email_accounts.account SET awaiting_password = false WHERE name = 'Acme'")
        .unwrap();
    let awaiting: bool = deployment.value("SELECT awaiting_password FROM email_accounts.account WHERE name = 'Acme'");
    assert!(awaiting);
    // ...and with the triggers bypassed (a superuser), the stored password
    // still refuses to go anywhere but the servers it was set for.
    deployment
        .admin
        .batch_execute(
            "SET session_replication_role = replica;
             UPDATE email_accounts.account SET awaiting_password = false WHERE name = 'Acme';
             RESET session_replication_role;",
        )
        .unwrap();
    refused(&mut acme_admin, "SELECT email_accounts.test_account('Acme')", "55000");
    let queued: i64 = acme_admin
        .query_one("SELECT email_accounts.send(\"to\" => '{carol@example.test}', account => 'Acme')", &[])
        .unwrap()
        .get(0);
    wait_until("the sender to refuse the account", LIMIT, || {
        let row = deployment
            .admin
            .query_one(
                "SELECT status, coalesce(last_error, '') FROM email_accounts.outbox WHERE outbox_id = $1",
                &[&queued],
            )
            .unwrap();
        let error: String = row.get(1);
        error.contains("changed since its password was set").then_some(())
    });
    assert!(!catcher.verbs().iter().any(|verb| verb == "AUTH"), "{:?}", catcher.verbs());

    // Changing the servers and setting the password in one transaction is
    // fine; whoever sets it is told where it will go.
    let password = deployment.servers.user("alice@example.test").password.clone();
    let (mut acme_admin, notices) = deployment.connect_keeping_notices("acme_admin");
    let mut transaction = acme_admin.transaction().unwrap();
    transaction
        .batch_execute("UPDATE email_accounts.account SET smtp_host = NULL, smtp_port = NULL, smtp_security = NULL WHERE name = 'Acme'")
        .unwrap();
    transaction.execute("SELECT email_accounts.set_password('Acme', $1)", &[&password]).unwrap();
    transaction.commit().unwrap();
    let ready: bool = deployment.value("SELECT ready_to_send FROM email_accounts.account_settings WHERE name = 'Acme'");
    assert!(ready);
    let told = notices.lock().unwrap().join("\n");
    let smtp = format!(
        "SMTP localhost:{} (starttls), IMAP localhost:{} (ssl)",
        deployment.servers.smtp, deployment.servers.imaps
    );
    assert!(told.contains(&format!("the password of account \"Acme\" is for {smtp}")), "{told}");
    deployment.admin.batch_execute(&format!("SELECT email_accounts.retry({queued})")).unwrap();
    deployment.wait_for_status(queued, "sent");

    // A domain change moves every account inheriting it: all need their password again.
    deployment
        .admin
        .batch_execute(&format!(
            "UPDATE email_accounts.domain SET smtp_port = {} WHERE domain_name = 'example.test'",
            catcher.port
        ))
        .unwrap();
    let waiting: i64 = deployment.value("SELECT count(*) FROM email_accounts.account WHERE awaiting_password");
    assert_eq!(waiting, 3);
    assert!(!catcher.verbs().iter().any(|verb| verb == "AUTH"));
}

#[test]
fn a_tenants_routing_code_can_neither_stall_nor_lock_the_receiver() {
    let servers = MailServers::start();
    let cluster = Postgres::start(&[
        "email_accounts.fallback_poll_interval = '1h'",
        "email_accounts.imap_idle = off",
        "email_accounts.routing_timeout = '1s'",
    ]);
    let mut admin = cluster.connect("postgres");
    admin.batch_execute("CREATE EXTENSION email_accounts").unwrap();
    servers.add_example_domain(&mut admin);
    admin
        .batch_execute(
            "CREATE ROLE acme_owner;
             INSERT INTO email_accounts.tenant_member VALUES ('acme_owner', 'acme');
             -- Takes a session lock (it would outlive its subtransaction) and never returns.
             CREATE FUNCTION public.stall(id bigint) RETURNS void LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM pg_catalog.pg_advisory_lock(4242);
                 PERFORM pg_catalog.pg_sleep(600);
             END $$;
             GRANT EXECUTE ON FUNCTION public.stall(bigint) TO acme_owner;
             INSERT INTO email_accounts.account (name, tenant, address, owner_role, enable_incoming, poll_interval,
                                                 on_receive_function, awaiting_password)
             VALUES ('Acme', 'acme', 'alice@example.test', 'acme_owner', true, '1 hour', 'public.stall(bigint)', true);",
        )
        .unwrap();
    let password = servers.user("alice@example.test").password.clone();
    admin.execute("SELECT email_accounts.set_password('Acme', $1)", &[&password]).unwrap();
    servers.append(
        "alice@example.test",
        "INBOX",
        &[
            (b"From: carol@example.test\r\nSubject: one\r\nMessage-ID: <t1@example.test>\r\n\r\n1\r\n".to_vec(), false),
            (b"From: carol@example.test\r\nSubject: two\r\nMessage-ID: <t2@example.test>\r\n\r\n2\r\n".to_vec(), false),
        ],
    );
    // (The receiver may already have synced on its own after set_password: count what is stored.)
    let stored = |admin: &mut postgres::Client| -> i64 {
        admin.batch_execute("SELECT * FROM email_accounts.sync_now('Acme')").unwrap();
        admin.query_one("SELECT count(*) FROM email_accounts.message", &[]).unwrap().get(0)
    };
    assert_eq!(stored(&mut admin), 2, "both stored");
    let errors: Vec<String> = admin
        .query("SELECT routing_error FROM email_accounts.message ORDER BY message_id", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(errors.len(), 2);
    for error in &errors {
        assert!(error.contains("canceling statement due to statement timeout"), "{error}");
    }
    let advisory: i64 =
        admin.query_one("SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory'", &[]).unwrap().get(0);
    assert_eq!(advisory, 0, "the code's session lock was released");
    // The receiver carries on.
    servers.append(
        "alice@example.test",
        "INBOX",
        &[(
            b"From: carol@example.test\r\nSubject: three\r\nMessage-ID: <t3@example.test>\r\n\r\n3\r\n".to_vec(),
            false,
        )],
    );
    assert_eq!(stored(&mut admin), 3);

    // Code that swallows its cancel (EXCEPTION WHEN query_canceled) and goes
    // on: the receiver stops itself, is restarted, and stores the message
    // without running that account's code for a while.
    admin
        .batch_execute(
            "CREATE FUNCTION public.stubborn(id bigint) RETURNS void LANGUAGE plpgsql AS $$
             BEGIN
                 LOOP
                     BEGIN
                         PERFORM pg_catalog.pg_sleep(600);
                     EXCEPTION WHEN query_canceled THEN NULL;
                     END;
                 END LOOP;
             END $$;
             GRANT EXECUTE ON FUNCTION public.stubborn(bigint) TO acme_owner;
             UPDATE email_accounts.account SET on_receive_function = 'public.stubborn(bigint)' WHERE name = 'Acme';",
        )
        .unwrap();
    servers.append(
        "alice@example.test",
        "INBOX",
        &[(b"From: carol@example.test\r\nSubject: four\r\nMessage-ID: <t4@example.test>\r\n\r\n4\r\n".to_vec(), false)],
    );
    assert_eq!(stored(&mut admin), 4);
    let error: String = admin
        .query_one(
            "SELECT routing_error FROM email_accounts.message WHERE internet_message_id = '<t4@example.test>'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(error.contains("not run: suspended until"), "{error}");
    assert!(cluster.server_log().contains("could not be cancelled; it is not run for 3600 s"));
}
