//! The store: every place the extension talks to PostgreSQL from a worker
//! (SPI statements and catalog look-ups). Nothing here does network I/O.

pub mod catalog;
pub mod transaction;
