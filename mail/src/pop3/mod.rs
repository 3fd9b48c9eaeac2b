//! POP3 (RFC 1939, RFC 2449 CAPA, RFC 2595 STLS). The maintained crates use
//! rustls or lack STLS with a custom CA, so this is a small client of our own
//! over the same native-tls streams as IMAP and SMTP.

mod client;
mod session;

pub use client::{Pop3Client, Pop3Error};
pub use session::{classify, connect};
