//! The engine's contract: what the store asks of a shard's storage, as
//! traits both engines implement, and the plain types that cross the seam.
//! The enums in `engine/mod.rs` dispatch to an engine by matching (no boxing
//! on the hot path); a method one engine lacks, or has with another
//! signature, is a compile error here rather than a drift found in use.
//!
//! - [`ShardStorage`]: what it takes to open a shard: its writes (at boot,
//!   and again after a failure) and its reads.
//! - [`WriteConnection`]: the one write connection of this process for the
//!   shard: `begin` (the committed state, where other processes may write
//!   too) and `release`, `load`, `load_texts`, `commit` (rows, their feed
//!   entries and id ceilings in one transaction), `expired` and
//!   `in_collection` (what a sweep or a drop removes), `delete_with_feed`,
//!   `compact_feed`, the catalog (indexes, schemas), `close`.
//! - [`ReadPool`]: the read pool: `reserve` (a [`PointRead`] for one read),
//!   `entries` and `documents` (listings, exports), `feed`, counts, `recent`
//!   (the cache's warm-up).
//!
//! The traits are used only through the enums, whose every call names its
//! engine's type: each method's future is then a known type, `Send` where
//! its body is, which is why `async fn` in these traits is fine.
#![allow(async_fn_in_trait)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::BoxStream;

use super::error::{EngineError, StorageError};
use crate::domain::{CollectionName, DocId, DocKey};
use crate::store::document::Document;

/// What it takes to open one shard's storage.
pub trait ShardStorage {
    type Writes: WriteConnection;
    type Reads: ReadPool;

    /// The shard's index.
    fn index(&self) -> usize;

    /// Opens the shard's writes at boot: creates and migrates it if it must
    /// (`boot_check`: checks its integrity first, where the engine can).
    async fn open_at_boot(&self, boot_check: bool) -> Result<(Self::Writes, Opened), EngineError>;

    /// Opens the writes again after a failure.
    async fn reopen(&self) -> Result<(Self::Writes, Opened), EngineError>;

    /// The shard's read pool: at most `connections`, a read waiting at most
    /// `wait` for one.
    async fn open_reads(&self, connections: u32, wait: Duration) -> Result<Self::Reads, EngineError>;
}

/// The one write connection of this process for a shard.
pub trait WriteConnection {
    /// Other processes may write this shard too: what this one cached or
    /// counted may be behind, so every transaction starts from `begin`.
    fn shared(&self) -> bool;

    /// Where writes are shared: opens a transaction holding the shard (its
    /// writers on every replica take turns) and answers what is committed
    /// now. `None` where this process is the only writer.
    async fn begin(&mut self) -> Result<Option<Opened>, StorageError>;

    /// Ends what `begin` opened, without a change.
    async fn release(&mut self);

    /// Starts checking that the shard's storage is still the one opened (a
    /// file not deleted or replaced). The writer starts it with each commit
    /// and awaits it before acknowledging: a file system call, made off the
    /// runtime's threads and alongside the commit, so it adds no wait.
    fn check_file(&self) -> FileCheck;

    /// The file or table behind the shard, for logs.
    fn file_name(&self) -> String;

    /// The stored rows of `keys`, with their text when it is at most `small`
    /// bytes.
    async fn load(&mut self, keys: &[DocKey], small: usize) -> Result<Vec<StoredRow>, StorageError>;

    /// The texts of `keys` (their index in `keys`, and the text).
    async fn load_texts(&mut self, keys: &[DocKey]) -> Result<Vec<(usize, Arc<str>)>, StorageError>;

    /// Makes the id counter's reservation in `ceilings` durable before the
    /// commit that writes ids it covers. Where every commit is durable, the
    /// commit does.
    async fn reserve_ids(&mut self, ceilings: IdBounds) -> Result<(), StorageError>;

    /// Writes `changes` (key, its index in the batch, the new document or
    /// `None` to delete), their `feed` entries and the id `ceilings` in one
    /// transaction.
    async fn commit<'a>(
        &mut self,
        changes: impl Iterator<Item = (&'a DocKey, u32, Option<&'a Document>)>,
        feed: &[FeedEntry],
        ceilings: Option<IdBounds>,
    ) -> Result<(), StorageError>;

    /// Up to `limit` documents expired at `now`: their keys and versions.
    async fn expired(&mut self, now: i64, limit: u32) -> Result<Vec<(DocKey, u64)>, StorageError>;

    /// Up to `limit` documents of `collection`: their keys and versions.
    async fn in_collection(
        &mut self,
        collection: &CollectionName,
        limit: u32,
    ) -> Result<Vec<(DocKey, u64)>, StorageError>;

    /// Deletes the documents of `feed`'s entries, with the entries, in one
    /// transaction; answers how many were deleted.
    async fn delete_with_feed(&mut self, feed: &[FeedEntry]) -> Result<u64, StorageError>;

    /// Drops feed entries older than `before_ms` beyond the newest `keep`,
    /// at most `limit` of them; answers how many.
    async fn compact_feed(&mut self, before_ms: i64, keep: u64, limit: u64) -> Result<u64, StorageError>;

    /// Every index the shard holds.
    async fn indexes(&mut self) -> Result<Vec<StoredIndex>, StorageError>;

    /// Changes index entries in the transaction the next `commit` or
    /// `delete_with_feed` commits (opening it where none is open).
    async fn index_changes(&mut self, changes: &IndexChanges) -> Result<(), StorageError>;

    /// Declares `index` (with `feed`) unless one of its name is there;
    /// answers whether it was stored.
    async fn declare_index(&mut self, index: &StoredIndex, feed: &[FeedEntry]) -> Result<bool, StorageError>;

    /// Drops an index and its entries (with `feed`); answers whether there
    /// was one.
    async fn drop_index(
        &mut self,
        collection: &CollectionName,
        name: &str,
        feed: &[FeedEntry],
    ) -> Result<bool, StorageError>;

    /// Where an index's build is: the last id it covered, and whether it is
    /// done (`None`: no such index).
    async fn build_progress(
        &mut self,
        collection: &CollectionName,
        name: &str,
    ) -> Result<Option<(Option<String>, bool)>, StorageError>;

    /// Up to `limit` documents of `collection` after `after`, in id order,
    /// with their text.
    async fn documents_after(
        &mut self,
        collection: &CollectionName,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Arc<str>)>, StorageError>;

    /// Replaces the build's `entries` (id, key) and records how far it is,
    /// in one transaction.
    async fn build_step(
        &mut self,
        collection: &CollectionName,
        name: &str,
        entries: &[(String, Vec<u8>)],
        oversized: u64,
        upto: Option<&str>,
        done: bool,
    ) -> Result<(), StorageError>;

    /// Every collection schema the shard holds (removed ones included).
    async fn schemas(&mut self) -> Result<Vec<StoredSchema>, StorageError>;

    /// Stores `change` unless the shard holds a newer version, with `feed`
    /// (the change's entry, on the shard that records it), in one
    /// transaction; answers whether it was stored.
    async fn set_schema(&mut self, change: &StoredSchema, feed: &[FeedEntry]) -> Result<bool, StorageError>;

    /// Records the exact id bounds `ids` in place of the reserved
    /// `ceilings` (where nobody else raised them since) and closes.
    async fn close(&mut self, ids: IdBounds, ceilings: IdBounds);

    /// Makes the engine meet `fault` as a real failure would.
    #[cfg(feature = "fault-injection")]
    async fn inject(&mut self, fault: EngineFault) -> Result<(), StorageError>;
}

/// A check of a shard's file under way (see [`WriteConnection::check_file`]).
pub struct FileCheck(Option<tokio::task::JoinHandle<bool>>);

impl FileCheck {
    /// A check running on a blocking thread.
    pub fn started(check: impl FnOnce() -> bool + Send + 'static) -> Self {
        Self(Some(tokio::task::spawn_blocking(check)))
    }

    /// Storage with no file that could be replaced (a database).
    pub fn nothing_to_check() -> Self {
        Self(None)
    }

    /// The storage was still the one opened; a check that failed to run
    /// counts as gone.
    pub async fn still_there(self) -> bool {
        match self.0 {
            Some(check) => check.await.unwrap_or(false),
            None => true,
        }
    }
}

/// One reserved read connection, for one point read.
pub trait PointRead {
    /// The committed document at `key` (expired or not).
    async fn read(self, key: &DocKey) -> Result<Option<Document>, EngineError>;
}

/// A shard's read pool.
pub trait ReadPool {
    type Slot: PointRead;

    /// A connection for one point read, waited for at most the pool's wait.
    async fn reserve(&self) -> Result<Self::Slot, EngineError>;

    /// The pool's size.
    fn connections(&self) -> u32;

    /// The counter-shaped ids of `collection` from `first` to `last`.
    async fn counter_ids_between(
        &self,
        collection: &CollectionName,
        first: u64,
        last: u64,
    ) -> Result<Vec<u64>, EngineError>;

    /// Up to `limit` live documents of `collection` in id order, from
    /// `from` (an id, and whether it is included) up to `to`: each with the
    /// bytes of its text.
    async fn entries(
        &self,
        collection: &CollectionName,
        from: Option<(&str, bool)>,
        to: Option<&str>,
        now: i64,
        limit: usize,
    ) -> Result<Vec<(DocId, Document, usize)>, EngineError>;

    /// The live documents of `collection` among `ids`.
    async fn documents(
        &self,
        collection: &CollectionName,
        ids: &[&str],
        now: i64,
    ) -> Result<Vec<(String, Document)>, EngineError>;

    /// The indexes of `collection` on this shard.
    async fn index_catalog(&self, collection: &CollectionName) -> Result<Vec<StoredIndex>, EngineError>;

    /// Indexes whose build has not covered this shard yet: (collection,
    /// name).
    async fn unbuilt_indexes(&self) -> Result<Vec<(String, String)>, EngineError>;

    /// Up to `limit` entries of an index with keys in `[low, high)`, after
    /// `after` (key, id), in (key, id) order: their keys and ids.
    async fn index_range(
        &self,
        collection: &CollectionName,
        name: &str,
        low: &[u8],
        high: &[u8],
        after: Option<(&[u8], &str)>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, String)>, EngineError>;

    /// Documents live at `now` (`None`: could not count).
    async fn count_live(&self, now: i64) -> Option<u64>;

    /// Adds each collection's live documents at `now` to `totals`.
    async fn add_collection_counts(&self, now: i64, totals: &mut BTreeMap<String, i64>) -> Result<(), EngineError>;

    /// `add_collection_counts` of these collections only: reads their part
    /// of the collection index, not all of it.
    async fn add_counts_of(
        &self,
        now: i64,
        collections: &[CollectionName],
        totals: &mut BTreeMap<String, i64>,
    ) -> Result<(), EngineError>;

    /// The documents the cache is warmed with: the most recently changed
    /// ones live at `now`, as many as `budget` holds, in no promised order.
    fn recent(&self, now: i64, budget: WarmBudget) -> BoxStream<'_, Result<(DocKey, Document), EngineError>>;

    /// Up to `limit` entries of the feed after `after` and up to `upto` that
    /// `filter` lets through, with the feed's floor, read in one snapshot.
    async fn feed(&self, after: u64, upto: u64, filter: FeedFilter<'_>, limit: usize) -> Result<FeedRun, EngineError>;

    async fn close(&self);

    fn is_closed(&self) -> bool;
}

#[cfg(feature = "fault-injection")]
/// The faults the engine makes itself: its connection breaks, or its
/// storage answers as full or read-only (and back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineFault {
    BreakConnection,
    DiskFull,
    ReadOnly,
    Heal,
}

/// What the cache's warm-up may take from one shard: its live documents,
/// newest first, as many as `bytes` hold, each counted as its key and text
/// plus `per_entry` (the cache's own measure, passed down so the engine need
/// not know the cache). A document longer than `largest` is left to its
/// first read. Every document newer than the newest one left out is taken,
/// and none left out would fit in the room left over; which older ones fill
/// that room is the engine's choice (SQLite groups changes by time, in 4,096
/// spans, so it need not sort the shard). `tests/engine/warm_up.rs` holds
/// both engines to this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmBudget {
    pub bytes: u64,
    pub per_entry: u64,
    pub largest: u64,
}

impl WarmBudget {
    /// The bytes `doc` counts for.
    pub fn weight(&self, key: &DocKey, doc: &Document) -> u64 {
        (key.collection.as_str().len() + key.id.as_str().len() + doc.data.len()) as u64 + self.per_entry
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
    /// How many catalog changes (schemas, indexes) the shard has had,
    /// where other processes may make them (0 where this writer is the
    /// only one): a writer that sees it move reads the catalog again.
    pub schema_seq: u64,
}

/// An index as a shard stores it.
#[derive(Debug, Clone)]
pub struct StoredIndex {
    pub collection: CollectionName,
    pub name: String,
    /// Its field paths.
    pub fields: Vec<String>,
    /// The background build has covered every document of the shard.
    pub built: bool,
    /// Documents the build covered so far.
    pub indexed: u64,
    /// Documents the build could not cover: their key is over the bound.
    pub oversized: u64,
    pub created_at_ms: i64,
}

/// The index entries a commit changes: every entry of `removed` documents
/// goes, then `added` ones come (a changed document is in both).
#[derive(Debug, Default)]
pub struct IndexChanges {
    pub removed: Vec<DocKey>,
    /// (document, index name, key).
    pub added: Vec<(DocKey, String, Vec<u8>)>,
}

impl IndexChanges {
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.added.is_empty()
    }
}

/// A collection's schema as a shard stores it: `schema` is `None` once it
/// was removed (the row stays, so versions keep rising).
#[derive(Debug, Clone)]
pub struct StoredSchema {
    pub collection: CollectionName,
    pub version: u64,
    pub schema: Option<String>,
    pub updated_at_ms: i64,
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
    /// The collection's schema was set (the entry's id is empty, its
    /// version the schema's).
    SchemaSet,
    /// The collection's schema was removed (likewise).
    SchemaRemoved,
    /// An index was declared (the entry's id is its name).
    IndexDeclared,
    /// An index was dropped (likewise).
    IndexDropped,
}

impl ChangeKind {
    pub fn code(self) -> i64 {
        match self {
            ChangeKind::Written => 0,
            ChangeKind::Deleted => 1,
            ChangeKind::Expired => 2,
            ChangeKind::Dropped => 3,
            ChangeKind::SchemaSet => 4,
            ChangeKind::SchemaRemoved => 5,
            ChangeKind::IndexDeclared => 6,
            ChangeKind::IndexDropped => 7,
        }
    }

    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            0 => Some(ChangeKind::Written),
            1 => Some(ChangeKind::Deleted),
            2 => Some(ChangeKind::Expired),
            3 => Some(ChangeKind::Dropped),
            4 => Some(ChangeKind::SchemaSet),
            5 => Some(ChangeKind::SchemaRemoved),
            6 => Some(ChangeKind::IndexDeclared),
            7 => Some(ChangeKind::IndexDropped),
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
