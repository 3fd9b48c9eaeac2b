//! Opening an authenticated SMTP connection on an endpoint with lettre's
//! `SmtpConnection`: implicit TLS, STARTTLS or plain, then AUTH unless the
//! account sends without authentication.

use crate::connection::{check_plaintext, extra_ca_blocks, resolve, ConnectionError, Endpoint, Login, Security};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, SmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::{ClientId, Extension};

/// What the server said before we logged in.
#[derive(Debug, Clone, Default)]
pub struct SmtpHello {
    /// The name the server gave in its EHLO answer.
    pub server_name: String,
    pub capabilities: Vec<String>,
}

fn tls_parameters(endpoint: &Endpoint) -> Result<TlsParameters, ConnectionError> {
    let mut builder = TlsParameters::builder(endpoint.host.clone());
    for block in extra_ca_blocks(endpoint)? {
        let certificate =
            Certificate::from_pem(block.as_bytes()).map_err(|error| ConnectionError::Tls(error.to_string()))?;
        builder = builder.add_root_certificate(certificate);
    }
    builder.build_native().map_err(|error| ConnectionError::Tls(error.to_string()))
}

/// Connects, secures and (when `login` is given) authenticates.
pub fn connect(endpoint: &Endpoint, login: Option<&Login>) -> Result<(SmtpConnection, SmtpHello), ConnectionError> {
    let addresses = resolve(endpoint)?;
    let hello_name = ClientId::default();
    let parameters = match endpoint.security {
        Security::None => None,
        Security::Ssl | Security::Starttls => Some(tls_parameters(endpoint)?),
    };
    let implicit = parameters.as_ref().filter(|_| endpoint.security == Security::Ssl);
    let mut connection = SmtpConnection::connect(&addresses[..], Some(endpoint.timeout), &hello_name, implicit, None)
        .map_err(|error| classify(&error, "connecting"))?;
    if endpoint.security == Security::Starttls {
        if !connection.can_starttls() {
            return Err(ConnectionError::Tls("the server does not offer STARTTLS".to_owned()));
        }
        let parameters = parameters.as_ref().expect("made for STARTTLS");
        connection.starttls(parameters, &hello_name).map_err(|error| classify(&error, "starting TLS"))?;
    }
    let hello = describe(&connection);
    if let Some(login) = login {
        check_plaintext(connection.is_encrypted(), login)?;
        let credentials = Credentials::new(login.user.clone(), login.password.clone());
        connection.auth(&[Mechanism::Plain, Mechanism::Login], &credentials).map_err(|error| {
            if error.is_permanent() || error.is_transient() {
                ConnectionError::Auth(error.to_string())
            } else {
                classify(&error, "authenticating")
            }
        })?;
    }
    Ok((connection, hello))
}

/// The EHLO name and the extensions lettre understands (it keeps no others).
fn describe(connection: &SmtpConnection) -> SmtpHello {
    let info = connection.server_info();
    let extensions = [
        (Extension::StartTls, "STARTTLS"),
        (Extension::EightBitMime, "8BITMIME"),
        (Extension::SmtpUtfEight, "SMTPUTF8"),
    ];
    let mechanisms =
        [(Mechanism::Plain, "AUTH=PLAIN"), (Mechanism::Login, "AUTH=LOGIN"), (Mechanism::Xoauth2, "AUTH=XOAUTH2")];
    let mut capabilities: Vec<String> = extensions
        .into_iter()
        .filter(|(extension, _)| info.supports_feature(*extension))
        .map(|(_, name)| name.to_owned())
        .collect();
    capabilities.extend(
        mechanisms
            .into_iter()
            .filter(|(mechanism, _)| info.supports_auth_mechanism(*mechanism))
            .map(|(_, name)| name.to_owned()),
    );
    SmtpHello { server_name: info.name().to_owned(), capabilities }
}

/// Maps a lettre error to the kinds DBAs see, keeping the server's words.
pub fn classify(error: &lettre::transport::smtp::Error, during: &str) -> ConnectionError {
    let text = error.to_string();
    if error.is_timeout() {
        ConnectionError::Timeout { during: during.to_owned() }
    } else if error.is_tls() {
        ConnectionError::Tls(text)
    } else if error.is_response() || error.is_permanent() || error.is_transient() || error.is_client() {
        ConnectionError::Protocol(format!("{text} ({during})"))
    } else if during == "connecting" {
        ConnectionError::Connect { address: String::new(), reason: text }
    } else {
        ConnectionError::Protocol(format!("{text} ({during})"))
    }
}
