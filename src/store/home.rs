//! The home row (sql/home.sql): whether the database a worker runs in is the
//! one whose mail this is, or a copy of a database the cluster still serves.

use super::catalog::Database;
use super::kept_plans;
use pgrx::prelude::*;
use pgrx::spi::SpiError;

/// What the home row says about the worker's database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Home {
    /// This database's mail (the row names it, or now does).
    Here,
    /// A copy: the original (oid, name) is a database of this cluster.
    CopyOf(u32, String),
}

/// Reads the home row and decides; a database that may take the mail over
/// writes its own row. A copy is a database whose row names another one
/// that still exists in this cluster and is not a template (templates are
/// there to be copied): by oid in the same cluster (a rename is no copy); in
/// another cluster (pg_upgrade keeps oids and names, a restore elsewhere
/// does not) by oid and name.
/// In the caller's transaction.
pub fn check_now(databases: impl Fn() -> Vec<Database>) -> Result<Home, SpiError> {
    let system = unsafe { pg_sys::GetSystemIdentifier() }.to_string();
    let here = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let row = Spi::connect(|client| -> Result<Option<(i64, String, String)>, SpiError> {
        let rows = kept_plans::select(
            client,
            "SELECT database_oid::bigint, database_name, system_identifier FROM email_accounts.home",
            &[],
        )?;
        match rows.first() {
            Some(row) => Ok(Some((
                row.get(1)?.unwrap_or_default(),
                row.get(2)?.unwrap_or_default(),
                row.get(3)?.unwrap_or_default(),
            ))),
            None => Ok(None),
        }
    })?;
    if let Some((database, name, cluster)) = &row {
        if *database == i64::from(here) && *cluster == system {
            return Ok(Home::Here);
        }
        let same_cluster = *cluster == system;
        let original = databases().into_iter().find(|candidate| {
            i64::from(candidate.oid) == *database
                && candidate.oid != here
                && !candidate.is_template
                && (same_cluster || candidate.name == *name)
        });
        if let Some(original) = original {
            return Ok(Home::CopyOf(original.oid, original.name));
        }
    }
    Spi::run("SELECT email_accounts.adopt_database()")?;
    Ok(Home::Here)
}
