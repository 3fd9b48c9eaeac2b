//! An SMTP server of our own for faults a real one will not produce on
//! demand: 4xx or 421 (closing the connection) to MAIL FROM, 5xx for some
//! recipients, or accepting the connection and never answering. It counts
//! every message it accepts by Message-ID, so tests can assert "nothing lost,
//! nothing twice". The behaviour can change while the sender works.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
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
}

#[derive(Default)]
struct Record {
    /// Times each Message-ID was accepted (more than once: a duplicate).
    accepted: HashMap<String, usize>,
    /// Accepted recipients, per Message-ID.
    recipients: HashMap<String, Vec<String>>,
    connections: usize,
    /// Lines that arrived before TLS or any greeting: must stay empty on a TLS port.
    first_bytes: Vec<Vec<u8>>,
}

pub struct SmtpResponder {
    pub port: u16,
    behaviour: Arc<Mutex<Behaviour>>,
    record: Arc<Mutex<Record>>,
}

impl SmtpResponder {
    /// Listens on a free port (or the given one), offering PIPELINING or not.
    pub fn start(port: Option<u16>, behaviour: Behaviour, pipelining: bool) -> SmtpResponder {
        let listener = TcpListener::bind(("127.0.0.1", port.unwrap_or(0))).expect("responder port");
        let port = listener.local_addr().expect("responder address").port();
        let behaviour = Arc::new(Mutex::new(behaviour));
        let record = Arc::new(Mutex::new(Record::default()));
        let (shared_behaviour, shared_record) = (behaviour.clone(), record.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                shared_record.lock().unwrap().connections += 1;
                let (behaviour, record) = (shared_behaviour.clone(), shared_record.clone());
                thread::spawn(move || {
                    let _ = converse(stream, &behaviour, &record, pipelining);
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
}

fn converse(
    stream: TcpStream,
    behaviour: &Mutex<Behaviour>,
    record: &Mutex<Record>,
    pipelining: bool,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let now = || behaviour.lock().unwrap().clone();
    if now() == Behaviour::Silent {
        // Keep what the client sends (a TLS client speaks first), answer nothing.
        let mut first = vec![0u8; 64];
        let read = std::io::Read::read(&mut reader, &mut first).unwrap_or(0);
        first.truncate(read);
        record.lock().unwrap().first_bytes.push(first);
        std::thread::sleep(std::time::Duration::from_secs(600));
        return Ok(());
    }
    writer.write_all(b"220 responder ESMTP\r\n")?;
    let mut recipients: Vec<String> = Vec::new();
    // Inside a mail transaction (MAIL FROM accepted), as a real server tracks it.
    let mut in_transaction = false;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_owned();
        let verb = command.split([' ', ':']).next().unwrap_or("").to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => {
                let extensions = if pipelining { "250-PIPELINING\r\n250 8BITMIME\r\n" } else { "250 8BITMIME\r\n" };
                writer.write_all(format!("250-responder\r\n{extensions}").as_bytes())?;
            }
            "HELO" | "NOOP" => writer.write_all(b"250 ok\r\n")?,
            "RSET" => {
                recipients.clear();
                in_transaction = false;
                writer.write_all(b"250 ok\r\n")?;
            }
            "MAIL" => {
                recipients.clear();
                in_transaction = false;
                match now() {
                    Behaviour::RefuseMail(reply) => {
                        writer.write_all(format!("{reply}\r\n").as_bytes())?;
                        if reply.starts_with("421") {
                            return Ok(());
                        }
                    }
                    _ => {
                        in_transaction = true;
                        writer.write_all(b"250 2.1.0 ok\r\n")?;
                    }
                }
            }
            "RCPT" | "DATA" if !in_transaction => writer.write_all(b"503 5.5.1 MAIL first\r\n")?,
            "RCPT" => {
                let address = command.split(['<', '>']).nth(1).unwrap_or("").to_owned();
                match now() {
                    Behaviour::RefuseRecipients { matching, reply } if address.contains(&matching) => {
                        writer.write_all(format!("{reply}\r\n").as_bytes())?
                    }
                    _ => {
                        recipients.push(address);
                        writer.write_all(b"250 2.1.5 ok\r\n")?;
                    }
                }
            }
            "DATA" => {
                if recipients.is_empty() {
                    writer.write_all(b"554 5.5.1 no valid recipients\r\n")?;
                    continue;
                }
                writer.write_all(b"354 go ahead\r\n")?;
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
                {
                    let mut record = record.lock().unwrap();
                    *record.accepted.entry(message_id.clone()).or_default() += 1;
                    record.recipients.entry(message_id).or_default().append(&mut recipients);
                }
                writer.write_all(b"250 2.0.0 queued\r\n")?;
            }
            "QUIT" => {
                writer.write_all(b"221 bye\r\n")?;
                return Ok(());
            }
            _ => writer.write_all(b"502 5.5.2 unknown command\r\n")?,
        }
    }
}
