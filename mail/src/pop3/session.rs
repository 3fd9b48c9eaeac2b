//! Opening a logged-in POP3 session on an endpoint: implicit TLS, STLS or
//! plain, then USER/PASS.

use super::client::{Pop3Client, Pop3Error};
use crate::connection::{
    check_plaintext, connect_tcp, start_tls, ConnectionError, Credential, Endpoint, Login, MailStream, Security,
};
use crate::sasl;

/// What the server said before we logged in.
#[derive(Debug, Clone, Default)]
pub struct Pop3Hello {
    pub greeting: String,
    pub capabilities: Vec<String>,
    /// How we logged in: USER (USER/PASS), or the SASL mechanism.
    pub mechanism: &'static str,
}

/// Connects, secures and logs in; returns the session and what the server said.
pub fn connect(endpoint: &Endpoint, login: &Login) -> Result<(Pop3Client<MailStream>, Pop3Hello), ConnectionError> {
    let tcp = connect_tcp(endpoint)?;
    let (mut client, greeting) = match endpoint.security {
        Security::Ssl => {
            let mut client = Pop3Client::new(MailStream::Tls(Box::new(start_tls(endpoint, tcp)?)));
            let greeting = client.read_greeting().map_err(|error| classify(error, "reading the greeting"))?;
            (client, greeting)
        }
        Security::Starttls => {
            let mut plain = Pop3Client::new(tcp);
            let greeting = plain.read_greeting().map_err(|error| classify(error, "reading the greeting"))?;
            plain.command("STLS").map_err(|error| match error {
                Pop3Error::Negative(text) => ConnectionError::Tls(format!("the server refused STLS: {text}")),
                other => classify(other, "starting TLS"),
            })?;
            let tls = start_tls(endpoint, plain.into_inner())?;
            (Pop3Client::new(MailStream::Tls(Box::new(tls))), greeting)
        }
        Security::None => {
            let mut client = Pop3Client::new(MailStream::Plain(tcp));
            let greeting = client.read_greeting().map_err(|error| classify(error, "reading the greeting"))?;
            (client, greeting)
        }
    };
    let capabilities = client.capabilities().map_err(|error| classify(error, "asking for capabilities"))?;
    check_plaintext(endpoint.security != Security::None, login)?;
    let mechanism = match &login.credential {
        Credential::Password(password) => {
            client.login(&login.user, password).map_err(|error| match error {
                Pop3Error::Negative(text) => ConnectionError::Auth(text),
                other => classify(other, "logging in"),
            })?;
            "USER"
        }
        Credential::AccessToken(token) => {
            // CAPA's "SASL XOAUTH2 OAUTHBEARER" line (RFC 5034).
            let offered =
                capabilities.iter().filter_map(|line| line.strip_prefix("SASL ")).flat_map(str::split_whitespace);
            let mechanism = sasl::choose(offered, None).ok_or_else(|| {
                ConnectionError::TokenRefused(
                    "the server's CAPA offers neither SASL XOAUTH2 nor OAUTHBEARER".to_owned(),
                )
            })?;
            let response = mechanism
                .encoded_client_response(&login.user, token, &endpoint.host, endpoint.port)
                .map_err(|error| ConnectionError::TokenRefused(error.to_string()))?;
            client.authenticate_bearer(mechanism, &response).map_err(|error| match error {
                Pop3Error::Negative(text) => ConnectionError::TokenRefused(format!("-ERR {text}")),
                other => classify(other, "authenticating"),
            })?;
            mechanism.name()
        }
    };
    Ok((client, Pop3Hello { greeting, capabilities, mechanism }))
}

/// Maps a POP3 error to the kinds DBAs see.
pub fn classify(error: Pop3Error, during: &str) -> ConnectionError {
    match error {
        Pop3Error::Io(error) => ConnectionError::from_io(&error, during),
        Pop3Error::Negative(text) => ConnectionError::Protocol(format!("-ERR {text} ({during})")),
        Pop3Error::Protocol(text) => ConnectionError::Protocol(format!("{text} ({during})")),
    }
}
