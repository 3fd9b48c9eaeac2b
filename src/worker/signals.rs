//! What PostgreSQL's signal handlers set, for every part of a worker to read.

use pgrx::pg_sys;

/// SIGTERM arrived (PostgreSQL's flag, set by the handler and never reset).
pub fn shutdown_requested() -> bool {
    unsafe { pg_sys::ShutdownRequestPending != 0 }
}
