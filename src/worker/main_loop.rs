//! The main loop every worker runs: connect, wait on the latch, reload the
//! configuration on SIGHUP, leave cleanly on SIGTERM.

use super::board::{self, WorkerState};
use super::role::Role;
use crate::settings;
use crate::store::catalog;
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn email_accounts_worker_main(argument: pg_sys::Datum) {
    let Some(role) = Role::from_index(argument.value() as i64) else {
        // A registration bug, not a runtime condition: exit 0 so it is not restarted.
        log!("email_accounts: unknown worker role {}", argument.value());
        return;
    };
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = settings::database();
    // Errors with FATAL (and the postmaster retries later) if the database is missing.
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    board::started(role, settings::fallback_poll_interval().as_millis() as i64);
    log!("{} started in database \"{}\"", role.worker_name(), database);

    let mut extension_was_installed = None;
    loop {
        let installed = match catalog::extension_installed() {
            Ok(installed) => installed,
            Err(error) => {
                log!("{}: could not look up the extension: {}", role.worker_name(), error);
                false
            }
        };
        if extension_was_installed != Some(installed) {
            let state = if installed { WorkerState::Idle } else { WorkerState::WaitingForExtension };
            board::update(role, |slot| slot.state = state);
            if !installed {
                log!(
                    "{} is waiting for CREATE EXTENSION email_accounts in database \"{}\"",
                    role.worker_name(),
                    database
                );
            }
            extension_was_installed = Some(installed);
        }

        if !BackgroundWorker::wait_latch(Some(settings::fallback_poll_interval())) {
            break;
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            let interval = settings::fallback_poll_interval().as_millis() as i64;
            board::update(role, |slot| {
                slot.config_reloads += 1;
                slot.fallback_poll_interval_ms = interval;
            });
        }
        board::update(role, |slot| slot.wakeups += 1);
    }

    board::update(role, |slot| {
        slot.state = WorkerState::Stopped;
        slot.pid = 0;
    });
    log!("{} stopped", role.worker_name());
}
