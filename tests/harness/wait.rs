//! Bounded waiting for something another process does. Not a timing
//! assertion: the limit is generous and only stops a hung test.

use std::time::{Duration, Instant};

/// Calls `check` until it returns `Some`, or panics after `limit` naming `what`.
pub fn wait_until<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() > deadline {
            panic!("gave up after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
