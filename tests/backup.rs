//! Backups: `pg_dump -Fc | pg_restore` and a plain `pg_dump | psql` restore
//! every row of every table of the extension, as it was (ids, statuses,
//! claims, counters, sequences), without `--disable-triggers` and without a
//! warning; a database restored into another cluster sends its queued mail
//! once, and its passwords open once the key file is copied; while a restore
//! runs the workers wait for it (README "Backups").
// Run by `make test-integration`; `cargo pgrx test` (feature pg_test) runs only the #[pg_test]s.
#![cfg(not(feature = "pg_test"))]

mod harness;

use harness::{
    add_account_without_login, wait_until, wait_until_held_as_copy, Behaviour, MailServers, Postgres, SmtpResponder,
};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const BIN: &str = "/usr/lib/postgresql/15/bin";
const LIMIT: Duration = Duration::from_secs(60);

/// Runs one of PostgreSQL's client programs against `cluster`; panics unless
/// it succeeds without a word on stderr (no warning a DBA would have to judge).
fn run_quietly(program: &str, cluster: &Postgres, arguments: &[&str]) -> Output {
    let port = cluster.port.to_string();
    let output = Command::new(Path::new(BIN).join(program))
        .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
        .args(arguments)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "{program} {arguments:?}: {}\n{stderr}",
        output.status
    );
    output
}

/// The extension's tables and sequences, by kind ('r' or 'S') and name.
fn extension_relations(client: &mut postgres::Client) -> Vec<(String, String)> {
    client
        .query(
            "SELECT class.relkind::text, class.relname::text FROM pg_catalog.pg_class AS class
               JOIN pg_catalog.pg_depend AS member ON member.classid = 'pg_catalog.pg_class'::regclass
                AND member.objid = class.oid AND member.deptype = 'e'
               JOIN pg_catalog.pg_extension AS extension ON extension.oid = member.refobjid
              WHERE extension.extname = 'email_accounts' AND class.relkind IN ('r', 'S')
              ORDER BY 1, 2",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// Every row of every table and the state of every sequence, as text.
fn contents(client: &mut postgres::Client) -> Vec<(String, Vec<String>)> {
    extension_relations(client)
        .into_iter()
        .map(|(kind, name)| {
            let query = if kind == "S" {
                format!("SELECT format('%s %s', last_value, is_called) FROM email_accounts.{name}")
            } else {
                format!("SELECT relation::text FROM email_accounts.{name} AS relation ORDER BY 1")
            };
            let rows = client.query(&query, &[]).unwrap().iter().map(|row| row.get(0)).collect();
            (name, rows)
        })
        .collect()
}

#[test]
fn custom_and_plain_dumps_restore_every_row_into_another_database() {
    // Served only later: nothing changes the rows while they are compared.
    let cluster =
        Postgres::start(&["email_accounts.databases = 'postgres'", "email_accounts.fallback_poll_interval = '500ms'"]);
    let mut admin = cluster.connect("postgres");
    for database in ["source", "from_custom", "from_plain"] {
        admin.batch_execute(&format!("CREATE DATABASE {database}")).unwrap();
    }
    let mut source = cluster.connect("source");
    source.batch_execute("CREATE EXTENSION email_accounts").unwrap();
    source
        .batch_execute(concat!(
            include_str!("backup/fill.sql"),
            include_str!("backup/fill_oauth.sql"),
            include_str!("backup/fill_templates.sql"),
            include_str!("backup/fill_mailboxes.sql"),
            include_str!("backup/fill_claims.sql")
        ))
        .unwrap();
    // (What its workers would do when they first run there.)
    source.batch_execute("SELECT email_accounts.adopt_database()").unwrap();
    let dumped = contents(&mut source);
    let empty: Vec<&str> = dumped.iter().filter(|(_, rows)| rows.is_empty()).map(|(name, _)| name.as_str()).collect();
    assert!(empty.is_empty(), "the fill leaves no table empty: {empty:?}");
    assert!(dumped.len() >= 18, "{} tables and sequences", dumped.len());

    let directory = tempfile::tempdir().unwrap();
    let custom = directory.path().join("source.dump");
    let plain = directory.path().join("source.sql");
    run_quietly("pg_dump", &cluster, &["-Fc", "-f", custom.to_str().unwrap(), "source"]);
    run_quietly("pg_dump", &cluster, &["-f", plain.to_str().unwrap(), "source"]);
    run_quietly("pg_restore", &cluster, &["-d", "from_custom", custom.to_str().unwrap()]);
    run_quietly(
        "psql",
        &cluster,
        &["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "from_plain", "-f", plain.to_str().unwrap()],
    );

    for database in ["from_custom", "from_plain"] {
        let mut restored = cluster.connect(database);
        let restored_contents = contents(&mut restored);
        for ((name, before), (_, after)) in dumped.iter().zip(&restored_contents) {
            assert_eq!(before, after, "{database}: {name} differs");
        }
        assert_eq!(dumped.len(), restored_contents.len());
        // The restored rows are taken as they were: checks and triggers work
        // again for new rows, which get fresh ids.
        let (new_id, last_id): (i64, i64) = {
            let row = restored
                .query_one(
                    "SELECT email_accounts.send(\"to\" => '{new@example.test}', subject => 'after the restore',
                                                account => 'Alice', tenant => 'acme'),
                            (SELECT max(outbox_id) FROM email_accounts.outbox WHERE subject <> 'after the restore')",
                    &[],
                )
                .unwrap();
            (row.get(0), row.get(1))
        };
        assert!(new_id > last_id, "{database}: a new row gets a fresh id ({new_id} after {last_id})");
        let recipients: i64 = restored
            .query_one("SELECT count(*) FROM email_accounts.outbox_recipient WHERE outbox_id = $1", &[&new_id])
            .unwrap()
            .get(0);
        assert_eq!(recipients, 1, "{database}: the new row is split into its recipients");
        let refused = restored
            .batch_execute("UPDATE email_accounts.domain SET smtp_port = 0")
            .expect_err("the checks work again after the restore");
        assert_eq!(refused.as_db_error().unwrap().code().code(), "23514", "{database}");
        // Same cluster, same key file: every password and the OAuth2 grant are still ready.
        let ready: i64 = restored
            .query_one("SELECT count(*) FROM email_accounts.account_settings WHERE ready_to_send", &[])
            .unwrap()
            .get(0);
        assert_eq!(ready, 7, "{database}");
        // Private and shared mailboxes stay so, and hide their mail from the tenant's other roles.
        restored.batch_execute("GRANT email_accounts_sender TO backup_app; SET ROLE backup_app").unwrap();
        let hidden: Vec<i64> = restored.query_one("SELECT email_accounts.hidden_mailboxes()", &[]).unwrap().get(0);
        restored.batch_execute("RESET ROLE").unwrap();
        let expected: Vec<i64> = restored
            .query_one(
                "SELECT array_agg(account_id ORDER BY account_id) FROM email_accounts.account WHERE name IN ('Private', 'Sales')",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(hidden, expected, "{database}");
        let state: String = restored
            .query_one("SELECT oauth_state FROM email_accounts.account_settings WHERE name = 'Tokens'", &[])
            .unwrap()
            .get(0);
        assert_eq!(state, "connected", "{database}: the OAuth2 binding survives the restore");
    }

    // Once every database is served, the restored copies hold off: their
    // mail is the source's, which is served in the same cluster.
    admin.batch_execute("ALTER SYSTEM SET email_accounts.databases = '*'").unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    for database in ["from_custom", "from_plain"] {
        let mut restored = cluster.connect(database);
        wait_until_held_as_copy(&mut restored);
        let home: i64 = restored
            .query_one(
                "SELECT count(*) FROM email_accounts.home JOIN pg_database ON pg_database.oid = home.database_oid
                  WHERE datname = 'source'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(home, 1, "{database}: the restored home row names the source");
    }
}

/// Messages in a mailbox whose Subject is `subject`.
fn copies(servers: &MailServers, address: &str, subject: &str) -> usize {
    let header = format!("Subject: {subject}\r\n");
    servers.mailbox(address).iter().filter(|message| message.contains(&header)).count()
}

#[test]
fn a_database_restored_into_a_new_cluster_sends_what_was_queued_once_and_needs_the_key_file() {
    let servers = MailServers::start();
    // The old cluster's launcher serves another database: the mail queued in "app" waits.
    let old = Postgres::start(&["email_accounts.databases = 'postgres'"]);
    old.connect("postgres").batch_execute("CREATE DATABASE app").unwrap();
    let mut app = old.connect("app");
    app.batch_execute("CREATE EXTENSION email_accounts").unwrap();
    servers.add_example_domain(&mut app);
    let alice = servers.user("alice@example.test");
    app.batch_execute(
        "INSERT INTO email_accounts.account (name, address, enable_outgoing) VALUES ('Alice', 'alice@example.test', true);
         INSERT INTO email_accounts.account (name, address, enable_outgoing, no_smtp_authentication)
         VALUES ('Relay', 'relay@example.test', true, true);
         -- A template that includes another (restored in any order: saving checks are off then).
         INSERT INTO email_accounts.template (name, body_text) VALUES ('footer', 'Regards');
         INSERT INTO email_accounts.template (name, subject, body_text) VALUES ('note', 'Note {{ n }}', '{% include ''footer'' %}');",
    )
    .unwrap();
    app.execute("SELECT email_accounts.set_password('Alice', $1)", &[&alice.password]).unwrap();
    // The old cluster's workers serve another database: this mail waits.
    app.batch_execute(
        "SELECT email_accounts.send(\"to\" => '{carol@example.test}', subject => 'from alice ' || n, account => 'Alice')
           FROM generate_series(1, 5) AS n;
         SELECT email_accounts.send(\"to\" => '{carol@example.test}', subject => 'from relay ' || n, account => 'Relay')
           FROM generate_series(1, 5) AS n;
         -- Sent before the dump: must not go out again.
         UPDATE email_accounts.outbox SET status = 'sent', sent_at = now(), attempts = 1
          WHERE subject IN ('from alice 1', 'from relay 1');
         UPDATE email_accounts.outbox_recipient SET status = 'sent'
          WHERE outbox_id IN (SELECT outbox_id FROM email_accounts.outbox WHERE status = 'sent');",
    )
    .unwrap();
    let directory = tempfile::tempdir().unwrap();
    let dump = directory.path().join("app.dump");
    run_quietly("pg_dump", &old, &["-Fc", "-f", dump.to_str().unwrap(), "app"]);

    // A new cluster whose workers serve "app"; its data directory has no key file yet.
    let new = Postgres::start(&["email_accounts.fallback_poll_interval = '500ms'"]);
    new.connect("postgres").batch_execute("CREATE DATABASE app").unwrap();
    run_quietly("pg_restore", &new, &["-d", "app", dump.to_str().unwrap()]);
    let mut restored = new.connect("app");
    let preview = restored
        .query_one("SELECT subject, body_text FROM email_accounts.render_template('note', '{\"n\": 1}')", &[])
        .unwrap();
    assert_eq!((preview.get::<_, String>(0), preview.get::<_, String>(1)), ("Note 1".into(), "Regards".into()));

    // The account without a password sends at once; Alice's rows say what is missing.
    wait_until("the relay's queued mail to be sent", LIMIT, || {
        let sent: i64 = restored
            .query_one("SELECT count(*) FROM email_accounts.outbox WHERE account = 'Relay' AND status = 'sent'", &[])
            .unwrap()
            .get(0);
        (sent == 5).then_some(())
    });
    let errors: Vec<String> = wait_until("Alice's rows to wait for a retry", LIMIT, || {
        let rows = restored
            .query("SELECT last_error FROM email_accounts.outbox WHERE account = 'Alice' AND status = 'retry'", &[])
            .unwrap();
        (rows.len() == 4).then(|| rows.iter().map(|row| row.get(0)).collect())
    });
    for error in &errors {
        assert!(
            error.contains("email_accounts.keys") && error.contains("does not exist") && error.contains("Backups"),
            "the error says the key file is missing: {error}"
        );
    }

    // Copy the key file as README says; Alice's mail then goes out.
    let key_file = |cluster: &Postgres| cluster.directory().join("data").join("email_accounts.keys");
    std::fs::copy(key_file(&old), key_file(&new)).unwrap();
    let copied = Command::new("chown").args(["postgres:postgres", key_file(&new).to_str().unwrap()]).status().unwrap();
    assert!(copied.success());
    restored
        .batch_execute("SELECT email_accounts.retry(outbox_id) FROM email_accounts.outbox WHERE status = 'retry'")
        .unwrap();
    wait_until("Alice's queued mail to be sent", LIMIT, || {
        let sent: i64 =
            restored.query_one("SELECT count(*) FROM email_accounts.outbox WHERE status = 'sent'", &[]).unwrap().get(0);
        (sent == 10).then_some(())
    });
    wait_until("the last message to reach Carol", LIMIT, || {
        (copies(&servers, "carol@example.test", "from alice 5") == 1).then_some(())
    });
    for sender in ["alice", "relay"] {
        assert_eq!(copies(&servers, "carol@example.test", &format!("from {sender} 1")), 0, "sent before the dump");
        for n in 2..=5 {
            assert_eq!(copies(&servers, "carol@example.test", &format!("from {sender} {n}")), 1, "{sender} {n}");
        }
    }
}

fn sent(client: &mut postgres::Client) -> i64 {
    client.query_one("SELECT count(*) FROM email_accounts.outbox WHERE status = 'sent'", &[]).unwrap().get(0)
}

#[test]
fn a_restoring_session_holds_the_workers_off_until_it_ends_and_nobody_else_can() {
    let cluster = Postgres::start(&["email_accounts.fallback_poll_interval = '200ms'"]);
    let server = SmtpResponder::start(None, Behaviour::Accept, true);
    let mut client = cluster.connect("postgres");
    client.batch_execute("CREATE EXTENSION email_accounts; CREATE ROLE tenant_app LOGIN").unwrap();
    add_account_without_login(&mut client, "steady", server.port);

    // A session writing as a restore does (row_security off, as a superuser).
    let mut restoring = cluster.connect("postgres");
    restoring
        .batch_execute(
            "SET row_security = off;
             INSERT INTO email_accounts.tenant_member VALUES ('tenant_app', 'acme');",
        )
        .unwrap();
    let restoring_pid: i32 = restoring.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    client
        .batch_execute(
            "SELECT email_accounts.send(\"to\" => '{a@example.test}', account => 'steady') FROM generate_series(1, 5)",
        )
        .unwrap();
    wait_until("the sender to wait for the restore", LIMIT, || {
        let state: String = client
            .query_one("SELECT state FROM email_accounts.worker_status() WHERE role = 'sender'", &[])
            .unwrap()
            .get(0);
        (state == "waiting for a restore to end").then_some(())
    });
    assert!(cluster.server_log().contains(&format!("waits while process {restoring_pid} restores a dump")));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sent(&mut client), 0, "nothing is sent during the restore");
    assert_eq!(server.distinct_messages(), 0);

    drop(restoring);
    wait_until("the queued mail to be sent after the restore", LIMIT, || (sent(&mut client) == 5).then_some(()));

    // Anyone may take the same advisory lock; a role that is not a superuser stops nothing.
    let mut tenant = cluster.connect_as("postgres", "tenant_app");
    tenant.batch_execute("SELECT pg_advisory_lock_shared(1835100524, 1)").unwrap();
    client
        .batch_execute(
            "SELECT email_accounts.send(\"to\" => '{b@example.test}', account => 'steady') FROM generate_series(1, 5)",
        )
        .unwrap();
    wait_until("mail to be sent while a tenant holds the lock", LIMIT, || (sent(&mut client) == 10).then_some(()));
    assert_eq!(server.distinct_messages(), 10);
    assert_eq!(server.duplicates(), 0);

    // Held exclusively by such a role, a restore stops and names it rather than hanging.
    tenant.batch_execute("SELECT pg_advisory_unlock_all(); SELECT pg_advisory_lock(1835100524, 1)").unwrap();
    let mut restoring = cluster.connect("postgres");
    let refused = restoring
        .batch_execute(
            "SET row_security = off; INSERT INTO email_accounts.tenant_member VALUES ('tenant_app', 'globex')",
        )
        .expect_err("a restore blocked by a tenant's lock");
    let refused = refused.as_db_error().unwrap();
    assert_eq!(refused.code().code(), "55P03");
    assert!(
        refused.message().contains("(role tenant_app) holds the email_accounts restore lock"),
        "{}",
        refused.message()
    );
}

#[test]
fn a_dump_restored_next_to_its_served_original_sends_nothing_of_it() {
    // Every database served, the copy too, from the moment it is created.
    let cluster = Postgres::start(&["email_accounts.fallback_poll_interval = '500ms'"]);
    let server = SmtpResponder::start(None, Behaviour::RefuseMail("451 4.3.0 try again later".into()), true);
    cluster.connect("postgres").batch_execute("CREATE DATABASE source").unwrap();
    let mut source = cluster.connect("source");
    source.batch_execute("CREATE EXTENSION email_accounts").unwrap();
    add_account_without_login(&mut source, "out", server.port);
    source
        .batch_execute(
            "SELECT email_accounts.send(\"to\" => '{a@example.test}', account => 'out') FROM generate_series(1, 5)",
        )
        .unwrap();
    // Refused once: the rows wait for a retry in the original.
    wait_until("the original's rows to wait for a retry", LIMIT, || {
        (sent_with(&mut source, "status = 'retry'") == 5).then_some(())
    });

    let directory = tempfile::tempdir().unwrap();
    let dump = directory.path().join("source.dump");
    run_quietly("pg_dump", &cluster, &["-Fc", "-f", dump.to_str().unwrap(), "source"]);
    cluster.connect("postgres").batch_execute("CREATE DATABASE copy").unwrap();
    run_quietly("pg_restore", &cluster, &["-d", "copy", dump.to_str().unwrap()]);

    // The server accepts now and the copy's rows are due: a copy that
    // took the original's mail as its own would send them.
    server.set(Behaviour::Accept);
    let mut copy = cluster.connect("copy");
    copy.batch_execute("SELECT email_accounts.retry(outbox_id) FROM email_accounts.outbox").unwrap();
    wait_until_held_as_copy(&mut copy);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(server.distinct_messages(), 0, "the copy sent nothing");

    // The original sends its mail, once.
    source.batch_execute("SELECT email_accounts.retry(outbox_id) FROM email_accounts.outbox").unwrap();
    wait_until("the original to send", LIMIT, || (server.distinct_messages() == 5).then_some(()));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!((server.distinct_messages(), server.duplicates()), (5, 0));
    assert_eq!(sent_with(&mut copy, "status = 'sent'"), 0);
}

fn sent_with(client: &mut postgres::Client, condition: &str) -> i64 {
    client.query_one(&format!("SELECT count(*) FROM email_accounts.outbox WHERE {condition}"), &[]).unwrap().get(0)
}
