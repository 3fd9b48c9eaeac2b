//! Address validation exposed to SQL, so CHECK constraints and applications
//! accept exactly what the SMTP side can deliver to.

use pgrx::prelude::*;

#[pg_extern(immutable, strict, parallel_safe)]
fn is_valid_address(address: &str) -> bool {
    email_accounts_mail::address::parse_mailbox(address).is_ok()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn is_valid_address_from_sql() {
        let valid = Spi::get_one::<bool>("SELECT email_accounts.is_valid_address('Ann <ann@example.com>')");
        assert_eq!(valid, Ok(Some(true)));
        let invalid = Spi::get_one::<bool>("SELECT email_accounts.is_valid_address('not an address')");
        assert_eq!(invalid, Ok(Some(false)));
        let null = Spi::get_one::<bool>("SELECT email_accounts.is_valid_address(NULL)");
        assert_eq!(null, Ok(None));
    }
}
