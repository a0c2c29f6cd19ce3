//! The store: documents placed on shards, each written by one serialized
//! writer (a SQLite file, or a shard of a PostgreSQL-protocol database) and
//! read through a shared cache.
//!
//! [`Store`] is the whole interface the HTTP layer sees: plain Rust types in,
//! plain Rust types out; SQL and files stay in `engine/`. This file is the
//! facade (what the API may use) and the calls on single documents (open,
//! get, put, patch, delete, batches); the other calls are in `service/`,
//! and the state they all share in `handle.rs`, below them. Imports only go
//! down: the book's "How it works" (docs/src/internals/how-it-works.md)
//! draws the layers and `scripts/modgraph.py --check` holds them.

pub mod cache;
pub mod document;
pub mod engine;
mod error;
#[cfg(feature = "fault-injection")]
mod faults;
mod feed;
mod following;
mod handle;
pub mod ids;
pub mod index;
pub mod maintenance;
mod ops;
mod options;
mod patch;
pub mod placement;
pub mod query;
mod replicas;
mod scan;
pub mod schema;
mod service;
mod shard;
mod status;
mod writer;

use std::sync::Arc;
use std::time::Instant;

use futures_util::TryStreamExt;
use tokio::sync::watch;

use crate::domain::{CollectionName, DocId, DocKey, MAX_COUNTER_ID};
use crate::stats::{ShardStats, StoreSnapshot};
use cache::DocCache;
pub use document::{canonical_json, Document};
pub use engine::{ChangeKind, ErrorKind, FeedEntry, StorageError};
pub use error::{Outage, StoreError};
#[cfg(feature = "fault-injection")]
pub use faults::Fault;
pub use feed::{CursorError, FeedCursor, FeedItem, FeedPage, FeedRequest, FeedStart};
use handle::Inner;
pub use handle::Store;
use ids::IdCounter;
pub use ops::{Action, Expect, WriteOutcome, WriteResult};
use ops::{ReadBudget, WriteOp};
pub use options::StoreOptions;
use placement::Placement;
pub use scan::{CollectionInfo, ListRequest, Listed, Page, MAX_PAGE};
use shard::Shard;

/// Result of storing a document.
#[derive(Debug, Clone)]
pub struct Stored {
    pub doc: Document,
    /// The document did not exist before.
    pub created: bool,
    /// Something was written (false when the data equalled the stored one).
    pub changed: bool,
}

/// A shared database, as one replica sees it.
#[derive(Debug, Clone)]
pub struct DatabaseHealth {
    /// A round that read every shard's feed began within `trust`: the cache
    /// serves, at most that stale.
    pub reachable: bool,
    /// Since the last such round began.
    pub behind: std::time::Duration,
    pub trust: std::time::Duration,
    /// Why following fails, while it does.
    pub problem: Option<String>,
}

/// Readiness of one shard.
#[derive(Debug, Clone)]
pub struct ShardHealth {
    pub index: usize,
    pub ready: bool,
    /// What is wrong, while something is, in words fit for any client.
    pub problem: Option<&'static str>,
}

impl Store {
    /// Checks the data folder, opens every shard, starts the writers and warms
    /// the cache from disk.
    pub async fn open(options: StoreOptions) -> Result<Self, StoreError> {
        let backend = engine::backend::open(&engine::backend::EngineOptions {
            data_dir: options.data_dir.clone(),
            database_url: options.database_url.clone(),
            shards: options.shards,
            sync: options.sync,
            cache_bytes: options.cache_bytes,
            read_connections: options.read_connections,
            queue_wait: options.queue_wait,
        })
        .await?;
        let documents_share = options.cache_bytes - backend.engine_cache_bytes;
        let cache = DocCache::new(documents_share);
        let (shutdown, _) = watch::channel(false);
        let feed_published = Arc::new(watch::Sender::new(0));
        // Every shard at once: each opens, checks and migrates its own file
        // on its own connection. (One after another, the integrity checks,
        // which read every file whole, were a quarter of a restart over
        // 1,000,000 documents.)
        let opening = backend.shards.into_iter().map(|file| {
            Shard::open(
                file,
                &options,
                cache.clone(),
                shutdown.subscribe(),
                feed_published.clone(),
            )
        });
        let mut shards = Vec::new();
        let mut failure = None;
        for opened in futures_util::future::join_all(opening).await {
            match opened {
                Ok(shard) => shards.push(shard),
                Err(err) => {
                    failure.get_or_insert(err);
                }
            }
        }
        if let Some(err) = failure {
            // Stop the writers that did start before saying why (the
            // first shard's reason, in shard order).
            let _ = shutdown.send(true);
            for shard in &shards {
                shard.close().await;
            }
            return Err(err);
        }
        let lock = match backend.folder {
            Some(folder) => match folder.shards_created().await {
                Ok(lock) => Some(lock),
                Err(err) => {
                    let _ = shutdown.send(true);
                    for shard in &shards {
                        shard.close().await;
                    }
                    return Err(err.into());
                }
            },
            None => None,
        };
        let highest_id = shards.iter().map(|s| s.counter_high).max().unwrap_or(0);
        let shared_following = backend
            .shared
            .as_ref()
            .map(|_| Arc::new(following::Following::new(options.replica_poll)));
        let store = Store {
            inner: Arc::new(Inner {
                placement: Placement::new(options.shards),
                shards,
                cache,
                ids: IdCounter::starting_after(highest_id),
                id_blocks: backend.shared.map(|source| ids::IdBlocks::new(source, highest_id)),
                shutdown,
                lock: parking_lot::Mutex::new(lock),
                data_dir: options.data_dir.clone(),
                events: options.events.clone(),
                page_bytes: options.page_bytes,
                queue_wait: options.queue_wait,
                folder_id: backend.folder_id,
                generation: backend.generation,
                feed_reads: tokio::sync::Semaphore::new((options.read_connections as usize / 2).max(1)),
                catalog_changes: tokio::sync::Mutex::new(()),
                feed_published,
                following: shared_following,
            }),
        };
        if let Err(err) = store.warm_cache().await {
            store.shutdown().await;
            return Err(err);
        }
        if let Some(following) = &store.inner.following {
            tokio::spawn(replicas::follow(store.clone(), options.replica_poll, following.clone()));
        }
        if let Err(err) = store.resume_index_builds().await {
            store.shutdown().await;
            return Err(err);
        }
        Ok(store)
    }

    /// The document at `key`, if it exists (and has not expired).
    pub async fn get(&self, key: &DocKey) -> Result<Option<Document>, StoreError> {
        if self.inner.following.as_ref().is_some_and(|f| !f.cache_trusted()) {
            // Other replicas' writes may be missing from the cache for longer
            // than its promise: the database answers, or says it cannot.
            return self.get_fresh(key).await;
        }
        // The shard is found only on a miss: a hit needs no placement hash.
        let cached = self.inner.cache.get(key).await;
        let hit = cached.is_some();
        let doc = match cached {
            Some(doc) => Some(doc),
            None => {
                let shard = self.shard_for(key);
                // A connection first, waited for without holding the key's
                // cache lock: the writer's post-commit update takes that lock,
                // so a busy read pool must never make a commit wait.
                let slot = shard.read_slot().await?;
                self.inner
                    .cache
                    .fill(key, move || async move { Ok(slot.read(key).await?) })
                    .await?
            }
        };
        self.inner.events.cache_read(hit);
        // On the request's span, when traces are exported.
        tracing::Span::current().record("exdaas.cache.hit", hit);
        Ok(doc.filter(|doc| doc.is_live(crate::clock::now_millis())))
    }

    /// The document at `key` as committed now, read from the engine past
    /// the cache: where other processes write too (a shared database), the
    /// cache may be behind by up to `EXDAAS_REPLICA_POLL_MS`.
    pub async fn get_fresh(&self, key: &DocKey) -> Result<Option<Document>, StoreError> {
        let slot = self.shard_for(key).read_slot().await?;
        let doc = slot.read(key).await?;
        self.inner.events.cache_read(false);
        Ok(doc.filter(|doc| doc.is_live(crate::clock::now_millis())))
    }

    /// Stores `data` at `key`, creating or replacing the document (no
    /// precondition, no expiry): the original API's upsert.
    pub async fn put(&self, key: DocKey, data: &serde_json::Value) -> Result<Stored, StoreError> {
        let action = Action::put(data, None)?;
        into_stored(self.write(key, Expect::Any, action).await?)
    }

    /// Applies one operation to the document at `key`.
    pub async fn write(&self, key: DocKey, expect: Expect, action: Action) -> WriteResult {
        let counted = self.note_put(&key.id, &action);
        // A put equal to the committed document changes nothing; the cache
        // holds only committed state, so answering from it is safe, unless
        // other replicas write too: their newer state may not be there yet.
        if let (Expect::Any, Action::Put { data, expires_at_ms }, None) = (&expect, &action, &self.inner.following) {
            if let Some(doc) = self.inner.cache.get(&key).await {
                if doc.data == *data && doc.expires_at_ms == *expires_at_ms && doc.is_live(crate::clock::now_millis()) {
                    return Ok(WriteOutcome::Unchanged(doc));
                }
            }
        }
        let bucket = Placement::bucket_of(&key);
        let shard = self.shard_for(&key);
        let mut op = WriteOp {
            key,
            bucket,
            expect,
            action,
            counted,
            budget: None,
            checked: None,
        };
        // Checked against the schema before it is queued; checked again
        // (the document changed in between) if the writer cannot do it
        // quickly itself. Kept for that only where there is a schema.
        let answer = |mut answers: Vec<WriteResult>| {
            answers
                .pop()
                .unwrap_or(Err(StoreError::Internal("the writer gave no answer")))
        };
        let mut attempts = 1;
        loop {
            self.check_before_writing(shard, std::slice::from_mut(&mut op)).await?;
            if op.checked.is_none() || attempts == schema::SCHEMA_RACE_ATTEMPTS {
                return answer(shard.submit(vec![op]).await?);
            }
            match answer(shard.submit(vec![op.clone()]).await?) {
                Err(StoreError::SchemaRace { .. }) => attempts += 1,
                answered => return answered,
            }
        }
    }

    /// Applies operations on documents of one collection. Those that land
    /// on the same shard are applied in order and commit in one transaction;
    /// across shards there is no ordering and no atomicity. Answers come
    /// back in the order of `ops`. Their gets and patches read at most
    /// `EXDAAS_MAX_PAGE_BYTES` of large stored documents besides the first
    /// (see `ReadBudget`); those past it answer `TooMuchToRead`.
    pub async fn write_many(&self, collection: &CollectionName, ops: Vec<(DocId, Expect, Action)>) -> Vec<WriteResult> {
        let total = ops.len();
        let budget = Arc::new(ReadBudget::new(self.inner.page_bytes));
        let mut per_shard: Vec<(Vec<usize>, Vec<WriteOp>)> = vec![(Vec::new(), Vec::new()); self.inner.shards.len()];
        for (index, (id, expect, action)) in ops.into_iter().enumerate() {
            let counted = self.note_put(&id, &action);
            let key = DocKey::new(collection.clone(), id);
            let bucket = Placement::bucket_of(&key);
            let (indices, shard_ops) = &mut per_shard[self.inner.placement.shard_of_bucket(bucket)];
            indices.push(index);
            shard_ops.push(WriteOp {
                key,
                bucket,
                expect,
                action,
                counted,
                budget: Some(budget.clone()),
                checked: None,
            });
        }
        let submitted = per_shard
            .into_iter()
            .enumerate()
            .filter(|(_, (indices, _))| !indices.is_empty())
            .map(|(shard, (indices, mut ops))| async move {
                let count = ops.len();
                let shard = &self.inner.shards[shard];
                let checked = self.check_before_writing(shard, &mut ops).await;
                let submitted = match checked {
                    Ok(()) => shard.submit(ops).await,
                    Err(err) => Err(err),
                };
                let answers = match submitted {
                    Ok(answers) => answers,
                    Err(err) => vec![Err(err); count],
                };
                (indices, answers)
            });
        let mut answers: Vec<WriteResult> = vec![Err(StoreError::Internal("an operation got no answer")); total];
        for (indices, shard_answers) in futures_util::future::join_all(submitted).await {
            for (index, answer) in indices.into_iter().zip(shard_answers) {
                answers[index] = answer;
            }
        }
        answers
    }

    /// Stores `data` under a fresh id from the counter.
    pub async fn create(
        &self,
        collection: CollectionName,
        data: &serde_json::Value,
        expires_at_ms: Option<i64>,
    ) -> Result<(DocId, Stored), StoreError> {
        self.create_with(&collection, Action::put(data, expires_at_ms)?).await
    }

    /// Applies `put` (an [`Action::Put`]) under a fresh id from the counter,
    /// create-only: if the id turns out taken (a client chose it), the
    /// counter moves to the next free one and the write is tried again.
    pub async fn create_with(&self, collection: &CollectionName, put: Action) -> Result<(DocId, Stored), StoreError> {
        // Each retry skips a whole run of taken ids, so only clients racing
        // for the very ids the counter is handing out can make it retry.
        const ATTEMPTS: u32 = 64;
        let mut at_least = 0;
        for _ in 0..ATTEMPTS {
            let n = self.next_counter_id(at_least).await?;
            let id = DocId::from_counter(n);
            let key = DocKey::new(collection.clone(), id.clone());
            match self.write(key, Expect::Absent, put.clone()).await {
                Err(StoreError::PreconditionFailed { .. }) => {
                    let free = self.next_free_counter_id(collection, n).await?;
                    self.inner.ids.skip_to(free);
                    at_least = free;
                }
                other => return Ok((id, into_stored(other?)?)),
            }
        }
        Err(StoreError::IdsExhausted { attempts: ATTEMPTS })
    }

    /// A fresh id from the counter, for a document written later (an
    /// import line without an id). Write it with [`Expect::Absent`], and on
    /// a failed precondition fall back to [`Store::create_with`].
    pub async fn allocate_id(&self) -> Result<DocId, StoreError> {
        Ok(DocId::from_counter(self.next_counter_id(0).await?))
    }

    /// The counter's next id (at least `at_least` where the counter is
    /// shared: past ids found taken).
    async fn next_counter_id(&self, at_least: u64) -> Result<u64, StoreError> {
        match &self.inner.id_blocks {
            Some(blocks) => {
                let n = blocks.next(at_least.max(self.inner.ids.peek())).await?;
                // So a restart continues past it, like the unshared counter.
                self.inner.ids.skip_to(n.saturating_add(1));
                Ok(n)
            }
            None => Ok(self.inner.ids.next()),
        }
    }

    /// The first counter id after `taken` that no document of `collection`
    /// holds, reading ids in runs: a client's long run of numeric ids costs
    /// one read per run, not a write attempt per id.
    async fn next_free_counter_id(&self, collection: &CollectionName, taken: u64) -> Result<u64, StoreError> {
        /// Ids one probe looks at, and the most probes one create makes.
        const SPAN: u64 = 4096;
        const PROBES: u32 = 4096;
        let mut from = taken.saturating_add(1);
        for _ in 0..PROBES {
            if from > MAX_COUNTER_ID {
                from = 1;
            }
            // Ids of one length sort as their numbers do: stay within one.
            let digits_end = 10u64.saturating_pow(from.ilog10() + 1);
            let to = from.saturating_add(SPAN).min(digits_end).min(MAX_COUNTER_ID + 1);
            let mut used = std::collections::BTreeSet::new();
            for shard in self.shards() {
                used.extend(shard.reads().counter_ids_between(collection, from, to - 1).await?);
            }
            if let Some(free) = (from..to).find(|n| !used.contains(n)) {
                return Ok(free);
            }
            from = to;
        }
        Err(StoreError::IdsExhausted { attempts: PROBES })
    }

    /// Moves the id counter past `id`, an id about to be stored, if it is
    /// one the counter could hand out and near enough (see [`ids`]);
    /// answers whether the counter is past it.
    pub fn note_id(&self, id: &DocId) -> bool {
        id.as_counter_value().is_some_and(|n| self.inner.ids.observe(n))
    }

    /// [`Store::note_id`] for an operation: only a put stores an id.
    fn note_put(&self, id: &DocId, action: &Action) -> bool {
        matches!(action, Action::Put { .. }) && self.note_id(id)
    }

    /// Deletes the document at `key`; `false` if there was none.
    pub async fn delete(&self, key: DocKey) -> Result<bool, StoreError> {
        match self.write(key, Expect::Any, Action::Delete).await? {
            WriteOutcome::Deleted(_) => Ok(true),
            _ => Ok(false),
        }
    }

    /// The store's state for a scrape; with `count_documents`, a count of
    /// every shard's live documents too (a `count(*)` each).
    pub async fn snapshot(&self, count_documents: bool) -> StoreSnapshot {
        let (cache_entries, cache_bytes) = self.inner.cache.usage().await;
        let shards = self
            .inner
            .shards
            .iter()
            .map(|s| ShardStats {
                index: s.index,
                ready: s.is_ready(),
                queued: s.queued(),
            })
            .collect();
        let documents = if count_documents {
            Some(self.documents_per_shard().await)
        } else {
            None
        };
        StoreSnapshot {
            cache_entries,
            cache_bytes,
            shards,
            documents,
            database_pool: self.inner.id_blocks.as_ref().map(|blocks| blocks.database().pool_use()),
        }
    }

    pub fn health(&self) -> Vec<ShardHealth> {
        self.inner
            .shards
            .iter()
            .map(|s| ShardHealth {
                index: s.index,
                ready: s.is_ready(),
                problem: s.outage().map(Outage::describe),
            })
            .collect()
    }

    /// Where other replicas share the database: whether this one has read
    /// all their writes recently enough to serve from its cache.
    pub fn database_health(&self) -> Option<DatabaseHealth> {
        self.inner.following.as_ref().map(|f| DatabaseHealth {
            reachable: f.cache_trusted(),
            behind: f.behind(),
            trust: f.trust,
            problem: f.problem(),
        })
    }

    /// Takes a consistent backup of every shard into `dest` (new or empty),
    /// while the store serves: see [`maintenance::backup`].
    pub async fn backup(&self, dest: &std::path::Path) -> Result<maintenance::Manifest, StoreError> {
        maintenance::backup(&self.inner.data_dir, dest).await
    }

    /// [`Store::collections`] of these collections only: the work is their
    /// part of each shard's collection index, not every document's entry.
    pub async fn collections_of(&self, only: &[CollectionName]) -> Result<Vec<CollectionInfo>, StoreError> {
        let now = crate::clock::now_millis();
        let mut totals = std::collections::BTreeMap::new();
        for shard in self.shards() {
            shard.reads().add_counts_of(now, only, &mut totals).await?;
        }
        Ok(totals
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .filter_map(|(name, n)| {
                Some(CollectionInfo {
                    name: CollectionName::parse(&name).ok()?,
                    documents: u64::try_from(n).ok()?,
                })
            })
            .collect())
    }

    /// What a backup into `dir` would meet (see [`maintenance::backup_room`]).
    pub async fn backup_room(&self, dir: &std::path::Path) -> Result<maintenance::BackupRoom, StoreError> {
        maintenance::backup_room(&self.inner.data_dir, dir).await
    }

    /// The documents are in the data folder's files (not a database): what
    /// backups of files need.
    pub fn has_data_folder(&self) -> bool {
        !self.inner.shards.iter().any(|shard| shard.shared)
    }

    /// The shard that holds `key`.
    pub fn shard_of(&self, key: &DocKey) -> usize {
        self.inner.placement.shard_of(key)
    }

    /// Cached documents and their weighted bytes.
    pub async fn cache_usage(&self) -> (u64, u64) {
        self.inner.cache.usage().await
    }

    pub fn shard_count(&self) -> usize {
        self.inner.shards.len()
    }

    /// Stops taking writes, lets every writer drain its queue and checkpoint
    /// its WAL, and closes the files. Reads after this fail.
    pub async fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
        for shard in &self.inner.shards {
            shard.close().await;
        }
        if let Some(blocks) = &self.inner.id_blocks {
            blocks.database().close().await;
        }
        self.inner.lock.lock().take();
    }

    /// Loads the most recently changed documents of each shard into the
    /// cache, up to its capacity, so a restart does not start cold.
    async fn warm_cache(&self) -> Result<(), StoreError> {
        let cache = &self.inner.cache;
        if cache.capacity_bytes() == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let budget = engine::WarmBudget {
            bytes: cache.capacity_bytes() / self.inner.shards.len() as u64,
            per_entry: cache::ENTRY_OVERHEAD as u64,
            largest: cache::WARM_DOC_BYTES,
        };
        // Every shard at once, each in a task of its own: each read waits on
        // its own connection's thread, and the runtime's workers share the
        // parsing and the inserts (in one task, one thread did them all and
        // was the warm-up's bottleneck).
        let warmed = (0..self.inner.shards.len()).map(|index| {
            let store = self.clone();
            tokio::spawn(async move {
                let (shard, cache) = (&store.inner.shards[index], &store.inner.cache);
                let mut rows = shard.reads().recent(crate::clock::now_millis(), budget);
                let mut loaded = 0u64;
                while let Some((key, doc)) = rows.try_next().await? {
                    cache.warm(key, doc).await;
                    loaded += 1;
                }
                Ok::<u64, StoreError>(loaded)
            })
        });
        let mut loaded = 0u64;
        for shard in futures_util::future::join_all(warmed).await {
            loaded += shard.map_err(|_| StoreError::Internal("a shard's cache warm-up task failed"))??;
        }
        let (_, bytes) = cache.usage().await;
        tracing::info!(
            documents = loaded,
            bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "cache warmed from disk"
        );
        Ok(())
    }
}

fn into_stored(outcome: WriteOutcome) -> Result<Stored, StoreError> {
    match outcome {
        WriteOutcome::Written { doc, created } => Ok(Stored {
            doc,
            created,
            changed: true,
        }),
        WriteOutcome::Unchanged(doc) => Ok(Stored {
            doc,
            created: false,
            changed: false,
        }),
        WriteOutcome::Deleted(_) | WriteOutcome::NotFound | WriteOutcome::Read(_) => {
            Err(StoreError::Internal("a put was answered as another operation"))
        }
    }
}
