//! Certificate validation for CHECK constraints on extra CA columns.

use pgrx::prelude::*;

/// True when the text is one or more PEM certificates that TLS can trust.
#[pg_extern(immutable, strict, parallel_safe)]
fn is_valid_certificate(pem: &str) -> bool {
    email_accounts_mail::connection::pem_blocks(pem).is_ok()
}
