//! IMAP sync of an account's folders by UID. Folders are opened with EXAMINE
//! (read-only) and bodies fetched with BODY.PEEK, so the server's \Seen flags
//! never change because of us. Per folder: only UIDs above the committed
//! cursor are fetched; a changed UIDVALIDITY starts the folder afresh (the
//! store recognises messages it already has); the first sync takes only the
//! newest `initial_sync_count`.

use super::batch::{split_by_size, FIRST_BATCH_MESSAGES};
use super::bulk_fetch::{self, BulkFetchError};
use super::{fetched_message, uid_set, Batch, BatchStore, FolderOutcome, Limits, SyncError};
use crate::connection::{ConnectionError, Endpoint, Login};
use crate::imap_client::{self, classify, ImapSession, ImapStream};
use imap::types::Flag;
use std::collections::HashMap;

/// Where a folder's sync stands in the database.
#[derive(Debug, Clone)]
pub struct FolderState {
    pub folder: String,
    /// `None` before the first sync.
    pub uidvalidity: Option<u32>,
    pub last_uid: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct ImapOptions {
    /// Only messages without \Seen on the server (ERPNext's "UNSEEN").
    pub unseen_only: bool,
    pub initial_sync_count: u32,
    pub limits: Limits,
}

/// A folder failed: `session_lost` says whether the next folders can still use the connection.
struct FolderFailure {
    error: SyncError,
    session_lost: bool,
}

fn imap_failure(error: imap::Error, during: &str) -> FolderFailure {
    // NO / BAD answer one command; anything else leaves the session unusable.
    let session_lost = !matches!(error, imap::Error::No(_) | imap::Error::Bad(_));
    FolderFailure { error: SyncError::Connection(classify(error, during)), session_lost }
}

/// Syncs every folder in order over one connection; one outcome per folder.
pub fn sync(
    endpoint: &Endpoint,
    login: &Login,
    folders: &[FolderState],
    options: &ImapOptions,
    store: &mut dyn BatchStore,
) -> Vec<FolderOutcome> {
    let (mut session, stream) = match imap_client::connect_sharing(endpoint, login) {
        Ok((session, _, stream)) => (session, stream),
        Err(error) => {
            let error = SyncError::Connection(error);
            return folders.iter().map(|state| FolderOutcome::failed(&state.folder, error.clone())).collect();
        }
    };
    let mut outcomes: Vec<FolderOutcome> = folders.iter().map(|state| FolderOutcome::new(&state.folder)).collect();
    let mut lost: Option<SyncError> = None;
    for (state, outcome) in folders.iter().zip(outcomes.iter_mut()) {
        if let Some(error) = &lost {
            outcome.error = Some(error.clone());
            continue;
        }
        if let Err(failure) = sync_folder(&mut session, &stream, state, options, store, outcome) {
            if failure.session_lost {
                lost = Some(failure.error.clone());
            }
            outcome.error = Some(failure.error);
        }
    }
    if lost.is_none() {
        let _ = session.logout();
    }
    outcomes
}

fn sync_folder(
    session: &mut ImapSession,
    stream: &ImapStream,
    state: &FolderState,
    options: &ImapOptions,
    store: &mut dyn BatchStore,
    outcome: &mut FolderOutcome,
) -> Result<(), FolderFailure> {
    let during = |what: &str| format!("{what} {:?}", state.folder);
    let mailbox = session.examine(&state.folder).map_err(|error| imap_failure(error, &during("opening")))?;
    let uidvalidity = mailbox.uid_validity.unwrap_or(0);
    let fresh = state.uidvalidity != Some(uidvalidity);
    let resync = state.uidvalidity.is_some() && fresh;
    let floor = if fresh { 0 } else { state.last_uid };

    let mut uids: Vec<u32> = if mailbox.exists == 0 {
        Vec::new()
    } else {
        let criteria = match (fresh, options.unseen_only) {
            (true, false) => "ALL".to_owned(),
            (true, true) => "UNSEEN".to_owned(),
            (false, false) => format!("UID {}:*", floor + 1),
            (false, true) => format!("UNSEEN UID {}:*", floor + 1),
        };
        let found = session.uid_search(&criteria).map_err(|error| imap_failure(error, &during("searching")))?;
        // "n:*" always matches the highest UID, even one below n.
        found.into_iter().filter(|uid| *uid > floor).collect()
    };
    uids.sort_unstable();
    if fresh && uids.len() > options.initial_sync_count as usize {
        uids.drain(..uids.len() - options.initial_sync_count as usize);
    }
    // Everything below UIDNEXT existed when the folder was opened and was
    // either searched or deliberately left (seen, or beyond the initial count).
    let end_cursor = [uids.last().copied(), mailbox.uid_next.map(|next| next.saturating_sub(1)), Some(floor)]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0);

    let mut committed_cursor = if fresh { None } else { Some(floor) };
    // The batch handed to the store whose receipt is still to come, by its cursor.
    let mut submitted: Option<u32> = None;
    let limits = &options.limits;
    // Sizes and flags first, a chunk at a time, so nothing too large is fetched.
    for (chunk_index, chunk) in uids.chunks(limits.batch_messages.max(1) * 10).enumerate() {
        let listing = match session.uid_fetch(uid_set(chunk), "(UID RFC822.SIZE FLAGS)") {
            Ok(listing) => listing,
            Err(error) => {
                // The batch before is committed or refused: its receipt still counts.
                if submitted.take().is_some() {
                    settle(store, outcome)?;
                }
                return Err(imap_failure(error, &during("listing sizes in")));
            }
        };
        let mut sizes: HashMap<u32, (u64, bool)> = HashMap::new();
        for fetch in listing.iter() {
            if let Some(uid) = fetch.uid {
                let seen = fetch.flags().contains(&Flag::Seen);
                sizes.insert(uid, (fetch.size.unwrap_or(0) as u64, seen));
            }
        }
        // UIDs expunged since the search are simply gone.
        let present: Vec<u32> = chunk.iter().copied().filter(|uid| sizes.contains_key(uid)).collect();
        let fetched_size = |uid: u32| {
            let size = sizes[&uid].0;
            if size > limits.max_message_size {
                4096
            } else {
                size
            }
        };
        let first_at_most = if chunk_index == 0 { FIRST_BATCH_MESSAGES } else { usize::MAX };
        for group in split_by_size(&present, fetched_size, limits, first_at_most) {
            // Fetched and parsed while the batch before is being committed.
            let fetched = fetch_group(stream, &group, &sizes, limits);
            if let Some(cursor) = submitted.take() {
                if let Err(mut failure) = settle(store, outcome) {
                    // A fetch cut off mid-response leaves the connection unusable either way.
                    failure.session_lost |= fetched.as_ref().is_err_and(BulkFetchError::session_lost);
                    return Err(failure);
                }
                committed_cursor = Some(cursor);
            }
            let messages = fetched.map_err(|error| bulk_fetch_failure(error, &during("fetching from")))?;
            let group_cursor = *group.last().expect("groups are never empty");
            let batch = Batch {
                folder: state.folder.clone(),
                uidvalidity: Some(uidvalidity),
                messages,
                last_uid: Some(group_cursor),
                resync,
                skipped_unique_ids: Vec::new(),
            };
            store
                .submit(batch)
                .map_err(|error| FolderFailure { error: SyncError::Store(error), session_lost: false })?;
            submitted = Some(group_cursor);
        }
    }
    if let Some(cursor) = submitted.take() {
        settle(store, outcome)?;
        committed_cursor = Some(cursor);
    }
    if committed_cursor != Some(end_cursor) {
        let batch = Batch {
            folder: state.folder.clone(),
            uidvalidity: Some(uidvalidity),
            last_uid: Some(end_cursor),
            resync,
            ..Batch::default()
        };
        commit(store, batch, outcome)?;
    }
    Ok(())
}

/// Fetches one group: whole messages with BODY.PEEK[], oversized ones headers only.
fn fetch_group(
    stream: &ImapStream,
    group: &[u32],
    sizes: &HashMap<u32, (u64, bool)>,
    limits: &Limits,
) -> Result<Vec<super::FetchedMessage>, BulkFetchError> {
    let (whole, mut oversized): (Vec<u32>, Vec<u32>) =
        group.iter().copied().partition(|uid| sizes[uid].0 <= limits.max_message_size);
    // What a server may send for one message: what it listed, with room for a
    // size listed a little wrong; never whatever it announces.
    let max_literal = limits.max_message_size.saturating_mul(2).saturating_add(1 << 20);
    let mut messages = Vec::with_capacity(group.len());
    let mut keep = |fetched: Vec<bulk_fetch::FetchedBytes>, headers_only: bool| {
        for fetched in fetched {
            let Some(&(server_size, seen)) = sizes.get(&fetched.uid) else { continue };
            let mut message = fetched_message(fetched.bytes, server_size, headers_only, limits);
            message.uid = Some(fetched.uid);
            message.seen = seen;
            messages.push(message);
        }
    };
    if !whole.is_empty() {
        let fetched = bulk_fetch::uid_fetch(stream, &uid_set(&whole), "(UID BODY.PEEK[])", max_literal)?;
        keep(fetched.messages, false);
        // Far longer than listed: kept as an oversized message is, headers only.
        oversized.extend(fetched.too_large);
    }
    if !oversized.is_empty() {
        let fetched = bulk_fetch::uid_fetch(stream, &uid_set(&oversized), "(UID BODY.PEEK[HEADER])", max_literal)?;
        keep(fetched.messages, true);
        // A header section longer than that too: kept empty, headers only, so it shows.
        let empty = fetched.too_large.into_iter().map(|uid| bulk_fetch::FetchedBytes { uid, bytes: Vec::new() });
        keep(empty.collect(), true);
    }
    messages.sort_by_key(|message| message.uid);
    Ok(messages)
}

fn bulk_fetch_failure(error: BulkFetchError, during: &str) -> FolderFailure {
    let session_lost = error.session_lost();
    let error = match error {
        BulkFetchError::Io(error) => ConnectionError::from_io(&error, during),
        other => ConnectionError::Protocol(format!("{other} ({during})")),
    };
    FolderFailure { error: SyncError::Connection(error), session_lost }
}

/// Hands a batch to the store and waits; a message it could not keep stops
/// the folder (the cursor stays before it, and the next sync tries again).
fn commit(store: &mut dyn BatchStore, batch: Batch, outcome: &mut FolderOutcome) -> Result<(), FolderFailure> {
    store.submit(batch).map_err(|error| FolderFailure { error: SyncError::Store(error), session_lost: false })?;
    settle(store, outcome)
}

/// Waits for the receipt of the batch submitted last and counts it.
fn settle(store: &mut dyn BatchStore, outcome: &mut FolderOutcome) -> Result<(), FolderFailure> {
    let receipt =
        store.receipt().map_err(|error| FolderFailure { error: SyncError::Store(error), session_lost: false })?;
    outcome.new_messages += receipt.new_messages;
    outcome.already_stored += receipt.already_stored;
    if let Some((which, why)) = receipt.failed.first() {
        return Err(FolderFailure {
            error: SyncError::Store(format!("message {which} could not be stored: {why}")),
            session_lost: false,
        });
    }
    Ok(())
}
