//! The main loop every worker runs: connect, wait on the latch, reload the
//! configuration on SIGHUP, leave cleanly on SIGTERM. What a role does in
//! it is its `Duty` (duty.rs); the loop names no role.

use super::board::{self, WorkerState};
use super::duty::Duty;
use super::role::Role;
use super::signals::shutdown_requested;
use crate::settings;
use crate::store::catalog;
use crate::store::restore;
use crate::store::transaction::try_in_transaction;
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use std::time::Duration;

/// The extension version this library is (its SQL is what the workers expect).
const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");

struct Wakeup {
    latch: bool,
    socket: bool,
    postmaster_died: bool,
}

/// Sleeps until the latch is set, the socket (the sender's doorbell) is
/// readable or `timeout` passes, and says which.
fn wait_for_latch(timeout: std::time::Duration, socket: Option<std::os::fd::RawFd>) -> Wakeup {
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

/// A dump being restored into the database holds the worker off (the claim
/// and the store also check it, in their own transactions).
#[derive(Default)]
struct RestoreWatch {
    /// The restoring session seen last time.
    restoring: Option<i32>,
}

impl RestoreWatch {
    /// Whether a restore is in progress; says so when one starts and ends.
    fn holds(&mut self, duty: &mut dyn Duty) -> bool {
        let role = duty.role();
        let now = match try_in_transaction(|| restore::in_progress(role.restore_lock())) {
            Ok(restoring) => restoring,
            Err(error) => {
                log!("{}: cannot tell whether a dump is being restored: {}", role.worker_name(), error);
                return true;
            }
        };
        match (self.restoring, now) {
            (previous, Some(process)) => {
                if previous != Some(process) {
                    log!("{} waits while process {} restores a dump into this database", role.worker_name(), process);
                }
                board::update(role, |slot| slot.state = WorkerState::WaitingForRestore);
            }
            (Some(_), None) => {
                log!("{}: the restore has ended", role.worker_name());
                board::update(role, |slot| slot.state = WorkerState::Idle);
                duty.restore_ended();
            }
            _ => {}
        }
        self.restoring = now;
        now.is_some()
    }

    /// Whether the last look found a restore in progress.
    fn waiting(&self) -> bool {
        self.restoring.is_some()
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn email_accounts_worker_main(argument: pg_sys::Datum) {
    let Some(role) = Role::from_index(argument.value() as i64) else {
        // A registration bug, not a runtime condition: exit 0 so it is not restarted.
        log!("email_accounts: unknown worker role {}", argument.value());
        return;
    };
    let mut duty: Box<dyn Duty> = match role {
        Role::Sender => Box::new(super::sender::Sender),
        Role::Receiver => Box::<super::receiver::Receiver>::default(),
    };
    run(duty.as_mut());
}

/// Connects, then steps the duty whenever there is news, until SIGTERM.
fn run(duty: &mut dyn Duty) {
    let role = duty.role();
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = settings::database();
    // Errors with FATAL (and the postmaster retries later) if the database is missing.
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    settings::pin_worker_session();
    board::started(role, settings::fallback_poll_interval().as_millis() as i64);
    log!("{} started in database \"{}\"", role.worker_name(), database);

    duty.start();
    let mut version_was = None;
    let mut restore = RestoreWatch::default();
    // A timeout wake-up with nothing new runs no statement (see idle.rs).
    let mut idle = super::idle::IdleSkip::default();
    let mut woken_by_latch = true;
    let mut postmaster_died = false;
    loop {
        let version = match catalog::installed_version() {
            Ok(version) => version,
            Err(error) => {
                log!("{}: could not look up the extension: {}", role.worker_name(), error);
                None
            }
        };
        // The schema this library's statements are written for, and no other:
        // after a new library is installed, the workers wait for the update.
        let installed = version.as_deref() == Some(LIBRARY_VERSION);
        if version_was.as_ref() != Some(&version) {
            let state = match &version {
                None => {
                    log!(
                        "{} is waiting for CREATE EXTENSION email_accounts in database \"{}\"",
                        role.worker_name(),
                        database
                    );
                    WorkerState::WaitingForExtension
                }
                Some(other) if other != LIBRARY_VERSION => {
                    log!(
                        "{} is waiting for ALTER EXTENSION email_accounts UPDATE in database \"{}\": it has version {}, the library is {}",
                        role.worker_name(),
                        database,
                        other,
                        LIBRARY_VERSION
                    );
                    WorkerState::WaitingForUpdate
                }
                Some(_) => {
                    duty.installed();
                    WorkerState::Idle
                }
            };
            board::update(role, |slot| slot.state = state);
            version_was = Some(version);
        }

        let mut sleep = settings::fallback_poll_interval();
        if installed {
            let changes = duty.changes();
            match idle.skip(changes, woken_by_latch || duty.asked()) {
                Some(until_due) => sleep = sleep.min(until_due.unwrap_or(sleep)),
                None if restore.holds(duty) => sleep = sleep.min(Duration::from_secs(1)),
                None => {
                    let next_due = duty.step();
                    sleep = sleep.min(next_due.unwrap_or(sleep));
                    idle.ran(changes, next_due);
                    // Background workers flush their statistics themselves.
                    unsafe { pg_sys::pgstat_report_stat(true) };
                }
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
        // A round coming back counts as news, like a commit.
        woken_by_latch = woken_by.latch || woken_by.socket;
        board::update(role, |slot| {
            if woken_by.latch {
                slot.latch_wakeups += 1;
            } else if !woken_by.socket {
                slot.timeouts += 1;
            }
        });
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            let interval = settings::fallback_poll_interval().as_millis() as i64;
            board::update(role, |slot| {
                slot.config_reloads += 1;
                slot.fallback_poll_interval_ms = interval;
            });
        }
    }

    if !postmaster_died {
        duty.stop();
    }
    board::update(role, |slot| {
        slot.state = WorkerState::Stopped;
        slot.pid = 0;
    });
    log!("{} stopped", role.worker_name());
}
