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
//! - after CREATE / DROP DATABASE wakes the launcher;
//! - counts COMMIT PREPARED as a settings change under way until its
//!   transaction ends (wake.rs SETTINGS: what a prepared transaction
//!   changed is not known).

use super::board;
use super::wake::{self, at_commit};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgList;
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a command that needs a database empty waits for its workers.
const STOP_WAIT: Duration = Duration::from_secs(10);

static mut PREVIOUS_HOOK: pg_sys::ProcessUtility_hook_type = None;

// Per backend: whether the exit callback that ends this backend's holds is registered.
static EXIT_CALLBACK_REGISTERED: AtomicBool = AtomicBool::new(false);

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
    if unsafe { commits_prepared(node) } {
        wake::settings_change_begins_now();
    }
    let ddl = unsafe { classify(node) };
    if ddl.at_commit != 0 {
        at_commit(ddl.at_commit);
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
        board::database_dropped(database);
    }
}

/// What a utility statement means to the launcher.
#[derive(Default)]
struct Ddl {
    /// What to do at commit (wake.rs): look at the extension; wake the
    /// launcher after database DDL (CREATE / DROP DATABASE commit right after).
    at_commit: u32,
    /// A database that must have no connections while the command runs.
    database_to_empty: Option<u32>,
    database_dropped: bool,
    /// CREATE DATABASE: the caller also needs CREATEDB.
    needs_createdb: bool,
}

/// The option of this name in a DDL statement's list of options.
unsafe fn option(options: *mut pg_sys::List, name: &[u8]) -> Option<*mut pg_sys::DefElem> {
    let options = unsafe { PgList::<pg_sys::DefElem>::from_pg(options) };
    let found = options.iter_ptr().find(|option| unsafe { CStr::from_ptr((**option).defname) }.to_bytes() == name);
    found
}

/// COMMIT PREPARED.
unsafe fn commits_prepared(node: *mut pg_sys::Node) -> bool {
    !node.is_null()
        && unsafe { (*node).type_ } == pg_sys::NodeTag::T_TransactionStmt
        && unsafe { (*(node as *mut pg_sys::TransactionStmt)).kind }
            == pg_sys::TransactionStmtKind::TRANS_STMT_COMMIT_PREPARED
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
            T_CreateExtensionStmt | T_AlterExtensionStmt => {
                let name = if tag == T_CreateExtensionStmt {
                    (*(node as *mut pg_sys::CreateExtensionStmt)).extname
                } else {
                    (*(node as *mut pg_sys::AlterExtensionStmt)).extname
                };
                let changed = if names_us(name) { wake::EXTENSION_CHANGED } else { 0 };
                Ddl { at_commit: wake::EXTENSION | changed, ..Ddl::default() }
            }
            // DROP EXTENSION, and whatever may drop it with CASCADE.
            T_DropStmt | T_DropOwnedStmt => Ddl { at_commit: wake::EXTENSION, ..Ddl::default() },
            T_DropdbStmt => {
                let statement = node as *mut pg_sys::DropdbStmt;
                Ddl {
                    database_to_empty: database((*statement).dbname),
                    database_dropped: true,
                    at_commit: wake::LAUNCHER,
                    ..Ddl::default()
                }
            }
            T_CreatedbStmt => {
                let statement = node as *mut pg_sys::CreatedbStmt;
                let template = option((*statement).options, b"template")
                    .filter(|template| !(**template).arg.is_null())
                    .and_then(|template| database(pg_sys::defGetString(template)));
                Ddl { database_to_empty: template, needs_createdb: true, at_commit: wake::LAUNCHER, ..Ddl::default() }
            }
            T_RenameStmt if (*(node as *mut pg_sys::RenameStmt)).renameType == pg_sys::ObjectType::OBJECT_DATABASE => {
                let statement = node as *mut pg_sys::RenameStmt;
                Ddl { database_to_empty: database((*statement).subname), at_commit: wake::LAUNCHER, ..Ddl::default() }
            }
            T_AlterDatabaseStmt => {
                let statement = node as *mut pg_sys::AlterDatabaseStmt;
                let moves = option((*statement).options, b"tablespace").is_some();
                Ddl {
                    database_to_empty: if moves { database((*statement).dbname) } else { None },
                    at_commit: wake::LAUNCHER,
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
    if !board::pause(database) {
        return;
    }
    for pid in board::worker_pids(database) {
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + STOP_WAIT;
    while !board::worker_pids(database).is_empty() && Instant::now() < deadline {
        super::nap(20);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn end_pauses_at_exit(_code: i32, _argument: pg_sys::Datum) {
    let me = unsafe { pg_sys::MyProcPid };
    if board::end_pauses_of(|pid| pid == me) {
        board::wake_launcher();
    }
}
