//! What a store needs to know to open.

use std::path::PathBuf;
use std::sync::Arc;

use crate::domain::{ShardCount, SyncMode};
use crate::stats::StoreEvents;

/// What a store needs to know to open.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub data_dir: PathBuf,
    /// A PostgreSQL-protocol database to keep the documents in, instead of
    /// the files of `data_dir`.
    pub database_url: Option<String>,
    /// Where the database is shared: how often the other processes' writes
    /// are looked for (the cache's staleness bound).
    pub replica_poll: std::time::Duration,
    pub shards: ShardCount,
    pub sync: SyncMode,
    pub cache_bytes: u64,
    pub writer_batch: usize,
    pub writer_queue: usize,
    /// Bytes of documents that may wait for one writer.
    pub writer_queue_bytes: usize,
    /// Bytes of documents a listing page or an export chunk holds.
    pub page_bytes: usize,
    /// The largest a document's text may be.
    pub max_document_bytes: usize,
    /// How long a write waits for room in a full writer queue before 503.
    pub queue_wait: std::time::Duration,
    pub read_connections: u32,
    /// Check every shard's integrity at boot (reads each file whole).
    pub boot_check: bool,
    /// The change feed keeps entries this long...
    pub feed_retention: std::time::Duration,
    /// ...and at most this many per shard.
    pub feed_max_entries: u64,
    /// Where cache hits and misses, batch sizes and commit times go.
    pub events: Arc<dyn StoreEvents>,
}
