//! Claiming a round: due outbox rows are taken under a lease (one
//! transaction), then composed per account with its server, login and
//! personal links, ready for the wire.

use super::record::{Delivered, RowClaim};
use crate::settings;
use crate::store::links;
use crate::store::oauth::{self, WorkerCredential};
use crate::store::outbox::{self, ClaimedRow, SendingSettings};
use crate::store::secrets::Side;
use crate::store::transaction::{in_transaction, StoreError};
use crate::worker::board;
use email_accounts_mail::compose::OutgoingMessage;
use email_accounts_mail::connection::ConnectionError;
use email_accounts_mail::delivery::{AccountBatch, Job, JobOutcome, SentFolder};
use email_accounts_mail::identity::{identity, SendingAccount};
use email_accounts_mail::return_path;
use email_accounts_mail::token::{sign, unix_now, LinkKey, Purpose};
use std::cell::Cell;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant, UNIX_EPOCH};

/// Rows of an account that must wait for its access token are due again after this.
const WAIT_FOR_TOKEN_SECONDS: f64 = 5.0;

/// Overdue rows are marked expired at most this often, not by every claim
/// (a statement of ~40 µs; the claim leaves them alone meanwhile).
const EXPIRE_EVERY: Duration = Duration::from_secs(1);

thread_local! {
    /// When a committed claim last marked overdue rows expired.
    static LAST_EXPIRY: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Whether this claim marks overdue rows expired.
fn expiry_due() -> bool {
    LAST_EXPIRY.with(|last| last.get().is_none_or(|at| at.elapsed() >= EXPIRE_EVERY))
}

/// What one round claimed.
struct Claim {
    rows: Vec<ClaimedRow>,
    link_key: LinkKey,
    accounts: Vec<ClaimedAccount>,
    /// Accounts that cannot sign in now, and what their rows come to:
    /// not attempted (no password, consent needed) or not started (another
    /// worker is renewing the access token: back in the queue uncounted).
    unusable_accounts: HashMap<i64, JobOutcome>,
    /// Rows of refused accounts went back to the queue.
    handed_back: bool,
}

/// An account of the claim with what its SMTP side signs in with, and what
/// its Sent folder copy signs in with when that is not the SMTP sign-in.
struct ClaimedAccount {
    settings: SendingSettings,
    credential: Option<WorkerCredential>,
    sent_folder_credential: Option<Result<WorkerCredential, String>>,
}

/// What a claim came to: each account's share, composed, and the outcomes
/// known before sending (accounts whose password cannot be read).
pub struct Claimed {
    /// The claim took a whole batch: more rows are probably waiting.
    pub full: bool,
    pub known: Delivered,
    pub rounds: Vec<AccountRound>,
}

/// One account's share of a claim, ready for the wire.
pub struct AccountRound {
    pub account_id: i64,
    /// Each row's claim: results are recorded only under it (its token, or
    /// none for a row taken on insert: `still_ours!` in store/outbox.rs).
    pub claims: HashMap<i64, RowClaim>,
    /// The account's token renewal lease the round holds (it must report under it).
    pub renewal_lease: Option<String>,
    pub batch: AccountBatch,
}

/// Claims up to `batch_size` due rows of at most `max_accounts` accounts not
/// in `skip_accounts` (one transaction) and composes them.
pub fn claim_round(skip_accounts: &[i64], on_wire: &[i64], max_accounts: usize) -> Result<Option<Claimed>, StoreError> {
    let expire = expiry_due();
    // Half the lease for starting messages leaves the other half for the one
    // being sent when it ends (every read and write is bounded by connect_timeout).
    let start_window = Duration::from_secs(settings::lease_duration_seconds().max(2) as u64 / 2);
    // (The claim itself takes only rows of accounts ready to send, within their limits.)
    let (claimed, _) = round(
        start_window,
        |_| true,
        None,
        || {
            Ok(outbox::claim(
                settings::batch_size(),
                settings::lease_duration_seconds(),
                skip_accounts,
                on_wire,
                max_accounts as i64,
                expire.then(|| outbox::ExpiryPass { max_attempts: settings::max_attempts() }),
            )?)
        },
    )?;
    if expire {
        LAST_EXPIRY.with(|last| last.set(Some(Instant::now())));
    }
    Ok(claimed)
}

/// Takes the rows inserting transactions claimed for this sender
/// (`claim_on_insert`), except those of `skip_accounts`, and composes them.
/// Their lease began at the INSERT: only rows with three quarters of it
/// left are taken (the others go back to the queue), and messages start in
/// the first quarter, so the last half of the lease is left for the one on
/// the wire when it ends, as for a claim.
///
/// The take commits synchronously when a transaction that claimed the rows
/// committed without waiting for its flush, or synchronous standbys are
/// configured: the claim is on disk before the wire, as with any claim.
/// Returns what was taken, whether rows were left for the next take, and
/// whether rows went back to the queue. `read_ahead`: the settings read
/// during the flush of the commit that told the sender (new_mail_news).
pub fn take_new_mail(
    skip_accounts: &[i64],
    read_ahead: Option<ReadAhead>,
) -> Result<(Option<Claimed>, bool, bool), StoreError> {
    let lease = settings::lease_duration_seconds().max(4) as f64;
    let (left, given_back) = (Cell::new(false), Cell::new(false));
    // Rows of accounts that cannot send now, or have rate limits (which only
    // the claim applies), go back to the queue.
    let may_take = |account: &SendingSettings| account.ready_to_send && !account.rate_limited;
    // A sender the board forgot takes none: it could not list what it took,
    // and the take would give back, uncounted, rows it has on the wire. (It
    // is then no longer offered new mail; rows claimed for it wait for their
    // lease, and are taken back counted.)
    let Some((already_taken, room)) = board::taken_without_token() else {
        return Ok((None, false, false));
    };
    let listed = std::cell::RefCell::new(Vec::new());
    let round = round(Duration::from_secs_f64(lease / 4.0), may_take, read_ahead, || {
        let taken = outbox::take_new_mail(skip_accounts, lease * 0.75, settings::batch_size(), &already_taken, room)?;
        // Listed before the take commits, while it holds the rows' locks:
        // the take writes nothing to them, the list is what says they are taken.
        let ids: Vec<i64> = taken.rows.iter().map(|row| row.outbox_id).collect();
        board::unmark_taken(&taken.gone);
        board::mark_taken(&ids);
        *listed.borrow_mut() = ids;
        left.set(taken.left);
        given_back.set(taken.given_back);
        Ok(taken.rows)
    });
    // A take that did not commit took nothing. (Rows it handed back in its
    // transaction are in the queue: the next take reports them gone.)
    if round.is_err() {
        board::unmark_taken(&listed.take());
    }
    let (taken, handed_back) = round?;
    Ok((taken, left.get(), given_back.get() || handed_back))
}

/// Rows taken by `take` (in a transaction) with their accounts' settings
/// (those `read_ahead` has, if still good, and the others read now) and
/// credentials, composed per account; messages start within `start_window`.
/// Rows of accounts `may_send` refuses, or whose settings are gone, go back
/// to the queue uncounted in the same transaction (the second value says
/// whether any did).
fn round(
    start_window: Duration,
    may_send: impl Fn(&SendingSettings) -> bool,
    read_ahead: Option<ReadAhead>,
    take: impl FnOnce() -> Result<Vec<ClaimedRow>, StoreError>,
) -> Result<(Option<Claimed>, bool), StoreError> {
    let base_url = settings::public_base_url();
    let claim = in_transaction(AssertUnwindSafe(|| -> Result<Claim, StoreError> {
        let mut rows = take()?;
        let mut account_ids: Vec<i64> = rows.iter().map(|row| row.account_id).collect();
        account_ids.sort_unstable();
        account_ids.dedup();
        let mut accounts = Vec::new();
        let mut unusable_accounts = HashMap::new();
        let mut waiting_accounts = Vec::new();
        // Until their settings are read, every account is refused.
        let mut refused_accounts = account_ids.clone();
        if !rows.is_empty() {
            for account in sending_settings(&account_ids, read_ahead)? {
                if !may_send(&account) {
                    continue;
                }
                refused_accounts.retain(|refused| *refused != account.account_id);
                if account.no_smtp_authentication {
                    let sent_folder_credential = sent_folder_credential(&account);
                    accounts.push(ClaimedAccount { settings: account, credential: None, sent_folder_credential });
                    continue;
                }
                let lease = i64::from(settings::lease_duration_seconds());
                let unusable = match oauth::worker_credential(account.account_id, Side::Smtp, account.oauth2, Some(lease))
                {
                    Ok(Some(credential)) if credential.must_wait() => {
                        waiting_accounts.push(account.account_id);
                        continue;
                    }
                    Ok(Some(credential)) => {
                        // (Read only for accounts that send now.)
                        let sent_folder_credential = sent_folder_credential(&account);
                        accounts.push(ClaimedAccount {
                            settings: account,
                            credential: Some(credential),
                            sent_folder_credential,
                        });
                        continue;
                    }
                    Ok(None) if account.oauth2 => JobOutcome::NotAttempted(ConnectionError::OAuth(
                        "the account is not connected: call email_accounts.oauth_device_login() or set_oauth_refresh_token()".to_owned(),
                    )),
                    Ok(None) => JobOutcome::NotAttempted(ConnectionError::Auth(
                        "no password is set for the account's SMTP side".to_owned(),
                    )),
                    Err(error @ oauth::OAuthStoreError::ConsentNeeded { .. }) => {
                        JobOutcome::NotAttempted(ConnectionError::OAuth(error.to_string()))
                    }
                    Err(error) => JobOutcome::NotAttempted(ConnectionError::Auth(error.to_string())),
                };
                unusable_accounts.insert(account.account_id, unusable);
            }
        }
        let handed_back = hand_back_rows_of(&mut rows, &refused_accounts, 0.0)?;
        // Accounts whose access token another worker renews (or whose token
        // requests back off): their rows go back, due again in a few seconds.
        hand_back_rows_of(&mut rows, &waiting_accounts, WAIT_FOR_TOKEN_SECONDS)?;
        // What is sent, read only for the rows kept.
        let rows = outbox::with_recipients_and_attachments(rows)?;
        // The key signs personal links and signed envelope senders: read
        // only when a claimed account makes one (a statement less per claim).
        let signs = accounts.iter().any(|ClaimedAccount { settings: account, .. }| {
            account.signed_envelope_sender
                || (base_url.is_some() && (account.send_unsubscribe_message || account.track_email_status))
        });
        let link_key = if signs { links::current_link_key()? } else { LinkKey { id: 0, secret: Vec::new() } };
        Ok(Claim { rows, link_key, accounts, unusable_accounts, handed_back })
    }))??;
    if claim.rows.is_empty() {
        return Ok((None, claim.handed_back));
    }
    let full = claim.rows.len() as i64 >= settings::batch_size();

    let mut known = Delivered::default();
    let mut by_account: HashMap<i64, Vec<ClaimedRow>> = HashMap::new();
    for row in claim.rows {
        if let Some(outcome) = claim.unusable_accounts.get(&row.account_id) {
            known.claims.insert(row.outbox_id, RowClaim::of(&row));
            known.results.push((row.outbox_id, outcome.clone()));
        } else {
            by_account.entry(row.account_id).or_default().push(row);
        }
    }
    let start_no_message_after = Instant::now() + start_window;
    let links =
        Links { base_url, key: claim.link_key, expires_at: unix_now() + settings::link_token_lifetime_seconds() };
    let rounds = claim
        .accounts
        .into_iter()
        .filter_map(|ClaimedAccount { settings: account, credential, sent_folder_credential }| {
            let rows = by_account.remove(&account.account_id)?;
            let claims = rows.iter().map(|row| (row.outbox_id, RowClaim::of(row))).collect();
            Some(AccountRound {
                account_id: account.account_id,
                claims,
                renewal_lease: credential.as_ref().and_then(WorkerCredential::renewal_lease),
                batch: batch(&account, credential, sent_folder_credential, rows, &links, start_no_message_after),
            })
        })
        .collect();
    Ok((Some(Claimed { full, known, rounds }), claim.handed_back))
}

/// Settings read during the flush of a commit that claimed rows on insert,
/// for the take of those rows that follows in the same step (new_mail_news;
/// never for a claim: rows queued later may come from transactions that
/// began after the read), and the board's count of settings changes they
/// were read after.
pub struct ReadAhead {
    settings_changes: u64,
    accounts: Vec<SendingSettings>,
}

/// Reads the sending settings of `account_ids` ahead of the take, in a
/// transaction of its own, unless a settings change is under way (then the
/// take reads them, as it does when this fails).
pub fn read_ahead(account_ids: &[i64]) -> Option<ReadAhead> {
    let account_ids: Vec<i64> = account_ids.iter().copied().filter(|&account| account != 0).collect();
    if account_ids.is_empty() {
        return None;
    }
    let settings_changes = board::settings_changes()?;
    let accounts = in_transaction(|| outbox::sending_settings(&account_ids)).ok()?.ok()?;
    Some(ReadAhead { settings_changes, accounts })
}

/// The sending settings of the accounts: those read ahead when no settings
/// change began since (or was under way then: board::settings_changes),
/// the others read now.
fn sending_settings(account_ids: &[i64], read_ahead: Option<ReadAhead>) -> Result<Vec<SendingSettings>, StoreError> {
    let mut settings: Vec<SendingSettings> = read_ahead
        .filter(|ahead| board::settings_changes() == Some(ahead.settings_changes))
        .map(|ahead| ahead.accounts.into_iter().filter(|account| account_ids.contains(&account.account_id)).collect())
        .unwrap_or_default();
    let missing: Vec<i64> = account_ids
        .iter()
        .copied()
        .filter(|&wanted| !settings.iter().any(|account| account.account_id == wanted))
        .collect();
    if !missing.is_empty() {
        settings.extend(outbox::sending_settings(&missing)?);
    }
    Ok(settings)
}

/// Puts the claimed rows of `accounts` back in the queue, uncounted and due
/// again in `delay_seconds` (within the claim's transaction), and leaves
/// the others in `rows`. True when any went back.
fn hand_back_rows_of(rows: &mut Vec<ClaimedRow>, accounts: &[i64], delay_seconds: f64) -> Result<bool, StoreError> {
    if !rows.iter().any(|row| accounts.contains(&row.account_id)) {
        return Ok(false);
    }
    let (back, kept): (Vec<ClaimedRow>, Vec<ClaimedRow>) =
        std::mem::take(rows).into_iter().partition(|row| accounts.contains(&row.account_id));
    let ids: Vec<i64> = back.iter().map(|row| row.outbox_id).collect();
    let tokens: Vec<&str> = back.iter().map(|row| row.claim_token.as_str()).collect();
    outbox::hand_back_after(&ids, &tokens, delay_seconds)?;
    *rows = kept;
    Ok(true)
}

/// The incoming side's credential for the Sent folder copy, when the account
/// keeps one. `None`: the copy signs in with the SMTP side's access token
/// (both sides use OAuth2, one token per account). A password, or a stored
/// token when only the incoming side uses OAuth2 (the receiver renews it).
fn sent_folder_credential(account: &SendingSettings) -> Option<Result<WorkerCredential, String>> {
    account.sent_folder.as_ref()?;
    account.imap.as_ref()?;
    if account.incoming_oauth2 && account.oauth2 && !account.no_smtp_authentication {
        return None;
    }
    Some(match oauth::worker_credential(account.account_id, Side::Incoming, account.incoming_oauth2, None) {
        Ok(Some(credential)) => Ok(credential),
        Ok(None) if account.incoming_oauth2 => Err("the account is not connected (OAuth2)".to_owned()),
        Ok(None) => Err("no password is set for the account's incoming side".to_owned()),
        Err(error) => Err(error.to_string()),
    })
}

/// Where personal links point, the key that makes them and when they expire.
struct Links {
    base_url: Option<String>,
    key: LinkKey,
    expires_at: i64,
}

/// A fresh nonce for each token (AES-GCM must never see one twice with a key).
fn nonce() -> [u8; 12] {
    let mut nonce = [0u8; 12];
    getrandom::getrandom(&mut nonce).expect("the operating system gives random bytes");
    nonce
}

/// The SMTP endpoint, login and composed jobs of one account. With
/// unsubscribe links or open tracking each recipient gets a personal copy.
fn batch(
    account: &SendingSettings,
    credential: Option<WorkerCredential>,
    sent_folder_credential: Option<Result<WorkerCredential, String>>,
    rows: Vec<ClaimedRow>,
    links: &Links,
    start_no_message_after: Instant,
) -> AccountBatch {
    let endpoint = account.smtp.endpoint(account.extra_ca_certificate.clone());
    let sign_in = credential
        .map(|credential| credential.sign_in(account.login_id.clone(), account.allow_plaintext_authentication));
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
        let mut chosen = identity(&sending, row.sender.as_deref(), &row.reply_to);
        // Answers to mail about a row go to the row's document address (automatic linking).
        if let Some(document) = row
            .document
            .as_ref()
            .and_then(|(table, id)| email_accounts_mail::document_address::encode(&account.address, table, id))
            .filter(|document| email_accounts_mail::address::parse_address(document).is_ok())
        {
            chosen.reply_to = vec![document];
        }
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
        // Personal links, or an envelope sender signed for each recipient
        // (return_path.rs): one SMTP transaction per recipient.
        if personal.is_none() && !account.signed_envelope_sender {
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
            let mut copy = message.clone();
            if let Some(base_url) = personal {
                let link = |purpose: Purpose, path: &str| {
                    let token = sign(&links.key, purpose, row.outbox_id, &recipient, links.expires_at, nonce());
                    format!("{base_url}/{path}?token={token}")
                };
                if account.send_unsubscribe_message {
                    copy.unsubscribe_url = Some(link(Purpose::Unsubscribe, "unsubscribe"));
                }
                if account.track_email_status {
                    copy.tracking_pixel_url = Some(link(Purpose::Open, "open"));
                }
            }
            let envelope_from = account
                .signed_envelope_sender
                .then(|| return_path::sign(&account.address, &links.key, row.outbox_id, &recipient))
                .flatten()
                .unwrap_or_else(|| chosen.envelope_from.clone());
            jobs.push(Job { outbox_id: row.outbox_id, envelope_from, recipients: vec![recipient], message: copy });
        }
    }
    let sent_folder = account.sent_folder.as_ref().map(|folder| {
        let Some(imap) = &account.imap else {
            return Err(format!("cannot copy to {folder}: the account has no IMAP incoming server"));
        };
        let own_sign_in = match sent_folder_credential {
            Some(Ok(credential)) => {
                Some(credential.sign_in(account.incoming_login_id.clone(), account.allow_plaintext_authentication))
            }
            Some(Err(problem)) => return Err(format!("cannot copy to {folder}: {problem}")),
            None if sign_in.is_none() => return Err(format!("cannot copy to {folder}: the account has no password")),
            None => None,
        };
        Ok(SentFolder {
            endpoint: imap.endpoint(account.extra_ca_certificate.clone()),
            folder: folder.clone(),
            user: account.incoming_login_id.clone(),
            sign_in: own_sign_in,
        })
    });
    AccountBatch { account_id: account.account_id, start_no_message_after, endpoint, sign_in, jobs, sent_folder }
}
