//! An SMTP client connection: lettre's protocol pieces (commands, response
//! parser, EHLO parsing, AUTH mechanisms) over our own socket layer.
//!
//! Why not lettre's `SmtpConnection`: in lettre 0.11.23 (1) the implicit-TLS
//! handshake runs before any read timeout is set, so a server that accepts
//! and stays silent blocks the caller forever (found by this crate's
//! integration test); (2) TCP_NODELAY is never set and the DATA terminator is
//! a separate write, which stalls each message ~40 ms on delayed ACKs. Our
//! `connection` module sets timeouts before TLS and sets TCP_NODELAY.

use crate::connection::{
    check_plaintext, connect_tcp, start_tls, ConnectionError, Credential, Endpoint, Login, MailStream, Security,
};
use crate::sasl;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::commands::{Auth, Data, Ehlo, Mail, Quit, Rcpt, Rset, Starttls};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter, ServerInfo};
use lettre::transport::smtp::response::{Response, Severity};
use lettre::Address;
use std::fmt::Display;
use std::io::{BufRead, BufReader, Read, Write};

/// Longest reply line we accept (RFC 5321 allows 512 bytes).
const LONGEST_LINE: u64 = 64 * 1024;

/// What the server said before we logged in.
#[derive(Debug, Clone, Default)]
pub struct SmtpHello {
    /// The 220 banner.
    pub greeting: String,
    /// Extensions we use that the server offers after EHLO (and STARTTLS).
    pub capabilities: Vec<String>,
    /// The SASL mechanism we logged in with, if we logged in.
    pub mechanism: Option<&'static str>,
}

/// An open, possibly authenticated SMTP connection.
pub struct SmtpClient {
    stream: BufReader<MailStream>,
    server_info: ServerInfo,
    hello_name: ClientId,
    /// The server offers PIPELINING (RFC 2920); lettre's EHLO parser drops it.
    pipelining: bool,
    /// The SASL mechanisms of the EHLO AUTH line, upper case (lettre's
    /// parser keeps only those it implements, OAUTHBEARER is not among them).
    auth_mechanisms: Vec<String>,
    /// Host name and port, as OAUTHBEARER names them.
    server: (String, u16),
    /// The server answered 421 (it is closing the connection), or ending a
    /// transaction without a message failed: not to be used again.
    closing: bool,
    /// The envelope (MAIL FROM, RCPT TO, DATA) of the next message, written
    /// after the last message's content and not yet answered (`send_ahead`).
    envelope_ahead: Option<String>,
}

/// One message as the server gets it: envelope and content.
#[derive(Clone, Copy)]
pub struct Outgoing<'a> {
    pub from: &'a Address,
    pub recipients: &'a [Address],
    pub message: &'a [u8],
}

impl SmtpClient {
    /// Sends one command (lettre's commands end with CRLF) and reads the reply.
    pub fn command(&mut self, command: impl Display, during: &str) -> Result<Response, ConnectionError> {
        self.write(command.to_string().as_bytes(), during)?;
        self.reply(during)
    }

    /// Writes and flushes: nothing waits in a buffer while we wait for a reply.
    fn write(&mut self, bytes: &[u8], during: &str) -> Result<(), ConnectionError> {
        let stream = self.stream.get_mut();
        stream.write_all(bytes).map_err(|error| ConnectionError::from_io(&error, during))?;
        stream.flush().map_err(|error| ConnectionError::from_io(&error, during))
    }

    /// Reads one reply, noting a 421 (the server closes the connection after it).
    fn reply(&mut self, during: &str) -> Result<Response, ConnectionError> {
        let response = read_response(&mut self.stream, during)?;
        if response.has_code(421) {
            self.closing = true;
        }
        Ok(response)
    }

    pub fn server_info(&self) -> &ServerInfo {
        &self.server_info
    }

    pub fn is_encrypted(&self) -> bool {
        self.stream.get_ref().is_encrypted()
    }

    /// The server said 421 (service closing), or ending a transaction
    /// without a message failed: do not use this connection again.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// The next message's envelope is on the wire, unanswered: only that
    /// message may be sent next on this connection; if it is not, the
    /// connection is to be dropped (which ends the server's transaction
    /// without a message), never pooled.
    pub fn has_envelope_ahead(&self) -> bool {
        self.envelope_ahead.is_some()
    }

    /// QUIT, ignoring what the server does next.
    pub fn quit(mut self) {
        let _ = self.command(Quit, "quitting");
    }

    fn ehlo(&mut self) -> Result<(), ConnectionError> {
        let response = self.command(Ehlo::new(self.hello_name.clone()), "saying EHLO")?;
        expect_positive(&response, "EHLO")?;
        self.pipelining = response.message().skip(1).any(|line| line.trim().eq_ignore_ascii_case("PIPELINING"));
        self.auth_mechanisms = response
            .message()
            .skip(1)
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                words.next().filter(|word| word.eq_ignore_ascii_case("AUTH")).map(|_| words)
            })
            .flatten()
            .map(str::to_ascii_uppercase)
            .collect();
        self.server_info = ServerInfo::from_response(&response)
            .map_err(|error| ConnectionError::Protocol(format!("EHLO answer: {error}")))?;
        Ok(())
    }

    /// Logs in; returns the SASL mechanism used.
    fn authenticate(&mut self, login: &Login) -> Result<&'static str, ConnectionError> {
        let password = match &login.credential {
            Credential::Password(password) => password,
            Credential::AccessToken(token) => return self.authenticate_with_token(&login.user, token),
        };
        let mechanism = self
            .server_info
            .get_auth_mechanism(&[Mechanism::Plain, Mechanism::Login])
            .ok_or_else(|| ConnectionError::Auth("the server offers neither AUTH PLAIN nor AUTH LOGIN".to_owned()))?;
        let credentials = Credentials::new(login.user.clone(), password.clone());
        let auth_error = |error: lettre::transport::smtp::Error| ConnectionError::Auth(error.to_string());
        let mut response =
            self.command(Auth::new(mechanism, credentials.clone(), None).map_err(auth_error)?, "authenticating")?;
        for _ in 0..10 {
            if !response.has_code(334) {
                break;
            }
            let next = Auth::new_from_response(mechanism, credentials.clone(), &response).map_err(auth_error)?;
            response = self.command(next, "authenticating")?;
        }
        if response.is_positive() {
            Ok(if mechanism == Mechanism::Plain { "PLAIN" } else { "LOGIN" })
        } else {
            Err(ConnectionError::Auth(reply_text(&response)))
        }
    }

    /// AUTH XOAUTH2 / OAUTHBEARER with the response on the AUTH line (RFC
    /// 4954's initial response). A refusal comes as a 334 challenge holding
    /// the reason (RFC 7628 §3.2.2), answered so the server ends the exchange.
    fn authenticate_with_token(&mut self, user: &str, token: &str) -> Result<&'static str, ConnectionError> {
        let mechanism = sasl::choose(self.auth_mechanisms.iter().map(String::as_str), None).ok_or_else(|| {
            ConnectionError::TokenRefused(format!(
                "the server offers neither AUTH XOAUTH2 nor AUTH OAUTHBEARER (it offers: {})",
                self.auth_mechanisms.join(" ")
            ))
        })?;
        let encoded = mechanism
            .encoded_client_response(user, token, &self.server.0, self.server.1)
            .map_err(|error| ConnectionError::TokenRefused(error.to_string()))?;
        let mut response = self.command(format!("AUTH {} {encoded}\r\n", mechanism.name()), "authenticating")?;
        let mut refusal = None;
        if response.has_code(334) {
            refusal = sasl::parse_refusal(&response.message().collect::<Vec<_>>().join(""));
            response = self.command(format!("{}\r\n", mechanism.encoded_response_to_refusal()), "authenticating")?;
        }
        if response.is_positive() {
            return Ok(mechanism.name());
        }
        let reason = match refusal {
            Some(refusal) => format!("{} ({refusal})", reply_text(&response)),
            None => reply_text(&response),
        };
        Err(ConnectionError::TokenRefused(reason))
    }
}

/// Reads one (possibly multi-line) reply.
fn read_response(stream: &mut BufReader<MailStream>, during: &str) -> Result<Response, ConnectionError> {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        let read = stream
            .by_ref()
            .take(LONGEST_LINE)
            .read_line(&mut line)
            .map_err(|error| ConnectionError::from_io(&error, during))?;
        if read == 0 {
            return Err(ConnectionError::Protocol(format!("the server closed the connection {during}")));
        }
        if !line.ends_with("\r\n") {
            return Err(ConnectionError::Protocol(format!("a malformed reply line {during}: {line:?}")));
        }
        text.push_str(&line);
        // The last line of a reply has a space (or nothing) after the code.
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            break;
        }
    }
    text.parse::<Response>()
        .map_err(|_| ConnectionError::Protocol(format!("unparsable reply {during}: {:?}", text.trim_end())))
}

/// The reply as the server wrote it: code and text.
pub fn reply_text(response: &Response) -> String {
    let lines: Vec<&str> = response.message().collect();
    format!("{} {}", response.code(), lines.join(" "))
}

fn expect_positive(response: &Response, what: &str) -> Result<(), ConnectionError> {
    if response.is_positive() {
        Ok(())
    } else {
        Err(ConnectionError::Protocol(format!("{what} answered {}", reply_text(response))))
    }
}

/// Connects, secures and (when `login` is given) authenticates.
pub fn connect(endpoint: &Endpoint, login: Option<&Login>) -> Result<(SmtpClient, SmtpHello), ConnectionError> {
    let tcp = connect_tcp(endpoint)?;
    let stream = match endpoint.security {
        Security::Ssl => MailStream::Tls(Box::new(start_tls(endpoint, tcp)?)),
        Security::Starttls | Security::None => MailStream::Plain(tcp),
    };
    let mut client = SmtpClient {
        stream: BufReader::new(stream),
        server_info: ServerInfo::default(),
        hello_name: ClientId::default(),
        pipelining: false,
        auth_mechanisms: Vec::new(),
        server: (endpoint.host.clone(), endpoint.port),
        closing: false,
        envelope_ahead: None,
    };
    let banner = read_response(&mut client.stream, "reading the greeting")?;
    expect_positive(&banner, "the greeting")?;
    client.ehlo()?;
    if endpoint.security == Security::Starttls {
        if !client.server_info.supports_feature(Extension::StartTls) {
            return Err(ConnectionError::Tls("the server does not offer STARTTLS".to_owned()));
        }
        let response = client.command(Starttls, "starting TLS")?;
        if !response.is_positive() {
            return Err(ConnectionError::Tls(format!("the server refused STARTTLS: {}", reply_text(&response))));
        }
        let MailStream::Plain(tcp) = client.stream.into_inner() else { unreachable!("STARTTLS on a plain stream") };
        client.stream = BufReader::new(MailStream::Tls(Box::new(start_tls(endpoint, tcp)?)));
        client.ehlo()?;
    }
    let mut hello = SmtpHello {
        greeting: reply_text(&banner),
        capabilities: capabilities(&client.server_info, &client.auth_mechanisms),
        mechanism: None,
    };
    if let Some(login) = login {
        check_plaintext(client.is_encrypted(), login)?;
        hello.mechanism = Some(client.authenticate(login)?);
    }
    Ok((client, hello))
}

/// The extensions lettre's EHLO parser knows (it keeps no others), and every AUTH mechanism offered.
fn capabilities(info: &ServerInfo, auth_mechanisms: &[String]) -> Vec<String> {
    let extensions = [
        (Extension::StartTls, "STARTTLS"),
        (Extension::EightBitMime, "8BITMIME"),
        (Extension::SmtpUtfEight, "SMTPUTF8"),
    ];
    extensions
        .into_iter()
        .filter(|(extension, _)| info.supports_feature(*extension))
        .map(|(_, name)| name.to_owned())
        .chain(auth_mechanisms.iter().map(|mechanism| format!("AUTH={mechanism}")))
        .collect()
}

/// What the server said about one recipient (RCPT TO).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientOutcome {
    Accepted,
    /// 4xx: try this recipient again later.
    Deferred(String),
    /// 5xx: this recipient will never accept this message.
    Rejected(String),
}

/// The result of one message transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// One outcome per recipient, in the order given.
    pub recipients: Vec<(Address, RecipientOutcome)>,
    /// The reply to the end of DATA when at least one recipient was accepted:
    /// `Ok(reply)` for 2xx, `Err(Deferred | Rejected)` otherwise.
    pub data: Option<Result<String, RecipientOutcome>>,
}

/// A 2xx: what MAIL FROM, RCPT TO, the end of data and RSET must get
/// (lettre's `is_positive` also counts 3xx, which no server says to them
/// but a broken or hostile one).
fn completed(response: &Response) -> bool {
    response.code().severity == Severity::PositiveCompletion
}

/// 2xx accepted, 5xx rejected; 4xx, and an answer that makes no sense at
/// this step (3xx), deferred: tried again later.
fn outcome(response: &Response) -> RecipientOutcome {
    match response.code().severity {
        Severity::PositiveCompletion => RecipientOutcome::Accepted,
        Severity::PermanentNegativeCompletion => RecipientOutcome::Rejected(reply_text(response)),
        Severity::TransientNegativeCompletion | Severity::PositiveIntermediate => {
            RecipientOutcome::Deferred(reply_text(response))
        }
    }
}

impl SmtpClient {
    /// One message transaction: MAIL FROM, RCPT TO per recipient, DATA. A
    /// refused MAIL FROM defers or rejects every recipient. The message is
    /// dot-stuffed and written with its terminator in one write.
    pub fn send(
        &mut self,
        from: &Address,
        recipients: &[Address],
        message: &[u8],
    ) -> Result<Delivery, ConnectionError> {
        self.send_ahead(Outgoing { from, recipients, message }, || None)
    }

    /// `send`, and when the server pipelines, the envelope of the message
    /// `next` gives goes out in the same write as this message's content
    /// (RFC 2920 allows content first in a group): the server answers the
    /// end of this message and the next envelope together, one round trip a
    /// message instead of two. `next` is asked only then, when the content is
    /// written (`None`: nothing follows, or no message may start now). The
    /// next call must send that message; a message with another envelope is
    /// refused with `Protocol` (the connection must then be dropped). Until
    /// that call the connection has an envelope ahead: dropping it ends the
    /// server's transaction without a message.
    pub fn send_ahead<'next>(
        &mut self,
        outgoing: Outgoing,
        next: impl FnOnce() -> Option<Outgoing<'next>>,
    ) -> Result<Delivery, ConnectionError> {
        let Outgoing { recipients, message, .. } = outgoing;
        let (mail, mut results, go_ahead) = if self.pipelining {
            let group = self.envelope_group(&outgoing);
            match self.envelope_ahead.as_deref() {
                None => self.write(group.as_bytes(), "sending the envelope")?,
                Some(ahead) if ahead == group => self.envelope_ahead = None,
                // (Left as it is: the connection still has that envelope ahead.)
                Some(_) => {
                    return Err(ConnectionError::Protocol(
                        "the envelope sent ahead on this connection is another message's".to_owned(),
                    ))
                }
            }
            self.envelope_replies(recipients)?
        } else {
            let (mail, rcpts) = self.envelope_commands(&outgoing);
            self.envelope_one_by_one(mail, rcpts, recipients)?
        };
        if self.closing && !results.is_empty() {
            // A 421 to a RCPT TO: the server hung up before answering for the rest.
            let closing = results[results.len() - 1].1.clone();
            results.extend(recipients[results.len()..].iter().map(|to| (to.clone(), closing.clone())));
        }
        let any_accepted = completed(&mail) && results.iter().any(|(_, result)| *result == RecipientOutcome::Accepted);
        if !any_accepted && go_ahead.as_ref().is_some_and(|reply| reply.has_code(354)) {
            // A server that says 354 to a refused envelope: end the empty message, which goes nowhere.
            let ended = self.command(".\r\n", "ending the empty message");
            self.closing |= ended.is_err();
        }
        if !completed(&mail) {
            let refusal = outcome(&mail);
            return Ok(Delivery {
                recipients: recipients.iter().map(|to| (to.clone(), refusal.clone())).collect(),
                data: None,
            });
        }
        let Some(go_ahead) = go_ahead.filter(|_| any_accepted) else {
            // No recipient took it: nothing to send; start the next transaction
            // clean. (The answers read stand whatever RSET does: a connection
            // that cannot reset is not used again.)
            if !self.closing {
                let reset = self.command(Rset, "resetting");
                self.closing |= !reset.is_ok_and(|reply| completed(&reply));
            }
            return Ok(Delivery { recipients: results, data: None });
        };
        if !go_ahead.has_code(354) {
            return Ok(Delivery { recipients: results, data: Some(Err(outcome(&go_ahead))) });
        }
        let mut payload = dot_stuff(message);
        let ahead = if self.pipelining { next().map(|next| self.envelope_group(&next)) } else { None };
        if let Some(ahead) = &ahead {
            payload.extend_from_slice(ahead.as_bytes());
        }
        self.write(&payload, "sending the message")?;
        self.envelope_ahead = ahead;
        let end = self.reply("waiting for the end-of-data reply")?;
        let data = if completed(&end) { Ok(reply_text(&end)) } else { Err(outcome(&end)) };
        Ok(Delivery { recipients: results, data: Some(data) })
    }

    /// MAIL FROM (8BITMIME when the content needs it and the server takes
    /// it) and one RCPT TO per recipient.
    fn envelope_commands<'a>(&self, outgoing: &Outgoing<'a>) -> (Mail, impl Iterator<Item = Rcpt> + 'a) {
        let mut parameters = Vec::new();
        if !outgoing.message.is_ascii() && self.server_info.supports_feature(Extension::EightBitMime) {
            parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        let mail = Mail::new(Some(outgoing.from.clone()), parameters);
        (mail, outgoing.recipients.iter().map(|recipient| Rcpt::new(recipient.clone(), Vec::new())))
    }

    /// MAIL FROM, every RCPT TO and DATA, as one pipelined group.
    fn envelope_group(&self, outgoing: &Outgoing) -> String {
        let (mail, rcpts) = self.envelope_commands(outgoing);
        let mut group = mail.to_string();
        for rcpt in rcpts {
            group.push_str(&rcpt.to_string());
        }
        group.push_str(&Data.to_string());
        group
    }
}

/// The replies to MAIL FROM, to each RCPT TO sent, and to DATA (`None`
/// when DATA was not sent). After a 421 the replies still due never come.
type Envelope = (Response, Vec<(Address, RecipientOutcome)>, Option<Response>);

impl SmtpClient {
    /// The replies to a pipelined envelope (written by the caller, or ahead
    /// with the last message), in order (RFC 2920): one round trip instead
    /// of two plus one per recipient.
    fn envelope_replies(&mut self, recipients: &[Address]) -> Result<Envelope, ConnectionError> {
        let mail = self.reply("waiting for the MAIL FROM reply")?;
        let mut results = Vec::with_capacity(recipients.len());
        for recipient in recipients {
            if self.closing {
                return Ok((mail, results, None));
            }
            let reply = self.reply("waiting for a RCPT TO reply")?;
            results.push((recipient.clone(), outcome(&reply)));
        }
        if self.closing {
            return Ok((mail, results, None));
        }
        let go_ahead = self.reply("waiting for the DATA reply")?;
        Ok((mail, results, Some(go_ahead)))
    }

    /// The same one command at a time, for servers without PIPELINING: no
    /// RCPT TO after a refused MAIL FROM, no DATA when no recipient was accepted.
    fn envelope_one_by_one(
        &mut self,
        mail: Mail,
        rcpts: impl Iterator<Item = Rcpt>,
        recipients: &[Address],
    ) -> Result<Envelope, ConnectionError> {
        let mail = self.command(mail, "sending MAIL FROM")?;
        let mut results = Vec::with_capacity(recipients.len());
        if !completed(&mail) {
            return Ok((mail, results, None));
        }
        for (recipient, rcpt) in recipients.iter().zip(rcpts) {
            let reply = self.command(rcpt, "sending RCPT TO")?;
            results.push((recipient.clone(), outcome(&reply)));
            if self.closing {
                return Ok((mail, results, None));
            }
        }
        if !results.iter().any(|(_, result)| *result == RecipientOutcome::Accepted) {
            return Ok((mail, results, None));
        }
        let go_ahead = self.command(Data, "sending DATA")?;
        Ok((mail, results, Some(go_ahead)))
    }
}

/// The DATA payload: lines starting with '.' get another '.', bare LF
/// becomes CRLF, and the terminator is appended, so it goes out in one write.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(message.len() + message.len() / 64 + 5);
    // Line by line, each copied whole (byte by byte it was 1 % of a drain's CPU).
    let mut lines = message.split(|&byte| byte == b'\n').peekable();
    while let Some(line) = lines.next() {
        if line.first() == Some(&b'.') {
            payload.push(b'.');
        }
        payload.extend_from_slice(line);
        if lines.peek().is_some() {
            if line.last() != Some(&b'\r') {
                payload.push(b'\r');
            }
            payload.push(b'\n');
        }
    }
    if !payload.ends_with(b"\r\n") {
        payload.extend_from_slice(b"\r\n");
    }
    payload.extend_from_slice(b".\r\n");
    payload
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::{Endpoint, Security};
    use crate::scripted_server::scripted_server;
    use std::time::Duration;

    fn client_of(port: u16) -> SmtpClient {
        let endpoint = Endpoint {
            host: "127.0.0.1".to_owned(),
            port,
            security: Security::None,
            extra_ca_pem: None,
            timeout: Duration::from_secs(5),
        };
        connect(&endpoint, None).unwrap().0
    }

    fn address(text: &str) -> Address {
        text.parse().unwrap()
    }

    #[test]
    fn the_next_envelope_goes_out_with_the_content_and_each_reply_reaches_its_message() {
        // The server answers the first message's content only once the second
        // envelope has arrived: a client that waited for that answer first
        // would never get it.
        let (port, server) = scripted_server(vec![
            (1, 0, "250-scripted\r\n250 PIPELINING"),
            (3, 0, "250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead"),
            (4 + 4, 0, "250 2.0.0 queued one\r\n250 2.1.0 ok\r\n550 5.1.1 unknown\r\n250 2.1.5 ok\r\n354 go ahead"),
            (4, 0, "250 2.0.0 queued two"),
        ]);
        let mut client = client_of(port);
        let from = address("a@example.test");
        let first_to = [address("b@example.test")];
        let second_to = [address("nobody@example.test"), address("c@example.test")];
        let first = Outgoing { from: &from, recipients: &first_to, message: b"Subject: one\r\n\r\nbody\r\n" };
        let second = Outgoing { from: &from, recipients: &second_to, message: b"Subject: two\r\n\r\nbody\r\n" };

        let delivery = client.send_ahead(first, || Some(second)).unwrap();
        assert_eq!(delivery.recipients, [(first_to[0].clone(), RecipientOutcome::Accepted)]);
        assert_eq!(delivery.data, Some(Ok("250 2.0.0 queued one".to_owned())));
        assert!(client.has_envelope_ahead());

        let delivery = client.send_ahead(second, || None).unwrap();
        assert_eq!(
            delivery.recipients,
            [
                (second_to[0].clone(), RecipientOutcome::Rejected("550 5.1.1 unknown".to_owned())),
                (second_to[1].clone(), RecipientOutcome::Accepted)
            ]
        );
        assert_eq!(delivery.data, Some(Ok("250 2.0.0 queued two".to_owned())));
        assert!(!client.has_envelope_ahead());
        drop(client);
        let read = server.join().unwrap();
        assert_eq!(
            read[1..],
            [
                "MAIL FROM:<a@example.test>",
                "RCPT TO:<b@example.test>",
                "DATA",
                "Subject: one",
                "",
                "body",
                ".",
                "MAIL FROM:<a@example.test>",
                "RCPT TO:<nobody@example.test>",
                "RCPT TO:<c@example.test>",
                "DATA",
                "Subject: two",
                "",
                "body",
                "."
            ]
        );
    }

    #[test]
    fn only_the_message_whose_envelope_went_ahead_may_follow() {
        let (port, server) = scripted_server(vec![
            (1, 0, "250-scripted\r\n250 PIPELINING"),
            (3, 0, "250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead"),
            (2 + 3, 0, "250 2.0.0 queued one\r\n250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead"),
        ]);
        let mut client = client_of(port);
        let from = address("a@example.test");
        let to = [address("b@example.test")];
        let other_to = [address("c@example.test")];
        let first = Outgoing { from: &from, recipients: &to, message: b"one\r\n" };
        let announced = Outgoing { from: &from, recipients: &to, message: b"two\r\n" };
        let another = Outgoing { from: &from, recipients: &other_to, message: b"three\r\n" };
        client.send_ahead(first, || Some(announced)).unwrap();
        let error = client.send_ahead(another, || None).unwrap_err();
        assert!(matches!(&error, ConnectionError::Protocol(text) if text.contains("another message's")), "{error}");
        assert!(client.has_envelope_ahead(), "the announced envelope is still unanswered");
        drop(client);
        // Nothing of the other message reached the server (it reads until the client hangs up).
        assert!(!server.join().unwrap().iter().any(|line| line.contains("c@example.test") || line == "three"));
    }

    #[test]
    fn without_pipelining_nothing_goes_ahead() {
        let (port, server) = scripted_server(vec![
            (1, 0, "250 scripted"),
            (1, 0, "250 2.1.0 ok"),
            (1, 0, "250 2.1.5 ok"),
            (1, 0, "354 go ahead"),
            (2, 0, "250 2.0.0 queued one"),
        ]);
        let mut client = client_of(port);
        let from = address("a@example.test");
        let to = [address("b@example.test")];
        let first = Outgoing { from: &from, recipients: &to, message: b"one\r\n" };
        let delivery = client.send_ahead(first, || Some(first)).unwrap();
        assert_eq!(delivery.data, Some(Ok("250 2.0.0 queued one".to_owned())));
        assert!(!client.has_envelope_ahead());
        drop(client);
        // (The server reads until the client hangs up: no envelope followed the content.)
        assert_eq!(server.join().unwrap().len(), 1 + 3 + 2);
    }

    #[test]
    fn the_answers_stand_when_the_reset_after_a_refused_envelope_fails() {
        // Every recipient refused; the server hangs up instead of answering RSET.
        let (port, server) = scripted_server(vec![
            (1, 0, "250-scripted\r\n250 PIPELINING"),
            (3, 0, "250 2.1.0 ok\r\n550 5.1.1 unknown\r\n554 5.5.1 no valid recipients"),
            (1, 0, ""),
        ]);
        let mut client = client_of(port);
        let from = address("a@example.test");
        let nobody = [address("nobody@example.test")];
        let delivery = client.send(&from, &nobody, b"one\r\n").unwrap();
        assert_eq!(
            delivery.recipients,
            [(nobody[0].clone(), RecipientOutcome::Rejected("550 5.1.1 unknown".to_owned()))]
        );
        assert_eq!(delivery.data, None);
        assert!(client.is_closing(), "a connection that could not reset is not used again");
        drop(client);
        assert_eq!(server.join().unwrap().last().map(String::as_str), Some("RSET"));
    }

    #[test]
    fn a_3xx_where_a_2xx_belongs_is_no_acceptance() {
        // 354 to a RCPT TO and to the end of data: neither recipient nor
        // message counts as accepted, both are tried again later.
        let (port, server) = scripted_server(vec![
            (1, 0, "250-scripted\r\n250 PIPELINING"),
            (4, 0, "250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 odd\r\n354 go ahead"),
            (2, 0, "354 odd"),
        ]);
        let mut client = client_of(port);
        let from = address("a@example.test");
        let to = [address("b@example.test"), address("c@example.test")];
        let delivery = client.send(&from, &to, b"one\r\n").unwrap();
        assert_eq!(
            delivery.recipients,
            [
                (to[0].clone(), RecipientOutcome::Accepted),
                (to[1].clone(), RecipientOutcome::Deferred("354 odd".to_owned()))
            ]
        );
        assert_eq!(delivery.data, Some(Err(RecipientOutcome::Deferred("354 odd".to_owned()))));
        drop(client);
        server.join().unwrap();
    }

    #[test]
    fn dot_stuffing_and_terminator() {
        assert_eq!(dot_stuff(b"a\r\n.b\r\n..c\r\n"), b"a\r\n..b\r\n...c\r\n.\r\n");
        assert_eq!(dot_stuff(b".start"), b"..start\r\n.\r\n");
        assert_eq!(dot_stuff(b"bare\nlf\n.x"), b"bare\r\nlf\r\n..x\r\n.\r\n");
        assert_eq!(dot_stuff(b"mid.dle\r\n"), b"mid.dle\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b"\r\n.\r\n");
        assert_eq!(dot_stuff(b"\n\n.\r\n"), b"\r\n\r\n..\r\n.\r\n");
        assert_eq!(dot_stuff(b"end\r"), b"end\r\r\n.\r\n");
    }
}
