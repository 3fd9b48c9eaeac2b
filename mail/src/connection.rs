//! Connecting to a mail server: name resolution, TCP with bounded timeouts,
//! TLS verified against the system roots plus an account's extra CA, and the
//! classification of what went wrong.

use native_tls::{Certificate, TlsStream};
use serde::Serialize;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How a connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// TLS from the first byte (SMTPS 465, IMAPS 993, POP3S 995).
    Ssl,
    /// Plain connection upgraded with STARTTLS / STLS before logging in.
    Starttls,
    /// No encryption at all.
    None,
}

impl Security {
    pub fn parse(text: &str) -> Option<Security> {
        match text {
            "ssl" => Some(Security::Ssl),
            "starttls" => Some(Security::Starttls),
            "none" => Some(Security::None),
            _ => None,
        }
    }
}

/// Where a server is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// Extra trusted CA certificate(s), PEM, for private mail servers.
    pub extra_ca_pem: Option<String>,
    /// Bound for connecting and for every read and write.
    pub timeout: Duration,
}

/// What proves the login: a password, or an OAuth2 access token sent by
/// SASL XOAUTH2 / OAUTHBEARER. Neither appears in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Password(String),
    AccessToken(String),
}

/// A login name and its credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    pub user: String,
    pub credential: Credential,
    /// Whether the credential may be sent over a connection without TLS.
    pub allow_plaintext: bool,
}

impl Login {
    pub fn with_password(user: String, password: String, allow_plaintext: bool) -> Login {
        Login { user, credential: Credential::Password(password), allow_plaintext }
    }

    pub fn is_bearer(&self) -> bool {
        matches!(self.credential, Credential::AccessToken(_))
    }
}

impl fmt::Debug for Login {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let credential = match self.credential {
            Credential::Password(_) => "<password>",
            Credential::AccessToken(_) => "<access token>",
        };
        formatter
            .debug_struct("Login")
            .field("user", &self.user)
            .field("credential", &credential)
            .field("allow_plaintext", &self.allow_plaintext)
            .finish()
    }
}

/// The kind of a failure, as shown to DBAs in `test_account()` and sync status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    Dns,
    Connect,
    Timeout,
    Tls,
    Auth,
    /// OAuth2: getting a token, or a server refusing one.
    Oauth,
    Protocol,
}

impl FailureKind {
    /// The lowercase name, as serialized.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Dns => "dns",
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::Tls => "tls",
            FailureKind::Auth => "auth",
            FailureKind::Oauth => "oauth",
            FailureKind::Protocol => "protocol",
        }
    }
}

/// What went wrong talking to a mail server, with the server's own words
/// where it gave any.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    #[error("cannot resolve {host}: {reason}")]
    Dns { host: String, reason: String },
    #[error("cannot connect to {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("timed out {during}")]
    Timeout { during: String },
    #[error("TLS failed: {0}")]
    Tls(String),
    #[error("refusing to send the password over an unencrypted connection (the account does not allow plain-text authentication)")]
    PlaintextRefused,
    #[error("authentication failed: {0}")]
    Auth(String),
    /// A mail server refused the access token (its words, or the refusal it sent as a challenge).
    #[error("OAuth2: the server refused the access token: {0}")]
    TokenRefused(String),
    /// Getting an access token failed; the text says at which step.
    #[error("OAuth2: {0}")]
    OAuth(String),
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
}

impl ConnectionError {
    pub fn kind(&self) -> FailureKind {
        match self {
            ConnectionError::Dns { .. } => FailureKind::Dns,
            ConnectionError::Connect { .. } => FailureKind::Connect,
            ConnectionError::Timeout { .. } => FailureKind::Timeout,
            ConnectionError::Tls(_) | ConnectionError::PlaintextRefused => FailureKind::Tls,
            ConnectionError::Auth(_) => FailureKind::Auth,
            ConnectionError::TokenRefused(_) | ConnectionError::OAuth(_) => FailureKind::Oauth,
            ConnectionError::Protocol(_) => FailureKind::Protocol,
        }
    }

    /// An I/O error in the middle of a conversation.
    pub fn from_io(error: &io::Error, during: &str) -> ConnectionError {
        match error.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                ConnectionError::Timeout { during: during.to_owned() }
            }
            _ => ConnectionError::Protocol(format!("connection lost {during}: {error}")),
        }
    }
}

/// Resolves the endpoint's host name.
pub fn resolve(endpoint: &Endpoint) -> Result<Vec<SocketAddr>, ConnectionError> {
    let dns_error = |reason: String| ConnectionError::Dns { host: endpoint.host.clone(), reason };
    let addresses: Vec<SocketAddr> = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .map_err(|error| dns_error(error.to_string()))?
        .collect();
    if addresses.is_empty() {
        return Err(dns_error("no addresses".to_owned()));
    }
    Ok(addresses)
}

/// Opens a TCP connection to the first address that answers, with the
/// endpoint's timeout on connect, read and write.
pub fn connect_tcp(endpoint: &Endpoint) -> Result<TcpStream, ConnectionError> {
    let addresses = resolve(endpoint)?;
    let mut last_error = None;
    for address in &addresses {
        match TcpStream::connect_timeout(address, endpoint.timeout) {
            Ok(stream) => {
                let io_error = |error: io::Error| ConnectionError::Connect {
                    address: address.to_string(),
                    reason: error.to_string(),
                };
                stream.set_read_timeout(Some(endpoint.timeout)).map_err(io_error)?;
                stream.set_write_timeout(Some(endpoint.timeout)).map_err(io_error)?;
                stream.set_nodelay(true).map_err(io_error)?;
                return Ok(stream);
            }
            Err(error) => last_error = Some((address, error)),
        }
    }
    let (address, error) = last_error.expect("resolve returns at least one address");
    Err(match error.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            ConnectionError::Timeout { during: format!("connecting to {address}") }
        }
        _ => ConnectionError::Connect { address: address.to_string(), reason: error.to_string() },
    })
}

/// Splits a PEM bundle into its certificates, rejecting anything unparsable.
pub fn pem_blocks(pem: &str) -> Result<Vec<&str>, ConnectionError> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let invalid = |reason: String| ConnectionError::Tls(format!("the extra CA certificate is not valid PEM: {reason}"));
    let mut blocks = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let length = rest[start..].find(END).ok_or_else(|| invalid("a certificate has no END line".to_owned()))?;
        let block = &rest[start..start + length + END.len()];
        Certificate::from_pem(block.as_bytes()).map_err(|error| invalid(error.to_string()))?;
        blocks.push(block);
        rest = &rest[start + length + END.len()..];
    }
    if blocks.is_empty() {
        return Err(invalid("no BEGIN CERTIFICATE block".to_owned()));
    }
    Ok(blocks)
}

/// Performs the TLS handshake over an open TCP stream, verifying the host name.
pub fn start_tls(endpoint: &Endpoint, tcp: TcpStream) -> Result<TlsStream<ReadAhead>, ConnectionError> {
    crate::tls_connectors::trusting(endpoint.extra_ca_pem.as_deref())?
        .connect(&endpoint.host, ReadAhead::new(tcp))
        .map_err(|error| match error {
            native_tls::HandshakeError::Failure(error) => ConnectionError::Tls(error.to_string()),
            native_tls::HandshakeError::WouldBlock(_) => {
                ConnectionError::Timeout { during: "the TLS handshake".to_owned() }
            }
        })
}

/// Bytes a TLS connection reads from its socket at a time, at most.
const READ_AHEAD_BYTES: usize = 64 * 1024;

/// The TCP side of a TLS connection, read ahead. OpenSSL reads each TLS
/// record in two calls (its 5-byte header, then the rest): a mailbox
/// fetched as a stream of ~3 KB records took two `recvfrom` calls a message
/// (the receiver during an ingest of 20,000: 37,790). From this buffer a
/// call takes whatever has arrived, up to 64 KB. Writes go straight through.
#[derive(Debug)]
pub struct ReadAhead(io::BufReader<TcpStream>);

impl ReadAhead {
    pub fn new(tcp: TcpStream) -> ReadAhead {
        ReadAhead(io::BufReader::with_capacity(READ_AHEAD_BYTES, tcp))
    }

    /// The TCP stream underneath (its timeouts apply to every read).
    pub fn tcp(&self) -> &TcpStream {
        self.0.get_ref()
    }
}

impl Read for ReadAhead {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        self.0.read(buffer)
    }
}

impl Write for ReadAhead {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        self.0.get_mut().write(buffer)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.get_mut().flush()
    }
}

/// A connection that is either plain or TLS, so protocol clients need one type.
pub enum MailStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<ReadAhead>>),
}

impl MailStream {
    pub fn is_encrypted(&self) -> bool {
        matches!(self, MailStream::Tls(_))
    }
}

impl Read for MailStream {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            MailStream::Plain(stream) => stream.read(buffer),
            MailStream::Tls(stream) => stream.read(buffer),
        }
    }
}

impl Write for MailStream {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        match self {
            MailStream::Plain(stream) => stream.write(buffer),
            MailStream::Tls(stream) => stream.write(buffer),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            MailStream::Plain(stream) => stream.flush(),
            MailStream::Tls(stream) => stream.flush(),
        }
    }
}

/// Refuses to log in over a plain connection unless the account allows it.
pub fn check_plaintext(encrypted: bool, login: &Login) -> Result<(), ConnectionError> {
    if encrypted || login.allow_plaintext {
        Ok(())
    } else {
        Err(ConnectionError::PlaintextRefused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Bytes whose order shows: 0, 1, ... 250, 0, 1, ...
    fn pattern(length: usize) -> Vec<u8> {
        (0..length).map(|index| (index % 251) as u8).collect()
    }

    #[test]
    fn read_ahead_hands_on_every_byte_in_order_and_writes_through() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut peer, _) = listener.accept().unwrap();
            // Two writes (often one read on the other side), then an answer to what the client wrote.
            peer.write_all(b"* OK hello\r\n").unwrap();
            peer.write_all(&pattern(100_000)).unwrap();
            let mut asked = [0u8; 4];
            peer.read_exact(&mut asked).unwrap();
            peer.write_all(if &asked == b"ping" { b"pong" } else { b"what" }).unwrap();
        });
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut stream = ReadAhead::new(tcp);
        // In pieces smaller and larger than the buffer, as OpenSSL reads records.
        let mut greeting = [0u8; 12];
        stream.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting, b"* OK hello\r\n");
        let mut body = vec![0u8; 100_000];
        stream.read_exact(&mut body[..5]).unwrap();
        stream.read_exact(&mut body[5..]).unwrap();
        assert_eq!(body, pattern(100_000), "every byte, in order");
        stream.write_all(b"ping").unwrap();
        stream.flush().unwrap();
        let mut answer = [0u8; 4];
        stream.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"pong");
        server.join().unwrap();
        // The end of the stream reaches the reader.
        assert_eq!(stream.read(&mut answer).unwrap(), 0);
        assert_eq!(stream.tcp().peer_addr().unwrap().port(), port);
    }

    fn endpoint(host: &str, port: u16) -> Endpoint {
        Endpoint {
            host: host.to_owned(),
            port,
            security: Security::None,
            extra_ca_pem: None,
            timeout: Duration::from_secs(2),
        }
    }

    #[test]
    fn classifies_dns_and_refused_connections() {
        let error = connect_tcp(&endpoint("no-such-host.invalid", 25)).unwrap_err();
        assert_eq!(error.kind(), FailureKind::Dns, "{error}");

        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let error = connect_tcp(&endpoint("127.0.0.1", port)).unwrap_err();
        assert_eq!(error.kind(), FailureKind::Connect, "{error}");
    }

    #[test]
    fn a_bad_extra_ca_is_a_tls_error() {
        let mut bad = endpoint("localhost", 1);
        bad.extra_ca_pem = Some("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".to_owned());
        assert_eq!(
            crate::tls_connectors::trusting(bad.extra_ca_pem.as_deref()).err().map(|error| error.kind()),
            Some(FailureKind::Tls)
        );
    }

    #[test]
    fn passwords_stay_out_of_debug_output_and_plain_connections() {
        let login = Login::with_password("ann".to_owned(), "hunter2".to_owned(), false);
        assert!(!format!("{login:?}").contains("hunter2"));
        let bearer = Login { credential: Credential::AccessToken("ya29.secret".to_owned()), ..login.clone() };
        assert!(!format!("{bearer:?}").contains("ya29"));
        assert_eq!(check_plaintext(false, &login), Err(ConnectionError::PlaintextRefused));
        assert_eq!(check_plaintext(true, &login), Ok(()));
        let allowed = Login { allow_plaintext: true, ..login };
        assert_eq!(check_plaintext(false, &allowed), Ok(()));
    }

    #[test]
    fn security_names_round_trip() {
        for name in ["ssl", "starttls", "none"] {
            let security = Security::parse(name).unwrap();
            assert_eq!(serde_json::to_value(security).unwrap(), name);
        }
        assert_eq!(Security::parse("tls"), None);
    }
}
