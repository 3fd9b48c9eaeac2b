//! OAuth2 groundwork (issue 15): the harness's real Dovecot, validating
//! tokens against the harness's token service (Dovecot's oauth2 passdb, RFC
//! 7662 introspection), accepts an access token by XOAUTH2 and OAUTHBEARER as
//! `email_accounts_mail::sasl` builds them, over IMAP and POP3; a revoked
//! token, or another user's, is refused with a challenge `sasl` reads.
//! (SMTP through Postfix's Dovecot SASL is exercised end to end by tests/oauth2.rs.)
// Run by `make test-integration`; `cargo pgrx test` (feature pg_test) runs only the #[pg_test]s.
#![cfg(not(feature = "pg_test"))]

mod harness;

use email_accounts_mail::imap_client::BearerAuthenticator;
use email_accounts_mail::sasl::{parse_refusal, BearerMechanism, Refusal};
use harness::MailServers;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

type Tls = native_tls::TlsStream<TcpStream>;

fn tls(servers: &MailServers, port: u16) -> Tls {
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("port");
    servers.tls_connector().connect("localhost", tcp).expect("TLS handshake")
}

/// Logs in over IMAPS with the token; the refusal when the server says no.
fn imap_login(
    servers: &MailServers,
    mechanism: BearerMechanism,
    user: &str,
    token: &str,
) -> Result<(), Option<Refusal>> {
    let mut client = imap::Client::new(tls(servers, servers.imaps));
    client.read_greeting().expect("IMAP greeting");
    let bearer = BearerAuthenticator::new(
        mechanism,
        mechanism.client_response(user, token, "localhost", servers.imaps).unwrap(),
    );
    match client.authenticate(mechanism.name(), &bearer) {
        Ok(mut session) => {
            session.select("INBOX").expect("SELECT INBOX as the token's user");
            session.logout().expect("LOGOUT");
            Ok(())
        }
        Err((imap::Error::No(_), _)) => Err(bearer.take_refusal()),
        Err((error, _)) => panic!("{} over IMAP: {error}", mechanism.name()),
    }
}

fn read_line(reader: &mut BufReader<Tls>) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).expect("a reply line");
    line.trim_end().to_owned()
}

fn send(reader: &mut BufReader<Tls>, line: &str) {
    let stream = reader.get_mut();
    stream.write_all(format!("{line}\r\n").as_bytes()).expect("write");
    stream.flush().expect("flush");
}

/// POP3S (RFC 5034): AUTH <mechanism>, the response after `+ `; the final status line.
fn pop3_login(servers: &MailServers, mechanism: BearerMechanism, user: &str, token: &str) -> String {
    let mut reader = BufReader::new(tls(servers, servers.pop3s));
    assert!(read_line(&mut reader).starts_with("+OK"));
    send(&mut reader, &format!("AUTH {}", mechanism.name()));
    assert_eq!(read_line(&mut reader), "+");
    send(&mut reader, &mechanism.encoded_client_response(user, token, "localhost", servers.pop3s).unwrap());
    let mut reply = read_line(&mut reader);
    if let Some(challenge) = reply.strip_prefix("+ ") {
        assert!(parse_refusal(challenge).is_some(), "a refusal challenge: {reply}");
        send(&mut reader, mechanism.encoded_response_to_refusal());
        reply = read_line(&mut reader);
    }
    reply
}

#[test]
fn dovecot_accepts_issued_tokens_by_xoauth2_and_oauthbearer_and_refuses_revoked_ones() {
    let servers = MailServers::start_with_oauth2();
    let tokens = servers.token_service.as_ref().expect("a token service");
    let user = "alice@example.test";
    for mechanism in [BearerMechanism::Xoauth2, BearerMechanism::Oauthbearer] {
        let token = tokens.issue(user);
        assert_eq!(imap_login(&servers, mechanism, user, &token), Ok(()), "{mechanism:?} over IMAP");
        assert!(pop3_login(&servers, mechanism, user, &token).starts_with("+OK"), "{mechanism:?} over POP3");

        // Another user's token does not open alice's mailbox.
        let bobs = tokens.issue("bob@example.test");
        assert!(imap_login(&servers, mechanism, user, &bobs).is_err(), "{mechanism:?}: bob's token for alice");

        tokens.revoke(&token);
        let refusal = imap_login(&servers, mechanism, user, &token).expect_err("a revoked token");
        assert!(refusal.is_some(), "{mechanism:?}: the refusal challenge is read");
        assert!(pop3_login(&servers, mechanism, user, &token).starts_with("-ERR"), "{mechanism:?} over POP3");
    }
    assert!(tokens.introspections() >= 8, "Dovecot asked the token service each time");
    // Passwords still work next to tokens.
    let mut session = servers.imap_session(user);
    session.logout().unwrap();
}
