//! Connecting accounts by OAuth2 from SQL: a refresh token an application
//! obtained, a device login for a DBA in psql (RFC 8628), client credentials
//! (app-only), and the secret of an organisation's OAuth2 client. Like
//! set_password(), none is SECURITY DEFINER: each decides for the role
//! really calling, then works as the extension owner. Token requests run on
//! a thread, bounded by connect_timeout. No token or secret is ever echoed.

use super::errors::{internal, raise, raise_access, raise_secret};
use crate::store::accounts::{self, ManagedAccount};
use crate::store::oauth::{self, OAuthStoreError};
use crate::store::{account_settings, privileged};
use crate::threads;
use email_accounts_mail::oauth::{DeviceLogin, OAuthClient, OAuthError, Tokens};
use pgrx::prelude::*;

/// Raises the error of a failed token request with a SQLSTATE saying whose move it is.
fn raise_oauth(account: &str, error: OAuthError) -> ! {
    let error = error.shortened();
    let (code, hint) = match &error {
        OAuthError::Unreachable { .. } => (PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE, None),
        OAuthError::InvalidClient(_) => (
            PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            Some("Check oauth_client_id on the domain or provider and the secret given to set_oauth_client_secret()."),
        ),
        OAuthError::InvalidGrant(_) | OAuthError::AccessDenied(_) | OAuthError::DeviceCodeExpired => {
            (PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION, None)
        }
        OAuthError::ScopeMissing(_) => (
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            Some("Grant the application the provider's mail permissions (README \"OAuth2\")."),
        ),
        OAuthError::Refused { .. } | OAuthError::BadResponse(_) => (PgSqlErrorCode::ERRCODE_CONNECTION_EXCEPTION, None),
        OAuthError::Settings(_) => (PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, None),
    };
    raise(code, format!("account {account:?}: OAuth2: {error}"), hint)
}

fn raise_store(error: OAuthStoreError) -> ! {
    match error {
        OAuthStoreError::Secret(error) => raise_secret(error),
        OAuthStoreError::NotUsable { .. } | OAuthStoreError::ConsentNeeded { .. } => raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            error.to_string(),
            Some("Set oauth_client_id (and its secret) on the account's domain or provider; see README \"OAuth2\"."),
        ),
        other => internal(other),
    }
}

/// Refuses unless the role really calling is a superuser, or may change
/// domains and providers (UPDATE on both, bound to every tenant).
fn require_every_tenant(what: &str) {
    let may = Spi::get_one::<bool>(
        "SELECT pg_catalog.has_table_privilege('email_accounts.domain', 'UPDATE')
            AND pg_catalog.has_table_privilege('email_accounts.provider', 'UPDATE')
            AND email_accounts.bound_to_every_tenant()",
    )
    .unwrap_or_else(|error| internal(error))
    .unwrap_or(false);
    if !(may || unsafe { pg_sys::superuser() }) {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("only superusers and email_accounts_admin members bound to every tenant (*) {what}"),
            None,
        );
    }
}

/// The account the caller manages, which must sign in with OAuth2; its client.
fn oauth_account(account: &str, tenant: Option<&str>, caller: pg_sys::Oid) -> (ManagedAccount, OAuthClient) {
    let managed = accounts::managed_by(account, tenant, caller).unwrap_or_else(|error| raise_access(error));
    let settings = account_settings::load_with_sign_in(managed.account_id)
        .unwrap_or_else(|error| internal(error))
        .unwrap_or_else(|| raise_access(accounts::AccountAccessError::Unknown(account.to_owned())));
    if !settings.oauth2 && !settings.smtp_oauth2 {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("account {account:?} signs in with a password, not OAuth2"),
            Some("Set auth_method (or smtp_auth_method) = 'oauth2' on the account, or auth_method on its domain or provider, first."),
        );
    }
    let client = oauth::client_for(managed.account_id).unwrap_or_else(|error| raise_store(error));
    (managed, client)
}

/// Connects the account with a refresh token that an application obtained
/// (authorization code flow). Nothing is asked of the provider here (an
/// application may call this inside its own transaction): the workers get
/// an access token with it at first use, and test_account() checks it now.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn set_oauth_refresh_token(account: &str, refresh_token: &str, tenant: default!(Option<&str>, "NULL")) {
    if refresh_token.is_empty()
        || refresh_token.contains(|character: char| character.is_whitespace() || character.is_control())
    {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "refresh_token must not be empty or contain blanks or control characters",
            None,
        );
    }
    let caller = privileged::caller();
    privileged::as_extension_owner(|| {
        let (managed, client) = oauth_account(account, tenant, caller);
        oauth::store_refresh_token(managed.account_id, refresh_token).unwrap_or_else(|error| raise_store(error));
        notice!(
            "email_accounts: account {:?} is connected by OAuth2; its tokens go to {} and its servers (test_account() checks them now)",
            managed.name,
            client.token_url
        );
    })
    .unwrap_or_else(|error| internal(error))
}

/// Starts a device login (RFC 8628): returns where the user signs in and
/// the code to enter. The receiver worker polls the token endpoint and
/// connects the account once the user approved; account_settings.oauth_state
/// says `waiting for approval` until then.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn oauth_device_login(
    account: &str,
    tenant: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(verification_uri, String),
        name!(user_code, String),
        name!(expires_at, pgrx::datum::TimestampWithTimeZone),
        name!(message, String),
    ),
> {
    let caller = privileged::caller();
    let row = privileged::as_extension_owner(|| {
        let (managed, client) = oauth_account(account, tenant, caller);
        let secret = client.client_secret.clone().unwrap_or_default();
        let started: Result<DeviceLogin, OAuthError> =
            threads::run_one(move || client.start_device_login()).map_err(|error| error.without(&secret));
        let login = started.unwrap_or_else(|error| raise_oauth(account, error));
        oauth::store_device_login(managed.account_id, &login).unwrap_or_else(|error| raise_store(error));
        let expires_at = Spi::get_one_with_args::<pgrx::datum::TimestampWithTimeZone>(
            "SELECT now() + pg_catalog.make_interval(secs => $1)",
            &[(login.expires_in.as_secs() as f64).into()],
        )
        .unwrap_or_else(|error| internal(error))
        .unwrap_or_else(|| internal("now() is NULL"));
        let uri = login.verification_uri_complete.clone().unwrap_or_else(|| login.verification_uri.clone());
        let message = format!(
            "Sign in to the mailbox of account {:?} at {} and enter the code {} within {} minutes; \
             account_settings.oauth_state turns to connected once you have.",
            managed.name,
            login.verification_uri,
            login.user_code,
            login.expires_in.as_secs().div_ceil(60)
        );
        (uri, login.user_code, expires_at, message)
    })
    .unwrap_or_else(|error| internal(error));
    TableIterator::once(row)
}

/// Connects the account with client credentials (app-only access, where the
/// provider has oauth_client_credentials_scopes; Microsoft 365 needs the
/// application's service principal granted access to the mailbox). Returns
/// when the first access token expires. An app-only token opens whatever
/// mailbox the organisation granted the application, so only roles that may
/// change every domain and provider (superusers, email_accounts_admin bound
/// to every tenant) connect it: a tenant must not mint one from the client
/// of an organisation its accounts' addresses merely name.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn connect_oauth_client_credentials(
    account: &str,
    tenant: default!(Option<&str>, "NULL"),
) -> pgrx::datum::TimestampWithTimeZone {
    require_every_tenant("connect accounts by client credentials (app-only access)");
    let caller = privileged::caller();
    privileged::as_extension_owner(|| {
        let (managed, client) = oauth_account(account, tenant, caller);
        if client.client_credentials_scopes.is_empty() {
            raise(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("account {account:?}: its provider offers no client credentials for mail (oauth_client_credentials_scopes is empty)"),
                None,
            );
        }
        let secret = client.client_secret.clone().unwrap_or_default();
        let granted: Result<Tokens, OAuthError> =
            threads::run_one(move || client.client_credentials()).map_err(|error| error.without(&secret));
        let granted = granted.unwrap_or_else(|error| raise_oauth(account, error));
        let tokens = Tokens { refresh_token: None, ..granted };
        oauth::store_granted(managed.account_id, "client_credentials", &tokens).unwrap_or_else(|error| raise_store(error));
        Spi::get_one_with_args::<pgrx::datum::TimestampWithTimeZone>(
            "SELECT pg_catalog.to_timestamp($1)",
            &[(tokens.expires_at as f64).into()],
        )
        .unwrap_or_else(|error| internal(error))
        .unwrap_or_else(|| internal("to_timestamp is NULL"))
    })
    .unwrap_or_else(|error| internal(error))
}

/// Stores the secret of the OAuth2 client named by a provider's or a
/// domain's oauth_client_id (exactly one of them), encrypted. For roles that
/// may change that row: superusers, and email_accounts_admin members bound
/// to every tenant.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn set_oauth_client_secret(
    secret: &str,
    provider: default!(Option<&str>, "NULL"),
    domain: default!(Option<&str>, "NULL"),
) {
    let (table, key) = match (provider, domain) {
        (Some(provider), None) => ("provider", provider),
        (None, Some(domain)) => ("domain", domain),
        _ => raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "name either provider or domain, not both", None),
    };
    if secret.is_empty() || secret.contains(|character: char| character.is_control()) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "secret must not be empty or contain control characters",
            None,
        );
    }
    require_every_tenant("set OAuth2 client secrets");
    privileged::as_extension_owner(|| {
        let column = if table == "provider" { "name" } else { "domain_name" };
        let exists = Spi::get_one_with_args::<bool>(
            &format!("SELECT EXISTS (SELECT FROM email_accounts.{table} WHERE {column} = $1)"),
            &[key.into()],
        )
        .unwrap_or_else(|error| internal(error))
        .unwrap_or(false);
        if !exists {
            raise(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("there is no {table} {key:?}"), None);
        }
        oauth::store_client_secret(provider, domain, secret).unwrap_or_else(|error| raise_store(error));
    })
    .unwrap_or_else(|error| internal(error))
}
