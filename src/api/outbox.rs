//! Helpers the outbox triggers call: checks that reuse the mail core's rules.

use email_accounts_mail::address::parse_mailbox;
use email_accounts_mail::compose::check_header;
use pgrx::prelude::*;

/// Why a custom header cannot be sent, or NULL when it can.
#[pg_extern(immutable, strict, parallel_safe)]
fn header_problem(name: &str, value: &str) -> Option<String> {
    check_header(name, value).err().map(|problem| problem.to_string())
}

/// The bare address of a mailbox (`Ann <ann@example.com>` → `ann@example.com`), NULL if invalid.
#[pg_extern(immutable, strict, parallel_safe)]
fn mailbox_address(mailbox: &str) -> Option<String> {
    parse_mailbox(mailbox).ok().map(|mailbox| mailbox.email.to_string())
}
