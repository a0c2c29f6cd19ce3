//! The storage engine: everything that knows SQL and files, below the core
//! of the store (placement, cache, ids, operations, the writer's batching).
//!
//! Today's engine is SQLite (`sqlite/`): one file per shard in WAL mode.
//! The core talks to it through a few calls and hears back only the kinds
//! of failure below, never the engine's own types.

pub mod backend;
pub mod contract;
mod error;
pub mod postgres;
pub mod sqlite;
pub mod transfer;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::BoxStream;

use crate::domain::{CollectionName, DocId, DocKey};
use crate::store::document::Document;
pub use contract::*;
pub use error::{EngineError, ErrorKind, StorageError};

/// Calls the same method on whichever engine's value it is.
macro_rules! dispatch {
    ($value:expr, $inner:ident => $call:expr) => {
        match $value {
            Self::Sqlite($inner) => $call,
            Self::Postgres($inner) => $call,
        }
    };
}

/// What the core holds of a shard, by what it is for; each an enum of the
/// engines, with the same calls (the engine's interface):
///
/// - [`ShardFile`]: what it takes to open a shard; opens its reads and
///   (again, after a failure) its writes.
/// - [`ShardWrites`]: the one write connection of this process for the
///   shard: `begin` (the committed state, where other processes may write
///   too), `load`, `load_texts`, `commit` (rows, their feed entries and id
///   ceilings in one transaction), `expired` and `in_collection` (what a
///   sweep or a drop removes), `delete_with_feed`, `compact_feed`,
///   `release`, `close`, `check_file`. [`Opened`] is what opening reads.
/// - [`ShardReads`]: the read pool: `reserve` (a [`ReadSlot`] for one
///   point read), `entries` and `documents` (listings, exports), `feed`,
///   `counter_ids_between`, `count_live`, `add_collection_counts`, `recent`
///   (the cache's warm-up).
/// - Capabilities of a data folder of files (backup, restore, check,
///   reshard) are the SQLite engine's alone: `sqlite::maintenance`.
#[derive(Clone)]
pub enum ShardFile {
    Sqlite(sqlite::ShardFile),
    Postgres(postgres::PgShard),
}

impl ShardFile {
    pub fn index(&self) -> usize {
        dispatch!(self, f => f.index())
    }

    /// The engine's name, for traces and logs.
    pub fn engine_name(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgresql",
        }
    }

    /// Opens the shard's writes at boot (creating and migrating it if it
    /// must; `boot_check`: check its integrity first).
    pub async fn open_at_boot(&self, boot_check: bool) -> Result<(ShardWrites, Opened), EngineError> {
        match self {
            Self::Sqlite(f) => f
                .open_at_boot(boot_check)
                .await
                .map(|(w, o)| (ShardWrites::Sqlite(w), o)),
            Self::Postgres(f) => f
                .open_at_boot(boot_check)
                .await
                .map(|(w, o)| (ShardWrites::Postgres(w), o)),
        }
    }

    /// Opens the writes again after a failure.
    pub async fn reopen(&self) -> Result<(ShardWrites, Opened), EngineError> {
        match self {
            Self::Sqlite(f) => f.reopen().await.map(|(w, o)| (ShardWrites::Sqlite(w), o)),
            Self::Postgres(f) => f.reopen().await.map(|(w, o)| (ShardWrites::Postgres(w), o)),
        }
    }

    pub async fn open_reads(&self, connections: u32, wait: Duration) -> Result<ShardReads, EngineError> {
        match self {
            Self::Sqlite(f) => f.open_reads(connections, wait).await.map(ShardReads::Sqlite),
            Self::Postgres(f) => f.open_reads(connections, wait).await.map(ShardReads::Postgres),
        }
    }
}

pub enum ShardWrites {
    Sqlite(sqlite::SqliteWrites),
    Postgres(postgres::PgWrites),
}

impl ShardWrites {
    /// Other processes may write this shard too (the database's replicas):
    /// what this one cached or counted may be behind, so every transaction
    /// starts from `begin`.
    pub fn shared(&self) -> bool {
        dispatch!(self, w => w.shared())
    }

    /// Where writes are shared: opens a transaction holding the shard (its
    /// writers on every replica take turns) and answers what is committed
    /// now. `None` where this process is the only writer.
    pub async fn begin(&mut self) -> Result<Option<Opened>, StorageError> {
        dispatch!(self, w => w.begin().await)
    }

    /// Ends what `begin` opened, without a change.
    pub async fn release(&mut self) {
        dispatch!(self, w => w.release().await)
    }

    pub fn check_file(&self) -> FileCheck {
        dispatch!(self, w => w.check_file())
    }

    pub fn file_name(&self) -> String {
        dispatch!(self, w => w.file_name())
    }

    pub async fn load(&mut self, keys: &[DocKey], small: usize) -> Result<Vec<StoredRow>, StorageError> {
        dispatch!(self, w => w.load(keys, small).await)
    }

    pub async fn load_texts(&mut self, keys: &[DocKey]) -> Result<Vec<(usize, Arc<str>)>, StorageError> {
        dispatch!(self, w => w.load_texts(keys).await)
    }

    /// Makes the id counter's reservation in `ceilings` durable before the
    /// commit that writes ids it covers (see `SqliteWrites::reserve_ids`).
    /// On a database, whose commits are all durable, the commit does.
    pub async fn reserve_ids(&mut self, ceilings: IdBounds) -> Result<(), StorageError> {
        dispatch!(self, w => w.reserve_ids(ceilings).await)
    }

    pub async fn commit<'a>(
        &mut self,
        changes: impl Iterator<Item = (&'a DocKey, u32, Option<&'a Document>)>,
        feed: &[FeedEntry],
        ceilings: Option<IdBounds>,
    ) -> Result<(), StorageError> {
        dispatch!(self, w => w.commit(changes, feed, ceilings).await)
    }

    pub async fn expired(&mut self, now: i64, limit: u32) -> Result<Vec<(DocKey, u64)>, StorageError> {
        dispatch!(self, w => w.expired(now, limit).await)
    }

    pub async fn in_collection(
        &mut self,
        collection: &CollectionName,
        limit: u32,
    ) -> Result<Vec<(DocKey, u64)>, StorageError> {
        dispatch!(self, w => w.in_collection(collection, limit).await)
    }

    pub async fn delete_with_feed(&mut self, feed: &[FeedEntry]) -> Result<u64, StorageError> {
        dispatch!(self, w => w.delete_with_feed(feed).await)
    }

    pub async fn compact_feed(&mut self, before_ms: i64, keep: u64, limit: u64) -> Result<u64, StorageError> {
        dispatch!(self, w => w.compact_feed(before_ms, keep, limit).await)
    }

    /// Every index the shard holds.
    pub async fn indexes(&mut self) -> Result<Vec<StoredIndex>, StorageError> {
        dispatch!(self, w => w.indexes().await)
    }

    /// Changes index entries in the transaction the next `commit` or
    /// `delete_with_feed` commits (opening it where none is open).
    pub async fn index_changes(&mut self, changes: &IndexChanges) -> Result<(), StorageError> {
        dispatch!(self, w => w.index_changes(changes).await)
    }

    /// Declares `index` (with `feed`) unless one of its name is there;
    /// answers whether it was stored.
    pub async fn declare_index(&mut self, index: &StoredIndex, feed: &[FeedEntry]) -> Result<bool, StorageError> {
        dispatch!(self, w => w.declare_index(index, feed).await)
    }

    /// Drops an index and its entries (with `feed`); answers whether there
    /// was one.
    pub async fn drop_index(
        &mut self,
        collection: &CollectionName,
        name: &str,
        feed: &[FeedEntry],
    ) -> Result<bool, StorageError> {
        dispatch!(self, w => w.drop_index(collection, name, feed).await)
    }

    /// Where an index's build is: the last id it covered, and whether it
    /// is done (`None`: no such index).
    pub async fn build_progress(
        &mut self,
        collection: &CollectionName,
        name: &str,
    ) -> Result<Option<(Option<String>, bool)>, StorageError> {
        dispatch!(self, w => w.build_progress(collection, name).await)
    }

    /// Up to `limit` documents of `collection` after `after`, in id order,
    /// with their text.
    pub async fn documents_after(
        &mut self,
        collection: &CollectionName,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Arc<str>)>, StorageError> {
        dispatch!(self, w => w.documents_after(collection, after, limit).await)
    }

    /// Replaces the build's `entries` (id, key) and records how far it is,
    /// in one transaction.
    pub async fn build_step(
        &mut self,
        collection: &CollectionName,
        name: &str,
        entries: &[(String, Vec<u8>)],
        oversized: u64,
        upto: Option<&str>,
        done: bool,
    ) -> Result<(), StorageError> {
        dispatch!(self, w => w.build_step(collection, name, entries, oversized, upto, done).await)
    }

    /// Every collection schema the shard holds (removed ones included).
    pub async fn schemas(&mut self) -> Result<Vec<StoredSchema>, StorageError> {
        dispatch!(self, w => w.schemas().await)
    }

    /// Stores `change` unless the shard holds a newer version, with `feed`
    /// (the change's entry, on the shard that records it), in one
    /// transaction; answers whether it was stored.
    pub async fn set_schema(&mut self, change: &StoredSchema, feed: &[FeedEntry]) -> Result<bool, StorageError> {
        dispatch!(self, w => w.set_schema(change, feed).await)
    }

    /// Records the exact id bounds `ids` in place of the reserved
    /// `ceilings` (where nobody else raised them since) and closes.
    pub async fn close(&mut self, ids: IdBounds, ceilings: IdBounds) {
        dispatch!(self, w => w.close(ids, ceilings).await)
    }

    #[cfg(feature = "fault-injection")]
    pub async fn inject(&mut self, fault: crate::store::engine::EngineFault) -> Result<(), StorageError> {
        dispatch!(self, w => w.inject(fault).await)
    }
}

/// A database several processes share: what the store asks of it beyond
/// shards (the id counter's blocks, the pool's use).
#[derive(Clone)]
pub enum SharedDatabase {
    Postgres(Arc<postgres::PgDatabase>),
}

impl SharedDatabase {
    /// Closes the database's pool, once every shard's reads and writer are
    /// closed (a shard's reads close only its own share of the pool).
    pub async fn close(&self) {
        match self {
            Self::Postgres(db) => db.pool.close().await,
        }
    }

    /// Connections open and idle in the pool, and its most.
    pub fn pool_use(&self) -> crate::stats::PoolUse {
        match self {
            Self::Postgres(db) => crate::stats::PoolUse {
                open: db.pool.size(),
                idle: u32::try_from(db.pool.num_idle()).unwrap_or(u32::MAX),
                max: db.pool.options().get_max_connections(),
            },
        }
    }

    /// Reserves `count` ids after every id reserved before, from at least
    /// `at_least` (and past `highest_used` on a new store): first and last.
    /// A refusal for a concurrent reservation (40001 under SERIALIZABLE) is
    /// tried again, as the writer's transactions are.
    pub async fn reserve(&self, count: u64, at_least: u64, highest_used: u64) -> Result<(u64, u64), EngineError> {
        let mut pause = Duration::from_millis(2);
        let mut attempts = 0;
        loop {
            let reserved = match self {
                Self::Postgres(db) => db.reserve_ids(count, at_least, highest_used).await,
            };
            match reserved {
                Err(e) if e.kind == ErrorKind::Conflict && attempts < 8 => {
                    attempts += 1;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                other => return other.map_err(|e| EngineError::storage(0, e)),
            }
        }
    }
}

pub enum ShardReads {
    Sqlite(sqlite::SqliteReads),
    Postgres(postgres::PgReads),
}

pub enum ReadSlot {
    Sqlite(sqlite::ReadSlot),
    Postgres(postgres::PgReadSlot),
}

impl ReadSlot {
    /// The committed document at `key` (expired or not).
    pub async fn read(self, key: &DocKey) -> Result<Option<Document>, EngineError> {
        dispatch!(self, slot => slot.read(key).await)
    }
}

impl ShardReads {
    pub async fn reserve(&self) -> Result<ReadSlot, EngineError> {
        match self {
            Self::Sqlite(r) => r.reserve().await.map(ReadSlot::Sqlite),
            Self::Postgres(r) => r.reserve().await.map(ReadSlot::Postgres),
        }
    }

    pub fn connections(&self) -> u32 {
        dispatch!(self, r => r.connections())
    }

    pub async fn counter_ids_between(
        &self,
        collection: &CollectionName,
        first: u64,
        last: u64,
    ) -> Result<Vec<u64>, EngineError> {
        dispatch!(self, r => r.counter_ids_between(collection, first, last).await)
    }

    pub async fn entries(
        &self,
        collection: &CollectionName,
        from: Option<(&str, bool)>,
        to: Option<&str>,
        now: i64,
        limit: usize,
    ) -> Result<Vec<(DocId, Document, usize)>, EngineError> {
        dispatch!(self, r => r.entries(collection, from, to, now, limit).await)
    }

    pub async fn documents(
        &self,
        collection: &CollectionName,
        ids: &[&str],
        now: i64,
    ) -> Result<Vec<(String, Document)>, EngineError> {
        dispatch!(self, r => r.documents(collection, ids, now).await)
    }

    /// The indexes of `collection` on this shard.
    pub async fn index_catalog(&self, collection: &CollectionName) -> Result<Vec<StoredIndex>, EngineError> {
        dispatch!(self, r => r.index_catalog(collection).await)
    }

    /// Indexes whose build has not covered this shard yet: (collection,
    /// name).
    pub async fn unbuilt_indexes(&self) -> Result<Vec<(String, String)>, EngineError> {
        dispatch!(self, r => r.unbuilt_indexes().await)
    }

    /// Up to `limit` entries of an index with keys in `[low, high)`, after
    /// `after` (key, id), in (key, id) order: their keys and ids.
    pub async fn index_range(
        &self,
        collection: &CollectionName,
        name: &str,
        low: &[u8],
        high: &[u8],
        after: Option<(&[u8], &str)>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, String)>, EngineError> {
        dispatch!(self, r => r.index_range(collection, name, low, high, after, limit).await)
    }

    pub async fn count_live(&self, now: i64) -> Option<u64> {
        dispatch!(self, r => r.count_live(now).await)
    }

    pub async fn add_collection_counts(&self, now: i64, totals: &mut BTreeMap<String, i64>) -> Result<(), EngineError> {
        dispatch!(self, r => r.add_collection_counts(now, totals).await)
    }

    /// [`ShardReads::add_collection_counts`] of these collections only:
    /// reads their part of the collection index, not all of it.
    pub async fn add_counts_of(
        &self,
        now: i64,
        collections: &[CollectionName],
        totals: &mut BTreeMap<String, i64>,
    ) -> Result<(), EngineError> {
        dispatch!(self, r => r.add_counts_of(now, collections, totals).await)
    }

    /// The documents the cache is warmed with: the most recently changed
    /// ones live at `now`, as many as `budget` holds, in no promised order.
    pub fn recent(&self, now: i64, budget: WarmBudget) -> BoxStream<'_, Result<(DocKey, Document), EngineError>> {
        dispatch!(self, r => r.recent(now, budget))
    }

    pub async fn feed(
        &self,
        after: u64,
        upto: u64,
        filter: FeedFilter<'_>,
        limit: usize,
    ) -> Result<FeedRun, EngineError> {
        dispatch!(self, r => r.feed(after, upto, filter, limit).await)
    }

    pub async fn close(&self) {
        dispatch!(self, r => r.close().await)
    }

    pub fn is_closed(&self) -> bool {
        dispatch!(self, r => r.is_closed())
    }
}
