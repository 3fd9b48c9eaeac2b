//! Whole messages of a folder, fetched in bulk and read literal by literal.
//! The `imap` crate reads a FETCH response a line at a time and parses it
//! again from its start after every line until the message's literal is
//! complete, then parses it all once more: 9 % of the receiver's CPU in the
//! ingest bench (~9 lines a message), and it grows with the lines of real
//! mail. Here a literal is read in one piece, as long as it says it is, and
//! each response is parsed once, by the crate's own parser (`imap_proto`).

use super::uid_set::uid_set;
use crate::imap_client::ImapStream;
use imap_proto::types::{AttributeValue, Response};
use std::collections::HashSet;
use std::io::{self, BufRead, Read, Write};
use std::sync::atomic::{AtomicU32, Ordering};

/// Our commands' tags are `bulk1`, `bulk2`, ...; the `imap` crate's `a1`, `a2`, ...
const TAG_PREFIX: &str = "bulk";
static TAGS: AtomicU32 = AtomicU32::new(0);

/// A line longer than this (outside a literal) ends the connection: no
/// answer to our FETCH has one, and a server must not fill our memory.
const MAX_LINE_BYTES: u64 = 1 << 20;

/// One message as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedBytes {
    pub uid: u32,
    pub bytes: Vec<u8>,
}

/// What one FETCH brought.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    pub messages: Vec<FetchedBytes>,
    /// Messages whose bytes were longer than `ReadLimits::literal` (a size
    /// the server listed wrong): read and dropped, so the connection stays usable.
    pub too_large: Vec<Dropped>,
    /// Messages whose bytes did not fit in what was left of
    /// `ReadLimits::total`: read and dropped, to be fetched on their own.
    pub past_allowance: Vec<u32>,
}

impl Fetched {
    /// Fetches each message that was past the allowance again on its own,
    /// all of them within one message's `room` (no literal longer, and no
    /// more in all); one past what is left is kept as a too large one is.
    pub fn again_alone(&mut self, stream: &ImapStream, items: &str, room: u64) -> Result<(), BulkFetchError> {
        let mut budget = room;
        for uid in std::mem::take(&mut self.past_allowance) {
            if budget == 0 {
                self.too_large.push(Dropped { uid, length: 0 });
                continue;
            }
            let again = uid_fetch(stream, &[uid], items, ReadLimits { literal: room, total: budget })?;
            let kept: u64 = again.messages.iter().map(|message| message.bytes.len() as u64).sum();
            budget = budget.saturating_sub(kept);
            self.messages.extend(again.messages);
            self.too_large.extend(again.too_large);
            self.too_large.extend(again.past_allowance.into_iter().map(|uid| Dropped { uid, length: 0 }));
        }
        Ok(())
    }
}

/// What `read_response` read besides the response's text.
#[derive(Debug, Default)]
struct Literals {
    /// The longest literal dropped as longer than any message may be.
    too_long: Option<u64>,
    /// A literal was dropped as longer than what was left of the allowance.
    past_allowance: bool,
    /// The bytes of the literals kept in the response.
    kept_bytes: u64,
}

/// A message whose bytes were read and dropped: how many there were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub uid: u32,
    pub length: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BulkFetchError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("NO {0}")]
    No(String),
    #[error("BAD {0}")]
    Bad(String),
    #[error("BYE {0}")]
    Bye(String),
    #[error("more than {MAX_LINE_BYTES} bytes of a response outside its literals")]
    LineTooLong,
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

/// What one FETCH may bring: no literal longer than `literal`, and no more
/// than `total` bytes of bodies kept in all, literal or quoted (a server
/// that sends more than it listed, however it splits it, cannot fill our
/// memory).
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    pub literal: u64,
    pub total: u64,
}

/// `UID FETCH <uids> <items>` where `items` names one body section (and
/// UID); the bytes of that section by UID, of the messages asked for only,
/// each once. A literal past `limits` is read and dropped, its message
/// listed as too large or past the allowance.
pub fn uid_fetch(
    stream: &ImapStream,
    uids: &[u32],
    items: &str,
    limits: ReadLimits,
) -> Result<Fetched, BulkFetchError> {
    let tag = format!("{TAG_PREFIX}{}", TAGS.fetch_add(1, Ordering::Relaxed).wrapping_add(1));
    let mut connection = stream.lock();
    let command = format!("{tag} UID FETCH {} {items}\r\n", uid_set(uids));
    connection.get_mut().write_all(command.as_bytes())?;
    connection.get_mut().flush()?;
    read_fetched(&mut *connection, &tag, uids, limits)
}

fn read_fetched(
    connection: &mut impl BufRead,
    tag: &str,
    asked: &[u32],
    limits: ReadLimits,
) -> Result<Fetched, BulkFetchError> {
    let mut fetched = Fetched::default();
    let asked: HashSet<u32> = asked.iter().copied().collect();
    let mut answered = HashSet::new();
    let mut response = Vec::new();
    let mut left = limits.total;
    loop {
        response.clear();
        let literals = read_response(connection, &mut response, limits.literal, &mut left)?;
        if let Some(status) = response.strip_prefix(tag.as_bytes()).and_then(|rest| rest.strip_prefix(b" ")) {
            let status = String::from_utf8_lossy(status);
            let (word, text) = status.trim_end().split_once(' ').unwrap_or((status.trim_end(), ""));
            return match word.to_ascii_uppercase().as_str() {
                "OK" => Ok(fetched),
                "NO" => Err(BulkFetchError::No(text.to_owned())),
                "BAD" => Err(BulkFetchError::Bad(text.to_owned())),
                _ => Err(BulkFetchError::Unparsable(status.trim_end().to_owned())),
            };
        }
        // Alerts and notices: nothing the sync needs, whatever their text
        // (`imap_proto` parses only ASCII there); BYE ends the connection.
        if let Some((word, text)) = untagged_status(&response) {
            if word.eq_ignore_ascii_case(b"BYE") {
                return Err(BulkFetchError::Bye(String::from_utf8_lossy(text).trim_end().to_owned()));
            }
            continue;
        }
        let unparsable = || {
            let start = String::from_utf8_lossy(&response[..response.len().min(120)]).into_owned();
            BulkFetchError::Unparsable(start)
        };
        match imap_proto::parser::parse_response(&response) {
            Ok((rest, _)) if !rest.is_empty() => return Err(unparsable()),
            Ok((_, Response::Fetch(_, attributes))) => {
                let mut uid = None;
                let mut bytes = None;
                for attribute in attributes {
                    match attribute {
                        AttributeValue::Uid(value) => uid = Some(value),
                        // RFC822 and RFC822.HEADER are the older names of the same sections.
                        AttributeValue::BodySection { data: Some(data), .. }
                        | AttributeValue::Rfc822(Some(data))
                        | AttributeValue::Rfc822Header(Some(data)) => bytes = Some(data),
                        _ => {}
                    }
                }
                // A FETCH of flags alone is another client's change: nothing to
                // keep. Only messages asked for, each once: what the server sends
                // cannot make these lists longer than the request.
                let (Some(uid), Some(bytes)) = (uid, bytes) else { continue };
                if !asked.contains(&uid) || !answered.insert(uid) {
                    continue;
                }
                // A body sent quoted, not as a literal, counts against the allowance here.
                let quoted = (bytes.len() as u64).saturating_sub(literals.kept_bytes);
                match literals.too_long {
                    Some(length) => fetched.too_large.push(Dropped { uid, length }),
                    None if literals.past_allowance || quoted > left => fetched.past_allowance.push(uid),
                    None => {
                        left -= quoted;
                        fetched.messages.push(FetchedBytes { uid, bytes: bytes.into_owned() });
                    }
                }
            }
            // Another command's answer: the connection is out of step.
            Ok((_, Response::Done { .. })) => return Err(unparsable()),
            // EXISTS, EXPUNGE and the like: nothing the sync needs.
            Ok(_) => {}
            Err(_) => return Err(unparsable()),
        }
    }
}

/// One whole response: its lines, each literal read in one piece. A
/// literal longer than `max_literal` or than what is `left` of the FETCH's
/// allowance is read and dropped (the response holds an empty one instead),
/// and said so. The lines outside literals are at most `MAX_LINE_BYTES` in all.
fn read_response(
    connection: &mut impl BufRead,
    into: &mut Vec<u8>,
    max_literal: u64,
    left: &mut u64,
) -> Result<Literals, BulkFetchError> {
    let mut literals = Literals::default();
    let mut line_bytes = 0;
    loop {
        let start = into.len();
        let read = connection.by_ref().take(MAX_LINE_BYTES - line_bytes).read_until(b'\n', into)? as u64;
        line_bytes += read;
        if read == 0 || into.last() != Some(&b'\n') {
            return Err(if line_bytes == MAX_LINE_BYTES {
                BulkFetchError::LineTooLong
            } else {
                BulkFetchError::Closed
            });
        }
        let Some((length, marker)) = literal_length(&into[start..]) else { return Ok(literals) };
        // A status line's text that happens to end in "{n}" (an alert's) announces nothing.
        if start == 0 && is_status_line(into) {
            return Ok(literals);
        }
        if length > max_literal.min(*left) {
            io::copy(&mut connection.take(length), &mut io::sink())?;
            into.truncate(start + marker);
            into.extend_from_slice(b"{0}\r\n");
            if length > max_literal {
                literals.too_long = literals.too_long.max(Some(length));
            } else {
                literals.past_allowance = true;
            }
            continue;
        }
        *left -= length;
        literals.kept_bytes += length;
        into.reserve(length as usize);
        if connection.take(length).read_to_end(into)? as u64 != length {
            return Err(BulkFetchError::Closed);
        }
    }
}

/// A tagged status, an untagged OK, NO, BAD, BYE or PREAUTH, or a
/// continuation request, complete in this line: its text is free (any
/// bytes a server puts there, not only those `imap_proto` parses) and holds
/// no literal. Only a response code can: RFC 3501's `[BADCHARSET (…)]`
/// takes astrings, so a code still open at the line's end goes on after one.
fn is_status_line(line: &[u8]) -> bool {
    let text = match line.split(|&byte| byte == b' ').next() {
        Some(b"*") => match untagged_status(line) {
            Some((_, text)) => text,
            None => return false,
        },
        Some(b"+") => return true,
        // A tag, its status word, then the text.
        Some(tag) if !tag.is_empty() => line.splitn(3, |&byte| byte == b' ').nth(2).unwrap_or_default(),
        _ => return false,
    };
    // (A code open at the end: `[` with no `]` after it.)
    !text.starts_with(b"[") || text.contains(&b']')
}

/// `* OK`, `NO`, `BAD`, `BYE` or `PREAUTH`: the word and the text after it.
fn untagged_status(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = line.strip_prefix(b"* ")?;
    let end = rest.iter().position(|&byte| byte == b' ' || byte == b'\r' || byte == b'\n').unwrap_or(rest.len());
    let word = &rest[..end];
    let statuses: [&[u8]; 5] = [b"OK", b"NO", b"BAD", b"BYE", b"PREAUTH"];
    statuses.iter().any(|status| word.eq_ignore_ascii_case(status)).then(|| (word, rest[end..].trim_ascii_start()))
}

/// `{n}` at the end of a line announces a literal of n bytes (a quoted
/// string cannot end a line, so this is never inside one); with where the
/// `{` is in the line.
fn literal_length(line: &[u8]) -> Option<(u64, usize)> {
    let line = line.strip_suffix(b"\r\n").or_else(|| line.strip_suffix(b"\n"))?;
    let inside = line.strip_suffix(b"}")?;
    let open = inside.iter().rposition(|&byte| byte == b'{')?;
    let digits = &inside[open + 1..];
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some((std::str::from_utf8(digits).ok()?.parse().ok()?, open))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(wire: &[u8], max_literal: u64) -> Result<Fetched, BulkFetchError> {
        let asked: Vec<u32> = (1..100).collect();
        read_fetched(&mut &wire[..], "bulk7", &asked, ReadLimits { literal: max_literal, total: u64::MAX })
    }

    fn message(uid: u32, bytes: &[u8]) -> FetchedBytes {
        FetchedBytes { uid, bytes: bytes.to_vec() }
    }

    #[test]
    fn literals_are_read_whole_whatever_lines_they_hold() {
        let wire = b"* 1 FETCH (UID 7 BODY[] {24}\r\nSubject: a\r\n\r\nbulk7 OK\r\n)\r\n\
* 2 FETCH (FLAGS (\\Seen))\r\n* 3 EXISTS\r\n* OK [ALERT] quota {3}\r\n\
* 2 FETCH (BODY[] {5}\r\nhello UID 9)\r\n* 3 FETCH (UID 10 RFC822 {2}\r\nhi)\r\nbulk7 OK done\r\n";
        let fetched = read(wire, 100).unwrap();
        assert_eq!(
            fetched.messages,
            vec![message(7, b"Subject: a\r\n\r\nbulk7 OK\r\n"), message(9, b"hello"), message(10, b"hi")],
            "a tagged line inside a literal is message text, UID may come after the body, RFC822 is a body too"
        );
        assert!(fetched.too_large.is_empty());
    }

    #[test]
    fn a_literal_longer_than_allowed_is_dropped_and_the_response_read_on() {
        let wire = b"* 1 FETCH (UID 7 BODY[] {12}\r\n0123456789\r\n)\r\n\
* 2 FETCH (UID 8 BODY[] {2}\r\nok)\r\nbulk7 OK\r\n";
        let fetched = read(wire, 10).unwrap();
        assert_eq!(
            fetched,
            Fetched {
                messages: vec![message(8, b"ok")],
                too_large: vec![Dropped { uid: 7, length: 12 }],
                past_allowance: vec![]
            },
            "the dropped message's real length is kept"
        );
    }

    #[test]
    fn no_more_than_the_allowance_is_kept_however_it_is_split() {
        let wire = b"* 1 FETCH (UID 7 BODY[] {4}\r\nabcd)\r\n* 2 FETCH (UID 8 BODY[] {4}\r\nefgh)\r\n\
* 3 FETCH (UID 9 BODY[] {2}\r\nij)\r\nbulk7 OK\r\n";
        let fetched = read_fetched(&mut &wire[..], "bulk7", &[7, 8, 9], ReadLimits { literal: 10, total: 6 }).unwrap();
        assert_eq!(fetched.messages, vec![message(7, b"abcd"), message(9, b"ij")]);
        assert_eq!((fetched.too_large, fetched.past_allowance), (vec![], vec![8]), "past the allowance: dropped");
        // Quoted bodies count too; messages not asked for, and a second answer, are not kept.
        let wire = b"* 1 FETCH (UID 7 BODY[] \"abcd\")\r\n* 2 FETCH (UID 8 BODY[] \"efgh\")\r\n\
* 3 FETCH (UID 7 BODY[] \"again\")\r\n* 4 FETCH (UID 99 BODY[] {2}\r\nxy)\r\nbulk7 OK\r\n";
        let fetched = read_fetched(&mut &wire[..], "bulk7", &[7, 8], ReadLimits { literal: 10, total: 6 }).unwrap();
        assert_eq!(
            fetched,
            Fetched { messages: vec![message(7, b"abcd")], too_large: vec![], past_allowance: vec![8] }
        );
        let mut endless = b"* 1 FETCH (UID 7 BODY[HEADER.FIELDS (".to_vec();
        for _ in 0..200_000 {
            endless.extend_from_slice(b"X {0}\r\n");
        }
        let error = read_fetched(&mut &endless[..], "bulk7", &[7], ReadLimits { literal: 10, total: 100 }).unwrap_err();
        assert!(matches!(error, BulkFetchError::LineTooLong), "one response's lines are bounded: {error:?}");
    }

    #[test]
    fn refusals_and_broken_connections_are_told_apart() {
        let no = read(b"bulk7 NO [SERVERBUG] try later\r\n", 100).unwrap_err();
        assert!(matches!(&no, BulkFetchError::No(text) if text == "[SERVERBUG] try later") && !no.session_lost());
        assert!(!read(b"bulk7 BAD what\r\n", 100).unwrap_err().session_lost());
        assert!(read(b"bulk7 BYE going\r\n", 100).unwrap_err().session_lost());
        let bye = read(b"* BYE shutting down\r\n", 100).unwrap_err();
        assert!(matches!(bye, BulkFetchError::Bye(_)) && bye.session_lost());
        let cut = read(b"* 1 FETCH (UID 7 BODY[] {24}\r\nSubject", 100).unwrap_err();
        assert!(matches!(cut, BulkFetchError::Closed) && cut.session_lost());
        assert!(matches!(read(b"", 100).unwrap_err(), BulkFetchError::Closed));
        assert!(matches!(read(b"* 1 FETCH (UID 7", 100).unwrap_err(), BulkFetchError::Closed));
        let garbage = read(b"* 1 FETCH (UID\r\nbulk7 OK\r\n", 100).unwrap_err();
        assert!(matches!(garbage, BulkFetchError::Unparsable(_)) && garbage.session_lost());
        let stale = read(b"bulk6 OK\r\nbulk7 OK\r\n", 100).unwrap_err();
        assert!(matches!(stale, BulkFetchError::Unparsable(_)), "another command's answer is not ours");
    }

    #[test]
    fn a_line_without_end_is_not_read_forever() {
        let mut wire = b"* 1 FETCH (UID 7 FLAGS (".to_vec();
        wire.resize(MAX_LINE_BYTES as usize + 10, b'x');
        assert!(matches!(read(&wire, 100).unwrap_err(), BulkFetchError::LineTooLong));
    }

    #[test]
    fn a_status_line_ending_in_braces_announces_nothing_whatever_its_text() {
        let wire = "* OK [ALERT] Größe überschritten {3}\r\n* NO plein {2}\r\n+ more {1}\r\n\
* 1 FETCH (UID 7 BODY[] {2}\r\nok)\r\nbulk7 OK fertig {4}\r\n";
        let fetched = read(wire.as_bytes(), 100).unwrap();
        assert_eq!(fetched.messages, vec![message(7, b"ok")], "non-ASCII alert text is not a literal's announcement");
        assert!(is_status_line(b"a12 NO over quota {5}\r\n") && is_status_line(b"* bye now\r\n"));
        // RFC 3501's BADCHARSET takes astrings: a code still open goes on after a literal.
        let badcharset = read(b"* NO [BADCHARSET ({5}\r\nUTF-8)] no such charset\r\nbulk7 OK\r\n", 100).unwrap();
        assert_eq!(badcharset, Fetched::default());
        assert!(!is_status_line(b"bulk7 NO [BADCHARSET ({5}\r\n") && is_status_line(b"* OK [ALERT] a [b {3}\r\n"));
        assert!(!is_status_line(b"* 1 FETCH (BODY[] {5}\r\n") && !is_status_line(b"* LIST () \"/\" {3}\r\n"));
    }

    #[test]
    fn only_braces_with_digits_ending_a_line_announce_a_literal() {
        assert_eq!(literal_length(b"* 1 FETCH (BODY[] {12}\r\n"), Some((12, 18)));
        assert_eq!(literal_length(b"{0}\n"), Some((0, 0)));
        assert_eq!(literal_length(b"* OK {12} later\r\n"), None);
        assert_eq!(literal_length(b"* OK {}\r\n"), None);
        assert_eq!(literal_length(b"* OK {1a}\r\n"), None);
        assert_eq!(literal_length(b"* OK {12+}\r\n"), None);
        assert_eq!(literal_length(b"* OK {99999999999999999999}\r\n"), None);
    }
}
