//! How the launcher hears of DDL without polling any database: every
//! backend loads this library (shared_preload_libraries), and its utility
//! hook
//! - after CREATE / ALTER / DROP EXTENSION, DROP SCHEMA, DROP OWNED and the
//!   like, looks at commit whether `email_accounts` is (still) in the
//!   database and publishes that on the board (waking the launcher and the
//!   database's workers);
//! - before DROP DATABASE, CREATE DATABASE … TEMPLATE, ALTER DATABASE …
//!   RENAME / SET TABLESPACE (which need the database without connections)
//!   stops that database's workers and holds them off until the command ends;
//! - after CREATE / DROP DATABASE wakes the launcher.

use super::board;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgList;
use std::ffi::{c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// How long a command that needs a database empty waits for its workers.
const STOP_WAIT: Duration = Duration::from_secs(10);

static mut PREVIOUS_HOOK: pg_sys::ProcessUtility_hook_type = None;

// Per backend: the commit callback is registered; what this transaction's
// DDL asks for at commit (LOOK at the extension, WAKE the database's workers
// even if nothing changed, e.g. ALTER EXTENSION UPDATE, wake the LAUNCHER).
static CALLBACK_REGISTERED: AtomicBool = AtomicBool::new(false);
static EXIT_CALLBACK_REGISTERED: AtomicBool = AtomicBool::new(false);
static AT_COMMIT: AtomicU8 = AtomicU8::new(0);
// What the pre-commit look found (bit 0 valid, bit 1 present).
static FOUND: AtomicU8 = AtomicU8::new(0);
const LOOK: u8 = 1;
const WAKE: u8 = 2;
const LAUNCHER: u8 = 4;

/// Installs the hook (from `_PG_init`, once per process).
pub fn install() {
    unsafe {
        PREVIOUS_HOOK = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    statement: *mut pg_sys::PlannedStmt,
    query: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    environment: *mut pg_sys::QueryEnvironment,
    destination: *mut pg_sys::DestReceiver,
    completion: *mut pg_sys::QueryCompletion,
) {
    let node = unsafe { (*statement).utilityStmt };
    let run = || unsafe {
        match PREVIOUS_HOOK {
            Some(previous) => {
                previous(statement, query, read_only_tree, context, params, environment, destination, completion)
            }
            None => pg_sys::standard_ProcessUtility(
                statement,
                query,
                read_only_tree,
                context,
                params,
                environment,
                destination,
                completion,
            ),
        }
    };
    let ddl = unsafe { classify(node) };
    if ddl.extension != 0 {
        look_at_commit(ddl.extension);
    }
    // (CREATE / DROP DATABASE commit right after: the launcher sees them then.)
    if ddl.databases_changed {
        look_at_commit(LAUNCHER);
    }
    // Only for a command that may go ahead: PostgreSQL checks ownership
    // inside it, and anybody may try (it would stop the workers for nothing).
    let to_empty = ddl
        .database_to_empty
        .filter(|&database| board::extension_of(database).is_some() && may_run(database, ddl.needs_createdb));
    match to_empty {
        Some(database) => {
            PgTryBuilder::new(|| {
                stop_workers_of(database);
                run()
            })
            .catch_others(|error| {
                board::resume(database);
                error.rethrow()
            })
            .execute();
            if !ddl.database_dropped {
                board::resume(database);
            }
        }
        None => run(),
    }
    // Gone at commit: the launcher must not look at it meanwhile.
    if let (true, Some(database)) = (ddl.database_dropped, to_empty) {
        board::remove_database(database);
        board::mark_absent(database);
    }
}

/// What a utility statement means to the launcher.
#[derive(Default)]
struct Ddl {
    /// LOOK / WAKE bits for the commit.
    extension: u8,
    /// A database that must have no connections while the command runs.
    database_to_empty: Option<u32>,
    database_dropped: bool,
    /// CREATE DATABASE: the caller also needs CREATEDB.
    needs_createdb: bool,
    /// pg_database changed (the launcher looks at it again).
    databases_changed: bool,
}

unsafe fn classify(node: *mut pg_sys::Node) -> Ddl {
    use pg_sys::NodeTag::*;
    if node.is_null() {
        return Ddl::default();
    }
    let tag = unsafe { (*node).type_ };
    let names_us = |name: *const std::ffi::c_char| {
        !name.is_null() && unsafe { CStr::from_ptr(name) }.to_bytes() == b"email_accounts"
    };
    let database = |name: *const std::ffi::c_char| -> Option<u32> {
        if name.is_null() {
            return None;
        }
        let oid = unsafe { pg_sys::get_database_oid(name, true) };
        (oid != pg_sys::InvalidOid).then(|| oid.to_u32())
    };
    unsafe {
        match tag {
            T_CreateExtensionStmt => {
                let statement = node as *mut pg_sys::CreateExtensionStmt;
                Ddl { extension: LOOK | if names_us((*statement).extname) { WAKE } else { 0 }, ..Ddl::default() }
            }
            T_AlterExtensionStmt => {
                let statement = node as *mut pg_sys::AlterExtensionStmt;
                Ddl { extension: LOOK | if names_us((*statement).extname) { WAKE } else { 0 }, ..Ddl::default() }
            }
            // DROP EXTENSION, and whatever may drop it with CASCADE.
            T_DropStmt | T_DropOwnedStmt => Ddl { extension: LOOK, ..Ddl::default() },
            T_DropdbStmt => {
                let statement = node as *mut pg_sys::DropdbStmt;
                Ddl {
                    database_to_empty: database((*statement).dbname),
                    database_dropped: true,
                    databases_changed: true,
                    ..Ddl::default()
                }
            }
            T_CreatedbStmt => {
                let statement = node as *mut pg_sys::CreatedbStmt;
                let options = PgList::<pg_sys::DefElem>::from_pg((*statement).options);
                let template = options
                    .iter_ptr()
                    .find(|option: &*mut pg_sys::DefElem| CStr::from_ptr((**option).defname).to_bytes() == b"template")
                    .filter(|option| !(**option).arg.is_null())
                    .and_then(|option| database(pg_sys::defGetString(option)));
                Ddl { database_to_empty: template, needs_createdb: true, databases_changed: true, ..Ddl::default() }
            }
            T_RenameStmt if (*(node as *mut pg_sys::RenameStmt)).renameType == pg_sys::ObjectType::OBJECT_DATABASE => {
                let statement = node as *mut pg_sys::RenameStmt;
                Ddl { database_to_empty: database((*statement).subname), databases_changed: true, ..Ddl::default() }
            }
            T_AlterDatabaseStmt => {
                let statement = node as *mut pg_sys::AlterDatabaseStmt;
                let options = PgList::<pg_sys::DefElem>::from_pg((*statement).options);
                let moves = options
                    .iter_ptr()
                    .any(|option: *mut pg_sys::DefElem| CStr::from_ptr((*option).defname).to_bytes() == b"tablespace");
                Ddl {
                    database_to_empty: if moves { database((*statement).dbname) } else { None },
                    databases_changed: true,
                    ..Ddl::default()
                }
            }
            // ALTER DATABASE … WITH ALLOW_CONNECTIONS / IS_TEMPLATE changes what is served.
            _ => Ddl::default(),
        }
    }
}

/// Whether the calling role may run the command on the database (it owns
/// it, and for CREATE DATABASE may create databases): served databases are
/// never templates, so copying one needs its ownership.
fn may_run(database: u32, needs_createdb: bool) -> bool {
    unsafe {
        let role = pg_sys::GetUserId();
        pg_sys::pg_database_ownercheck(pg_sys::Oid::from(database), role)
            && (!needs_createdb || pg_sys::have_createdb_privilege())
    }
}

/// Stops the database's workers (SIGTERM: they hand back what they have
/// not sent) and waits a while for them to leave; the launcher starts none
/// there until `board::resume` (or this backend's exit: a FATAL meanwhile).
fn stop_workers_of(database: u32) {
    if !EXIT_CALLBACK_REGISTERED.swap(true, Ordering::Relaxed) {
        unsafe { pg_sys::before_shmem_exit(Some(end_pauses_at_exit), pg_sys::Datum::from(0)) };
    }
    // No room for another hold: go ahead; PostgreSQL says if connections remain.
    let Some(pids) = board::pause(database) else { return };
    for pid in pids {
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + STOP_WAIT;
    while board::any_worker_running(database) && Instant::now() < deadline {
        unsafe {
            let events = pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH;
            pg_sys::WaitLatch(pg_sys::MyLatch, events as i32, 20, pg_sys::PG_WAIT_EXTENSION);
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        pg_sys::check_for_interrupts!();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn end_pauses_at_exit(_code: i32, _argument: pg_sys::Datum) {
    let me = unsafe { pg_sys::MyProcPid };
    if board::end_pauses_of(|pid| pid == me) {
        board::wake_launcher();
    }
}

fn look_at_commit(bits: u8) {
    if !CALLBACK_REGISTERED.swap(true, Ordering::Relaxed) {
        unsafe { pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut()) };
    }
    AT_COMMIT.fetch_or(bits, Ordering::Relaxed);
}

#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(event: pg_sys::XactEvent::Type, _argument: *mut c_void) {
    match event {
        // Still inside the transaction: the catalog says what it leaves behind.
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT if AT_COMMIT.load(Ordering::Relaxed) & LOOK != 0 => {
            let present = unsafe { pg_sys::get_extension_oid(c"email_accounts".as_ptr(), true) } != pg_sys::InvalidOid;
            FOUND.store(1 | if present { 2 } else { 0 }, Ordering::Relaxed);
        }
        // Committed and visible to new snapshots: publish (never raises).
        pg_sys::XactEvent::XACT_EVENT_COMMIT => {
            let asked = AT_COMMIT.swap(0, Ordering::Relaxed);
            let found = FOUND.swap(0, Ordering::Relaxed);
            if asked & LOOK != 0 && found & 1 != 0 {
                board::publish_extension(board::my_database(), found & 2 != 0, asked & WAKE != 0);
            }
            if asked & LAUNCHER != 0 {
                board::wake_launcher();
            }
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PREPARE => {
            AT_COMMIT.store(0, Ordering::Relaxed);
            FOUND.store(0, Ordering::Relaxed);
        }
        _ => {}
    }
}
