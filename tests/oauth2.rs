//! OAuth2 sign-in end to end (issue 15): accounts connected from SQL by a
//! device login, a refresh token an application obtained, or client
//! credentials, against the harness's token service; Dovecot (IMAP, POP3)
//! and Postfix (SMTP, through Dovecot's SASL) accept only the access tokens
//! it issued. Expiry, server-side refusal, rotation and revocation, and no
//! token or client secret anywhere in the server log (debug5, every
//! statement), pg_stat_activity, stored errors or test_account().
// Run by `make test-integration`; `cargo pgrx test` (feature pg_test) runs only the #[pg_test]s.
#![cfg(not(feature = "pg_test"))]

mod harness;

use harness::{wait_until, MailServers, Postgres, TokenService};
use serde_json::Value;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);
const CLIENT_SECRET: &str = "app-secret-7f3a9c";

struct Setup {
    servers: MailServers,
    cluster: Postgres,
    client: postgres::Client,
}

impl Setup {
    fn tokens(&self) -> &TokenService {
        self.servers.token_service.as_ref().expect("a token service")
    }

    fn state(&mut self, account: &str) -> String {
        self.client
            .query_one("SELECT oauth_state FROM email_accounts.account_settings WHERE name = $1", &[&account])
            .unwrap()
            .get(0)
    }

    fn wait_for_state(&mut self, account: &str, prefix: &str) -> String {
        wait_until(&format!("{account} to be {prefix}"), LIMIT, || {
            let state = self.state(account);
            state.starts_with(prefix).then_some(state)
        })
    }

    fn test_account(&mut self, account: &str) -> Value {
        self.client
            .query_one("SELECT email_accounts.test_account($1)::text", &[&account])
            .map(|row| serde_json::from_str(row.get::<_, &str>(0)).unwrap())
            .unwrap()
    }

    fn send(&mut self, account: &str, to: &str, subject: &str) -> i64 {
        self.client
            .query_one(
                "SELECT email_accounts.send(\"to\" => ARRAY[$1], subject => $2, body_text => 'Hello', account => $3)",
                &[&to, &subject, &account],
            )
            .unwrap()
            .get(0)
    }

    fn status(&mut self, outbox_id: i64) -> (String, i32, Option<String>) {
        let row = self
            .client
            .query_one(
                "SELECT status, attempts, last_error FROM email_accounts.outbox WHERE outbox_id = $1",
                &[&outbox_id],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    }

    fn wait_sent(&mut self, outbox_id: i64) -> i32 {
        wait_until(&format!("outbox row {outbox_id} to be sent"), LIMIT, || {
            let (status, attempts, _) = self.status(outbox_id);
            (status == "sent").then_some(attempts)
        })
    }

    /// Starts a device login for the account and approves it as `mailbox`.
    fn connect_by_device_login(&mut self, account: &str, mailbox: &str) {
        let row = self
            .client
            .query_one("SELECT user_code, message FROM email_accounts.oauth_device_login($1)", &[&account])
            .unwrap();
        let (user_code, message): (String, String) = (row.get(0), row.get(1));
        assert!(message.contains(&user_code), "{message}");
        assert_eq!(self.state(account), "waiting for approval");
        self.tokens().decide_device_login(&user_code, Some(mailbox));
        self.wait_for_state(account, "connected");
    }
}

/// The servers with OAuth2, a cluster logging everything, a provider like
/// office365 pointing at the token service, example.test inheriting it.
fn setup(settings: &[&str]) -> Setup {
    let servers = MailServers::start_with_oauth2();
    let tokens = servers.token_service.as_ref().unwrap();
    tokens.register_client("mail-app", Some(CLIENT_SECRET), None);
    tokens.register_client("daemon-app", Some("daemon-secret-51c0"), Some("carol@example.test"));
    let mut all = vec![
        "email_accounts.fallback_poll_interval = '1h'",
        "email_accounts.retry_base_delay = '1s'",
        "log_statement = 'all'",
        "log_min_messages = 'debug5'",
        "log_min_error_statement = 'debug5'",
    ];
    all.extend_from_slice(settings);
    let cluster = Postgres::start(&all);
    let mut client = cluster.connect("postgres");
    client.batch_execute("CREATE EXTENSION email_accounts").unwrap();
    servers.add_example_domain(&mut client);
    client
        .execute(
            "INSERT INTO email_accounts.provider (name, description, auth_method, oauth_token_endpoint,
                 oauth_device_authorization_endpoint, oauth_scopes, oauth_client_id, oauth_tenant)
             VALUES ('harness', 'The harness token service', 'oauth2', $1, $2,
                     ARRAY['https://outlook.office.com/IMAP.AccessAsUser.All', 'offline_access'], 'mail-app', 'contoso')",
            &[&tokens.token_url_template(), &tokens.device_url_template()],
        )
        .unwrap();
    client
        .batch_execute("UPDATE email_accounts.domain SET provider = 'harness' WHERE domain_name = 'example.test'")
        .unwrap();
    let mut setup = Setup { servers, cluster, client };
    setup.with_secret("SELECT email_accounts.set_oauth_client_secret($1, provider => 'harness')", CLIENT_SECRET);
    setup
}

impl Setup {
    /// Runs `statement` with the secret as its parameter, which PostgreSQL
    /// logs with log_statement = all unless the session says otherwise
    /// (README "OAuth2": passing secrets).
    fn with_secret(&mut self, statement: &str, secret: &str) {
        self.client
            .batch_execute("SET log_parameter_max_length = 0; SET log_parameter_max_length_on_error = 0")
            .unwrap();
        let result = self.client.execute(statement, &[&secret]);
        self.client.batch_execute("RESET log_parameter_max_length; RESET log_parameter_max_length_on_error").unwrap();
        result.unwrap();
    }
}

#[test]
fn a_device_login_connects_an_account_that_sends_receives_renews_and_survives_revocation() {
    let mut setup = setup(&["email_accounts.imap_idle = on"]);
    setup
        .client
        .batch_execute(
            "INSERT INTO email_accounts.account (name, address, enable_outgoing, enable_incoming, poll_interval,
                                                  append_to_sent_folder)
             VALUES ('Alice', 'alice@example.test', true, true, '1 hour', true)",
        )
        .unwrap();
    assert_eq!(setup.state("Alice"), "not connected");
    let auth_method: String = setup
        .client
        .query_one("SELECT auth_method FROM email_accounts.account_settings WHERE name = 'Alice'", &[])
        .unwrap()
        .get(0);
    assert_eq!(auth_method, "oauth2", "inherited from the provider through the domain");

    // Access tokens that expire a few seconds after the workers start renewing them.
    setup.tokens().set_access_token_lifetime(Duration::from_secs(306));
    setup.connect_by_device_login("Alice", "alice@example.test");
    let report = setup.test_account("Alice");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["smtp"]["sasl_mechanism"], "XOAUTH2", "{report}");
    assert_eq!(report["imap"]["sasl_mechanism"], "XOAUTH2", "{report}");
    assert_eq!(report["oauth"]["state"], "connected", "{report}");

    // Sending and the copy to Sent, with the token.
    let first = setup.send("Alice", "bob@example.test", "by token 1");
    assert_eq!(setup.wait_sent(first), 1);
    wait_until("bob to have the mail", LIMIT, || {
        setup.servers.mailbox("bob@example.test").iter().any(|raw| raw.contains("by token 1")).then_some(())
    });

    // Receiving: IDLE (signed in with the token) wakes the receiver.
    let raw = b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: over IDLE\r\nMessage-ID: <idle-1@example.test>\r\n\r\nHi\r\n";
    std::thread::sleep(Duration::from_secs(2)); // the watcher is connected
    setup.servers.append("alice@example.test", "INBOX", &[(raw.to_vec(), false)]);
    wait_until("the message to be stored", LIMIT, || {
        let stored: i64 = setup
            .client
            .query_one("SELECT count(*) FROM email_accounts.message WHERE subject = 'over IDLE'", &[])
            .unwrap()
            .get(0);
        (stored == 1).then_some(())
    });

    // The token is within 5 minutes of expiring: the next use renews it first.
    let refreshes = setup.tokens().count("refresh_token");
    std::thread::sleep(Duration::from_secs(7));
    let second = setup.send("Alice", "bob@example.test", "by token 2");
    assert_eq!(setup.wait_sent(second), 1, "no failed attempt while the token was renewed");
    assert!(setup.tokens().count("refresh_token") > refreshes, "the token was renewed");

    // The server stops taking the token before we expected: refused, renewed once, sent.
    setup.tokens().set_access_token_lifetime(Duration::from_secs(3600));
    setup.tokens().expire_access_tokens_of("alice@example.test");
    let third = setup.send("Alice", "bob@example.test", "by token 3");
    assert_eq!(setup.wait_sent(third), 1, "refused, renewed and sent in the same round");

    // The user withdraws consent: consent needed, mail waits, the endpoint is left alone.
    setup.tokens().revoke_grants_of("alice@example.test");
    let fourth = setup.send("Alice", "bob@example.test", "after revocation");
    let state = setup.wait_for_state("Alice", "consent needed");
    assert!(state.contains("invalid_grant") && state.contains("AADSTS700082"), "{state}");
    let (status, _, error) = setup.status(fourth);
    assert_eq!(status, "retry");
    assert!(error.as_deref().unwrap_or_default().contains("OAuth2"), "{error:?}");
    let fifth = setup.send("Alice", "bob@example.test", "queued while revoked");
    let asked = setup.tokens().count("refresh_token");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(setup.tokens().count("refresh_token"), asked, "no more token requests while consent is needed");
    assert_eq!(setup.status(fifth).0, "queued");
    let report = setup.test_account("Alice");
    assert_eq!(report["ok"], false);
    assert_eq!(report["smtp"]["error"]["kind"], "oauth", "{report}");

    // Connecting again resumes.
    setup.connect_by_device_login("Alice", "alice@example.test");
    setup.wait_sent(fourth);
    setup.wait_sent(fifth);
    let sent_copies = setup.servers.folder_flags("alice@example.test", "Sent").len();
    assert!(sent_copies >= 5, "{sent_copies} copies in Sent");

    // A denied device login.
    let code: String =
        setup.client.query_one("SELECT user_code FROM email_accounts.oauth_device_login('Alice')", &[]).unwrap().get(0);
    setup.tokens().decide_device_login(&code, None);
    let state = setup.wait_for_state("Alice", "consent needed");
    assert!(state.contains("access_denied"), "{state}");

    assert_no_secret_anywhere(&mut setup);
}

#[test]
fn refresh_tokens_from_an_application_and_client_credentials_over_pop3_and_smtp() {
    let mut setup = setup(&["email_accounts.imap_idle = off"]);
    // Bob reads by POP3, connected with a refresh token an application obtained.
    setup
        .client
        .batch_execute(&format!(
            "INSERT INTO email_accounts.account (name, address, enable_outgoing, enable_incoming, incoming_protocol,
                                                      incoming_port, poll_interval)
                 VALUES ('Bob', 'bob@example.test', true, true, 'pop3', {}, '1 hour')",
            setup.servers.pop3s
        ))
        .unwrap();
    let refresh_token = setup.tokens().issue_refresh_token("mail-app", "bob@example.test");
    setup.with_secret("SELECT email_accounts.set_oauth_refresh_token('Bob', $1)", &refresh_token);
    assert_eq!(setup.state("Bob"), "connected");
    let raw = b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: over POP3\r\nMessage-ID: <pop-1@example.test>\r\n\r\nHi\r\n";
    setup.servers.append("bob@example.test", "INBOX", &[(raw.to_vec(), false)]);
    // (Connecting woke the receiver, which syncs a newly ready account at once.)
    let row = setup.client.query_one("SELECT new_messages, state FROM email_accounts.sync_now('Bob')", &[]).unwrap();
    assert_eq!(row.get::<_, String>(1), "ok");
    let stored: i64 = setup
        .client
        .query_one("SELECT count(*) FROM email_accounts.message WHERE subject = 'over POP3'", &[])
        .unwrap()
        .get(0);
    assert_eq!(stored, 1);
    // The refresh token was used once and rotated: the stored one is the new one.
    assert_eq!(setup.tokens().count("refresh_token"), 1);
    setup.tokens().expire_access_tokens_of("bob@example.test");
    let raw = b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: over POP3 again\r\nMessage-ID: <pop-2@example.test>\r\n\r\nHi\r\n";
    setup.servers.append("bob@example.test", "INBOX", &[(raw.to_vec(), false)]);
    let row =
        setup.client.query_one("SELECT new_messages, state, error FROM email_accounts.sync_now('Bob')", &[]).unwrap();
    let again: (i32, String, Option<String>) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((again.0, again.1.as_str()), (1, "ok"), "{again:?}");
    assert_eq!(setup.tokens().count("refresh_token"), 2, "the rotated refresh token worked");
    let report = setup.test_account("Bob");
    assert_eq!(report["pop3"]["sasl_mechanism"], "XOAUTH2", "{report}");

    // Carol's mailbox is reached by an app-only client (client credentials).
    setup
        .client
        .execute(
            "INSERT INTO email_accounts.provider (name, description, auth_method, oauth_token_endpoint, oauth_scopes,
                 oauth_client_credentials_scopes, oauth_client_id, oauth_tenant)
             VALUES ('harness_daemon', 'App-only access', 'oauth2', $1, ARRAY['mail'], ARRAY['https://outlook.office365.com/.default'],
                     'daemon-app', 'contoso')",
            &[&setup.tokens().token_url_template()],
        )
        .unwrap();
    setup
        .client
        .batch_execute(
            "INSERT INTO email_accounts.account (name, address, provider, enable_outgoing)
             VALUES ('Carol', 'carol@example.test', 'harness_daemon', true)",
        )
        .unwrap();
    // Without a secret client credentials cannot work; with a wrong one the
    // token endpoint refuses the client: clear errors either way.
    let missing =
        setup.client.query_one("SELECT email_accounts.connect_oauth_client_credentials('Carol')", &[]).unwrap_err();
    assert_eq!(missing.as_db_error().map(|error| error.code().code()), Some("55000"), "{missing:?}");
    let set_secret = "SELECT email_accounts.set_oauth_client_secret($1, provider => 'harness_daemon')";
    setup.with_secret(set_secret, "not-the-secret");
    let refused =
        setup.client.query_one("SELECT email_accounts.connect_oauth_client_credentials('Carol')", &[]).unwrap_err();
    let refused = refused.as_db_error().expect("a database error");
    assert_eq!(refused.code().code(), "28000", "{refused:?}");
    assert!(refused.message().contains("invalid_client"), "{}", refused.message());
    setup.with_secret(set_secret, "daemon-secret-51c0");
    setup.client.query_one("SELECT email_accounts.connect_oauth_client_credentials('Carol')", &[]).unwrap();
    let sent = setup.send("Carol", "alice@example.test", "app-only");
    assert_eq!(setup.wait_sent(sent), 1);
    // App-only access opens any mailbox granted to the application: a
    // tenant's admin may not mint it (nor redirect a connected account to another mailbox).
    setup
        .client
        .batch_execute(
            "CREATE ROLE tenant_admin IN ROLE email_accounts_admin;
             INSERT INTO email_accounts.tenant_member (role_name, tenant) VALUES ('tenant_admin', 'acme');
             INSERT INTO email_accounts.account (name, tenant, address, provider, enable_outgoing, owner_role)
             VALUES ('Mallory', 'acme', 'support@example.test', 'harness_daemon', true, 'tenant_admin');
             SET ROLE tenant_admin",
        )
        .unwrap();
    let denied =
        setup.client.batch_execute("SELECT email_accounts.connect_oauth_client_credentials('Mallory')").unwrap_err();
    assert_eq!(denied.as_db_error().map(|error| error.code().code()), Some("42501"), "{denied:?}");
    setup.client.batch_execute("RESET ROLE").unwrap();
    setup
        .client
        .batch_execute("UPDATE email_accounts.account SET login_id = 'alice@example.test' WHERE name = 'Carol'")
        .unwrap();
    let state = setup.state("Carol");
    assert!(state.starts_with("consent needed") && state.contains("login"), "{state}");

    // Settings that cannot work are refused naming the field.
    let error = setup
        .client
        .batch_execute(
            "INSERT INTO email_accounts.account (name, address, auth_method, enable_outgoing, smtp_host, smtp_port, smtp_security)
             VALUES ('Nobody', 'nobody@nowhere.test', 'oauth2', true, 'localhost', 587, 'starttls')",
        )
        .unwrap_err();
    let error = error.as_db_error().expect("a database error");
    assert_eq!((error.code().code(), error.column()), ("23514", Some("oauth_token_endpoint")), "{error:?}");
    let error = setup.client.batch_execute("SELECT email_accounts.oauth_device_login('Carol')").unwrap_err();
    assert_eq!(error.as_db_error().map(|error| error.code().code()), Some("55000"), "{error:?}");

    // Changing the servers of a connected account needs consent again.
    setup
        .client
        .batch_execute("UPDATE email_accounts.account SET smtp_port = 465, smtp_security = 'ssl' WHERE name = 'Bob'")
        .unwrap();
    let state = setup.state("Bob");
    assert!(state.starts_with("consent needed") && state.contains("servers"), "{state}");

    assert_no_secret_anywhere(&mut setup);
}

/// No token or client secret in the server log, pg_stat_activity, stored errors or test_account().
fn assert_no_secret_anywhere(setup: &mut Setup) {
    let mut secrets = setup.tokens().secrets();
    secrets.push(CLIENT_SECRET.to_owned());
    assert!(secrets.len() >= 4, "{} secrets", secrets.len());
    let log = setup.cluster.server_log();
    assert!(log.contains("DEBUG"), "the log is at debug level");
    for trouble in ["cannot store the OAuth2 tokens", "positioned before the start", "was not stored"] {
        assert!(!log.contains(trouble), "the server log says {trouble:?}");
    }
    let mut seen = String::new();
    for row in setup.client.query("SELECT coalesce(query, '') FROM pg_catalog.pg_stat_activity", &[]).unwrap() {
        seen.push_str(row.get::<_, &str>(0));
    }
    for query in [
        "SELECT coalesce(string_agg(last_error, ' '), '') FROM email_accounts.outbox",
        "SELECT coalesce(string_agg(last_error, ' '), '') FROM email_accounts.sync_state",
        "SELECT coalesce(string_agg(problem, ' '), '') FROM email_accounts.account_oauth",
        "SELECT coalesce(string_agg(email_accounts.test_account(name)::text, ' '), '') FROM email_accounts.account",
        "SELECT coalesce(string_agg(to_jsonb(settings)::text, ' '), '') FROM email_accounts.account_settings AS settings",
    ] {
        seen.push_str(setup.client.query_one(query, &[]).unwrap().get::<_, &str>(0));
    }
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "a secret ({}…) is in the server log", &secret[..6]);
        assert!(
            !seen.contains(secret.as_str()),
            "a secret ({}…) is in a table, an error or test_account()",
            &secret[..6]
        );
    }
}
