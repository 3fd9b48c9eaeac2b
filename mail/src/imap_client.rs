//! Opening a logged-in IMAP session on an endpoint with the `imap` crate:
//! implicit TLS, STARTTLS or plain, verified with the account's extra CA.
//! (The crate's own builder cannot take an extra CA, so the TLS stream is
//! made here and handed to `imap::Client::new`.)

use crate::connection::{
    check_plaintext, connect_tcp, start_tls, ConnectionError, Credential, Endpoint, Login, MailStream, Security,
};
use crate::sasl::{self, BearerMechanism, Refusal};
use imap::extensions::idle::SetReadTimeout;
use std::cell::RefCell;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub type ImapSession = imap::Session<ImapStream>;

/// Bytes read ahead of the reader: one TLS record, the most a read from
/// a TLS stream returns (larger reads of a literal bypass the buffer). Every
/// IDLE connection holds one.
const READ_AHEAD_BYTES: usize = 16 * 1024;

/// The connection under an IMAP session, shared by the `imap` crate and the
/// sync's bulk FETCH (`receive::bulk_fetch`). The crate is given one line
/// per read, so its own buffer never holds bytes past the last response it
/// read: between its commands the connection is free for another reader.
#[derive(Clone)]
pub struct ImapStream(Arc<Mutex<BufReader<MailStream>>>);

impl ImapStream {
    pub(crate) fn new(stream: MailStream) -> ImapStream {
        ImapStream(Arc::new(Mutex::new(BufReader::with_capacity(READ_AHEAD_BYTES, stream))))
    }

    /// The buffered connection, for a reader that knows IMAP's framing.
    pub fn lock(&self) -> MutexGuard<'_, BufReader<MailStream>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for ImapStream {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("ImapStream")
    }
}

impl Read for ImapStream {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let mut connection = self.lock();
        let available = connection.fill_buf()?;
        let line = available.iter().position(|&byte| byte == b'\n').map_or(available.len(), |end| end + 1);
        let count = line.min(buffer.len());
        buffer[..count].copy_from_slice(&available[..count]);
        connection.consume(count);
        Ok(count)
    }
}

impl Write for ImapStream {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        self.lock().get_mut().write(buffer)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.lock().get_mut().flush()
    }
}

/// What the server said before we logged in.
#[derive(Debug, Clone, Default)]
pub struct ImapHello {
    pub greeting: String,
    pub capabilities: Vec<String>,
    /// How we logged in: LOGIN, or the SASL mechanism.
    pub mechanism: &'static str,
}

impl SetReadTimeout for ImapStream {
    /// The `imap` crate asks for no read timeout at all once an IDLE wait
    /// ends: the next IDLE's `+`, its DONE and the logout would then wait
    /// without bound on a connection a NAT dropped silently (about 15
    /// minutes of TCP retransmits, the watcher deaf to its stop flag). No
    /// timeout means the connection's own bound instead, which its write
    /// timeout still holds (`connect_tcp` set both; the crate changes reads only).
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> imap::Result<()> {
        let connection = self.lock();
        let tcp = match connection.get_ref() {
            MailStream::Plain(stream) => stream,
            MailStream::Tls(stream) => stream.get_ref().tcp(),
        };
        let timeout = match timeout {
            Some(timeout) => Some(timeout),
            None => tcp.write_timeout().map_err(imap::Error::Io)?,
        };
        TcpStream::set_read_timeout(tcp, timeout).map_err(imap::Error::Io)
    }
}

/// Connects, secures and logs in.
pub fn connect(endpoint: &Endpoint, login: &Login) -> Result<(ImapSession, ImapHello), ConnectionError> {
    connect_sharing(endpoint, login).map(|(session, hello, _)| (session, hello))
}

/// The same, with the session's connection for a reader of our own.
pub fn connect_sharing(
    endpoint: &Endpoint,
    login: &Login,
) -> Result<(ImapSession, ImapHello, ImapStream), ConnectionError> {
    let tcp = connect_tcp(endpoint)?;
    let (stream, greeting) = match endpoint.security {
        Security::Ssl => (MailStream::Tls(Box::new(start_tls(endpoint, tcp)?)), None),
        Security::Starttls => {
            let greeting = request_starttls(&tcp)?;
            // No second greeting after STARTTLS.
            (MailStream::Tls(Box::new(start_tls(endpoint, tcp)?)), Some(greeting))
        }
        Security::None => (MailStream::Plain(tcp), None),
    };
    let shared = ImapStream::new(stream);
    let mut client = imap::Client::new(shared.clone());
    let greeting = match greeting {
        Some(greeting) => greeting,
        None => client.read_greeting().map_err(|error| classify(error, "reading the greeting"))?,
    };
    let capabilities: Vec<String> = client
        .capabilities()
        .map_err(|error| classify(error, "asking for capabilities"))?
        .iter()
        .map(capability_name)
        .collect();
    check_plaintext(endpoint.security != Security::None, login)?;
    let (session, mechanism) = match &login.credential {
        Credential::Password(password) => {
            let session = client.login(&login.user, password).map_err(|(error, _)| match error {
                imap::Error::No(no) => ConnectionError::Auth(no.information),
                other => classify(other, "logging in"),
            })?;
            (session, "LOGIN")
        }
        Credential::AccessToken(token) => {
            let offered = capabilities.iter().filter_map(|capability| capability.strip_prefix("AUTH="));
            let mechanism = sasl::choose(offered, None).ok_or_else(|| {
                ConnectionError::TokenRefused(
                    "the server offers neither AUTH=XOAUTH2 nor AUTH=OAUTHBEARER among its capabilities".to_owned(),
                )
            })?;
            let response = mechanism
                .client_response(&login.user, token, &endpoint.host, endpoint.port)
                .map_err(|error| ConnectionError::TokenRefused(error.to_string()))?;
            let bearer = BearerAuthenticator::new(mechanism, response);
            let session = client.authenticate(mechanism.name(), &bearer).map_err(|(error, _)| match error {
                imap::Error::No(no) => match bearer.take_refusal() {
                    Some(refusal) => ConnectionError::TokenRefused(format!("NO {} ({refusal})", no.information)),
                    None => ConnectionError::TokenRefused(format!("NO {}", no.information)),
                },
                other => classify(other, "authenticating"),
            })?;
            (session, mechanism.name())
        }
    };
    let greeting = String::from_utf8_lossy(&greeting).trim_end().to_owned();
    Ok((session, ImapHello { greeting, capabilities, mechanism }, shared))
}

/// AUTHENTICATE with an access token: the client response to the first
/// (empty) challenge; a refusal challenge is kept and answered so the server
/// ends the exchange with NO.
pub struct BearerAuthenticator {
    mechanism: BearerMechanism,
    response: Vec<u8>,
    refusal: RefCell<Option<Refusal>>,
}

impl BearerAuthenticator {
    /// `response` as `BearerMechanism::client_response` makes it.
    pub fn new(mechanism: BearerMechanism, response: Vec<u8>) -> BearerAuthenticator {
        BearerAuthenticator { mechanism, response, refusal: RefCell::new(None) }
    }

    /// Why the server refused the token, if it said.
    pub fn take_refusal(&self) -> Option<Refusal> {
        self.refusal.take()
    }
}

impl imap::Authenticator for BearerAuthenticator {
    type Response = Vec<u8>;

    fn process(&self, challenge: &[u8]) -> Vec<u8> {
        if challenge.is_empty() {
            return self.response.clone();
        }
        *self.refusal.borrow_mut() = sasl::parse_decoded_refusal(challenge);
        self.mechanism.response_to_refusal().to_vec()
    }
}

/// Reads the greeting and asks for STARTTLS on a plain connection. The
/// `imap` crate only offers this through its builder, which cannot trust an
/// account's extra CA; it is two lines of protocol.
fn request_starttls(tcp: &TcpStream) -> Result<Vec<u8>, ConnectionError> {
    let mut reader = BufReader::new(tcp);
    let mut read_line = |during: &str| -> Result<String, ConnectionError> {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => Err(ConnectionError::Protocol(format!("connection closed {during}"))),
            Ok(_) => Ok(line.trim_end().to_owned()),
            Err(error) => Err(ConnectionError::from_io(&error, during)),
        }
    };
    let greeting = read_line("reading the greeting")?;
    if !greeting.starts_with("* OK") {
        return Err(ConnectionError::Protocol(format!("greeting {greeting:?}")));
    }
    let mut writer = tcp;
    writer.write_all(b"s0 STARTTLS\r\n").map_err(|error| ConnectionError::from_io(&error, "starting TLS"))?;
    loop {
        let line = read_line("starting TLS")?;
        if line.starts_with("* ") {
            continue;
        }
        return match line.strip_prefix("s0 ") {
            Some(answer) if answer.starts_with("OK") => Ok(greeting.into_bytes()),
            Some(answer) => Err(ConnectionError::Tls(format!("the server refused STARTTLS: {answer}"))),
            None => Err(ConnectionError::Protocol(format!("answer to STARTTLS {line:?}"))),
        };
    }
}

fn capability_name(capability: &imap_proto::types::Capability<'_>) -> String {
    use imap_proto::types::Capability;
    match capability {
        Capability::Imap4rev1 => "IMAP4rev1".to_owned(),
        Capability::Auth(mechanism) => format!("AUTH={mechanism}"),
        Capability::Atom(atom) => atom.to_string(),
    }
}

/// Maps an `imap` error to the kinds DBAs see, keeping the server's words.
pub fn classify(error: imap::Error, during: &str) -> ConnectionError {
    match error {
        imap::Error::Io(error) => ConnectionError::from_io(&error, during),
        imap::Error::Tls(error) => ConnectionError::Tls(error.to_string()),
        imap::Error::TlsHandshake(error) => ConnectionError::Tls(error.to_string()),
        imap::Error::No(no) => ConnectionError::Protocol(format!("NO {} ({during})", no.information)),
        imap::Error::Bad(bad) => ConnectionError::Protocol(format!("BAD {} ({during})", bad.information)),
        imap::Error::Bye(bye) => ConnectionError::Protocol(format!("BYE {} ({during})", bye.information)),
        imap::Error::ConnectionLost => ConnectionError::Protocol(format!("connection lost {during}")),
        other => ConnectionError::Protocol(format!("{other} ({during})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn no_read_timeout_asked_for_means_the_connections_own() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let own = Some(Duration::from_secs(7));
        // As connect_tcp leaves every connection.
        tcp.set_read_timeout(own).unwrap();
        tcp.set_write_timeout(own).unwrap();
        let mut stream = ImapStream::new(MailStream::Plain(tcp));
        let read_timeout = |stream: &ImapStream| match stream.lock().get_ref() {
            MailStream::Plain(tcp) => tcp.read_timeout().unwrap(),
            MailStream::Tls(_) => unreachable!(),
        };
        // An IDLE wait's own timeout is kept as asked...
        SetReadTimeout::set_read_timeout(&mut stream, Some(Duration::from_secs(600))).unwrap();
        assert_eq!(read_timeout(&stream), Some(Duration::from_secs(600)));
        // ... and "none" after it is the connection's bound, never an endless wait.
        SetReadTimeout::set_read_timeout(&mut stream, None).unwrap();
        assert_eq!(read_timeout(&stream), own);
    }
}
