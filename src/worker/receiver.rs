//! One round of the receiver: find the accounts that are due (or asked for
//! by `sync_now()` or an IDLE watcher), sync each on its own thread (at most
//! `receive_connections` at once), and store the batches those threads hand
//! back — on this, the main thread, one transaction per batch, the folder's
//! cursor advanced in the same transaction. A failing account only records
//! its own error and backs off.

use super::board;
use super::device_logins;
use super::idle_watch::IdleWatchers;
use crate::settings;
use crate::store::inbox::{self, ReceivingAccount};
use crate::store::oauth::{self, OAuthStoreError};
use crate::store::restore;
use crate::store::secrets::Side;
use crate::store::transaction::{in_transaction, try_in_transaction, StoreError};
use crate::threads;
use email_accounts_mail::connection::{ConnectionError, Login};
use email_accounts_mail::oauth::{SignIn, TokenReport};
use email_accounts_mail::receive::imap_sync::{self, FolderState, ImapOptions};
use email_accounts_mail::receive::pop3_sync::{self, Pop3Options, Pop3State};
use email_accounts_mail::receive::{Batch, BatchStore, FolderOutcome, Limits, StoreReceipt, SyncError};
use pgrx::prelude::*;
use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::time::Duration;

/// What a sync thread tells the main thread.
enum Report {
    Batch {
        account_index: usize,
        batch: Batch,
        reply: mpsc::Sender<Result<StoreReceipt, String>>,
    },
    /// Which of the UIDLs a POP3 server lists are stored already.
    StoredUniqueIds {
        account_index: usize,
        listed: Vec<String>,
        reply: mpsc::Sender<Result<HashMap<String, f64>, String>>,
    },
    /// A token request just ended: what it obtained, to store at once.
    Tokens {
        account_index: usize,
        tokens: TokenReport,
    },
    Finished {
        account_index: usize,
        outcomes: Vec<FolderOutcome>,
        tokens: TokenReport,
    },
}

/// Hands batches to the main thread and waits until they are committed.
struct MainThreadStore {
    account_index: usize,
    reports: mpsc::Sender<Report>,
    /// Where the receipt of the batch submitted last will come.
    pending: Option<mpsc::Receiver<Result<StoreReceipt, String>>>,
}

impl BatchStore for MainThreadStore {
    fn submit(&mut self, batch: Batch) -> Result<(), String> {
        let (reply, answer) = mpsc::channel();
        self.reports
            .send(Report::Batch { account_index: self.account_index, batch, reply })
            .map_err(|_| "the receiver stopped".to_owned())?;
        self.pending = Some(answer);
        Ok(())
    }

    fn receipt(&mut self) -> Result<StoreReceipt, String> {
        let answer = self.pending.take().ok_or_else(|| "no batch was submitted".to_owned())?;
        answer.recv().map_err(|_| "the receiver stopped before committing".to_owned())?
    }

    fn stored_unique_ids(&mut self, listed: &[String]) -> Result<HashMap<String, f64>, String> {
        let (reply, answer) = mpsc::channel();
        let report = Report::StoredUniqueIds { account_index: self.account_index, listed: listed.to_vec(), reply };
        self.reports.send(report).map_err(|_| "the receiver stopped".to_owned())?;
        answer.recv().map_err(|_| "the receiver stopped before it answered".to_owned())?
    }
}

/// What a sync thread needs, read from the database before it starts.
enum Work {
    Imap(Vec<FolderState>),
    Pop3(Pop3State),
}

struct Prepared {
    account: ReceivingAccount,
    sign_in: SignIn,
    /// The account's token renewal lease the sync holds (it reports under it).
    renewal_lease: Option<String>,
    work: Work,
}

/// How long a sync may hold an account's token renewal lease: the token
/// requests (each bounded by connect_timeout, at most two: before connecting
/// and after a refusal) and the connections before them; what they obtain
/// is stored as soon as it comes (`Report::Tokens`), not when the sync ends.
fn renewal_lease_seconds() -> i64 {
    settings::connect_timeout().as_secs() as i64 * 6 + 30
}

fn limits(account: &ReceivingAccount) -> Limits {
    Limits {
        attachment_size_limit: account.attachment_size_limit,
        max_message_size: settings::max_message_size_bytes(),
        batch_messages: settings::receive_batch_size(),
        batch_bytes: 16 * 1024 * 1024,
    }
}

/// Reads the account's password (or access token) and folder positions (one
/// transaction). Accounts ready to sync, those that cannot be (with why),
/// and how many wait for another worker renewing their access token.
type PreparedAccounts = (Vec<Prepared>, Vec<(ReceivingAccount, ConnectionError)>, usize);

fn prepare(accounts: Vec<ReceivingAccount>) -> Result<PreparedAccounts, StoreError> {
    in_transaction(AssertUnwindSafe(|| {
        let mut prepared = Vec::new();
        let mut unusable = Vec::new();
        let mut renewing_elsewhere = 0;
        for account in accounts {
            let credential = match oauth::worker_credential(
                account.account_id,
                Side::Incoming,
                account.oauth2,
                Some(renewal_lease_seconds()),
            ) {
                Ok(Some(credential)) if credential.must_wait() => {
                    renewing_elsewhere += 1;
                    continue;
                }
                Ok(Some(credential)) => credential,
                Ok(None) if account.oauth2 => {
                    let error = ConnectionError::OAuth(
                        "the account is not connected: call email_accounts.oauth_device_login() or set_oauth_refresh_token()".to_owned(),
                    );
                    unusable.push((account, error));
                    continue;
                }
                Ok(None) => {
                    unusable.push((account, ConnectionError::Auth("no password is set for the account".to_owned())));
                    continue;
                }
                Err(error @ OAuthStoreError::ConsentNeeded { .. }) => {
                    unusable.push((account, ConnectionError::OAuth(error.to_string())));
                    continue;
                }
                Err(error) => {
                    unusable.push((account, ConnectionError::Auth(error.to_string())));
                    continue;
                }
            };
            let renewal_lease = credential.renewal_lease();
            let work = if account.is_pop3() {
                let folder = account.folders.first().cloned().unwrap_or_else(|| "INBOX".to_owned());
                inbox::pop3_state(account.account_id, &folder).map(Work::Pop3)
            } else {
                inbox::folder_states(account.account_id, &account.folders).map(Work::Imap)
            };
            match work {
                Ok(work) => {
                    let sign_in = credential.sign_in(account.login_id.clone(), account.allow_plaintext_authentication);
                    prepared.push(Prepared { sign_in, renewal_lease, account, work });
                }
                Err(error) => {
                    if let Some(lease) = &renewal_lease {
                        oauth::record_report(account.account_id, &TokenReport::default(), Some(lease))?;
                    }
                    unusable.push((account, ConnectionError::Protocol(error.to_string())));
                }
            }
        }
        Ok::<_, StoreError>((prepared, unusable, renewing_elsewhere))
    }))?
}

fn start(prepared: Prepared, account_index: usize, reports: mpsc::Sender<Report>) {
    // Settings are read here: PostgreSQL (GUCs included) only on the main thread.
    let Prepared { account, mut sign_in, work, .. } = prepared;
    let endpoint = account.incoming.endpoint(account.extra_ca_certificate.clone());
    let limits = limits(&account);
    let folders = account.folders.clone();
    let (unseen_only, initial_sync_count, retrieval) =
        (account.unseen_only, account.initial_sync_count, account.retrieval);
    threads::spawn_without_signals(move || {
        let mut store = MainThreadStore { account_index, reports: reports.clone(), pending: None };
        let failed_all = |error: ConnectionError| -> Vec<FolderOutcome> {
            let error = SyncError::Connection(error);
            folders.iter().map(|folder| FolderOutcome::failed(folder, error.clone())).collect()
        };
        let synced = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut sync = |login: &Login| match &work {
                Work::Imap(states) => {
                    let options = ImapOptions { unseen_only, initial_sync_count, limits };
                    imap_sync::sync(&endpoint, login, states, &options, &mut store)
                }
                Work::Pop3(state) => {
                    let options = Pop3Options { retrieval, initial_sync_count, limits };
                    vec![pop3_sync::sync(&endpoint, login, state, &options, &mut store)]
                }
            };
            // What a token request obtained goes to the main thread at once.
            let hand_over = |sign_in: &mut SignIn| {
                if sign_in.report.renewed.is_some() || sign_in.report.failure.is_some() {
                    let tokens = std::mem::take(&mut sign_in.report);
                    let _ = reports.send(Report::Tokens { account_index, tokens });
                }
            };
            let ensured = sign_in.ensure_token();
            hand_over(&mut sign_in);
            if let Err(error) = ensured {
                return failed_all(error);
            }
            let outcomes = sync(&sign_in.login);
            // Refused before anything was fetched: a new token, once.
            let refused = outcomes
                .iter()
                .all(|outcome| matches!(outcome.error, Some(SyncError::Connection(ConnectionError::TokenRefused(_)))));
            if !refused || outcomes.is_empty() {
                return outcomes;
            }
            let renewed = sign_in.renew_after_refusal();
            hand_over(&mut sign_in);
            match renewed {
                Ok(true) => {
                    let again = sync(&sign_in.login);
                    if again.iter().all(|outcome| {
                        matches!(outcome.error, Some(SyncError::Connection(ConnectionError::TokenRefused(_))))
                    }) {
                        // The new token was refused too: renewed again next time.
                        sign_in.report.refused = true;
                    }
                    again
                }
                Ok(false) => outcomes,
                Err(error) => failed_all(error),
            }
        }));
        // A bug in the sync must not leave the main thread waiting for this account.
        let outcomes = synced.unwrap_or_else(|_| {
            let error = SyncError::Store("the sync thread failed unexpectedly".to_owned());
            folders.iter().map(|folder| FolderOutcome::failed(folder, error.clone())).collect()
        });
        let _ = reports.send(Report::Finished { account_index, outcomes, tokens: sign_in.report });
    });
}

/// Stores what a token request obtained, in a transaction of its own (a
/// rotated refresh token must not wait for the sync, nor share its fate).
/// False (logged) when that failed: the caller keeps the report to try again.
fn record_tokens(account_id: i64, tokens: &TokenReport, lease: Option<&str>) -> bool {
    match try_in_transaction(|| oauth::record_report(account_id, tokens, lease)) {
        Ok(()) => true,
        Err(error) => {
            warning!("email_accounts receiver: cannot store the OAuth2 tokens of account {account_id}: {error}");
            false
        }
    }
}

/// Merges a report that could not be stored into a later one.
fn merge(kept: TokenReport, later: TokenReport) -> TokenReport {
    TokenReport {
        renewed: later.renewed.or(kept.renewed),
        failure: later.failure.or(kept.failure),
        refused: later.refused || kept.refused,
    }
}

fn record(account_id: i64, outcomes: &[FolderOutcome]) {
    let max_backoff = settings::receive_max_backoff_seconds();
    let recorded = in_transaction(AssertUnwindSafe(|| -> Result<(), StoreError> {
        // (Not while a dump is restored: this writes sync_state, which the restore fills.)
        if restore::in_progress(restore::Worker::Receiver)?.is_some() {
            return Ok(());
        }
        outcomes.iter().try_for_each(|outcome| inbox::record_outcome(account_id, outcome, max_backoff))?;
        Ok(())
    }));
    match recorded {
        Ok(Ok(())) => {}
        Ok(Err(error)) => warning!("email_accounts receiver: cannot record the sync of account {account_id}: {error}"),
        Err(error) => warning!("email_accounts receiver: cannot record the sync of account {account_id}: {error}"),
    }
}

/// The receiver's part in the workers' loop: it keeps the IDLE watchers.
pub struct Receiver {
    id: super::role::WorkerId,
    watchers: IdleWatchers,
}

impl Receiver {
    pub fn new(id: super::role::WorkerId) -> Receiver {
        Receiver { id, watchers: IdleWatchers::default() }
    }
}

impl super::duty::Duty for Receiver {
    fn id(&self) -> super::role::WorkerId {
        self.id
    }

    /// Sync requests of a receiver that died are asked again; routing code
    /// it was stopped in is suspended for a while.
    fn start(&mut self) {
        keep_freed_memory();
        board::requeue_running_sync_requests();
        crate::store::routing::suspend_interrupted_routing();
    }

    fn not_installed(&mut self) {
        self.watchers.stop_all();
    }

    fn changes(&self) -> Option<i64> {
        crate::store::catalog::receiving_changes_now()
    }

    /// sync_now() asks through the board, not (only) the latch.
    fn asked(&self) -> bool {
        board::sync_requested()
    }

    fn step(&mut self) -> Option<Duration> {
        run(&mut self.watchers)
    }
}

/// Lets malloc keep what a batch frees for the next one while a sync runs.
/// A batch's arrays (raw messages, bodies) are hundreds of kilobytes: by
/// default malloc maps each afresh and gives it back when freed, and the
/// page faults of touching them again were 5–7 % of the receiver's CPU in
/// the ingest bench. `give_back_freed_memory` returns it after each round.
fn keep_freed_memory() {
    // SAFETY: mallopt only tunes this process's allocator.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

/// Hands the memory a round freed (in every thread's arena) back to the
/// system, so an idle receiver holds no more than it did before the round.
fn give_back_freed_memory() {
    // SAFETY: malloc_trim only releases free memory of this process's allocator.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Syncs the due and requested accounts; returns the time until the next
/// account is due (`None`: none is scheduled).
fn run(watchers: &mut IdleWatchers) -> Option<Duration> {
    let requests = board::take_sync_requests();
    let mut requested: Vec<i64> = requests.iter().map(|(_, account_id)| *account_id).collect();
    requested.extend(watchers.take_changed());
    let loaded = in_transaction(AssertUnwindSafe(|| inbox::receiving_accounts(&requested)));
    let accounts = match loaded {
        Ok(Ok(accounts)) => accounts,
        Ok(Err(error)) => {
            log!("email_accounts receiver: cannot look up due accounts: {error}");
            Vec::new()
        }
        Err(error) => {
            log!("email_accounts receiver: cannot look up due accounts: {error}");
            Vec::new()
        }
    };
    if settings::imap_idle() {
        watchers.refresh(&accounts);
    } else {
        watchers.stop_all();
    }
    let waiting_for_renewal = sync_accounts(accounts.into_iter().filter(|account| account.due).collect());
    for (slot, _) in requests {
        board::finish_sync_request(slot);
    }
    let device_logins = device_logins::poll_due();
    [next_sync(), device_logins, waiting_for_renewal.then_some(Duration::from_secs(1))].into_iter().flatten().min()
}

/// Syncs the accounts; true when some were left for a moment because
/// another worker is renewing their access token.
fn sync_accounts(accounts: Vec<ReceivingAccount>) -> bool {
    if accounts.is_empty() {
        return false;
    }
    let (prepared, unusable, renewing_elsewhere) = match prepare(accounts) {
        Ok(prepared) => prepared,
        Err(error) => {
            log!("email_accounts receiver: cannot prepare the sync: {error}");
            return false;
        }
    };
    for (account, problem) in unusable {
        let error = SyncError::Connection(problem);
        let outcomes: Vec<FolderOutcome> =
            account.folders.iter().map(|folder| FolderOutcome::failed(folder, error.clone())).collect();
        record(account.account_id, &outcomes);
    }

    let accounts: Vec<ReceivingAccount> = prepared.iter().map(|prepared| prepared.account.clone()).collect();
    let leases: Vec<Option<String>> = prepared.iter().map(|prepared| prepared.renewal_lease.clone()).collect();
    // Token reports whose storing failed, tried again with the next one.
    let mut unstored: HashMap<usize, TokenReport> = HashMap::new();
    let mut waiting: VecDeque<(usize, Prepared)> = prepared.into_iter().enumerate().collect();
    let (reports, incoming) = mpsc::channel();
    let mut running = 0;
    let parallel = settings::receive_connections();
    let mut new_messages: HashMap<usize, usize> = HashMap::new();
    loop {
        while running < parallel {
            let Some((index, next)) = waiting.pop_front() else { break };
            start(next, index, reports.clone());
            running += 1;
        }
        if running == 0 {
            break;
        }
        match incoming.recv_timeout(Duration::from_millis(100)) {
            Ok(Report::Batch { account_index, batch, reply }) => {
                let account = &accounts[account_index];
                let answer =
                    unless_restoring(|| inbox::store_batch(account, &batch).map_err(|error| error.to_string()));
                if let Ok(receipt) = &answer {
                    *new_messages.entry(account_index).or_default() += receipt.new_messages;
                }
                let _ = reply.send(answer);
            }
            Ok(Report::StoredUniqueIds { account_index, listed, reply }) => {
                let account_id = accounts[account_index].account_id;
                let answer = unless_restoring(|| {
                    inbox::stored_unique_ids(account_id, &listed).map_err(|error| error.to_string())
                });
                let _ = reply.send(answer);
            }
            Ok(Report::Tokens { account_index, tokens }) => {
                let tokens = merge(unstored.remove(&account_index).unwrap_or_default(), tokens);
                if !record_tokens(accounts[account_index].account_id, &tokens, leases[account_index].as_deref()) {
                    unstored.insert(account_index, tokens);
                }
            }
            Ok(Report::Finished { account_index, outcomes, tokens }) => {
                running -= 1;
                // Ends the lease (and notes a refused token) if nothing was stored under it.
                let lease = leases[account_index].as_deref();
                let tokens = merge(unstored.remove(&account_index).unwrap_or_default(), tokens);
                if lease.is_some() || tokens != TokenReport::default() {
                    record_tokens(accounts[account_index].account_id, &tokens, lease);
                }
                record(accounts[account_index].account_id, &outcomes);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                pg_sys::check_for_interrupts!();
                if super::signals::shutdown_requested() {
                    // Threads still fetching are abandoned; nothing they
                    // fetched is acknowledged, so the next start fetches it
                    // again. Tokens already obtained are stored first.
                    for report in incoming.try_iter() {
                        if let Report::Tokens { account_index, tokens } = report {
                            let tokens = merge(unstored.remove(&account_index).unwrap_or_default(), tokens);
                            unstored.insert(account_index, tokens);
                        }
                    }
                    for (account_index, tokens) in unstored.drain() {
                        record_tokens(accounts[account_index].account_id, &tokens, leases[account_index].as_deref());
                    }
                    return renewing_elsewhere > 0;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    give_back_freed_memory();
    renewing_elsewhere > 0
}

/// Answers a sync thread in a transaction of its own, unless a dump is being
/// restored into the database: then nothing is stored or read for it (the
/// restored rows would collide, or are not all there yet), and the restore
/// is held off until the transaction ends.
fn unless_restoring<T>(body: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let answer = in_transaction(AssertUnwindSafe(|| -> Result<T, String> {
        if let Some(process) = restore::in_progress(restore::Worker::Receiver).map_err(|error| error.to_string())? {
            return Err(format!("a dump is being restored into this database (process {process})"));
        }
        body()
    }));
    answer.map_err(|error| error.to_string()).and_then(|answer| answer)
}

/// Time until the next account is due; a failed look-up is retried in a second.
fn next_sync() -> Option<Duration> {
    match in_transaction(inbox::seconds_until_next_sync) {
        Ok(Ok(Some(seconds))) => Some(Duration::from_secs_f64(seconds.max(0.05))),
        Ok(Ok(None)) => None,
        Ok(Err(_)) | Err(_) => Some(Duration::from_secs(1)),
    }
}
