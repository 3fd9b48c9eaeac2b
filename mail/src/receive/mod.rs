//! Receiving: pull new messages from an IMAP folder or a POP3 mailbox, parse
//! them, and hand them in batches to a [`BatchStore`] that commits them
//! (the database, on the worker's main thread). Nothing is acknowledged to
//! the server — no cursor trusted, no POP3 DELE sent — before the store says
//! the batch is committed.

pub mod auto_reply;
mod batch;
mod bulk_fetch;
pub mod delivery_report;
pub mod idle;
pub mod imap_sync;
pub mod pop3_sync;
mod uid_set;

pub use batch::{fetched_message, Batch, BatchStore, FetchedMessage, Limits, StoreReceipt};
pub use uid_set::uid_set;

use crate::connection::ConnectionError;

/// How one folder (or the POP3 mailbox) fared in one sync.
#[derive(Debug, Clone)]
pub struct FolderOutcome {
    pub folder: String,
    /// Messages the store committed as new in this sync.
    pub new_messages: usize,
    /// Messages fetched that were already stored (a resync after UIDVALIDITY changed).
    pub already_stored: usize,
    /// POP3: messages deleted from the server (after they were committed).
    pub deleted_on_server: usize,
    pub error: Option<SyncError>,
}

impl FolderOutcome {
    pub fn new(folder: &str) -> Self {
        FolderOutcome {
            folder: folder.to_owned(),
            new_messages: 0,
            already_stored: 0,
            deleted_on_server: 0,
            error: None,
        }
    }

    /// A folder that could not be synced at all.
    pub fn failed(folder: &str, error: SyncError) -> Self {
        FolderOutcome { error: Some(error), ..FolderOutcome::new(folder) }
    }
}

/// Why a folder's sync stopped.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SyncError {
    /// The server, the network or TLS.
    #[error("{0}")]
    Connection(#[from] ConnectionError),
    /// The database could not commit a batch; the cursor stays where it was.
    #[error("storing messages failed: {0}")]
    Store(String),
}

impl SyncError {
    /// The kind shown in sync_state: dns, connect, timeout, tls, auth, protocol or store.
    pub fn kind(&self) -> &'static str {
        match self {
            SyncError::Connection(error) => error.kind().label(),
            SyncError::Store(_) => "store",
        }
    }
}
