//! SQL functions (`#[pg_extern]`). Their comments for DBAs live in `sql/`.

pub mod address;
pub mod certificate;
mod errors;
pub mod inbox;
pub mod links;
pub mod oauth;
pub mod outbox;
pub mod password;
pub mod restore;
pub mod templates;
pub mod test_account;
pub mod worker_status;
