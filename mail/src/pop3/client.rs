//! The POP3 conversation over any byte stream: commands, single-line and
//! multi-line answers (with dot-unstuffing).

use crate::sasl::{self, BearerMechanism};
use std::io::{self, BufRead, BufReader, Read, Write};

/// Longest line we accept from a server (RFC 2449 allows 512; be generous).
const LONGEST_LINE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Pop3Error {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The server answered `-ERR` with these words.
    #[error("server answered -ERR {0}")]
    Negative(String),
    #[error("unexpected answer from the server: {0:?}")]
    Protocol(String),
}

pub struct Pop3Client<S: Read + Write> {
    stream: BufReader<S>,
}

impl<S: Read + Write> Pop3Client<S> {
    pub fn new(stream: S) -> Self {
        Pop3Client { stream: BufReader::new(stream) }
    }

    /// Reads the `+OK` greeting and returns its text.
    pub fn read_greeting(&mut self) -> Result<String, Pop3Error> {
        self.read_status()
    }

    /// Sends one command and returns the text after `+OK`.
    pub fn command(&mut self, command: &str) -> Result<String, Pop3Error> {
        debug_assert!(!command.contains(['\r', '\n']));
        self.send_line(command)?;
        self.read_status()
    }

    /// Sends a command whose `+OK` is followed by lines ending in `.`.
    pub fn multiline(&mut self, command: &str) -> Result<Vec<u8>, Pop3Error> {
        self.command(command)?;
        let mut body = Vec::new();
        loop {
            let line = self.read_line()?;
            if line == b".\r\n" || line == b".\n" {
                return Ok(body);
            }
            // Dot-stuffing: a line starting with '.' had another '.' prepended.
            let line = line.strip_prefix(b".").unwrap_or(&line);
            body.extend_from_slice(line);
        }
    }

    /// The server's capabilities (CAPA); empty if it does not support CAPA.
    pub fn capabilities(&mut self) -> Result<Vec<String>, Pop3Error> {
        match self.multiline("CAPA") {
            Ok(lines) => Ok(String::from_utf8_lossy(&lines).lines().map(str::to_owned).collect()),
            Err(Pop3Error::Negative(_)) => Ok(Vec::new()),
            Err(error) => Err(error),
        }
    }

    /// USER/PASS. The password is sent as its bytes, never logged.
    pub fn login(&mut self, user: &str, password: &str) -> Result<(), Pop3Error> {
        if user.contains(['\r', '\n']) || password.contains(['\r', '\n']) {
            return Err(Pop3Error::Protocol("line breaks in the login or password".to_owned()));
        }
        self.command(&format!("USER {user}"))?;
        self.command(&format!("PASS {password}"))?;
        Ok(())
    }

    /// AUTH with a SASL bearer mechanism (RFC 5034): the base64 client
    /// response after the server's `+`. A refusal challenge (`+ <base64
    /// JSON>`) is answered so the server ends with `-ERR`; its reason is
    /// added to the `-ERR` text.
    pub fn authenticate_bearer(&mut self, mechanism: BearerMechanism, encoded_response: &str) -> Result<(), Pop3Error> {
        if encoded_response.contains(['\r', '\n']) {
            return Err(Pop3Error::Protocol("line breaks in the SASL response".to_owned()));
        }
        self.send_line(&format!("AUTH {}", mechanism.name()))?;
        let go_ahead = self.read_continuation()?;
        if go_ahead.is_some_and(|challenge| !challenge.is_empty()) {
            return Err(Pop3Error::Protocol(format!("a challenge before the {} response", mechanism.name())));
        }
        self.send_line(encoded_response)?;
        match self.read_continuation() {
            Ok(None) => Ok(()),
            Ok(Some(challenge)) => {
                let refusal = sasl::parse_refusal(&challenge);
                self.send_line(mechanism.encoded_response_to_refusal())?;
                match (self.read_status(), refusal) {
                    (Ok(_), _) => Ok(()),
                    (Err(Pop3Error::Negative(text)), Some(refusal)) => {
                        Err(Pop3Error::Negative(format!("{text} ({refusal})")))
                    }
                    (Err(error), _) => Err(error),
                }
            }
            Err(error) => Err(error),
        }
    }

    fn send_line(&mut self, line: &str) -> Result<(), Pop3Error> {
        let stream = self.stream.get_mut();
        stream.write_all(line.as_bytes())?;
        stream.write_all(b"\r\n")?;
        stream.flush()?;
        Ok(())
    }

    /// `+ <text>` (a continuation: `Some(text)`) or `+OK` (`None`); `-ERR` is an error.
    fn read_continuation(&mut self) -> Result<Option<String>, Pop3Error> {
        let line = self.read_line()?;
        let text = String::from_utf8_lossy(&line).trim_end().to_owned();
        if text.starts_with("+OK") {
            return Ok(None);
        }
        if let Some(rest) = text.strip_prefix('+') {
            return Ok(Some(rest.trim_start().to_owned()));
        }
        match text.strip_prefix("-ERR") {
            Some(rest) => Err(Pop3Error::Negative(rest.trim_start().to_owned())),
            None => Err(Pop3Error::Protocol(text)),
        }
    }

    /// STAT: number of messages and their total size in bytes.
    pub fn stat(&mut self) -> Result<(u32, u64), Pop3Error> {
        let answer = self.command("STAT")?;
        let mut fields = answer.split_whitespace();
        let count = fields.next().and_then(|field| field.parse().ok());
        let size = fields.next().and_then(|field| field.parse().ok());
        match (count, size) {
            (Some(count), Some(size)) => Ok((count, size)),
            _ => Err(Pop3Error::Protocol(format!("STAT answered {answer:?}"))),
        }
    }

    /// UIDL: (message number, unique id) for every message.
    pub fn unique_ids(&mut self) -> Result<Vec<(u32, String)>, Pop3Error> {
        let listing = self.multiline("UIDL")?;
        String::from_utf8_lossy(&listing)
            .lines()
            .map(|line| {
                let mut fields = line.split_whitespace();
                match (fields.next().and_then(|number| number.parse().ok()), fields.next()) {
                    (Some(number), Some(id)) => Ok((number, id.to_owned())),
                    _ => Err(Pop3Error::Protocol(format!("UIDL line {line:?}"))),
                }
            })
            .collect()
    }

    /// LIST: (message number, size in bytes) for every message.
    pub fn sizes(&mut self) -> Result<Vec<(u32, u64)>, Pop3Error> {
        let listing = self.multiline("LIST")?;
        String::from_utf8_lossy(&listing)
            .lines()
            .map(|line| {
                let mut fields = line.split_whitespace();
                match (fields.next().and_then(|n| n.parse().ok()), fields.next().and_then(|n| n.parse().ok())) {
                    (Some(number), Some(size)) => Ok((number, size)),
                    _ => Err(Pop3Error::Protocol(format!("LIST line {line:?}"))),
                }
            })
            .collect()
    }

    /// TOP n 0: only the header section (for messages too large to fetch whole).
    pub fn headers(&mut self, number: u32) -> Result<Vec<u8>, Pop3Error> {
        self.multiline(&format!("TOP {number} 0"))
    }

    /// RETR: the whole message as the server stores it.
    pub fn retrieve(&mut self, number: u32) -> Result<Vec<u8>, Pop3Error> {
        self.multiline(&format!("RETR {number}"))
    }

    pub fn delete(&mut self, number: u32) -> Result<(), Pop3Error> {
        self.command(&format!("DELE {number}")).map(drop)
    }

    /// QUIT: commits deletions on the server.
    pub fn quit(&mut self) -> Result<(), Pop3Error> {
        self.command("QUIT").map(drop)
    }

    /// Gives the stream back (after STLS, to wrap it in TLS).
    pub fn into_inner(self) -> S {
        self.stream.into_inner()
    }

    fn read_status(&mut self) -> Result<String, Pop3Error> {
        let line = self.read_line()?;
        let text = String::from_utf8_lossy(&line).trim_end().to_owned();
        if let Some(rest) = text.strip_prefix("+OK") {
            Ok(rest.trim_start().to_owned())
        } else if let Some(rest) = text.strip_prefix("-ERR") {
            Err(Pop3Error::Negative(rest.trim_start().to_owned()))
        } else {
            Err(Pop3Error::Protocol(text))
        }
    }

    fn read_line(&mut self) -> Result<Vec<u8>, Pop3Error> {
        let mut line = Vec::new();
        let read = (&mut self.stream).take(LONGEST_LINE as u64).read_until(b'\n', &mut line)?;
        if read == 0 {
            return Err(Pop3Error::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )));
        }
        if !line.ends_with(b"\n") {
            return Err(Pop3Error::Protocol(format!("a line longer than {LONGEST_LINE} bytes")));
        }
        Ok(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A server that answers from a script and records what it was sent.
    struct Scripted {
        answers: Cursor<Vec<u8>>,
        sent: Vec<u8>,
    }

    impl Read for Scripted {
        fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
            self.answers.read(buffer)
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
            self.sent.extend_from_slice(buffer);
            Ok(buffer.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn client(answers: &str) -> Pop3Client<Scripted> {
        Pop3Client::new(Scripted { answers: Cursor::new(answers.as_bytes().to_vec()), sent: Vec::new() })
    }

    #[test]
    fn a_whole_session() {
        let mut pop3 = client(concat!(
            "+OK Dovecot ready.\r\n",
            "+OK\r\nTOP\r\nUIDL\r\nSTLS\r\n.\r\n",
            "+OK\r\n+OK Logged in.\r\n",
            "+OK 2 300\r\n",
            "+OK\r\n1 000001\r\n2 000002\r\n.\r\n",
            "+OK 2 messages\r\n1 120\r\n2 180\r\n.\r\n",
            "+OK\r\nSubject: big\r\n\r\n.\r\n",
            "+OK 120 octets\r\nSubject: hi\r\n\r\n..dot line\r\nend\r\n.\r\n",
            "+OK Marked to be deleted.\r\n",
            "+OK Logging out.\r\n",
        ));
        assert_eq!(pop3.read_greeting().unwrap(), "Dovecot ready.");
        assert_eq!(pop3.capabilities().unwrap(), ["TOP", "UIDL", "STLS"]);
        pop3.login("ann@example.test", "p w").unwrap();
        assert_eq!(pop3.stat().unwrap(), (2, 300));
        assert_eq!(pop3.unique_ids().unwrap(), [(1, "000001".to_owned()), (2, "000002".to_owned())]);
        assert_eq!(pop3.sizes().unwrap(), [(1, 120), (2, 180)]);
        assert_eq!(pop3.headers(2).unwrap(), b"Subject: big\r\n\r\n");
        assert_eq!(pop3.retrieve(1).unwrap(), b"Subject: hi\r\n\r\n.dot line\r\nend\r\n");
        pop3.delete(1).unwrap();
        pop3.quit().unwrap();
        let sent = String::from_utf8(pop3.into_inner().sent).unwrap();
        assert_eq!(sent, "CAPA\r\nUSER ann@example.test\r\nPASS p w\r\nSTAT\r\nUIDL\r\nLIST\r\nTOP 2 0\r\nRETR 1\r\nDELE 1\r\nQUIT\r\n");
    }

    #[test]
    fn bearer_authentication_and_its_refusal() {
        let mut pop3 = client("+\r\n+OK logged in\r\n");
        pop3.authenticate_bearer(BearerMechanism::Xoauth2, "dXNlcj0=").unwrap();
        assert_eq!(String::from_utf8_lossy(&pop3.stream.get_ref().sent), "AUTH XOAUTH2\r\ndXNlcj0=\r\n");

        // {"status":"invalid_token"} as the server's challenge, then -ERR.
        let mut pop3 = client("+ \r\n+ eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIn0=\r\n-ERR [AUTH] failed\r\n");
        match pop3.authenticate_bearer(BearerMechanism::Oauthbearer, "bj0=") {
            Err(Pop3Error::Negative(text)) => {
                assert!(text.contains("invalid_token") && text.contains("[AUTH]"), "{text}")
            }
            other => panic!("{other:?}"),
        }
        assert!(String::from_utf8_lossy(&pop3.stream.get_ref().sent).ends_with("bj0=\r\nAQ==\r\n"));
    }

    #[test]
    fn negative_and_odd_answers() {
        let mut pop3 = client("+OK hi\r\n+OK\r\n-ERR [AUTH] Authentication failed.\r\n");
        pop3.read_greeting().unwrap();
        match pop3.login("ann", "wrong") {
            Err(Pop3Error::Negative(text)) => assert_eq!(text, "[AUTH] Authentication failed."),
            other => panic!("{other:?}"),
        }
        let mut pop3 = client("* OK IMAP4rev1\r\n");
        assert!(matches!(pop3.read_greeting(), Err(Pop3Error::Protocol(_))));
        let mut pop3 = client("");
        assert!(matches!(pop3.read_greeting(), Err(Pop3Error::Io(_))));
        let mut pop3 = client("+OK\r\n-ERR unknown command\r\n");
        pop3.read_greeting().unwrap();
        assert_eq!(pop3.capabilities().unwrap(), Vec::<String>::new());
        let mut pop3 = client("+OK\r\n");
        assert!(matches!(pop3.login("ann", "a\r\nDELE 1"), Err(Pop3Error::Protocol(_))));
    }
}
