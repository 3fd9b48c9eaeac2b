//! IMAP sync of an account's folders by UID. Folders are opened with EXAMINE
//! (read-only) and bodies fetched with BODY.PEEK, so the server's \Seen flags
//! never change because of us. Per folder: only UIDs above the committed
//! cursor are fetched; a changed UIDVALIDITY starts the folder afresh (the
//! store recognises messages it already has); the first sync takes only the
//! newest `initial_sync_count`.

use super::batch::{split_by_size, FIRST_BATCH_MESSAGES};
use super::bulk_fetch::{self, BulkFetchError, ReadLimits};
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

/// What a header-section FETCH may bring per message, as if each had
/// listed this (a header section has no listed size).
const HEADER_SECTION_ALLOWANCE: u64 = 1 << 20;

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
    // size listed a little wrong; never whatever it announces. A FETCH of
    // several may bring twice what was listed for them all and that room
    // once; a message past that (sizes listed low, or answers not asked for)
    // is fetched again on its own, within that room once more for them all:
    // a group never holds more than twice its listed sizes and two rooms.
    let max_literal = limits.max_message_size.saturating_mul(2).saturating_add(1 << 20);
    let allowance =
        |listed: u64| ReadLimits { literal: max_literal, total: listed.saturating_mul(2).saturating_add(max_literal) };
    let mut messages = Vec::with_capacity(group.len());
    // `sent`: what the server sent for it, when it listed less (a whole
    // message, or at least a header section alone).
    let mut keep = |uid: u32, bytes: Vec<u8>, sent: u64, headers_only: bool| {
        let Some(&(listed_size, seen)) = sizes.get(&uid) else { return };
        let mut message = fetched_message(bytes, listed_size.max(sent), headers_only, limits);
        message.uid = Some(uid);
        message.seen = seen;
        messages.push(message);
    };
    let mut sent_sizes: HashMap<u32, u64> = HashMap::new();
    if !whole.is_empty() {
        let listed = whole.iter().map(|uid| sizes[uid].0).fold(0, u64::saturating_add);
        let mut fetched = bulk_fetch::uid_fetch(stream, &whole, "(UID BODY.PEEK[])", allowance(listed))?;
        fetched.again_alone(stream, "(UID BODY.PEEK[])", max_literal)?;
        for message in fetched.messages {
            let sent = message.bytes.len() as u64;
            keep(message.uid, message.bytes, sent, false);
        }
        // Far longer than listed: kept as an oversized message is, headers
        // only, with the size it has.
        for dropped in fetched.too_large {
            oversized.push(dropped.uid);
            sent_sizes.insert(dropped.uid, dropped.length);
        }
    }
    if !oversized.is_empty() {
        let listed = HEADER_SECTION_ALLOWANCE.saturating_mul(oversized.len() as u64);
        let mut fetched = bulk_fetch::uid_fetch(stream, &oversized, "(UID BODY.PEEK[HEADER])", allowance(listed))?;
        fetched.again_alone(stream, "(UID BODY.PEEK[HEADER])", max_literal)?;
        let sent = |uid: u32| sent_sizes.get(&uid).copied().unwrap_or(0);
        for message in fetched.messages {
            keep(message.uid, message.bytes, sent(message.uid), true);
        }
        // A header section longer than that too: kept empty, headers only, so it shows.
        for dropped in fetched.too_large {
            keep(dropped.uid, Vec::new(), sent(dropped.uid).max(dropped.length), true);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::MailStream;
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};

    /// A server that answers the n-th command with `answers[n]` and its tag's OK; the commands it read.
    fn answering(answers: Vec<&'static [u8]>) -> (ImapStream, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut commands = Vec::new();
            for answer in answers {
                let mut command = String::new();
                reader.read_line(&mut command).unwrap();
                let tag = command.split(' ').next().unwrap().to_owned();
                reader.get_mut().write_all(answer).unwrap();
                reader.get_mut().write_all(format!("{tag} OK done\r\n").as_bytes()).unwrap();
                commands.push(command.trim_end().replacen(&tag, "", 1));
            }
            commands
        });
        (ImapStream::new(MailStream::Plain(client)), server)
    }

    #[test]
    fn a_message_far_longer_than_listed_is_kept_headers_only_with_the_size_it_has() {
        let limits =
            Limits { attachment_size_limit: 1 << 20, max_message_size: 10, batch_messages: 10, batch_bytes: 1 << 20 };
        // Allowed: 2 × 10 + 1 MB. UID 7 sends 1 MB + 30, UID 8 is as listed.
        let mut long = b"* 1 FETCH (UID 7 BODY[] {1048606}\r\n".to_vec();
        long.extend(std::iter::repeat_n(b'x', 1_048_606));
        long.extend(b")\r\n* 2 FETCH (UID 8 BODY[] {4}\r\nok\r\n)\r\n");
        let long: &'static [u8] = long.leak();
        let (stream, server) = answering(vec![long, b"* 1 FETCH (UID 7 BODY[HEADER] {10}\r\nSubject:\r\n)\r\n"]);
        let sizes = HashMap::from([(7, (5, false)), (8, (4, true))]);
        let messages = fetch_group(&stream, &[7, 8], &sizes, &limits).unwrap();
        let kept: Vec<_> =
            messages.iter().map(|m| (m.uid, m.server_size, m.headers_only, m.raw.len(), m.seen)).collect();
        assert_eq!(kept, vec![(Some(7), 1_048_606, true, 10, false), (Some(8), 4, false, 4, true)]);
        assert_eq!(
            server.join().unwrap(),
            vec![" UID FETCH 7:8 (UID BODY.PEEK[])", " UID FETCH 7 (UID BODY.PEEK[HEADER])"]
        );
    }

    #[test]
    fn only_the_messages_asked_for_are_kept_each_once() {
        let limits =
            Limits { attachment_size_limit: 1 << 20, max_message_size: 100, batch_messages: 10, batch_bytes: 1 << 20 };
        let (stream, server) = answering(vec![
            b"* 1 FETCH (UID 7 BODY[] {2}\r\nok)\r\n* 2 FETCH (UID 7 BODY[] {5}\r\nagain)\r\n\
* 3 FETCH (UID 99 BODY[] {5}\r\nstray)\r\n",
        ]);
        let sizes = HashMap::from([(7, (2, false)), (99, (5, false))]);
        let messages = fetch_group(&stream, &[7], &sizes, &limits).unwrap();
        let kept: Vec<_> = messages.iter().map(|m| (m.uid, m.raw.clone())).collect();
        assert_eq!(kept, vec![(Some(7), b"ok".to_vec())], "neither a second copy nor a message of another group");
        assert_eq!(server.join().unwrap().len(), 1);
    }

    #[test]
    fn a_message_past_the_allowance_is_fetched_again_on_its_own() {
        let limits =
            Limits { attachment_size_limit: 1 << 20, max_message_size: 1000, batch_messages: 10, batch_bytes: 1 << 20 };
        // Allowed for both: 2 × 20 listed + 2 × 1000 + 1 MB. Each sends 600,000.
        let answer = |uid: u32| -> &'static [u8] {
            let mut wire = format!("* 1 FETCH (UID {uid} BODY[] {{600000}}\r\n").into_bytes();
            wire.extend(std::iter::repeat_n(b'x', 600_000));
            wire.extend(b")\r\n");
            wire.leak()
        };
        let both: &'static [u8] = [answer(7), answer(8)].concat().leak();
        let (stream, server) = answering(vec![both, answer(8)]);
        let sizes = HashMap::from([(7, (10, false)), (8, (10, false))]);
        let messages = fetch_group(&stream, &[7, 8], &sizes, &limits).unwrap();
        let kept: Vec<_> = messages.iter().map(|m| (m.uid, m.server_size, m.headers_only, m.raw.len())).collect();
        assert_eq!(kept, vec![(Some(7), 600_000, false, 600_000), (Some(8), 600_000, false, 600_000)]);
        assert_eq!(server.join().unwrap(), vec![" UID FETCH 7:8 (UID BODY.PEEK[])", " UID FETCH 8 (UID BODY.PEEK[])"]);
    }

    #[test]
    fn the_refetches_of_a_group_share_one_messages_room() {
        let limits =
            Limits { attachment_size_limit: 1 << 20, max_message_size: 1000, batch_messages: 10, batch_bytes: 1 << 20 };
        // Listed 0 each (allowed: 2 × 1000 + 1 MB for the FETCH, as much
        // again for the refetches); each sends 700,000.
        let body = |uid: u32| -> Vec<u8> {
            let mut wire = format!("* 1 FETCH (UID {uid} BODY[] {{700000}}\r\n").into_bytes();
            wire.extend(std::iter::repeat_n(b'x', 700_000));
            wire.extend(b")\r\n");
            wire
        };
        let header = |uid: u32| format!("* 1 FETCH (UID {uid} BODY[HEADER] {{4}}\r\nA:\r\n)\r\n").into_bytes();
        let answers: Vec<&'static [u8]> =
            vec![[body(7), body(8), body(9)].concat().leak(), body(8).leak(), body(9).leak(), header(9).leak()];
        let (stream, server) = answering(answers);
        let sizes = HashMap::from([(7, (0, false)), (8, (0, false)), (9, (0, false))]);
        let messages = fetch_group(&stream, &[7, 8, 9], &sizes, &limits).unwrap();
        let kept: Vec<_> = messages.iter().map(|m| (m.uid, m.headers_only, m.raw.len())).collect();
        assert_eq!(
            kept,
            vec![(Some(7), false, 700_000), (Some(8), false, 700_000), (Some(9), true, 4)],
            "the room left after 8 is less than 9: read, dropped, kept headers only"
        );
        assert_eq!(
            server.join().unwrap(),
            vec![
                " UID FETCH 7:9 (UID BODY.PEEK[])",
                " UID FETCH 8 (UID BODY.PEEK[])",
                " UID FETCH 9 (UID BODY.PEEK[])",
                " UID FETCH 9 (UID BODY.PEEK[HEADER])"
            ]
        );
    }
}
