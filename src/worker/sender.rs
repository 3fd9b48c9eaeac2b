//! The sender's rounds: claim due outbox rows (a transaction), deliver them
//! over SMTP on threads with no transaction open, record the results
//! (another transaction). A failing account or message only affects itself.

use crate::settings;
use crate::store::outbox::{self, ClaimedRow, RowResult, SendingSettings};
use crate::store::transaction::{in_subtransaction, in_transaction, StoreError};
use crate::store::{links, secrets};
use crate::threads;
use email_accounts_mail::compose::OutgoingMessage;
use email_accounts_mail::connection::Login;
use email_accounts_mail::delivery::{
    deliver, summarize, AccountBatch, ConnectionPool, Job, JobOutcome, RowSummary, SentFolder,
};
use email_accounts_mail::identity::{identity, SendingAccount};
use email_accounts_mail::token::{sign, Purpose};
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, UNIX_EPOCH};

/// What one round claimed.
struct Claim {
    rows: Vec<ClaimedRow>,
    signing_key: Vec<u8>,
    accounts: Vec<(SendingSettings, Option<String>)>,
    /// Accounts whose password could not be read: their rows are not sent.
    broken_accounts: HashMap<i64, String>,
}

/// A claimed round ready for the wire.
struct Round {
    /// The claim took a whole batch: more rows are probably waiting.
    full: bool,
    /// Every row's claim token, and the outcomes known before sending
    /// (accounts whose password is unreadable); deliveries add the rest.
    outcomes: Delivered,
    batches: Vec<AccountBatch>,
}

/// A round on the wire: a thread delivers it while the main thread claims
/// the next round and records the previous one.
struct InFlight {
    full: bool,
    outcomes: Delivered,
    delivered: mpsc::Receiver<Vec<(i64, JobOutcome)>>,
}

/// Rows' outcomes, to be recorded under their claim tokens.
struct Delivered {
    tokens: HashMap<i64, String>,
    results: Vec<(i64, JobOutcome)>,
}

/// SMTP connections stay open this long after their last use, so a steady
/// trickle of mail does not reconnect for every message.
const KEEP_CONNECTIONS_OPEN: Duration = Duration::from_secs(5);

thread_local! {
    /// The sender's open SMTP connections and when they were last used (main thread only).
    static CONNECTIONS: RefCell<(Arc<ConnectionPool>, Instant)> =
        RefCell::new((Arc::new(ConnectionPool::default()), Instant::now()));
}

/// Claims up to `batch_size` due rows (one transaction) and composes them.
fn claim_round() -> Result<Option<Round>, StoreError> {
    let claim = in_transaction(AssertUnwindSafe(|| -> Result<Claim, StoreError> {
        let rows = outbox::claim(settings::batch_size(), settings::lease_duration_seconds()).map_err(spi)?;
        let mut account_ids: Vec<i64> = rows.iter().map(|row| row.account_id).collect();
        account_ids.sort_unstable();
        account_ids.dedup();
        let mut accounts = Vec::new();
        let mut broken_accounts = HashMap::new();
        if !rows.is_empty() {
            for account in outbox::sending_settings(&account_ids).map_err(spi)? {
                if account.no_smtp_authentication {
                    accounts.push((account, None));
                    continue;
                }
                match secrets::read_password(account.account_id) {
                    Ok(Some(password)) => accounts.push((account, Some(password))),
                    Ok(None) => {
                        broken_accounts.insert(account.account_id, "no password is set for the account".to_owned());
                    }
                    Err(error) => {
                        broken_accounts.insert(account.account_id, error.to_string());
                    }
                }
            }
        }
        let signing_key = if rows.is_empty() { Vec::new() } else { links::signing_key().map_err(spi)? };
        Ok(Claim { rows, signing_key, accounts, broken_accounts })
    }))??;
    if claim.rows.is_empty() {
        return Ok(None);
    }
    let full = claim.rows.len() as i64 >= settings::batch_size();

    let tokens = claim.rows.iter().map(|row| (row.outbox_id, row.claim_token.clone())).collect();
    let mut known: Vec<(i64, JobOutcome)> = Vec::new();
    let mut by_account: HashMap<i64, Vec<ClaimedRow>> = HashMap::new();
    for row in claim.rows {
        if let Some(problem) = claim.broken_accounts.get(&row.account_id) {
            known.push((row.outbox_id, JobOutcome::NotAttempted(account_problem(problem))));
        } else {
            by_account.entry(row.account_id).or_default().push(row);
        }
    }
    let links = Links { base_url: settings::public_base_url(), key: claim.signing_key };
    let batches: Vec<AccountBatch> = claim
        .accounts
        .into_iter()
        .filter_map(|(account, password)| {
            let rows = by_account.remove(&account.account_id)?;
            Some(batch(&account, password, rows, &links))
        })
        .collect();
    Ok(Some(Round { full, outcomes: Delivered { tokens, results: known }, batches }))
}

/// Puts a round on the wire on its own thread (settings are read here, on the main thread).
fn launch(round: Round) -> InFlight {
    let parallel = settings::smtp_connections();
    let pool = CONNECTIONS.with(|connections| {
        let mut connections = connections.borrow_mut();
        connections.1 = Instant::now();
        Arc::clone(&connections.0)
    });
    let (done, delivered) = mpsc::channel();
    let batches = round.batches;
    threads::spawn_without_signals(move || {
        let _ = done.send(deliver(batches, parallel, &pool, threads::spawn_without_signals));
    });
    InFlight { full: round.full, outcomes: round.outcomes, delivered }
}

impl InFlight {
    /// Waits until every account of the round is done (their connections are back in the pool).
    fn wait(self) -> Delivered {
        let mut outcomes = self.outcomes;
        match self.delivered.recv() {
            Ok(delivered) => outcomes.results.extend(delivered),
            // Only a panic gets here; the rows keep their lease and are retried when it lapses.
            Err(_) => {
                warning!("email_accounts sender: a delivery thread failed; its rows are retried after their lease")
            }
        }
        CONNECTIONS.with(|connections| connections.borrow_mut().1 = Instant::now());
        outcomes
    }
}

/// Records a round's results (one transaction).
fn record(delivered: Delivered) -> Result<(), StoreError> {
    let Delivered { tokens, results } = delivered;
    let max_attempts = settings::max_attempts();
    let retry_base_delay = settings::retry_base_delay_seconds();
    let mut by_row: HashMap<i64, Vec<&JobOutcome>> = HashMap::new();
    for (outbox_id, outcome) in &results {
        by_row.entry(*outbox_id).or_default().push(outcome);
    }
    let summaries: Vec<(i64, RowSummary)> =
        by_row.into_iter().map(|(outbox_id, outcomes)| (outbox_id, summarize(outcomes))).collect();
    in_transaction(AssertUnwindSafe(|| -> Result<(), StoreError> {
        let rows: Vec<RowResult<'_>> = summaries
            .iter()
            .filter_map(|(outbox_id, summary)| {
                tokens.get(outbox_id).map(|token| RowResult { outbox_id: *outbox_id, claim_token: token, summary })
            })
            .collect();
        // The whole round in a few statements; if that fails, row by row, so
        // one row that cannot be recorded keeps its lease (and is retried when
        // it lapses) while the others are recorded all the same.
        let together =
            in_subtransaction(AssertUnwindSafe(|| outbox::record_all(&rows, max_attempts, retry_base_delay)));
        if matches!(together, Ok(Ok(()))) {
            return Ok(());
        }
        for row in rows.chunks(1) {
            let recorded =
                in_subtransaction(AssertUnwindSafe(|| outbox::record_all(row, max_attempts, retry_base_delay)));
            let error = match recorded {
                Ok(Ok(())) => continue,
                Ok(Err(error)) => error.to_string(),
                Err(error) => error.to_string(),
            };
            warning!("email_accounts sender: cannot record outbox row {}: {error}", row[0].outbox_id);
        }
        Ok(())
    }))?
}

/// Records a round; false (and logged) when its transaction failed.
fn recorded(role_name: &str, delivered: Delivered) -> bool {
    let Err(error) = record(delivered) else { return true };
    log!("{role_name}: recording a sending round failed; its rows are retried after their lease: {error}");
    false
}

fn spi(error: pgrx::spi::SpiError) -> StoreError {
    StoreError { message: error.to_string() }
}

fn account_problem(problem: &str) -> email_accounts_mail::connection::ConnectionError {
    email_accounts_mail::connection::ConnectionError::Auth(problem.to_owned())
}

/// Where personal links point and the key that signs them.
struct Links {
    base_url: Option<String>,
    key: Vec<u8>,
}

/// The SMTP endpoint, login and composed jobs of one account. With
/// unsubscribe links or open tracking each recipient gets a personal copy.
fn batch(account: &SendingSettings, password: Option<String>, rows: Vec<ClaimedRow>, links: &Links) -> AccountBatch {
    let endpoint = account.smtp.endpoint(account.extra_ca_certificate.clone());
    let login = password.map(|password| Login {
        user: account.login_id.clone(),
        password,
        allow_plaintext: account.allow_plaintext_authentication,
    });
    let sending = SendingAccount {
        name: account.name.clone(),
        address: account.address.clone(),
        always_use_account_address_as_sender: account.always_use_account_address_as_sender,
        always_use_account_name_as_sender_name: account.always_use_account_name_as_sender_name,
        default_incoming_address: account.default_incoming_address.clone(),
    };
    let personal = links.base_url.as_ref().filter(|_| account.send_unsubscribe_message || account.track_email_status);
    let mut jobs = Vec::new();
    for row in rows {
        let chosen = identity(&sending, row.sender.as_deref(), &row.reply_to);
        let message = OutgoingMessage {
            message_id: row.message_id.clone(),
            from: chosen.from,
            reply_to: chosen.reply_to,
            to: row.to.clone(),
            cc: row.cc.clone(),
            bcc: row.bcc.clone(),
            subject: row.subject.clone(),
            text_body: row.body_text.clone(),
            html_body: row.body_html.clone(),
            attachments: row.attachments.clone(),
            headers: row.headers.clone(),
            in_reply_to: row.in_reply_to.clone(),
            references: row.references.clone(),
            date: Some(UNIX_EPOCH + Duration::from_millis(row.created_at_millis.max(0) as u64)),
            signature: account.signature.clone(),
            unsubscribe_url: None,
            tracking_pixel_url: None,
        };
        let Some(base_url) = personal else {
            jobs.push(Job {
                outbox_id: row.outbox_id,
                envelope_from: chosen.envelope_from,
                recipients: row.recipients,
                message,
            });
            continue;
        };
        if row.recipients.is_empty() {
            // Every recipient was suppressed: the job reports it.
            jobs.push(Job {
                outbox_id: row.outbox_id,
                envelope_from: chosen.envelope_from,
                recipients: Vec::new(),
                message,
            });
            continue;
        }
        for recipient in row.recipients {
            let link = |purpose: Purpose, path: &str| {
                format!("{base_url}/{path}?token={}", sign(&links.key, purpose, row.outbox_id, &recipient))
            };
            let mut copy = message.clone();
            if account.send_unsubscribe_message {
                copy.unsubscribe_url = Some(link(Purpose::Unsubscribe, "unsubscribe"));
            }
            if account.track_email_status {
                copy.tracking_pixel_url = Some(link(Purpose::Open, "open"));
            }
            jobs.push(Job {
                outbox_id: row.outbox_id,
                envelope_from: chosen.envelope_from.clone(),
                recipients: vec![recipient],
                message: copy,
            });
        }
    }
    let sent_folder = account.sent_folder.as_ref().map(|folder| match (&account.imap, &login) {
        (Some(imap), Some(login)) => Ok(SentFolder {
            endpoint: imap.endpoint(account.extra_ca_certificate.clone()),
            login: login.clone(),
            folder: folder.clone(),
        }),
        (None, _) => Err(format!("cannot copy to {folder}: the account has no IMAP incoming server")),
        (_, None) => Err(format!("cannot copy to {folder}: the account has no password")),
    });
    AccountBatch { endpoint, login, jobs, sent_folder }
}

/// Sends until nothing is due (or the worker is asked to stop); returns how
/// long the worker may sleep before the next row is due. Rounds overlap:
/// while one is on the wire, the next is claimed and the previous recorded,
/// so the database and the SMTP sessions work at the same time. A round
/// goes out only when the one before it is done, so an account never has
/// more than one connection.
pub fn drain(role_name: &str) -> Option<Duration> {
    let mut in_flight: Option<InFlight> = None;
    let mut failed = false;
    loop {
        // After a round smaller than a batch the queue is most likely empty:
        // record it first, so its `sent` commits without waiting for an empty claim.
        if let Some(round) = in_flight.take_if(|round| !round.full) {
            failed |= !recorded(role_name, round.wait());
        }
        let next = if failed || super::main_loop::shutdown_requested() { Ok(None) } else { claim_round() };
        let next = next.unwrap_or_else(|error| {
            log!("{role_name}: claiming a sending round failed and will be retried: {error}");
            failed = true;
            None
        });
        let previous = in_flight.take().map(InFlight::wait);
        in_flight = next.map(launch);
        if let Some(previous) = previous {
            failed |= !recorded(role_name, previous);
        }
        if in_flight.is_none() {
            break;
        }
    }
    if super::main_loop::shutdown_requested() {
        close_connections();
        return None;
    }
    if failed {
        return Some(Duration::from_secs(1));
    }
    next_due()
}

/// How long the open SMTP connections have been idle (`None`: none open).
fn connections_idle_for() -> Option<Duration> {
    CONNECTIONS.with(|connections| {
        let connections = connections.borrow();
        (connections.0.open_connections() > 0).then(|| connections.1.elapsed())
    })
}

/// Closes the SMTP connections once they sat idle for `KEEP_CONNECTIONS_OPEN`;
/// returns when to look again (`None`: none open).
pub fn close_idle_connections() -> Option<Duration> {
    let idle = connections_idle_for()?;
    if idle >= KEEP_CONNECTIONS_OPEN {
        close_connections();
        return None;
    }
    Some(KEEP_CONNECTIONS_OPEN - idle)
}

fn close_connections() {
    CONNECTIONS.with(|connections| connections.borrow().0.close_all());
}

/// Time until the next waiting row is due; rows due now but not claimable
/// (their account is not ready or at its rate limit) are looked at again in a second.
/// `None` means nothing is waiting; a failed look-up is tried again in a second.
fn next_due() -> Option<Duration> {
    match in_transaction(outbox::seconds_until_next_due) {
        Ok(Ok(None)) => None,
        Ok(Ok(Some(seconds))) => Some(Duration::from_secs_f64(seconds.max(1.0))),
        Ok(Err(_)) | Err(_) => Some(Duration::from_secs(1)),
    }
}
