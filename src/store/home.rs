//! The home row (sql/home.sql): whether the database a worker runs in is the
//! one whose mail this is, or a copy of a database the cluster still serves.

use super::transaction::{try_in_transaction, StoreError};
use pgrx::prelude::*;
use pgrx::spi::SpiError;

/// What the home row says about the worker's database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Home {
    /// This database's mail (the row names it, or now does).
    Here,
    /// A copy of this database (by oid) of the same cluster, which still serves it.
    CopyOf(u32),
}

/// Reads the home row; unless it names another database of this cluster
/// for which `still_served` holds, makes it name this one.
pub fn check(still_served: impl Fn(u32) -> bool) -> Result<Home, StoreError> {
    try_in_transaction(std::panic::AssertUnwindSafe(|| -> Result<Home, SpiError> {
        let system = unsafe { pg_sys::GetSystemIdentifier() }.to_string();
        let here = unsafe { pg_sys::MyDatabaseId }.to_u32();
        let row = Spi::connect(|client| -> Result<Option<(i64, String)>, SpiError> {
            let table =
                client.select("SELECT database_oid::bigint, system_identifier FROM email_accounts.home", None, &[])?;
            let mut rows = table.into_iter();
            match rows.next() {
                Some(row) => Ok(Some((row.get(1)?.unwrap_or_default(), row.get(2)?.unwrap_or_default()))),
                None => Ok(None),
            }
        })?;
        match row {
            Some((database, cluster)) if database == i64::from(here) && cluster == system => return Ok(Home::Here),
            Some((database, cluster)) if cluster == system && still_served(database as u32) => {
                return Ok(Home::CopyOf(database as u32));
            }
            _ => {}
        }
        Spi::run_with_args(
            "INSERT INTO email_accounts.home (database_oid, system_identifier) VALUES ($1::bigint::oid, $2)
             ON CONFLICT (only_row) DO UPDATE
                SET database_oid = excluded.database_oid, system_identifier = excluded.system_identifier, adopted_at = now()",
            &[i64::from(here).into(), system.into()],
        )?;
        Ok(Home::Here)
    }))
}
