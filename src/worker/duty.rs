//! What a worker of one role does, as the one loop every worker runs
//! (main_loop.rs) asks it: the sender and the receiver are each a `Duty`,
//! so the loop knows no role and the roles know nothing of the loop.

use super::role::WorkerId;
use std::os::fd::RawFd;
use std::time::Duration;

pub trait Duty {
    /// Which worker this is (database, role, instance).
    fn id(&self) -> WorkerId;

    /// Once connected, before the first step.
    fn start(&mut self) {}

    /// The extension is there at this library's version (again).
    fn installed(&mut self) {}

    /// The extension is missing or at another version: nothing of it may run.
    fn not_installed(&mut self) {}

    /// The change count of the tables it reads (cumulative statistics, no
    /// statement), in the caller's transaction: a timeout wake-up without
    /// changes skips the step.
    fn changes(&self) -> Option<i64>;

    /// The latch woke the worker (a commit, a wake-up request, a signal).
    fn woken_by_latch(&mut self) {}

    /// Whether something besides the latch asked for a step now.
    fn asked(&self) -> bool {
        false
    }

    /// One step of work; how long until more is due (`None`: nothing is waiting).
    fn step(&mut self) -> Option<Duration>;

    /// After every wake-up, stepped or not and restore or not: housekeeping
    /// that runs no statement; when to look again.
    fn tidy(&mut self) -> Option<Duration> {
        None
    }

    /// A socket whose readability means news (the sender's doorbell).
    fn socket(&self) -> Option<RawFd> {
        None
    }

    /// A dump restored into the database has been fully loaded.
    fn restore_ended(&mut self) {}

    /// SIGTERM (not when the postmaster died).
    fn stop(&mut self) {}
}
