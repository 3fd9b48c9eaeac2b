//! Delivering an account's batch: one SMTP connection, reused for all of
//! its messages and kept open for the next batch, every message's outcome
//! reported per recipient. The caller runs accounts in parallel. No
//! PostgreSQL here.

use crate::compose::{compose, OutgoingMessage};
use crate::connection::{ConnectionError, Endpoint, Login};
use crate::oauth::{SignIn, TokenReport};
use crate::smtp_client::{self, Outgoing, RecipientOutcome, SmtpClient};
use lettre::Address;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

/// One message to deliver through an account.
#[derive(Debug, Clone)]
pub struct Job {
    pub outbox_id: i64,
    pub message: OutgoingMessage,
    /// The envelope sender: the account's own address.
    pub envelope_from: String,
    /// Recipients still to deliver to (those already accepted are left out).
    pub recipients: Vec<String>,
}

/// Where copies of sent mail go: an IMAP folder of the account, signed in
/// to with the incoming side's credential.
#[derive(Debug, Clone)]
pub struct SentFolder {
    pub endpoint: Endpoint,
    pub folder: String,
    /// The incoming side's login name.
    pub user: String,
    /// The incoming side's own sign-in; `None` signs in as `user` with the
    /// SMTP sign-in (one OAuth2 access token serves both sides).
    pub sign_in: Option<SignIn>,
}

/// An account's server and login, and its messages.
#[derive(Debug, Clone)]
pub struct AccountBatch {
    pub account_id: i64,
    /// No message is started after this (the claim's lease must outlast the
    /// round, or another sender could take its rows while they are sent).
    pub start_no_message_after: Instant,
    pub endpoint: Endpoint,
    /// `None` for servers that take mail without AUTH.
    pub sign_in: Option<SignIn>,
    pub jobs: Vec<Job>,
    /// Append one copy of every sent message here; `Err` says why it cannot be.
    pub sent_folder: Option<Result<SentFolder, String>>,
}

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// The server answered for each recipient (RCPT) and for the message
    /// (DATA), its last answer at `at`.
    Answered {
        recipients: Vec<(String, RecipientOutcome)>,
        data: Option<Result<String, RecipientOutcome>>,
        at: SystemTime,
    },
    /// The message could not be composed: it will never go out as stored.
    Unsendable(String),
    /// The connection failed before the server answered for this message.
    NotAttempted(ConnectionError),
    /// The message was sent, but its copy could not be put in the Sent folder.
    SentCopyFailed(String),
    /// Not started: the sender is stopping or the round ran out of time. The
    /// row goes back to the queue as if it had not been claimed.
    NotStarted,
}

/// An idle connection and what it was opened with.
struct Pooled {
    endpoint: Endpoint,
    login: Option<Login>,
    client: SmtpClient,
}

/// Open SMTP connections between batches, one per account, so a busy queue
/// does not pay for connect, TLS, EHLO and AUTH every batch. A connection is
/// reused only for the same server and the same login, compared in full (a
/// changed password or server gets a new connection). QUIT is never sent
/// while the lock is held: a slow server must not hold up the other
/// accounts, nor the main thread. The caller closes them when the queue runs dry.
#[derive(Default)]
pub struct ConnectionPool {
    idle: Mutex<HashMap<i64, Pooled>>,
}

impl ConnectionPool {
    fn take(&self, account_id: i64, endpoint: &Endpoint, login: Option<&Login>) -> Option<SmtpClient> {
        let pooled = self.idle.lock().expect("pool lock").remove(&account_id)?;
        if pooled.endpoint == *endpoint && pooled.login.as_ref() == login {
            return Some(pooled.client);
        }
        pooled.client.quit();
        None
    }

    fn give_back(&self, account_id: i64, endpoint: Endpoint, login: Option<Login>, client: SmtpClient) {
        let replaced = self.idle.lock().expect("pool lock").insert(account_id, Pooled { endpoint, login, client });
        if let Some(replaced) = replaced {
            replaced.client.quit();
        }
    }

    /// QUIT on every idle connection.
    pub fn close_all(&self) {
        let idle: Vec<SmtpClient> =
            self.idle.lock().expect("pool lock").drain().map(|(_, pooled)| pooled.client).collect();
        for client in idle {
            client.quit();
        }
    }

    pub fn open_connections(&self) -> usize {
        self.idle.lock().expect("pool lock").len()
    }
}

/// What a round did: each message's outcome, and what happened to the
/// account's OAuth2 tokens on the way.
#[derive(Debug, Default)]
pub struct RoundResult {
    pub outcomes: Vec<(i64, JobOutcome)>,
    pub tokens: TokenReport,
}

/// Opens a connection, signed in when the account authenticates.
fn open(endpoint: &Endpoint, sign_in: Option<&mut SignIn>) -> Result<SmtpClient, ConnectionError> {
    match sign_in {
        Some(sign_in) => sign_in.connect(|login| smtp_client::connect(endpoint, Some(login))),
        None => smtp_client::connect(endpoint, None),
    }
    .map(|(client, _)| client)
}

/// A job ready for the wire (composed, its envelope parsed), or why it
/// will never be.
struct Prepared {
    bytes: Vec<u8>,
    from: Address,
    recipients: Vec<Address>,
}

fn prepare(job: &Job) -> Result<Prepared, String> {
    let composed = compose(&job.message).map_err(|error| error.to_string())?;
    let (from, recipients) = envelope(job)?;
    Ok(Prepared { bytes: composed.bytes, from, recipients })
}

impl Prepared {
    fn outgoing(&self) -> Outgoing<'_> {
        Outgoing { from: &self.from, recipients: &self.recipients, message: &self.bytes }
    }
}

/// All messages of one account over one connection, reconnecting once after
/// a broken connection (a pooled connection the server closed meanwhile
/// does not count). Once the server cannot be reached, the account's
/// remaining messages are not attempted (they wait for the next try). Once
/// `stopping` is set or the batch's time is up, the messages not yet started
/// are reported `NotStarted`. Each message's content goes out with the next
/// one's envelope (`SmtpClient::send_ahead`) if the next may start then; a
/// message is started only when its content goes out, so one whose envelope
/// went ahead is still not started if the round stops meanwhile (its
/// connection is dropped, not pooled). Messages are composed when they are
/// about to go out (the next one a step ahead), never the whole batch.
pub fn deliver_account(batch: AccountBatch, pool: &ConnectionPool, stopping: &AtomicBool) -> RoundResult {
    let mut sign_in = batch.sign_in;
    let mut outcomes = Vec::with_capacity(batch.jobs.len());
    let login = |sign_in: &Option<SignIn>| sign_in.as_ref().map(|sign_in| sign_in.login.clone());
    let mut client: Option<SmtpClient> = pool.take(batch.account_id, &batch.endpoint, login(&sign_in).as_ref());
    let mut pooled = client.is_some();
    let mut server_down: Option<ConnectionError> = None;
    let mut reconnects_left = 1;
    // (Only kept when they go to a Sent folder: a copy of every message otherwise.)
    let keep_copies = batch.sent_folder.is_some();
    let mut sent_copies: Vec<(i64, Vec<u8>)> = Vec::new();
    let may_start = || !stopping.load(Ordering::Relaxed) && Instant::now() < batch.start_no_message_after;
    let mut jobs = batch.jobs.iter().peekable();
    // The next job, composed when its envelope went ahead with this one
    // (taken by the next turn, whatever that turn does).
    let mut composed_ahead: Option<Result<Prepared, String>> = None;
    while let Some(job) = jobs.next() {
        let outbox_id = job.outbox_id;
        let composed = composed_ahead.take();
        if !may_start() {
            outcomes.push((outbox_id, JobOutcome::NotStarted));
            continue;
        }
        let prepared = match composed.unwrap_or_else(|| prepare(job)) {
            Ok(prepared) => prepared,
            Err(problem) => {
                outcomes.push((outbox_id, JobOutcome::Unsendable(problem)));
                continue;
            }
        };
        if let Some(error) = &server_down {
            outcomes.push((outbox_id, JobOutcome::NotAttempted(error.clone())));
            continue;
        }
        let next_job = jobs.peek().copied();
        let outcome = loop {
            let connection = match client.as_mut() {
                Some(connection) => connection,
                None => match open(&batch.endpoint, sign_in.as_mut()) {
                    Ok(connected) => client.insert(connected),
                    Err(error) => {
                        server_down = Some(error.clone());
                        break JobOutcome::NotAttempted(error);
                    }
                },
            };
            // Asked when this message's content is written: the next one's
            // envelope goes with it if the next may start then.
            let ahead = &mut composed_ahead;
            // (Composed once, also when a reconnect asks again.)
            let next = move || {
                let ahead = ahead; // (moved in: a FnOnce, so what it composes can be lent out)
                let job = next_job.filter(|_| may_start())?;
                let composed: &Result<Prepared, String> = ahead.get_or_insert_with(|| prepare(job));
                composed.as_ref().ok().map(Prepared::outgoing)
            };
            match connection.send_ahead(prepared.outgoing(), next) {
                Ok(delivery) if pooled && closed_before_answering(&delivery) => {
                    // The server closed the connection while it sat in the pool,
                    // and said so (421) first: a new one, as for a silent close.
                    client = None;
                    pooled = false;
                }
                Ok(delivery) => {
                    let at = SystemTime::now();
                    pooled = false;
                    if connection.is_closing() {
                        // 421: the server hung up; the next message opens a new connection.
                        client = None;
                    }
                    break JobOutcome::Answered {
                        recipients: delivery
                            .recipients
                            .into_iter()
                            .map(|(address, outcome)| (address.to_string(), outcome))
                            .collect(),
                        data: delivery.data,
                        at,
                    };
                }
                Err(_) if pooled => {
                    // The server hung up while the connection sat in the pool.
                    client = None;
                    pooled = false;
                }
                Err(error) => {
                    client = None;
                    if reconnects_left == 0 {
                        server_down = Some(error.clone());
                        break JobOutcome::NotAttempted(error);
                    }
                    reconnects_left -= 1;
                }
            }
        };
        if keep_copies && matches!(outcome, JobOutcome::Answered { data: Some(Ok(_)), .. }) {
            sent_copies.push((outbox_id, prepared.bytes));
        }
        outcomes.push((outbox_id, outcome));
    }
    // (A connection with an envelope ahead, its message not started after
    // all, is dropped: the server ends that transaction without a message.)
    if let Some(client) = client.filter(|client| !client.has_envelope_ahead()) {
        pool.give_back(batch.account_id, batch.endpoint, login(&sign_in), client);
    }
    if let Some(sent_folder) = batch.sent_folder.filter(|_| !sent_copies.is_empty()) {
        outcomes.extend(append_sent_copies(sent_folder, sign_in.as_mut(), sent_copies));
    }
    RoundResult { outcomes, tokens: sign_in.map(|sign_in| sign_in.report).unwrap_or_default() }
}

/// Every recipient got the 421 of a server closing the connection, and no
/// message went: what a server that timed out an idle connection answers
/// to the next MAIL FROM (its 421 was waiting in the socket).
fn closed_before_answering(delivery: &smtp_client::Delivery) -> bool {
    delivery.data.is_none()
        && !delivery.recipients.is_empty()
        && delivery
            .recipients
            .iter()
            .all(|(_, outcome)| matches!(outcome, RecipientOutcome::Deferred(reply) if reply.starts_with("421")))
}

/// Appends the copies over one IMAP session, marked \Seen; failures are
/// reported per message (the mail itself is sent all the same).
fn append_sent_copies(
    sent_folder: Result<SentFolder, String>,
    sign_in: Option<&mut SignIn>,
    copies: Vec<(i64, Vec<u8>)>,
) -> Vec<(i64, JobOutcome)> {
    let failed = |problem: String| -> Vec<(i64, JobOutcome)> {
        copies.iter().map(|(outbox_id, _)| (*outbox_id, JobOutcome::SentCopyFailed(problem.clone()))).collect()
    };
    let mut sent_folder = match sent_folder {
        Ok(sent_folder) => sent_folder,
        Err(problem) => return failed(problem),
    };
    let mut own = sent_folder.sign_in.take();
    let Some(signing_in) = own.as_mut().or(sign_in) else {
        return failed(format!("cannot copy to {}: the account has no password", sent_folder.folder));
    };
    // A borrowed SMTP sign-in signs in as the incoming side's user for the
    // copy (renewing the shared token if the server refuses it), then is
    // given back as it was.
    let smtp_user = std::mem::replace(&mut signing_in.login.user, sent_folder.user.clone());
    let outcomes = match signing_in.connect(|login| crate::imap_client::connect(&sent_folder.endpoint, login)) {
        Ok((mut session, _)) => {
            let mut outcomes = Vec::new();
            for (outbox_id, bytes) in &copies {
                if let Err(error) = session.append(&sent_folder.folder, bytes).flag(imap::types::Flag::Seen).finish() {
                    outcomes.push((
                        *outbox_id,
                        JobOutcome::SentCopyFailed(format!("copy to {}: {error}", sent_folder.folder)),
                    ));
                }
            }
            let _ = session.logout();
            outcomes
        }
        Err(error) => failed(format!("copy to {}: {error}", sent_folder.folder)),
    };
    signing_in.login.user = smtp_user;
    outcomes
}

fn envelope(job: &Job) -> Result<(Address, Vec<Address>), String> {
    let from = job
        .envelope_from
        .parse::<Address>()
        .map_err(|_| format!("envelope sender {:?} is not an address", job.envelope_from))?;
    let recipients = job
        .recipients
        .iter()
        .map(|recipient| recipient.parse::<Address>().map_err(|_| format!("recipient {recipient:?} is not an address")))
        .collect::<Result<Vec<_>, _>>()?;
    if recipients.is_empty() {
        return Err("no recipients left to deliver to: every one is on the suppression list".to_owned());
    }
    Ok((from, recipients))
}

/// Where a recipient stands after a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipientStatus {
    Sent,
    Deferred,
    Failed,
}

impl RecipientStatus {
    pub fn label(self) -> &'static str {
        match self {
            RecipientStatus::Sent => "sent",
            RecipientStatus::Deferred => "deferred",
            RecipientStatus::Failed => "failed",
        }
    }
}

/// Everything one outbox row's jobs came to in a round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowSummary {
    /// Recipients the servers answered for: address, status, reply.
    pub recipients: Vec<(String, RecipientStatus, String)>,
    /// The message can never be sent as stored: every open recipient fails.
    pub unsendable: Option<String>,
    /// The last problem, in the server's words, for last_error.
    pub last_error: Option<String>,
    /// When a server last accepted the message (its answer to DATA).
    pub accepted_at: Option<SystemTime>,
}

/// Merges the outcomes of a row's jobs (one, or one per recipient when
/// each recipient gets personal links) into per-recipient statuses.
pub fn summarize<'a>(outcomes: impl IntoIterator<Item = &'a JobOutcome>) -> RowSummary {
    let mut summary = RowSummary::default();
    for outcome in outcomes {
        match outcome {
            JobOutcome::Answered { recipients, data, at } => {
                if matches!(data, Some(Ok(_))) {
                    summary.accepted_at = summary.accepted_at.max(Some(*at));
                }
                for (address, answer) in recipients {
                    let (status, reply) = match (answer, data) {
                        (RecipientOutcome::Accepted, Some(Ok(reply))) => (RecipientStatus::Sent, reply.clone()),
                        (RecipientOutcome::Accepted, Some(Err(RecipientOutcome::Rejected(reply)))) => {
                            (RecipientStatus::Failed, reply.clone())
                        }
                        (RecipientOutcome::Accepted, Some(Err(RecipientOutcome::Deferred(reply)))) => {
                            (RecipientStatus::Deferred, reply.clone())
                        }
                        (RecipientOutcome::Accepted, _) => {
                            (RecipientStatus::Deferred, "the message was not transferred".to_owned())
                        }
                        (RecipientOutcome::Deferred(reply), _) => (RecipientStatus::Deferred, reply.clone()),
                        (RecipientOutcome::Rejected(reply), _) => (RecipientStatus::Failed, reply.clone()),
                    };
                    if status != RecipientStatus::Sent {
                        summary.last_error = Some(format!("{address}: {reply}"));
                    }
                    summary.recipients.push((address.clone(), status, reply));
                }
            }
            JobOutcome::Unsendable(problem) => {
                summary.unsendable = Some(problem.clone());
                summary.last_error = Some(problem.clone());
            }
            JobOutcome::NotAttempted(error) => summary.last_error = Some(error.to_string()),
            JobOutcome::SentCopyFailed(problem) => summary.last_error = Some(format!("sent, but {problem}")),
            JobOutcome::NotStarted => {}
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_recipient_answers_merge_into_one_row() {
        let first = JobOutcome::Answered {
            recipients: vec![
                ("a@x.com".to_owned(), RecipientOutcome::Accepted),
                ("b@x.com".to_owned(), RecipientOutcome::Rejected("550 5.1.1 unknown".to_owned())),
                ("c@x.com".to_owned(), RecipientOutcome::Deferred("451 4.3.0 later".to_owned())),
            ],
            data: Some(Ok("250 2.0.0 queued".to_owned())),
            at: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(2),
        };
        let second = JobOutcome::Answered {
            recipients: vec![("d@x.com".to_owned(), RecipientOutcome::Accepted)],
            data: Some(Err(RecipientOutcome::Deferred("452 4.3.1 full".to_owned()))),
            at: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(3),
        };
        let summary = summarize([&first, &second]);
        let statuses: Vec<(&str, RecipientStatus)> =
            summary.recipients.iter().map(|(address, status, _)| (address.as_str(), *status)).collect();
        assert_eq!(
            statuses,
            [
                ("a@x.com", RecipientStatus::Sent),
                ("b@x.com", RecipientStatus::Failed),
                ("c@x.com", RecipientStatus::Deferred),
                ("d@x.com", RecipientStatus::Deferred)
            ]
        );
        assert_eq!(summary.recipients[0].2, "250 2.0.0 queued");
        assert_eq!(summary.last_error.as_deref(), Some("d@x.com: 452 4.3.1 full"));
        assert_eq!(summary.unsendable, None);
        // Accepted by the first answer only: the second deferred its message.
        assert_eq!(summary.accepted_at, Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(2)));
    }

    fn message() -> OutgoingMessage {
        OutgoingMessage {
            message_id: "<1@example.test>".to_owned(),
            from: "a@example.test".to_owned(),
            reply_to: Vec::new(),
            to: vec!["b@example.test".to_owned()],
            cc: Vec::new(),
            bcc: Vec::new(),
            subject: "s".to_owned(),
            text_body: Some("t".to_owned()),
            html_body: None,
            attachments: Vec::new(),
            headers: Vec::new(),
            in_reply_to: None,
            references: Vec::new(),
            date: None,
            signature: None,
            unsubscribe_url: None,
            tracking_pixel_url: None,
        }
    }

    /// Two messages to port 1 of this host, where nothing listens.
    fn batch_to_nowhere(start_no_message_after: Instant) -> AccountBatch {
        batch_to(1, start_no_message_after, 2)
    }

    fn batch_to(port: u16, start_no_message_after: Instant, messages: i64) -> AccountBatch {
        let job = |outbox_id| Job {
            outbox_id,
            message: message(),
            envelope_from: "a@example.test".to_owned(),
            recipients: vec!["b@example.test".to_owned()],
        };
        AccountBatch {
            account_id: 1,
            start_no_message_after,
            endpoint: Endpoint {
                host: "127.0.0.1".to_owned(),
                port,
                security: crate::connection::Security::None,
                extra_ca_pem: None,
                timeout: std::time::Duration::from_secs(5),
            },
            sign_in: None,
            jobs: (1..=messages).map(job).collect(),
            sent_folder: None,
        }
    }

    use crate::scripted_server::{scripted_connections, scripted_server, Step};

    #[test]
    fn no_message_is_started_once_the_sender_stops_or_the_round_is_out_of_time() {
        let pool = ConnectionPool::default();
        let later = Instant::now() + std::time::Duration::from_secs(60);
        let outcomes = deliver_account(batch_to_nowhere(later), &pool, &AtomicBool::new(true)).outcomes;
        assert_eq!(outcomes, [(1, JobOutcome::NotStarted), (2, JobOutcome::NotStarted)]);
        let outcomes = deliver_account(batch_to_nowhere(Instant::now()), &pool, &AtomicBool::new(false)).outcomes;
        assert_eq!(outcomes, [(1, JobOutcome::NotStarted), (2, JobOutcome::NotStarted)]);
        // In time and not stopping: the messages are started (and find nobody there).
        let outcomes = deliver_account(batch_to_nowhere(later), &pool, &AtomicBool::new(false)).outcomes;
        assert!(outcomes.iter().all(|(_, outcome)| matches!(outcome, JobOutcome::NotAttempted(_))), "{outcomes:?}");
        assert_eq!(summarize([&JobOutcome::NotStarted]), RowSummary::default());
    }

    /// Each message's outcome in a word and the server's reply.
    fn answers(outcomes: &[(i64, JobOutcome)]) -> Vec<(i64, String)> {
        outcomes
            .iter()
            .map(|(outbox_id, outcome)| {
                let said = match outcome {
                    JobOutcome::Answered { data: Some(Ok(reply)), .. } => format!("sent: {reply}"),
                    JobOutcome::Answered { data: Some(Err(RecipientOutcome::Deferred(reply))), .. } => {
                        format!("deferred: {reply}")
                    }
                    JobOutcome::NotStarted => "not started".to_owned(),
                    other => format!("{other:?}"),
                };
                (*outbox_id, said)
            })
            .collect()
    }

    /// Lines of the test message's content as the server reads them (its terminator included).
    fn content_lines() -> usize {
        smtp_client::dot_stuff(&compose(&message()).unwrap().bytes).split(|&byte| byte == b'\n').count() - 1
    }

    const EHLO: Step = (1, 0, "250-scripted\r\n250 PIPELINING");
    const ENVELOPE: Step = (3, 0, "250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead");
    /// The answer to the first content and to the second envelope that went with it.
    const ONE_AND_ENVELOPE: &str = "250 2.0.0 one\r\n250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead";

    #[test]
    fn the_next_envelope_goes_ahead_only_if_the_next_message_may_start_when_the_content_goes_out() {
        // The round's time runs out while the server takes its time over the
        // first envelope: nothing goes ahead with the first content, and the
        // connection is kept (QUIT is what the server reads next).
        let (port, server) = scripted_server(vec![
            EHLO,
            (3, 2000, "250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead"),
            (content_lines(), 0, "250 2.0.0 one"),
            (1, 0, "221 bye"),
        ]);
        let round_ends = Instant::now() + std::time::Duration::from_secs(1);
        let pool = ConnectionPool::default();
        let outcomes = deliver_account(batch_to(port, round_ends, 2), &pool, &AtomicBool::new(false)).outcomes;
        assert_eq!(answers(&outcomes), [(1, "sent: 250 2.0.0 one".to_owned()), (2, "not started".to_owned())]);
        assert_eq!(pool.open_connections(), 1);
        pool.close_all();
        let read = server.join().unwrap();
        assert_eq!(read[read.len() - 2..], [".", "QUIT"]);
    }

    #[test]
    fn a_message_whose_envelope_went_ahead_is_not_started_once_the_round_is_out_of_time() {
        // The second envelope went out with the first content; the round's
        // time runs out before the server answers: the second message is not
        // started (its content never goes) and the connection is dropped.
        let (port, server) = scripted_server(vec![EHLO, ENVELOPE, (content_lines() + 3, 2000, ONE_AND_ENVELOPE)]);
        let round_ends = Instant::now() + std::time::Duration::from_secs(1);
        let pool = ConnectionPool::default();
        let outcomes = deliver_account(batch_to(port, round_ends, 3), &pool, &AtomicBool::new(false)).outcomes;
        assert_eq!(
            answers(&outcomes),
            [(1, "sent: 250 2.0.0 one".to_owned()), (2, "not started".to_owned()), (3, "not started".to_owned())]
        );
        assert_eq!(pool.open_connections(), 0, "a connection with an envelope ahead is not kept");
        let read = server.join().unwrap();
        assert_eq!(read.iter().filter(|line| *line == "DATA").count(), 2);
        assert_eq!(read.iter().filter(|line| *line == ".").count(), 1, "{read:?}");
    }

    #[test]
    fn a_connection_lost_before_the_end_of_data_reply_sends_that_message_again_and_the_next_afresh() {
        let lines = content_lines();
        let (port, server) = scripted_connections(vec![
            vec![EHLO, ENVELOPE, (lines + 3, 0, "")],
            vec![EHLO, ENVELOPE, (lines + 3, 0, ONE_AND_ENVELOPE), (lines, 0, "250 2.0.0 two")],
        ]);
        let later = Instant::now() + std::time::Duration::from_secs(60);
        let pool = ConnectionPool::default();
        let outcomes = deliver_account(batch_to(port, later, 2), &pool, &AtomicBool::new(false)).outcomes;
        assert_eq!(answers(&outcomes), [(1, "sent: 250 2.0.0 one".to_owned()), (2, "sent: 250 2.0.0 two".to_owned())]);
        drop(pool);
        let connections = server.join().unwrap();
        // The second connection starts with the first message's envelope, not the one that went ahead.
        assert_eq!(connections[1][1], "MAIL FROM:<a@example.test>");
        assert_eq!(connections[1].iter().filter(|line| *line == ".").count(), 2);
    }

    #[test]
    fn a_421_to_the_end_of_data_defers_that_message_and_the_next_goes_out_on_a_new_connection() {
        let lines = content_lines();
        let (port, server) = scripted_connections(vec![
            vec![EHLO, ENVELOPE, (lines + 3, 0, "421 4.3.2 closing")],
            vec![EHLO, ENVELOPE, (lines, 0, "250 2.0.0 two")],
        ]);
        let later = Instant::now() + std::time::Duration::from_secs(60);
        let pool = ConnectionPool::default();
        let outcomes = deliver_account(batch_to(port, later, 2), &pool, &AtomicBool::new(false)).outcomes;
        assert_eq!(
            answers(&outcomes),
            [(1, "deferred: 421 4.3.2 closing".to_owned()), (2, "sent: 250 2.0.0 two".to_owned())]
        );
        drop(pool);
        let connections = server.join().unwrap();
        assert_eq!(connections[1].iter().filter(|line| *line == ".").count(), 1);
    }

    #[test]
    fn a_pooled_connection_the_server_closed_with_a_421_is_replaced_without_deferring_the_message() {
        let lines = content_lines();
        let (port, server) = scripted_connections(vec![
            // The first round; then, idle in the pool, the server times the connection out.
            vec![EHLO, ENVELOPE, (lines, 0, "250 2.0.0 one"), (3, 0, "421 4.4.2 idle too long")],
            vec![EHLO, ENVELOPE, (lines, 0, "250 2.0.0 two")],
        ]);
        let later = Instant::now() + std::time::Duration::from_secs(60);
        let pool = ConnectionPool::default();
        let first = deliver_account(batch_to(port, later, 1), &pool, &AtomicBool::new(false)).outcomes;
        assert_eq!(answers(&first), [(1, "sent: 250 2.0.0 one".to_owned())]);
        assert_eq!(pool.open_connections(), 1);
        let second = deliver_account(batch_to(port, later, 1), &pool, &AtomicBool::new(false)).outcomes;
        assert_eq!(answers(&second), [(1, "sent: 250 2.0.0 two".to_owned())]);
        drop(pool);
        assert_eq!(server.join().unwrap().len(), 2);
    }

    #[test]
    fn unsendable_and_unreachable_rows() {
        let summary = summarize([&JobOutcome::Unsendable("from: bad".to_owned())]);
        assert_eq!(summary.unsendable.as_deref(), Some("from: bad"));
        let error = ConnectionError::Connect { address: "h:25".to_owned(), reason: "refused".to_owned() };
        let summary = summarize([&JobOutcome::NotAttempted(error)]);
        assert!(summary.recipients.is_empty());
        assert_eq!(summary.last_error.as_deref(), Some("cannot connect to h:25: refused"));
    }
}
