//! Write-only passwords: `set_password()` and `rotate_encryption_key()`.
//! Neither is SECURITY DEFINER: each decides for the role really calling
//! (see store::privileged) and only then touches the secrets as the extension
//! owner. Passwords are never echoed in errors.

use super::errors::{internal, raise, raise_access, raise_secret};
use crate::store::account_settings::{self, EffectiveAccount, ServerSettings};
use crate::store::secrets::Side;
use crate::store::{accounts, privileged, secrets};
use pgrx::prelude::*;

/// set_password(account, password, tenant) of the 0.1.0–0.3.0 schemas, under
/// its old C symbol: it keeps working between installing this library and
/// ALTER EXTENSION UPDATE (those schemas keep one password for both sides).
/// Not in the 0.4.0 schema.
#[pg_extern(volatile, parallel_unsafe, sql = false)]
#[search_path(pg_catalog, pg_temp)]
fn set_password(account: &str, password: &str, tenant: default!(Option<&str>, "NULL")) {
    let caller = privileged::caller();
    privileged::as_extension_owner(|| set_password_as_owner(account, password, tenant, None, caller))
        .unwrap_or_else(|error| internal(error))
}

/// Stores the password of one side of the account (or both), encrypted and
/// bound to the account's servers as they are now; ends awaiting_password.
#[pg_extern(volatile, parallel_unsafe, name = "set_password")]
#[search_path(pg_catalog, pg_temp)]
fn set_password_of_side(
    account: &str,
    password: &str,
    tenant: default!(Option<&str>, "NULL"),
    side: default!(&str, "'both'"),
) {
    let sides: &[Side] = match side {
        "both" => &[Side::Incoming, Side::Smtp],
        "incoming" => &[Side::Incoming],
        "smtp" => &[Side::Smtp],
        _ => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("side must be both, incoming or smtp, not {side:?}"),
            None,
        ),
    };
    let caller = privileged::caller();
    privileged::as_extension_owner(|| set_password_as_owner(account, password, tenant, Some(sides), caller))
        .unwrap_or_else(|error| internal(error))
}

/// `sides`: `None` on a schema before 0.4.0 (one password, both sides).
fn set_password_as_owner(
    account: &str,
    password: &str,
    tenant: Option<&str>,
    sides: Option<&[Side]>,
    caller: pg_sys::Oid,
) {
    let managed = accounts::managed_by(account, tenant, caller).unwrap_or_else(|error| raise_access(error));
    if password.is_empty() {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "password must not be empty", None);
    }
    if password.contains(['\r', '\n', '\0']) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "password must not contain line breaks or NUL characters (IMAP, POP3 and SMTP logins cannot carry them)",
            None,
        );
    }
    if managed.ascii_encode_password && !password.is_ascii() {
        raise(
            PgSqlErrorCode::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
            format!("password of account {:?} must be ASCII: the account has ascii_encode_password on", managed.name),
            Some("Turn ascii_encode_password off to send the password as UTF-8."),
        );
    }
    let stored = match sides {
        Some(sides) => secrets::store_password(managed.account_id, sides, password),
        None => secrets::store_password_before_0_4(managed.account_id, password),
    };
    stored.unwrap_or_else(|error| raise_secret(error));
    let sides = sides.unwrap_or(&[Side::Incoming, Side::Smtp]);
    // Whoever types the password sees where it will go: an admin who may
    // change the servers made the account await it, so look before trusting.
    if let Ok(Some(settings)) = account_settings::load(managed.account_id) {
        notice!("email_accounts: the password of account {:?} is for {}", managed.name, destinations(&settings, sides));
    }
}

/// "SMTP smtp.example.com:587 (starttls), IMAP imap.example.com:993 (ssl)"
/// for the servers the account's password is now bound to.
fn destinations(settings: &EffectiveAccount, sides: &[Side]) -> String {
    let describe = |protocol: &str, server: &ServerSettings| {
        format!(
            "{protocol} {}:{} ({})",
            server.host.as_deref().unwrap_or("?"),
            server.port.map(|port| port.to_string()).unwrap_or_else(|| "?".to_owned()),
            server.security.as_deref().unwrap_or("?")
        )
    };
    let mut servers = Vec::new();
    if settings.outgoing.host.is_some() && sides.contains(&Side::Smtp) {
        servers.push(describe("SMTP", &settings.outgoing));
    }
    if settings.incoming.host.is_some() && sides.contains(&Side::Incoming) {
        let protocol = settings.incoming.protocol.as_deref().unwrap_or("incoming").to_uppercase();
        servers.push(describe(&protocol, &settings.incoming));
    }
    if servers.is_empty() {
        "no server yet".to_owned()
    } else {
        servers.join(", ")
    }
}

/// Makes a new encryption key current and re-encrypts every stored password
/// with it; returns the new key's id. Superusers only.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn rotate_encryption_key() -> i32 {
    let caller = privileged::caller();
    if !unsafe { pg_sys::superuser_arg(caller) } {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "only superusers may rotate the email_accounts encryption key",
            None,
        );
    }
    let (key_id, reencrypted) = secrets::rotate_key().unwrap_or_else(|error| raise_secret(error));
    notice!("email_accounts: key {key_id} is now current; {reencrypted} secret(s) (passwords, OAuth2 tokens and client secrets) re-encrypted");
    key_id as i32
}
