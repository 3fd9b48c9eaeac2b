//! POP3 sync: messages are known by their UIDL, so nothing is stored twice.
//! Deletion follows the account's policy and happens only for messages the
//! database has committed; deletions take effect at QUIT, so a connection
//! lost before it deletes nothing (and the next sync deletes them again).

use super::batch::split_by_size;
use super::{fetched_message, Batch, BatchStore, FetchedMessage, FolderOutcome, Limits, SyncError};
use crate::connection::{Endpoint, Login, MailStream};
use crate::pop3::{self, Pop3Client, Pop3Error};
use std::collections::{HashMap, HashSet};

/// What happens to a message on the server once it is stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Retrieval {
    Keep,
    DeleteAfterStore,
    /// Delete once the stored copy is this many days old.
    DeleteAfterDays(u32),
}

/// What the database knows about the mailbox.
#[derive(Debug, Clone, Default)]
pub struct Pop3State {
    pub folder: String,
    /// No sync has happened yet: the initial sync count applies.
    pub first_sync: bool,
    /// UIDLs the initial sync count left on the server.
    pub skipped: HashSet<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct Pop3Options {
    pub retrieval: Retrieval,
    pub initial_sync_count: u32,
    pub limits: Limits,
}

fn failed(error: Pop3Error, during: &str) -> SyncError {
    SyncError::Connection(pop3::classify(error, during))
}

pub fn sync(
    endpoint: &Endpoint,
    login: &Login,
    state: &Pop3State,
    options: &Pop3Options,
    store: &mut dyn BatchStore,
) -> FolderOutcome {
    let mut outcome = FolderOutcome::new(&state.folder);
    let mut client = match pop3::connect(endpoint, login) {
        Ok((client, _)) => client,
        Err(error) => {
            outcome.error = Some(SyncError::Connection(error));
            return outcome;
        }
    };
    match sync_mailbox(&mut client, state, options, store, &mut outcome) {
        Ok(marked) => match client.quit() {
            // Only now are the DELEs carried out.
            Ok(()) => outcome.deleted_on_server = marked,
            Err(error) => outcome.error = Some(failed(error, "logging out (deletions were not carried out)")),
        },
        // Dropping the connection without QUIT undoes any DELE.
        Err(error) => outcome.error = Some(error),
    }
    outcome
}

/// UIDLs asked for at once: a server may list hundreds of thousands, and
/// each question holds the database's main thread, which other accounts'
/// batches wait for.
const LOOKED_UP_AT_ONCE: usize = 10_000;

/// Which of the listed UIDLs are stored (each once, in slices).
fn stored_of(listing: &[(u32, String)], store: &mut dyn BatchStore) -> Result<HashMap<String, f64>, SyncError> {
    let mut distinct: Vec<String> = listing.iter().map(|(_, id)| id.clone()).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let mut stored = HashMap::new();
    for slice in distinct.chunks(LOOKED_UP_AT_ONCE) {
        stored.extend(store.stored_unique_ids(slice).map_err(SyncError::Store)?);
    }
    Ok(stored)
}

/// The UIDLs the server lists once. One it lists twice names two messages
/// of which only one can be stored: neither is ever deleted (the stored copy
/// could be the other's).
fn listed_once(listing: &[(u32, String)]) -> HashSet<&str> {
    let mut times_listed: HashMap<&str, usize> = HashMap::new();
    for (_, id) in listing {
        *times_listed.entry(id.as_str()).or_default() += 1;
    }
    times_listed.into_iter().filter(|(_, times)| *times == 1).map(|(id, _)| id).collect()
}

/// The messages already stored that the account's policy deletes now (of
/// those the server lists once).
fn stored_and_due(
    listing: &[(u32, String)],
    once: &HashSet<&str>,
    stored: &HashMap<String, f64>,
    retrieval: Retrieval,
) -> Vec<u32> {
    listing
        .iter()
        .filter(|(_, id)| once.contains(id.as_str()))
        .filter(|(_, id)| match (retrieval, stored.get(id)) {
            (Retrieval::DeleteAfterStore, Some(_)) => true,
            (Retrieval::DeleteAfterDays(days), Some(age)) => *age >= days as f64,
            _ => false,
        })
        .map(|(number, _)| *number)
        .collect()
}

/// Fetches and stores new messages, marks deletions; returns how many were marked.
fn sync_mailbox(
    client: &mut Pop3Client<MailStream>,
    state: &Pop3State,
    options: &Pop3Options,
    store: &mut dyn BatchStore,
    outcome: &mut FolderOutcome,
) -> Result<usize, SyncError> {
    let listing = client.unique_ids().map_err(|error| failed(error, "listing unique ids"))?;
    let stored = stored_of(&listing, store)?;
    let listed_once = listed_once(&listing);
    let sizes: HashMap<u32, u64> =
        client.sizes().map_err(|error| failed(error, "listing sizes"))?.into_iter().collect();
    let mut new: Vec<(u32, &str)> = listing
        .iter()
        .filter(|(_, id)| !stored.contains_key(id) && !state.skipped.contains(id))
        .map(|(number, id)| (*number, id.as_str()))
        .collect();
    let mut skipped = Vec::new();
    if state.first_sync && new.len() > options.initial_sync_count as usize {
        let keep_from = new.len() - options.initial_sync_count as usize;
        skipped = new.drain(..keep_from).map(|(_, id)| id.to_owned()).collect();
    }

    let mut to_delete = stored_and_due(&listing, &listed_once, &stored, options.retrieval);

    let limits = &options.limits;
    let size_of = |number: u32| sizes.get(&number).copied().unwrap_or(0);
    let fetched_size = |index: usize| size_of(new[index].0).min(limits.max_message_size);
    let indexes: Vec<usize> = (0..new.len()).collect();
    // POP3 stores each batch before it fetches the next: a shorter first one gains nothing.
    let groups = split_by_size(&indexes, fetched_size, limits, usize::MAX);
    let mut skipped = Some(skipped);
    for group in &groups {
        let mut messages: Vec<FetchedMessage> = Vec::with_capacity(group.len());
        for &index in group {
            let (number, id) = new[index];
            let headers_only = size_of(number) > limits.max_message_size;
            let bytes = if headers_only { client.headers(number) } else { client.retrieve(number) }
                .map_err(|error| failed(error, &format!("retrieving message {number}")))?;
            let mut message = fetched_message(bytes, size_of(number), headers_only, limits);
            message.unique_id = Some(id.to_owned());
            messages.push(message);
        }
        let batch = Batch {
            folder: state.folder.clone(),
            messages,
            skipped_unique_ids: skipped.take().unwrap_or_default(),
            ..Batch::default()
        };
        let receipt = store.store(batch).map_err(SyncError::Store)?;
        outcome.new_messages += receipt.new_messages;
        outcome.already_stored += receipt.already_stored;
        if options.retrieval == Retrieval::DeleteAfterStore {
            let committed: HashSet<&str> = receipt.committed_unique_ids.iter().map(String::as_str).collect();
            to_delete.extend(
                group
                    .iter()
                    .map(|&index| new[index])
                    .filter(|(_, id)| committed.contains(id) && listed_once.contains(id))
                    .map(|(n, _)| n),
            );
        }
        if let Some((which, why)) = receipt.failed.first() {
            // Keep going with the others; this one stays on the server.
            outcome.error = Some(SyncError::Store(format!("message {which} could not be stored: {why}")));
        }
    }
    if let Some(skipped) = skipped.filter(|skipped| !skipped.is_empty() || state.first_sync) {
        // No new message, but the first sync must still be recorded.
        let batch = Batch { folder: state.folder.clone(), skipped_unique_ids: skipped, ..Batch::default() };
        store.store(batch).map_err(SyncError::Store)?;
    }
    for number in &to_delete {
        client.delete(*number).map_err(|error| failed(error, &format!("deleting message {number}")))?;
    }
    Ok(to_delete.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(ids: &[&str]) -> Vec<(u32, String)> {
        ids.iter().zip(1..).map(|(id, number)| (number, id.to_string())).collect()
    }

    #[test]
    fn only_stored_messages_listed_once_are_deleted_as_the_policy_says() {
        let listed = listing(&["a", "b", "twice", "c", "twice"]);
        let stored: HashMap<String, f64> =
            [("a", 0.5), ("b", 3.0), ("twice", 9.0)].into_iter().map(|(id, age)| (id.to_owned(), age)).collect();
        let once = listed_once(&listed);
        assert_eq!(once, ["a", "b", "c"].into_iter().collect());
        assert_eq!(stored_and_due(&listed, &once, &stored, Retrieval::Keep), Vec::<u32>::new());
        // "c" is not stored; "twice" is stored but listed twice.
        assert_eq!(stored_and_due(&listed, &once, &stored, Retrieval::DeleteAfterStore), vec![1, 2]);
        assert_eq!(stored_and_due(&listed, &once, &stored, Retrieval::DeleteAfterDays(2)), vec![2]);
    }
}
