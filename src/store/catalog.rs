//! Catalog look-ups that need no SQL statement (so an idle worker runs none).

use super::transaction::{in_transaction, StoreError};
use pgrx::pg_sys;

/// Whether `CREATE EXTENSION email_accounts` has been run in the worker's database.
pub fn extension_installed() -> Result<bool, StoreError> {
    in_transaction(|| unsafe { pg_sys::get_extension_oid(c"email_accounts".as_ptr(), true) != pg_sys::InvalidOid })
}

/// Rows ever inserted into or updated in the outbox, from the cumulative
/// statistics (shared memory, no SQL statement): lets an idle sender's
/// fallback poll notice rows that arrived without waking it. `None` when the
/// extension is not installed.
pub fn outbox_changes() -> Result<Option<i64>, StoreError> {
    in_transaction(|| unsafe {
        let schema = pg_sys::get_namespace_oid(c"email_accounts".as_ptr(), true);
        if schema == pg_sys::InvalidOid {
            return None;
        }
        let outbox = pg_sys::get_relname_relid(c"outbox".as_ptr(), schema);
        if outbox == pg_sys::InvalidOid {
            return None;
        }
        // A fresh snapshot of the statistics, not the one cached earlier.
        pg_sys::pgstat_clear_snapshot();
        let entry = pg_sys::pgstat_fetch_stat_tabentry(outbox);
        Some(if entry.is_null() { 0 } else { (*entry).tuples_inserted + (*entry).tuples_updated })
    })
}
