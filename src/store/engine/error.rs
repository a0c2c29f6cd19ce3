//! What an engine call can fail with. The engine knows nothing of the
//! store's error: it says what went wrong here, and the store (one `From`)
//! says it to its callers.

use std::path::PathBuf;

/// What went wrong in the engine, as the core and the HTTP layer need to
/// know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No room left (a full disk).
    Full,
    /// The storage refuses writes (a read-only file or volume).
    ReadOnly,
    /// The stored data is damaged.
    Damaged,
    /// The connection or the disk failed; opening anew may help.
    Unavailable,
    /// The database cannot be reached, or the server reached will not take
    /// writes (a standby, a server shutting down): what a failover looks
    /// like from here. Reconnecting finds the primary again.
    Away,
    /// The engine refused the transaction for a concurrent one; retrying
    /// it whole may succeed.
    Conflict,
    /// Anything else.
    Other,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Full => "the disk is full",
            ErrorKind::ReadOnly => "its storage cannot be written",
            ErrorKind::Damaged => "its data is damaged",
            ErrorKind::Unavailable => "its storage failed",
            ErrorKind::Away => "the database cannot be reached or will not take writes here (a failover?)",
            ErrorKind::Conflict => "a concurrent change conflicted",
            ErrorKind::Other => "a storage error",
        }
    }
}

/// A storage failure on a shard: its kind, and the engine's own words for
/// the log.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {detail}", kind.as_str())]
pub struct StorageError {
    pub kind: ErrorKind,
    pub detail: String,
}

impl StorageError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

/// Everything an engine call can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// Shard `shard`'s storage failed.
    #[error("shard {shard}: {error}")]
    Storage { shard: usize, error: StorageError },
    /// Every read connection of shard `shard` stayed busy for the whole wait.
    #[error("shard {shard}: every read connection stayed busy for {waited_ms} ms")]
    Busy { shard: usize, waited_ms: u64 },
    /// The database (EXDAAS_DATABASE_URL) cannot be used.
    #[error("the database: {reason}")]
    Database { reason: String },
    /// The data folder cannot be used.
    #[error("DETS_ROOT={path:?} is unusable: {reason}")]
    DataFolder { path: PathBuf, reason: String },
    /// A file of the data folder is not what it should be.
    #[error("{path:?}: {reason}")]
    CorruptFile { path: PathBuf, reason: String },
    /// The data folder holds another number of shards than configured.
    #[error("data folder {path:?} holds {on_disk} shards, not {configured}")]
    ShardCountMismatch {
        path: PathBuf,
        on_disk: u32,
        configured: u32,
    },
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl EngineError {
    /// A storage failure on shard `shard`.
    pub fn storage(shard: usize, error: StorageError) -> Self {
        EngineError::Storage { shard, error }
    }

    /// A feed entry of shard `shard` that does not parse: damage, which
    /// fails the read that reaches it on either engine.
    pub fn unparsable_feed_entry(shard: usize, seq: impl std::fmt::Display) -> Self {
        let detail = format!("feed entry {seq} does not parse (an unknown collection, id, version or kind)");
        EngineError::storage(shard, StorageError::new(ErrorKind::Damaged, detail))
    }
}
