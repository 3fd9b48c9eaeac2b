//! Catalog look-ups that need no SQL statement (so an idle worker runs none).

use super::transaction::{in_transaction, StoreError};
use pgrx::pg_sys;

/// Whether `CREATE EXTENSION email_accounts` has been run in the worker's database.
pub fn extension_installed() -> Result<bool, StoreError> {
    in_transaction(|| unsafe { pg_sys::get_extension_oid(c"email_accounts".as_ptr(), true) != pg_sys::InvalidOid })
}
