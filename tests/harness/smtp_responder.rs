//! An SMTP server of our own for faults a real one will not produce on
//! demand: 4xx or 421 (closing the connection) to MAIL FROM, 5xx for some
//! recipients, or accepting the connection and never answering; with TLS
//! from the first byte, presenting a certificate of the test's choice. It
//! counts every message it accepts by Message-ID, so tests can assert
//! "nothing lost, nothing twice", and every command it was sent, so they can
//! assert what never arrived. The behaviour can change while the sender works.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

/// How the responder answers, from now on (connections already open too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// 250 to everything.
    Accept,
    /// This reply to every MAIL FROM; a reply starting with 421 also closes the connection.
    RefuseMail(String),
    /// This reply to RCPT TO for addresses containing `matching`; others are accepted.
    RefuseRecipients { matching: String, reply: String },
    /// Accepts connections and never says a word.
    Silent,
    /// 250 to everything, but each message's final reply after this many
    /// milliseconds: a queue that takes a while, so a crash lands mid-batch.
    AcceptSlowly(u64),
}

#[derive(Default)]
struct Record {
    /// Times each Message-ID was accepted (more than once: a duplicate).
    accepted: HashMap<String, usize>,
    /// Accepted recipients, per Message-ID.
    recipients: HashMap<String, Vec<String>>,
    connections: usize,
    /// What each silent connection's client sent first (a TLS client speaks first).
    first_bytes: Vec<Vec<u8>>,
    /// Every command's verb, in order (EHLO, MAIL, AUTH, ...).
    verbs: Vec<String>,
    /// TLS handshakes that failed (the client refused the certificate).
    failed_handshakes: usize,
    /// Sessions inside a mail transaction (MAIL accepted, DATA not ended) now, and at most.
    transactions_now: usize,
    most_transactions_at_once: usize,
}

/// Counts a session's open mail transaction on the record while it lives.
struct OpenTransaction<'a> {
    record: &'a Mutex<Record>,
    open: bool,
}

impl OpenTransaction<'_> {
    fn set(&mut self, open: bool) {
        if open == self.open {
            return;
        }
        self.open = open;
        let mut record = self.record.lock().unwrap();
        if open {
            record.transactions_now += 1;
            record.most_transactions_at_once = record.most_transactions_at_once.max(record.transactions_now);
        } else {
            record.transactions_now -= 1;
        }
    }
}

impl Drop for OpenTransaction<'_> {
    fn drop(&mut self) {
        self.set(false);
    }
}

pub struct SmtpResponder {
    pub port: u16,
    behaviour: Arc<Mutex<Behaviour>>,
    record: Arc<Mutex<Record>>,
}

impl SmtpResponder {
    /// Listens on a free port (or the given one), offering PIPELINING or not.
    pub fn start(port: Option<u16>, behaviour: Behaviour, pipelining: bool) -> SmtpResponder {
        SmtpResponder::listen(port, behaviour, pipelining, None)
    }

    /// Listens on a free port speaking TLS from the first byte (like port
    /// 465) with this certificate and key (PEM, PKCS#8).
    pub fn start_implicit_tls(behaviour: Behaviour, certificate_pem: &[u8], key_pem: &[u8]) -> SmtpResponder {
        let identity = native_tls::Identity::from_pkcs8(certificate_pem, key_pem).expect("certificate and key");
        let acceptor = native_tls::TlsAcceptor::new(identity).expect("TLS acceptor");
        SmtpResponder::listen(None, behaviour, true, Some(Arc::new(acceptor)))
    }

    fn listen(
        port: Option<u16>,
        behaviour: Behaviour,
        pipelining: bool,
        tls: Option<Arc<native_tls::TlsAcceptor>>,
    ) -> SmtpResponder {
        let listener = TcpListener::bind(("127.0.0.1", port.unwrap_or(0))).expect("responder port");
        let port = listener.local_addr().expect("responder address").port();
        let behaviour = Arc::new(Mutex::new(behaviour));
        let record = Arc::new(Mutex::new(Record::default()));
        let (shared_behaviour, shared_record) = (behaviour.clone(), record.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                shared_record.lock().unwrap().connections += 1;
                // Replies to a pipelined group go out as they are written, as a
                // real server flushes them: with Nagle the second reply waited
                // for the client's delayed ACK (40 ms per message).
                let _ = stream.set_nodelay(true);
                let (behaviour, record, tls) = (shared_behaviour.clone(), shared_record.clone(), tls.clone());
                thread::spawn(move || {
                    let Some(acceptor) = tls else {
                        let _ = converse(stream, &behaviour, &record, pipelining);
                        return;
                    };
                    match acceptor.accept(stream) {
                        Ok(stream) => {
                            let _ = converse(stream, &behaviour, &record, pipelining);
                        }
                        Err(_) => record.lock().unwrap().failed_handshakes += 1,
                    }
                });
            }
        });
        SmtpResponder { port, behaviour, record }
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    /// Distinct messages accepted.
    pub fn distinct_messages(&self) -> usize {
        self.record.lock().unwrap().accepted.len()
    }

    /// Acceptances beyond the first of a Message-ID.
    pub fn duplicates(&self) -> usize {
        self.record.lock().unwrap().accepted.values().map(|times| times - 1).sum()
    }

    pub fn recipients_of(&self, message_id: &str) -> Vec<String> {
        self.record.lock().unwrap().recipients.get(message_id).cloned().unwrap_or_default()
    }

    pub fn connections(&self) -> usize {
        self.record.lock().unwrap().connections
    }

    /// The first bytes each silent connection's client sent (for TLS checks).
    pub fn first_bytes(&self) -> Vec<Vec<u8>> {
        self.record.lock().unwrap().first_bytes.clone()
    }

    /// Every command verb received, in order.
    pub fn verbs(&self) -> Vec<String> {
        self.record.lock().unwrap().verbs.clone()
    }

    pub fn failed_handshakes(&self) -> usize {
        self.record.lock().unwrap().failed_handshakes
    }

    /// The most sessions that were inside a mail transaction at the same time.
    pub fn most_transactions_at_once(&self) -> usize {
        self.record.lock().unwrap().most_transactions_at_once
    }
}

fn converse(
    stream: impl Read + Write,
    behaviour: &Mutex<Behaviour>,
    record: &Mutex<Record>,
    pipelining: bool,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let now = || behaviour.lock().unwrap().clone();
    if now() == Behaviour::Silent {
        // Keep what the client sends (a TLS client speaks first), answer nothing.
        let mut first = vec![0u8; 64];
        let read = reader.read(&mut first).unwrap_or(0);
        first.truncate(read);
        record.lock().unwrap().first_bytes.push(first);
        std::thread::sleep(std::time::Duration::from_secs(600));
        return Ok(());
    }
    reply(&mut reader, "220 responder ESMTP")?;
    let mut recipients: Vec<String> = Vec::new();
    // Inside a mail transaction (MAIL FROM accepted), as a real server tracks it.
    let mut in_transaction = false;
    let mut open = OpenTransaction { record, open: false };
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_owned();
        let verb = command.split([' ', ':']).next().unwrap_or("").to_ascii_uppercase();
        record.lock().unwrap().verbs.push(verb.clone());
        match verb.as_str() {
            "EHLO" => {
                // AUTH is offered on every connection, so a client that would send a
                // password in the clear gets the chance to (and the test sees it).
                let extensions = if pipelining {
                    "250-AUTH PLAIN LOGIN\r\n250-PIPELINING\r\n250 8BITMIME"
                } else {
                    "250-AUTH PLAIN LOGIN\r\n250 8BITMIME"
                };
                reply(&mut reader, &format!("250-responder\r\n{extensions}"))?;
            }
            "HELO" | "NOOP" => reply(&mut reader, "250 ok")?,
            // Any credentials will do (AUTH PLAIN with the initial response).
            "AUTH" => reply(&mut reader, "235 2.7.0 authenticated")?,
            "RSET" => {
                recipients.clear();
                in_transaction = false;
                open.set(false);
                reply(&mut reader, "250 ok")?;
            }
            "MAIL" => {
                recipients.clear();
                in_transaction = false;
                open.set(false);
                match now() {
                    Behaviour::RefuseMail(answer) => {
                        reply(&mut reader, &answer)?;
                        if answer.starts_with("421") {
                            return Ok(());
                        }
                    }
                    _ => {
                        in_transaction = true;
                        open.set(true);
                        reply(&mut reader, "250 2.1.0 ok")?;
                    }
                }
            }
            "RCPT" | "DATA" if !in_transaction => reply(&mut reader, "503 5.5.1 MAIL first")?,
            "RCPT" => {
                let address = command.split(['<', '>']).nth(1).unwrap_or("").to_owned();
                match now() {
                    Behaviour::RefuseRecipients { matching, reply: answer } if address.contains(&matching) => {
                        reply(&mut reader, &answer)?
                    }
                    _ => {
                        recipients.push(address);
                        reply(&mut reader, "250 2.1.5 ok")?;
                    }
                }
            }
            "DATA" => {
                if recipients.is_empty() {
                    reply(&mut reader, "554 5.5.1 no valid recipients")?;
                    continue;
                }
                reply(&mut reader, "354 go ahead")?;
                let mut message_id = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    if message_id.is_empty() && line.to_ascii_lowercase().starts_with("message-id:") {
                        message_id = line["message-id:".len()..].trim().to_owned();
                    }
                }
                in_transaction = false;
                if let Behaviour::AcceptSlowly(milliseconds) = now() {
                    thread::sleep(std::time::Duration::from_millis(milliseconds));
                }
                {
                    let mut record = record.lock().unwrap();
                    *record.accepted.entry(message_id.clone()).or_default() += 1;
                    record.recipients.entry(message_id).or_default().append(&mut recipients);
                }
                open.set(false);
                reply(&mut reader, "250 2.0.0 queued")?;
            }
            "QUIT" => {
                reply(&mut reader, "221 bye")?;
                return Ok(());
            }
            _ => reply(&mut reader, "502 5.5.2 unknown command")?,
        }
    }
}

/// Writes one reply line (or lines joined by CRLF), CRLF-terminated.
fn reply(reader: &mut BufReader<impl Read + Write>, text: &str) -> std::io::Result<()> {
    reader.get_mut().write_all(format!("{text}\r\n").as_bytes())
}
