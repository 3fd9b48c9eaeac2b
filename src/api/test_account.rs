//! `test_account(account)`: connect and log in to an account's SMTP server
//! and its IMAP or POP3 server, in parallel threads, and report per protocol.

use super::errors::{internal, raise_access, raise_secret};
use crate::store::account_settings::{self, EffectiveAccount, ServerSettings};
use crate::store::{accounts, privileged, secrets};
use crate::threads;
use email_accounts_mail::connection::{FailureKind, Login};
use email_accounts_mail::probe::{probe, ProbeFailure, ProbeReport, Protocol};
use pgrx::prelude::*;
use serde_json::{json, Map, Value};

/// Not SECURITY DEFINER: decides for the role really calling, then reads the
/// settings and the password as the extension owner (see store::privileged).
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn test_account(account: &str, tenant: default!(Option<&str>, "NULL")) -> pgrx::JsonB {
    let caller = privileged::caller();
    let (settings, password) = privileged::as_extension_owner(|| {
        let managed = accounts::managed_by(account, tenant, caller).unwrap_or_else(|error| raise_access(error));
        let settings = account_settings::load(managed.account_id)
            .unwrap_or_else(|error| internal(error))
            .unwrap_or_else(|| raise_access(accounts::AccountAccessError::Unknown(account.to_owned())));
        let password = if settings.awaiting_password {
            None
        } else {
            secrets::read_password(settings.account_id).unwrap_or_else(|error| raise_secret(error))
        };
        (settings, password)
    })
    .unwrap_or_else(|error| internal(error));
    pgrx::JsonB(report(&settings, password))
}

/// Probes every enabled side of the account and assembles the jsonb answer.
fn report(settings: &EffectiveAccount, password: Option<String>) -> Value {
    let mut answer = Map::new();
    answer.insert("account".to_owned(), json!(settings.name));
    if !settings.enable_incoming && !settings.enable_outgoing {
        answer.insert("ok".to_owned(), json!(false));
        answer.insert("message".to_owned(), json!("neither enable_incoming nor enable_outgoing is on"));
        return Value::Object(answer);
    }
    let login = password.map(|password| Login {
        user: settings.login_id.clone(),
        password,
        allow_plaintext: settings.allow_plaintext_authentication,
    });
    let missing_login = if settings.awaiting_password {
        "the account is awaiting its password: call email_accounts.set_password() first"
    } else {
        "no password is set: call email_accounts.set_password() first"
    };

    let mut jobs: Vec<Box<dyn FnOnce() -> ProbeReport + Send>> = Vec::new();
    let mut sides = Vec::new();
    if settings.enable_outgoing {
        let needs_login = !settings.no_smtp_authentication;
        sides.push(plan(Protocol::Smtp, &settings.outgoing, settings, needs_login, &login, missing_login, &mut jobs));
    }
    if settings.enable_incoming {
        let protocol =
            if settings.incoming.protocol.as_deref() == Some("pop3") { Protocol::Pop3 } else { Protocol::Imap };
        sides.push(plan(protocol, &settings.incoming, settings, true, &login, missing_login, &mut jobs));
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
    Value::Object(answer)
}

/// Queues a probe job, or returns at once the report of a side that cannot be probed.
fn plan(
    protocol: Protocol,
    server: &ServerSettings,
    settings: &EffectiveAccount,
    needs_login: bool,
    login: &Option<Login>,
    missing_login: &str,
    jobs: &mut Vec<Box<dyn FnOnce() -> ProbeReport + Send>>,
) -> Option<ProbeReport> {
    let endpoint = server.endpoint(settings.extra_ca_certificate.clone());
    if needs_login && login.is_none() {
        return Some(ProbeReport {
            protocol,
            ok: false,
            elapsed_ms: 0,
            host: endpoint.host,
            port: endpoint.port,
            security: endpoint.security,
            greeting: None,
            capabilities: Vec::new(),
            error: Some(ProbeFailure { kind: FailureKind::Auth, message: missing_login.to_owned() }),
        });
    }
    let login = if needs_login { login.clone() } else { None };
    jobs.push(Box::new(move || probe(protocol, &endpoint, login.as_ref())));
    None
}
