//! Skipping a worker's run on a timeout wake-up when nothing changed: the
//! change count of the tables it reads (cumulative statistics, no
//! statement) is what it was after its last run (its own writes flushed and
//! counted: they make no work), and the next due time that run reported has
//! not come. A latch wake-up always runs. (A change by a plain UPDATE, which
//! wakes nobody, whose statistics land while a run is under way is seen at
//! the next change or wake-up instead: retry() and inserts wake the sender.)

use std::time::{Duration, Instant};

#[derive(Default)]
pub struct IdleSkip {
    /// The change count before the last run, and when its next work is due.
    last_run: Option<(i64, Option<Instant>)>,
}

impl IdleSkip {
    /// `Some(until_due)` when this wake-up may skip the run (`until_due`:
    /// how long until the next work is due, `None` if none is).
    pub fn skip(&self, changes: Option<i64>, woken_by_latch: bool) -> Option<Option<Duration>> {
        let (changes_then, due_at) = self.last_run?;
        let now = Instant::now();
        let quiet = !woken_by_latch && changes == Some(changes_then) && due_at.is_none_or(|due_at| now < due_at);
        quiet.then(|| due_at.map(|due_at| due_at - now))
    }

    /// A run happened; `changes` is the count read after it.
    pub fn ran(&mut self, changes: Option<i64>, next_due: Option<Duration>) {
        let due_at = next_due.map(|next_due| Instant::now() + next_due);
        self.last_run = changes.map(|changes| (changes, due_at));
    }
}
