//! The pure mail core of `email_accounts`.
//!
//! Everything here is plain Rust: no PostgreSQL, no pgrx. The extension calls
//! into it; `cargo test -p email_accounts_mail` tests it without a server.

pub mod address;
pub mod compose;
pub mod connection;
pub mod delivery;
pub mod document_address;
pub mod identity;
pub mod imap_client;
pub mod oauth;
pub mod parse;
pub mod pop3;
pub mod probe;
pub mod receive;
pub mod return_path;
pub mod row_status;
pub mod sasl;
#[cfg(test)]
mod scripted_server;
pub mod secret;
pub mod smtp_client;
pub mod template;
pub mod tls_connectors;
pub mod token;
