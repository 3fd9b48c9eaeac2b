//! The main loop every database worker runs: connect, wait on the latch,
//! reload the configuration on SIGHUP, leave cleanly on SIGTERM or when the
//! extension is dropped. What a role does in it is its `Duty` (duty.rs);
//! the loop names no role. The launcher (launcher.rs) shares its waiting,
//! counting of wake-ups and reloading.

use super::board::{self, Extension, WorkerState};
use super::duty::Duty;
use super::role::{Role, WorkerId};
use super::signals::shutdown_requested;
use crate::settings;
use crate::store::catalog;
use crate::store::home::{self, Home};
use crate::store::restore;
use crate::store::transaction::{in_transaction, try_in_transaction};
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use pgrx::spi::SpiError;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

/// How often the workers of a copy look whether they may work.
const HELD_COPY_LOOKS_AGAIN: Duration = Duration::from_secs(5);

/// The extension version this library is (its SQL is what the workers expect).
const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");

pub struct Wakeup {
    pub latch: bool,
    pub socket: bool,
    pub postmaster_died: bool,
}

/// Sleeps until the latch is set, the socket (the sender's doorbell) is
/// readable or `timeout` passes, and says which.
pub fn wait_for_latch(timeout: std::time::Duration, socket: Option<std::os::fd::RawFd>) -> Wakeup {
    let mut events = pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_POSTMASTER_DEATH;
    if socket.is_some() {
        events |= pg_sys::WL_SOCKET_READABLE;
    }
    let happened = unsafe {
        let happened = pg_sys::WaitLatchOrSocket(
            pg_sys::MyLatch,
            events as i32,
            socket.unwrap_or(pg_sys::PGINVALID_SOCKET),
            timeout.as_millis() as _,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
        happened as u32
    };
    pg_sys::check_for_interrupts!();
    Wakeup {
        latch: happened & pg_sys::WL_LATCH_SET != 0,
        socket: happened & pg_sys::WL_SOCKET_READABLE != 0,
        postmaster_died: happened & pg_sys::WL_POSTMASTER_DEATH != 0,
    }
}

/// After a wake-up: counts it on the worker's slot (`None`: the launcher's)
/// and, after SIGHUP, re-reads the configuration (the flag alone changes nothing).
pub fn after_wakeup(worker: Option<WorkerId>, woken_by: &Wakeup) {
    board::update_slot(worker, |slot| {
        if woken_by.latch {
            slot.latch_wakeups += 1;
        } else if !woken_by.socket {
            slot.timeouts += 1;
        }
    });
    reload_configuration_if_asked(worker);
}

/// After SIGHUP: re-reads the configuration (also where a duty resets its latch).
pub fn reload_configuration_if_asked(worker: Option<WorkerId>) {
    if BackgroundWorker::sighup_received() {
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        let interval = settings::fallback_poll_interval().as_millis() as i64;
        board::update_slot(worker, |slot| {
            slot.config_reloads += 1;
            slot.fallback_poll_interval_ms = interval;
        });
    }
}

/// A dump being restored into the database holds the worker off (the claim
/// and the store also check it, in their own transactions).
#[derive(Default)]
struct RestoreWatch {
    /// The restoring session seen last time.
    restoring: Option<i32>,
}

impl RestoreWatch {
    /// Takes note of what the look found (`now`: the restoring process);
    /// says so when a restore starts and ends, and tells the duty it ended.
    fn saw(&mut self, duty: &mut dyn Duty, now: Option<i32>) {
        let id = duty.id();
        match (self.restoring, now) {
            (previous, Some(process)) => {
                if previous != Some(process) {
                    log!("{} waits while process {} restores a dump into this database", id.name(), process);
                }
                board::update(id, |slot| slot.state = WorkerState::WaitingForRestore);
            }
            (Some(_), None) => {
                log!("{}: the restore has ended", id.name());
                board::update(id, |slot| slot.state = WorkerState::Idle);
                duty.restore_ended();
            }
            _ => {}
        }
        self.restoring = now;
    }

    /// Whether the last look found a restore in progress.
    fn waiting(&self) -> bool {
        self.restoring.is_some()
    }
}

/// Whether this database's mail is this database's to send and receive, or
/// it is a copy (store/home.rs). Looked at before every step (one small
/// statement): a restore can replace the home row at any time.
#[derive(Default)]
struct HomeWatch {
    /// The original this copy was last reported holding off for.
    reported: Option<u32>,
}

impl HomeWatch {
    /// Whether the worker may work now, the home row having said `home`.
    fn settled(&mut self, id: WorkerId, database: &str, home: Home) -> bool {
        match home {
            Home::Here => {
                if self.reported.take().is_some() {
                    log!("{}: database \"{}\" now sends and receives its own mail", id.name(), database);
                    board::update(id, |slot| slot.state = WorkerState::Idle);
                }
                true
            }
            Home::CopyOf(original, name) => {
                if self.reported != Some(original) {
                    warning!(
                        "{}: database \"{}\" is a copy of database \"{}\" of this cluster: its mail is not sent or received here. \
                         Run SELECT email_accounts.adopt_database() in \"{}\" to change that, or drop the original.",
                        id.name(),
                        database,
                        name,
                        database
                    );
                    self.reported = Some(original);
                }
                board::update(id, |slot| slot.state = WorkerState::HeldAsCopy);
                false
            }
        }
    }
}

/// Why a worker may not step now.
enum HeldOff {
    /// A dump is being restored, or what the look before a step needs
    /// could not be read.
    Restore,
    /// The database is a copy.
    Copy,
}

/// What the look before a step found.
enum Looked {
    /// This process is restoring a dump into the database.
    Restoring(i32),
    /// No restore; the home row says this.
    Mail(Home),
}

/// Whether the worker may step: no dump is being restored into the
/// database and its mail is its own. One transaction for both looks.
fn may_step(
    duty: &mut dyn Duty,
    database: &str,
    restore: &mut RestoreWatch,
    home: &mut HomeWatch,
) -> Result<(), HeldOff> {
    let id = duty.id();
    let looked = try_in_transaction(AssertUnwindSafe(|| -> Result<Looked, SpiError> {
        if let Some(process) = restore::in_progress(id.role.restore_lock())? {
            return Ok(Looked::Restoring(process));
        }
        // The home row under the restore lock, with a snapshot taken after
        // it: a restore that committed before the lock was taken is seen.
        // SAFETY: pushed and popped in this transaction; an error aborts it,
        // which clears the stack.
        unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
        let mail = home::check_now(catalog::databases_now)?;
        unsafe { pg_sys::PopActiveSnapshot() };
        Ok(Looked::Mail(mail))
    }));
    match looked {
        Err(error) => {
            log!("{}: cannot tell whether a dump is being restored or whose mail this is: {}", id.name(), error);
            Err(HeldOff::Restore)
        }
        Ok(Looked::Restoring(process)) => {
            restore.saw(duty, Some(process));
            Err(HeldOff::Restore)
        }
        Ok(Looked::Mail(mail)) => {
            // (Outside the transaction: the duty is told a restore ended.)
            restore.saw(duty, None);
            if home.settled(id, database, mail) {
                Ok(())
            } else {
                Err(HeldOff::Copy)
            }
        }
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn email_accounts_worker_main(argument: pg_sys::Datum) {
    let Some(id) = WorkerId::from_argument(argument.value() as u64) else {
        // A launcher bug, not a runtime condition: the launcher does not restart it.
        log!("email_accounts: unknown worker argument {}", argument.value());
        return;
    };
    let mut duty: Box<dyn Duty> = match id.role {
        Role::Sender => Box::new(super::sender::Sender::new(id)),
        Role::Receiver => Box::new(super::receiver::Receiver::new(id)),
        Role::Launcher => return,
    };
    // A worker's connections share TLS connectors (a backend's test_account() builds its own).
    email_accounts_mail::tls_connectors::share_in_this_process();
    run(duty.as_mut());
}

/// Whether the worker may go on: the extension is there (at any version),
/// as the catalog says now, unless committed DDL published otherwise since.
fn extension_still_there(id: WorkerId, generation: u64, version: &Option<String>) -> bool {
    let (was, now) = board::extension_seen(id.database, generation, version.is_some());
    // The launcher's first worker found the extension: the others may start.
    if was == Extension::Unknown && now == Extension::Present {
        board::wake_launcher();
    }
    now == Extension::Present
}

/// Whether a process of this pid exists.
pub fn process_alive(pid: i32) -> bool {
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}

#[pg_guard]
unsafe extern "C-unwind" fn leave_the_board(_code: i32, argument: pg_sys::Datum) {
    if let Some(id) = WorkerId::from_argument(argument.value() as u64) {
        board::stopped(id);
    }
}

/// Connects, then steps the duty whenever there is news, until SIGTERM or
/// until the extension is gone from the database.
fn run(duty: &mut dyn Duty) {
    let id = duty.id();
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // DROP DATABASE (or another command that needs it empty) is waiting.
    if board::extension_of(id.database).is_none() || board::paused(id.database) {
        return;
    }
    // Errors with FATAL if the database is gone; the launcher notices.
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(id.database)), None);
    settings::pin_worker_session();
    let interval = settings::fallback_poll_interval().as_millis() as i64;
    if !board::take_slot(id, true, interval, process_alive) {
        log!("{}: the previous process of this worker is still running; leaving", id.name());
        return;
    }
    // Also when the worker ends in an error: its slot and held accounts are freed.
    unsafe { pg_sys::before_shmem_exit(Some(leave_the_board), pg_sys::Datum::from(id.to_argument())) };
    let database = catalog::database_name().unwrap_or_default();
    log!("{} started in database \"{}\"", id.name(), database);

    duty.start();
    let mut version_was = None;
    let mut restore = RestoreWatch::default();
    let mut home = HomeWatch::default();
    // A timeout wake-up with nothing new runs no statement (see idle.rs).
    let mut idle = super::idle::IdleSkip::default();
    let mut woken_by_latch = true;
    let mut postmaster_died = false;
    loop {
        // Read the board's generation before the catalog (extension_still_there).
        let generation = board::extension_of(id.database).map(|(_, generation)| generation);
        // The wake-up's look, one transaction and no statement: the
        // extension's version and the change counts of the tables the duty
        // reads (idle.rs).
        let looked = in_transaction(AssertUnwindSafe(|| {
            let version = catalog::installed_version_now();
            // (Another version's tables may not be the ones this library reads.)
            let installed = version.as_deref() == Some(LIBRARY_VERSION);
            let changes = if installed { duty.changes() } else { None };
            (version, changes)
        }));
        let (version, changes) = match looked {
            Ok(looked) => looked,
            Err(error) => {
                // Nothing concluded from a failed look: again in a second.
                log!("{}: could not look up the extension or its change counts: {}", id.name(), error);
                if shutdown_requested() || wait_for_latch(Duration::from_secs(1), None).postmaster_died {
                    break;
                }
                continue;
            }
        };
        let still_there = generation.is_some_and(|generation| extension_still_there(id, generation, &version));
        let interval = settings::fallback_poll_interval().as_millis() as i64;
        if !still_there || board::paused(id.database) || !board::take_slot(id, false, interval, process_alive) {
            if version.is_none() {
                log!("{}: the extension is not created in database \"{}\"; stopping", id.name(), database);
            }
            duty.not_installed();
            break;
        }
        // The schema this library's statements are written for, and no other:
        // after a new library is installed, the workers wait for the update.
        let installed = version.as_deref() == Some(LIBRARY_VERSION);
        if version_was.as_ref() != Some(&version) {
            let state = match &version {
                Some(other) if other != LIBRARY_VERSION => {
                    log!(
                        "{} is waiting for ALTER EXTENSION email_accounts UPDATE in database \"{}\": it has version {}, the library is {}",
                        id.name(),
                        database,
                        other,
                        LIBRARY_VERSION
                    );
                    WorkerState::WaitingForUpdate
                }
                _ => {
                    duty.installed();
                    WorkerState::Idle
                }
            };
            board::update(id, |slot| slot.state = state);
            version_was = Some(version);
        }

        let mut sleep = settings::fallback_poll_interval();
        if installed {
            match idle.skip(changes, woken_by_latch || duty.asked()) {
                Some(until_due) => sleep = sleep.min(until_due.unwrap_or(sleep)),
                None => match may_step(duty, &database, &mut restore, &mut home) {
                    Err(HeldOff::Restore) => sleep = sleep.min(Duration::from_secs(1)),
                    // A copy: nothing of its mail is touched; look again in a while.
                    Err(HeldOff::Copy) => sleep = sleep.min(HELD_COPY_LOOKS_AGAIN),
                    Ok(()) => {
                        let next_due = duty.step();
                        sleep = sleep.min(next_due.unwrap_or(sleep));
                        // Background workers flush their statistics themselves;
                        // then the count includes the step's own writes, which
                        // must not make the next timeout wake-up look again.
                        unsafe { pg_sys::pgstat_report_stat(true) };
                        let changes_after = in_transaction(AssertUnwindSafe(|| duty.changes())).ok().flatten();
                        idle.ran(changes_after.or(changes), next_due);
                    }
                },
            }
            if let Some(look_again) = duty.tidy() {
                sleep = sleep.min(look_again);
            }
        } else {
            duty.not_installed();
        }
        if shutdown_requested() {
            break;
        }
        // (Not while a restore holds the worker: the rounds that came back
        // wait in the doorbell until it ends, and must not wake it meanwhile.)
        let socket = if restore.waiting() { None } else { duty.socket() };
        let woken_by = wait_for_latch(sleep, socket);
        if woken_by.postmaster_died || shutdown_requested() {
            postmaster_died = woken_by.postmaster_died;
            break;
        }
        if woken_by.latch {
            duty.woken_by_latch();
        }
        // A round coming back counts as news, like a commit.
        woken_by_latch = woken_by.latch || woken_by.socket;
        after_wakeup(Some(id), &woken_by);
    }

    if !postmaster_died {
        duty.stop();
    }
    board::stopped(id);
    log!("{} stopped", id.name());
}
