//! The harness's own mail servers, proven end to end: a message sent over
//! SMTP (STARTTLS and implicit TLS, with AUTH) arrives in Dovecot and is read
//! back over IMAP (implicit TLS and STARTTLS) and POP3 (implicit TLS and STLS),
//! every TLS connection verified against the per-run CA.
// Run by `make test-integration`; `cargo pgrx test` (feature pg_test) runs only the #[pg_test]s.
#![cfg(not(feature = "pg_test"))]

mod harness;

use harness::{wait_until, MailServers};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Message, SmtpTransport, Transport};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn smtp(servers: &MailServers, port: u16, tls: fn(TlsParameters) -> Tls, user: &str) -> SmtpTransport {
    let ca = Certificate::from_pem(servers.ca_pem().as_bytes()).unwrap();
    let parameters = TlsParameters::builder("localhost".to_owned()).add_root_certificate(ca).build_native().unwrap();
    let user = servers.user(user);
    SmtpTransport::builder_dangerous("localhost")
        .port(port)
        .tls(tls(parameters))
        .credentials(Credentials::new(user.address.clone(), user.password.clone()))
        .timeout(Some(Duration::from_secs(10)))
        .build()
}

fn message(from: &str, to: &[&str], subject: &str) -> Message {
    let mut builder = Message::builder().from(from.parse::<Mailbox>().unwrap()).subject(subject);
    for recipient in to {
        builder = builder.to(recipient.parse().unwrap());
    }
    builder.body(format!("Body of {subject}\r\n")).unwrap()
}

/// Subjects in a mailbox's INBOX, read over IMAPS.
fn imaps_subjects(servers: &MailServers, address: &str) -> Vec<String> {
    let mut session = servers.imap_session(address);
    let mut subjects = Vec::new();
    if session.examine("INBOX").unwrap().exists > 0 {
        for fetch in session.fetch("1:*", "ENVELOPE").unwrap().iter() {
            let envelope = fetch.envelope().unwrap();
            subjects.push(String::from_utf8_lossy(envelope.subject.as_deref().unwrap_or_default()).into_owned());
        }
    }
    session.logout().unwrap();
    subjects.sort();
    subjects
}

/// Messages in INBOX, counted over IMAP upgraded with STARTTLS.
fn imap_starttls_count(servers: &MailServers, address: &str) -> u32 {
    let mut tcp = TcpStream::connect(("127.0.0.1", servers.imap)).unwrap();
    let mut reader = BufReader::new(tcp.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("* OK"), "greeting {line:?}");
    tcp.write_all(b"a STARTTLS\r\n").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("a OK"), "STARTTLS answer {line:?}");
    let tls = servers.tls_connector().connect("localhost", tcp).unwrap();
    // After STARTTLS there is no second greeting: log in straight away.
    let user = servers.user(address);
    let mut session = imap::Client::new(tls).login(&user.address, &user.password).map_err(|(error, _)| error).unwrap();
    let count = session.examine("INBOX").unwrap().exists;
    session.logout().unwrap();
    count
}

/// A minimal POP3 exchange over an already-open stream: log in, count, fetch #1.
fn pop3_first_message<S: Read + Write>(stream: S, user: &harness::MailUser, greeting_read: bool) -> (usize, String) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if !greeting_read {
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("+OK"), "greeting {line:?}");
    }
    let command = |reader: &mut BufReader<S>, text: String| -> String {
        reader.get_mut().write_all(text.as_bytes()).unwrap();
        let mut answer = String::new();
        reader.read_line(&mut answer).unwrap();
        assert!(answer.starts_with("+OK"), "{} answered {answer:?}", text.split(' ').next().unwrap());
        answer
    };
    command(&mut reader, format!("USER {}\r\n", user.address));
    command(&mut reader, format!("PASS {}\r\n", user.password));
    let stat = command(&mut reader, "STAT\r\n".to_owned());
    let count: usize = stat.split_whitespace().nth(1).unwrap().parse().unwrap();
    command(&mut reader, "RETR 1\r\n".to_owned());
    let mut body = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == ".\r\n" {
            break;
        }
        body.push_str(&line);
    }
    command(&mut reader, "QUIT\r\n".to_owned());
    (count, body)
}

#[test]
fn smtp_delivers_into_mailboxes_read_back_over_imap_and_pop3() {
    let servers = MailServers::start();

    smtp(&servers, servers.smtp, Tls::Required, "alice@example.test")
        .send(&message("alice@example.test", &["bob@example.test", "carol@example.test"], "over STARTTLS"))
        .unwrap();
    smtp(&servers, servers.smtps, Tls::Wrapper, "alice@example.test")
        .send(&message("alice@example.test", &["bob@example.test"], "over implicit TLS"))
        .unwrap();

    let subjects = wait_until("both messages to reach bob over IMAPS", Duration::from_secs(30), || {
        let subjects = imaps_subjects(&servers, "bob@example.test");
        (subjects.len() == 2).then_some(subjects)
    });
    assert_eq!(subjects, ["over STARTTLS", "over implicit TLS"]);
    assert_eq!(imap_starttls_count(&servers, "bob@example.test"), 2);

    // carol reads hers over POP3S, then over POP3 with STLS.
    wait_until("the message to reach carol", Duration::from_secs(30), || {
        (imaps_subjects(&servers, "carol@example.test").len() == 1).then_some(())
    });
    let tcp = TcpStream::connect(("127.0.0.1", servers.pop3s)).unwrap();
    let tls = servers.tls_connector().connect("localhost", tcp).unwrap();
    let (count, body) = pop3_first_message(tls, servers.user("carol@example.test"), false);
    assert_eq!(count, 1);
    assert!(body.contains("Subject: over STARTTLS"), "{body}");
    assert!(body.contains("Body of over STARTTLS"), "{body}");

    let mut tcp = TcpStream::connect(("127.0.0.1", servers.pop3)).unwrap();
    let mut reader = BufReader::new(tcp.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    tcp.write_all(b"STLS\r\n").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("+OK"), "STLS answered {line:?}");
    let tls = servers.tls_connector().connect("localhost", tcp).unwrap();
    let (count, _) = pop3_first_message(tls, servers.user("carol@example.test"), true);
    assert_eq!(count, 1);
}

#[test]
fn smtp_rejects_wrong_passwords_unknown_recipients_and_untrusted_certificates() {
    let servers = MailServers::start();
    let ca = Certificate::from_pem(servers.ca_pem().as_bytes()).unwrap();
    let parameters = TlsParameters::builder("localhost".to_owned()).add_root_certificate(ca).build_native().unwrap();
    let wrong_password = SmtpTransport::builder_dangerous("localhost")
        .port(servers.smtp)
        .tls(Tls::Required(parameters))
        .credentials(Credentials::new("alice@example.test".to_owned(), "wrong".to_owned()))
        .timeout(Some(Duration::from_secs(10)))
        .build();
    let error = wrong_password.send(&message("alice@example.test", &["bob@example.test"], "x")).unwrap_err();
    assert!(error.is_permanent(), "{error}");
    assert!(error.to_string().contains("authentication failed"), "{error}");

    let error = smtp(&servers, servers.smtp, Tls::Required, "alice@example.test")
        .send(&message("alice@example.test", &["nobody@example.test"], "x"))
        .unwrap_err();
    assert!(error.to_string().contains("User unknown"), "{error}");

    // Without the per-run CA the server's certificate is not trusted.
    let untrusted = SmtpTransport::builder_dangerous("localhost")
        .port(servers.smtps)
        .tls(Tls::Wrapper(TlsParameters::new_native("localhost".to_owned()).unwrap()))
        .timeout(Some(Duration::from_secs(10)))
        .build();
    let error = untrusted.send(&message("alice@example.test", &["bob@example.test"], "x")).unwrap_err();
    assert!(error.to_string().to_lowercase().contains("certificate"), "{error}");
}

/// The mail core's own composer and SMTP client through the real Postfix:
/// To and Cc and Bcc all receive it, Bcc is in no header, an unknown
/// recipient is rejected on its own with the server's words.
#[test]
fn composed_message_reaches_every_recipient_and_unknown_ones_are_rejected_alone() {
    use email_accounts_mail::compose::{compose, OutgoingMessage};
    use email_accounts_mail::connection::{Endpoint, Login, Security};
    use email_accounts_mail::smtp_client::{self, RecipientOutcome};

    let servers = MailServers::start();
    let alice = servers.user("alice@example.test");
    let message = OutgoingMessage {
        message_id: "<composed-1@example.test>".to_owned(),
        from: "Alice <alice@example.test>".to_owned(),
        to: vec!["bob@example.test".to_owned(), "nobody@example.test".to_owned()],
        cc: vec!["carol@example.test".to_owned()],
        bcc: vec!["dave@other.test".to_owned()],
        subject: "composed by email_accounts".to_owned(),
        text_body: Some("Line one\n.line starting with a dot\n".to_owned()),
        ..OutgoingMessage::default()
    };
    let composed = compose(&message).unwrap();
    let endpoint = Endpoint {
        host: "localhost".to_owned(),
        port: servers.smtp,
        security: Security::Starttls,
        extra_ca_pem: Some(servers.ca_pem()),
        timeout: Duration::from_secs(10),
    };
    let login = Login::with_password(alice.address.clone(), alice.password.clone(), false);
    let (mut client, _) = smtp_client::connect(&endpoint, Some(&login)).unwrap();
    let delivery = client.send(&composed.envelope_from, &composed.recipients, &composed.bytes).unwrap();
    client.quit();

    let outcomes: Vec<(String, bool)> = delivery
        .recipients
        .iter()
        .map(|(address, outcome)| (address.to_string(), *outcome == RecipientOutcome::Accepted))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("bob@example.test".to_owned(), true),
            ("nobody@example.test".to_owned(), false),
            ("carol@example.test".to_owned(), true),
            ("dave@other.test".to_owned(), true)
        ]
    );
    match &delivery.recipients[1].1 {
        RecipientOutcome::Rejected(text) => assert!(text.starts_with("550") && text.contains("User unknown"), "{text}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(&delivery.data, Some(Ok(reply)) if reply.starts_with("250")), "{:?}", delivery.data);

    for reader in ["bob@example.test", "carol@example.test", "dave@other.test"] {
        let body = wait_until("the message in every mailbox", Duration::from_secs(30), || {
            servers.mailbox(reader).into_iter().next()
        });
        assert!(body.contains("Message-ID: <composed-1@example.test>"), "{body}");
        assert!(body.contains("\r\n.line starting with a dot\r\n"), "dot-stuffing undone by the server: {body}");
        assert!(!body.to_lowercase().contains("\r\nbcc:"), "no Bcc header: {body}");
        if reader != "dave@other.test" {
            // Dave's own copy names him in Postfix's Delivered-To; no other copy may.
            assert!(!body.contains("dave@other.test"), "the Bcc recipient leaks: {body}");
        }
    }
}
