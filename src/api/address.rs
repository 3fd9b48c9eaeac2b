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

/// `address` with the sub-address naming row `id` of `table` (automatic
/// linking); refuses what the SMTP side could not deliver to.
#[pg_extern(immutable, strict, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn tagged_address(address: &str, table: &str, id: &str) -> String {
    let tagged = email_accounts_mail::document_address::encode(address, table, id)
        .filter(|tagged| parse_address(tagged).is_ok())
        .unwrap_or_else(|| {
            pgrx::error!("email_accounts: {address:?} with a document tag is not a deliverable address")
        });
    // RFC 5321 §4.5.3.1.1: longer local parts may be refused by other servers.
    if tagged.rsplit_once('@').is_some_and(|(local, _)| local.len() > 64) {
        notice!(
            "email_accounts: the local part of {tagged} is longer than 64 octets; some servers refuse such addresses"
        );
    }
    tagged
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
