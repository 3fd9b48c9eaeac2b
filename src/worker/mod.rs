//! Background workers: registration at server start and their main loop.
//! Workers never do network I/O on the main thread while holding a
//! transaction, and only the main thread touches PostgreSQL.

pub mod board;
mod device_logins;
mod duty;
mod idle;
mod idle_watch;
mod main_loop;
mod receiver;
pub mod role;
mod sender;
mod signals;
mod wake;

use crate::settings;
use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::pg_sys;
use role::Role;

/// Registers one static worker per role. Called from `_PG_init` while
/// `shared_preload_libraries` is being processed.
pub fn register_static_workers() {
    for role in Role::ALL {
        BackgroundWorkerBuilder::new(role.worker_name())
            .set_type(role.worker_name())
            .set_library("email_accounts")
            .set_function("email_accounts_worker_main")
            .set_argument(Some(pg_sys::Datum::from(role.index())))
            .enable_spi_access()
            // Only on a primary: a hot standby never starts them, a promoted one does.
            .set_start_time(BgWorkerStartTime::RecoveryFinished)
            .set_restart_time(Some(settings::worker_restart_interval()))
            .load();
    }
}
