//! Background workers: registration at server start and their main loop.
//! Workers never do network I/O on the main thread while holding a
//! transaction, and only the main thread touches PostgreSQL.

pub mod board;
mod device_logins;
mod duty;
mod idle;
mod idle_watch;
mod launcher;
mod main_loop;
mod new_mail;
mod receiver;
pub mod role;
mod sender;
mod signals;
pub mod utility_hook;
mod wake;

use pgrx::pg_sys;
use role::Role;

/// Sleeps a moment in a backend (waiting for the workers), waking for its
/// latch and answering cancel and termination.
pub fn nap(milliseconds: i64) {
    unsafe {
        let events = pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH;
        pg_sys::WaitLatch(pg_sys::MyLatch, events as i32, milliseconds as _, pg_sys::PG_WAIT_EXTENSION);
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pg_sys::check_for_interrupts!();
}

/// Registers the launcher, the one static worker; it starts the workers of
/// each database. Called from `_PG_init` while `shared_preload_libraries`
/// is being processed.
pub fn register_static_workers() {
    Role::launcher_builder().load();
}
