//! Catalog look-ups that need no SQL statement (so an idle worker runs none).

use super::transaction::{in_transaction, StoreError};
use pgrx::pg_sys;
use std::ffi::CStr;

/// Whether `CREATE EXTENSION email_accounts` has been run in the worker's database.
pub fn extension_installed() -> Result<bool, StoreError> {
    in_transaction(|| unsafe { pg_sys::get_extension_oid(c"email_accounts".as_ptr(), true) != pg_sys::InvalidOid })
}

/// Rows ever inserted, updated or deleted in these tables of the extension,
/// from the cumulative statistics (shared memory, no SQL statement): lets an
/// idle worker's fallback poll notice changes that did not wake it. `None`
/// when the extension is not installed.
fn changes_to(tables: &[&CStr]) -> Result<Option<i64>, StoreError> {
    in_transaction(|| unsafe {
        let schema = pg_sys::get_namespace_oid(c"email_accounts".as_ptr(), true);
        if schema == pg_sys::InvalidOid {
            return None;
        }
        // A fresh snapshot of the statistics, not the one cached earlier.
        pg_sys::pgstat_clear_snapshot();
        let mut changes = 0;
        for table in tables {
            let relation = pg_sys::get_relname_relid(table.as_ptr(), schema);
            if relation == pg_sys::InvalidOid {
                return None;
            }
            let entry = pg_sys::pgstat_fetch_stat_tabentry(relation);
            if !entry.is_null() {
                changes += (*entry).tuples_inserted + (*entry).tuples_updated + (*entry).tuples_deleted;
            }
        }
        Some(changes)
    })
}

/// Changes to the outbox: rows the sender might have to send.
pub fn outbox_changes() -> Result<Option<i64>, StoreError> {
    changes_to(&[c"outbox"])
}

/// Changes to what decides when an account is synced: accounts, their
/// domains and presets, and the folders' sync state.
pub fn receiving_changes() -> Result<Option<i64>, StoreError> {
    changes_to(&[c"account", c"domain", c"provider", c"sync_state"])
}
