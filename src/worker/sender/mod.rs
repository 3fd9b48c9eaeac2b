//! The sender. On every wake-up it records the rounds that came back,
//! claims due outbox rows for the accounts that can take more (a
//! transaction), and puts each account's round on the wire on its own thread
//! with no transaction open. Rounds overlap: while an account's round is on
//! the wire the next one is claimed and waits behind it, so the database and
//! the SMTP sessions work at the same time. A failing account or message
//! only affects itself.
//!
//! claim → lanes (on the wire) → record

mod claim;
mod connections;
mod lanes;
mod record;

use super::board;
use super::role::WorkerId;
use crate::settings;
use crate::store::catalog;
use crate::store::outbox;
use crate::store::transaction::{in_transaction, try_in_transaction};
use lanes::Lanes;
use pgrx::prelude::*;
use record::recorded;
use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// How long a stopping sender waits for the rounds on the wire, so their
/// results are recorded rather than retried after their lease.
const FINISH_ON_STOP: Duration = Duration::from_secs(5);

thread_local! {
    /// The accounts on the wire (main thread only; created on first use).
    static LANES: RefCell<Option<Lanes>> = const { RefCell::new(None) };
}

/// Runs once per wake-up. Returns how long the worker may sleep: with
/// rounds on the wire, until the doorbell rings or the fallback poll;
/// otherwise until the next row is due (`None`: nothing is waiting).
/// `latched`: the latch woke the sender since its last step.
fn step(id: WorkerId, latched: bool) -> Option<Duration> {
    LANES.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            match Lanes::new() {
                Ok(lanes) => *cell = Some(lanes),
                Err(error) => {
                    log!("{}: cannot create the delivery doorbell and will try again: {error}", id.name());
                    return Some(Duration::from_secs(1));
                }
            }
        }
        let lanes = cell.as_mut().expect("lanes were just created");
        let next_due = step_with(id, lanes, latched);
        note_other_wake_requests(id);
        next_due
    })
}

fn step_with(id: WorkerId, lanes: &mut Lanes, latched: bool) -> Option<Duration> {
    let role_name = &id.name();
    let parallel = settings::smtp_connections();
    let mut failed = false;
    // Other senders woken by this step's full claims: each at most once (a
    // sender holding every account with mail would otherwise wake an idle
    // one after each claim, for a claim that finds nothing).
    let mut others_woken = 0;
    // New rows are claimed on insert only for a sender with nothing to do
    // (claim_on_insert), said again at the end of the step.
    let was_taking_new_mail = board::set_takes_new_mail(id, false);
    // Every wake-up looks for due mail once; a full claim or a round that
    // came back (its account may have more) looks again. Rows claimed on
    // insert go out first, and the look waits until their round is back:
    // a claim now would hold the main loop while the round is on the wire.
    // (When the next row is due, as the last step's reading said, if it
    // ended with one: valid for this step only.)
    let next_due_read_last = NEXT_DUE.with(|cell| cell.take());
    let after_take = take_new_mail(id, lanes, parallel, latched, &mut failed);
    let mut claim = after_take == AfterTake::Claim;
    // Where the last look found nothing to claim and no commit has woken the
    // sender since (a round came back, as after every single message), the
    // next due time is read first and the claim runs only if a row is due:
    // one statement instead of a claim and that read. A commit's wake-up
    // claims at once, as that is what it usually brings.
    let looked_empty_before = !latched && QUEUE_LOOKED_EMPTY.with(Cell::get);
    // What this step's last look found: nothing to claim (`true`), or rows.
    let mut last_look = None;
    // Seconds until the next row is due (`None`: none waits), as read by
    // the step's last statement: the step's sleep without reading it again.
    let mut due_read: Option<Option<f64>> = None;
    loop {
        let came_back = lanes.collect_finished();
        // The account's next round goes out before this one is recorded.
        lanes.launch_waiting(parallel);
        let any_came_back = !came_back.is_empty();
        if any_came_back {
            due_read = None;
        }
        failed |= !recorded(role_name, came_back);
        // An account whose rounds are all recorded is free for the other senders.
        if any_came_back {
            board::keep_accounts(id, &lanes.accounts());
        }
        if failed || super::signals::shutdown_requested() {
            break;
        }
        // Claimed rounds wait only for accounts already on the wire (or for
        // a free connection): never more than one waiting round per connection.
        if !(claim || any_came_back) || lanes.accounts_waiting().len() >= parallel {
            break;
        }
        claim = false;
        if last_look.unwrap_or(looked_empty_before) {
            match in_transaction(outbox::seconds_until_next_due) {
                Ok(Ok(due)) if due.is_none_or(|seconds| seconds > 0.0) => {
                    last_look = Some(true);
                    due_read = Some(due);
                    continue;
                }
                // A row is due (or the read failed): the claim decides. (If
                // it takes nothing, the step reads again at its end: the
                // claim's expiry pass or hand-backs may have changed what is due.)
                _ => {}
            }
        }
        // Accounts another sender is sending through are left to it.
        let mut skip = lanes.accounts_waiting();
        skip.extend(board::accounts_held_by_others(id));
        // No more accounts than connections: the others are left to other senders.
        match claim::claim_round(&skip, &lanes.accounts_on_wire(), parallel) {
            Ok(Some(claimed)) => {
                last_look = Some(false);
                lanes.add(held_rounds(id, claimed.rounds));
                lanes.launch_waiting(parallel);
                failed |= !recorded(role_name, claimed.known);
                claim = claimed.full;
                // More is waiting than this sender took on: another sender
                // helps, woken now. (While rounds keep coming back this step
                // does not end: woken at its end, a sender started just
                // before a burst slept through all of it.)
                if claimed.full && others_woken + 1 < settings::senders() {
                    board::wake_other_sender(id);
                    others_woken += 1;
                }
            }
            Ok(None) => last_look = Some(true),
            Err(error) => {
                log!("{role_name}: claiming a sending round failed and will be retried: {error}");
                failed = true;
            }
        }
    }
    if let Some(found_nothing) = last_look {
        QUEUE_LOOKED_EMPTY.with(|cell| cell.set(found_nothing));
    }
    if super::signals::shutdown_requested() {
        return None;
    }
    // (A step that looked at nothing, as one woken ahead of a commit that
    // has not told it yet, leaves the sender as it was.)
    if last_look.unwrap_or(was_taking_new_mail) && !failed && lanes.is_empty() {
        board::set_takes_new_mail(id, true);
    }
    if failed || NEW_MAIL_LEFT.with(|left| left.get()) {
        return Some(Duration::from_secs(1));
    }
    if !lanes.is_empty() {
        return Some(settings::fallback_poll_interval());
    }
    // Woken ahead of a commit that has not told it, and asked for nothing
    // else: the queue is as the last reading left it.
    if let (None, AfterTake::WaitForTheCommit, Some(next_due)) = (last_look, after_take, next_due_read_last) {
        NEXT_DUE.with(|cell| cell.set(Some(next_due)));
        return next_due.map(|at| until_due(at.saturating_duration_since(Instant::now()).as_secs_f64()));
    }
    let due = match due_read {
        Some(due) => due,
        None => match in_transaction(outbox::seconds_until_next_due) {
            Ok(Ok(due)) => due,
            // Looked at again in a second.
            Ok(Err(_)) | Err(_) => return Some(Duration::from_secs(1)),
        },
    };
    // A row due now that could not be claimed: the next step claims first.
    QUEUE_LOOKED_EMPTY.with(|cell| cell.set(due.is_none_or(|seconds| seconds > 0.0)));
    NEXT_DUE.with(|cell| cell.set(Some(due.map(|seconds| Instant::now() + Duration::from_secs_f64(seconds.max(0.0))))));
    due.map(until_due)
}

thread_local! {
    /// Rows claimed on insert for this sender wait to be taken (a take failed).
    static NEW_MAIL_LEFT: Cell<bool> = const { Cell::new(false) };
    /// The sender's last look at the queue found nothing due to claim.
    static QUEUE_LOOKED_EMPTY: Cell<bool> = const { Cell::new(false) };
    /// When the next row is due (`Some(None)`: none waits), as the reading
    /// the last step ended with said; `None` if it ended otherwise.
    static NEXT_DUE: Cell<Option<Option<Instant>>> = const { Cell::new(None) };
}

/// What the step does after taking the rows claimed on insert for it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AfterTake {
    /// Look at the queue now.
    Claim,
    /// Look when the round taken is back: nothing else is known to wait (a
    /// claim now would hold the main loop while the round is out).
    ClaimWhenBack,
    /// Nothing: woken ahead of a commit that has not told it yet, and by
    /// nothing else; the commit wakes it.
    WaitForTheCommit,
}

/// Takes the rows inserting transactions claimed for this sender, if a
/// commit said there are any, and puts them on the wire.
fn take_new_mail(id: WorkerId, lanes: &mut Lanes, parallel: usize, latched: bool, failed: &mut bool) -> AfterTake {
    let News {
        board: board::NewMailNews { mine, queued_too, predecessors, .. },
        commit_pending,
        others_asked,
        read_ahead,
    } = new_mail_news(id, latched);
    // Rows claimed for the sender this one replaced: given back (never
    // taken: uncounted), as at a start, rather than when their lease lapses.
    if predecessors {
        take_back_abandoned(&id.name());
    }
    if !(mine || NEW_MAIL_LEFT.with(|left| left.replace(false))) {
        // (The watch ran out or was skipped.)
        return match commit_pending && !others_asked && !predecessors {
            true => AfterTake::WaitForTheCommit,
            false => AfterTake::Claim,
        };
    }
    let mut skip = lanes.accounts_waiting();
    skip.extend(board::accounts_held_by_others(id));
    match claim::take_new_mail(&skip, read_ahead) {
        Ok((taken, left, given_back)) => {
            NEW_MAIL_LEFT.with(|cell| cell.set(left));
            let Some(taken) = taken else { return AfterTake::Claim };
            // No more waiting rounds than connections, as a claim: a burst
            // over many accounts is not held by one sender (the rest goes
            // back to the queue, for the claims of every sender).
            let mut rounds = taken.rounds;
            let room = parallel.saturating_sub(lanes.accounts_waiting().len());
            let over = rounds.split_off(room.min(rounds.len()));
            let gave_back_rounds = !over.is_empty();
            give_back(id, over);
            lanes.add(held_rounds(id, rounds));
            lanes.launch_waiting(parallel);
            *failed |= !recorded(&id.name(), taken.known);
            // Rows left, given back, or queued by the same transactions: the claim looks at once.
            match left || given_back || gave_back_rounds || queued_too {
                true => AfterTake::Claim,
                false => AfterTake::ClaimWhenBack,
            }
        }
        // (The claim still runs: what is queued goes out meanwhile.)
        Err(error) => {
            log!("{}: taking the rows claimed for it on insert failed and will be retried: {error}", id.name());
            NEW_MAIL_LEFT.with(|cell| cell.set(true));
            AfterTake::Claim
        }
    }
}

/// How long a sender woken ahead of a commit of rows claimed for it
/// watches for the commit's end (its flush) before it sleeps until then.
const WATCH_FOR_COMMIT: Duration = Duration::from_millis(2);

/// After this many watches in a row ran out (flushes slower than the watch,
/// or commits that fail after waking the sender), the sender does not
/// watch on the next `UNWATCHED_AFTER_MISSES` early wake-ups.
const MISSES_IN_A_ROW: u32 = 3;
const UNWATCHED_AFTER_MISSES: u32 = 64;

thread_local! {
    /// The board's count of other wake requests when the last step ended
    /// (`None`: no step yet).
    static OTHER_WAKE_REQUESTS_BEFORE_WAIT: Cell<Option<i64>> = const { Cell::new(None) };
    static WATCH_MISSES: Cell<WatchMisses> = const { Cell::new(WatchMisses { in_a_row: 0, unwatched_left: 0 }) };
}

/// Watches that ran out in a row, and early wake-ups left unwatched.
#[derive(Clone, Copy)]
struct WatchMisses {
    in_a_row: u32,
    unwatched_left: u32,
}

impl WatchMisses {
    /// Whether this early wake-up is watched.
    fn watches(&mut self) -> bool {
        if self.unwatched_left == 0 {
            return true;
        }
        self.unwatched_left -= 1;
        false
    }

    fn missed(&mut self) {
        self.in_a_row += 1;
        if self.in_a_row >= MISSES_IN_A_ROW {
            *self = WatchMisses { in_a_row: 0, unwatched_left: UNWATCHED_AFTER_MISSES };
        }
    }
}

/// What the board says of rows claimed on insert for this sender.
struct News {
    board: board::NewMailNews,
    /// Woken ahead of a commit that has not told it yet: the commit wakes it.
    commit_pending: bool,
    /// Something else asked it to wake since its last step.
    others_asked: bool,
    /// The settings of the rows' accounts, read during the commit's flush,
    /// for this step's take only.
    read_ahead: Option<claim::ReadAhead>,
}

/// Reads the board's news. Woken ahead of a commit of rows claimed for it
/// (new_mail.rs), the sender has spent its wake-up and its look before a
/// step during the commit's flush, reads the settings of the rows' accounts
/// for the take (claim.rs read_ahead), then watches the board's count of commits
/// told for the end (no lock: the committing process takes the board's lock
/// to tell it), then takes the rows at once. The commit set the latch when
/// it told the board, so once the sender has read that, the latch is reset,
/// not to wake it a second time (whether the commit told it before or after
/// it woke); whatever else set it since the last step (a queued row's
/// commit, flush(), an account change: counted on the board) sets it again,
/// and a SIGHUP is handled here.
fn new_mail_news(id: WorkerId, latched: bool) -> News {
    let mut told = board::new_mail_told();
    let mut news = board::take_new_mail(id);
    // (Only a latch wakes it ahead of a commit; on another wake-up the mark
    // is one left by a commit that then failed.)
    news.committing &= latched;
    let before_wait = OTHER_WAKE_REQUESTS_BEFORE_WAIT.with(Cell::get);
    let mut misses = WATCH_MISSES.with(Cell::get);
    let watch = news.committing && !news.mine && misses.watches();
    // The flush leaves time to read the settings of the rows' accounts.
    let read_ahead = if watch { claim::read_ahead(&news.accounts) } else { None };
    let watching_since = Instant::now();
    while watch && !news.mine {
        if watching_since.elapsed() >= WATCH_FOR_COMMIT {
            misses.missed();
            break;
        }
        let now_told = board::new_mail_told();
        if now_told == told {
            // (Whoever else needs this core, the committing process included, runs.)
            std::thread::yield_now();
            continue;
        }
        told = now_told;
        news.add(board::take_new_mail(id));
    }
    // The commit it was woken ahead of has told it (and set its latch,
    // under the board's lock, before it could read so).
    if watch && news.mine {
        misses.in_a_row = 0;
    }
    WATCH_MISSES.with(|cell| cell.set(misses));
    if news.committing && news.mine {
        unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
        news.add(board::take_new_mail(id));
        if before_wait != Some(news.other_wake_requests) {
            unsafe { pg_sys::SetLatch(pg_sys::MyLatch) };
        }
        super::main_loop::reload_configuration_if_asked(Some(id));
    }
    News {
        board: news,
        commit_pending: news.committing && !news.mine,
        others_asked: before_wait != Some(news.other_wake_requests),
        read_ahead,
    }
}

/// At the end of a step: the count new_mail_news compares with.
fn note_other_wake_requests(id: WorkerId) {
    OTHER_WAKE_REQUESTS_BEFORE_WAIT.with(|cell| cell.set(board::other_wake_requests(id)));
}

/// The rounds of accounts this sender could take; the rows of accounts
/// another sender took meanwhile go back to the queue (uncounted).
fn held_rounds(id: WorkerId, rounds: Vec<claim::AccountRound>) -> Vec<claim::AccountRound> {
    let accounts: Vec<i64> = rounds.iter().map(|round| round.account_id).collect();
    let refused = board::hold_accounts(id, &accounts);
    if refused.is_empty() {
        return rounds;
    }
    let (refused, held): (Vec<_>, Vec<_>) = rounds.into_iter().partition(|round| refused.contains(&round.account_id));
    give_back(id, refused);
    held
}

/// Rounds that will not go out from here: their rows back to the queue
/// (uncounted), their OAuth2 renewal leases too, so the token is renewed.
fn give_back(id: WorkerId, rounds: Vec<claim::AccountRound>) {
    let leases: Vec<(i64, String)> =
        rounds.iter().filter_map(|round| round.renewal_lease.clone().map(|lease| (round.account_id, lease))).collect();
    let role_name = id.name();
    record::release_renewal_leases(&role_name, &leases);
    let claims = rounds.into_iter().flat_map(|round| round.claims).collect();
    record::hand_back(&role_name, claims);
}

/// The socket that becomes readable when a round comes back, while any is out.
fn doorbell() -> Option<RawFd> {
    LANES.with(|cell| cell.borrow().as_ref().filter(|lanes| lanes.on_wire() > 0).map(Lanes::doorbell))
}

/// On SIGTERM: hands back the claimed rounds not yet on the wire, lets the
/// rounds on the wire finish the message each is sending (a little while
/// at most) and records them (what they did not start is handed back too),
/// then closes the SMTP connections. Rows still out when the sender is gone
/// are taken back by the next sender when it starts.
fn stop(role_name: &str) {
    let finished = LANES.with(|cell| cell.borrow_mut().as_mut().map(|lanes| lanes.finish(FINISH_ON_STOP)));
    if let Some((never_started, came_back)) = finished {
        record::hand_back(role_name, never_started);
        recorded(role_name, came_back);
    }
    connections::close_all();
}

/// When the sender starts (or the extension appears): takes back the rows
/// that senders no longer running had claimed, so they go out now rather
/// than when their lease lapses.
fn take_back_abandoned(role_name: &str) {
    // (Rows taken back may be due: the last reading of when is no longer good.)
    NEXT_DUE.with(|cell| cell.set(None));
    match try_in_transaction(|| outbox::take_back_abandoned(settings::max_attempts())) {
        Ok(0) => {}
        Ok(rows) => log!("{role_name}: took back {rows} outbox row(s) claimed by a sender that is no longer running"),
        Err(error) => {
            log!("{role_name}: cannot take back rows of stopped senders (they wait for their lease): {error}")
        }
    }
}

/// The sender's part in the workers' loop.
pub struct Sender {
    id: WorkerId,
    /// The latch woke it since its last step.
    latched: bool,
    /// The extension this library is for is in its database (the outbox is there).
    installed: bool,
}

impl Sender {
    pub fn new(id: WorkerId) -> Sender {
        Sender { id, latched: true, installed: false }
    }
}

impl super::duty::Duty for Sender {
    fn id(&self) -> WorkerId {
        self.id
    }

    /// Its statements are planned through indexes (see the setting).
    fn start(&mut self) {
        settings::prefer_indexes();
    }

    /// Rows that stopped senders had claimed go out now, not after their lease.
    fn installed(&mut self) {
        self.installed = true;
        take_back_abandoned(&self.id.name());
    }

    fn not_installed(&mut self) {
        self.installed = false;
    }

    fn changes(&self) -> Option<i64> {
        catalog::outbox_changes_now()
    }

    fn woken_by_latch(&mut self) {
        self.latched = true;
    }

    fn step(&mut self) -> Option<Duration> {
        step(self.id, std::mem::take(&mut self.latched))
    }

    /// SMTP connections kept open after a burst close once idle (no statements).
    fn tidy(&mut self) -> Option<Duration> {
        connections::close_idle()
    }

    fn socket(&self) -> Option<RawFd> {
        doorbell()
    }

    /// The restored rows that were claimed when dumped are taken back.
    fn restore_ended(&mut self) {
        take_back_abandoned(&self.id.name());
    }

    fn stop(&mut self) {
        let _ = board::set_takes_new_mail(self.id, false);
        stop(&self.id.name());
        // Rows claimed for it on insert that it never took (uncounted); none
        // without the extension (or while it waits for ALTER EXTENSION UPDATE).
        if !self.installed {
            return;
        }
        // (Rows it took and did not record stay listed on the board as
        // taken, so they stay: the next sender takes them back, counted.
        // Forgotten by the board, it gives back none: the next counts all.)
        if let Err(error) = try_in_transaction(outbox::give_back_untaken_on_stop) {
            log!(
                "{}: cannot give back the rows claimed for it on insert (the next sender does): {error}",
                self.id.name()
            );
        }
    }
}

/// The sleep until a row due in `seconds`: rows due now but not claimable
/// (their account is at its rate limit, held by another sender) are looked
/// at again in a second.
fn until_due(seconds: f64) -> Duration {
    Duration::from_secs_f64(seconds.max(1.0))
}
