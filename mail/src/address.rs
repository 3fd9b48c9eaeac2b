//! Email addresses, parsed the way lettre parses them when it sends, so that
//! whatever the database accepts, the SMTP side can deliver to.

use lettre::message::Mailbox;
use lettre::Address;

/// Why a string is not an email address we can send to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("the address is empty")]
    Empty,
    #[error("{0:?} is not a valid email address")]
    Invalid(String),
}

/// Parses a mailbox with an optional display name: `"Ann Smith" <ann@example.com>`
/// or `ann@example.com`.
pub fn parse_mailbox(text: &str) -> Result<Mailbox, AddressError> {
    let trimmed = non_empty(text)?;
    trimmed.parse::<Mailbox>().map_err(|_| AddressError::Invalid(trimmed.to_owned()))
}

/// Parses a bare address with no display name: `ann@example.com`.
pub fn parse_address(text: &str) -> Result<Address, AddressError> {
    let trimmed = non_empty(text)?;
    trimmed.parse::<Address>().map_err(|_| AddressError::Invalid(trimmed.to_owned()))
}

fn non_empty(text: &str) -> Result<&str, AddressError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        Err(AddressError::Empty)
    } else {
        Ok(trimmed)
    }
}

/// The address in `Name <address>`, or the text itself.
pub fn bare_address(mailbox: &str) -> &str {
    match (mailbox.rfind('<'), mailbox.rfind('>')) {
        (Some(start), Some(end)) if start < end => mailbox[start + 1..end].trim(),
        _ => mailbox.trim(),
    }
}

/// The sub-address (`tag` of `local+tag@domain`) of `recipient` when it is
/// a sub-address of `address`: local part and domain compared without
/// regard to case, as mail systems do.
pub fn sub_address<'a>(recipient: &'a str, address: &str) -> Option<&'a str> {
    let (local, domain) = address.rsplit_once('@')?;
    let (recipient_local, recipient_domain) = bare_address(recipient).rsplit_once('@')?;
    if !recipient_domain.eq_ignore_ascii_case(domain) {
        return None;
    }
    // Bytes, not characters: a multi-byte character may straddle the end of `local`.
    let (recipient_bytes, local_bytes) = (recipient_local.as_bytes(), local.as_bytes());
    if recipient_bytes.len() <= local_bytes.len()
        || !recipient_bytes[..local_bytes.len()].eq_ignore_ascii_case(local_bytes)
        || recipient_bytes[local_bytes.len()] != b'+'
    {
        return None;
    }
    recipient_local.get(local_bytes.len() + 1..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_named_mailboxes() {
        assert_eq!(parse_address("ann@example.com").unwrap().domain(), "example.com");
        let named = parse_mailbox("\"Ann Smith\" <ann@example.com>").unwrap();
        assert_eq!(named.name.as_deref(), Some("Ann Smith"));
        assert_eq!(named.email.user(), "ann");
        assert!(parse_mailbox("  ann@example.com ").is_ok());
        assert!(parse_address("ann+tag@sub.example.com").is_ok());
    }

    #[test]
    fn rejects_what_cannot_be_sent_to() {
        assert_eq!(parse_address(""), Err(AddressError::Empty));
        assert_eq!(parse_address("   "), Err(AddressError::Empty));
        for bad in ["ann", "ann@", "@example.com", "ann@@example.com", "a b@example.com", "ann@exa mple.com"] {
            assert!(matches!(parse_address(bad), Err(AddressError::Invalid(_))), "{bad:?} should be rejected");
        }
        // A display name alone is not a mailbox, and a bare address has no name.
        assert!(parse_mailbox("Ann Smith").is_err());
        assert!(parse_address("Ann <ann@example.com>").is_err());
        // Header injection through an address is refused.
        assert!(parse_address("ann@example.com\r\nBcc: eve@example.com").is_err());
        assert!(parse_mailbox("Ann <ann@example.com>\r\nBcc: eve@example.com").is_err());
    }
}
