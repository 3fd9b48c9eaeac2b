//! Plans the workers keep for their frequent statements.
//!
//! Parsing and planning was most of a claim: for one due row, EXPLAIN
//! ANALYZE gave the claim statement 3.0 ms of planning and 0.4 ms of
//! execution. A kept plan is made once (SPI_keepplan) and is generic
//! (CURSOR_OPT_GENERIC_PLAN): with pgrx's prepare, PostgreSQL's plan cache
//! judged a custom plan cheaper for five of the sender's statements (their
//! array parameters) and planned them on every call all the same.
//!
//! A generic plan is only as good as the table sizes it was made for, and
//! PostgreSQL re-plans on DDL or ANALYZE but not when a table grows: a claim
//! planned on the empty outbox joined it by a sequential scan per candidate
//! once 20,000 rows were queued (1.8 s per claim, 343 msg/s in `make bench`).
//! So each plan remembers the size in blocks of the tables it reads (what the
//! planner's estimates start from) and is made anew once one has doubled.

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::spi::{SpiClient, SpiError, SpiHeapTupleData};
use pgrx::Spi;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::ptr::NonNull;

/// A plan kept for the life of the process.
struct KeptPlan {
    plan: NonNull<pg_sys::_SPI_plan>,
    /// The tables the plan reads and their size in blocks when it was made.
    table_sizes: Vec<(pg_sys::Oid, u32)>,
}

/// A table this much larger (in blocks) than when a plan was made gets the plan made anew.
fn outgrown(blocks_then: u32, blocks_now: u32) -> bool {
    blocks_now >= blocks_then.max(8).saturating_mul(2)
}

/// A statement's text (a `&'static str`, so its address) and the types of
/// the arguments it is run with: a plan is only ever run with values of the
/// types it was prepared for (other types get a plan of their own).
type PlanKey = (usize, Vec<pg_sys::Oid>);

thread_local! {
    static KEPT: RefCell<HashMap<PlanKey, KeptPlan>> = RefCell::new(HashMap::new());
    /// Plans made so far (for the tests: kept or made anew).
    static PLANS_MADE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The rows a statement returned, valid while its SPI connection is open.
pub type Rows<'conn> = Vec<SpiHeapTupleData<'conn>>;

/// The kept plan of `sql`, prepared on first use with the types of `arguments`.
fn plan(sql: &'static str, arguments: &[DatumWithOid<'_>]) -> Result<NonNull<pg_sys::_SPI_plan>, SpiError> {
    let mut types: Vec<pg_sys::Oid> = arguments.iter().map(DatumWithOid::oid).collect();
    let key: PlanKey = (sql.as_ptr() as usize, types.clone());
    let kept = KEPT.with(|plans| {
        let plans = plans.borrow();
        let kept = plans.get(&key)?;
        let current =
            kept.table_sizes.iter().all(|&(table, then)| table_blocks(table).is_some_and(|now| !outgrown(then, now)));
        Some((kept.plan, current))
    });
    match kept {
        Some((plan, true)) => return Ok(plan),
        Some((plan, false)) => {
            KEPT.with(|plans| plans.borrow_mut().remove(&key));
            // SAFETY: the plan was kept by us and is no longer referenced.
            unsafe { pg_sys::SPI_freeplan(plan.as_ptr()) };
        }
        None => {}
    }
    let text = CString::new(sql).expect("statements have no NUL byte");
    // SAFETY: an SPI connection is open (callers hold a client); the text and
    // the types outlive the call. A syntax or catalog error raises an ERROR,
    // which the worker's transaction catches.
    let prepared = unsafe {
        pg_sys::SPI_prepare_cursor(
            text.as_ptr(),
            types.len() as i32,
            types.as_mut_ptr(),
            pg_sys::CURSOR_OPT_GENERIC_PLAN as i32,
        )
    };
    let Some(prepared) = NonNull::new(prepared) else {
        return Err(status_error(unsafe { pg_sys::SPI_result }));
    };
    // SAFETY: `prepared` was just returned by SPI_prepare_cursor; 0 is success.
    let status = unsafe { pg_sys::SPI_keepplan(prepared.as_ptr()) };
    if status != 0 {
        return Err(status_error(status));
    }
    let table_sizes = read_tables(prepared)
        .into_iter()
        .filter_map(|table| table_blocks(table).map(|blocks| (table, blocks)))
        .collect();
    KEPT.with(|plans| plans.borrow_mut().insert(key, KeptPlan { plan: prepared, table_sizes }));
    PLANS_MADE.with(|made| made.set(made.get() + 1));
    Ok(prepared)
}

/// The tables (not views) a prepared statement depends on.
fn read_tables(plan: NonNull<pg_sys::_SPI_plan>) -> Vec<pg_sys::Oid> {
    let mut tables = Vec::new();
    // SAFETY: the lists belong to the prepared plan, which is alive; an OID
    // list's cells hold OIDs and a plan-source list's cells pointers.
    unsafe {
        for source in list_cells(pg_sys::SPI_plan_get_plan_sources(plan.as_ptr())) {
            let source = source.ptr_value as *mut pg_sys::CachedPlanSource;
            for relation in list_cells((*source).relationOids) {
                let relation = relation.oid_value;
                if pg_sys::get_rel_relkind(relation) as u8 == pg_sys::RELKIND_RELATION && !tables.contains(&relation) {
                    tables.push(relation);
                }
            }
        }
    }
    tables
}

/// The cells of a PostgreSQL list (none for NIL).
unsafe fn list_cells<'a>(list: *mut pg_sys::List) -> &'a [pg_sys::ListCell] {
    if list.is_null() {
        return &[];
    }
    unsafe { std::slice::from_raw_parts((*list).elements, (*list).length as usize) }
}

/// A table's size in blocks, as the planner reads it; `None` once it is gone.
fn table_blocks(table: pg_sys::Oid) -> Option<u32> {
    // SAFETY: inside a transaction; the statement that follows takes the same
    // lock, and the relation is closed before returning.
    unsafe {
        let relation = pg_sys::try_relation_open(table, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        if relation.is_null() {
            return None;
        }
        let blocks = pg_sys::RelationGetNumberOfBlocksInFork(relation, pg_sys::ForkNumber::MAIN_FORKNUM);
        pg_sys::relation_close(relation, pg_sys::NoLock as pg_sys::LOCKMODE);
        Some(blocks)
    }
}

fn status_error(status: i32) -> SpiError {
    match Spi::check_status(status) {
        Err(error) => error,
        Ok(_) => SpiError::NoTupleTable,
    }
}

/// Runs `sql` through its kept plan. `writes`: the statement changes data
/// (as pgrx's `update`, later statements of the transaction then see it).
fn execute<'conn>(
    _client: &SpiClient<'conn>,
    sql: &'static str,
    arguments: &[DatumWithOid<'_>],
    writes: bool,
) -> Result<Rows<'conn>, SpiError> {
    let plan = plan(sql, arguments)?;
    let (mut values, nulls): (Vec<pg_sys::Datum>, Vec<std::ffi::c_char>) = arguments
        .iter()
        .map(|argument| match argument.datum() {
            Some(datum) => (datum.sans_lifetime(), b' ' as std::ffi::c_char),
            None => (pg_sys::Datum::from(0usize), b'n' as std::ffi::c_char),
        })
        .unzip();
    // SAFETY: SPI is connected; the plan is kept; values and nulls have one
    // entry per parameter, of the types the plan was made for (its key).
    let rows = unsafe {
        if writes {
            // A transaction id marks the transaction as writing, for pgrx's later statements.
            pg_sys::GetCurrentTransactionId();
        }
        // Read-only (no new snapshot, no command counter step) only while the
        // whole transaction has written nothing: the top-level transaction's
        // id, not the current subtransaction's, which a fresh subtransaction
        // inside a writing one lacks (it then missed the rows its parent had
        // just stored).
        let read_only = !writes && pg_sys::GetTopTransactionIdIfAny() == pg_sys::InvalidTransactionId;
        pg_sys::SPI_tuptable = std::ptr::null_mut();
        let status = pg_sys::SPI_execute_plan(plan.as_ptr(), values.as_mut_ptr(), nulls.as_ptr(), read_only, 0);
        Spi::check_status(status)?;
        let table = pg_sys::SPI_tuptable;
        let mut rows = Vec::new();
        if !table.is_null() {
            let count = (*table).numvals as usize;
            rows.reserve(count);
            for index in 0..count {
                if let Some(row) = SpiHeapTupleData::new((*table).tupdesc, *(*table).vals.add(index))? {
                    rows.push(row);
                }
            }
        }
        rows
    };
    Ok(rows)
}

/// Runs a reading statement through its kept plan.
pub fn select<'conn>(
    client: &SpiClient<'conn>,
    sql: &'static str,
    arguments: &[DatumWithOid<'_>],
) -> Result<Rows<'conn>, SpiError> {
    execute(client, sql, arguments, false)
}

/// Runs a writing statement through its kept plan.
pub fn update<'conn>(
    client: &mut SpiClient<'conn>,
    sql: &'static str,
    arguments: &[DatumWithOid<'_>],
) -> Result<Rows<'conn>, SpiError> {
    execute(client, sql, arguments, true)
}

/// Runs a writing statement through its kept plan, ignoring what it returns.
pub fn run(sql: &'static str, arguments: &[DatumWithOid<'_>]) -> Result<(), SpiError> {
    Spi::connect_mut(|client| update(client, sql, arguments).map(|_| ()))
}

/// The first column of the first row of a reading statement (`None` when
/// there is no row or the value is NULL).
pub fn get_one<T: pgrx::FromDatum + pgrx::IntoDatum>(
    sql: &'static str,
    arguments: &[DatumWithOid<'_>],
) -> Result<Option<T>, SpiError> {
    Spi::connect(|client| match select(client, sql, arguments)?.first() {
        Some(row) => row.get::<T>(1),
        None => Ok(None),
    })
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::{get_one, PLANS_MADE};
    use pgrx::prelude::*;

    const COUNT: &str = "SELECT count(*) FROM growing WHERE id = ANY ($1)";

    fn count() -> Option<i64> {
        get_one::<i64>(COUNT, &[vec![1_i64, 2, 3].into()]).unwrap()
    }

    fn plans_made() -> u64 {
        PLANS_MADE.with(|made| made.get())
    }

    #[pg_test]
    fn a_plan_is_kept_and_made_anew_once_a_table_it_reads_has_doubled() {
        Spi::run("CREATE TABLE growing (id bigint PRIMARY KEY, filler text)").unwrap();
        let before = plans_made();
        assert_eq!(count(), Some(0));
        assert_eq!(count(), Some(0));
        assert_eq!(plans_made(), before + 1, "the second call reuses the plan");

        // A few rows: still well under twice the (minimum) size the plan was made for.
        Spi::run("INSERT INTO growing SELECT n, 'x' FROM generate_series(1, 3) AS n").unwrap();
        assert_eq!(count(), Some(3));
        assert_eq!(plans_made(), before + 1);

        // ~70 blocks: the plan made for an empty table is made anew, and answers the same.
        Spi::run("INSERT INTO growing SELECT n, repeat('x', 500) FROM generate_series(4, 1000) AS n").unwrap();
        assert_eq!(count(), Some(3));
        assert_eq!(plans_made(), before + 2);
        assert_eq!(count(), Some(3));
        assert_eq!(plans_made(), before + 2);
    }

    #[pg_test]
    fn the_same_statement_with_other_argument_types_gets_a_plan_of_its_own() {
        Spi::run("CREATE TABLE growing (id bigint PRIMARY KEY)").unwrap();
        Spi::run("INSERT INTO growing VALUES (1), (2)").unwrap();
        const FIND: &str = "SELECT count(*) FROM growing WHERE id::text = ANY ($1::text[])";
        let before = plans_made();
        assert_eq!(get_one::<i64>(FIND, &[vec!["1".to_owned()].into()]).unwrap(), Some(1));
        // The same text run with bigint[]: not the text[] plan fed a bigint array.
        assert_eq!(get_one::<i64>(FIND, &[vec![1_i64, 2].into()]).unwrap(), Some(2));
        assert_eq!(plans_made(), before + 2);
        assert_eq!(get_one::<i64>(FIND, &[vec!["2".to_owned()].into()]).unwrap(), Some(1));
        assert_eq!(plans_made(), before + 2);
    }

    /// A reading statement in a fresh subtransaction of a transaction that
    /// has written sees what it wrote (the receiver's routing steps each run
    /// in a subtransaction after the messages were stored).
    #[pg_test]
    fn a_read_in_a_subtransaction_sees_what_the_transaction_wrote() {
        Spi::run("CREATE TABLE growing (id bigint PRIMARY KEY)").unwrap();
        Spi::run("INSERT INTO growing VALUES (1), (2)").unwrap();
        let seen =
            crate::store::transaction::try_in_subtransaction(|| get_one::<i64>(COUNT, &[vec![1_i64, 2, 3].into()]))
                .unwrap();
        assert_eq!(seen, Some(2));
    }

    #[pg_test]
    fn a_plan_whose_table_was_dropped_and_created_again_reads_the_new_table() {
        Spi::run("CREATE TABLE growing (id bigint PRIMARY KEY)").unwrap();
        Spi::run("INSERT INTO growing VALUES (1)").unwrap();
        assert_eq!(count(), Some(1));
        Spi::run("DROP TABLE growing").unwrap();
        Spi::run("CREATE TABLE growing (id bigint PRIMARY KEY)").unwrap();
        Spi::run("INSERT INTO growing VALUES (1), (2)").unwrap();
        assert_eq!(count(), Some(2));
    }
}
