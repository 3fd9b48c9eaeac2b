//! `test_account()`'s work: connect and authenticate to each server of an
//! account and report, per protocol, whether it worked, how long it took,
//! what the server said and, on failure, a classified error.

use crate::connection::{ConnectionError, Endpoint, FailureKind, Security};
use crate::oauth::SignIn;
use crate::{imap_client, pop3, smtp_client};
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Smtp,
    Imap,
    Pop3,
}

/// One protocol's outcome, serialised into `test_account()`'s jsonb.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub protocol: Protocol,
    pub ok: bool,
    pub elapsed_ms: u64,
    pub host: String,
    pub port: u16,
    pub security: Security,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub greeting: Option<String>,
    pub capabilities: Vec<String>,
    /// How it logged in: PLAIN, LOGIN, USER, XOAUTH2, OAUTHBEARER.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ProbeFailure>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeFailure {
    pub kind: FailureKind,
    /// Our description with the server's own words.
    pub message: String,
}

/// Connects to one server, logs in (SMTP only when `sign_in` is given), logs out.
pub fn probe(protocol: Protocol, endpoint: &Endpoint, sign_in: Option<&mut SignIn>) -> ProbeReport {
    let started = Instant::now();
    let outcome = match (protocol, sign_in) {
        (Protocol::Smtp, None) => smtp_client::connect(endpoint, None).map(|(client, hello)| {
            client.quit();
            (Some(hello.greeting), hello.capabilities, None)
        }),
        (Protocol::Smtp, Some(sign_in)) => {
            sign_in.connect(|login| smtp_client::connect(endpoint, Some(login))).map(|(client, hello)| {
                client.quit();
                (Some(hello.greeting), hello.capabilities, hello.mechanism)
            })
        }
        (Protocol::Imap, Some(sign_in)) => {
            sign_in.connect(|login| imap_client::connect(endpoint, login)).map(|(mut session, hello)| {
                let _ = session.logout();
                (Some(hello.greeting), hello.capabilities, Some(hello.mechanism))
            })
        }
        (Protocol::Pop3, Some(sign_in)) => {
            sign_in.connect(|login| pop3::connect(endpoint, login)).map(|(mut client, hello)| {
                let _ = client.quit();
                (Some(hello.greeting), hello.capabilities, Some(hello.mechanism))
            })
        }
        (Protocol::Imap | Protocol::Pop3, None) => {
            Err(ConnectionError::Auth("no password is set for this account".to_owned()))
        }
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let (greeting, capabilities, sasl_mechanism, error) = match outcome {
        Ok((greeting, capabilities, mechanism)) => (greeting, capabilities, mechanism, None),
        Err(error) => (None, Vec::new(), None, Some(ProbeFailure { kind: error.kind(), message: error.to_string() })),
    };
    ProbeReport {
        protocol,
        ok: error.is_none(),
        elapsed_ms,
        host: endpoint.host.clone(),
        port: endpoint.port,
        security: endpoint.security,
        greeting,
        capabilities,
        sasl_mechanism,
        error,
    }
}
