//! The signing key of mail links, the suppression list and open counts.

use email_accounts_mail::token::LinkKey;
use pgrx::prelude::*;
use pgrx::spi::SpiError;

/// Every key of the link key ring, oldest first.
pub fn link_keys() -> Result<Vec<LinkKey>, SpiError> {
    Spi::connect(|client| {
        super::kept_plans::select(
            client,
            "SELECT key_id, key FROM email_accounts.link_signing_key ORDER BY key_id",
            &[],
        )?
        .into_iter()
        .map(|row| {
            Ok(LinkKey {
                id: row.get::<i32>(1)?.unwrap_or_default().max(0) as u32,
                secret: row.get::<Vec<u8>>(2)?.unwrap_or_default(),
            })
        })
        .collect()
    })
}

/// The key new links are made with (the newest); the first one is made
/// here when the sender first needs it, not by CREATE EXTENSION, so a
/// restored dump brings its own keys without a clash.
pub fn current_link_key() -> Result<LinkKey, SpiError> {
    if let Some(key) = link_keys()?.pop() {
        return Ok(key);
    }
    Spi::run(
        "INSERT INTO email_accounts.link_signing_key (key_id, key) VALUES (1, email_accounts.random_bytes(32))
         ON CONFLICT (key_id) DO NOTHING",
    )?;
    Ok(link_keys()?.pop().unwrap_or(LinkKey { id: 0, secret: Vec::new() }))
}

/// Suppresses `address` for the tenant of the message; true when it was new.
pub fn suppress(outbox_id: i64, address: &str) -> Result<bool, SpiError> {
    Spi::connect_mut(|client| {
        let added = client.update(
            "INSERT INTO email_accounts.suppression (tenant, address, reason, outbox_id)
             SELECT outbox.tenant, $2, 'unsubscribed', outbox.outbox_id FROM email_accounts.outbox WHERE outbox_id = $1
             ON CONFLICT (tenant, lower(address)) DO NOTHING",
            None,
            &[outbox_id.into(), address.into()],
        )?;
        Ok(!added.is_empty())
    })
}

/// Counts an open; true when the message exists.
pub fn mark_opened(outbox_id: i64) -> Result<bool, SpiError> {
    Spi::connect_mut(|client| {
        let updated = client.update(
            "UPDATE email_accounts.outbox SET opened_at = coalesce(opened_at, now()), open_count = open_count + 1
              WHERE outbox_id = $1",
            None,
            &[outbox_id.into()],
        )?;
        Ok(!updated.is_empty())
    })
}
