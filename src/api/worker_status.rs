//! `email_accounts.worker_status()`: what each background worker is doing,
//! read from shared memory (works even while a worker waits for the extension).

use crate::worker::board;
use crate::worker::role::Role;
use pgrx::prelude::*;

// pgrx needs the named columns spelled out in the signature.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_restricted)]
fn worker_status() -> TableIterator<
    'static,
    (
        name!(role, String),
        name!(worker_name, String),
        name!(pid, Option<i32>),
        name!(state, String),
        name!(started_at, Option<TimestampWithTimeZone>),
        name!(config_reloads, i64),
        name!(fallback_poll_interval_ms, i64),
        name!(wake_requests, i64),
        name!(latch_wakeups, i64),
        name!(timeouts, i64),
    ),
> {
    let rows: Vec<_> = Role::ALL
        .into_iter()
        .map(|role| {
            let slot = board::read(role);
            let started_at =
                (slot.started_at != 0).then(|| TimestampWithTimeZone::try_from(slot.started_at).ok()).flatten();
            (
                role.label().to_owned(),
                role.worker_name().to_owned(),
                (slot.pid != 0).then_some(slot.pid),
                slot.state.label().to_owned(),
                started_at,
                slot.config_reloads,
                slot.fallback_poll_interval_ms,
                slot.wake_requests,
                slot.latch_wakeups,
                slot.timeouts,
            )
        })
        .collect();
    TableIterator::new(rows)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn worker_status_lists_every_role() {
        let roles =
            Spi::get_one::<String>("SELECT string_agg(role, ',' ORDER BY role) FROM email_accounts.worker_status()");
        assert_eq!(roles, Ok(Some("receiver,sender".to_owned())));
    }
}
