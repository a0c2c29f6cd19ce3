//! A shard's writer: the one task that owns the shard's only write connection.
//!
//! Jobs arrive on a bounded channel. The writer takes what is queued (up to
//! the batch bound), applies it in one transaction, commits, updates the
//! cache, and only then acknowledges each request: group commit, so one fsync
//! serves a whole batch. A request's operations always commit together; if a
//! batch's transaction fails, each request is retried in a transaction of its
//! own, so a bad request fails alone. Between batches it removes expired
//! documents, a bounded number at a time, so expiry never stalls writes.
//!
//! When its connection or file breaks, or it panics, the writer ends and its
//! shard's supervisor (`supervise` in `shard.rs`) answers what is queued with 503 and
//! opens a new one. Before acknowledging a commit it checks that the shard's
//! file is still the one it opened, so a write to a deleted file is never
//! acknowledged.
//!
//! This file holds the loop and the writer's state; its work is split by
//! concern: `batch.rs` (a batch from decision to acknowledgement),
//! `catalog.rs` (schemas and indexes), `chores.rs` (expiry, purges, feed
//! compaction).

mod batch;
mod catalog;
mod chores;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::cache::DocCache;
use super::engine::{ChangeKind, FeedEntry, IdBounds, ShardWrites};
use super::index::IndexDef;
use super::ops::{WriteOp, WriteResult};
use super::schema::{CollectionSchema, PublishedSchemas, SchemaState};
use super::status::ShardStatus;
use super::{Document, Outage, StoreError};
use crate::domain::{CollectionName, DocKey};
use crate::stats::StoreEvents;

/// Work for a writer.
pub enum Job {
    /// Operations applied in order and committed in one transaction; the
    /// answers come back in the same order.
    Ops {
        ops: Vec<WriteOp>,
        reply: oneshot::Sender<Vec<WriteResult>>,
        /// The request's `shard write` span (disabled unless traces are
        /// exported), told how many requests shared the commit.
        span: tracing::Span,
        /// The share of the queue's bytes the job holds until it is
        /// answered (see `Shard::submit`).
        room: tokio::sync::OwnedSemaphorePermit,
    },
    /// Deletes up to `limit` documents of a collection; answers how many.
    Purge {
        collection: CollectionName,
        limit: u32,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    /// Sets or removes a collection's schema (see `Writer::set_schema`).
    Schema {
        change: SchemaChange,
        reply: oneshot::Sender<Result<SchemaState, StoreError>>,
    },
    /// Declares (`fields`) or drops (`None`) an index; answers whether the
    /// shard changed.
    Index {
        collection: CollectionName,
        name: String,
        fields: Option<Vec<String>>,
        /// This shard records the change in the feed.
        recorded: bool,
        at_ms: i64,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    /// Covers the next documents of an index's build; answers how many,
    /// and whether the shard is done.
    IndexBuild {
        collection: CollectionName,
        name: String,
        limit: u32,
        reply: oneshot::Sender<Result<(u64, bool), StoreError>>,
    },
    /// Answers a collection's schema as the shard holds it now.
    SchemaOf {
        collection: CollectionName,
        reply: oneshot::Sender<Result<Option<SchemaState>, StoreError>>,
    },
    /// A fault for tests to inject (see `faults.rs`).
    #[cfg(feature = "fault-injection")]
    Fault(super::faults::Fault),
}

/// A change of a collection's schema, as one shard's writer applies it.
pub struct SchemaChange {
    pub collection: CollectionName,
    /// `None`: remove it.
    pub schema: Option<Arc<CollectionSchema>>,
    /// The version to store; `None` on the shard that numbers the change
    /// (one past its own) and records it in the feed.
    pub version: Option<u64>,
    pub at_ms: i64,
}

/// Why a writer's run ended.
#[derive(Debug)]
pub enum Exit {
    /// Shutdown: every queued job was answered, the file closed cleanly.
    Stopped,
    /// Its connection or file broke. An `outage` of `FileGone`: reopening
    /// cannot help (the file was deleted or replaced).
    Failed { outage: Outage, reason: String },
}

/// How often a writer looks for expired documents, and how many it removes
/// in one go before letting queued writes through.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
const SWEEP_LIMIT: u32 = 512;

/// How often a writer compacts its feed, and how many entries it removes
/// in one go (a full pass comes back as soon as the queue is served).
const COMPACT_INTERVAL: Duration = Duration::from_secs(60);
const COMPACT_LIMIT: u64 = 10_000;

/// A shard's side of the change feed, as its writer keeps it.
pub struct FeedWriter {
    /// Published entries go to `recent` (only where this writer makes every
    /// entry of its shard).
    pub in_memory: bool,
    /// The last sequence number committed.
    pub last_seq: u64,
    /// Told `last_seq` once a commit is published, so waiting readers
    /// wake.
    pub head: Arc<watch::Sender<u64>>,
    /// Told of every publication, by every shard: what waiting readers
    /// of the whole feed wait on.
    pub published: Arc<watch::Sender<u64>>,
    /// The last entries published, kept in memory for readers.
    pub recent: Arc<super::feed::RecentFeed>,
    /// Entries older than this are compacted away...
    pub retention: Duration,
    /// ...and all but the last this many.
    pub keep: u64,
}

impl FeedWriter {
    /// Numbers the entries for `changes`, from the one after `last_seq`,
    /// without taking the numbers: that happens with the commit
    /// (`published`).
    fn number(&self, changes: impl Iterator<Item = (DocKey, u64, ChangeKind)>, at_ms: i64) -> Vec<FeedEntry> {
        changes
            .zip(self.last_seq + 1..)
            .map(|((key, version, kind), seq)| FeedEntry {
                seq,
                key,
                version,
                kind,
                at_ms,
            })
            .collect()
    }

    /// Takes the numbers of committed `entries` and wakes the readers.
    fn published(&mut self, entries: &[FeedEntry]) {
        if let Some(last) = entries.last() {
            if self.in_memory {
                self.recent.push(entries);
            }
            self.last_seq = last.seq;
            super::status::advance(&self.head, self.last_seq);
            self.published.send_modify(|count| *count = count.wrapping_add(1));
        }
    }
}

/// When the writer's chores are next due.
struct Chores {
    next_sweep: Instant,
    next_compaction: Instant,
}

impl Chores {
    /// The first one due (sweeps only when a document may expire).
    fn next(&self, may_expire: bool) -> Instant {
        if may_expire {
            self.next_sweep.min(self.next_compaction)
        } else {
            self.next_compaction
        }
    }
}

/// Effects of a committed batch: what to put in the cache, what to answer.
struct Applied {
    answers: Vec<WriteResult>,
    changes: HashMap<DocKey, Change>,
    /// Feed entries committed with the changes.
    entries: Vec<FeedEntry>,
    ids: IdBounds,
    ceilings: IdBounds,
}

/// A key's final state after a batch.
#[derive(Debug)]
struct Change {
    bucket: u32,
    /// `None`: deleted.
    doc: Option<Document>,
    /// The key had a row on disk before the batch (even an expired one).
    row_existed: bool,
    /// For a deletion, the version deleted.
    version: u64,
    /// Where the key was first changed in the batch: feed entries keep the
    /// order of the requests.
    order: usize,
    /// The document's index entries (name, key), for a collection with
    /// indexes.
    entries: Vec<(String, Vec<u8>)>,
}

pub struct Writer {
    pub shard: usize,
    /// The shard's one write connection, in the engine.
    pub writes: ShardWrites,
    pub cache: DocCache,
    pub batch_limit: usize,
    /// The largest a document's text may be (`EXDAAS_MAX_BODY_BYTES`).
    pub max_document_bytes: usize,
    /// The shard's id bounds: the ceilings read at open, raised by every
    /// id written since.
    pub ids: IdBounds,
    /// The bounds recorded in `shard_meta`, at least `ids`.
    pub ceilings: IdBounds,
    /// Some document may carry an expiry: the sweeper has work to look for.
    pub may_expire: bool,
    pub shutdown: watch::Receiver<bool>,
    pub status: Arc<ShardStatus>,
    /// Keys changed by a commit in flight and not yet published to the
    /// cache. If the writer dies in between, the supervisor evicts them, so
    /// the cache cannot go on serving their old versions.
    pub unpublished: Arc<Mutex<Vec<DocKey>>>,
    /// Commits and writes since start: their ratio is the mean group size.
    pub commits: u64,
    pub writes_done: u64,
    /// A test asked for a panic after the next commit.
    #[cfg(feature = "fault-injection")]
    pub panic_after_commit: bool,
    /// Where batch sizes and commit times go.
    pub events: Arc<dyn StoreEvents>,
    pub feed: FeedWriter,
    /// Every collection schema the shard holds, compiled: what each write
    /// is checked against.
    pub schemas: HashMap<CollectionName, SchemaState>,
    /// `schemas` as the shard shows them to writes about to be queued.
    pub published: PublishedSchemas,
    /// The shard's count of catalog changes (schemas and indexes) when
    /// `schemas` and `indexes` were read, where other processes change
    /// them too.
    pub schema_seq: u64,
    /// Every declared index, by collection: the entries each write keeps.
    pub indexes: HashMap<CollectionName, Vec<IndexDef>>,
}

/// Requests' operations a commit takes together, each with where its
/// answers go.
type Batch = Vec<(Vec<WriteOp>, oneshot::Sender<Vec<WriteResult>>)>;

/// Sends a job's `result` to whoever asked; the error, if it broke the
/// writer (which must then end and be reopened).
fn answer<T>(reply: oneshot::Sender<Result<T, StoreError>>, result: Result<T, StoreError>) -> Option<StoreError> {
    let broken = result.as_ref().err().filter(|e| e.breaks_the_writer()).cloned();
    let _ = reply.send(result);
    broken
}

impl Writer {
    /// Serves `jobs` until shutdown is signalled and every queued job is
    /// answered (then records the exact id ceiling, checkpoints the WAL and
    /// closes), or until its connection or file breaks.
    pub async fn run(&mut self, jobs: &mut mpsc::Receiver<Job>) -> Exit {
        self.status.writer_started();
        let mut closing = false;
        let mut chores = Chores {
            next_sweep: Instant::now(),
            next_compaction: Instant::now() + COMPACT_INTERVAL,
        };
        let mut held: Option<Job> = None;
        loop {
            let first = match held.take() {
                Some(job) => job,
                None => tokio::select! {
                    biased;
                    changed = self.shutdown.changed(), if !closing => {
                        if changed.is_err() || *self.shutdown.borrow() {
                            // Refuse new jobs; keep draining what is queued.
                            jobs.close();
                            closing = true;
                        }
                        continue;
                    }
                    job = jobs.recv() => match job {
                        Some(job) => job,
                        None => break,
                    },
                    () = tokio::time::sleep_until(chores.next(self.may_expire)), if !closing => {
                        if let Err(exit) = self.chores(&mut chores).await {
                            return exit;
                        }
                        continue;
                    }
                },
            };
            let broken = match first {
                Job::Ops { ops, reply, span, room } => {
                    // Let the tasks that are about to send run first: under
                    // load this gathers more requests into the commit, at the
                    // cost of one pass of the scheduler when idle.
                    tokio::task::yield_now().await;
                    let (batch, rooms, next) = self.gather(jobs, ops, reply, span, room);
                    held = next;
                    let committed = self.commit_batch(batch).await;
                    drop(rooms);
                    if let Err(err) = committed {
                        return self.failed(err).await;
                    }
                    // Chores come between batches even when the queue is
                    // never empty.
                    if !closing && Instant::now() >= chores.next(self.may_expire) {
                        if let Err(exit) = self.chores(&mut chores).await {
                            return exit;
                        }
                    }
                    None
                }
                Job::Purge {
                    collection,
                    limit,
                    reply,
                } => answer(reply, self.purge(&collection, limit).await),
                Job::Schema { change, reply } => answer(reply, self.set_schema(change).await),
                Job::Index {
                    collection,
                    name,
                    fields,
                    recorded,
                    at_ms,
                    reply,
                } => answer(
                    reply,
                    self.change_index(&collection, &name, fields, recorded, at_ms).await,
                ),
                Job::IndexBuild {
                    collection,
                    name,
                    limit,
                    reply,
                } => answer(reply, self.build_index(&collection, &name, limit).await),
                Job::SchemaOf { collection, reply } => {
                    // Where others write too, `begin` reads what changed.
                    let begun = self.begin().await;
                    self.writes.release().await;
                    answer(reply, begun.map(|()| self.schemas.get(&collection).cloned()))
                }
                #[cfg(feature = "fault-injection")]
                Job::Fault(fault) => self.inject(fault).await,
            };
            if let Some(err) = broken {
                return self.failed(err).await;
            }
        }
        self.close().await;
        Exit::Stopped
    }

    /// The batch a commit takes: `ops` and whatever else is queued, up to
    /// the batch limit, with the queue room each holds (released once the
    /// batch is answered), and the job that ended the run if it was not
    /// operations (served next).
    fn gather(
        &self,
        jobs: &mut mpsc::Receiver<Job>,
        ops: Vec<WriteOp>,
        reply: oneshot::Sender<Vec<WriteResult>>,
        span: tracing::Span,
        room: tokio::sync::OwnedSemaphorePermit,
    ) -> (Batch, Vec<tokio::sync::OwnedSemaphorePermit>, Option<Job>) {
        let mut size = ops.len();
        let mut batch = vec![(ops, reply)];
        let mut rooms = vec![room];
        let mut spans = Vec::new();
        if !span.is_disabled() {
            spans.push(span);
        }
        let mut next = None;
        while size < self.batch_limit {
            match jobs.try_recv() {
                Ok(Job::Ops { ops, reply, span, room }) => {
                    size += ops.len();
                    batch.push((ops, reply));
                    rooms.push(room);
                    if !span.is_disabled() {
                        spans.push(span);
                    }
                }
                Ok(other) => {
                    next = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        for span in spans {
            span.record("exdaas.batch.size", batch.len() as i64);
        }
        self.events.batch(self.shard, batch.len());
        (batch, rooms, next)
    }

    async fn failed(&mut self, err: StoreError) -> Exit {
        let (outage, reason) = if self.writes.check_file().still_there().await {
            (err.outage(), err.to_string())
        } else {
            (
                Outage::FileGone,
                format!(
                    "its file {} was deleted or replaced while the server ran; restore it from a backup and restart the server",
                    self.writes.file_name()
                ),
            )
        };
        tracing::error!(shard = self.shard, reason = %reason, "writer failed");
        Exit::Failed { outage, reason }
    }

    async fn close(&mut self) {
        self.writes.close(self.ids, self.ceilings).await;
        tracing::info!(
            shard = self.shard,
            commits = self.commits,
            writes = self.writes_done,
            "writer stopped"
        );
    }

    fn set_unpublished(&self, keys: Vec<DocKey>) {
        *self.unpublished.lock() = keys;
    }

    fn engine_error(&self, err: super::StorageError) -> StoreError {
        StoreError::engine(self.shard, err)
    }

    /// Stored text of `key` that does not parse as JSON: the file is
    /// damaged (exdaas only ever stores what it parsed). The shard says so
    /// to `/readyz` until it is restored, and the operation fails rather
    /// than go on as if the document were `null`.
    fn unreadable(&self, key: &str, err: &serde_json::Error) -> StoreError {
        let error = super::StorageError::new(
            super::ErrorKind::Damaged,
            format!("the stored text of document {key} is not JSON ({err})"),
        );
        self.status.mark_damaged(error.to_string());
        tracing::error!(shard = self.shard, document = key, error = %err, "stored JSON does not parse: the shard file is damaged");
        StoreError::engine(self.shard, error)
    }

    /// Where other processes write the shard too: opens the transaction
    /// that holds it, and takes what is committed as this writer's state
    /// (feed head, id bounds). Nothing where this writer is the only one.
    async fn begin(&mut self) -> Result<(), StoreError> {
        let fresh = self.writes.begin().await.map_err(|e| self.engine_error(e))?;
        if let Some(fresh) = fresh {
            // The row holds ceilings, not exact ids: `ids` stays what this
            // writer wrote, and only the ceilings are taken.
            self.feed.last_seq = fresh.last_seq;
            self.ceilings = fresh.ids;
            // A schema or index changed (by any replica): read the catalog
            // again, in the transaction that holds the shard, so no write
            // is checked against an older schema or misses an index.
            if fresh.schema_seq != self.schema_seq {
                self.load_catalog().await?;
                self.schema_seq = fresh.schema_seq;
            }
        }
        Ok(())
    }
}

#[cfg(feature = "fault-injection")]
impl Writer {
    /// Applies a test's fault; an error if it broke the writer.
    pub(super) async fn inject(&mut self, fault: super::faults::Fault) -> Option<StoreError> {
        tracing::warn!(shard = self.shard, ?fault, "injecting a fault");
        let shard = self.shard;
        use super::engine::EngineFault;
        use super::faults::{Fault, StayDown};
        let engine_fault = match fault {
            Fault::Panic => panic!("injected fault: shard {shard}'s writer panics"),
            Fault::PanicAndStayDown(duration) => std::panic::panic_any(StayDown { shard, duration }),
            Fault::PanicAfterCommit => {
                self.panic_after_commit = true;
                return None;
            }
            Fault::Stall(duration) => {
                tokio::time::sleep(duration).await;
                return None;
            }
            Fault::HoldReads(_) => return None,
            Fault::BreakConnection => EngineFault::BreakConnection,
            Fault::DiskFull => EngineFault::DiskFull,
            Fault::ReadOnly => EngineFault::ReadOnly,
            Fault::Heal => EngineFault::Heal,
        };
        self.writes
            .inject(engine_fault)
            .await
            .err()
            .map(|e| StoreError::engine(shard, e))
            .filter(StoreError::breaks_the_writer)
    }
}
