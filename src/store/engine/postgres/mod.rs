//! The PostgreSQL-protocol engine: every exdaas replica on one database
//! (PostgreSQL; written for CockroachDB, YugabyteDB and Citus too, within
//! the subset of SQL the four share: the book's "Scale out on PostgreSQL", "Engines").
//!
//! Shards are rows of one set of tables, not files: a shard's writers, on
//! any replica, lock its row of `exdaas_shards` first in each transaction,
//! so its changes are numbered in commit order and the core's decisions
//! (preconditions, ids) are made on what is committed.

mod database;
mod error;
mod reads;
mod shard;
pub mod transfer;
mod writes;

pub(crate) use database::connect_options;
pub use database::{PgDatabase, MIGRATING};
pub use error::engine_error;
pub use reads::{PgReadSlot, PgReads};
pub use shard::PgShard;
pub use writes::PgWrites;
