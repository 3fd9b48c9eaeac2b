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
mod receiver;
pub mod role;
mod sender;
mod signals;
pub mod utility_hook;
mod wake;

use role::Role;

/// Registers the launcher, the one static worker; it starts the workers of
/// each database. Called from `_PG_init` while `shared_preload_libraries`
/// is being processed.
pub fn register_static_workers() {
    Role::launcher_builder().load();
}
