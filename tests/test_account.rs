//! `email_accounts.test_account()` against the harness's real Dovecot and
//! Postfix: every security mode, wrong password, wrong port, untrusted and
//! trusted certificates, a login id that differs from the address, an
//! ASCII-encoded password, an account awaiting its password, a server that
//! never answers, and a host that does not resolve.
// Run by `make test-integration`; `cargo pgrx test` (feature pg_test) runs only the #[pg_test]s.
#![cfg(not(feature = "pg_test"))]

mod harness;

use harness::{MailServers, Postgres};
use serde_json::Value;
use std::net::TcpListener;

struct Setup {
    servers: MailServers,
    _cluster: Postgres,
    client: postgres::Client,
}

fn setup() -> Setup {
    let servers = MailServers::start();
    let cluster = Postgres::start(&[]);
    let mut client = cluster.connect("postgres");
    client.batch_execute("CREATE EXTENSION email_accounts").unwrap();
    Setup { servers, _cluster: cluster, client }
}

/// Creates an account for a harness mailbox, both sides on the given servers.
fn create_account(setup: &mut Setup, name: &str, address: &str, extra: &str) {
    let ca = setup.servers.ca_pem();
    setup
        .client
        .execute(
            &format!(
                "INSERT INTO email_accounts.account (name, address, enable_incoming, incoming_protocol, incoming_host,
                     incoming_port, incoming_security, enable_outgoing, smtp_host, smtp_port, smtp_security,
                     extra_ca_certificate)
                 VALUES ($1, $2, true, 'imap', 'localhost', {}, 'ssl', true, 'localhost', {}, 'ssl', $3)",
                setup.servers.imaps, setup.servers.smtps
            ),
            &[&name, &address, &ca],
        )
        .unwrap();
    if !extra.is_empty() {
        setup.client.execute(&format!("UPDATE email_accounts.account SET {extra} WHERE name = $1"), &[&name]).unwrap();
    }
}

fn set_password(setup: &mut Setup, name: &str, password: &str) {
    setup.client.execute("SELECT email_accounts.set_password($1, $2)", &[&name, &password]).unwrap();
}

fn configure(setup: &mut Setup, name: &str, assignments: &str) {
    setup
        .client
        .execute(&format!("UPDATE email_accounts.account SET {assignments} WHERE name = $1"), &[&name])
        .unwrap();
}

/// Moves the account to other servers; the password is bound to the servers,
/// so it is given again in the same transaction (as an operator would).
fn move_servers(setup: &mut Setup, name: &str, assignments: &str, password: &str) {
    let mut transaction = setup.client.transaction().unwrap();
    transaction.execute(&format!("UPDATE email_accounts.account SET {assignments} WHERE name = $1"), &[&name]).unwrap();
    transaction.execute("SELECT email_accounts.set_password($1, $2)", &[&name, &password]).unwrap();
    transaction.commit().unwrap();
}

fn test_account(setup: &mut Setup, name: &str) -> Value {
    setup.client.query_one("SELECT email_accounts.test_account($1)", &[&name]).unwrap().get(0)
}

fn error_kind(report: &Value) -> &str {
    report["error"]["kind"].as_str().unwrap_or("none")
}

#[test]
fn every_security_mode_logs_in() {
    let mut setup = setup();
    let alice = setup.servers.user("alice@example.test").clone();
    create_account(&mut setup, "alice", &alice.address, "");
    set_password(&mut setup, "alice", &alice.password);
    let servers = (setup.servers.imap, setup.servers.imaps, setup.servers.pop3, setup.servers.pop3s);
    let (smtp, smtps) = (setup.servers.smtp, setup.servers.smtps);

    let modes = [
        ("imap", servers.1, "ssl", smtps, "ssl", false),
        ("imap", servers.0, "starttls", smtp, "starttls", false),
        ("imap", servers.0, "none", smtp, "none", true),
        ("pop3", servers.3, "ssl", smtps, "ssl", false),
        ("pop3", servers.2, "starttls", smtp, "starttls", false),
        ("pop3", servers.2, "none", smtp, "none", true),
    ];
    for (protocol, port, security, smtp_port, smtp_security, plaintext) in modes {
        move_servers(
            &mut setup,
            "alice",
            &format!(
                "incoming_protocol = '{protocol}', incoming_port = {port}, incoming_security = '{security}',
                 smtp_port = {smtp_port}, smtp_security = '{smtp_security}', allow_plaintext_authentication = {plaintext}"
            ),
            &alice.password,
        );
        let report = test_account(&mut setup, "alice");
        assert_eq!(report["ok"], true, "{protocol} {security} / smtp {smtp_security}: {report:#}");
        let incoming = &report[protocol];
        assert_eq!(incoming["ok"], true);
        assert_eq!(incoming["security"], security);
        assert!(incoming["greeting"].as_str().unwrap().contains("Dovecot"), "{incoming}");
        assert!(incoming["elapsed_ms"].as_u64().is_some());
        let smtp_report = &report["smtp"];
        assert_eq!(smtp_report["ok"], true);
        assert!(smtp_report["greeting"].as_str().unwrap().starts_with("220 mail.example.test ESMTP"), "{smtp_report}");
        assert!(smtp_report["capabilities"].as_array().unwrap().iter().any(|capability| capability == "AUTH=PLAIN"));
        if protocol == "imap" {
            assert!(incoming["capabilities"].as_array().unwrap().iter().any(|capability| capability == "IMAP4rev1"));
        }
        if security == "starttls" {
            assert!(
                incoming["capabilities"].as_array().unwrap().iter().all(|capability| capability != "STARTTLS"),
                "capabilities are read after the upgrade: {incoming}"
            );
        }
    }
}

#[test]
fn failures_are_classified_with_the_servers_words() {
    let mut setup = setup();
    let bob = setup.servers.user("bob@example.test").clone();
    create_account(&mut setup, "bob", &bob.address, "");

    // Awaiting its password: nothing is attempted.
    configure(&mut setup, "bob", "awaiting_password = true");
    let report = test_account(&mut setup, "bob");
    assert_eq!(report["ok"], false);
    for side in ["imap", "smtp"] {
        assert_eq!(error_kind(&report[side]), "auth", "{report:#}");
        assert!(report[side]["error"]["message"].as_str().unwrap().contains("awaiting"), "{report:#}");
        assert_eq!(report[side]["elapsed_ms"], 0);
    }

    // Wrong password.
    set_password(&mut setup, "bob", "not-bobs-password");
    let report = test_account(&mut setup, "bob");
    assert_eq!(error_kind(&report["imap"]), "auth", "{report:#}");
    assert!(report["imap"]["error"]["message"].as_str().unwrap().contains("Authentication failed"), "{report:#}");
    assert_eq!(error_kind(&report["smtp"]), "auth", "{report:#}");
    assert!(report["smtp"]["error"]["message"].as_str().unwrap().contains("535"), "{report:#}");
    set_password(&mut setup, "bob", &bob.password);
    assert_eq!(test_account(&mut setup, "bob")["ok"], true);

    // Wrong port: nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    move_servers(&mut setup, "bob", &format!("incoming_port = {closed}, smtp_port = {closed}"), &bob.password);
    let report = test_account(&mut setup, "bob");
    assert_eq!(error_kind(&report["imap"]), "connect", "{report:#}");
    assert_eq!(error_kind(&report["smtp"]), "connect", "{report:#}");

    // The self-signed CA: untrusted without the account's extra CA, trusted with it.
    let (imaps, smtps) = (setup.servers.imaps, setup.servers.smtps);
    move_servers(
        &mut setup,
        "bob",
        &format!("incoming_port = {imaps}, smtp_port = {smtps}, extra_ca_certificate = NULL"),
        &bob.password,
    );
    let report = test_account(&mut setup, "bob");
    assert_eq!(error_kind(&report["imap"]), "tls", "{report:#}");
    assert_eq!(error_kind(&report["smtp"]), "tls", "{report:#}");
    let ca = setup.servers.ca_pem();
    move_servers(&mut setup, "bob", &format!("extra_ca_certificate = '{ca}'"), &bob.password);
    assert_eq!(test_account(&mut setup, "bob")["ok"], true);

    // A server that accepts the connection and never speaks: a bounded timeout.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    move_servers(
        &mut setup,
        "bob",
        &format!("incoming_port = {silent_port}, smtp_port = {silent_port}"),
        &bob.password,
    );
    setup.client.batch_execute("SET email_accounts.connect_timeout = '300ms'").unwrap();
    let report = test_account(&mut setup, "bob");
    assert_eq!(error_kind(&report["imap"]), "timeout", "{report:#}");
    assert_eq!(error_kind(&report["smtp"]), "timeout", "{report:#}");
    drop(silent);

    // A host name that does not resolve.
    move_servers(
        &mut setup,
        "bob",
        "incoming_host = 'no-such-host.invalid', smtp_host = 'no-such-host.invalid'",
        &bob.password,
    );
    let report = test_account(&mut setup, "bob");
    assert_eq!(error_kind(&report["imap"]), "dns", "{report:#}");
    assert_eq!(error_kind(&report["smtp"]), "dns", "{report:#}");
}

#[test]
fn login_id_ascii_passwords_and_test_all() {
    let mut setup = setup();
    let erin = setup.servers.user("erin@example.test").clone();
    let login = erin.login.clone().expect("erin logs in with a different name");
    create_account(&mut setup, "erin", &erin.address, &format!("login_id = '{login}', ascii_encode_password = true"));
    set_password(&mut setup, "erin", &erin.password);
    let report = test_account(&mut setup, "erin");
    assert_eq!(report["ok"], true, "{report:#}");

    // A wrong login id fails, so the login id (not the address) is what is sent.
    configure(&mut setup, "erin", "login_id = 'nobody.login'");
    assert_eq!(error_kind(&test_account(&mut setup, "erin")["imap"]), "auth");
    configure(&mut setup, "erin", &format!("login_id = '{login}'"));

    let carol = setup.servers.user("carol@example.test").clone();
    let pop3s = setup.servers.pop3s;
    create_account(
        &mut setup,
        "carol",
        &carol.address,
        &format!("incoming_protocol = 'pop3', incoming_port = {pop3s}"),
    );
    set_password(&mut setup, "carol", &carol.password);
    let rows = setup.client.query("SELECT account, ok, result FROM email_accounts.test_all()", &[]).unwrap();
    let outcomes: Vec<(String, bool)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert_eq!(outcomes, [("carol".to_owned(), true), ("erin".to_owned(), true)]);
    let carol_report: Value = rows[0].get(2);
    assert_eq!(carol_report["pop3"]["ok"], true, "{carol_report:#}");
}
