//! What a sync hands to the database: fetched, already-parsed messages and
//! the cursor that may advance once they are committed.

use crate::parse::{parse, ParseError, ParsedMessage};
use std::collections::HashMap;

/// Size limits of one account's sync.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Attachments larger than this keep their metadata but not their bytes.
    pub attachment_size_limit: u64,
    /// Messages larger than this (RFC822.SIZE / LIST) are fetched headers only.
    pub max_message_size: u64,
    /// At most this many messages per committed batch...
    pub batch_messages: usize,
    /// ...and at most about this many bytes (a single larger message is a batch of its own).
    pub batch_bytes: u64,
}

/// One message as fetched from the server.
#[derive(Debug, Clone)]
pub struct FetchedMessage {
    /// IMAP UID within the folder's UIDVALIDITY.
    pub uid: Option<u32>,
    /// POP3 UIDL.
    pub unique_id: Option<String>,
    /// The size the server reported.
    pub server_size: u64,
    /// The server's \Seen flag when fetched (IMAP).
    pub seen: bool,
    /// The bytes as fetched: the whole message, or only its header section when `headers_only`.
    pub raw: Vec<u8>,
    /// The message was larger than `max_message_size`: only its header section was fetched.
    pub headers_only: bool,
    pub parsed: Result<ParsedMessage, ParseError>,
}

/// Parses the fetched bytes (on the fetching thread, not the database's).
pub fn fetched_message(raw: Vec<u8>, server_size: u64, headers_only: bool, limits: &Limits) -> FetchedMessage {
    let parsed = parse(&raw, limits.attachment_size_limit);
    FetchedMessage { uid: None, unique_id: None, server_size, seen: false, raw, headers_only, parsed }
}

/// Messages to commit together, with the folder's new position.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub folder: String,
    /// IMAP: the folder's UIDVALIDITY these UIDs belong to.
    pub uidvalidity: Option<u32>,
    pub messages: Vec<FetchedMessage>,
    /// IMAP: the folder's cursor after this batch (every wanted UID up to it is in this or an earlier batch).
    pub last_uid: Option<u32>,
    /// UIDVALIDITY changed: a message already stored from this folder (same
    /// content) is rebound to its new UID instead of being stored twice.
    pub resync: bool,
    /// POP3 first sync: messages the initial sync count leaves behind, never to be fetched.
    pub skipped_unique_ids: Vec<String>,
}

/// What the store committed.
#[derive(Debug, Clone, Default)]
pub struct StoreReceipt {
    pub new_messages: usize,
    pub already_stored: usize,
    /// POP3 unique ids now safely in the database (new or already there).
    pub committed_unique_ids: Vec<String>,
    /// Messages that could not be stored, with why; the cursor did not pass them.
    pub failed: Vec<(String, String)>,
}

/// Commits batches; returns only once the batch is durable (or failed).
pub trait BatchStore {
    /// Hands a batch over to be committed; its receipt is the next [`receipt`](Self::receipt).
    /// The sync fetches the next batch meanwhile but submits it only after that receipt.
    fn submit(&mut self, batch: Batch) -> Result<(), String>;

    /// Waits until the batch submitted last is committed (or refused).
    fn receipt(&mut self) -> Result<StoreReceipt, String>;

    /// Which of these POP3 unique ids the account has stored, each with the
    /// age of its stored copy in days: asked for exactly what the server
    /// lists, so the look-up does not grow with the mail kept over the years.
    fn stored_unique_ids(&mut self, listed: &[String]) -> Result<HashMap<String, f64>, String>;

    /// Submits and waits.
    fn store(&mut self, batch: Batch) -> Result<StoreReceipt, String> {
        self.submit(batch)?;
        self.receipt()
    }
}

/// Messages in the first batch of a sync that fetches while it stores: the
/// database starts on them while the next batch is fetched, instead of
/// waiting for a whole batch first (an ingest of 20,000 stored its first
/// message ~11 ms later with batches of 200).
pub const FIRST_BATCH_MESSAGES: usize = 20;

/// Splits `items` (in order) into runs of at most `limits.batch_messages`
/// items (the first at most `first_at_most`; `usize::MAX`: no shorter first
/// run) and about `limits.batch_bytes` bytes.
pub(crate) fn split_by_size<T: Copy>(
    items: &[T],
    size_of: impl Fn(T) -> u64,
    limits: &Limits,
    first_at_most: usize,
) -> Vec<Vec<T>> {
    let mut batches: Vec<Vec<T>> = Vec::new();
    let mut current: Vec<T> = Vec::new();
    let mut bytes = 0;
    for &item in items {
        let size = size_of(item);
        let at_most = if batches.is_empty() { first_at_most.min(limits.batch_messages) } else { limits.batch_messages };
        if !current.is_empty() && (current.len() >= at_most.max(1) || bytes + size > limits.batch_bytes) {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(item);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_count_and_bytes() {
        let limits = Limits { attachment_size_limit: 10, max_message_size: 100, batch_messages: 3, batch_bytes: 100 };
        let sizes = [10u64, 10, 10, 10, 90, 500, 5];
        let indexes: Vec<usize> = (0..sizes.len()).collect();
        let batches = split_by_size(&indexes, |index| sizes[index], &limits, usize::MAX);
        assert_eq!(batches, vec![vec![0, 1, 2], vec![3, 4], vec![5], vec![6]]);
        let batches = split_by_size(&indexes, |index| sizes[index], &limits, 1);
        assert_eq!(batches, vec![vec![0], vec![1, 2, 3], vec![4], vec![5], vec![6]], "a shorter first batch");
    }
}
