//! The sender's open SMTP connections between rounds: kept while mail keeps
//! coming, closed once idle for a few seconds (with no statement run).

use email_accounts_mail::delivery::ConnectionPool;
use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// SMTP connections stay open this long after their last use, so a steady
/// trickle of mail does not reconnect for every message.
const KEEP_CONNECTIONS_OPEN: Duration = Duration::from_secs(5);

thread_local! {
    /// The open connections and when they were last used (main thread only).
    static CONNECTIONS: RefCell<(Arc<ConnectionPool>, Instant)> =
        RefCell::new((Arc::new(ConnectionPool::default()), Instant::now()));
}

/// The pool, for a round going on the wire (counts as a use).
pub fn pool() -> Arc<ConnectionPool> {
    CONNECTIONS.with(|connections| {
        let mut connections = connections.borrow_mut();
        connections.1 = Instant::now();
        Arc::clone(&connections.0)
    })
}

/// A round came back: its connections are in the pool from now on.
pub fn used_now() {
    CONNECTIONS.with(|connections| connections.borrow_mut().1 = Instant::now());
}

/// How long the open SMTP connections have been idle (`None`: none open).
fn idle_for() -> Option<Duration> {
    CONNECTIONS.with(|connections| {
        let connections = connections.borrow();
        (connections.0.open_connections() > 0).then(|| connections.1.elapsed())
    })
}

/// Closes the connections once they sat idle for `KEEP_CONNECTIONS_OPEN`;
/// returns when to look again (`None`: none open).
pub fn close_idle() -> Option<Duration> {
    let idle = idle_for()?;
    if idle >= KEEP_CONNECTIONS_OPEN {
        close_all();
        return None;
    }
    Some(KEEP_CONNECTIONS_OPEN - idle)
}

pub fn close_all() {
    CONNECTIONS.with(|connections| connections.borrow().0.close_all());
}
