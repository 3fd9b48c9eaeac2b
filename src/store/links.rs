//! The signing key of mail links, the suppression list and open counts.

use pgrx::prelude::*;
use pgrx::spi::SpiError;

pub fn signing_key() -> Result<Vec<u8>, SpiError> {
    Ok(super::kept_plans::get_one::<Vec<u8>>("SELECT key FROM email_accounts.link_signing_key", &[])?
        .unwrap_or_default())
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
