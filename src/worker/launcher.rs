//! The launcher: the one static worker. Connected to no database, it reads
//! pg_database (a shared catalog) and the board, and keeps a receiver and
//! `email_accounts.senders` senders running (dynamic background workers) in
//! every database that has the extension and that `email_accounts.databases`
//! names. It runs no SQL statement. It learns of CREATE/DROP EXTENSION and
//! of database DDL from the utility hook of the backend that ran it
//! (utility_hook.rs), which wakes it; a database it has not seen yet is
//! looked at once by starting its first sender, which stops at once when the
//! extension is not there.

use super::board::{self, Extension, WorkerState};
use super::main_loop::{after_wakeup, wait_for_latch};
use super::role::{Role, WorkerId};
use super::signals::shutdown_requested;
use crate::settings;
use crate::store::catalog::{self, Database};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime, DynamicBackgroundWorker,
    SignalWakeFlags,
};
use pgrx::prelude::*;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Databases looked at (first sender started) at the same time, at most,
/// so a cluster of many databases does not take every worker process.
const LOOKS_AT_ONCE: usize = 4;

#[derive(Default)]
struct Launcher {
    /// The workers it started, by their handles.
    started: HashMap<WorkerId, DynamicBackgroundWorker>,
    /// When each worker was last started: restarts wait worker_restart_interval.
    last_start: HashMap<WorkerId, Instant>,
    /// Databases already reported as having no worker process free.
    reported_short: HashSet<u32>,
    reported_overflow: bool,
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn email_accounts_launcher_main(_argument: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // No database: only the shared catalogs (pg_database) are readable.
    BackgroundWorker::connect_worker_to_spi(None, None);
    board::launcher_started(settings::fallback_poll_interval().as_millis() as i64);
    log!("email_accounts launcher started");
    let mut launcher = Launcher::default();
    loop {
        let next = launcher.step();
        if shutdown_requested() {
            break;
        }
        let woken_by = wait_for_latch(next.min(settings::fallback_poll_interval()), None);
        if woken_by.postmaster_died || shutdown_requested() {
            break;
        }
        after_wakeup(None, &woken_by);
    }
    // The workers stop with it; the next launcher starts them again.
    for (_, handle) in launcher.started.drain() {
        let _ = handle.terminate();
    }
    board::update_slot(None, |slot| {
        slot.state = WorkerState::Stopped;
        slot.pid = 0;
    });
    log!("email_accounts launcher stopped");
}

impl Launcher {
    /// Brings the running workers in line with the databases; returns when
    /// to look again at the latest (a restart that has to wait).
    fn step(&mut self) -> Duration {
        // pg_upgrade's servers run no workers.
        if unsafe { pg_sys::IsBinaryUpgrade } {
            return settings::fallback_poll_interval();
        }
        // Holds of backends that ended in a FATAL between pause and resume.
        board::end_pauses_of(|pid| !super::main_loop::process_alive(pid));
        if board::take_overflow() && !self.reported_overflow {
            self.reported_overflow = true;
            warning!(
                "email_accounts launcher: more databases have the extension than the {} it can serve",
                board::DATABASE_SLOTS
            );
        }
        let databases = match catalog::databases() {
            Ok(databases) => databases,
            Err(error) => {
                log!("email_accounts launcher: cannot read pg_database: {error}");
                return Duration::from_secs(1);
            }
        };
        self.reap();
        board::keep_absent(&databases.iter().map(|database| database.oid).collect::<Vec<_>>());
        let served: HashMap<u32, &Database> =
            databases.iter().filter(|database| served(database)).map(|database| (database.oid, database)).collect();
        let mut look_again = settings::fallback_poll_interval();
        let mut looking = 0;
        for entry in board::entries() {
            let keep = served.contains_key(&entry.oid) && entry.extension != Extension::Absent;
            if !keep {
                // (Unless DDL published something since this look: then next time.)
                match board::forget_database(entry.oid, entry.generation) {
                    Some(pids) => self.stop_database(entry.oid, pids),
                    None => look_again = Duration::ZERO,
                }
                continue;
            }
            if entry.paused {
                continue;
            }
            let wanted: Vec<WorkerId> = match entry.extension {
                Extension::Present => std::iter::once(WorkerId::receiver(entry.oid))
                    .chain((0..settings::senders()).map(|instance| WorkerId::sender(entry.oid, instance as u8)))
                    .collect(),
                // Its first sender finds out whether the extension is there.
                _ => {
                    looking += 1;
                    vec![WorkerId::sender(entry.oid, 0)]
                }
            };
            for id in wanted.iter().copied() {
                if let Some(wait) = self.ensure_running(id, &served[&entry.oid].name) {
                    look_again = look_again.min(wait);
                }
            }
            // Senders past email_accounts.senders (it was lowered).
            let extra: Vec<WorkerId> =
                self.started.keys().filter(|id| id.database == entry.oid && !wanted.contains(id)).copied().collect();
            for id in extra {
                if let Some(handle) = self.started.remove(&id) {
                    let _ = handle.terminate();
                }
            }
        }
        // Databases never looked at: add them, a few at a time.
        for database in served.values() {
            if looking >= LOOKS_AT_ONCE {
                look_again = look_again.min(Duration::from_millis(200));
                break;
            }
            if board::is_absent(database.oid) || board::extension_of(database.oid).is_some() {
                continue;
            }
            if board::add_database(database.oid) {
                looking += 1;
                if let Some(wait) = self.ensure_running(WorkerId::sender(database.oid, 0), &database.name) {
                    look_again = look_again.min(wait);
                }
            }
        }
        look_again
    }

    /// Forgets the workers that have exited (their slots cleared on the board).
    fn reap(&mut self) {
        let gone: Vec<WorkerId> = self
            .started
            .iter()
            .filter(|(_, handle)| {
                matches!(handle.pid(), Err(BackgroundWorkerStatus::Stopped | BackgroundWorkerStatus::PostmasterDied))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.started.remove(&id);
            board::worker_gone(id);
        }
    }

    /// Starts the worker unless it runs; `Some(wait)` when it has to wait
    /// (a recent start, or no worker process free).
    fn ensure_running(&mut self, id: WorkerId, database_name: &str) -> Option<Duration> {
        if self.started.contains_key(&id) || running_unknown_to_us(id) {
            return None;
        }
        let interval = settings::worker_restart_interval();
        if let Some(last) = self.last_start.get(&id) {
            let since = last.elapsed();
            if since < interval && board::read(id).is_some_and(|slot| slot.state != WorkerState::NotStarted) {
                return Some(interval - since);
            }
        }
        self.last_start.insert(id, Instant::now());
        // Said before the request, never after: a worker the postmaster
        // starts at once may reach "idle" before this process runs again, and
        // "starting" written then would stay (it reports its state on change).
        board::update(id, |slot| slot.state = WorkerState::Starting);
        let name = format!("{} in {}", id.name(), database_name);
        let started = BackgroundWorkerBuilder::new(&name)
            .set_type(id.role.worker_name())
            .set_library("email_accounts")
            .set_function("email_accounts_worker_main")
            .set_argument(Some(pg_sys::Datum::from(id.to_argument())))
            .enable_spi_access()
            .set_start_time(BgWorkerStartTime::RecoveryFinished)
            // The launcher restarts it (after worker_restart_interval), not the postmaster.
            .set_restart_time(None)
            .set_notify_pid(unsafe { pg_sys::MyProcPid })
            .load_dynamic();
        match started {
            Ok(handle) => {
                self.reported_short.remove(&id.database);
                self.started.insert(id, handle);
                None
            }
            Err(_) => {
                board::update(id, |slot| slot.state = WorkerState::NoWorkerProcess);
                if self.reported_short.insert(id.database) {
                    warning!(
                        "email_accounts launcher: no background worker process free for the {} of database \"{}\"; \
                         raise max_worker_processes (each database served takes 1 + email_accounts.senders)",
                        id.role.label(),
                        database_name
                    );
                }
                Some(interval)
            }
        }
    }

    /// Stops every worker of a database the launcher no longer serves: those
    /// it started by their handles, and by process id (`pids`, from the board)
    /// those a previous launcher started.
    fn stop_database(&mut self, database: u32, pids: Vec<i32>) {
        let ids: Vec<WorkerId> = self.started.keys().filter(|id| id.database == database).copied().collect();
        for id in ids {
            if let Some(handle) = self.started.remove(&id) {
                let _ = handle.terminate();
            }
        }
        for pid in pids {
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

/// Whether the launcher serves a database (if it has the extension).
pub fn served(database: &Database) -> bool {
    database.allows_connections && !database.is_template && settings::serves_database(&database.name)
}

/// A worker that a previous launcher started and that still runs (the
/// launcher was restarted without the postmaster's crash restart).
fn running_unknown_to_us(id: WorkerId) -> bool {
    let Some(slot) = board::read(id) else { return false };
    slot.pid != 0 && super::main_loop::process_alive(slot.pid)
}

impl Role {
    /// The static worker every cluster runs.
    pub fn launcher_builder() -> BackgroundWorkerBuilder {
        BackgroundWorkerBuilder::new(Role::Launcher.worker_name())
            .set_type(Role::Launcher.worker_name())
            .set_library("email_accounts")
            .set_function("email_accounts_launcher_main")
            .enable_spi_access()
            // Only on a primary: a hot standby never starts it, a promoted one does.
            .set_start_time(BgWorkerStartTime::RecoveryFinished)
            .set_restart_time(Some(settings::worker_restart_interval()))
    }
}
