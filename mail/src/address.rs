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
