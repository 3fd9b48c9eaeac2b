//! The store: every place the extension talks to PostgreSQL (SPI statements,
//! catalog look-ups, the key file in the data directory). Nothing here does
//! network I/O.

pub mod account_settings;
pub mod accounts;
pub mod catalog;
pub mod home;
pub mod inbox;
pub mod jsonb;
pub mod kept_plans;
pub mod key_file;
pub mod links;
pub mod oauth;
pub mod outbox;
pub mod privileged;
pub mod restore;
pub mod routing;
pub mod secrets;
pub mod templates;
pub mod transaction;
