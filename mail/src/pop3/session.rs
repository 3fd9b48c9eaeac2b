//! Opening a logged-in POP3 session on an endpoint: implicit TLS, STLS or
//! plain, then USER/PASS.

use super::client::{Pop3Client, Pop3Error};
use crate::connection::{
    check_plaintext, connect_tcp, start_tls, ConnectionError, Endpoint, Login, MailStream, Security,
};

/// What the server said before we logged in.
#[derive(Debug, Clone, Default)]
pub struct Pop3Hello {
    pub greeting: String,
    pub capabilities: Vec<String>,
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
    client.login(&login.user, &login.password).map_err(|error| match error {
        Pop3Error::Negative(text) => ConnectionError::Auth(text),
        other => classify(other, "logging in"),
    })?;
    Ok((client, Pop3Hello { greeting, capabilities }))
}

/// Maps a POP3 error to the kinds DBAs see.
pub fn classify(error: Pop3Error, during: &str) -> ConnectionError {
    match error {
        Pop3Error::Io(error) => ConnectionError::from_io(&error, during),
        Pop3Error::Negative(text) => ConnectionError::Protocol(format!("-ERR {text} ({during})")),
        Pop3Error::Protocol(text) => ConnectionError::Protocol(format!("{text} ({during})")),
    }
}
