//! `email_accounts.worker_status()`: what each background worker is doing,
//! read from shared memory: the launcher, then the workers of this
//! database (listed even before they start), then those of the other
//! databases the launcher serves.

use crate::settings;
use crate::store::catalog;
use crate::worker::board::{self, Extension, WorkerSlot};
use crate::worker::role::{Role, WorkerId};
use pgrx::prelude::*;

type Row =
    (Option<String>, String, String, Option<i32>, String, Option<TimestampWithTimeZone>, i64, i64, i64, i64, i64);

// pgrx needs the named columns spelled out in the signature.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_restricted)]
fn worker_status() -> TableIterator<
    'static,
    (
        name!(database, Option<String>),
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
    let mut rows: Vec<Row> =
        vec![row(None, Role::Launcher.label(), Role::Launcher.worker_name().to_owned(), board::read_launcher())];
    let here = board::my_database();
    let mut entries = board::entries();
    // Other databases' workers only for those who may watch the whole cluster.
    let sees_cluster = unsafe {
        pg_sys::superuser()
            || pg_sys::has_privs_of_role(pg_sys::GetUserId(), pg_sys::Oid::from(pg_sys::ROLE_PG_MONITOR))
    };
    entries.retain(|entry| entry.oid == here || (sees_cluster && entry.extension == Extension::Present));
    entries.sort_by_key(|entry| (entry.oid != here, entry.oid));
    if entries.first().is_none_or(|entry| entry.oid != here) {
        // No entry yet (the launcher has not started them): listed all the same.
        let mut rows_here = workers_of(here, &[WorkerSlot::default(); board::WORKERS_PER_DATABASE]);
        rows.append(&mut rows_here);
    }
    for entry in entries {
        rows.append(&mut workers_of(entry.oid, &entry.workers));
    }
    TableIterator::new(rows)
}

/// The receiver and the senders of one database.
fn workers_of(database: u32, slots: &[WorkerSlot; board::WORKERS_PER_DATABASE]) -> Vec<Row> {
    let name = catalog::database_name_of(database);
    let ids = std::iter::once(WorkerId::receiver(database))
        .chain((0..settings::MAX_SENDERS).map(|instance| WorkerId::sender(database, instance as u8)));
    ids.filter(|id| {
        id.role == Role::Receiver || (id.instance as usize) < settings::senders() || slots[id.slot()].pid != 0
    })
    .map(|id| row(name.clone(), id.role.label(), id.name(), slots[id.slot()]))
    .collect()
}

fn row(database: Option<String>, role: &str, worker_name: String, slot: WorkerSlot) -> Row {
    let started_at = (slot.started_at != 0).then(|| TimestampWithTimeZone::try_from(slot.started_at).ok()).flatten();
    (
        database,
        role.to_owned(),
        worker_name,
        (slot.pid != 0).then_some(slot.pid),
        slot.state.label().to_owned(),
        started_at,
        slot.config_reloads,
        slot.fallback_poll_interval_ms,
        slot.wake_requests,
        slot.latch_wakeups,
        slot.timeouts,
    )
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn worker_status_lists_every_role() {
        let roles = Spi::get_one::<String>(
            "SELECT string_agg(role, ',' ORDER BY role) FROM email_accounts.worker_status()
              WHERE database IS NOT DISTINCT FROM (CASE role WHEN 'launcher' THEN NULL ELSE current_database() END)",
        );
        assert_eq!(roles, Ok(Some("launcher,receiver,sender".to_owned())));
    }
}
