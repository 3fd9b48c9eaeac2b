//! `test_account(account)`: connect and log in to an account's SMTP server
//! and its IMAP or POP3 server, in parallel threads, and report per protocol
//! (with the SASL mechanism used) and, for OAuth2 accounts, the token state.

use super::errors::{internal, raise_access, raise_secret};
use crate::store::account_settings::{self, EffectiveAccount, ServerSettings};
use crate::store::oauth::{self, OAuthStoreError, WorkerCredential};
use crate::store::secrets::Side;
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

/// What each side signs in with: the OAuth2 token (one per account, asked
/// for when a side uses it) and each password side's own password.
struct Credentials {
    token: Option<Credential>,
    incoming_password: Credential,
    smtp_password: Credential,
}

/// Not SECURITY DEFINER: decides for the role really calling, then reads the
/// settings and the credentials as the extension owner (see store::privileged).
/// A renewed access token is stored in the caller's transaction; inside a
/// transaction block the stored token is used as it is, never renewed.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn test_account(account: &str, tenant: default!(Option<&str>, "NULL")) -> pgrx::JsonB {
    let caller = privileged::caller();
    let (settings, credentials) = privileged::as_extension_owner(|| {
        let managed = accounts::managed_by(account, tenant, caller).unwrap_or_else(|error| raise_access(error));
        let settings = account_settings::load_with_sign_in(managed.account_id)
            .unwrap_or_else(|error| internal(error))
            .unwrap_or_else(|| raise_access(accounts::AccountAccessError::Unknown(account.to_owned())));
        let credentials = credentials(&settings);
        (settings, credentials)
    })
    .unwrap_or_else(|error| internal(error));
    let lease = match &credentials.token {
        Some(Ok(Some(credential))) => credential.renewal_lease(),
        _ => None,
    };
    let (answer, sign_in) = report(&settings, credentials);
    if let Some(sign_in) = sign_in {
        privileged::as_extension_owner(|| oauth::record_report(settings.account_id, &sign_in.report, lease.as_deref()))
            .unwrap_or_else(|error| internal(error))
            .unwrap_or_else(|error| internal(error));
    }
    pgrx::JsonB(answer)
}

fn credentials(settings: &EffectiveAccount) -> Credentials {
    let smtp_signs_in = settings.enable_outgoing && !settings.no_smtp_authentication;
    let token_needed = (settings.enable_incoming && settings.oauth2) || (smtp_signs_in && settings.smtp_oauth2);
    let password = |wanted: bool, side: Side| -> Credential {
        if !wanted || settings.awaiting_password {
            return Ok(None);
        }
        stored_credential(settings.account_id, side, false, None)
    };
    // Renewing stores a rotated refresh token in the caller's transaction: not
    // inside a transaction block, whose rollback would lose it.
    let in_block = unsafe { pg_sys::IsTransactionBlock() };
    let lease = (!in_block).then_some(RENEWAL_LEASE_SECONDS);
    Credentials {
        token: token_needed.then(|| stored_credential(settings.account_id, Side::Incoming, true, lease)),
        incoming_password: password(settings.enable_incoming && !settings.oauth2, Side::Incoming),
        smtp_password: password(smtp_signs_in && !settings.smtp_oauth2, Side::Smtp),
    }
}

fn stored_credential(account_id: i64, side: Side, oauth2: bool, lease: Option<i64>) -> Credential {
    match oauth::worker_credential(account_id, side, oauth2, lease) {
        Ok(credential) => Ok(credential),
        Err(OAuthStoreError::Secret(error)) => raise_secret(error),
        Err(error @ OAuthStoreError::ConsentNeeded { .. }) => Err(ConnectionError::OAuth(error.to_string())),
        Err(error) => Err(ConnectionError::OAuth(error.to_string())),
    }
}

/// One side's sign-in, or why it has none.
type SideSignIn = (Option<SignIn>, Option<ConnectionError>);

/// A password side's sign-in as `user`.
fn password_sign_in(settings: &EffectiveAccount, user: &str, password: Credential, side: Side) -> SideSignIn {
    match password {
        Ok(Some(credential)) => {
            (Some(credential.sign_in(user.to_owned(), settings.allow_plaintext_authentication)), None)
        }
        Ok(None) if settings.awaiting_password => (
            None,
            Some(ConnectionError::Auth(
                "the account is awaiting its password: call email_accounts.set_password() first".to_owned(),
            )),
        ),
        Ok(None) => (
            None,
            Some(ConnectionError::Auth(format!(
                "no password is set for the {} side: call email_accounts.set_password() first (side => '{}' or 'both')",
                side.as_str(),
                side.as_str()
            ))),
        ),
        Err(error) => (None, Some(error)),
    }
}

/// An OAuth2 side's sign-in as `user`, with the token made sure of once.
fn token_sign_in(token: &Option<Result<SignIn, ConnectionError>>, user: &str) -> SideSignIn {
    match token {
        Some(Ok(bearer)) => {
            let mut sign_in = bearer.without_renewal();
            sign_in.login.user = user.to_owned();
            (Some(sign_in), None)
        }
        Some(Err(error)) => (None, Some(error.clone())),
        None => (None, Some(ConnectionError::OAuth("no access token".to_owned()))),
    }
}

/// Probes every enabled side of the account and assembles the jsonb answer;
/// also returns the OAuth2 sign-in (with what happened to its token).
fn report(settings: &EffectiveAccount, credentials: Credentials) -> (Value, Option<SignIn>) {
    let mut answer = Map::new();
    let method = |oauth2: bool| if oauth2 { "oauth2" } else { "password" };
    answer.insert("account".to_owned(), json!(settings.name));
    answer.insert("auth_method".to_owned(), json!(method(settings.oauth2)));
    if settings.smtp_oauth2 != settings.oauth2 {
        answer.insert("smtp_auth_method".to_owned(), json!(method(settings.smtp_oauth2)));
    }
    if settings.smtp_login_id != settings.login_id {
        answer.insert("smtp_login_id".to_owned(), json!(settings.smtp_login_id));
    }
    if !settings.enable_incoming && !settings.enable_outgoing {
        answer.insert("ok".to_owned(), json!(false));
        answer.insert("message".to_owned(), json!("neither enable_incoming nor enable_outgoing is on"));
        return (Value::Object(answer), None);
    }
    // One token for every OAuth2 side: renewed here (on a thread) when needed.
    let mut renewed_sign_in = None;
    let token = credentials.token.map(|token| match token {
        Ok(Some(credential)) => {
            let bearer = credential.sign_in(settings.login_id.clone(), settings.allow_plaintext_authentication);
            let (bearer, outcome) = threads::run_one(move || {
                let mut bearer = bearer;
                let outcome = bearer.ensure_token();
                (bearer, outcome)
            });
            answer.insert("oauth".to_owned(), oauth_report(settings, &bearer));
            let usable = outcome.map(|()| bearer.without_renewal());
            renewed_sign_in = Some(bearer);
            usable
        }
        Ok(None) => {
            answer.insert("oauth".to_owned(), json!({ "state": settings.oauth_state }));
            Err(ConnectionError::OAuth(
                "the account is not connected: call email_accounts.oauth_device_login() or set_oauth_refresh_token() first"
                    .to_owned(),
            ))
        }
        Err(error) => {
            answer.insert("oauth".to_owned(), json!({ "state": settings.oauth_state }));
            Err(error)
        }
    });
    let (smtp_sign_in, smtp_missing) = if settings.smtp_oauth2 {
        token_sign_in(&token, &settings.smtp_login_id)
    } else {
        password_sign_in(settings, &settings.smtp_login_id, credentials.smtp_password, Side::Smtp)
    };
    let (incoming_sign_in, incoming_missing) = if settings.oauth2 {
        token_sign_in(&token, &settings.login_id)
    } else {
        password_sign_in(settings, &settings.login_id, credentials.incoming_password, Side::Incoming)
    };

    let mut jobs: Vec<Box<dyn FnOnce() -> ProbeReport + Send>> = Vec::new();
    let mut sides = Vec::new();
    if settings.enable_outgoing {
        let needs_login = !settings.no_smtp_authentication;
        sides.push(plan(
            Protocol::Smtp,
            &settings.outgoing,
            settings,
            needs_login,
            &smtp_sign_in,
            &smtp_missing,
            &mut jobs,
        ));
    }
    if settings.enable_incoming {
        let protocol =
            if settings.incoming.protocol.as_deref() == Some("pop3") { Protocol::Pop3 } else { Protocol::Imap };
        sides.push(plan(protocol, &settings.incoming, settings, true, &incoming_sign_in, &incoming_missing, &mut jobs));
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
    (Value::Object(answer), renewed_sign_in)
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
