//! Catalog look-ups that need no SQL statement (so an idle worker runs none).

use super::transaction::{in_transaction, StoreError};
use pgrx::pg_sys;
use std::ffi::CStr;

/// The version of `email_accounts` created in the worker's database (`None`
/// before CREATE EXTENSION), read as get_extension_oid() reads pg_extension,
/// in the caller's transaction.
pub fn installed_version_now() -> Option<String> {
    // SAFETY: the caller is in a transaction; the scan and the relation are
    // closed before returning, and the version is copied out first.
    unsafe {
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        let relation = pg_sys::table_open(pg_sys::ExtensionRelationId, lock);
        let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
        pg_sys::ScanKeyInit(
            &mut key,
            pg_sys::Anum_pg_extension_extname as pg_sys::AttrNumber,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::Oid::from(pg_sys::F_NAMEEQ),
            pg_sys::Datum::from(c"email_accounts".as_ptr()),
        );
        let scan = pg_sys::systable_beginscan(
            relation,
            pg_sys::Oid::from(pg_sys::ExtensionNameIndexId),
            true,
            std::ptr::null_mut(),
            1,
            &mut key,
        );
        let tuple = pg_sys::systable_getnext(scan);
        let mut version = None;
        if !tuple.is_null() {
            let mut is_null = false;
            let datum = pg_sys::heap_getattr(
                tuple,
                pg_sys::Anum_pg_extension_extversion as i32,
                (*relation).rd_att,
                &mut is_null,
            );
            if !is_null {
                let text = pg_sys::text_to_cstring(datum.cast_mut_ptr());
                version = Some(CStr::from_ptr(text).to_string_lossy().into_owned());
                pg_sys::pfree(text.cast());
            }
        }
        pg_sys::systable_endscan(scan);
        pg_sys::table_close(relation, lock);
        version
    }
}

/// The name of the database this process is connected to.
pub fn database_name() -> Result<String, StoreError> {
    in_transaction(|| database_name_of(unsafe { pg_sys::MyDatabaseId }.to_u32()).unwrap_or_default())
}

/// The name of a database, in the caller's transaction (`None`: no such database).
pub fn database_name_of(database: u32) -> Option<String> {
    // SAFETY: a syscache look-up; the name is copied out.
    unsafe {
        let name = pg_sys::get_database_name(pg_sys::Oid::from(database));
        (!name.is_null()).then(|| CStr::from_ptr(name).to_string_lossy().into_owned())
    }
}

/// Changes to the outbox: rows the sender might have to send (in the
/// caller's transaction).
pub fn outbox_changes_now() -> Option<i64> {
    // (A deleted row never makes mail due.)
    changes_now(&[c"outbox"], false)
}

/// Changes to what decides when an account is synced: accounts, their
/// domains and presets, and the folders' sync state (in the caller's
/// transaction).
pub fn receiving_changes_now() -> Option<i64> {
    // (A deleted sync_state row makes its folder sync from the start.)
    changes_now(&[c"account", c"domain", c"provider", c"sync_state"], true)
}

/// Rows ever inserted, updated or deleted in these tables of the extension,
/// from the cumulative statistics (shared memory, no SQL statement): lets an
/// idle worker's fallback poll notice changes that did not wake it. `None`
/// when the extension is not installed. In the caller's transaction.
fn changes_now(tables: &[&CStr], count_deletes: bool) -> Option<i64> {
    // SAFETY: catalog look-ups by name in the caller's transaction; each
    // statistics entry is read before the next fetch.
    unsafe {
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
                changes += (*entry).tuples_inserted + (*entry).tuples_updated;
                if count_deletes {
                    changes += (*entry).tuples_deleted;
                }
            }
        }
        Some(changes)
    }
}

/// One row of pg_database, as the launcher needs it.
#[derive(Debug, Clone)]
pub struct Database {
    pub oid: u32,
    pub name: String,
    pub is_template: bool,
    pub allows_connections: bool,
}

/// Every database of the cluster (pg_database is a shared catalog: readable
/// by the launcher, which is connected to no database).
pub fn databases() -> Result<Vec<Database>, StoreError> {
    in_transaction(databases_now)
}

/// The same, in the caller's transaction.
pub fn databases_now() -> Vec<Database> {
    // SAFETY: the caller is in a transaction; every tuple is copied out before
    // the next one is read, and the scan and relation are closed before returning.
    unsafe {
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        let relation = pg_sys::table_open(pg_sys::DatabaseRelationId, lock);
        let scan = pg_sys::table_beginscan_catalog(relation, 0, std::ptr::null_mut());
        let mut databases = Vec::new();
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let header = (*tuple).t_data;
            let row = (header as *const u8).add((*header).t_hoff as usize) as *const pg_sys::FormData_pg_database;
            databases.push(Database {
                oid: (*row).oid.to_u32(),
                name: CStr::from_ptr((*row).datname.data.as_ptr()).to_string_lossy().into_owned(),
                is_template: (*row).datistemplate,
                allows_connections: (*row).datallowconn,
            });
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(relation, lock);
        databases
    }
}
