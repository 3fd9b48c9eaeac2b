//! Who is writing: a restore, or a superuser acting as one. Used by the
//! triggers' WHEN clauses (sql/restore.sql explains why).

use pgrx::prelude::*;
use std::ffi::CStr;

/// True while a superuser session writes as `pg_restore` and plain dump
/// scripts do: `SET row_security = off` in the session (not from `ALTER
/// DATABASE`/`ALTER ROLE` or the configuration file, which a database owner
/// or an operator could set for everyone), outside any security-restricted
/// operation, with both the session user and the current user superusers
/// (routing code running as a tenant's role inside a superuser's session is
/// not). The triggers then take rows as they were dumped.
// (No pinned search_path: it runs no SQL, and a SET clause would cost every
// outbox insert a GUC nesting level.)
#[pg_extern(stable, parallel_safe)]
fn restoring() -> bool {
    // SAFETY: plain reads of backend state, in a backend.
    unsafe {
        pg_sys::superuser()
            && pg_sys::superuser_arg(pg_sys::GetSessionUserId())
            && !pg_sys::InSecurityRestrictedOperation()
            && row_security_turned_off_by_session()
    }
}

/// Whether the current user is a superuser (what `is_superuser` does not
/// follow: it is the session's role, also while code runs as another user).
#[pg_extern(stable, parallel_safe)]
fn current_user_is_superuser() -> bool {
    // SAFETY: reads the current user id, in a backend.
    unsafe { pg_sys::superuser() }
}

thread_local! {
    /// `row_security`'s entry among the settings, found once per backend: a
    /// restore asks for every row it writes, and the entries never move.
    static ROW_SECURITY: std::cell::Cell<*const pg_sys::config_generic> =
        const { std::cell::Cell::new(std::ptr::null()) };
}

/// `row_security` is off, and a SET in this session made it so.
unsafe fn row_security_turned_off_by_session() -> bool {
    unsafe {
        let value = pg_sys::GetConfigOption(c"row_security".as_ptr(), false, false);
        if value.is_null() || CStr::from_ptr(value).to_bytes() != b"off" {
            return false;
        }
        let mut entry = ROW_SECURITY.with(std::cell::Cell::get);
        if entry.is_null() {
            let variables = pg_sys::get_guc_variables();
            let count = pg_sys::GetNumConfigOptions() as usize;
            entry = (0..count)
                .map(|index| *variables.add(index) as *const pg_sys::config_generic)
                .find(|variable| !variable.is_null() && CStr::from_ptr((**variable).name).to_bytes() == b"row_security")
                .unwrap_or(std::ptr::null());
            ROW_SECURITY.with(|cell| cell.set(entry));
        }
        !entry.is_null() && (*entry).source == pg_sys::GucSource::PGC_S_SESSION
    }
}
