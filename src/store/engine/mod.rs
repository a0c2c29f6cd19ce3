//! The storage engine: everything that knows SQL and files, below the core
//! of the store (placement, cache, ids, operations, the writer's batching).
//!
//! Today's engine is SQLite (`sqlite/`): one file per shard in WAL mode.
//! The core talks to it through a few calls and hears back only the kinds
//! of failure below, never the engine's own types.

pub mod sqlite;

use crate::domain::DocKey;
use crate::store::Document;

/// What the core holds of a shard, by what it is for. One engine today:
/// these name its types. A second engine makes each an enum of both, with
/// the same calls (see each type's methods: that is the engine's interface).
///
/// - [`ShardFile`]: what it takes to open a shard; opens its reads and
///   (again, after a failure) its writes.
/// - [`ShardWrites`]: the one write connection: `load`, `load_texts`,
///   `commit` (rows, their feed entries and id ceilings in one
///   transaction), `expired` and `in_collection` (what a sweep or a drop
///   removes), `delete_with_feed`, `compact_feed`, `close`, `still_there`.
///   [`Opened`] is what opening it reads: id bounds, the feed's last entry.
/// - [`ShardReads`]: the read pool: `reserve` (a [`ReadSlot`] for one
///   point read), `entries` and `documents` (listings, exports), `feed`
///   (a run of the change feed with its floor), `counter_ids_between`,
///   `count_live`, `add_collection_counts`, `recent` (the cache's
///   warm-up).
/// - Capabilities of a data folder of files (backup, restore, check,
///   reshard) are the SQLite engine's alone: `sqlite::maintenance`.
pub type ShardFile = sqlite::ShardFile;
pub type ShardWrites = sqlite::SqliteWrites;
pub type ShardReads = sqlite::SqliteReads;
pub type ReadSlot = sqlite::ReadSlot;

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
            ErrorKind::Conflict => "a concurrent change conflicted",
            ErrorKind::Other => "a storage error",
        }
    }
}

/// An engine failure: its kind, and the engine's own words for the log.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {detail}", kind.as_str())]
pub struct EngineError {
    pub kind: ErrorKind,
    pub detail: String,
}

impl EngineError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

/// Two bounds on a shard's numeric ids, which the engine keeps with the
/// shard's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdBounds {
    /// Every counter-shaped id stored in the shard is at most this
    /// (`max_counter_id`): a fresh id above it needs no read to know it is
    /// free.
    pub stored: u64,
    /// Every id the counter handed out or moved past, stored here, is at
    /// most this (`counter_high`): where the counter restarts.
    pub counter: u64,
}

impl IdBounds {
    pub fn max(self, other: IdBounds) -> IdBounds {
        IdBounds {
            stored: self.stored.max(other.stored),
            counter: self.counter.max(other.counter),
        }
    }

    /// Either bound passes its ceiling in `ceilings`.
    pub fn exceeds(self, ceilings: IdBounds) -> bool {
        self.stored > ceilings.stored || self.counter > ceilings.counter
    }

    /// Ceilings `reserve` above these bounds, never below `ceilings`.
    pub fn reserved(self, ceilings: IdBounds, reserve: u64) -> IdBounds {
        IdBounds {
            stored: self.stored.saturating_add(reserve),
            counter: self.counter.saturating_add(reserve),
        }
        .max(ceilings)
    }
}

/// A committed row the writer asked for.
#[derive(Debug)]
pub struct StoredRow {
    /// Its index in the keys asked for.
    pub index: usize,
    /// Its document: with its text if `whole`, else with an empty one.
    pub doc: Document,
    /// The size of its text.
    pub bytes: usize,
    pub whole: bool,
}

/// What a shard's writer learns when it opens the shard.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    /// The id bounds the shard recorded.
    pub ids: IdBounds,
    /// Some document may carry an expiry.
    pub may_expire: bool,
    /// The feed's last sequence number (0: none yet).
    pub last_seq: u64,
}

/// Why a document changed, as the change feed tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Created or changed: `version` is its new version.
    Written,
    /// Deleted by a client.
    Deleted,
    /// Gone at its expiry.
    Expired,
    /// Deleted with its whole collection.
    Dropped,
}

impl ChangeKind {
    pub fn code(self) -> i64 {
        match self {
            ChangeKind::Written => 0,
            ChangeKind::Deleted => 1,
            ChangeKind::Expired => 2,
            ChangeKind::Dropped => 3,
        }
    }

    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            0 => Some(ChangeKind::Written),
            1 => Some(ChangeKind::Deleted),
            2 => Some(ChangeKind::Expired),
            3 => Some(ChangeKind::Dropped),
            _ => None,
        }
    }
}

/// One entry of a shard's change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEntry {
    /// Its place in the shard's feed: rising by one, assigned by the writer
    /// in the transaction of the change.
    pub seq: u64,
    pub key: DocKey,
    /// The new version, or for a deletion the version deleted.
    pub version: u64,
    pub kind: ChangeKind,
    /// When, in Unix milliseconds.
    pub at_ms: i64,
}

/// Which entries of the feed a reader follows.
#[derive(Debug, Clone, Copy, Default)]
pub struct FeedFilter<'a> {
    /// Only these collections' (`None`: every one's).
    pub collections: Option<&'a [crate::domain::CollectionName]>,
    /// Only ids that start with this.
    pub prefix: Option<&'a str>,
}

/// A run of a shard's feed as a reader sees it.
#[derive(Debug, Clone, Default)]
pub struct FeedRun {
    /// Every entry up to this one was compacted away.
    pub floor: u64,
    pub entries: Vec<FeedEntry>,
}
