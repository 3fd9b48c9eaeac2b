//! SQL functions (`#[pg_extern]`). Their comments for DBAs live in `sql/`.

pub mod address;
pub mod worker_status;
