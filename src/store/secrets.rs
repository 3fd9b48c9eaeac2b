//! Reading and writing encrypted passwords (table account_secret) with the
//! key ring of `key_file`, and sealing the other secrets (OAuth2 tokens and
//! client secrets, see store::oauth) the same way. Plain secrets exist only
//! in memory.

use super::key_file::{self, KeyFileError};
use email_accounts_mail::secret::{KeyRing, Sealed, SecretError};
use pgrx::prelude::*;
use pgrx::spi::SpiError;

#[derive(Debug, thiserror::Error)]
pub enum SecretStoreError {
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error("the servers of account {account_id} changed since its password was set: it is not sent to the new ones")]
    ServersChanged { account_id: i64 },
    #[error("cannot decrypt the password of account {account_id}: {source}")]
    Decrypt { account_id: i64, source: SecretError },
    #[error("cannot encrypt: {0}")]
    Encrypt(SecretError),
    #[error("cannot decrypt the {what}: {source}")]
    DecryptOther { what: &'static str, source: SecretError },
    #[error(transparent)]
    Spi(#[from] SpiError),
}

/// Which side of an account signs in with a password: each has its own
/// (account_secret.side), written together by set_password(side => both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// IMAP or POP3, and the copy to the Sent folder.
    Incoming,
    Smtp,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Incoming => "incoming",
            Side::Smtp => "smtp",
        }
    }
}

/// A sealed secret read from three columns (key_id, nonce, ciphertext) of a
/// row, starting at column `first` (1-based, as SPI counts).
pub fn sealed_at(row: &pgrx::spi::SpiHeapTupleData<'_>, first: usize) -> Result<Sealed, SpiError> {
    Ok(Sealed {
        key_id: row.get::<i32>(first)?.unwrap_or_default() as u32,
        nonce: row.get::<Vec<u8>>(first + 1)?.unwrap_or_default(),
        ciphertext: row.get::<Vec<u8>>(first + 2)?.unwrap_or_default(),
    })
}

/// Serialises changes to the key file. A lock on the secrets table, which
/// only its owner may take (an advisory lock any role could hold forever).
/// SHARE UPDATE EXCLUSIVE conflicts with itself, not with reads or row writes.
fn lock_key_ring() -> Result<(), SpiError> {
    Spi::run("LOCK TABLE email_accounts.account_secret IN SHARE UPDATE EXCLUSIVE MODE")
}

/// The key ring to seal with (the key file is created on first use), with
/// the key-ring lock held: sealing is serialised with key rotation.
fn current_ring() -> Result<KeyRing, SecretStoreError> {
    lock_key_ring()?;
    let _cluster_wide = key_file::lock_cluster_wide()?;
    Ok(key_file::load_or_create()?)
}

/// Seals `plain` bound to `associated` with the current key (creating the
/// key file on first use); serialised with key rotation.
pub fn seal(associated: &[u8], plain: &str) -> Result<Sealed, SecretStoreError> {
    let ring = current_ring()?;
    ring.seal_for(associated, plain).map_err(SecretStoreError::Encrypt)
}

/// Opens what `seal` sealed; `what` names it in errors.
pub fn open(associated: &[u8], sealed: &Sealed, what: &'static str) -> Result<String, SecretStoreError> {
    let ring = key_file::load_existing()?;
    ring.open_for(associated, sealed).map_err(|source| SecretStoreError::DecryptOther { what, source })
}

/// Encrypts and stores `password` for the given sides of the account, bound
/// to the account's servers as they are now (server_binding()), and records
/// when each side's password was set. awaiting_password ends unless a side
/// not written now still signs in with a password bound to other servers.
pub fn store_password(account_id: i64, sides: &[Side], password: &str) -> Result<(), SecretStoreError> {
    let ring = current_ring()?;
    for side in sides {
        // A nonce of its own per row: the same password sealed twice.
        let sealed = ring.seal(account_id, password).map_err(SecretStoreError::Encrypt)?;
        Spi::run_with_args(
            "INSERT INTO email_accounts.account_secret AS secret (account_id, side, key_id, nonce, ciphertext, bound_servers)
             VALUES ($1, $2, $3, $4, $5, email_accounts.server_binding($1))
             ON CONFLICT (account_id, side) DO UPDATE
                SET key_id = excluded.key_id, nonce = excluded.nonce, ciphertext = excluded.ciphertext,
                    bound_servers = excluded.bound_servers, updated_at = now()",
            &[
                account_id.into(),
                side.as_str().into(),
                (sealed.key_id as i32).into(),
                sealed.nonce.into(),
                sealed.ciphertext.into(),
            ],
        )?;
    }
    Spi::run_with_args(
        "UPDATE email_accounts.account
            SET password_set_at = CASE WHEN 'incoming' = ANY ($2) THEN now() ELSE password_set_at END,
                smtp_password_set_at = CASE WHEN 'smtp' = ANY ($2) THEN now() ELSE smtp_password_set_at END,
                awaiting_password = email_accounts.password_bound_elsewhere($1)
          WHERE account_id = $1",
        &[account_id.into(), sides.iter().map(|side| side.as_str()).collect::<Vec<_>>().into()],
    )?;
    Ok(())
}

/// `store_password` on a schema before 0.4.0 (one password per account):
/// set_password() works there until ALTER EXTENSION UPDATE.
pub fn store_password_before_0_4(account_id: i64, password: &str) -> Result<(), SecretStoreError> {
    let ring = current_ring()?;
    let sealed = ring.seal(account_id, password).map_err(SecretStoreError::Encrypt)?;
    Spi::run_with_args(
        "INSERT INTO email_accounts.account_secret AS secret (account_id, key_id, nonce, ciphertext, bound_servers)
         VALUES ($1, $2, $3, $4, email_accounts.server_binding($1))
         ON CONFLICT (account_id) DO UPDATE
            SET key_id = excluded.key_id, nonce = excluded.nonce, ciphertext = excluded.ciphertext,
                bound_servers = excluded.bound_servers, updated_at = now()",
        &[account_id.into(), (sealed.key_id as i32).into(), sealed.nonce.into(), sealed.ciphertext.into()],
    )?;
    Spi::run_with_args(
        "UPDATE email_accounts.account SET password_set_at = now(), awaiting_password = false WHERE account_id = $1",
        &[account_id.into()],
    )?;
    Ok(())
}

/// The decrypted password of one side of an account, or `None` if none is
/// stored. A password whose account now points at other servers than when
/// it was set is refused: whoever may change an account's servers must not
/// receive it.
pub fn read_password(account_id: i64, side: Side) -> Result<Option<String>, SecretStoreError> {
    let sealed = Spi::connect(|client| -> Result<Option<(Sealed, bool)>, SpiError> {
        let table = super::kept_plans::select(
            client,
            "SELECT key_id, nonce, ciphertext, bound_servers = email_accounts.server_binding(account_id)
               FROM email_accounts.account_secret WHERE account_id = $1 AND side = $2",
            &[account_id.into(), side.as_str().into()],
        )?;
        let Some(row) = table.first() else { return Ok(None) };
        let sealed = sealed_at(row, 1)?;
        Ok(Some((sealed, row.get::<bool>(4)?.unwrap_or(false))))
    })?;
    let Some((sealed, servers_unchanged)) = sealed else { return Ok(None) };
    if !servers_unchanged {
        return Err(SecretStoreError::ServersChanged { account_id });
    }
    let ring = key_file::load_existing()?;
    ring.open(account_id, &sealed).map(Some).map_err(|source| SecretStoreError::Decrypt { account_id, source })
}

/// Adds a new current key and re-encrypts every stored password, OAuth2
/// token set and client secret with it (older keys stay in the file).
/// Returns the new key id and how many secrets were re-encrypted.
pub fn rotate_key() -> Result<(u32, i64), SecretStoreError> {
    lock_key_ring()?;
    let rows = Spi::connect(|client| -> Result<Vec<(i64, String, Sealed)>, SpiError> {
        let table = client.select(
            "SELECT account_id, side, key_id, nonce, ciphertext FROM email_accounts.account_secret
              ORDER BY account_id, side FOR UPDATE",
            None,
            &[],
        )?;
        table
            .map(|row| {
                Ok((
                    row.get::<i64>(1)?.unwrap_or_default(),
                    row.get::<String>(2)?.unwrap_or_default(),
                    sealed_at(&row, 3)?,
                ))
            })
            .collect()
    })?;
    // Old keys stay in the file: the other databases of the cluster (a
    // restored copy among them) seal with the same file, and a rolled-back
    // rotation must still find the key its passwords were sealed with. The
    // file is read, changed and written under the cluster-wide lock.
    let (ring, new_key) = {
        let _cluster_wide = key_file::lock_cluster_wide()?;
        let mut ring = key_file::load_or_create()?;
        let new_key = ring.add_new_key().map_err(SecretStoreError::Encrypt)?;
        key_file::save(&ring)?;
        (ring, new_key)
    };
    for (account_id, side, sealed) in &rows {
        let password = ring
            .open(*account_id, sealed)
            .map_err(|source| SecretStoreError::Decrypt { account_id: *account_id, source })?;
        let resealed = ring.seal(*account_id, &password).map_err(SecretStoreError::Encrypt)?;
        Spi::run_with_args(
            "UPDATE email_accounts.account_secret SET key_id = $3, nonce = $4, ciphertext = $5, updated_at = now()
              WHERE account_id = $1 AND side = $2",
            &[
                (*account_id).into(),
                side.as_str().into(),
                (resealed.key_id as i32).into(),
                resealed.nonce.into(),
                resealed.ciphertext.into(),
            ],
        )?;
    }
    let others = super::oauth::reseal_all(&ring)?;
    Ok((new_key, rows.len() as i64 + others))
}
