//! Signed tokens for links in outgoing mail: unsubscribe (one recipient of
//! one message) and open tracking. HMAC-SHA256 over the payload with a key
//! the database keeps; URL-safe base64, no padding.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Unsubscribe,
    Open,
}

impl Purpose {
    fn tag(self) -> &'static str {
        match self {
            Purpose::Unsubscribe => "u",
            Purpose::Open => "o",
        }
    }
}

/// What a valid token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaim {
    pub purpose: Purpose,
    pub outbox_id: i64,
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature does not match")]
    BadSignature,
    #[error("the token is for another purpose")]
    WrongPurpose,
}

fn mac(key: &[u8], payload: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(payload);
    mac
}

pub fn sign(key: &[u8], purpose: Purpose, outbox_id: i64, address: &str) -> String {
    let payload = format!("{}:{outbox_id}:{}", purpose.tag(), address.to_ascii_lowercase());
    let signature = mac(key, payload.as_bytes()).finalize().into_bytes();
    format!("{}.{}", URL_SAFE_NO_PAD.encode(payload), URL_SAFE_NO_PAD.encode(signature))
}

pub fn verify(key: &[u8], expected: Purpose, token: &str) -> Result<TokenClaim, TokenError> {
    let (payload, signature) = token.trim().split_once('.').ok_or(TokenError::Malformed)?;
    let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?;
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed)?;
    mac(key, &payload).verify_slice(&signature).map_err(|_| TokenError::BadSignature)?;
    let payload = String::from_utf8(payload).map_err(|_| TokenError::Malformed)?;
    let mut fields = payload.splitn(3, ':');
    let purpose = match fields.next() {
        Some("u") => Purpose::Unsubscribe,
        Some("o") => Purpose::Open,
        _ => return Err(TokenError::Malformed),
    };
    if purpose != expected {
        return Err(TokenError::WrongPurpose);
    }
    let outbox_id = fields.next().and_then(|id| id.parse().ok()).ok_or(TokenError::Malformed)?;
    let address = fields.next().ok_or(TokenError::Malformed)?.to_owned();
    Ok(TokenClaim { purpose, outbox_id, address })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tampering() {
        let key = b"0123456789abcdef0123456789abcdef";
        let token = sign(key, Purpose::Unsubscribe, 42, "Ann@Example.com");
        assert!(token.chars().all(|character| character.is_ascii_alphanumeric() || "-_.".contains(character)));
        assert_eq!(
            verify(key, Purpose::Unsubscribe, &token),
            Ok(TokenClaim { purpose: Purpose::Unsubscribe, outbox_id: 42, address: "ann@example.com".to_owned() })
        );
        assert_eq!(verify(key, Purpose::Open, &token), Err(TokenError::WrongPurpose));
        assert_eq!(verify(b"another key", Purpose::Unsubscribe, &token), Err(TokenError::BadSignature));
        let forged = format!("{}.{}", URL_SAFE_NO_PAD.encode("u:42:eve@example.com"), token.split_once('.').unwrap().1);
        assert_eq!(verify(key, Purpose::Unsubscribe, &forged), Err(TokenError::BadSignature));
        assert_eq!(verify(key, Purpose::Unsubscribe, "nonsense"), Err(TokenError::Malformed));
    }
}
