//! Signing in with an access token that is kept fresh: a connection gets a
//! token first when it has none (expired, or never fetched), and once more
//! when the server refuses the one it had. At most one token request per
//! sign-in; what was granted or what failed is reported for the main thread
//! to store.

use super::error::OAuthError;
use super::token_endpoint::{OAuthClient, Tokens};
use crate::connection::{ConnectionError, Credential, Login};

/// How new access tokens are obtained.
#[derive(Clone, PartialEq, Eq)]
pub enum Grant {
    RefreshToken(String),
    ClientCredentials,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Grant::RefreshToken(_) => "RefreshToken(<secret>)",
            Grant::ClientCredentials => "ClientCredentials",
        })
    }
}

/// The right to ask for one new access token during a sign-in.
#[derive(Debug, Clone)]
pub struct Renewal {
    pub client: OAuthClient,
    pub grant: Grant,
}

impl Renewal {
    /// Asks for a new access token; an error never quotes the refresh
    /// token or the client secret, even when the server echoed one.
    pub fn request(&self) -> Result<Tokens, OAuthError> {
        let result = match &self.grant {
            Grant::RefreshToken(refresh_token) => {
                self.client.refresh(refresh_token).map_err(|error| error.without(refresh_token))
            }
            Grant::ClientCredentials => self.client.client_credentials(),
        };
        match &self.client.client_secret {
            Some(secret) => result.map_err(|error| error.without(secret)),
            None => result.map_err(OAuthError::shortened),
        }
    }
}

/// What happened to an account's tokens during a sign-in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenReport {
    /// A new access token (and perhaps a new refresh token) to store.
    pub renewed: Option<Tokens>,
    /// The token endpoint refused or could not be reached.
    pub failure: Option<OAuthError>,
    /// A server refused the access token and no new one could be asked for:
    /// the stored one is not to be used again.
    pub refused: bool,
}

/// A login whose access token may be renewed once.
#[derive(Debug, Clone)]
pub struct SignIn {
    pub login: Login,
    renewal: Option<Renewal>,
    pub report: TokenReport,
}

impl SignIn {
    pub fn with_password(login: Login) -> SignIn {
        SignIn { login, renewal: None, report: TokenReport::default() }
    }

    /// A bearer login: `access_token` is `None` when there is no usable one
    /// (then `renewal` must get one before connecting).
    pub fn with_token(
        user: String,
        access_token: Option<String>,
        renewal: Option<Renewal>,
        allow_plaintext: bool,
    ) -> SignIn {
        let credential = Credential::AccessToken(access_token.unwrap_or_default());
        SignIn { login: Login { user, credential, allow_plaintext }, renewal, report: TokenReport::default() }
    }

    /// The same login without the right to renew (for parallel connections
    /// after one renewal: they must not each ask for a token).
    pub fn without_renewal(&self) -> SignIn {
        SignIn { login: self.login.clone(), renewal: None, report: TokenReport::default() }
    }

    fn has_token(&self) -> bool {
        !matches!(&self.login.credential, Credential::AccessToken(token) if token.is_empty())
    }

    /// Gets an access token if the login has none.
    pub fn ensure_token(&mut self) -> Result<(), ConnectionError> {
        if self.has_token() {
            return Ok(());
        }
        if self.renewal.is_none() && self.report.renewed.is_none() {
            return Err(ConnectionError::OAuth(
                "the access token expired and another worker is renewing it; trying again shortly".to_owned(),
            ));
        }
        self.renew()
    }

    /// After a server refused the token: asks for a new one if this sign-in
    /// still may (true: connect again). Otherwise notes the refusal.
    pub fn renew_after_refusal(&mut self) -> Result<bool, ConnectionError> {
        if !self.login.is_bearer() {
            return Ok(false);
        }
        if self.renewal.is_none() {
            self.report.refused = true;
            return Ok(false);
        }
        self.renew().map(|()| true)
    }

    fn renew(&mut self) -> Result<(), ConnectionError> {
        let Some(renewal) = self.renewal.take() else {
            return Err(ConnectionError::OAuth("no new access token may be asked for now".to_owned()));
        };
        match renewal.request() {
            Ok(tokens) => {
                self.login.credential = Credential::AccessToken(tokens.access_token.clone());
                self.report.renewed = Some(tokens);
                Ok(())
            }
            Err(error) => {
                let connection_error = ConnectionError::OAuth(error.to_string());
                self.report.failure = Some(error);
                Err(connection_error)
            }
        }
    }

    /// Connects with `attempt`, renewing the token first when there is none
    /// and once after the server refused it.
    pub fn connect<T>(
        &mut self,
        mut attempt: impl FnMut(&Login) -> Result<T, ConnectionError>,
    ) -> Result<T, ConnectionError> {
        self.ensure_token()?;
        match attempt(&self.login) {
            Err(ConnectionError::TokenRefused(reason)) => {
                if self.renew_after_refusal()? {
                    let again = attempt(&self.login);
                    if matches!(again, Err(ConnectionError::TokenRefused(_))) {
                        self.report.refused = true;
                    }
                    again
                } else {
                    Err(ConnectionError::TokenRefused(reason))
                }
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn unreachable_client() -> OAuthClient {
        OAuthClient {
            // Port 9 on loopback: nothing listens (connection refused at once).
            token_url: "https://127.0.0.1:9/token".to_owned(),
            device_authorization_url: None,
            client_id: "client".to_owned(),
            client_secret: Some("client-secret-value".to_owned()),
            scopes: vec!["mail".to_owned()],
            client_credentials_scopes: Vec::new(),
            extra_ca_pem: None,
            timeout: Duration::from_secs(2),
        }
    }

    #[test]
    fn a_token_is_fetched_before_connecting_and_failures_are_reported_without_secrets() {
        let renewal = Renewal { client: unreachable_client(), grant: Grant::RefreshToken("refresh-secret".to_owned()) };
        let mut sign_in = SignIn::with_token("ann@example.test".to_owned(), None, Some(renewal), false);
        let mut attempts = 0;
        let error = sign_in.connect(|_| -> Result<(), ConnectionError> {
            attempts += 1;
            Ok(())
        });
        let error = error.unwrap_err();
        assert_eq!(attempts, 0, "no connection without a token");
        assert_eq!(error.kind(), crate::connection::FailureKind::Oauth);
        assert!(error.to_string().contains("cannot be reached"), "{error}");
        assert!(matches!(sign_in.report.failure, Some(OAuthError::Unreachable { .. })));
        for text in [error.to_string(), format!("{sign_in:?}")] {
            assert!(!text.contains("refresh-secret") && !text.contains("client-secret-value"), "{text}");
        }
    }

    #[test]
    fn a_refused_token_without_the_right_to_renew_is_noted() {
        let mut sign_in = SignIn::with_token("ann".to_owned(), Some("old".to_owned()), None, false);
        let result: Result<(), _> = sign_in.connect(|_| Err(ConnectionError::TokenRefused("NO".to_owned())));
        assert!(matches!(result, Err(ConnectionError::TokenRefused(_))));
        assert!(sign_in.report.refused);

        // No token and nobody may renew: try again later, nothing refused.
        let mut waiting = SignIn::with_token("ann".to_owned(), None, None, false);
        assert!(waiting.connect(|_| Ok(())).is_err());
        assert!(!waiting.report.refused && waiting.report.failure.is_none());
    }

    #[test]
    fn provider_error_codes_map_to_steps() {
        assert!(
            matches!(OAuthError::from_code("invalid_grant", Some("AADSTS70000")), OAuthError::InvalidGrant(text) if text == "AADSTS70000")
        );
        assert!(OAuthError::from_code("invalid_grant", None).needs_consent());
        assert!(matches!(OAuthError::from_code("invalid_client", None), OAuthError::InvalidClient(_)));
        assert!(matches!(OAuthError::from_code("invalid_scope", None), OAuthError::ScopeMissing(_)));
        assert!(!OAuthError::from_code("temporarily_unavailable", None).needs_consent());
        assert!(!OAuthError::from_code("invalid_client", None).needs_consent());
    }
}
