//! One OAuth2 client at one provider: refreshing a token, client
//! credentials, and the device-code flow (RFC 8628), one request per call so
//! a worker never sleeps inside it.

use super::error::OAuthError;
use super::http::{HttpError, HttpsClient};
use oauth2::basic::{BasicClient, BasicTokenResponse};
use oauth2::{
    AuthType, ClientId, ClientSecret, DeviceAuthorizationUrl, DeviceCodeErrorResponseType, ErrorResponseType,
    RefreshToken, RequestTokenError, Scope, StandardDeviceAuthorizationResponse, StandardErrorResponse, TokenResponse,
    TokenUrl,
};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Lifetime assumed when a token response does not say (RFC 6749 makes
/// `expires_in` optional): an hour, what Microsoft and Google give; a token
/// that dies sooner is refused and renewed then.
const ASSUMED_LIFETIME: Duration = Duration::from_secs(3600);
/// Bounds on what a device authorization answer may ask for: the crate adds
/// to the interval on slow_down, and the poll schedule is stored.
const LONGEST_POLL_INTERVAL: u64 = 60;
const LONGEST_DEVICE_LOGIN: u64 = 3600;

/// An OAuth2 client at a provider's token endpoint, as an account's
/// effective settings name it. `Debug` leaves the secret out.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthClient {
    pub token_url: String,
    pub device_authorization_url: Option<String>,
    pub client_id: String,
    pub client_secret: Option<String>,
    /// Scopes asked for on behalf of a user (device code, refresh).
    pub scopes: Vec<String>,
    /// Scopes asked for with client credentials (app-only access).
    pub client_credentials_scopes: Vec<String>,
    /// Extra trusted CA certificates (PEM) besides the system's.
    pub extra_ca_pem: Option<String>,
    /// Bound for connecting and for every read and write.
    pub timeout: Duration,
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("OAuthClient")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "<secret>"))
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// What a token endpoint granted. `Debug` leaves the tokens out.
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens {
    pub access_token: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// A new refresh token, when the endpoint sent one (Microsoft rotates them).
    pub refresh_token: Option<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Tokens")
            .field("expires_at", &self.expires_at)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "<new>"))
            .finish()
    }
}

/// A started device login: what the user is shown, and the provider's whole
/// answer (it holds the device code, a secret) for the polls that follow.
#[derive(Clone)]
pub struct DeviceLogin {
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub user_code: String,
    pub expires_in: Duration,
    pub interval: Duration,
    /// The provider's answer as JSON: keep it secret, hand it to `poll_device_login`.
    pub state: String,
}

/// What one poll of a device login found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicePoll {
    /// Not approved yet: poll again after this long.
    Pending(Duration),
    Approved(Tokens),
}

/// A panic inside a token request (the crate's arithmetic on what a server
/// sent, say) becomes an error of that request, never a dead worker.
fn guarded<T>(request: impl FnOnce() -> Result<T, OAuthError>) -> Result<T, OAuthError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(request))
        .unwrap_or_else(|_| Err(OAuthError::BadResponse("the answer could not be handled".to_owned())))
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs() as i64).unwrap_or(0)
}

impl Tokens {
    fn from_response(response: &BasicTokenResponse) -> Tokens {
        let lifetime = response.expires_in().unwrap_or(ASSUMED_LIFETIME);
        Tokens {
            access_token: response.access_token().secret().clone(),
            expires_at: unix_now() + lifetime.as_secs().min(i32::MAX as u64) as i64,
            refresh_token: response.refresh_token().map(|token| token.secret().clone()),
        }
    }
}

/// Maps the crate's error for a token request (a plain one or a device-code poll) to ours.
fn token_error<T: ErrorResponseType + std::fmt::Display + 'static>(
    url: &str,
    error: RequestTokenError<HttpError, StandardErrorResponse<T>>,
) -> OAuthError {
    match error {
        RequestTokenError::ServerResponse(response) => {
            OAuthError::from_code(&response.error().to_string(), response.error_description().map(String::as_str))
        }
        RequestTokenError::Request(error) => OAuthError::Unreachable { url: url.to_owned(), reason: error.0 },
        // Only where parsing failed: serde's message may quote a value.
        RequestTokenError::Parse(error, _) => OAuthError::BadResponse(format!("at {}", error.path())),
        RequestTokenError::Other(text) => OAuthError::BadResponse(text),
    }
}

impl OAuthClient {
    fn http(&self) -> Result<HttpsClient, OAuthError> {
        HttpsClient::new(self.extra_ca_pem.as_deref(), self.timeout).map_err(|error| OAuthError::Settings(error.0))
    }

    fn client(
        &self,
    ) -> Result<
        BasicClient<
            oauth2::EndpointNotSet,
            oauth2::EndpointNotSet,
            oauth2::EndpointNotSet,
            oauth2::EndpointNotSet,
            oauth2::EndpointSet,
        >,
        OAuthError,
    > {
        let token_url = TokenUrl::new(self.token_url.clone())
            .map_err(|error| OAuthError::Settings(format!("oauth_token_endpoint: {error}")))?;
        // Client id and secret in the form, which Microsoft and Google both take.
        let mut client = BasicClient::new(ClientId::new(self.client_id.clone()))
            .set_token_uri(token_url)
            .set_auth_type(AuthType::RequestBody);
        if let Some(secret) = &self.client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.clone()));
        }
        Ok(client)
    }

    fn scopes(names: &[String]) -> impl Iterator<Item = Scope> + '_ {
        names.iter().map(|name| Scope::new(name.clone()))
    }

    /// A new access token for a refresh token (RFC 6749 §6).
    pub fn refresh(&self, refresh_token: &str) -> Result<Tokens, OAuthError> {
        guarded(|| self.refresh_unguarded(refresh_token))
    }

    fn refresh_unguarded(&self, refresh_token: &str) -> Result<Tokens, OAuthError> {
        let client = self.client()?;
        let token = RefreshToken::new(refresh_token.to_owned());
        client
            .exchange_refresh_token(&token)
            .add_scopes(Self::scopes(&self.scopes))
            .request(&self.http()?)
            .map(|response| Tokens::from_response(&response))
            .map_err(|error| token_error(&self.token_url, error))
    }

    /// An app-only access token (RFC 6749 §4.4).
    pub fn client_credentials(&self) -> Result<Tokens, OAuthError> {
        guarded(|| self.client_credentials_unguarded())
    }

    fn client_credentials_unguarded(&self) -> Result<Tokens, OAuthError> {
        if self.client_secret.is_none() {
            return Err(OAuthError::Settings("client credentials need the OAuth2 client's secret".to_owned()));
        }
        self.client()?
            .exchange_client_credentials()
            .add_scopes(Self::scopes(&self.client_credentials_scopes))
            .request(&self.http()?)
            .map(|response| Tokens::from_response(&response))
            .map_err(|error| token_error(&self.token_url, error))
    }

    /// Starts a device login (RFC 8628 §3.1).
    pub fn start_device_login(&self) -> Result<DeviceLogin, OAuthError> {
        guarded(|| self.start_device_login_unguarded())
    }

    fn start_device_login_unguarded(&self) -> Result<DeviceLogin, OAuthError> {
        let url = self.device_authorization_url.clone().ok_or_else(|| {
            OAuthError::Settings("the provider has no oauth_device_authorization_endpoint".to_owned())
        })?;
        let device_url = DeviceAuthorizationUrl::new(url.clone())
            .map_err(|error| OAuthError::Settings(format!("oauth_device_authorization_endpoint: {error}")))?;
        let details: StandardDeviceAuthorizationResponse = self
            .client()?
            .set_device_authorization_url(device_url)
            .exchange_device_code()
            .add_scopes(Self::scopes(&self.scopes))
            .request(&self.http()?)
            .map_err(|error| token_error(&url, error))?;
        // What is kept for the polls: the answer with its interval and lifetime bounded.
        let mut kept = serde_json::to_value(&details).map_err(|error| OAuthError::BadResponse(error.to_string()))?;
        let interval = details.interval().as_secs().clamp(1, LONGEST_POLL_INTERVAL);
        let expires_in = details.expires_in().as_secs().clamp(1, LONGEST_DEVICE_LOGIN);
        kept["interval"] = interval.into();
        kept["expires_in"] = expires_in.into();
        let state = kept.to_string();
        Ok(DeviceLogin {
            verification_uri: details.verification_uri().to_string(),
            verification_uri_complete: details.verification_uri_complete().map(|uri| uri.secret().clone()),
            user_code: details.user_code().secret().clone(),
            expires_in: Duration::from_secs(expires_in),
            interval: Duration::from_secs(interval),
            state,
        })
    }

    /// Asks the token endpoint once whether the user approved the device
    /// login (RFC 8628 §3.4). The crate only offers a loop that sleeps; its
    /// clock is made to run out right after the first answer, and its sleep
    /// only notes the interval it wants, so it asks once and returns.
    pub fn poll_device_login(&self, state: &str) -> Result<DevicePoll, OAuthError> {
        guarded(|| self.poll_device_login_unguarded(state))
    }

    fn poll_device_login_unguarded(&self, state: &str) -> Result<DevicePoll, OAuthError> {
        let details: StandardDeviceAuthorizationResponse = serde_json::from_str(state)
            .map_err(|_| OAuthError::Settings("the stored device login is unreadable".to_owned()))?;
        let client = self.client()?;
        let http = self.http()?;
        let start = chrono::Utc::now();
        let next_interval: Mutex<Option<Duration>> = Mutex::new(None);
        let wanted = || *next_interval.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let result = client
            .exchange_device_access_token(&details)
            .set_time_fn(|| if wanted().is_some() { start + chrono::Duration::seconds(1) } else { start })
            .request(
                &http,
                |interval| *next_interval.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(interval),
                Some(Duration::ZERO),
            );
        if let Some(interval) = wanted() {
            // Pending, slow_down, or no answer (the crate backs off then).
            if let Some(reason) = http.unanswered.take() {
                return Err(OAuthError::Unreachable { url: self.token_url.clone(), reason });
            }
            return Ok(DevicePoll::Pending(interval.min(Duration::from_secs(LONGEST_POLL_INTERVAL))));
        }
        match result {
            Ok(response) => Ok(DevicePoll::Approved(Tokens::from_response(&response))),
            Err(RequestTokenError::ServerResponse(response))
                if matches!(response.error(), DeviceCodeErrorResponseType::ExpiredToken) =>
            {
                Err(OAuthError::DeviceCodeExpired)
            }
            Err(error) => Err(token_error(&self.token_url, error)),
        }
    }
}
