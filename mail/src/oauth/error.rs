//! What can go wrong getting a token, by step, in words a DBA can act on.
//! Only the provider's error code and description are quoted, never a
//! request or response body (they carry secrets).

/// A failed token request. `Display` says which step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    #[error("the token endpoint {url} cannot be reached: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "the token endpoint does not accept the OAuth2 client (invalid_client; check its client id and secret): {0}"
    )]
    InvalidClient(String),
    #[error("the grant was refused (invalid_grant: revoked, expired, or issued to another client); connect the account again: {0}")]
    InvalidGrant(String),
    #[error("a scope is missing or not allowed for this client (invalid_scope): {0}")]
    ScopeMissing(String),
    #[error("the user declined the sign-in (access_denied): {0}")]
    AccessDenied(String),
    #[error("the device code expired before the user approved the sign-in; call oauth_device_login() again")]
    DeviceCodeExpired,
    #[error("the token endpoint refused the request ({code}): {description}")]
    Refused { code: String, description: String },
    #[error("the token endpoint's answer is not an OAuth2 token response ({0})")]
    BadResponse(String),
    #[error("the OAuth2 settings are not usable: {0}")]
    Settings(String),
}

impl OAuthError {
    /// Only a person can fix it (sign in again, approve, grant a scope):
    /// the account shows `consent needed` and the token endpoint is not asked
    /// again until it is connected anew.
    pub fn needs_consent(&self) -> bool {
        matches!(
            self,
            OAuthError::InvalidGrant(_)
                | OAuthError::AccessDenied(_)
                | OAuthError::DeviceCodeExpired
                | OAuthError::ScopeMissing(_)
                | OAuthError::InvalidClient(_)
        )
    }

    /// The error for an RFC 6749 §5.2 error code and description.
    pub fn from_code(code: &str, description: Option<&str>) -> OAuthError {
        let description = description.unwrap_or("no description given").to_owned();
        match code {
            "invalid_client" | "unauthorized_client" => OAuthError::InvalidClient(description),
            "invalid_grant" => OAuthError::InvalidGrant(description),
            "invalid_scope" => OAuthError::ScopeMissing(description),
            "access_denied" => OAuthError::AccessDenied(description),
            "expired_token" => OAuthError::DeviceCodeExpired,
            _ => OAuthError::Refused { code: code.to_owned(), description },
        }
    }
}
