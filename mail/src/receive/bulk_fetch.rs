//! Whole messages of a folder, fetched in bulk and read literal by literal.
//! The `imap` crate reads a FETCH response a line at a time and parses it
//! again from its start after every line until the message's literal is
//! complete, then parses it all once more: 9 % of the receiver's CPU in the
//! ingest bench (~9 lines a message), and it grows with the lines of real
//! mail. Here a literal is read in one piece, as long as it says it is, and
//! each response is parsed once, by the crate's own parser (`imap_proto`).

use crate::imap_client::ImapStream;
use imap_proto::types::{AttributeValue, Response};
use std::io::{self, BufRead, Read, Write};

/// Our commands' tag; the `imap` crate's are `a1`, `a2`, ...
const TAG: &[u8] = b"bulk";

/// One message as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedBytes {
    pub uid: u32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum BulkFetchError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("NO {0}")]
    No(String),
    #[error("BAD {0}")]
    Bad(String),
    #[error("the server announced {length} bytes for one message, more than the {limit} it may send")]
    LiteralTooLarge { length: u64, limit: u64 },
    #[error("unreadable response {0:?}")]
    Unparsable(String),
    #[error("connection closed")]
    Closed,
}

impl BulkFetchError {
    /// NO and BAD answer the command; anything else leaves the connection unusable.
    pub fn session_lost(&self) -> bool {
        !matches!(self, BulkFetchError::No(_) | BulkFetchError::Bad(_))
    }
}

/// `UID FETCH <uid_set> <items>` where `items` names one body section (and
/// UID); the bytes of that section by UID. A literal longer than
/// `max_literal` is refused before it is read.
pub fn uid_fetch(
    stream: &ImapStream,
    uid_set: &str,
    items: &str,
    max_literal: u64,
) -> Result<Vec<FetchedBytes>, BulkFetchError> {
    let mut connection = stream.lock();
    let command = [TAG, b" UID FETCH ", uid_set.as_bytes(), b" ", items.as_bytes(), b"\r\n"].concat();
    connection.get_mut().write_all(&command)?;
    connection.get_mut().flush()?;
    read_fetched(&mut *connection, max_literal)
}

fn read_fetched(connection: &mut impl BufRead, max_literal: u64) -> Result<Vec<FetchedBytes>, BulkFetchError> {
    let mut fetched = Vec::new();
    let mut response = Vec::new();
    loop {
        response.clear();
        read_response(connection, &mut response, max_literal)?;
        if let Some(status) = response.strip_prefix(TAG).and_then(|rest| rest.strip_prefix(b" ")) {
            let status = String::from_utf8_lossy(status);
            let (word, text) = status.trim_end().split_once(' ').unwrap_or((status.trim_end(), ""));
            return match word.to_ascii_uppercase().as_str() {
                "OK" => Ok(fetched),
                "NO" => Err(BulkFetchError::No(text.to_owned())),
                _ => Err(BulkFetchError::Bad(text.to_owned())),
            };
        }
        match imap_proto::parser::parse_response(&response) {
            Ok((_, Response::Fetch(_, attributes))) => {
                let mut uid = None;
                let mut bytes = None;
                for attribute in attributes {
                    match attribute {
                        AttributeValue::Uid(value) => uid = Some(value),
                        AttributeValue::BodySection { data: Some(data), .. } => bytes = Some(data.into_owned()),
                        _ => {}
                    }
                }
                // A FETCH of flags alone is another client's change: nothing to keep.
                if let (Some(uid), Some(bytes)) = (uid, bytes) {
                    fetched.push(FetchedBytes { uid, bytes });
                }
            }
            // EXISTS, EXPUNGE and the like: nothing the sync needs.
            Ok(_) => {}
            Err(_) => {
                let start = String::from_utf8_lossy(&response[..response.len().min(120)]).into_owned();
                return Err(BulkFetchError::Unparsable(start));
            }
        }
    }
}

/// One whole response: its lines, each literal read in one piece.
fn read_response(connection: &mut impl BufRead, into: &mut Vec<u8>, max_literal: u64) -> Result<(), BulkFetchError> {
    loop {
        let start = into.len();
        if connection.read_until(b'\n', into)? == 0 {
            return Err(BulkFetchError::Closed);
        }
        let Some(length) = literal_length(&into[start..]) else { return Ok(()) };
        if length > max_literal {
            return Err(BulkFetchError::LiteralTooLarge { length, limit: max_literal });
        }
        if connection.take(length).read_to_end(into)? as u64 != length {
            return Err(BulkFetchError::Closed);
        }
    }
}

/// `{n}` at the end of a line announces a literal of n bytes (a quoted
/// string cannot end a line, so this is never inside one).
fn literal_length(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r\n").or_else(|| line.strip_suffix(b"\n"))?;
    let inside = line.strip_suffix(b"}")?;
    let digits = &inside[inside.iter().rposition(|&byte| byte == b'{')? + 1..];
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(wire: &[u8], max_literal: u64) -> Result<Vec<FetchedBytes>, BulkFetchError> {
        read_fetched(&mut &wire[..], max_literal)
    }

    #[test]
    fn literals_are_read_whole_whatever_lines_they_hold() {
        let wire = b"* 1 FETCH (UID 7 BODY[] {23}\r\nSubject: a\r\n\r\nbulk OK\r\n)\r\n\
* 2 FETCH (FLAGS (\\Seen))\r\n* 3 EXISTS\r\n\
* 2 FETCH (BODY[] {5}\r\nhello UID 9)\r\nbulk OK done\r\n";
        let fetched = read(wire, 100).unwrap();
        assert_eq!(
            fetched,
            vec![
                FetchedBytes { uid: 7, bytes: b"Subject: a\r\n\r\nbulk OK\r\n".to_vec() },
                FetchedBytes { uid: 9, bytes: b"hello".to_vec() },
            ],
            "a tagged line inside a literal is message text, and UID may come after the body"
        );
    }

    #[test]
    fn refusals_and_broken_connections_are_told_apart() {
        let no = read(b"bulk NO [SERVERBUG] try later\r\n", 100).unwrap_err();
        assert!(matches!(&no, BulkFetchError::No(text) if text == "[SERVERBUG] try later") && !no.session_lost());
        assert!(!read(b"bulk BAD what\r\n", 100).unwrap_err().session_lost());
        let cut = read(b"* 1 FETCH (UID 7 BODY[] {24}\r\nSubject", 100).unwrap_err();
        assert!(matches!(cut, BulkFetchError::Closed) && cut.session_lost());
        assert!(matches!(read(b"", 100).unwrap_err(), BulkFetchError::Closed));
        let garbage = read(b"* 1 FETCH (UID\r\nbulk OK\r\n", 100).unwrap_err();
        assert!(matches!(garbage, BulkFetchError::Unparsable(_)) && garbage.session_lost());
    }

    #[test]
    fn a_literal_longer_than_allowed_is_refused_before_it_is_read() {
        let error = read(b"* 1 FETCH (UID 7 BODY[] {99999999999}\r\n", 1000).unwrap_err();
        assert!(matches!(error, BulkFetchError::LiteralTooLarge { length: 99999999999, limit: 1000 }));
    }

    #[test]
    fn only_braces_with_digits_ending_a_line_announce_a_literal() {
        assert_eq!(literal_length(b"* 1 FETCH (BODY[] {12}\r\n"), Some(12));
        assert_eq!(literal_length(b"{0}\n"), Some(0));
        assert_eq!(literal_length(b"* OK {12} later\r\n"), None);
        assert_eq!(literal_length(b"* OK {}\r\n"), None);
        assert_eq!(literal_length(b"* OK {1a}\r\n"), None);
        assert_eq!(literal_length(b"* OK {12+}\r\n"), None);
        assert_eq!(literal_length(b"* OK {99999999999999999999}\r\n"), None);
    }
}
