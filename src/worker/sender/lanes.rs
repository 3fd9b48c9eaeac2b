//! Accounts on the wire. Each account has at most one round on the wire
//! and one claimed round waiting behind it; at most `smtp_connections`
//! accounts are on the wire at once. Accounts finish independently, so a
//! server that hangs holds up only its own account. Rounds go out on
//! couriers: delivery threads kept between rounds (starting a thread per
//! round cost ~200 µs of every message's latency). A courier that finishes
//! a round writes a byte to a socket the main loop waits on with its latch.

use super::claim::AccountRound;
use super::connections;
use super::record::{Delivered, RowClaim};
use crate::threads;
use email_accounts_mail::connection::ConnectionError;
use email_accounts_mail::delivery::{deliver_account, AccountBatch, ConnectionPool, JobOutcome, RoundResult};
use pgrx::prelude::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// A courier's report: the account, what its server answered (`None` if
/// the delivery panicked) and which courier is free again.
type Finished = (i64, Option<RoundResult>, usize);

/// A round for a courier, with the connections it may use.
type Errand = (AccountBatch, Arc<ConnectionPool>);

pub struct Lanes {
    /// Accounts on the wire: the claims of their rows, and the account's
    /// access-token renewal lease the round holds.
    on_wire: HashMap<i64, (HashMap<i64, RowClaim>, Option<String>)>,
    /// Claimed rounds waiting for their account (or a connection) to be free.
    waiting: Vec<AccountRound>,
    finished_sender: mpsc::Sender<Finished>,
    finished: mpsc::Receiver<Finished>,
    /// Readable when a delivery thread has finished.
    doorbell: UnixStream,
    doorbell_ringer: Arc<UnixStream>,
    /// Set on SIGTERM: the delivery threads start no further message.
    stopping: Arc<AtomicBool>,
    /// Every courier started, by number (a courier's thread lives as long as
    /// its entry; `None`: retired), and those without a round.
    couriers: Vec<Option<mpsc::Sender<Errand>>>,
    free_couriers: Vec<usize>,
}

impl Lanes {
    pub fn new() -> std::io::Result<Lanes> {
        let (finished_sender, finished) = mpsc::channel();
        let (doorbell, ringer) = UnixStream::pair()?;
        doorbell.set_nonblocking(true)?;
        ringer.set_nonblocking(true)?;
        Ok(Lanes {
            on_wire: HashMap::new(),
            waiting: Vec::new(),
            finished_sender,
            finished,
            doorbell,
            doorbell_ringer: Arc::new(ringer),
            stopping: Arc::new(AtomicBool::new(false)),
            couriers: Vec::new(),
            free_couriers: Vec::new(),
        })
    }

    /// The socket that becomes readable when a delivery finishes.
    pub fn doorbell(&self) -> RawFd {
        self.doorbell.as_raw_fd()
    }

    /// Accounts that already have a round waiting: the next claim leaves them out.
    pub fn accounts_waiting(&self) -> Vec<i64> {
        self.waiting.iter().map(|round| round.account_id).collect()
    }

    /// Accounts with a round on the wire or waiting to go.
    pub fn accounts(&self) -> Vec<i64> {
        let mut accounts = self.accounts_waiting();
        accounts.extend(self.on_wire.keys());
        accounts
    }

    /// Accounts with a round on the wire.
    pub fn accounts_on_wire(&self) -> Vec<i64> {
        self.on_wire.keys().copied().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.on_wire.is_empty() && self.waiting.is_empty()
    }

    pub fn on_wire(&self) -> usize {
        self.on_wire.len()
    }

    pub fn add(&mut self, rounds: Vec<AccountRound>) {
        self.waiting.extend(rounds);
    }

    /// Puts waiting rounds on the wire while their account and a connection are free.
    pub fn launch_waiting(&mut self, parallel: usize) {
        let mut still_waiting = Vec::new();
        for round in std::mem::take(&mut self.waiting) {
            if self.on_wire.contains_key(&round.account_id) || self.on_wire.len() >= parallel {
                still_waiting.push(round);
                continue;
            }
            let account_id = round.account_id;
            self.dispatch((round.batch, connections::pool()));
            self.on_wire.insert(account_id, (round.claims, round.renewal_lease));
        }
        self.waiting = still_waiting;
        self.retire_couriers(parallel);
    }

    /// Free couriers beyond `parallel` (smtp_connections was lowered) end.
    fn retire_couriers(&mut self, parallel: usize) {
        let mut alive = self.couriers.iter().filter(|courier| courier.is_some()).count();
        while alive > parallel {
            let Some(courier) = self.free_couriers.pop() else { break };
            // Dropping its channel ends its thread's loop.
            self.couriers[courier] = None;
            alive -= 1;
        }
    }

    /// Hands a round to a free courier, or to a new one.
    fn dispatch(&mut self, mut errand: Errand) {
        while let Some(courier) = self.free_couriers.pop() {
            let Some(errands) = &self.couriers[courier] else { continue };
            match errands.send(errand) {
                Ok(()) => return,
                // Its thread is gone (it cannot be, short of a bug): a new one takes it.
                Err(mpsc::SendError(back)) => {
                    self.couriers[courier] = None;
                    errand = back;
                }
            }
        }
        // A retired courier's number is free again (it had no round).
        let courier = self.couriers.iter().position(Option::is_none).unwrap_or(self.couriers.len());
        let (errands, inbox) = mpsc::channel::<Errand>();
        let (done, ringer) = (self.finished_sender.clone(), Arc::clone(&self.doorbell_ringer));
        let stopping = Arc::clone(&self.stopping);
        threads::spawn_without_signals(move || {
            // Until the sender drops the courier's channel (retired, or at exit).
            for (batch, pool) in inbox {
                let account_id = batch.account_id;
                let delivered = std::panic::catch_unwind(AssertUnwindSafe(|| deliver_account(batch, &pool, &stopping)));
                if done.send((account_id, delivered.ok(), courier)).is_err() {
                    return;
                }
                // A full socket buffer already means "look".
                let _ = (&*ringer).write(&[1]);
            }
        });
        errands.send(errand).expect("a courier just started takes its first round");
        if courier == self.couriers.len() {
            self.couriers.push(Some(errands));
        } else {
            self.couriers[courier] = Some(errands);
        }
    }

    /// What the delivery threads have reported so far (never waits).
    pub fn collect_finished(&mut self) -> Delivered {
        let mut bytes = [0u8; 256];
        while matches!((&self.doorbell).read(&mut bytes), Ok(read) if read > 0) {}
        let reports: Vec<Finished> = self.finished.try_iter().collect();
        self.delivered(reports)
    }

    /// On shutdown: tells the delivery threads to start no further message,
    /// returns the waiting rounds' claims (never on the wire: to be handed
    /// back) and what the accounts on the wire report within `limit`.
    pub fn finish(&mut self, limit: Duration) -> (HashMap<i64, RowClaim>, Delivered) {
        self.stopping.store(true, Ordering::Relaxed);
        let mut never_started = HashMap::new();
        for round in self.waiting.drain(..) {
            never_started.extend(round.claims);
            if round.renewal_lease.is_some() {
                // Its lease lapses by itself; nobody renews meanwhile.
                log!(
                    "email_accounts sender: stopping with the token renewal lease of account {} unused",
                    round.account_id
                );
            }
        }
        let deadline = Instant::now() + limit;
        let mut reports = Vec::new();
        while reports.len() < self.on_wire.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.finished.recv_timeout(left) {
                Ok(report) => reports.push(report),
                Err(_) => break,
            }
        }
        (never_started, self.delivered(reports))
    }

    fn delivered(&mut self, reports: Vec<Finished>) -> Delivered {
        let mut delivered = Delivered::default();
        for (account_id, round, courier) in reports {
            self.free_couriers.push(courier);
            let (claims, lease) = self.on_wire.remove(&account_id).unwrap_or_default();
            let round = round.unwrap_or_else(|| {
                warning!(
                    "email_accounts sender: the delivery thread of account {account_id} failed; its rows are retried"
                );
                // They may have gone out: retried (attempt counted), as after a crash.
                let failure = ConnectionError::Protocol("the delivery thread failed; sent again".to_owned());
                let outcomes =
                    claims.keys().map(|outbox_id| (*outbox_id, JobOutcome::NotAttempted(failure.clone()))).collect();
                RoundResult { outcomes, tokens: Default::default() }
            });
            let token_reports = if lease.is_some() || round.tokens != Default::default() {
                vec![(account_id, round.tokens, lease)]
            } else {
                Vec::new()
            };
            delivered.extend(Delivered { claims, results: round.outcomes, token_reports });
        }
        if !delivered.is_empty() {
            connections::used_now();
        }
        delivered
    }
}
