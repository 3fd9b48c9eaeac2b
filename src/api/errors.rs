//! Raising SQL errors with a proper SQLSTATE from our error types.

use crate::store::accounts::AccountAccessError;
use crate::store::secrets::SecretStoreError;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// Raises an ERROR with `code`, `message` and an optional hint; never returns.
pub fn raise(code: PgSqlErrorCode, message: impl Into<String>, hint: Option<&str>) -> ! {
    let mut report = ErrorReport::new(code, message.into(), "email_accounts");
    if let Some(hint) = hint {
        report = report.set_hint(hint);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// An error nobody but a developer can act on (SPI failed, the catalog changed under us).
pub fn internal(error: impl std::fmt::Display) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, error.to_string(), None)
}

pub fn raise_access(error: AccountAccessError) -> ! {
    let (code, hint) = match &error {
        AccountAccessError::Unknown(_) => (PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, None),
        AccountAccessError::Ambiguous(_) => (
            PgSqlErrorCode::ERRCODE_AMBIGUOUS_PARAMETER,
            Some("Account names are unique per tenant: name the tenant too (tenant => '...')."),
        ),
        AccountAccessError::Denied(_) => (PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, None),
        AccountAccessError::Spi(_) => (PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, None),
    };
    raise(code, error.to_string(), hint)
}

pub fn raise_secret(error: SecretStoreError) -> ! {
    let (code, hint) = match &error {
        SecretStoreError::KeyFile(_) => (
            PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
            Some("The key file email_accounts.keys in the data directory holds the encryption keys; restore it from backup."),
        ),
        SecretStoreError::ServersChanged { .. } => (
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            Some("Set the password again with email_accounts.set_password() if the new servers are right."),
        ),
        SecretStoreError::Decrypt { .. } | SecretStoreError::DecryptOther { .. } => (
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            Some("Set the password (or connect the OAuth2 account, or set the client secret) again."),
        ),
        SecretStoreError::Encrypt(_) | SecretStoreError::Spi(_) => (PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, None),
    };
    raise(code, error.to_string(), hint)
}
