//! `unsubscribe(token)` and `mark_opened(token)`: what the application calls
//! when someone follows a link from outgoing mail. Both run as the extension
//! owner (they must read the link keys) and trust only the token: made with a
//! key still kept, unchanged, not expired.

use super::errors::{internal, raise};
use crate::store::links;
use email_accounts_mail::token::{unix_now, verify, Purpose};
use pgrx::prelude::*;

fn claim(token: &str, purpose: Purpose) -> email_accounts_mail::token::TokenClaim {
    let keys = links::link_keys().unwrap_or_else(|error| internal(error));
    let now = unix_now();
    verify(&keys, purpose, token, now)
        .unwrap_or_else(|error| raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("token: {error}"), None))
}

/// Adds the token's recipient to the suppression list of the message's tenant.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn unsubscribe(token: &str) -> bool {
    let claim = claim(token, Purpose::Unsubscribe);
    links::suppress(claim.outbox_id, &claim.address).unwrap_or_else(|error| internal(error))
}

/// Records that the token's message was displayed.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn mark_opened(token: &str) -> bool {
    let claim = claim(token, Purpose::Open);
    links::mark_opened(claim.outbox_id).unwrap_or_else(|error| internal(error))
}

/// Random bytes from the operating system (for keys made in SQL scripts).
#[pg_extern(volatile, strict, parallel_safe)]
fn random_bytes(count: i32) -> Vec<u8> {
    let mut bytes = vec![0u8; count.clamp(0, 1024) as usize];
    getrandom::getrandom(&mut bytes).unwrap_or_else(|error| internal(error));
    bytes
}
