//! A batch, from the queue to the acknowledgement: decided against the
//! committed state, checked against schemas and indexes, committed in one
//! transaction (retried one request at a time if it fails), published to
//! the cache and the feed, then answered.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Applied, Batch, Change, Writer};
use crate::clock::now_millis;
use crate::domain::DocKey;
use crate::store::engine::IndexChanges;
use crate::store::engine::{ChangeKind, FeedEntry, IdBounds};
use crate::store::index::MAX_KEY_BYTES;
use crate::store::ops::{decide, Action, Expect, WriteOp, WriteResult};
use crate::store::schema::{Checked, INLINE_CHECKS};
use crate::store::{Document, Outage, StoreError};

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

impl Writer {
    /// Commits a batch and answers each request. An error only when the
    /// connection or file broke: the batch is answered with it, and the
    /// writer must end.
    pub(super) async fn commit_batch(&mut self, batch: Batch) -> Result<(), StoreError> {
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
    pub(super) fn refuse(&self, batch: Batch, err: &StoreError) {
        if matches!(err, StoreError::Engine { error, .. } if matches!(error.kind, crate::store::ErrorKind::Full | crate::store::ErrorKind::ReadOnly))
        {
            self.status.set_problem(err.outage(), err.to_string());
        }
        for (ops, reply) in batch {
            let _ = reply.send(ops.iter().map(|_| Err(err.clone())).collect());
        }
    }

    /// After COMMIT: publish to the cache, then acknowledge each request
    /// with its share of the answers.
    pub(super) async fn finish(
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

    /// Checks a document about to be stored against its collection's
    /// schema and indexes, and fills `entries` with its index keys: a
    /// refusal if it does not match the schema or a key is too large.
    pub(super) fn check_and_key(
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

    /// `apply`, run again whole (after a pause that grows) while the engine
    /// refuses it for a concurrent transaction: distributed engines ask
    /// their clients to retry so, and a client should never see it.
    pub(super) async fn apply_retrying(&mut self, groups: &[&[WriteOp]]) -> Result<Applied, StoreError> {
        let mut pause = Duration::from_millis(2);
        for _ in 0..CONFLICT_RETRIES {
            match self.apply(groups).await {
                Err(StoreError::Engine { error, .. }) if error.kind == crate::store::ErrorKind::Conflict => {
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
    pub(super) async fn apply(&mut self, groups: &[&[WriteOp]]) -> Result<Applied, StoreError> {
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
    pub(super) async fn committed_state(
        &mut self,
        groups: &[&[WriteOp]],
    ) -> Result<(HashMap<DocKey, Option<Document>>, HashSet<(usize, usize)>), crate::store::StorageError> {
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
    pub(super) async fn persist(
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
        // The file's check runs beside the commit, on a blocking thread.
        let file_check = self.writes.check_file();
        let written = self.writes.commit(rows, &feed, ceilings).await;
        self.events.commit(shard, started.elapsed().as_secs_f64());
        written.map_err(|e| self.engine_error(e))?;
        // Committed, but to the file this writer opened: if that was deleted
        // or replaced, the commit is lost at the next start, so it must not
        // be acknowledged.
        if !file_check.still_there().await {
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
}
