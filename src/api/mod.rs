//! SQL functions (`#[pg_extern]`). Their comments for DBAs live in `sql/`.

pub mod address;
pub mod certificate;
pub mod inbox;
mod errors;
pub mod links;
pub mod outbox;
pub mod password;
pub mod test_account;
pub mod worker_status;
