//! The encryption key ring lives in `email_accounts.keys` in the data
//! directory: outside every table, readable only by the server's OS user,
//! copied by pg_basebackup, and not by pg_dump (back it up with your dumps).
//! Callers hold the key-ring advisory lock while they read and write it.

use email_accounts_mail::secret::{KeyRing, SecretError};
use pgrx::pg_sys;
use std::ffi::CStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

pub const KEY_FILE_NAME: &str = "email_accounts.keys";

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the key file {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("cannot write the key file {path}: {source}")]
    Write { path: String, source: io::Error },
    #[error("the key file {path} is damaged: {source}")]
    Damaged { path: String, source: SecretError },
    #[error("the key file {path} does not exist, so no stored password can be decrypted: copy email_accounts.keys from the data directory of the cluster this database was dumped from (README \"Backups\"), or set the passwords again")]
    Missing { path: String },
}

pub fn path() -> PathBuf {
    // SAFETY: DataDir is set before any backend runs SQL and never changes.
    let data_directory = unsafe { CStr::from_ptr(pg_sys::DataDir) };
    PathBuf::from(data_directory.to_string_lossy().into_owned()).join(KEY_FILE_NAME)
}

fn display(path: &std::path::Path) -> String {
    path.display().to_string()
}

/// The key ring, or `None` when no key file exists yet.
pub fn load() -> Result<Option<KeyRing>, KeyFileError> {
    let path = path();
    match fs::read_to_string(&path) {
        Ok(text) => {
            KeyRing::parse(&text).map(Some).map_err(|source| KeyFileError::Damaged { path: display(&path), source })
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KeyFileError::Read { path: display(&path), source }),
    }
}

/// The key ring; an error if the file is missing.
pub fn load_existing() -> Result<KeyRing, KeyFileError> {
    load()?.ok_or_else(|| KeyFileError::Missing { path: display(&path()) })
}

/// An exclusive lock on the key file for the whole cluster, released when
/// dropped. Every database of the cluster shares the file, and each one's
/// table lock (see secrets.rs) covers only itself: two databases adding a key
/// at once would each write the file without the other's key.
pub struct ClusterWideLock(#[allow(dead_code)] File);

/// Waits for the cluster-wide key-file lock (a flock on a file beside it),
/// answering cancels and timeouts meanwhile (a blocking flock would not).
/// Hold it only around reading, changing and writing the file.
pub fn lock_cluster_wide() -> Result<ClusterWideLock, KeyFileError> {
    let path = path().with_extension("keys.lock");
    let error = |source| KeyFileError::Write { path: display(&path), source };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(error)?;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(ClusterWideLock(file)),
            Err(std::fs::TryLockError::WouldBlock) => {
                // SAFETY: the backend's own latch; interrupts are answered after the wait.
                unsafe {
                    pg_sys::WaitLatch(
                        pg_sys::MyLatch,
                        (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                        10,
                        pg_sys::PG_WAIT_EXTENSION,
                    );
                    pg_sys::ResetLatch(pg_sys::MyLatch);
                }
                pg_sys::check_for_interrupts!();
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(error(source)),
        }
    }
}

/// The key ring, creating the file with a first random key if there is none.
pub fn load_or_create() -> Result<KeyRing, KeyFileError> {
    if let Some(ring) = load()? {
        return Ok(ring);
    }
    let mut ring = KeyRing::default();
    ring.add_new_key().map_err(|source| KeyFileError::Damaged { path: display(&path()), source })?;
    save(&ring)?;
    Ok(ring)
}

/// Replaces the key file atomically (write, fsync, rename, fsync directory).
pub fn save(ring: &KeyRing) -> Result<(), KeyFileError> {
    let path = path();
    let temporary = path.with_extension("keys.new");
    let write_error = |source| KeyFileError::Write { path: display(&path), source };
    let mut file =
        OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary).map_err(write_error)?;
    file.write_all(ring.to_text().as_bytes()).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    fs::rename(&temporary, &path).map_err(write_error)?;
    if let Some(directory) = path.parent() {
        File::open(directory).and_then(|directory| directory.sync_all()).map_err(write_error)?;
    }
    Ok(())
}
