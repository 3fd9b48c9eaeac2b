//! Address validation exposed to SQL, so CHECK constraints and applications
//! accept exactly what the SMTP side can deliver to.

use email_accounts_mail::address::{parse_address, parse_mailbox};
use pgrx::prelude::*;

/// A bare address: `ann@example.com`.
#[pg_extern(immutable, strict, parallel_safe)]
fn is_valid_address(address: &str) -> bool {
    parse_address(address).is_ok()
}

/// An address with an optional display name: `Ann Smith <ann@example.com>`.
#[pg_extern(immutable, strict, parallel_safe)]
fn is_valid_mailbox(mailbox: &str) -> bool {
    parse_mailbox(mailbox).is_ok()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn address_and_mailbox_validation_from_sql() {
        let check = |query: &str| Spi::get_one::<bool>(query).unwrap();
        assert_eq!(check("SELECT email_accounts.is_valid_address('ann@example.com')"), Some(true));
        assert_eq!(check("SELECT email_accounts.is_valid_address('Ann <ann@example.com>')"), Some(false));
        assert_eq!(check("SELECT email_accounts.is_valid_address('not an address')"), Some(false));
        assert_eq!(check("SELECT email_accounts.is_valid_address(NULL)"), None);
        assert_eq!(check("SELECT email_accounts.is_valid_mailbox('Ann <ann@example.com>')"), Some(true));
        assert_eq!(check("SELECT email_accounts.is_valid_mailbox('Ann')"), Some(false));
    }
}
