//! The SQLite engine: one database file per shard, in WAL mode.

mod error;

pub use error::{engine_error, store_error};
