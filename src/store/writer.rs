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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::cache::DocCache;
use super::engine::IndexChanges;
use super::engine::StoredSchema;
use super::engine::{ChangeKind, FeedEntry, IdBounds, ShardWrites};
use super::index::{IndexDef, MAX_KEY_BYTES};
use super::ops::{decide, Action, Expect, WriteOp, WriteResult};
use super::query::FieldPath;
use super::schema::{Checked, CollectionSchema, PublishedSchemas, SchemaState, INLINE_CHECKS};
use super::status::ShardStatus;
use super::{Document, Outage, StoreError};
use crate::clock::now_millis;
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

    /// Runs the chores that are due: removing expired documents, compacting
    /// the feed. An `Err` when the writer broke and must end.
    async fn chores(&mut self, chores: &mut Chores) -> Result<(), Exit> {
        let now = Instant::now();
        if self.may_expire && now >= chores.next_sweep {
            let removed = match self.sweep().await {
                Ok(removed) => removed,
                Err(err) if err.breaks_the_writer() => return Err(self.failed(err).await),
                Err(err) => {
                    tracing::warn!(shard = self.shard, error = %err, "removing expired documents failed");
                    0
                }
            };
            // A full sweep may have left more: come back as soon as the
            // queue is served.
            chores.next_sweep = Instant::now()
                + if removed < SWEEP_LIMIT {
                    SWEEP_INTERVAL
                } else {
                    Duration::ZERO
                };
        }
        if now >= chores.next_compaction {
            let removed = match self.compact().await {
                Ok(removed) => removed,
                Err(err) if err.breaks_the_writer() => return Err(self.failed(err).await),
                Err(err) => {
                    tracing::warn!(shard = self.shard, error = %err, "compacting the change feed failed");
                    0
                }
            };
            chores.next_compaction = Instant::now()
                + if removed < COMPACT_LIMIT {
                    COMPACT_INTERVAL
                } else {
                    Duration::ZERO
                };
        }
        Ok(())
    }

    async fn failed(&mut self, err: StoreError) -> Exit {
        let (outage, reason) = if self.writes.still_there().await {
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

    /// Commits a batch and answers each request. An error only when the
    /// connection or file broke: the batch is answered with it, and the
    /// writer must end.
    async fn commit_batch(&mut self, batch: Batch) -> Result<(), StoreError> {
        let groups: Vec<&[WriteOp]> = batch.iter().map(|(ops, _)| ops.as_slice()).collect();
        let err = match self.apply_retrying(&groups).await {
            Ok(applied) => {
                let replies = batch.into_iter().map(|(ops, reply)| (ops.len(), reply));
                self.finish(applied, replies).await;
                return Ok(());
            }
            Err(err) => err,
        };
        if err.breaks_the_writer() || batch.len() == 1 {
            self.refuse(batch, &err);
            return if err.breaks_the_writer() { Err(err) } else { Ok(()) };
        }
        tracing::warn!(shard = self.shard, error = %err, requests = batch.len(), "batch failed; retrying its requests one by one");
        let mut requests = batch.into_iter();
        while let Some((ops, reply)) = requests.next() {
            match self.apply_retrying(&[ops.as_slice()]).await {
                Ok(applied) => self.finish(applied, [(ops.len(), reply)]).await,
                Err(err) => {
                    let broken = err.breaks_the_writer();
                    self.refuse(vec![(ops, reply)], &err);
                    if broken {
                        self.refuse(requests.collect(), &err);
                        return Err(err);
                    }
                }
            }
        }
        Ok(())
    }

    /// Answers every operation of `batch` with `err`, and records a full
    /// disk or an unwritable file as the shard's problem until a commit
    /// succeeds again.
    fn refuse(&self, batch: Batch, err: &StoreError) {
        if matches!(err, StoreError::Engine { error, .. } if matches!(error.kind, super::ErrorKind::Full | super::ErrorKind::ReadOnly))
        {
            self.status.set_problem(err.outage(), err.to_string());
        }
        for (ops, reply) in batch {
            let _ = reply.send(ops.iter().map(|_| Err(err.clone())).collect());
        }
    }

    /// After COMMIT: publish to the cache, then acknowledge each request
    /// with its share of the answers.
    async fn finish(
        &mut self,
        applied: Applied,
        replies: impl IntoIterator<Item = (usize, oneshot::Sender<Vec<WriteResult>>)>,
    ) {
        self.ids = self.ids.max(applied.ids);
        self.ceilings = applied.ceilings;
        for (key, change) in applied.changes {
            if change.doc.as_ref().is_some_and(|doc| doc.expires_at_ms.is_some()) {
                self.may_expire = true;
            }
            self.cache.committed(&key, change.doc, change.row_existed).await;
        }
        self.set_unpublished(Vec::new());
        // Readers of the feed wake only now, when what it names is in the
        // cache too.
        self.feed.published(&applied.entries);
        let mut answers = applied.answers.into_iter();
        for (count, reply) in replies {
            // The client may have gone; its write is committed all the same.
            let _ = reply.send(answers.by_ref().take(count).collect());
        }
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

    /// Reads and compiles every schema the shard holds. One that no longer
    /// compiles (only a changed validator could do that) is logged and its
    /// collection takes anything, rather than refusing every write.
    pub async fn load_catalog(&mut self) -> Result<(), StoreError> {
        let stored = self.writes.schemas().await.map_err(|e| self.engine_error(e))?;
        self.schemas = stored
            .into_iter()
            .map(|row| {
                let schema = row.schema.as_deref().and_then(|text| {
                    CollectionSchema::from_stored(text)
                        .inspect_err(|e| {
                            tracing::error!(shard = self.shard, collection = %row.collection, error = %e, "a stored schema does not compile; its collection is not checked");
                        })
                        .ok()
                        .map(Arc::new)
                });
                if let Some(refusal) = schema.as_ref().and_then(|schema| schema.refusal()) {
                    tracing::error!(shard = self.shard, collection = %row.collection, reason = %refusal, "a stored schema is over today's bounds; its collection refuses every write until the schema is set again");
                }
                let state = SchemaState {
                    version: row.version,
                    schema,
                    updated_at_ms: row.updated_at_ms,
                };
                (row.collection, state)
            })
            .collect();
        self.published.publish(&self.schemas);
        let stored = self.writes.indexes().await.map_err(|e| self.engine_error(e))?;
        let mut indexes: HashMap<CollectionName, Vec<IndexDef>> = HashMap::new();
        for index in stored {
            match index
                .fields
                .iter()
                .map(|f| FieldPath::parse(f))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(fields) => indexes.entry(index.collection).or_default().push(IndexDef {
                    name: index.name,
                    fields,
                }),
                Err(e) => {
                    tracing::error!(shard = self.shard, index = %index.name, error = %e, "a stored index's fields do not parse; it is not kept");
                }
            }
        }
        self.indexes = indexes;
        Ok(())
    }

    /// Declares or drops an index on this shard, in the order of its
    /// writes: every write after it keeps (or no longer keeps) its
    /// entries. The shard that records it writes the feed's entry.
    async fn change_index(
        &mut self,
        collection: &CollectionName,
        name: &str,
        fields: Option<Vec<String>>,
        recorded: bool,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        self.begin().await?;
        let kind = if fields.is_some() {
            ChangeKind::IndexDeclared
        } else {
            ChangeKind::IndexDropped
        };
        let id = crate::domain::DocId::parse(name).map_err(|_| StoreError::Internal("an index name is an id"))?;
        let feed = if recorded {
            self.feed
                .number(std::iter::once((DocKey::new(collection.clone(), id), 1, kind)), at_ms)
        } else {
            Vec::new()
        };
        let changed = match fields {
            Some(fields) => {
                let paths = fields
                    .iter()
                    .map(|f| FieldPath::parse(f))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| StoreError::Internal("an index's fields were checked"))?;
                let stored = super::engine::StoredIndex {
                    collection: collection.clone(),
                    name: name.to_owned(),
                    fields,
                    built: false,
                    indexed: 0,
                    oversized: 0,
                    created_at_ms: at_ms,
                };
                let changed = self
                    .writes
                    .declare_index(&stored, &feed)
                    .await
                    .map_err(|e| self.engine_error(e))?;
                if changed {
                    self.indexes.entry(collection.clone()).or_default().push(IndexDef {
                        name: name.to_owned(),
                        fields: paths,
                    });
                }
                changed
            }
            None => {
                let changed = self
                    .writes
                    .drop_index(collection, name, &feed)
                    .await
                    .map_err(|e| self.engine_error(e))?;
                if let Some(list) = self.indexes.get_mut(collection) {
                    list.retain(|index| index.name != name);
                }
                changed
            }
        };
        if changed {
            self.feed.published(&feed);
        }
        Ok(changed)
    }

    /// Covers up to `limit` more documents of an index's build, from where
    /// the shard's record says it is (so builds that were interrupted, or
    /// run by several replicas, go on from there); answers how many, and
    /// whether the shard is done.
    async fn build_index(
        &mut self,
        collection: &CollectionName,
        name: &str,
        limit: u32,
    ) -> Result<(u64, bool), StoreError> {
        self.begin().await?;
        let Some((upto, built)) = self
            .writes
            .build_progress(collection, name)
            .await
            .map_err(|e| self.engine_error(e))?
        else {
            self.writes.release().await;
            return Ok((0, true));
        };
        if built {
            self.writes.release().await;
            return Ok((0, true));
        }
        let Some(index) = self
            .indexes
            .get(collection)
            .and_then(|list| list.iter().find(|index| index.name == name))
            .cloned()
        else {
            self.writes.release().await;
            return Ok((0, true));
        };
        // Documents are read a few at a time and only their keys kept, so
        // a step holds at most `BUILD_READ_BYTES` of their text besides.
        const BUILD_READ: u32 = 64;
        const BUILD_READ_BYTES: usize = 8 << 20;
        let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
        let mut oversized = 0u64;
        let mut last = upto;
        let mut read = 0u32;
        let mut bytes = 0usize;
        let done = loop {
            let want = BUILD_READ.min(limit.saturating_sub(read)).max(1);
            let docs = self
                .writes
                .documents_after(collection, last.as_deref(), want)
                .await
                .map_err(|e| self.engine_error(e))?;
            let chunk = docs.len() as u32;
            for (id, data) in docs {
                bytes += data.len();
                let value =
                    serde_json::from_str(&data).map_err(|e| self.unreadable(&format!("{collection}/{id}"), &e))?;
                let key = index.key_of(&value);
                // Written before the declaration: it cannot be indexed,
                // and the index is never used (its listing says why).
                if key.len() > MAX_KEY_BYTES {
                    oversized += 1;
                } else {
                    entries.push((id.clone(), key));
                }
                last = Some(id);
            }
            read += chunk;
            if chunk < want {
                break true;
            }
            if read >= limit || bytes >= BUILD_READ_BYTES {
                break false;
            }
        };
        self.writes
            .build_step(collection, name, &entries, oversized, last.as_deref(), done)
            .await
            .map_err(|e| self.engine_error(e))?;
        Ok((entries.len() as u64, done))
    }

    /// Checks a document about to be stored against its collection's
    /// schema and indexes, and fills `entries` with its index keys: a
    /// refusal if it does not match the schema or a key is too large.
    fn check_and_key(
        &self,
        key: &DocKey,
        doc: &Document,
        checked: Option<&Checked>,
        entries: &mut Vec<(String, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        let schema = self
            .schemas
            .get(&key.collection)
            .and_then(|state| state.schema.as_ref().map(|schema| (state.version, schema)));
        let indexes = self.indexes.get(&key.collection).filter(|list| !list.is_empty());
        if schema.is_none() && indexes.is_none() {
            return Ok(());
        }
        // Parsed only if something here reads it (once for both).
        let mut value: Option<serde_json::Value> = None;
        let parse = || serde_json::from_str(&doc.data).map_err(|e| self.unreadable(&key.to_string(), &e));
        if let Some((version, schema)) = schema {
            // Checked before it was queued, against this schema: taken as
            // is. Otherwise (the document or the schema changed since) it
            // is checked here only if that is quick: this writer commits
            // every collection of the shard.
            let known = checked.filter(|checked| {
                checked.schema_version == version && (Arc::ptr_eq(&checked.text, &doc.data) || checked.text == doc.data)
            });
            let violations = match known {
                Some(checked) => checked.violations.clone(),
                None => {
                    let value = match &mut value {
                        Some(value) => value,
                        None => value.insert(parse()?),
                    };
                    if schema.work(value) > INLINE_CHECKS {
                        return Err(StoreError::SchemaRace { key: key.clone() });
                    }
                    schema.violations(value)
                }
            };
            if !violations.is_empty() {
                return Err(StoreError::SchemaViolation {
                    key: key.clone(),
                    schema_version: version,
                    violations,
                });
            }
        }
        for index in indexes.into_iter().flatten() {
            let value = match &mut value {
                Some(value) => value,
                None => value.insert(parse()?),
            };
            let entry = index.key_of(value);
            if entry.len() > MAX_KEY_BYTES {
                return Err(StoreError::Unprocessable {
                    reason: format!(
                        "document {key}: its fields {:?} take {} bytes as a key of index {:?}; an index key holds at most {MAX_KEY_BYTES}",
                        index.field_names(),
                        entry.len(),
                        index.name
                    ),
                });
            }
            entries.push((index.name.clone(), entry));
        }
        Ok(())
    }

    /// Sets or removes a collection's schema on this shard, in the order
    /// of its writes: every write queued after it is checked against it.
    /// The shard that numbers the change records it in the feed. A change
    /// older than what the shard holds (another replica's came first) is
    /// not stored; the answer is what the shard holds.
    async fn set_schema(&mut self, change: SchemaChange) -> Result<SchemaState, StoreError> {
        self.begin().await?;
        let current = self.schemas.get(&change.collection).map_or(0, |state| state.version);
        let numbering = change.version.is_none();
        let version = change.version.unwrap_or(current + 1);
        if version <= current {
            self.writes.release().await;
            return self
                .schemas
                .get(&change.collection)
                .cloned()
                .ok_or(StoreError::Internal("a schema's version without its schema"));
        }
        let kind = if change.schema.is_some() {
            ChangeKind::SchemaSet
        } else {
            ChangeKind::SchemaRemoved
        };
        let key = DocKey::new(change.collection.clone(), crate::domain::DocId::of_collection());
        let feed = if numbering {
            self.feed.number(std::iter::once((key, version, kind)), change.at_ms)
        } else {
            Vec::new()
        };
        let row = StoredSchema {
            collection: change.collection.clone(),
            version,
            schema: change.schema.as_ref().map(|s| s.text.to_string()),
            updated_at_ms: change.at_ms,
        };
        let stored = self
            .writes
            .set_schema(&row, &feed)
            .await
            .map_err(|e| self.engine_error(e))?;
        if stored {
            let state = SchemaState {
                version,
                schema: change.schema,
                updated_at_ms: change.at_ms,
            };
            self.schemas.insert(change.collection.clone(), state);
            self.published.publish(&self.schemas);
            self.feed.published(&feed);
        }
        self.schemas
            .get(&change.collection)
            .cloned()
            .ok_or(StoreError::Internal("a schema was stored but not kept"))
    }

    /// `apply`, run again whole (after a pause that grows) while the engine
    /// refuses it for a concurrent transaction: distributed engines ask
    /// their clients to retry so, and a client should never see it.
    async fn apply_retrying(&mut self, groups: &[&[WriteOp]]) -> Result<Applied, StoreError> {
        let mut pause = Duration::from_millis(2);
        for _ in 0..CONFLICT_RETRIES {
            match self.apply(groups).await {
                Err(StoreError::Engine { error, .. }) if error.kind == super::ErrorKind::Conflict => {
                    self.events.conflict_retried(self.shard);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                other => return other,
            }
        }
        self.apply(groups).await
    }

    /// Applies the groups' operations in order, in one transaction.
    /// Per-operation refusals (a failed precondition) are answers; only
    /// database failures abort the whole.
    ///
    /// Whatever the batch size, this costs at most two trips to SQLite: one
    /// SELECT for the keys whose committed state is not already known, and
    /// one script that writes every change and commits. Decisions in between
    /// are plain Rust.
    async fn apply(&mut self, groups: &[&[WriteOp]]) -> Result<Applied, StoreError> {
        let shard = self.shard;
        self.begin().await?;
        let now = now_millis();
        let (mut state, refused) = self
            .committed_state(groups)
            .await
            .map_err(|e| StoreError::engine(shard, e))?;

        let mut answers = Vec::with_capacity(groups.iter().map(|g| g.len()).sum());
        let mut changes: HashMap<DocKey, Change> = HashMap::new();
        let mut ids = self.ids;
        let ops = groups
            .iter()
            .enumerate()
            .flat_map(|(g, group)| group.iter().enumerate().map(move |(i, op)| ((g, i), op)));
        for (at, op) in ops {
            if refused.contains(&at) {
                answers.push(Err(StoreError::TooMuchToRead {
                    key: op.key.clone(),
                    limit: op.budget.as_ref().map_or(0, |b| b.limit()),
                }));
                continue;
            }
            let current = state.get(&op.key).and_then(Option::as_ref);
            let (mut answer, mut new_state) = decide(op, current, now);
            // A document may not outgrow the body limit, not even by patches
            // that each fit in it.
            if let Some(Some(doc)) = &new_state {
                if doc.data.len() > self.max_document_bytes {
                    answer = Err(StoreError::DocumentTooLarge {
                        key: op.key.clone(),
                        bytes: doc.data.len(),
                        limit: self.max_document_bytes,
                    });
                    new_state = None;
                }
            }
            // Nor leave its collection's schema, nor hold a value too large
            // for an index's key: checked here, where every write path
            // meets the document it would store (parsed once for both).
            let mut entries = Vec::new();
            if let Some(Some(doc)) = &new_state {
                if let Err(refusal) = self.check_and_key(&op.key, doc, op.checked.as_ref(), &mut entries) {
                    answer = Err(refusal);
                    new_state = None;
                }
            }
            if let Some(new_state) = new_state {
                if new_state.is_some() {
                    if let Some(n) = op.key.id.as_counter_value() {
                        ids.stored = ids.stored.max(n);
                        if op.counted {
                            ids.counter = ids.counter.max(n);
                        }
                    }
                }
                let (row_existed, order) = changes
                    .get(&op.key)
                    .map_or((current.is_some(), changes.len()), |change| {
                        (change.row_existed, change.order)
                    });
                changes.insert(
                    op.key.clone(),
                    Change {
                        bucket: op.bucket,
                        doc: new_state.clone(),
                        row_existed,
                        version: current.map_or(0, |doc| doc.version),
                        order,
                        entries,
                    },
                );
                state.insert(op.key.clone(), new_state);
            }
            answers.push(answer);
        }

        let (ceilings, entries) = if changes.is_empty() {
            self.writes.release().await;
            (self.ceilings, Vec::new())
        } else {
            self.set_unpublished(changes.keys().cloned().collect());
            self.persist(&changes, ids, now).await?
        };
        self.writes_done += answers.len() as u64;
        Ok(Applied {
            answers,
            changes,
            entries,
            ids,
            ceilings,
        })
    }

    /// The committed row of every key the operations touch: from the cache,
    /// from what the id counter guarantees, else from disk. Reading outside
    /// the transaction is safe: this writer is the shard's only one.
    ///
    /// Memory stays bounded in bytes: a stored document's text is read only
    /// when an operation needs it (a get or a patch; a put only to see
    /// whether it changes anything, when the lengths match; a delete never),
    /// and one request's gets and patches read large stored documents only
    /// within the request's budget (see `ReadBudget`), whatever the shards.
    /// The operations past it are answered without being applied (their
    /// place in `groups` is in the returned set).
    async fn committed_state(
        &mut self,
        groups: &[&[WriteOp]],
    ) -> Result<(HashMap<DocKey, Option<Document>>, HashSet<(usize, usize)>), super::StorageError> {
        let mut state: HashMap<DocKey, Option<Document>> = HashMap::new();
        let mut refused = HashSet::new();
        let mut unknown: Vec<DocKey> = Vec::new();
        for op in groups.iter().flat_map(|group| group.iter()) {
            if state.contains_key(&op.key) {
                continue;
            }
            // Every counter-shaped id stored in this shard is at most
            // `ids.stored`, so a fresh id above it needs no read.
            // Where other processes write too, only the database knows.
            let shared = self.writes.shared();
            let surely_absent = !shared
                && op.expect == Expect::Absent
                && op.key.id.as_counter_value().is_some_and(|n| n > self.ids.stored);
            let cached = if surely_absent || shared {
                None
            } else {
                self.cache.get(&op.key).await
            };
            if cached.is_none() && !surely_absent {
                unknown.push(op.key.clone());
            }
            state.insert(op.key.clone(), cached);
        }
        if unknown.is_empty() {
            return Ok((state, refused));
        }
        // Versions and sizes of every unknown row, with the text of small ones.
        let mut untold: HashMap<DocKey, usize> = HashMap::new();
        for row in self.writes.load(&unknown, SMALL_DOCUMENT).await? {
            let Some(key) = unknown.get(row.index) else { continue };
            if !row.whole {
                untold.insert(key.clone(), row.bytes);
            }
            state.insert(key.clone(), Some(row.doc));
        }
        if untold.is_empty() {
            return Ok((state, refused));
        }
        // Which large texts the operations need.
        let mut wanted: HashSet<DocKey> = HashSet::new();
        for (g, group) in groups.iter().enumerate() {
            for (i, op) in group.iter().enumerate() {
                let Some(&bytes) = untold.get(&op.key) else { continue };
                match &op.action {
                    Action::Delete => {}
                    Action::Put { data, .. } => {
                        if data.len() == bytes {
                            wanted.insert(op.key.clone());
                        }
                    }
                    Action::Read | Action::Patch { .. } => {
                        if wanted.contains(&op.key) {
                            continue;
                        }
                        if !op.budget.as_ref().is_none_or(|budget| budget.take(bytes)) {
                            refused.insert((g, i));
                            continue;
                        }
                        wanted.insert(op.key.clone());
                    }
                }
            }
        }
        if !wanted.is_empty() {
            let wanted: Vec<DocKey> = wanted.into_iter().collect();
            for (index, text) in self.writes.load_texts(&wanted).await? {
                if let Some(Some(doc)) = wanted.get(index).and_then(|key| state.get_mut(key)) {
                    doc.data = text;
                }
            }
        }
        Ok((state, refused))
    }

    /// Writes every changed key's final state, one feed entry for each
    /// (and, when an id passed one, raised id ceilings) in one transaction.
    /// If any part fails, nothing of it is visible. Returns the id ceilings
    /// now on disk and the number of feed entries committed.
    async fn persist(
        &mut self,
        changes: &HashMap<DocKey, Change>,
        ids: IdBounds,
        now: i64,
    ) -> Result<(IdBounds, Vec<FeedEntry>), StoreError> {
        let shard = self.shard;
        let ceilings = ids
            .exceeds(self.ceilings)
            .then(|| ids.reserved(self.ceilings, ID_RESERVE));
        if let Some(ceilings) = ceilings {
            self.writes
                .reserve_ids(ceilings)
                .await
                .map_err(|e| self.engine_error(e))?;
        }
        let mut ordered: Vec<(&DocKey, &Change)> = changes.iter().collect();
        ordered.sort_unstable_by_key(|(_, change)| change.order);
        let feed = self.feed.number(
            ordered.iter().map(|(key, change)| match &change.doc {
                Some(doc) => ((*key).clone(), doc.version, ChangeKind::Written),
                None => ((*key).clone(), change.version, ChangeKind::Deleted),
            }),
            now,
        );
        let started = Instant::now();
        let mut entries = IndexChanges::default();
        for (key, change) in &ordered {
            if self.indexes.get(&key.collection).is_some_and(|list| !list.is_empty()) {
                entries.removed.push((*key).clone());
                for (name, entry) in &change.entries {
                    entries.added.push(((*key).clone(), name.clone(), entry.clone()));
                }
            }
        }
        if !entries.is_empty() {
            self.writes
                .index_changes(&entries)
                .await
                .map_err(|e| self.engine_error(e))?;
        }
        let rows = ordered
            .iter()
            .map(|(key, change)| (*key, change.bucket, change.doc.as_ref()));
        let written = self.writes.commit(rows, &feed, ceilings).await;
        self.events.commit(shard, started.elapsed().as_secs_f64());
        written.map_err(|e| self.engine_error(e))?;
        // Committed, but to the file this writer opened: if that was deleted
        // or replaced, the commit is lost at the next start, so it must not
        // be acknowledged.
        if !self.writes.still_there().await {
            return Err(StoreError::Unavailable {
                shard: self.shard,
                outage: Outage::FileGone,
                reason: format!("its file {} was deleted or replaced", self.writes.file_name()),
            });
        }
        self.commits += 1;
        self.status.clear_problem();
        #[cfg(feature = "fault-injection")]
        if self.panic_after_commit {
            panic!("injected fault: shard {shard}'s writer panics after a commit");
        }
        Ok((ceilings.unwrap_or(self.ceilings), feed))
    }

    /// Removes up to `SWEEP_LIMIT` expired documents and drops them from the
    /// cache. Readers already treat them as gone; this reclaims the space
    /// and tells the feed.
    async fn sweep(&mut self) -> Result<u32, StoreError> {
        self.begin().await?;
        let found = self
            .writes
            .expired(now_millis(), SWEEP_LIMIT)
            .await
            .map_err(|e| self.engine_error(e))?;
        let removed = self.delete_and_evict(found, ChangeKind::Expired).await?;
        if removed > 0 {
            tracing::debug!(shard = self.shard, removed, "removed expired documents");
        }
        Ok(removed as u32)
    }

    /// Deletes up to `limit` documents of `collection` in one transaction.
    async fn purge(&mut self, collection: &CollectionName, limit: u32) -> Result<u64, StoreError> {
        self.begin().await?;
        let found = self
            .writes
            .in_collection(collection, limit)
            .await
            .map_err(|e| self.engine_error(e))?;
        self.delete_and_evict(found, ChangeKind::Dropped).await
    }

    /// Deletes the `found` documents with a feed entry of `kind` for each,
    /// then evicts them from the cache. The keys are marked unpublished
    /// first, so a writer dying in between still gets them evicted.
    async fn delete_and_evict(&mut self, found: Vec<(DocKey, u64)>, kind: ChangeKind) -> Result<u64, StoreError> {
        if found.is_empty() {
            self.writes.release().await;
            return Ok(0);
        }
        let feed = self.feed.number(
            found.into_iter().map(|(key, version)| (key, version, kind)),
            now_millis(),
        );
        self.set_unpublished(feed.iter().map(|entry| entry.key.clone()).collect());
        let removed: Vec<DocKey> = feed
            .iter()
            .filter(|entry| {
                self.indexes
                    .get(&entry.key.collection)
                    .is_some_and(|list| !list.is_empty())
            })
            .map(|entry| entry.key.clone())
            .collect();
        let entries = IndexChanges {
            removed,
            added: Vec::new(),
        };
        if !entries.is_empty() {
            self.writes
                .index_changes(&entries)
                .await
                .map_err(|e| self.engine_error(e))?;
        }
        let done = self
            .writes
            .delete_with_feed(&feed)
            .await
            .map_err(|e| self.engine_error(e))?;
        for entry in &feed {
            self.cache.committed(&entry.key, None, true).await;
        }
        self.set_unpublished(Vec::new());
        self.feed.published(&feed);
        Ok(done)
    }

    /// Compacts the feed before the shard serves, so a cursor the settings
    /// no longer keep is refused from the first request on. A long backlog
    /// (a lowered setting) is left, after a few passes, to the chores.
    pub async fn compact_at_open(&mut self) -> Result<(), StoreError> {
        for _ in 0..8 {
            if self.compact().await? < COMPACT_LIMIT {
                break;
            }
        }
        Ok(())
    }

    /// Removes feed entries past their retention, or beyond the count to
    /// keep, at most `COMPACT_LIMIT` of them; answers how many.
    async fn compact(&mut self) -> Result<u64, StoreError> {
        let retention_ms = i64::try_from(self.feed.retention.as_millis()).unwrap_or(i64::MAX);
        let before = now_millis().saturating_sub(retention_ms);
        let removed = self
            .writes
            .compact_feed(before, self.feed.keep, COMPACT_LIMIT)
            .await
            .map_err(|e| self.engine_error(e))?;
        if removed > 0 {
            tracing::debug!(shard = self.shard, removed, "compacted the change feed");
        }
        Ok(removed)
    }
}

/// Ids the ceiling is raised past the highest one written, so that a run
/// of anonymous writes updates `shard_meta` (and, under `EXDAAS_SYNC=normal`,
/// syncs it: see `ShardWrites::reserve_ids`) once per this many ids instead
/// of in every commit. A crash can skip up to this many ids; a clean stop
/// records the exact highest one.
const ID_RESERVE: u64 = 1024;

/// Times a transaction refused for a concurrent one is run again before
/// its error is the answer.
const CONFLICT_RETRIES: u32 = 8;

/// Stored documents up to this size come with their row's first read; the
/// text of larger ones is read only when an operation needs it.
const SMALL_DOCUMENT: usize = 64 << 10;

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
