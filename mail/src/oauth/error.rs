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
        )
    }

    /// The error for an RFC 6749 §5.2 error code and description (both
    /// cleaned: what a server says is stored and shown).
    pub fn from_code(code: &str, description: Option<&str>) -> OAuthError {
        let code = tidy(code, LONGEST_TEXT);
        let code = code.as_str();
        // Cut short only after secrets are blotted out (`without`).
        let description = tidy(description.unwrap_or("no description given"), 4 * 1024);
        match code {
            "invalid_client" | "unauthorized_client" => OAuthError::InvalidClient(description),
            "invalid_grant" => OAuthError::InvalidGrant(description),
            "invalid_scope" => OAuthError::ScopeMissing(description),
            "access_denied" => OAuthError::AccessDenied(description),
            "expired_token" => OAuthError::DeviceCodeExpired,
            _ => OAuthError::Refused { code: code.to_owned(), description },
        }
    }

    /// The same error with its texts cut to what is stored and shown.
    pub fn shortened(self) -> OAuthError {
        self.map_texts(|text| clean(&text))
    }

    /// The same error with `secret` blotted out wherever a server echoed it
    /// (then shortened).
    pub fn without(self, secret: &str) -> OAuthError {
        if secret.len() < 8 {
            return self.shortened();
        }
        self.map_texts(|text| text.replace(secret, "[secret]")).shortened()
    }

    fn map_texts(self, blot: impl Fn(String) -> String) -> OAuthError {
        match self {
            OAuthError::Unreachable { url, reason } => OAuthError::Unreachable { url, reason: blot(reason) },
            OAuthError::InvalidClient(text) => OAuthError::InvalidClient(blot(text)),
            OAuthError::InvalidGrant(text) => OAuthError::InvalidGrant(blot(text)),
            OAuthError::ScopeMissing(text) => OAuthError::ScopeMissing(blot(text)),
            OAuthError::AccessDenied(text) => OAuthError::AccessDenied(blot(text)),
            OAuthError::Refused { code, description } => {
                OAuthError::Refused { code: blot(code), description: blot(description) }
            }
            OAuthError::BadResponse(text) => OAuthError::BadResponse(blot(text)),
            OAuthError::Settings(text) => OAuthError::Settings(blot(text)),
            OAuthError::DeviceCodeExpired => OAuthError::DeviceCodeExpired,
        }
    }
}

/// Longest provider text kept (error descriptions, refusal reasons).
const LONGEST_TEXT: usize = 300;

/// What a server wrote, fit to store and show: control characters become
/// spaces, and it is cut at `LONGEST_TEXT` characters.
pub fn clean(text: &str) -> String {
    tidy(text, LONGEST_TEXT)
}

fn tidy(text: &str, longest: usize) -> String {
    let mut cleaned: String =
        text.chars().map(|character| if character.is_control() { ' ' } else { character }).take(longest).collect();
    if text.chars().count() > longest && !cleaned.ends_with('…') {
        cleaned.push('…');
    }
    cleaned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_text_is_cleaned_and_secrets_blotted_out() {
        let error =
            OAuthError::from_code("invalid_grant", Some(&format!("bad\r\ntoken rt.12345678 {}", "x".repeat(400))));
        let text = error.without("rt.12345678").to_string();
        assert!(!text.contains('\n') && !text.contains("rt.12345678") && text.contains("[secret]"), "{text}");
        assert!(text.len() < 500, "{}", text.len());
        assert!(
            !OAuthError::from_code("invalid_client", None).needs_consent(),
            "a client problem is the organisation's"
        );
    }
}
