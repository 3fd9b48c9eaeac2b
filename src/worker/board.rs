//! The worker board: one slot per worker role in shared memory, so that SQL
//! functions can show what each worker is doing (and, later, wake it).

use super::role::Role;
use pgrx::lwlock::PgLwLock;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;

/// What a worker is doing right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum WorkerState {
    /// Never started since the server started.
    #[default]
    NotStarted,
    /// Connected, but `CREATE EXTENSION email_accounts` has not been run in
    /// its database (or the extension was dropped).
    WaitingForExtension,
    /// The database has the extension at another version than this library:
    /// waiting for `ALTER EXTENSION email_accounts UPDATE`.
    WaitingForUpdate,
    /// A dump is being restored into the database: waiting for it to end.
    WaitingForRestore,
    /// Connected to a database with the extension; waiting for work.
    Idle,
    /// Stopped by SIGTERM; the postmaster restarts it with the server.
    Stopped,
}

impl WorkerState {
    pub fn label(self) -> &'static str {
        match self {
            WorkerState::NotStarted => "not started",
            WorkerState::WaitingForExtension => "waiting for extension",
            WorkerState::WaitingForUpdate => "waiting for ALTER EXTENSION UPDATE",
            WorkerState::WaitingForRestore => "waiting for a restore to end",
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

/// One `sync_now()` call waiting for the receiver.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncRequest {
    pub account_id: i64,
    pub state: SyncRequestState,
    /// The waiting backend's PGPROC number, whose latch is set when done.
    pub requester_process_number: i32,
}

/// Concurrent `sync_now()` calls the board can hold.
pub const SYNC_REQUEST_SLOTS: usize = 64;

/// Accounts whose routing code the receiver had to be stopped for, at most.
pub const SUSPENSION_SLOTS: usize = 32;

/// An account whose append_to / on_receive code is not run until `until`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoutingSuspension {
    pub account_id: i64,
    /// `pg_sys::TimestampTz`; 0 for a free slot.
    pub until: i64,
}

#[derive(Debug, Clone, Copy)]
pub struct WorkerBoard {
    slots: [WorkerSlot; Role::ALL.len()],
    sync_requests: [SyncRequest; SYNC_REQUEST_SLOTS],
    /// The account whose routing code the receiver is running now (0: none).
    /// Still set when a new receiver starts: the old one was stopped inside it.
    routing_account: i64,
    suspensions: [RoutingSuspension; SUSPENSION_SLOTS],
}

impl Default for WorkerBoard {
    fn default() -> Self {
        WorkerBoard {
            slots: Default::default(),
            sync_requests: [SyncRequest::default(); SYNC_REQUEST_SLOTS],
            routing_account: 0,
            suspensions: [RoutingSuspension::default(); SUSPENSION_SLOTS],
        }
    }
}

/// The receiver is about to run (Some) or has run (None) an account's routing code.
pub fn set_routing_account(account_id: Option<i64>) {
    WORKER_BOARD.exclusive().routing_account = account_id.unwrap_or(0);
}

/// At receiver start: an account whose routing code was running when the
/// previous receiver was stopped is suspended until `until`; returns it.
pub fn suspend_interrupted_routing(until: i64) -> Option<i64> {
    let mut board = WORKER_BOARD.exclusive();
    let account_id = std::mem::take(&mut board.routing_account);
    if account_id == 0 {
        return None;
    }
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    // This account's slot, else a lapsed one, else the one that lapses first.
    let slots = &board.suspensions;
    let index = slots
        .iter()
        .position(|slot| slot.account_id == account_id)
        .or_else(|| slots.iter().position(|slot| slot.until <= now))
        .unwrap_or_else(|| (0..SUSPENSION_SLOTS).min_by_key(|&index| slots[index].until).unwrap_or(0));
    board.suspensions[index] = RoutingSuspension { account_id, until };
    Some(account_id)
}

/// Until when an account's routing code is suspended, if it is.
pub fn routing_suspended_until(account_id: i64) -> Option<i64> {
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    WORKER_BOARD
        .share()
        .suspensions
        .iter()
        .find(|slot| slot.account_id == account_id && slot.until > now)
        .map(|slot| slot.until)
}

// SAFETY: plain-old-data with no pointers; it lives in PostgreSQL's shared memory.
unsafe impl PGRXSharedMemory for WorkerBoard {}

pub static WORKER_BOARD: PgLwLock<WorkerBoard> =
    // SAFETY: the name is unique to this extension and the lock is initialised in _PG_init.
    unsafe { PgLwLock::new(c"email_accounts_worker_board") };

pub fn initialize_shared_memory() {
    pgrx::pg_shmem_init!(WORKER_BOARD);
}

/// A copy of one role's slot.
pub fn read(role: Role) -> WorkerSlot {
    WORKER_BOARD.share().slots[role.index()]
}

/// Changes one role's slot under the exclusive lock.
pub fn update(role: Role, change: impl FnOnce(&mut WorkerSlot)) {
    change(&mut WORKER_BOARD.exclusive().slots[role.index()]);
}

/// The slot a worker fills in when it starts.
pub fn started(role: Role, fallback_poll_interval_ms: i64) {
    let pid = unsafe { pg_sys::MyProcPid };
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let process_number = unsafe { (*pg_sys::MyProc).pgprocno };
    update(role, |slot| {
        *slot = WorkerSlot {
            pid,
            state: WorkerState::WaitingForExtension,
            started_at: now,
            config_reloads: 0,
            fallback_poll_interval_ms,
            wake_requests: 0,
            latch_wakeups: 0,
            timeouts: 0,
            process_number,
        }
    });
}

/// Sets the latch of the role's worker, if it runs; true when it was set.
pub fn wake(role: Role) -> bool {
    let process_number = {
        let mut board = WORKER_BOARD.exclusive();
        let slot = &mut board.slots[role.index()];
        if slot.pid == 0 {
            return false;
        }
        slot.wake_requests += 1;
        slot.process_number
    };
    set_latch_of(process_number);
    true
}

/// Sets the latch of the process with this PGPROC number.
fn set_latch_of(process_number: i32) {
    // SAFETY: ProcGlobal->allProcs has an entry for every PGPROC number, and
    // setting a latch of a process that has exited is harmless.
    unsafe {
        let process = (*pg_sys::ProcGlobal).allProcs.add(process_number as usize);
        pg_sys::SetLatch(&mut (*process).procLatch);
    }
}

/// Files a sync request for the account; the slot index, or None when all slots are taken.
pub fn request_sync(account_id: i64) -> Option<usize> {
    let requester_process_number = unsafe { (*pg_sys::MyProc).pgprocno };
    let mut board = WORKER_BOARD.exclusive();
    let index = board.sync_requests.iter().position(|request| request.state == SyncRequestState::Free)?;
    board.sync_requests[index] =
        SyncRequest { account_id, state: SyncRequestState::Requested, requester_process_number };
    Some(index)
}

pub fn sync_request_state(index: usize) -> SyncRequestState {
    WORKER_BOARD.share().sync_requests[index].state
}

pub fn release_sync_request(index: usize) {
    WORKER_BOARD.exclusive().sync_requests[index] = SyncRequest::default();
}

/// The receiver takes the waiting requests: (slot, account).
pub fn take_sync_requests() -> Vec<(usize, i64)> {
    let mut board = WORKER_BOARD.exclusive();
    let mut taken = Vec::new();
    for (index, request) in board.sync_requests.iter_mut().enumerate() {
        if request.state == SyncRequestState::Requested {
            request.state = SyncRequestState::Running;
            taken.push((index, request.account_id));
        }
    }
    taken
}

/// Whether any request waits (without taking it).
pub fn sync_requested() -> bool {
    WORKER_BOARD.share().sync_requests.iter().any(|request| request.state == SyncRequestState::Requested)
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
    for request in WORKER_BOARD.exclusive().sync_requests.iter_mut() {
        if request.state == SyncRequestState::Running {
            request.state = SyncRequestState::Requested;
        }
    }
}
