//! `test_account(account)`: connect and log in to an account's SMTP server
//! and its IMAP or POP3 server, in parallel threads, and report per protocol
//! (with the SASL mechanism used) and, for OAuth2 accounts, the token state.

use super::errors::{internal, raise_access, raise_secret};
use crate::store::account_settings::{self, EffectiveAccount, ServerSettings};
use crate::store::oauth::{self, OAuthStoreError, WorkerCredential};
use crate::store::{accounts, privileged};
use crate::threads;
use email_accounts_mail::connection::ConnectionError;
use email_accounts_mail::oauth::SignIn;
use email_accounts_mail::probe::{probe, ProbeFailure, ProbeReport, Protocol};
use pgrx::prelude::*;
use serde_json::{json, Map, Value};

/// How long test_account() may hold an account's token renewal lease.
const RENEWAL_LEASE_SECONDS: i64 = 120;

/// What the account signs in with, or why it cannot.
type Credential = Result<Option<WorkerCredential>, ConnectionError>;

/// Not SECURITY DEFINER: decides for the role really calling, then reads the
/// settings and the credential as the extension owner (see store::privileged).
/// A renewed access token is stored in the caller's transaction; inside a
/// transaction block the stored token is used as it is, never renewed.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn test_account(account: &str, tenant: default!(Option<&str>, "NULL")) -> pgrx::JsonB {
    let caller = privileged::caller();
    let (settings, credential) = privileged::as_extension_owner(|| {
        let managed = accounts::managed_by(account, tenant, caller).unwrap_or_else(|error| raise_access(error));
        let settings = account_settings::load_with_sign_in(managed.account_id)
            .unwrap_or_else(|error| internal(error))
            .unwrap_or_else(|| raise_access(accounts::AccountAccessError::Unknown(account.to_owned())));
        (settings.clone(), credential(&settings))
    })
    .unwrap_or_else(|error| internal(error));
    let lease = credential.as_ref().ok().and_then(|credential| credential.as_ref()?.renewal_lease());
    let (answer, sign_in) = report(&settings, credential);
    if let Some(sign_in) = sign_in {
        privileged::as_extension_owner(|| oauth::record_report(settings.account_id, &sign_in.report, lease.as_deref()))
            .unwrap_or_else(|error| internal(error))
            .unwrap_or_else(|error| internal(error));
    }
    pgrx::JsonB(answer)
}

fn credential(settings: &EffectiveAccount) -> Credential {
    if !settings.oauth2 && settings.awaiting_password {
        return Ok(None);
    }
    // Renewing stores a rotated refresh token in the caller's transaction: not
    // inside a transaction block, whose rollback would lose it.
    let in_block = unsafe { pg_sys::IsTransactionBlock() };
    let lease = (!in_block).then_some(RENEWAL_LEASE_SECONDS);
    match oauth::worker_credential(settings.account_id, settings.oauth2, lease) {
        Ok(credential) => Ok(credential),
        Err(OAuthStoreError::Secret(error)) => raise_secret(error),
        Err(error @ OAuthStoreError::ConsentNeeded { .. }) => Err(ConnectionError::OAuth(error.to_string())),
        Err(error) => Err(ConnectionError::OAuth(error.to_string())),
    }
}

/// Probes every enabled side of the account and assembles the jsonb answer;
/// also returns the OAuth2 sign-in (with what happened to its token).
fn report(settings: &EffectiveAccount, credential: Credential) -> (Value, Option<SignIn>) {
    let mut answer = Map::new();
    answer.insert("account".to_owned(), json!(settings.name));
    answer.insert("auth_method".to_owned(), json!(if settings.oauth2 { "oauth2" } else { "password" }));
    if !settings.enable_incoming && !settings.enable_outgoing {
        answer.insert("ok".to_owned(), json!(false));
        answer.insert("message".to_owned(), json!("neither enable_incoming nor enable_outgoing is on"));
        return (Value::Object(answer), None);
    }
    let (mut sign_in, mut missing) = match credential {
        Ok(Some(credential)) => {
            (Some(credential.sign_in(settings.login_id.clone(), settings.allow_plaintext_authentication)), None)
        }
        Ok(None) if settings.oauth2 => (
            None,
            Some(ConnectionError::OAuth(
                "the account is not connected: call email_accounts.oauth_device_login() or set_oauth_refresh_token() first"
                    .to_owned(),
            )),
        ),
        Ok(None) if settings.awaiting_password => (
            None,
            Some(ConnectionError::Auth(
                "the account is awaiting its password: call email_accounts.set_password() first".to_owned(),
            )),
        ),
        Ok(None) => {
            (None, Some(ConnectionError::Auth("no password is set: call email_accounts.set_password() first".to_owned())))
        }
        Err(error) => (None, Some(error)),
    };
    // One token for every side: renewed here (on a thread) when needed.
    let mut token_sign_in = None;
    if let Some(bearer) = sign_in.take_if(|sign_in| sign_in.login.is_bearer()) {
        let (bearer, outcome) = threads::run_one(move || {
            let mut bearer = bearer;
            let outcome = bearer.ensure_token();
            (bearer, outcome)
        });
        answer.insert("oauth".to_owned(), oauth_report(settings, &bearer));
        match outcome {
            Ok(()) => sign_in = Some(bearer.without_renewal()),
            Err(error) => missing = Some(error),
        }
        token_sign_in = Some(bearer);
    } else if settings.oauth2 {
        answer.insert("oauth".to_owned(), json!({ "state": settings.oauth_state }));
    }

    let mut jobs: Vec<Box<dyn FnOnce() -> ProbeReport + Send>> = Vec::new();
    let mut sides = Vec::new();
    if settings.enable_outgoing {
        let needs_login = !settings.no_smtp_authentication;
        sides.push(plan(Protocol::Smtp, &settings.outgoing, settings, needs_login, &sign_in, &missing, &mut jobs));
    }
    if settings.enable_incoming {
        let protocol =
            if settings.incoming.protocol.as_deref() == Some("pop3") { Protocol::Pop3 } else { Protocol::Imap };
        sides.push(plan(protocol, &settings.incoming, settings, true, &sign_in, &missing, &mut jobs));
    }
    let mut probed = threads::run_all(jobs).into_iter();
    let mut all_ok = true;
    for side in sides {
        let report = side.unwrap_or_else(|| probed.next().expect("one report per job"));
        all_ok &= report.ok;
        let key = serde_json::to_value(report.protocol).expect("protocol names serialise");
        answer.insert(
            key.as_str().unwrap_or_default().to_owned(),
            serde_json::to_value(&report).expect("reports serialise"),
        );
    }
    answer.insert("ok".to_owned(), json!(all_ok));
    (Value::Object(answer), token_sign_in)
}

/// The token state for the answer: never a token.
fn oauth_report(settings: &EffectiveAccount, sign_in: &SignIn) -> Value {
    let mut report = Map::new();
    report.insert("state".to_owned(), json!(settings.oauth_state));
    let token = match (&sign_in.report.renewed, &sign_in.report.failure) {
        (Some(renewed), _) => {
            report.insert("access_token_expires_at".to_owned(), json!(renewed.expires_at));
            if renewed.refresh_token.is_some() {
                report.insert("refresh_token".to_owned(), json!("rotated: the new one is stored"));
            }
            "renewed now"
        }
        (None, Some(failure)) => {
            report.insert("error".to_owned(), json!({ "kind": "oauth", "message": failure.to_string() }));
            "renewal failed"
        }
        (None, None) => "stored, still valid",
    };
    report.insert("access_token".to_owned(), json!(token));
    Value::Object(report)
}

/// Queues a probe job, or returns at once the report of a side that cannot be probed.
fn plan(
    protocol: Protocol,
    server: &ServerSettings,
    settings: &EffectiveAccount,
    needs_login: bool,
    sign_in: &Option<SignIn>,
    missing: &Option<ConnectionError>,
    jobs: &mut Vec<Box<dyn FnOnce() -> ProbeReport + Send>>,
) -> Option<ProbeReport> {
    let endpoint = server.endpoint(settings.extra_ca_certificate.clone());
    if needs_login && sign_in.is_none() {
        let error = missing.clone().unwrap_or_else(|| ConnectionError::Auth("no credential".to_owned()));
        return Some(ProbeReport {
            protocol,
            ok: false,
            elapsed_ms: 0,
            host: endpoint.host,
            port: endpoint.port,
            security: endpoint.security,
            greeting: None,
            capabilities: Vec::new(),
            sasl_mechanism: None,
            error: Some(ProbeFailure { kind: error.kind(), message: error.to_string() }),
        });
    }
    let mut sign_in = if needs_login { sign_in.as_ref().map(SignIn::without_renewal) } else { None };
    jobs.push(Box::new(move || probe(protocol, &endpoint, sign_in.as_mut())));
    None
}
