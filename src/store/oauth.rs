//! OAuth2 state and tokens of accounts (tables account_oauth,
//! account_oauth_token, oauth_client_secret): connecting an account,
//! handing a worker what it needs to sign in (and the right to renew the
//! access token, one worker at a time), and storing what came back. Tokens
//! are sealed like passwords; nothing here puts one into an error or a log.

use super::secrets::{self, SecretStoreError};
use crate::settings;
use email_accounts_mail::oauth::{
    DeviceLogin, DevicePoll, Grant, OAuthClient, OAuthError, Renewal, TokenReport, Tokens,
};
use email_accounts_mail::secret::{KeyRing, Sealed};
use pgrx::prelude::*;
use pgrx::spi::SpiError;
use serde::{Deserialize, Serialize};

/// An access token is renewed when it has less than this left.
const RENEW_BEFORE_SECONDS: i64 = 300;
/// A token with less than this left is not used at all.
const USABLE_FOR_AT_LEAST_SECONDS: i64 = 30;
/// After a token request failed for a reason that may pass (the endpoint
/// unreachable, a server error), the endpoint is not asked again before this.
const BACK_OFF_SECONDS: i64 = 60;
/// After the token endpoint refused the OAuth2 client itself (invalid_client).
const CLIENT_BACK_OFF_SECONDS: i64 = 600;

/// The tokens of one account, sealed together as JSON. No `Debug`.
#[derive(Default, Serialize, Deserialize)]
struct StoredTokens {
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_token: Option<String>,
    /// The provider's device authorization answer while a device login waits.
    #[serde(skip_serializing_if = "Option::is_none")]
    device_login: Option<String>,
}

fn tokens_binding(account_id: i64) -> Vec<u8> {
    let mut associated = b"oauth tokens of account ".to_vec();
    associated.extend_from_slice(&account_id.to_be_bytes());
    associated
}

const CLIENT_SECRET_BINDING: &[u8] = b"oauth client secret";

#[derive(Debug, thiserror::Error)]
pub enum OAuthStoreError {
    #[error(transparent)]
    Secret(#[from] SecretStoreError),
    #[error(transparent)]
    Spi(#[from] SpiError),
    #[error("the stored OAuth2 tokens of account {0} are unreadable")]
    Unreadable(i64),
    #[error("account {account}: {problem}")]
    NotUsable { account: String, problem: String },
    #[error("account {account}: OAuth2 consent needed: {problem}")]
    ConsentNeeded { account: String, problem: String },
}

/// The OAuth2 client an account uses, from its effective settings and the
/// client's sealed secret. The token endpoint is trusted with the system
/// roots plus the extra CA of the account's domain, never the account's own
/// (which its tenant sets: the client secret travels in the request).
pub fn client_for(account_id: i64) -> Result<OAuthClient, OAuthStoreError> {
    let row = Spi::connect(|client| -> Result<_, SpiError> {
        let table = client.select(
            "SELECT settings.name, settings.oauth_token_endpoint, settings.oauth_device_authorization_endpoint,
                    settings.oauth_client_id, settings.oauth_scopes, settings.oauth_client_credentials_scopes,
                    (SELECT domain.extra_ca_certificate FROM email_accounts.domain WHERE domain.domain_name = settings.domain),
                    secret.key_id, secret.nonce, secret.ciphertext
               FROM email_accounts.account_settings AS settings
               LEFT JOIN email_accounts.oauth_client_secret AS secret
                      ON (settings.oauth_client_source = 'domain' AND secret.domain_name = settings.domain)
                      OR (settings.oauth_client_source = 'provider' AND secret.provider = settings.provider)
              WHERE settings.account_id = $1",
            Some(1),
            &[account_id.into()],
        )?;
        let Some(row) = table.into_iter().next() else { return Ok(None) };
        let sealed = match row.get::<i32>(8)? {
            Some(_) => Some(secrets::sealed_at(&row, 8)?),
            None => None,
        };
        Ok(Some((
            row.get::<String>(1)?.unwrap_or_default(),
            row.get::<String>(2)?,
            row.get::<String>(3)?,
            row.get::<String>(4)?,
            row.get::<Vec<String>>(5)?.unwrap_or_default(),
            row.get::<Vec<String>>(6)?.unwrap_or_default(),
            row.get::<String>(7)?,
            sealed,
        )))
    })?;
    let Some((name, token_url, device_url, client_id, scopes, client_credentials_scopes, extra_ca, sealed)) = row
    else {
        return Err(OAuthStoreError::NotUsable {
            account: account_id.to_string(),
            problem: "no such account".to_owned(),
        });
    };
    let not_usable = |problem: &str| OAuthStoreError::NotUsable { account: name.clone(), problem: problem.to_owned() };
    let token_url = token_url.ok_or_else(|| not_usable("its provider has no oauth_token_endpoint"))?;
    let client_id = client_id.ok_or_else(|| not_usable("no oauth_client_id is set on its domain or provider"))?;
    let client_secret = match sealed {
        Some(sealed) => Some(secrets::open(CLIENT_SECRET_BINDING, &sealed, "OAuth2 client secret")?),
        None => None,
    };
    Ok(OAuthClient {
        token_url,
        device_authorization_url: device_url,
        client_id,
        client_secret,
        scopes,
        client_credentials_scopes,
        extra_ca_pem: extra_ca,
        timeout: settings::connect_timeout(),
    })
}

/// Stores the secret of the OAuth2 client of a provider or a domain.
pub fn store_client_secret(provider: Option<&str>, domain: Option<&str>, secret: &str) -> Result<(), OAuthStoreError> {
    let sealed = secrets::seal(CLIENT_SECRET_BINDING, secret)?;
    let column = if provider.is_some() { "provider" } else { "domain_name" };
    Spi::run_with_args(
        &format!(
            "INSERT INTO email_accounts.oauth_client_secret AS secret ({column}, key_id, nonce, ciphertext)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT ({column}) DO UPDATE
                SET key_id = excluded.key_id, nonce = excluded.nonce, ciphertext = excluded.ciphertext, updated_at = now()"
        ),
        &[
            provider.or(domain).into(),
            (sealed.key_id as i32).into(),
            sealed.nonce.into(),
            sealed.ciphertext.into(),
        ],
    )?;
    // The accounts of this client backing off (after invalid_client) try the new secret at once.
    Spi::run_with_args(
        "UPDATE email_accounts.account_oauth AS oauth SET next_request_at = NULL
           FROM email_accounts.account_settings AS settings
          WHERE settings.account_id = oauth.account_id AND oauth.state = 'connected' AND oauth.next_request_at > now()
            AND ((settings.oauth_client_source = 'provider' AND settings.provider = $1)
                 OR (settings.oauth_client_source = 'domain' AND settings.domain = $2))",
        &[provider.into(), domain.into()],
    )?;
    Ok(())
}

fn seal_tokens(account_id: i64, tokens: &StoredTokens) -> Result<Sealed, OAuthStoreError> {
    let json = serde_json::to_string(tokens).map_err(|_| OAuthStoreError::Unreadable(account_id))?;
    Ok(secrets::seal(&tokens_binding(account_id), &json)?)
}

fn write_tokens(account_id: i64, tokens: &StoredTokens) -> Result<(), OAuthStoreError> {
    let sealed = seal_tokens(account_id, tokens)?;
    Spi::run_with_args(
        "INSERT INTO email_accounts.account_oauth_token AS token (account_id, key_id, nonce, ciphertext)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (account_id) DO UPDATE
            SET key_id = excluded.key_id, nonce = excluded.nonce, ciphertext = excluded.ciphertext, updated_at = now()",
        &[account_id.into(), (sealed.key_id as i32).into(), sealed.nonce.into(), sealed.ciphertext.into()],
    )?;
    Ok(())
}

fn read_tokens(account_id: i64) -> Result<Option<StoredTokens>, OAuthStoreError> {
    let sealed = Spi::connect(|client| -> Result<Option<Sealed>, SpiError> {
        let table = super::kept_plans::select(
            client,
            "SELECT key_id, nonce, ciphertext FROM email_accounts.account_oauth_token WHERE account_id = $1",
            &[account_id.into()],
        )?;
        let Some(row) = table.first() else { return Ok(None) };
        Ok(Some(secrets::sealed_at(row, 1)?))
    })?;
    let Some(sealed) = sealed else { return Ok(None) };
    let json = secrets::open(&tokens_binding(account_id), &sealed, "OAuth2 tokens")?;
    serde_json::from_str(&json).map(Some).map_err(|_| OAuthStoreError::Unreadable(account_id))
}

/// Records a new grant for the account (state connected, or waiting for
/// approval with a device login), bound to its settings as they are now.
/// Replaces whatever grant it had: a worker renewing the old one finds its
/// lease gone and stores nothing.
fn connect(
    account_id: i64,
    grant_type: &str,
    state: &str,
    tokens: &StoredTokens,
    access_token_expires_at: Option<i64>,
    device_login_expires_at: Option<i64>,
    next_request_at: Option<i64>,
) -> Result<(), OAuthStoreError> {
    Spi::run_with_args(
        "INSERT INTO email_accounts.account_oauth AS oauth
                (account_id, grant_type, state, problem, bound_settings, access_token_expires_at,
                 device_login_expires_at, next_request_at, refreshing_until, refresh_lease, refreshed_at)
         VALUES ($1, $2, $3, NULL, email_accounts.oauth_binding($1), pg_catalog.to_timestamp($4),
                 pg_catalog.to_timestamp($5), pg_catalog.to_timestamp($6), NULL, NULL, CASE WHEN $4 IS NOT NULL THEN now() END)
         ON CONFLICT (account_id) DO UPDATE
            SET grant_type = excluded.grant_type, state = excluded.state, problem = NULL,
                bound_settings = excluded.bound_settings, access_token_expires_at = excluded.access_token_expires_at,
                device_login_expires_at = excluded.device_login_expires_at, next_request_at = excluded.next_request_at,
                refreshing_until = NULL, refresh_lease = NULL, refreshed_at = excluded.refreshed_at, updated_at = now()",
        &[
            account_id.into(),
            grant_type.into(),
            state.into(),
            access_token_expires_at.map(|at| at as f64).into(),
            device_login_expires_at.map(|at| at as f64).into(),
            next_request_at.map(|at| at as f64).into(),
        ],
    )?;
    write_tokens(account_id, tokens)?;
    // Mail may wait for this account; the receiver polls a device login.
    Spi::run("SELECT email_accounts.wake_workers_at_commit()")?;
    Ok(())
}

/// Connects the account with a refresh token an application obtained.
pub fn store_refresh_token(account_id: i64, refresh_token: &str) -> Result<(), OAuthStoreError> {
    let tokens = StoredTokens { refresh_token: Some(refresh_token.to_owned()), ..StoredTokens::default() };
    connect(account_id, "refresh_token", "connected", &tokens, None, None, None)
}

/// Connects the account with tokens a grant just gave.
pub fn store_granted(account_id: i64, grant_type: &str, granted: &Tokens) -> Result<(), OAuthStoreError> {
    let tokens = StoredTokens {
        refresh_token: granted.refresh_token.clone(),
        access_token: Some(granted.access_token.clone()),
        device_login: None,
    };
    connect(account_id, grant_type, "connected", &tokens, Some(granted.expires_at), None, None)
}

/// Records a device login waiting for the user's approval.
pub fn store_device_login(account_id: i64, login: &DeviceLogin) -> Result<(), OAuthStoreError> {
    let now = email_accounts_mail::token::unix_now();
    let tokens = StoredTokens { device_login: Some(login.state.clone()), ..StoredTokens::default() };
    let expires_at = now + login.expires_in.as_secs() as i64;
    let next = now + login.interval.as_secs().max(1) as i64;
    connect(account_id, "device_code", "waiting for approval", &tokens, None, Some(expires_at), Some(next))
}

/// How a worker signs in to an account's servers.
pub enum WorkerCredential {
    Password(String),
    /// An OAuth2 access token (`None`: none usable now) and, when this
    /// worker holds the account's renewal lease (named by `lease`), the
    /// right to renew it.
    Bearer {
        access_token: Option<String>,
        /// (Boxed: a client's settings, several times the other variant.)
        renewal: Option<Box<Renewal>>,
        lease: Option<String>,
    },
}

impl WorkerCredential {
    /// The renewal lease this worker holds (to hand to `record_report`).
    pub fn renewal_lease(&self) -> Option<String> {
        match self {
            WorkerCredential::Bearer { lease, .. } => lease.clone(),
            WorkerCredential::Password(_) => None,
        }
    }

    /// No token to use now and no right to get one: another worker renews it, or a back-off runs.
    pub fn must_wait(&self) -> bool {
        matches!(self, WorkerCredential::Bearer { access_token: None, renewal: None, .. })
    }

    pub fn sign_in(self, user: String, allow_plaintext: bool) -> email_accounts_mail::oauth::SignIn {
        use email_accounts_mail::connection::Login;
        use email_accounts_mail::oauth::SignIn;
        match self {
            WorkerCredential::Password(password) => {
                SignIn::with_password(Login::with_password(user, password, allow_plaintext))
            }
            WorkerCredential::Bearer { access_token, renewal, .. } => {
                SignIn::with_token(user, access_token, renewal.map(|renewal| *renewal), allow_plaintext)
            }
        }
    }
}

/// What a worker signs in with on one side: that side's password, or the
/// OAuth2 access token (one per account, for whichever side uses OAuth2).
/// For OAuth2 with `lease_seconds`, the worker takes the account's renewal
/// lease for that long when no other worker holds it: it then gets a
/// `Renewal` (a token request may follow: at once when the access token
/// expires within minutes, or after a server refused it) and must
/// `record_report` afterwards. Without a lease it gets the stored token only,
/// and none once that has (nearly) expired. An IDLE watcher asks without.
pub fn worker_credential(
    account_id: i64,
    side: secrets::Side,
    oauth2: bool,
    lease_seconds: Option<i64>,
) -> Result<Option<WorkerCredential>, OAuthStoreError> {
    if !oauth2 {
        return Ok(secrets::read_password(account_id, side)?.map(WorkerCredential::Password));
    }
    // A row another transaction holds (a tenant's open transaction too) is
    // skipped, never waited for: that account waits, the others go on.
    let lease = match lease_seconds {
        Some(seconds) => Spi::connect_mut(|client| -> Result<Option<String>, SpiError> {
            let updated = client.update(
                "UPDATE email_accounts.account_oauth AS oauth
                    SET refreshing_until = now() + pg_catalog.make_interval(secs => $2),
                        refresh_lease = pg_catalog.gen_random_uuid()
                  WHERE oauth.account_id = (SELECT free.account_id FROM email_accounts.account_oauth AS free
                                             WHERE free.account_id = $1 AND free.state = 'connected'
                                               AND (free.refreshing_until IS NULL OR free.refreshing_until < now())
                                               AND (free.next_request_at IS NULL OR free.next_request_at <= now())
                                               AND free.bound_settings = email_accounts.oauth_binding(free.account_id)
                                               FOR UPDATE SKIP LOCKED)
                  RETURNING oauth.refresh_lease::text",
                None,
                &[account_id.into(), (seconds as f64).into()],
            )?;
            // (An UPDATE that matched nothing has no first row to read.)
            if updated.is_empty() {
                return Ok(None);
            }
            updated.first().get::<String>(1)
        })?,
        None => None,
    };
    let credential = bearer_credential(account_id, lease.clone());
    if credential.is_err() {
        if let Some(lease) = &lease {
            release_lease(account_id, lease)?;
        }
    }
    credential
}

/// Whether `query` (which locks: FOR UPDATE) finds a row (`Spi::get_one`
/// errs on none; a read-only `select` refuses FOR UPDATE).
fn row_exists(query: &str, arguments: &[pgrx::datum::DatumWithOid<'_>]) -> Result<bool, SpiError> {
    Spi::connect_mut(|client| Ok(!client.update(query, Some(1), arguments)?.is_empty()))
}

fn release_lease(account_id: i64, lease: &str) -> Result<(), SpiError> {
    Spi::run_with_args(
        "UPDATE email_accounts.account_oauth SET refreshing_until = NULL, refresh_lease = NULL
          WHERE account_id = $1 AND refresh_lease::text = $2",
        &[account_id.into(), lease.into()],
    )
}

/// An account's OAuth2 connection as `bearer_credential` reads it.
struct OAuthState {
    grant_type: String,
    state: String,
    problem: Option<String>,
    /// The servers, login and client are those it was connected with.
    binding_holds: bool,
    /// The access token lasts USABLE_FOR_AT_LEAST_SECONDS more: good to use.
    usable: bool,
    /// It lasts RENEW_BEFORE_SECONDS more: not to be renewed yet.
    fresh: bool,
}

fn bearer_credential(account_id: i64, lease: Option<String>) -> Result<Option<WorkerCredential>, OAuthStoreError> {
    let state = Spi::connect(|client| -> Result<Option<OAuthState>, SpiError> {
        let table = super::kept_plans::select(
            client,
            "SELECT oauth.grant_type, oauth.state, oauth.problem,
                    oauth.bound_settings = email_accounts.oauth_binding(oauth.account_id),
                    coalesce(oauth.access_token_expires_at > now() + pg_catalog.make_interval(secs => $2), false),
                    coalesce(oauth.access_token_expires_at > now() + pg_catalog.make_interval(secs => $3), false)
               FROM email_accounts.account_oauth AS oauth WHERE oauth.account_id = $1",
            &[account_id.into(), (USABLE_FOR_AT_LEAST_SECONDS as f64).into(), (RENEW_BEFORE_SECONDS as f64).into()],
        )?;
        let Some(row) = table.first() else { return Ok(None) };
        Ok(Some(OAuthState {
            grant_type: row.get::<String>(1)?.unwrap_or_default(),
            state: row.get::<String>(2)?.unwrap_or_default(),
            problem: row.get::<String>(3)?,
            binding_holds: row.get::<bool>(4)?.unwrap_or(false),
            usable: row.get::<bool>(5)?.unwrap_or(false),
            fresh: row.get::<bool>(6)?.unwrap_or(false),
        }))
    })?;
    let Some(OAuthState { grant_type, state, problem, binding_holds, usable, fresh }) = state else { return Ok(None) };
    let consent = |problem: String| OAuthStoreError::ConsentNeeded { account: account_id.to_string(), problem };
    if state != "connected" {
        return Err(consent(problem.unwrap_or_else(|| format!("the account is {state}"))));
    }
    if !binding_holds {
        return Err(consent("the account's servers, login or OAuth2 client changed since it was connected".to_owned()));
    }
    let tokens = read_tokens(account_id)?.unwrap_or_default();
    let grant = match (grant_type.as_str(), tokens.refresh_token) {
        ("client_credentials", _) => Some(Grant::ClientCredentials),
        (_, Some(refresh_token)) => Some(Grant::RefreshToken(refresh_token)),
        (_, None) => None,
    };
    if grant.is_none() && !usable {
        // Connected without a refresh token and the access token is gone.
        let problem =
            "the provider gave no refresh token (is offline_access among the scopes?) and the access token expired";
        // Only the grant seen here, and never waiting for a row someone holds.
        Spi::run_with_args(
            "UPDATE email_accounts.account_oauth
                SET state = 'consent needed', problem = $2, refreshing_until = NULL, refresh_lease = NULL, updated_at = now()
              WHERE account_id = (SELECT account_id FROM email_accounts.account_oauth
                                   WHERE account_id = $1 AND state = 'connected' AND grant_type = $3
                                     AND coalesce(access_token_expires_at < now(), true)
                                   FOR UPDATE SKIP LOCKED)",
            &[account_id.into(), problem.into(), grant_type.as_str().into()],
        )?;
        return Err(consent(problem.to_owned()));
    }
    // Only with the lease and a grant to renew with: a token about to expire is renewed before use.
    let (renewal, lease) = match (grant, lease) {
        (Some(grant), Some(lease)) => (Some(Box::new(Renewal { client: client_for(account_id)?, grant })), Some(lease)),
        (None, Some(lease)) => {
            release_lease(account_id, &lease)?;
            (None, None)
        }
        (_, None) => (None, None),
    };
    let access_token = tokens.access_token.filter(|_| if renewal.is_some() { fresh } else { usable });
    Ok(Some(WorkerCredential::Bearer { access_token, renewal, lease }))
}

/// Stores what a sign-in did to the account's tokens: a new access token
/// (and a rotated refresh token), a refused grant (consent needed), a
/// failed request (back off), or an access token a server refused (renew
/// it next time). What was obtained is stored only under the lease it was
/// obtained with, which this ends; a grant replaced meanwhile (or a row a
/// tenant's transaction holds) is left alone.
pub fn record_report(account_id: i64, report: &TokenReport, lease: Option<&str>) -> Result<(), OAuthStoreError> {
    if report.refused && report.renewed.is_none() {
        Spi::run_with_args(
            "UPDATE email_accounts.account_oauth
                SET access_token_expires_at = least(access_token_expires_at, now()), updated_at = now()
              WHERE account_id = (SELECT account_id FROM email_accounts.account_oauth
                                   WHERE account_id = $1 FOR UPDATE SKIP LOCKED)",
            &[account_id.into()],
        )?;
    }
    let Some(lease) = lease else { return Ok(()) };
    // Waits for the row (within the worker's lock_timeout): what was
    // obtained under the lease is worth it; the lease names whose it is.
    let still_leased = row_exists(
        "SELECT FROM email_accounts.account_oauth WHERE account_id = $1 AND refresh_lease::text = $2 FOR UPDATE",
        &[account_id.into(), lease.into()],
    )?;
    if !still_leased {
        if report.renewed.is_some() {
            warning!("email_accounts: a renewed access token of account {account_id} was not stored: its grant was replaced meanwhile");
        }
        return Ok(());
    }
    if let Some(renewed) = &report.renewed {
        let mut tokens = read_tokens(account_id)?.unwrap_or_default();
        tokens.access_token = Some(renewed.access_token.clone());
        if let Some(rotated) = &renewed.refresh_token {
            tokens.refresh_token = Some(rotated.clone());
        }
        write_tokens(account_id, &tokens)?;
        // A renewed token the server refused too is renewed again next time.
        Spi::run_with_args(
            "UPDATE email_accounts.account_oauth
                SET access_token_expires_at = CASE WHEN $3 THEN now() ELSE pg_catalog.to_timestamp($2) END,
                    refreshed_at = now(), problem = NULL, next_request_at = NULL,
                    refreshing_until = NULL, refresh_lease = NULL, updated_at = now()
              WHERE account_id = $1",
            &[account_id.into(), (renewed.expires_at as f64).into(), report.refused.into()],
        )?;
    } else if let Some(failure) = &report.failure {
        record_failure(account_id, failure)?;
    } else {
        release_lease(account_id, lease)?;
    }
    Ok(())
}

fn record_failure(account_id: i64, failure: &OAuthError) -> Result<(), SpiError> {
    if failure.needs_consent() {
        Spi::run_with_args(
            "UPDATE email_accounts.account_oauth
                SET state = 'consent needed', problem = $2, refreshing_until = NULL, refresh_lease = NULL, updated_at = now()
              WHERE account_id = $1",
            &[account_id.into(), failure.to_string().into()],
        )
    } else {
        // A refused client (an expired secret) is the organisation's to fix
        // for all its accounts: back off longer, and resume when
        // set_oauth_client_secret() stores a new secret.
        let back_off =
            if matches!(failure, OAuthError::InvalidClient(_)) { CLIENT_BACK_OFF_SECONDS } else { BACK_OFF_SECONDS };
        Spi::run_with_args(
            "UPDATE email_accounts.account_oauth
                SET problem = $2, next_request_at = now() + pg_catalog.make_interval(secs => $3),
                    refreshing_until = NULL, refresh_lease = NULL, updated_at = now()
              WHERE account_id = $1",
            &[account_id.into(), failure.to_string().into(), (back_off as f64).into()],
        )
    }
}

/// A device login due to be polled.
pub struct PendingDeviceLogin {
    pub account_id: i64,
    pub client: OAuthClient,
    pub state: String,
}

/// The device logins whose next poll is due (at most `limit`); an expired
/// one needs consent again and is not returned.
pub fn due_device_logins(limit: i64) -> Result<Vec<PendingDeviceLogin>, OAuthStoreError> {
    Spi::run(
        "UPDATE email_accounts.account_oauth
            SET state = 'consent needed', updated_at = now(),
                problem = 'the device login expired before the user approved it; call oauth_device_login() again'
          WHERE state = 'waiting for approval' AND device_login_expires_at <= now()",
    )?;
    let due: Vec<i64> = Spi::connect(|client| {
        client
            .select(
                "SELECT account_id FROM email_accounts.account_oauth
                  WHERE state = 'waiting for approval' AND grant_type = 'device_code'
                    AND coalesce(next_request_at, now()) <= now()
                  ORDER BY next_request_at LIMIT $1",
                None,
                &[limit.into()],
            )?
            .map(|row| row.get::<i64>(1).map(Option::unwrap_or_default))
            .collect::<Result<Vec<i64>, SpiError>>()
    })?;
    let mut pending = Vec::new();
    for account_id in due {
        let state = read_tokens(account_id)?.and_then(|tokens| tokens.device_login);
        let prepared =
            state.ok_or(OAuthStoreError::Unreadable(account_id)).and_then(|state| Ok((client_for(account_id)?, state)));
        match prepared {
            Ok((client, state)) => pending.push(PendingDeviceLogin { account_id, client, state }),
            Err(error) => record_failure(account_id, &OAuthError::Settings(error.to_string()))?,
        }
    }
    Ok(pending)
}

/// Stores the answer to one poll of a device login, unless the login was
/// replaced or cancelled meanwhile.
pub fn record_device_poll(account_id: i64, polled: &Result<DevicePoll, OAuthError>) -> Result<(), OAuthStoreError> {
    let waiting = row_exists(
        "SELECT FROM email_accounts.account_oauth WHERE account_id = $1 AND state = 'waiting for approval' FOR UPDATE",
        &[account_id.into()],
    )?;
    if !waiting {
        return Ok(());
    }
    match polled {
        Ok(DevicePoll::Pending(interval)) => Spi::run_with_args(
            "UPDATE email_accounts.account_oauth
                SET next_request_at = now() + pg_catalog.make_interval(secs => $2), problem = NULL, updated_at = now()
              WHERE account_id = $1",
            &[account_id.into(), (interval.as_secs().max(1) as f64).into()],
        )?,
        Ok(DevicePoll::Approved(granted)) => {
            let tokens = StoredTokens {
                refresh_token: granted.refresh_token.clone(),
                access_token: Some(granted.access_token.clone()),
                device_login: None,
            };
            write_tokens(account_id, &tokens)?;
            Spi::run_with_args(
                "UPDATE email_accounts.account_oauth
                    SET grant_type = 'refresh_token', state = 'connected', problem = NULL,
                        access_token_expires_at = pg_catalog.to_timestamp($2), refreshed_at = now(),
                        device_login_expires_at = NULL, next_request_at = NULL, updated_at = now()
                  WHERE account_id = $1",
                &[account_id.into(), (granted.expires_at as f64).into()],
            )?;
            // Mail may wait for this account.
            Spi::run("SELECT email_accounts.wake_workers_at_commit()")?;
            if granted.refresh_token.is_none() {
                warning!("email_accounts: the device login of account {account_id} gave no refresh token (is offline_access among the scopes?); it will need consent again when the access token expires");
            }
        }
        Err(failure) => record_failure(account_id, failure)?,
    }
    Ok(())
}

/// Seconds until the next device login poll is due (`None`: none waits; may be negative).
pub fn seconds_until_next_device_poll() -> Result<Option<f64>, SpiError> {
    Spi::get_one(
        "SELECT extract(epoch FROM min(coalesce(next_request_at, now())) - now())::float8
           FROM email_accounts.account_oauth WHERE state = 'waiting for approval'",
    )
}

/// Re-encrypts every sealed token set and client secret with the ring's
/// current key (key rotation); returns how many.
pub fn reseal_all(ring: &KeyRing) -> Result<i64, SecretStoreError> {
    type Row = (Option<i64>, Option<String>, Option<String>, Sealed);
    let rows = Spi::connect(|client| -> Result<Vec<Row>, SpiError> {
        let mut rows = Vec::new();
        for query in [
            "SELECT account_id, NULL::text, NULL::text, key_id, nonce, ciphertext
               FROM email_accounts.account_oauth_token FOR UPDATE",
            "SELECT NULL::bigint, provider, domain_name, key_id, nonce, ciphertext
               FROM email_accounts.oauth_client_secret FOR UPDATE",
        ] {
            for row in client.select(query, None, &[])? {
                rows.push((
                    row.get::<i64>(1)?,
                    row.get::<String>(2)?,
                    row.get::<String>(3)?,
                    secrets::sealed_at(&row, 4)?,
                ));
            }
        }
        Ok(rows)
    })?;
    let count = rows.len() as i64;
    for (account_id, provider, domain_name, sealed) in rows {
        let (associated, what) = match account_id {
            Some(account_id) => (tokens_binding(account_id), "OAuth2 tokens"),
            None => (CLIENT_SECRET_BINDING.to_vec(), "OAuth2 client secret"),
        };
        let plain =
            ring.open_for(&associated, &sealed).map_err(|source| SecretStoreError::DecryptOther { what, source })?;
        let resealed = ring.seal_for(&associated, &plain).map_err(SecretStoreError::Encrypt)?;
        let key_id = resealed.key_id as i32;
        match account_id {
            Some(account_id) => Spi::run_with_args(
                "UPDATE email_accounts.account_oauth_token SET key_id = $2, nonce = $3, ciphertext = $4, updated_at = now()
                  WHERE account_id = $1",
                &[account_id.into(), key_id.into(), resealed.nonce.into(), resealed.ciphertext.into()],
            )?,
            None => Spi::run_with_args(
                "UPDATE email_accounts.oauth_client_secret SET key_id = $3, nonce = $4, ciphertext = $5, updated_at = now()
                  WHERE provider IS NOT DISTINCT FROM $1 AND domain_name IS NOT DISTINCT FROM $2",
                &[provider.into(), domain_name.into(), key_id.into(), resealed.nonce.into(), resealed.ciphertext.into()],
            )?,
        }
    }
    Ok(count)
}
