//! The SQLite engine: one database file per shard, in WAL mode. Every line
//! of SQL and every file of the store is here.
//!
//! - `files`: opening a shard's file and refusing one that is not this
//!   folder's shard; its schema (`migrations/`).
//! - `writes`: the shard's one write connection (loads, commits, sweeps).
//! - `reads`: the shard's read pool (point reads, scans, counts).
//! - `rows`: rows as read and bound.
//! - `layout`: the data folder (its shard files, layout file and lock).
//! - `maintenance`: backup, restore, check and reshard of a data folder.

mod error;
pub mod files;
pub mod layout;
pub mod maintenance;
pub mod reads;
mod rows;
pub mod transfer;
pub mod writes;

pub use error::{engine_error, shard_error};
pub use files::ShardFile;
pub use reads::{ReadSlot, SqliteReads};
pub use writes::SqliteWrites;
