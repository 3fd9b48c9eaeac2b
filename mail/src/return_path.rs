//! Signed envelope senders (VERP-style): mail of an account that asks for
//! it goes out to each recipient in a transaction of its own, with
//! `MAIL FROM:<local+b<key>-<outbox id>-<signature>@domain>`, a sub-address
//! naming the outbox row, signed with the link signing key over the row,
//! the account address and that recipient. A bounce comes back to exactly
//! that address, so a delivery report counts only for the recipient the
//! signature was made for: knowing a Message-ID, or the envelope sender of
//! one's own copy, is not enough to mark anyone else's mail bounced.
//!
//! The tag is lower-case letters, digits and `-` (mail systems that fold the
//! local part's case keep it valid), carries no `=` (never a document
//! address) and keeps the local part within RFC 5321's 64 octets, or there
//! is no tag. The signature is 64 bits of HMAC-SHA256 over the key id, the
//! row, the account address and the recipient: guessing one takes 2^63
//! tries per recipient.

use crate::address::{bare_address, sub_address};
use crate::token::LinkKey;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// RFC 5321 §4.5.3.1.1.
const LONGEST_LOCAL_PART: usize = 64;
const SIGNATURE_BYTES: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReturnPathError {
    #[error("the signed envelope sender is malformed")]
    Malformed,
    #[error("the signed envelope sender's signature does not match")]
    BadSignature,
    #[error("the signed envelope sender's key has been retired")]
    RetiredKey,
}

fn signature(key: &LinkKey, outbox_id: i64, address: &str, recipient: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.secret).expect("HMAC takes keys of any length");
    let recipient = bare_address(recipient).to_lowercase();
    mac.update(
        format!("email_accounts return path {}:{outbox_id}:{}:{recipient}", key.id, address.to_ascii_lowercase())
            .as_bytes(),
    );
    hex::encode(&mac.finalize().into_bytes()[..SIGNATURE_BYTES])
}

/// The signed envelope sender of row `outbox_id` sent from `address` to
/// `recipient`, or `None` when the address has no `@` or its local part would
/// grow past 64 octets.
pub fn sign(address: &str, key: &LinkKey, outbox_id: i64, recipient: &str) -> Option<String> {
    let (local, domain) = address.rsplit_once('@')?;
    let local = format!("{local}+b{}-{outbox_id}-{}", key.id, signature(key, outbox_id, address, recipient));
    (local.len() <= LONGEST_LOCAL_PART).then(|| format!("{local}@{domain}"))
}

/// The outbox row a signed envelope sender of the account `address` names,
/// and the recipient of that row (`recipients_of` gives them) it was signed
/// for: `None` when `returned_to` is not one (another address, another tag),
/// an error when it looks like one and does not verify with `keys`.
pub fn verify(
    returned_to: &str,
    address: &str,
    keys: &[LinkKey],
    recipients_of: &dyn Fn(i64) -> Vec<String>,
) -> Option<Result<(i64, String), ReturnPathError>> {
    let tag = sub_address(returned_to, address)?;
    let rest = tag.strip_prefix('b').or_else(|| tag.strip_prefix('B'))?;
    let mut fields = rest.splitn(3, '-');
    let (Some(key_id), Some(outbox_id), Some(given)) = (fields.next(), fields.next(), fields.next()) else {
        return None;
    };
    if !key_id.bytes().all(|byte| byte.is_ascii_digit()) || key_id.is_empty() {
        return None;
    }
    Some((|| {
        let key_id: u32 = key_id.parse().map_err(|_| ReturnPathError::Malformed)?;
        let outbox_id: i64 = outbox_id.parse().map_err(|_| ReturnPathError::Malformed)?;
        let key = keys.iter().find(|key| key.id == key_id).ok_or(ReturnPathError::RetiredKey)?;
        let given = given.to_ascii_lowercase();
        recipients_of(outbox_id)
            .into_iter()
            .find(|recipient| {
                let expected = signature(key, outbox_id, address, recipient);
                // Constant time: the comparison says nothing about how much matched.
                expected.len() == given.len()
                    && expected.bytes().zip(given.bytes()).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
            })
            .map(|recipient| (outbox_id, bare_address(&recipient).to_lowercase()))
            .ok_or(ReturnPathError::BadSignature)
    })())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<LinkKey> {
        vec![LinkKey { id: 1, secret: vec![1; 32] }, LinkKey { id: 2, secret: vec![2; 32] }]
    }

    #[test]
    fn signs_verifies_and_refuses_forgeries() {
        let keys = keys();
        let named = |_: i64| vec!["carol@example.test".to_owned(), "Bob@Example.test".to_owned()];
        let signed = sign("Support@Example.test", &keys[1], 4711, "bob@example.test").unwrap();
        assert!(signed.starts_with("Support+b2-4711-"), "{signed}");
        assert!(signed
            .rsplit_once('@')
            .unwrap()
            .0
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"+-".contains(&byte)));
        let bob = Some(Ok((4711, "bob@example.test".to_owned())));
        assert_eq!(verify(&signed, "support@example.test", &keys, &named), bob);
        assert_eq!(
            verify(&format!("Mailer <{}>", signed.to_ascii_uppercase()), "support@example.test", &keys, &named),
            bob
        );
        // Signed for Bob: not a signature for a row that has only Carol.
        assert_eq!(
            verify(&signed, "support@example.test", &keys, &|_| vec!["carol@example.test".to_owned()]),
            Some(Err(ReturnPathError::BadSignature))
        );
        // Another row, another account, another key, a retired key: refused.
        let other_row = signed.replace("-4711-", "-4712-");
        assert_eq!(verify(&other_row, "support@example.test", &keys, &named), Some(Err(ReturnPathError::BadSignature)));
        let elsewhere =
            sign("sales@example.test", &keys[1], 4711, "bob@example.test").unwrap().replace("sales", "support");
        assert_eq!(verify(&elsewhere, "support@example.test", &keys, &named), Some(Err(ReturnPathError::BadSignature)));
        assert_eq!(verify(&signed, "support@example.test", &keys[..1], &named), Some(Err(ReturnPathError::RetiredKey)));
        assert_eq!(
            verify("support+b2-x-00@example.test", "support@example.test", &keys, &named),
            Some(Err(ReturnPathError::Malformed))
        );
    }

    #[test]
    fn other_addresses_are_not_signed_envelope_senders() {
        let keys = keys();
        for recipient in [
            "support@example.test",
            "support+orders=17@example.test",
            "support+b2-17@example.test",
            "support+bx-17-00@example.test",
            "supportx+b2-17-00@example.test",
            "support+b2-17-00@other.test",
            "sü@example.test",
        ] {
            assert_eq!(
                verify(recipient, "support@example.test", &keys, &|_| vec!["a@b.test".to_owned()]),
                None,
                "{recipient}"
            );
        }
    }

    #[test]
    fn no_tag_past_64_octets() {
        let long = format!("{}@example.test", "a".repeat(40));
        assert_eq!(sign(&long, &keys()[0], i64::MAX, "a@b.test"), None);
        assert!(sign("a@example.test", &keys()[0], i64::MAX, "a@b.test").is_some());
    }
}
