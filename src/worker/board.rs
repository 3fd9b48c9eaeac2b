//! The worker board: shared memory that says, for every database the
//! launcher serves, whether the extension is there and what each of its
//! workers is doing, so that SQL functions can show it (worker_status) and
//! wake the right process. Unless named, a function means the database the
//! calling process is connected to.

use super::role::WorkerId;
use crate::settings::MAX_SENDERS;
use pgrx::atomics::PgAtomic;
use pgrx::lwlock::PgLwLock;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use std::sync::atomic::{AtomicU64, Ordering};

/// Databases the launcher can serve at once.
pub const DATABASE_SLOTS: usize = 128;

/// Worker slots of one database: the receiver, then the senders.
pub const WORKERS_PER_DATABASE: usize = 1 + MAX_SENDERS;

/// Commands that can hold one database's workers off at once.
pub const PAUSE_SLOTS: usize = 8;

/// Databases the board remembers as being without the extension.
pub const ABSENT_SLOTS: usize = 1024;

/// Accounts the senders of all databases can hold at once (each on one
/// sender): a sender holds about twice smtp_connections (on the wire, waiting).
pub const ACCOUNT_SLOTS: usize = 4096;

/// What a worker is doing right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum WorkerState {
    /// Never started since the server started.
    #[default]
    NotStarted,
    /// The launcher asked the postmaster for it; it has not connected yet.
    Starting,
    /// The postmaster had no free background worker process for it
    /// (max_worker_processes); the launcher tries again.
    NoWorkerProcess,
    /// The database has the extension at another version than this library:
    /// waiting for `ALTER EXTENSION email_accounts UPDATE`.
    WaitingForUpdate,
    /// A dump is being restored into the database: waiting for it to end.
    WaitingForRestore,
    /// The database is a copy of another one this cluster serves: holding off.
    HeldAsCopy,
    /// Connected to a database with the extension; waiting for work.
    Idle,
    /// Stopped (SIGTERM, or the extension is gone); the launcher starts it again when needed.
    Stopped,
}

impl WorkerState {
    pub fn label(self) -> &'static str {
        match self {
            WorkerState::NotStarted => "not started",
            WorkerState::Starting => "starting",
            WorkerState::NoWorkerProcess => "no background worker process free (max_worker_processes)",
            WorkerState::WaitingForUpdate => "waiting for ALTER EXTENSION UPDATE",
            WorkerState::WaitingForRestore => "waiting for a restore to end",
            WorkerState::HeldAsCopy => "held: a copy of another database of this cluster (adopt_database())",
            WorkerState::Idle => "idle",
            WorkerState::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerSlot {
    pub pid: i32,
    pub state: WorkerState,
    /// `pg_sys::TimestampTz` of the worker's start, 0 when never started.
    pub started_at: i64,
    /// How many times this worker re-read the configuration after SIGHUP.
    pub config_reloads: i64,
    /// The fallback poll interval the worker is using now, in milliseconds.
    pub fallback_poll_interval_ms: i64,
    /// Times a commit, flush() or sync_now() asked this worker to wake.
    pub wake_requests: i64,
    /// Times the worker woke because its latch was set: by the requests above,
    /// and by PostgreSQL itself (e.g. a catch-up signal after much DDL).
    pub latch_wakeups: i64,
    /// Times the worker woke because its fallback poll interval passed.
    pub timeouts: i64,
    /// The worker's PGPROC number, so other backends can set its latch.
    pub process_number: i32,
    /// `MyStartTimestamp` of the worker's process: what `pg_stat_activity`
    /// says it started at, stamped on the rows it claims.
    pub process_started_at: i64,
    /// A sender with nothing to send (email_accounts.claim_on_insert): the
    /// inserting transaction may claim its new rows for it.
    pub takes_new_mail: bool,
    /// A committed transaction claimed rows for this sender on insert.
    pub new_mail: bool,
    /// ... and queued others (past its share of claims on insert).
    pub new_mail_queued_too: bool,
    /// ... for the sender that had this slot before: this one takes them back.
    pub predecessors_new_mail: bool,
    /// A transaction that claimed rows for this sender is committing: it
    /// woke the sender before its commit's flush (new_mail_committing).
    pub new_mail_committing: bool,
    /// Of `wake_requests`, those that told of rows claimed on insert.
    pub new_mail_tells: i64,
    /// The accounts of the rows those committing transactions claimed for
    /// it (0: a free place; more are not told): the sender reads their
    /// settings during the commit's flush.
    pub new_mail_accounts: [i64; ACCOUNTS_TOLD],
}

/// Accounts a sender is told ahead of commits, at most.
pub const ACCOUNTS_TOLD: usize = 4;

/// Adds `accounts` to `into` while there is room (0 is no account).
pub fn add_accounts(into: &mut [i64; ACCOUNTS_TOLD], accounts: &[i64]) {
    for &account in accounts.iter().filter(|&&account| account != 0) {
        if into.contains(&account) {
            continue;
        }
        match into.iter_mut().find(|place| **place == 0) {
            Some(place) => *place = account,
            None => return,
        }
    }
}

impl WorkerSlot {
    /// How many times the worker was asked to wake for anything but rows
    /// claimed on insert (ever).
    fn other_wake_requests(&self) -> i64 {
        self.wake_requests - self.new_mail_tells
    }
}

/// Whether a database has the extension, as far as the board knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Extension {
    /// Not known yet: the launcher's first worker there finds out.
    #[default]
    Unknown,
    Present,
    Absent,
}

/// An account one sender of a database is sending through.
#[derive(Debug, Clone, Copy, Default)]
struct HeldAccount {
    database: u32,
    account_id: i64,
    /// The holding sender's process id (0: a free slot); a held account
    /// whose sender is no longer in its slot is free.
    pid: i32,
    instance: u8,
}

/// One database the launcher serves (or is finding out about).
#[derive(Debug, Clone, Copy)]
pub struct DatabaseEntry {
    /// The database's oid; 0 for a free entry.
    pub oid: u32,
    pub extension: Extension,
    /// Counts changes of `extension` by committed DDL, so a worker's
    /// conclusion from an older look at the catalog cannot undo a newer one.
    pub generation: u64,
    /// The backends running utility commands (DROP DATABASE, CREATE DATABASE
    /// … TEMPLATE, ALTER DATABASE … RENAME) that need the database without
    /// connections (0: a free slot); their exit clears them.
    paused_by: [i32; PAUSE_SLOTS],
    /// The account whose routing code the receiver is running now (0: none).
    /// Still set when a new receiver starts: the old one was stopped inside it.
    routing_account: i64,
    /// The sender a commit wakes next (round robin).
    next_sender: u32,
    pub workers: [WorkerSlot; WORKERS_PER_DATABASE],
}

impl DatabaseEntry {
    /// Whether DDL holds the database's workers off.
    fn is_paused(&self) -> bool {
        self.paused_by.iter().any(|pid| *pid != 0)
    }

    /// The process ids of its running workers.
    fn worker_pids(&self) -> Vec<i32> {
        self.workers.iter().map(|slot| slot.pid).filter(|&pid| pid != 0).collect()
    }
}

impl Default for DatabaseEntry {
    fn default() -> Self {
        DatabaseEntry {
            oid: 0,
            extension: Extension::Unknown,
            generation: 0,
            paused_by: [0; PAUSE_SLOTS],
            routing_account: 0,
            next_sender: 0,
            workers: [WorkerSlot::default(); WORKERS_PER_DATABASE],
        }
    }
}

/// Where a `sync_now()` request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum SyncRequestState {
    #[default]
    Free,
    Requested,
    Running,
    Done,
}

/// One `sync_now()` call waiting for a receiver.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncRequest {
    pub database: u32,
    pub account_id: i64,
    pub state: SyncRequestState,
    /// The waiting backend's PGPROC number, whose latch is set when done.
    pub requester_process_number: i32,
}

/// Concurrent `sync_now()` calls the board can hold.
pub const SYNC_REQUEST_SLOTS: usize = 64;

/// Accounts whose routing code a receiver had to be stopped for, at most.
pub const SUSPENSION_SLOTS: usize = 32;

/// An account whose append_to / on_receive code is not run until `until`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoutingSuspension {
    pub database: u32,
    pub account_id: i64,
    /// `pg_sys::TimestampTz`; 0 for a free slot.
    pub until: i64,
}

#[derive(Debug, Clone, Copy)]
pub struct WorkerBoard {
    launcher: WorkerSlot,
    databases: [DatabaseEntry; DATABASE_SLOTS],
    /// A backend found no free entry for a database that has the extension.
    overflowed: bool,
    /// Databases whose first worker found no extension (0: a free slot).
    absent: [u32; ABSENT_SLOTS],
    held_accounts: [HeldAccount; ACCOUNT_SLOTS],
    sync_requests: [SyncRequest; SYNC_REQUEST_SLOTS],
    suspensions: [RoutingSuspension; SUSPENSION_SLOTS],
    /// The sender processes started since shared memory was made (at
    /// server start, and anew after a crash restart), the oldest forgotten
    /// first, each with the rows it has taken: a claim on insert for one of
    /// them that it does not list was never taken (see `claim_never_taken`).
    senders_started: [SenderStart; SENDER_STARTS],
    next_sender_start: usize,
    /// Transactions that change what the sender reads of accounts (their
    /// settings), in any database, between their PRE_COMMIT and their end;
    /// and how many such changes ever began. A sender's read of settings
    /// ahead of a commit is good for its take only if none was under way
    /// when the read began and none began since (settings_changes). Kept
    /// for the whole cluster, so that no database entry coming or going
    /// between a change's beginning and its end unbalances them.
    settings_changes_under_way: u32,
    settings_changes_begun: u64,
}

/// One sender process: its database, process id and start (MyStartTimestamp),
/// and the rows claimed on insert it has taken and not yet recorded or
/// handed back (the places `listed` marks; any id may be listed, 0 too). A
/// take writes nothing to such a row (it keeps no token): this list is what
/// tells it apart from one never taken.
#[derive(Debug, Clone, Copy, Default)]
struct SenderStart {
    database: u32,
    pid: i32,
    started_at: i64,
    taken: [i64; TAKEN_WITHOUT_TOKEN],
    listed: u32,
}

impl SenderStart {
    fn is(&self, database: u32, pid: i32, started_at: i64) -> bool {
        self.database == database && self.pid == pid && self.started_at == started_at
    }

    fn listed_ids(&self) -> impl Iterator<Item = i64> + '_ {
        (0..TAKEN_WITHOUT_TOKEN).filter(|place| self.listed & (1 << place) != 0).map(|place| self.taken[place])
    }

    fn lists(&self, outbox_id: i64) -> bool {
        self.listed_ids().any(|listed| listed == outbox_id)
    }

    /// Lists the ids in free places (as many as fit).
    fn list(&mut self, outbox_ids: &[i64]) {
        let mut ids = outbox_ids.iter();
        for place in 0..TAKEN_WITHOUT_TOKEN {
            if self.listed & (1 << place) == 0 {
                let Some(&outbox_id) = ids.next() else { return };
                self.taken[place] = outbox_id;
                self.listed |= 1 << place;
            }
        }
    }

    fn unlist(&mut self, outbox_ids: &[i64]) {
        for place in 0..TAKEN_WITHOUT_TOKEN {
            if self.listed & (1 << place) != 0 && outbox_ids.contains(&self.taken[place]) {
                self.listed &= !(1 << place);
            }
        }
    }
}

/// Rows claimed on insert one sender can have taken at once (each inserting
/// transaction claims at most 10; a take that finds more gives the rest
/// back to the queue, for the claim). At most 32: the places `listed` marks.
pub const TAKEN_WITHOUT_TOKEN: usize = 32;

/// Sender processes the board remembers (a ring that passes over senders
/// still running; forgetting one that stopped only makes its never-taken
/// claims count as attempts, the safe side).
pub const SENDER_STARTS: usize = 1024;

// More places than senders can run at once: the ring always finds one that
// holds no running sender (the starting one is not in it yet).
const _: () = assert!(SENDER_STARTS >= DATABASE_SLOTS * MAX_SENDERS);

impl Default for WorkerBoard {
    fn default() -> Self {
        WorkerBoard {
            launcher: WorkerSlot::default(),
            databases: [DatabaseEntry::default(); DATABASE_SLOTS],
            overflowed: false,
            absent: [0; ABSENT_SLOTS],
            held_accounts: [HeldAccount::default(); ACCOUNT_SLOTS],
            sync_requests: [SyncRequest::default(); SYNC_REQUEST_SLOTS],
            suspensions: [RoutingSuspension::default(); SUSPENSION_SLOTS],
            senders_started: [SenderStart::default(); SENDER_STARTS],
            next_sender_start: 0,
            settings_changes_under_way: 0,
            settings_changes_begun: 0,
        }
    }
}

impl WorkerBoard {
    /// Remembers a sender that starts, in the ring's next place that holds
    /// no sender still running (whose list of rows taken must not be lost:
    /// a stop gives back, uncounted, the claims it does not list).
    fn remember_sender_start(&mut self, started: SenderStart) {
        let running = |start: &SenderStart| {
            start.pid != 0
                && self.databases.iter().any(|entry| {
                    entry.oid == start.database
                        && entry
                            .workers
                            .iter()
                            .any(|worker| worker.pid == start.pid && worker.process_started_at == start.started_at)
                })
        };
        let place = (0..SENDER_STARTS)
            .map(|step| (self.next_sender_start + step) % SENDER_STARTS)
            .find(|&place| !running(&self.senders_started[place]))
            // (Unreachable: see SENDER_STARTS. Forgotten, a sender takes no
            // new mail, and its claims count as taken.)
            .unwrap_or(self.next_sender_start);
        self.senders_started[place] = started;
        self.next_sender_start = (place + 1) % SENDER_STARTS;
    }

    /// Remembers a database as being without the extension (if there is room).
    fn remember_absent(&mut self, database: u32) {
        if self.absent.contains(&database) {
            return;
        }
        if let Some(index) = self.absent.iter().position(|slot| *slot == 0) {
            self.absent[index] = database;
        }
    }

    fn release_accounts_of(&mut self, pid: i32) {
        for held in self.held_accounts.iter_mut().filter(|held| held.pid == pid && pid != 0) {
            *held = HeldAccount::default();
        }
    }

    /// Whether the sender holding `held` is still in its slot.
    fn live(&self, held: &HeldAccount) -> bool {
        self.entry(held.database)
            .is_some_and(|entry| entry.workers[WorkerId::sender(held.database, held.instance).slot()].pid == held.pid)
    }

    fn entry(&self, database: u32) -> Option<&DatabaseEntry> {
        self.databases.iter().find(|entry| entry.oid == database && database != 0)
    }

    fn entry_mut(&mut self, database: u32) -> Option<&mut DatabaseEntry> {
        self.databases.iter_mut().find(|entry| entry.oid == database && database != 0)
    }

    /// The database's entry, a free one taken for it if it has none.
    fn entry_or_new(&mut self, database: u32) -> Option<&mut DatabaseEntry> {
        let index = self
            .databases
            .iter()
            .position(|entry| entry.oid == database)
            .or_else(|| self.databases.iter().position(|entry| entry.oid == 0))?;
        let entry = &mut self.databases[index];
        if entry.oid != database {
            *entry = DatabaseEntry { oid: database, ..DatabaseEntry::default() };
        }
        Some(entry)
    }
}

// SAFETY: plain-old-data with no pointers; it lives in PostgreSQL's shared memory.
unsafe impl PGRXSharedMemory for WorkerBoard {}

pub static WORKER_BOARD: PgLwLock<WorkerBoard> =
    // SAFETY: the name is unique to this extension and the lock is initialised in _PG_init.
    unsafe { PgLwLock::new(c"email_accounts_worker_board") };

/// Counts the commits that told a sender of rows claimed for it, bumped
/// after the board says so: a sender woken before such a commit ended
/// watches it without a lock (new_mail_told).
static NEW_MAIL_TOLD: PgAtomic<AtomicU64> =
    // SAFETY: the name is unique to this extension and the atomic is initialised in _PG_init.
    unsafe { PgAtomic::new(c"email_accounts_new_mail_told") };

pub fn initialize_shared_memory() {
    pgrx::pg_shmem_init!(WORKER_BOARD);
    pgrx::pg_shmem_init!(NEW_MAIL_TOLD);
}

/// The database this process is connected to.
pub fn my_database() -> u32 {
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

fn now() -> i64 {
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// A fresh slot for the calling process.
fn fresh_slot(state: WorkerState, fallback_poll_interval_ms: i64) -> WorkerSlot {
    WorkerSlot {
        pid: unsafe { pg_sys::MyProcPid },
        state,
        started_at: now(),
        fallback_poll_interval_ms,
        process_number: unsafe { (*pg_sys::MyProc).pgprocno },
        process_started_at: unsafe { pg_sys::MyStartTimestamp },
        ..WorkerSlot::default()
    }
}

// ---- the launcher's own slot -------------------------------------------

pub fn launcher_started(fallback_poll_interval_ms: i64) {
    WORKER_BOARD.exclusive().launcher = fresh_slot(WorkerState::Idle, fallback_poll_interval_ms);
}

pub fn read_launcher() -> WorkerSlot {
    WORKER_BOARD.share().launcher
}

/// Changes a slot under the exclusive lock: a database worker's (if its
/// database has an entry), or with `None` the launcher's.
pub fn update_slot(worker: Option<WorkerId>, change: impl FnOnce(&mut WorkerSlot)) {
    let mut board = WORKER_BOARD.exclusive();
    match worker {
        None => change(&mut board.launcher),
        Some(id) => {
            if let Some(entry) = board.entry_mut(id.database) {
                change(&mut entry.workers[id.slot()]);
            }
        }
    }
}

/// Sets the launcher's latch (after DDL that may change what it serves).
pub fn wake_launcher() {
    let launcher = read_launcher();
    if launcher.pid != 0 {
        set_latch_of(launcher.process_number);
    }
}

// ---- one worker's slot ---------------------------------------------------

/// A copy of one worker's slot (None: its database has no entry).
pub fn read(id: WorkerId) -> Option<WorkerSlot> {
    WORKER_BOARD.share().entry(id.database).map(|entry| entry.workers[id.slot()])
}

/// Changes one worker's slot under the exclusive lock (if its database has an entry).
pub fn update(id: WorkerId, change: impl FnOnce(&mut WorkerSlot)) {
    update_slot(Some(id), change);
}

/// Takes the worker's slot for the calling process: when it starts
/// (`fresh`), and again on every wake-up, for when its database's entry was
/// made anew while it ran (the extension dropped and created again). False
/// when another live process has the slot (a worker of it still finishing).
pub fn take_slot(id: WorkerId, fresh: bool, fallback_poll_interval_ms: i64, alive: impl Fn(i32) -> bool) -> bool {
    let me = unsafe { pg_sys::MyProcPid };
    let mut board = WORKER_BOARD.exclusive();
    let Some(entry) = board.entry_mut(id.database) else { return false };
    let slot = &mut entry.workers[id.slot()];
    if slot.pid == me && !fresh {
        return true;
    }
    if slot.pid != 0 && slot.pid != me && alive(slot.pid) {
        return false;
    }
    *slot = fresh_slot(if fresh { WorkerState::Starting } else { WorkerState::Idle }, fallback_poll_interval_ms);
    if id.role == super::role::Role::Sender {
        let started_at = slot.process_started_at;
        if !board.senders_started.iter().any(|start| start.is(id.database, me, started_at)) {
            board.remember_sender_start(SenderStart {
                database: id.database,
                pid: me,
                started_at,
                ..SenderStart::default()
            });
        }
    }
    true
}

/// A worker that leaves (also on an error exit): its slot, if still its
/// own, says stopped, and its accounts are free.
pub fn stopped(id: WorkerId) {
    let me = unsafe { pg_sys::MyProcPid };
    let mut board = WORKER_BOARD.exclusive();
    if let Some(entry) = board.entry_mut(id.database) {
        let slot = &mut entry.workers[id.slot()];
        if slot.pid == me {
            slot.state = WorkerState::Stopped;
            slot.pid = 0;
        }
    }
    board.release_accounts_of(me);
}

// ---- waking --------------------------------------------------------------

/// Sets the latch of the process with this PGPROC number.
fn set_latch_of(process_number: i32) {
    // SAFETY: ProcGlobal->allProcs has an entry for every PGPROC number, and
    // setting a latch of a process that has exited is harmless.
    unsafe {
        let process = (*pg_sys::ProcGlobal).allProcs.add(process_number as usize);
        pg_sys::SetLatch(&mut (*process).procLatch);
    }
}

/// Wakes the database's receiver, if it runs; true when it was woken.
pub fn wake_receiver(database: u32) -> bool {
    wake_where(database, |entry| [WorkerId::receiver(entry.oid).slot()].to_vec())
}

/// Wakes one running sender of the database, each call the next one
/// (they share the outbox; one that finds more than it can take wakes another).
pub fn wake_sender(database: u32) -> bool {
    wake_next_sender(database, None)
}

/// Wakes the next running sender other than `me` (one that found more
/// waiting than it could take on).
pub fn wake_other_sender(me: WorkerId) -> bool {
    wake_next_sender(me.database, Some(me.slot()))
}

fn wake_next_sender(database: u32, except: Option<usize>) -> bool {
    wake_where(database, |entry| {
        let running: Vec<usize> = (0..MAX_SENDERS)
            .map(|instance| WorkerId::sender(entry.oid, instance as u8).slot())
            .filter(|&slot| entry.workers[slot].pid != 0 && Some(slot) != except)
            .collect();
        if running.is_empty() {
            return Vec::new();
        }
        entry.next_sender = entry.next_sender.wrapping_add(1);
        vec![running[entry.next_sender as usize % running.len()]]
    })
}

/// Wakes every running sender of the database (flush()).
pub fn wake_senders(database: u32) -> bool {
    wake_where(database, |entry| {
        (0..MAX_SENDERS).map(|instance| WorkerId::sender(entry.oid, instance as u8).slot()).collect()
    })
}

/// Wakes every worker of the database (the extension changed). Latches are
/// set with the board's lock held, as every wake request counted on it: a
/// sender may reset its latch once it has read the board (sender/mod.rs).
fn wake_all(entry: &mut DatabaseEntry) {
    for slot in entry.workers.iter_mut().filter(|slot| slot.pid != 0) {
        slot.wake_requests += 1;
        set_latch_of(slot.process_number);
    }
}

/// Sets the latches of the running workers `choose` names (with the board's
/// lock held, see `wake_all`); true when any was.
fn wake_where(database: u32, choose: impl FnOnce(&mut DatabaseEntry) -> Vec<usize>) -> bool {
    let mut board = WORKER_BOARD.exclusive();
    let Some(entry) = board.entry_mut(database) else { return false };
    let mut woken = false;
    for index in choose(entry) {
        let slot = &mut entry.workers[index];
        if slot.pid != 0 {
            slot.wake_requests += 1;
            set_latch_of(slot.process_number);
            woken = true;
        }
    }
    woken
}

// ---- whether a database has the extension -------------------------------

/// A committed transaction created or dropped the extension in `database`
/// (or may have: DROP SCHEMA … CASCADE) and `present` is what it left. The
/// launcher and the database's workers are woken when that changes what the
/// board knew, or always with `wake` (ALTER EXTENSION UPDATE). Called at
/// commit: never raises an error.
pub fn publish_extension(database: u32, present: bool, wake: bool) {
    let state = if present { Extension::Present } else { Extension::Absent };
    // Most DDL of the cluster changes nothing here: a shared look first.
    if !wake {
        let board = WORKER_BOARD.share();
        match board.entry(database).map(|entry| entry.extension) {
            None if !present => return,
            Some(extension) if extension == state => return,
            _ => {}
        }
    }
    {
        let mut board = WORKER_BOARD.exclusive();
        let known = board.entry(database).map(|entry| entry.extension);
        match known {
            // Nothing to serve, nothing running: no entry needed.
            None if !present => return,
            Some(extension) if extension == state && !wake => return,
            _ => {}
        }
        if present {
            for slot in board.absent.iter_mut().filter(|slot| **slot == database) {
                *slot = 0;
            }
        }
        match board.entry_or_new(database) {
            Some(entry) => {
                entry.extension = state;
                entry.generation += 1;
                wake_all(entry);
            }
            None => board.overflowed = true,
        }
    }
    wake_launcher();
}

/// The database's extension state and its generation (None: no entry).
pub fn extension_of(database: u32) -> Option<(Extension, u64)> {
    WORKER_BOARD.share().entry(database).map(|entry| (entry.extension, entry.generation))
}

/// A worker looked at the catalog after reading `generation`: records what
/// it found unless committed DDL published something newer meanwhile.
/// Returns the state on the board before and after.
pub fn extension_seen(database: u32, generation: u64, present: bool) -> (Extension, Extension) {
    let mut board = WORKER_BOARD.exclusive();
    let Some(entry) = board.entry_mut(database) else { return (Extension::Absent, Extension::Absent) };
    let was = entry.extension;
    if entry.generation == generation {
        entry.extension = if present { Extension::Present } else { Extension::Absent };
    }
    (was, entry.extension)
}

/// Whether a database is known to be without the extension.
pub fn is_absent(database: u32) -> bool {
    database != 0 && WORKER_BOARD.share().absent.contains(&database)
}

/// Forgets databases that no longer exist (their oids may come back).
pub fn keep_absent(existing: &[u32]) {
    for slot in WORKER_BOARD.exclusive().absent.iter_mut() {
        if *slot != 0 && !existing.contains(slot) {
            *slot = 0;
        }
    }
}

/// Whether some backend found no free entry for a database (said once).
pub fn take_overflow() -> bool {
    std::mem::take(&mut WORKER_BOARD.exclusive().overflowed)
}

// ---- the launcher's view --------------------------------------------------

/// What the launcher needs to know of one entry.
#[derive(Debug, Clone, Copy)]
pub struct EntryView {
    pub oid: u32,
    pub extension: Extension,
    pub generation: u64,
    pub paused: bool,
    pub workers: [WorkerSlot; WORKERS_PER_DATABASE],
}

/// Every entry in use.
pub fn entries() -> Vec<EntryView> {
    WORKER_BOARD
        .share()
        .databases
        .iter()
        .filter(|entry| entry.oid != 0)
        .map(|entry| EntryView {
            oid: entry.oid,
            extension: entry.extension,
            generation: entry.generation,
            paused: entry.is_paused(),
            workers: entry.workers,
        })
        .collect()
}

/// An entry for a database the launcher is about to look at; false when
/// every entry is taken.
pub fn add_database(database: u32) -> bool {
    WORKER_BOARD.exclusive().entry_or_new(database).is_some()
}

/// DROP DATABASE is about to commit: the database is forgotten, and
/// remembered as without the extension until its oid is gone from pg_database.
pub fn database_dropped(database: u32) {
    let mut board = WORKER_BOARD.exclusive();
    if let Some(entry) = board.entry_mut(database) {
        *entry = DatabaseEntry::default();
    }
    board.remember_absent(database);
}

/// Forgets a database as the launcher saw it: only if no DDL published
/// anything since (`generation`); remembered as without the extension when
/// it was. The process ids of the workers it had, to be stopped; `None`
/// when the entry changed meanwhile (it is looked at again).
pub fn forget_database(database: u32, generation: u64) -> Option<Vec<i32>> {
    let mut board = WORKER_BOARD.exclusive();
    let Some(entry) = board.entry_mut(database) else { return Some(Vec::new()) };
    if entry.generation != generation {
        return None;
    }
    let absent = entry.extension == Extension::Absent;
    let pids = entry.worker_pids();
    *entry = DatabaseEntry::default();
    if absent {
        board.remember_absent(database);
    }
    Some(pids)
}

/// A worker process that ended without saying so (an error, or the
/// launcher saw its handle stop): its slot is cleared and its accounts freed.
pub fn worker_gone(id: WorkerId) {
    let mut board = WORKER_BOARD.exclusive();
    if let Some(entry) = board.entry_mut(id.database) {
        let slot = &mut entry.workers[id.slot()];
        let pid = std::mem::take(&mut slot.pid);
        if slot.state != WorkerState::NotStarted && slot.state != WorkerState::NoWorkerProcess {
            slot.state = WorkerState::Stopped;
        }
        board.release_accounts_of(pid);
    }
}

// ---- holding a database's workers off for DDL that needs it empty --------

/// Holds the database's workers off for the calling backend; false when it
/// has no entry or too many commands hold it already.
pub fn pause(database: u32) -> bool {
    let me = unsafe { pg_sys::MyProcPid };
    let mut board = WORKER_BOARD.exclusive();
    let Some(entry) = board.entry_mut(database) else { return false };
    let Some(free) = entry.paused_by.iter().position(|pid| *pid == 0) else { return false };
    entry.paused_by[free] = me;
    true
}

/// The process ids of the database's running workers.
pub fn worker_pids(database: u32) -> Vec<i32> {
    WORKER_BOARD.share().entry(database).map(DatabaseEntry::worker_pids).unwrap_or_default()
}

/// Whether DDL holds the database's workers off (or it has no entry).
pub fn paused(database: u32) -> bool {
    WORKER_BOARD.share().entry(database).is_none_or(DatabaseEntry::is_paused)
}

/// The calling backend's hold on the database ends.
pub fn resume(database: u32) {
    let me = unsafe { pg_sys::MyProcPid };
    if let Some(entry) = WORKER_BOARD.exclusive().entry_mut(database) {
        if let Some(slot) = entry.paused_by.iter_mut().find(|pid| **pid == me) {
            *slot = 0;
        }
    }
    wake_launcher();
}

/// Holds of backends for which `gone` says they have exited (a FATAL
/// between pause and resume) end; returns whether any did.
pub fn end_pauses_of(gone: impl Fn(i32) -> bool) -> bool {
    let mut ended = false;
    for entry in WORKER_BOARD.exclusive().databases.iter_mut().filter(|entry| entry.oid != 0) {
        for pid in entry.paused_by.iter_mut().filter(|pid| **pid != 0 && gone(**pid)) {
            *pid = 0;
            ended = true;
        }
    }
    ended
}

// ---- rows claimed by the inserting transaction --------------------------------

/// A sender of the database that takes new mail as it is inserted (idle,
/// nothing held off): its slot, process id and process start.
pub fn sender_taking_new_mail(database: u32) -> Option<(usize, i32, i64)> {
    let board = WORKER_BOARD.share();
    let entry = board.entry(database)?;
    (0..MAX_SENDERS).map(|instance| WorkerId::sender(database, instance as u8).slot()).find_map(|slot| {
        let worker = &entry.workers[slot];
        (worker.pid != 0 && worker.takes_new_mail && worker.state == WorkerState::Idle).then_some((
            slot,
            worker.pid,
            worker.process_started_at,
        ))
    })
}

/// Whether the row `outbox_id`, claimed on insert for the sender process
/// `pid` that started at `started_at` and without a token, was never taken
/// by it: that sender started in `database` since shared memory was made
/// (server start or crash restart) and does not list the row as taken. A
/// process of an earlier incarnation of the server, of another cluster (a
/// restored dump) or one forgotten is not known: its claims count as
/// attempts, the safe side (a crash loses the lists with the board).
pub fn claim_never_taken(database: u32, pid: i32, started_at: i64, outbox_id: i64) -> bool {
    pid != 0
        && WORKER_BOARD
            .share()
            .senders_started
            .iter()
            .find(|start| start.is(database, pid, started_at))
            .is_some_and(|start| !start.lists(outbox_id))
}

thread_local! {
    /// Where this sender's entry was last found among the senders started.
    static MY_START_PLACE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// This process as a sender start names it: database, process id, start.
fn this_process() -> (u32, i32, i64) {
    (my_database(), unsafe { pg_sys::MyProcPid }, unsafe { pg_sys::MyStartTimestamp })
}

/// The calling sender's entry among the senders started, if remembered
/// (looked for where it was last found first).
fn my_start(board: &mut WorkerBoard) -> Option<&mut SenderStart> {
    let (database, pid, started_at) = this_process();
    let last = MY_START_PLACE.with(std::cell::Cell::get);
    let place = if board.senders_started[last].is(database, pid, started_at) {
        last
    } else {
        let found = board.senders_started.iter().position(|start| start.is(database, pid, started_at))?;
        MY_START_PLACE.with(|cell| cell.set(found));
        found
    };
    Some(&mut board.senders_started[place])
}

/// The rows claimed on insert this sender has taken and not yet recorded or
/// handed back, and how many more it may take; None when the board has
/// forgotten this sender (then its claims all count as taken, and it may
/// take none without a token).
pub fn taken_without_token() -> Option<(Vec<i64>, usize)> {
    let mut board = WORKER_BOARD.exclusive();
    let start = my_start(&mut board)?;
    let taken: Vec<i64> = start.listed_ids().collect();
    let room = TAKEN_WITHOUT_TOKEN - taken.len();
    Some((taken, room))
}

/// For tests: the calling backend is remembered as a sender that started here.
#[cfg(any(test, feature = "pg_test"))]
pub fn remember_this_backend_as_a_sender() {
    let (database, pid, started_at) = this_process();
    let mut board = WORKER_BOARD.exclusive();
    if !board.senders_started.iter().any(|start| start.is(database, pid, started_at)) {
        board.remember_sender_start(SenderStart { database, pid, started_at, ..SenderStart::default() });
    }
}

/// Lists rows as taken by this sender. Called by its take while the rows'
/// locks are held, before it commits: cancel() locks a row before it asks
/// claim_never_taken, so it sees either the row not taken or the list.
/// (They fit: the take asked for room first, and only this sender writes
/// its list. A sender the board forgot has no list: its claims all count
/// as taken.)
pub fn mark_taken(outbox_ids: &[i64]) {
    let mut board = WORKER_BOARD.exclusive();
    if let Some(start) = my_start(&mut board) {
        start.list(outbox_ids);
    }
}

/// Rows no longer out for this sender: their result or their hand-back has
/// committed (or the take that listed them did not). Unlisted ids are ignored.
pub fn unmark_taken(outbox_ids: &[i64]) {
    if outbox_ids.is_empty() {
        return;
    }
    let mut board = WORKER_BOARD.exclusive();
    if let Some(start) = my_start(&mut board) {
        start.unlist(outbox_ids);
    }
}

/// Whether the sender takes new mail as it is inserted (said after each step).
/// Returns what it said before.
/// (Never while the board has forgotten this sender: it could not list
/// what it takes.)
pub fn set_takes_new_mail(id: WorkerId, takes: bool) -> bool {
    let me = unsafe { pg_sys::MyProcPid };
    let mut board = WORKER_BOARD.exclusive();
    let takes = takes && my_start(&mut board).is_some();
    match board.entry_mut(id.database).map(|entry| &mut entry.workers[id.slot()]) {
        Some(slot) if slot.pid == me => std::mem::replace(&mut slot.takes_new_mail, takes),
        _ => false,
    }
}

/// At commit of a transaction that claimed rows on insert for the sender
/// in `slot` (process `pid`): it is told and woken (this is the
/// transaction's one wake-up request). False when no sender runs in that
/// slot. Never raises.
pub fn new_mail_committed(database: u32, slot: usize, pid: i32, started_at: i64, queued_too: bool) -> bool {
    {
        let mut board = WORKER_BOARD.exclusive();
        let Some(entry) = board.entry_mut(database) else { return false };
        let worker = &entry.workers[slot];
        let same = worker.pid == pid && worker.process_started_at == started_at;
        // It stopped: its successor takes the rows back now, or, with no
        // successor in its slot (fewer senders now), any running sender.
        let teller = if same || worker.pid != 0 {
            slot
        } else {
            match (0..MAX_SENDERS)
                .map(|instance| WorkerId::sender(database, instance as u8).slot())
                .find(|&other| entry.workers[other].pid != 0)
            {
                Some(other) => other,
                None => return false,
            }
        };
        let worker = &mut entry.workers[teller];
        if same {
            worker.new_mail = true;
            worker.new_mail_queued_too |= queued_too;
        } else {
            worker.predecessors_new_mail = true;
        }
        worker.wake_requests += 1;
        worker.new_mail_tells += 1;
        // Under the lock: a sender woken ahead of this commit that reads its
        // news may reset its latch, which this has set.
        set_latch_of(worker.process_number);
    }
    // Ends the watch of a sender woken ahead of this commit.
    NEW_MAIL_TOLD.get().fetch_add(1, Ordering::Release);
    true
}

/// Before the commit of a transaction that claimed rows on insert for the
/// sender in `slot` (process `pid`), ahead of its flush: the sender is woken
/// now, so that its wake-up and its look before a step overlap the flush
/// (the commit tells it as ever; new_mail_committed). Never raises.
pub fn new_mail_committing(database: u32, slot: usize, pid: i32, started_at: i64, accounts: &[i64]) {
    let process_number = {
        let mut board = WORKER_BOARD.exclusive();
        let Some(worker) = board.entry_mut(database).map(|entry| &mut entry.workers[slot]) else { return };
        if worker.pid != pid || worker.process_started_at != started_at {
            return;
        }
        worker.new_mail_committing = true;
        add_accounts(&mut worker.new_mail_accounts, accounts);
        worker.process_number
    };
    set_latch_of(process_number);
}

/// A transaction that changes accounts' settings is about to commit (its
/// PRE_COMMIT); `settings_change_ends` follows when it has committed or
/// aborted. Never raises.
pub fn settings_change_begins() {
    let mut board = WORKER_BOARD.exclusive();
    board.settings_changes_under_way += 1;
    board.settings_changes_begun += 1;
}

/// Never raises.
pub fn settings_change_ends() {
    let mut board = WORKER_BOARD.exclusive();
    board.settings_changes_under_way = board.settings_changes_under_way.saturating_sub(1);
}

/// How many settings changes have begun; `None` while one is under way.
/// Settings read in a snapshot taken after this said `Some(n)` are those of
/// a later snapshot too, as long as it still says `Some(n)`: a change
/// visible there but not here began its commit since (n grew) or was under
/// way here (`None`).
pub fn settings_changes() -> Option<u64> {
    let board = WORKER_BOARD.share();
    (board.settings_changes_under_way == 0).then_some(board.settings_changes_begun)
}

/// How many commits have told a sender of rows claimed for it so far.
pub fn new_mail_told() -> u64 {
    NEW_MAIL_TOLD.get().load(Ordering::Acquire)
}

/// What the board says of rows claimed on insert for a sender since it last asked.
#[derive(Debug, Clone, Copy, Default)]
pub struct NewMailNews {
    /// Rows were claimed on insert for it and committed.
    pub mine: bool,
    /// ... and those transactions queued others too.
    pub queued_too: bool,
    /// Rows were claimed for a sender that stopped (this one takes them back).
    pub predecessors: bool,
    /// A transaction that claimed rows for it was committing when it woke it.
    pub committing: bool,
    /// The accounts of the rows such transactions claimed (0: none).
    pub accounts: [i64; ACCOUNTS_TOLD],
    /// How many times it was asked to wake for anything else (ever).
    pub other_wake_requests: i64,
}

impl NewMailNews {
    pub fn add(&mut self, later: NewMailNews) {
        self.mine |= later.mine;
        self.queued_too |= later.queued_too;
        self.predecessors |= later.predecessors;
        self.committing |= later.committing;
        add_accounts(&mut self.accounts, &later.accounts);
        self.other_wake_requests = later.other_wake_requests;
    }
}

/// How many times the worker was asked to wake for anything but rows
/// claimed on insert (ever; `None` when the slot is not its own).
pub fn other_wake_requests(id: WorkerId) -> Option<i64> {
    let me = unsafe { pg_sys::MyProcPid };
    let board = WORKER_BOARD.share();
    board
        .entry(id.database)
        .map(|entry| &entry.workers[id.slot()])
        .filter(|slot| slot.pid == me)
        .map(WorkerSlot::other_wake_requests)
}

/// Since the sender last asked: what it has been told of rows claimed on insert.
pub fn take_new_mail(id: WorkerId) -> NewMailNews {
    let me = unsafe { pg_sys::MyProcPid };
    let mut board = WORKER_BOARD.exclusive();
    board
        .entry_mut(id.database)
        .map(|entry| &mut entry.workers[id.slot()])
        .filter(|slot| slot.pid == me)
        .map(|slot| NewMailNews {
            mine: std::mem::take(&mut slot.new_mail),
            queued_too: std::mem::take(&mut slot.new_mail_queued_too),
            predecessors: std::mem::take(&mut slot.predecessors_new_mail),
            committing: std::mem::take(&mut slot.new_mail_committing),
            accounts: std::mem::take(&mut slot.new_mail_accounts),
            other_wake_requests: slot.other_wake_requests(),
        })
        .unwrap_or_default()
}

// ---- accounts held by one sender of several --------------------------------

/// Accounts other live senders of the database are sending through.
pub fn accounts_held_by_others(id: WorkerId) -> Vec<i64> {
    let board = WORKER_BOARD.share();
    let me = unsafe { pg_sys::MyProcPid };
    board
        .held_accounts
        .iter()
        .filter(|held| held.pid != 0 && held.pid != me && held.database == id.database && board.live(held))
        .map(|held| held.account_id)
        .collect()
}

/// The sender takes the accounts it claimed rows of. Returns those another
/// live sender took first (or that found no free slot): their rows go back.
pub fn hold_accounts(id: WorkerId, accounts: &[i64]) -> Vec<i64> {
    let mut board = WORKER_BOARD.exclusive();
    let me = unsafe { pg_sys::MyProcPid };
    let mut refused = Vec::new();
    for &account_id in accounts {
        let current = board
            .held_accounts
            .iter()
            .position(|held| held.pid != 0 && held.database == id.database && held.account_id == account_id);
        match current {
            Some(index) if board.held_accounts[index].pid == me => {}
            Some(index) if board.live(&board.held_accounts[index]) => refused.push(account_id),
            _ => {
                let free =
                    current.or_else(|| board.held_accounts.iter().position(|held| held.pid == 0 || !board.live(held)));
                match free {
                    Some(index) => {
                        board.held_accounts[index] =
                            HeldAccount { database: id.database, account_id, pid: me, instance: id.instance }
                    }
                    None => refused.push(account_id),
                }
            }
        }
    }
    refused
}

/// The sender keeps only `accounts` (those on the wire or waiting to go).
pub fn keep_accounts(id: WorkerId, accounts: &[i64]) {
    let mut board = WORKER_BOARD.exclusive();
    let me = unsafe { pg_sys::MyProcPid };
    for held in board.held_accounts.iter_mut() {
        if held.pid == me && held.database == id.database && !accounts.contains(&held.account_id) {
            *held = HeldAccount::default();
        }
    }
}

// ---- sync_now() ------------------------------------------------------------

/// Files a sync request for the account; the slot index, or None when all slots are taken.
pub fn request_sync(account_id: i64) -> Option<usize> {
    let requester_process_number = unsafe { (*pg_sys::MyProc).pgprocno };
    let database = my_database();
    let mut board = WORKER_BOARD.exclusive();
    let index = board.sync_requests.iter().position(|request| request.state == SyncRequestState::Free)?;
    board.sync_requests[index] =
        SyncRequest { database, account_id, state: SyncRequestState::Requested, requester_process_number };
    Some(index)
}

pub fn sync_request_state(index: usize) -> SyncRequestState {
    WORKER_BOARD.share().sync_requests[index].state
}

pub fn release_sync_request(index: usize) {
    WORKER_BOARD.exclusive().sync_requests[index] = SyncRequest::default();
}

/// The receiver takes its database's waiting requests: (slot, account).
pub fn take_sync_requests() -> Vec<(usize, i64)> {
    let database = my_database();
    let mut board = WORKER_BOARD.exclusive();
    let mut taken = Vec::new();
    for (index, request) in board.sync_requests.iter_mut().enumerate() {
        if request.state == SyncRequestState::Requested && request.database == database {
            request.state = SyncRequestState::Running;
            taken.push((index, request.account_id));
        }
    }
    taken
}

/// Whether any request of this database waits (without taking it).
pub fn sync_requested() -> bool {
    let database = my_database();
    WORKER_BOARD
        .share()
        .sync_requests
        .iter()
        .any(|request| request.state == SyncRequestState::Requested && request.database == database)
}

/// Marks a request done and wakes its caller.
pub fn finish_sync_request(index: usize) {
    let process_number = {
        let mut board = WORKER_BOARD.exclusive();
        let request = &mut board.sync_requests[index];
        if request.state != SyncRequestState::Running {
            return;
        }
        request.state = SyncRequestState::Done;
        request.requester_process_number
    };
    set_latch_of(process_number);
}

/// A restarted receiver takes over the requests its predecessor was running.
pub fn requeue_running_sync_requests() {
    let database = my_database();
    for request in WORKER_BOARD.exclusive().sync_requests.iter_mut() {
        if request.state == SyncRequestState::Running && request.database == database {
            request.state = SyncRequestState::Requested;
        }
    }
}

// ---- routing code that could not be stopped --------------------------------

/// The receiver is about to run (Some) or has run (None) an account's routing code.
pub fn set_routing_account(account_id: Option<i64>) {
    if let Some(entry) = WORKER_BOARD.exclusive().entry_mut(my_database()) {
        entry.routing_account = account_id.unwrap_or(0);
    }
}

/// At receiver start: an account whose routing code was running when the
/// previous receiver was stopped is suspended until `until`; returns it.
pub fn suspend_interrupted_routing(until: i64) -> Option<i64> {
    let database = my_database();
    let mut board = WORKER_BOARD.exclusive();
    let account_id = std::mem::take(&mut board.entry_mut(database)?.routing_account);
    if account_id == 0 {
        return None;
    }
    let now = now();
    // This account's slot, else a lapsed one, else the one that lapses first.
    let slots = &board.suspensions;
    let index = slots
        .iter()
        .position(|slot| slot.database == database && slot.account_id == account_id)
        .or_else(|| slots.iter().position(|slot| slot.until <= now))
        .unwrap_or_else(|| (0..SUSPENSION_SLOTS).min_by_key(|&index| slots[index].until).unwrap_or(0));
    board.suspensions[index] = RoutingSuspension { database, account_id, until };
    Some(account_id)
}

/// Until when an account's routing code is suspended, if it is.
pub fn routing_suspended_until(account_id: i64) -> Option<i64> {
    let now = now();
    let database = my_database();
    WORKER_BOARD
        .share()
        .suspensions
        .iter()
        .find(|slot| slot.database == database && slot.account_id == account_id && slot.until > now)
        .map(|slot| slot.until)
}
