//! Passwords at rest: AES-256-GCM with a random 96-bit nonce per seal, the
//! account id as associated data (a ciphertext copied to another account
//! does not open), and keys kept in a key ring outside the database tables.
//!
//! Key ring text format, one key a line, the last line is the current key:
//! `<key id> <64 hex digits>`; `#` starts a comment.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};

const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("the key ring is empty")]
    NoKeys,
    #[error("line {line} of the key ring is not \"<key id> <64 hex digits>\"")]
    BadKeyLine { line: usize },
    #[error("key {0} appears twice in the key ring")]
    DuplicateKey(u32),
    #[error("key {0} is not in the key file: the password was sealed with a key of another cluster (a restored dump?); copy that cluster's email_accounts.keys into this data directory, or set the password again")]
    UnknownKey(u32),
    #[error("the stored password does not decrypt with key {0} (wrong key or tampered data)")]
    Undecryptable(u32),
    #[error("the operating system gave no random bytes: {0}")]
    Random(String),
}

/// A password sealed for one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: u32,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// Encryption keys by id; the last one seals, all of them open.
#[derive(Clone, Default)]
pub struct KeyRing {
    keys: Vec<(u32, [u8; KEY_BYTES])>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<u32> = self.key_ids();
        formatter.debug_struct("KeyRing").field("key_ids", &ids).finish()
    }
}

impl KeyRing {
    pub fn parse(text: &str) -> Result<KeyRing, SecretError> {
        let mut ring = KeyRing::default();
        for (index, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let bad = || SecretError::BadKeyLine { line: index + 1 };
            let mut fields = line.split_whitespace();
            let id: u32 = fields.next().and_then(|field| field.parse().ok()).ok_or_else(bad)?;
            let mut key = [0u8; KEY_BYTES];
            hex::decode_to_slice(fields.next().ok_or_else(bad)?, &mut key).map_err(|_| bad())?;
            if fields.next().is_some() {
                return Err(bad());
            }
            if ring.keys.iter().any(|(existing, _)| *existing == id) {
                return Err(SecretError::DuplicateKey(id));
            }
            ring.keys.push((id, key));
        }
        Ok(ring)
    }

    pub fn to_text(&self) -> String {
        let mut text =
            String::from("# email_accounts encryption keys: <key id> <key>; the last line seals new passwords.\n");
        for (id, key) in &self.keys {
            text.push_str(&format!("{id} {}\n", hex::encode(key)));
        }
        text
    }

    /// Adds a new random key and makes it the current one; returns its id.
    /// Ids are random too (1 to 2^31 - 1, the column is an integer): a
    /// database restored into another cluster then finds its key missing
    /// rather than opening with that cluster's key of the same number.
    pub fn add_new_key(&mut self) -> Result<u32, SecretError> {
        let mut key = [0u8; KEY_BYTES];
        getrandom::getrandom(&mut key).map_err(|error| SecretError::Random(error.to_string()))?;
        let id = loop {
            let mut bytes = [0u8; 4];
            getrandom::getrandom(&mut bytes).map_err(|error| SecretError::Random(error.to_string()))?;
            let id = u32::from_be_bytes(bytes) & 0x7fff_ffff;
            if id != 0 && !self.keys.iter().any(|(existing, _)| *existing == id) {
                break id;
            }
        };
        self.keys.push((id, key));
        Ok(id)
    }

    pub fn current_id(&self) -> Option<u32> {
        self.keys.last().map(|(id, _)| *id)
    }

    pub fn key_ids(&self) -> Vec<u32> {
        self.keys.iter().map(|(id, _)| *id).collect()
    }

    fn key(&self, id: u32) -> Result<&[u8; KEY_BYTES], SecretError> {
        self.keys.iter().find(|(key_id, _)| *key_id == id).map(|(_, key)| key).ok_or(SecretError::UnknownKey(id))
    }

    /// Encrypts `password` for `account_id` with the current key.
    pub fn seal(&self, account_id: i64, password: &str) -> Result<Sealed, SecretError> {
        self.seal_for(&account_id.to_be_bytes(), password)
    }

    /// Decrypts a sealed password of `account_id`.
    pub fn open(&self, account_id: i64, sealed: &Sealed) -> Result<String, SecretError> {
        self.open_for(&account_id.to_be_bytes(), sealed)
    }

    /// Encrypts `plain` bound to `associated` (what it belongs to: it opens
    /// only with the same associated data).
    pub fn seal_for(&self, associated: &[u8], plain: &str) -> Result<Sealed, SecretError> {
        let (key_id, key) = self.keys.last().ok_or(SecretError::NoKeys)?;
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::getrandom(&mut nonce).map_err(|error| SecretError::Random(error.to_string()))?;
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key));
        let ciphertext = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain.as_bytes(), aad: associated })
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        Ok(Sealed { key_id: *key_id, nonce: nonce.to_vec(), ciphertext })
    }

    /// Decrypts what `seal_for` sealed with the same associated data.
    pub fn open_for(&self, associated: &[u8], sealed: &Sealed) -> Result<String, SecretError> {
        let key = self.key(sealed.key_id)?;
        if sealed.nonce.len() != NONCE_BYTES {
            return Err(SecretError::Undecryptable(sealed.key_id));
        }
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key));
        let plain = cipher
            .decrypt(Nonce::from_slice(&sealed.nonce), Payload { msg: &sealed.ciphertext, aad: associated })
            .map_err(|_| SecretError::Undecryptable(sealed.key_id))?;
        String::from_utf8(plain).map_err(|_| SecretError::Undecryptable(sealed.key_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> KeyRing {
        let mut ring = KeyRing::default();
        ring.add_new_key().unwrap();
        ring
    }

    #[test]
    fn seals_and_opens_for_the_same_account_only() {
        let ring = ring();
        let sealed = ring.seal(7, "pässword").unwrap();
        assert!(!sealed.ciphertext.windows(4).any(|window| window == b"p\xc3\xa4s"));
        assert_eq!(ring.open(7, &sealed).unwrap(), "pässword");
        assert_eq!(ring.open(8, &sealed), Err(SecretError::Undecryptable(sealed.key_id)));
        let mut tampered = sealed.clone();
        tampered.ciphertext[0] ^= 1;
        assert_eq!(ring.open(7, &tampered), Err(SecretError::Undecryptable(sealed.key_id)));
        // Each seal uses a fresh nonce.
        assert_ne!(ring.seal(7, "pässword").unwrap().nonce, sealed.nonce);
    }

    #[test]
    fn rotation_keeps_old_keys_and_ids_differ_between_rings() {
        let mut ring = ring();
        let old = ring.seal(1, "old").unwrap();
        let new_id = ring.add_new_key().unwrap();
        let new = ring.seal(1, "new").unwrap();
        assert_eq!(new.key_id, new_id);
        assert_eq!(ring.current_id(), Some(new_id));
        assert_eq!(ring.open(1, &old).unwrap(), "old");
        assert_eq!(ring.open(1, &new).unwrap(), "new");
        assert!(ring.key_ids().iter().all(|id| (1..=i32::MAX as u32).contains(id)));
        // Another cluster's key file: the password's key is missing, not wrong.
        let elsewhere = self::ring();
        assert_ne!(elsewhere.key_ids(), ring.key_ids()[..1]);
        assert_eq!(elsewhere.open(1, &old), Err(SecretError::UnknownKey(old.key_id)));
    }

    #[test]
    fn key_ring_text_round_trips_and_rejects_garbage() {
        let mut ring = ring();
        ring.add_new_key().unwrap();
        let text = ring.to_text();
        let parsed = KeyRing::parse(&text).unwrap();
        assert_eq!(parsed.key_ids(), ring.key_ids());
        assert_eq!(parsed.key_ids().len(), 2);
        let sealed = ring.seal(3, "x").unwrap();
        assert_eq!(parsed.open(3, &sealed).unwrap(), "x");
        assert!(!format!("{parsed:?}").contains(&text.lines().nth(1).unwrap()[2..]));

        assert_eq!(KeyRing::parse("1 abc").unwrap_err(), SecretError::BadKeyLine { line: 1 });
        assert_eq!(KeyRing::parse("# c\nx 00").unwrap_err(), SecretError::BadKeyLine { line: 2 });
        let line = format!("1 {}\n", "00".repeat(32));
        assert_eq!(KeyRing::parse(&line.repeat(2)).unwrap_err(), SecretError::DuplicateKey(1));
        assert_eq!(KeyRing::default().seal(1, "x").unwrap_err(), SecretError::NoKeys);
    }
}
