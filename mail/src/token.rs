//! Tokens for links in outgoing mail: unsubscribe (one recipient of one
//! message) and open tracking.
//!
//! A token is `2.<key id>.<base64url(nonce ‖ AES-256-GCM ciphertext)>`: the
//! payload (purpose, message, expiry, address) is encrypted, so a link says
//! nothing about whom it was sent to, and authenticated, so it cannot be
//! changed. It expires, and names the key that made it, so the keys can be
//! rotated while links in mail already sent keep working until they expire.
//! 0.1.0's tokens (`<base64 payload>.<HMAC>`, signed with the key that
//! became key 1) stay valid, without expiry, for as long as key 1 is kept.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const NONCE_BYTES: usize = 12;
/// The key that 0.1.0 signed its tokens with.
const LEGACY_KEY_ID: u32 = 1;

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

    fn from_tag(tag: &str) -> Option<Purpose> {
        match tag {
            "u" => Some(Purpose::Unsubscribe),
            "o" => Some(Purpose::Open),
            _ => None,
        }
    }
}

/// One key of the link key ring (table link_signing_key).
#[derive(Clone, PartialEq, Eq)]
pub struct LinkKey {
    pub id: u32,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("LinkKey").field("id", &self.id).finish_non_exhaustive()
    }
}

/// What a valid token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaim {
    pub purpose: Purpose,
    pub outbox_id: i64,
    pub address: String,
    /// Unix seconds after which the token is refused; None for 0.1.0's tokens.
    pub expires_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature does not match")]
    BadSignature,
    #[error("the token is for another purpose")]
    WrongPurpose,
    #[error("the token has expired")]
    Expired,
    #[error("the token's key has been retired")]
    RetiredKey,
}

fn hmac(key: &[u8], payload: &[u8]) -> HmacSha256 {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(payload);
    mac
}

/// The AES key for tokens, derived from the stored key (which also checks
/// 0.1.0's HMAC tokens: one key is not used for two algorithms).
fn cipher(key: &LinkKey) -> Aes256Gcm {
    let derived = hmac(&key.secret, b"email_accounts link token encryption").finalize().into_bytes();
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&derived))
}

fn associated_data(key_id: u32) -> Vec<u8> {
    format!("email_accounts link 2 {key_id}").into_bytes()
}

/// Now, in the Unix seconds tokens expire in.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or_default()
}

/// A token for `purpose` of message `outbox_id` to `address`, valid until
/// `expires_at` (Unix seconds), made with `key` and the random `nonce`.
pub fn sign(
    key: &LinkKey,
    purpose: Purpose,
    outbox_id: i64,
    address: &str,
    expires_at: i64,
    nonce: [u8; 12],
) -> String {
    let plaintext = format!("{}:{outbox_id}:{expires_at}:{}", purpose.tag(), address.to_ascii_lowercase());
    let aad = associated_data(key.id);
    let ciphertext = cipher(key)
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext.as_bytes(), aad: &aad })
        .expect("AES-GCM encrypts any message of this size");
    let mut sealed = nonce.to_vec();
    sealed.extend_from_slice(&ciphertext);
    format!("2.{}.{}", key.id, URL_SAFE_NO_PAD.encode(sealed))
}

/// The claim of a token made with one of `keys`, for `expected`, not expired at `now` (Unix seconds).
pub fn verify(keys: &[LinkKey], expected: Purpose, token: &str, now: i64) -> Result<TokenClaim, TokenError> {
    let token = token.trim();
    let claim = match token.strip_prefix("2.") {
        Some(rest) => open(keys, rest)?,
        None => open_legacy(keys, token)?,
    };
    if claim.purpose != expected {
        return Err(TokenError::WrongPurpose);
    }
    if claim.expires_at.is_some_and(|expires_at| expires_at < now) {
        return Err(TokenError::Expired);
    }
    Ok(claim)
}

fn open(keys: &[LinkKey], rest: &str) -> Result<TokenClaim, TokenError> {
    let (key_id, sealed) = rest.split_once('.').ok_or(TokenError::Malformed)?;
    let key_id: u32 = key_id.parse().map_err(|_| TokenError::Malformed)?;
    let key = keys.iter().find(|key| key.id == key_id).ok_or(TokenError::RetiredKey)?;
    let sealed = URL_SAFE_NO_PAD.decode(sealed).map_err(|_| TokenError::Malformed)?;
    if sealed.len() <= NONCE_BYTES {
        return Err(TokenError::Malformed);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_BYTES);
    let aad = associated_data(key_id);
    let plaintext = cipher(key)
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: &aad })
        .map_err(|_| TokenError::BadSignature)?;
    let plaintext = String::from_utf8(plaintext).map_err(|_| TokenError::Malformed)?;
    let mut fields = plaintext.splitn(4, ':');
    let purpose = fields.next().and_then(Purpose::from_tag).ok_or(TokenError::Malformed)?;
    let outbox_id = fields.next().and_then(|id| id.parse().ok()).ok_or(TokenError::Malformed)?;
    let expires_at = fields.next().and_then(|at| at.parse().ok()).ok_or(TokenError::Malformed)?;
    let address = fields.next().ok_or(TokenError::Malformed)?.to_owned();
    Ok(TokenClaim { purpose, outbox_id, address, expires_at: Some(expires_at) })
}

/// 0.1.0's `<base64 payload>.<base64 HMAC-SHA256>`, signed with key 1.
fn open_legacy(keys: &[LinkKey], token: &str) -> Result<TokenClaim, TokenError> {
    let (payload, signature) = token.split_once('.').ok_or(TokenError::Malformed)?;
    let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?;
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed)?;
    let key = keys.iter().find(|key| key.id == LEGACY_KEY_ID).ok_or(TokenError::RetiredKey)?;
    hmac(&key.secret, &payload).verify_slice(&signature).map_err(|_| TokenError::BadSignature)?;
    let payload = String::from_utf8(payload).map_err(|_| TokenError::Malformed)?;
    let mut fields = payload.splitn(3, ':');
    let purpose = fields.next().and_then(Purpose::from_tag).ok_or(TokenError::Malformed)?;
    let outbox_id = fields.next().and_then(|id| id.parse().ok()).ok_or(TokenError::Malformed)?;
    let address = fields.next().ok_or(TokenError::Malformed)?.to_owned();
    Ok(TokenClaim { purpose, outbox_id, address, expires_at: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u32, byte: u8) -> LinkKey {
        LinkKey { id, secret: vec![byte; 32] }
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn round_trip_tampering_and_expiry() {
        let keys = [key(1, 7), key(2, 9)];
        let token = sign(&keys[1], Purpose::Unsubscribe, 42, "Ann@Example.com", NOW + 60, [3; 12]);
        assert!(token.chars().all(|character| character.is_ascii_alphanumeric() || "-_.".contains(character)));
        assert!(!token.to_ascii_lowercase().contains("ann"), "opaque: {token}");
        let sealed = URL_SAFE_NO_PAD.decode(token.rsplit('.').next().unwrap()).unwrap();
        assert!(!String::from_utf8_lossy(&sealed).contains("example"), "the address is encrypted");
        assert_eq!(
            verify(&keys, Purpose::Unsubscribe, &token, NOW),
            Ok(TokenClaim {
                purpose: Purpose::Unsubscribe,
                outbox_id: 42,
                address: "ann@example.com".to_owned(),
                expires_at: Some(NOW + 60)
            })
        );
        assert_eq!(verify(&keys, Purpose::Open, &token, NOW), Err(TokenError::WrongPurpose));
        assert_eq!(verify(&keys, Purpose::Unsubscribe, &token, NOW + 61), Err(TokenError::Expired));
        // Another key under the same id, or the key retired: refused.
        assert_eq!(verify(&[key(2, 8)], Purpose::Unsubscribe, &token, NOW), Err(TokenError::BadSignature));
        assert_eq!(verify(&keys[..1], Purpose::Unsubscribe, &token, NOW), Err(TokenError::RetiredKey));
        // The key id is bound in: relabelling the token as key 1's fails.
        let relabelled = token.replacen("2.2.", "2.1.", 1);
        let both_same = [key(1, 9), key(2, 9)];
        assert_eq!(verify(&both_same, Purpose::Unsubscribe, &relabelled, NOW), Err(TokenError::BadSignature));
        assert_eq!(verify(&keys, Purpose::Unsubscribe, "nonsense", NOW), Err(TokenError::Malformed));
        assert_eq!(verify(&keys, Purpose::Unsubscribe, "2.2.AAAA", NOW), Err(TokenError::Malformed));
    }

    #[test]
    fn tokens_of_0_1_0_stay_valid_while_key_1_is_kept() {
        let legacy_key = key(1, 7);
        let payload = "u:42:ann@example.com";
        let signature = hmac(&legacy_key.secret, payload.as_bytes()).finalize().into_bytes();
        let token = format!("{}.{}", URL_SAFE_NO_PAD.encode(payload), URL_SAFE_NO_PAD.encode(signature));
        let claim = verify(&[legacy_key.clone(), key(2, 9)], Purpose::Unsubscribe, &token, NOW).unwrap();
        assert_eq!((claim.outbox_id, claim.address.as_str(), claim.expires_at), (42, "ann@example.com", None));
        assert_eq!(verify(&[key(2, 9)], Purpose::Unsubscribe, &token, NOW), Err(TokenError::RetiredKey));
        let forged = format!("{}.{}", URL_SAFE_NO_PAD.encode("u:42:eve@example.com"), token.split_once('.').unwrap().1);
        assert_eq!(verify(&[legacy_key], Purpose::Unsubscribe, &forged, NOW), Err(TokenError::BadSignature));
    }
}
