//! What the store tells about itself, in plain data: the events it records
//! as they happen ([`StoreEvents`]) and the state a scrape reads
//! ([`StoreSnapshot`]). The store fills them and `metrics` renders them;
//! neither imports the other, and this module imports neither.

/// Events the store records as they happen. Cheap: called on hot paths.
pub trait StoreEvents: Send + Sync + std::fmt::Debug {
    /// A read of one document, answered from the cache (`hit`) or not.
    fn cache_read(&self, hit: bool);
    /// Shard `shard`'s writer took `requests` requests into one commit.
    fn batch(&self, shard: usize, requests: usize);
    /// Shard `shard`'s writer wrote and committed a batch in `seconds`.
    fn commit(&self, shard: usize, seconds: f64);
    /// Shard `shard`'s writer ran a transaction again: the engine refused
    /// it for a concurrent one.
    fn conflict_retried(&self, shard: usize);
    /// One query to a shared database (a replica following the others'
    /// writes) took `seconds`, there and back.
    fn database_round_trip(&self, seconds: f64);
    /// An index build covered `documents` more documents.
    fn index_built(&self, documents: u64);
    /// An index build started (`1`) or ended (`-1`).
    fn index_builds_running(&self, change: i64);
    /// A query did `units` more units of work (see `EXDAAS_QUERY_MAX_WORK`).
    fn query_work(&self, units: u64);
    /// A query's request was dropped (its client went away) before its
    /// answer was ready.
    fn query_abandoned(&self);
}

/// Events that go nowhere: tools and benchmarks that serve no metrics.
#[derive(Debug, Default)]
pub struct NoEvents;

impl StoreEvents for NoEvents {
    fn cache_read(&self, _hit: bool) {}
    fn batch(&self, _shard: usize, _requests: usize) {}
    fn commit(&self, _shard: usize, _seconds: f64) {}
    fn conflict_retried(&self, _shard: usize) {}
    fn database_round_trip(&self, _seconds: f64) {}
    fn index_built(&self, _documents: u64) {}
    fn index_builds_running(&self, _change: i64) {}
    fn query_work(&self, _units: u64) {}
    fn query_abandoned(&self) {}
}

/// What one shard is doing.
#[derive(Debug, Clone)]
pub struct ShardStats {
    pub index: usize,
    /// Its file is open and its writer runs.
    pub ready: bool,
    /// Requests waiting in its writer's queue.
    pub queued: usize,
}

/// The store's state at a scrape.
#[derive(Debug, Clone, Default)]
pub struct StoreSnapshot {
    pub cache_entries: u64,
    pub cache_bytes: u64,
    pub shards: Vec<ShardStats>,
    /// Live documents per shard, when counted for this scrape (`None` for
    /// a shard that could not be counted).
    pub documents: Option<Vec<Option<u64>>>,
    /// The shared database's connection pool, where there is one.
    pub database_pool: Option<PoolUse>,
}

/// A connection pool's use at a scrape.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolUse {
    pub open: u32,
    pub idle: u32,
    pub max: u32,
}
