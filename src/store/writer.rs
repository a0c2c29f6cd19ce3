//! A shard's writer: the one task that owns the shard's only write connection.
//!
//! Jobs arrive on a bounded channel. The writer takes what is queued (up to
//! the batch bound), applies it in one transaction, commits, updates the
//! cache, and only then acknowledges each request: group commit, so one fsync
//! serves a whole batch. A request's operations always commit together; if a
//! batch's transaction fails, each request is retried in a transaction of its
//! own, so a bad request fails alone. Between batches it removes expired
//! documents, a bounded number at a time, so expiry never stalls writes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::{Connection, Row, SqliteConnection};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::cache::DocCache;
use super::ops::{decide, Expect, WriteOp, WriteResult};
use super::{Document, StoreError};
use crate::domain::{CollectionName, DocId, DocKey};

/// Work for a writer.
pub enum Job {
    /// Operations applied in order and committed in one transaction; the
    /// answers come back in the same order.
    Ops {
        ops: Vec<WriteOp>,
        reply: oneshot::Sender<Vec<WriteResult>>,
    },
    /// Deletes up to `limit` documents of a collection; answers how many.
    Purge {
        collection: CollectionName,
        limit: u32,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
}

/// How often a writer looks for expired documents, and how many it removes
/// in one go before letting queued writes through.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
const SWEEP_LIMIT: u32 = 512;

/// Effects of a committed batch: what to put in the cache, what to answer.
struct Applied {
    answers: Vec<WriteResult>,
    changes: HashMap<DocKey, Change>,
    max_counter_id: u64,
    id_ceiling: u64,
}

/// A key's final state after a batch.
#[derive(Debug)]
struct Change {
    bucket: u32,
    /// `None`: deleted.
    doc: Option<Document>,
    /// The key had a row on disk before the batch (even an expired one).
    row_existed: bool,
}

pub struct Writer {
    pub shard: usize,
    pub conn: SqliteConnection,
    pub jobs: mpsc::Receiver<Job>,
    pub cache: DocCache,
    pub batch_limit: usize,
    /// Every counter-shaped id stored in this shard is at most this: the
    /// ceiling read at open, raised by every such id written since.
    pub max_counter_id: u64,
    /// The bound recorded in `shard_meta`, at least `max_counter_id`.
    pub id_ceiling: u64,
    /// Some document may carry an expiry: the sweeper has work to look for.
    pub may_expire: bool,
    pub shutdown: watch::Receiver<bool>,
    pub running: Arc<AtomicBool>,
    /// Commits and writes since start: their ratio is the mean group size.
    pub commits: u64,
    pub writes: u64,
}

impl Writer {
    /// Runs until shutdown is signalled and every queued job is answered,
    /// then records the exact id ceiling, checkpoints the WAL and closes.
    pub async fn run(mut self) {
        self.running.store(true, Ordering::SeqCst);
        let mut closing = false;
        let mut next_sweep = Instant::now();
        let mut held: Option<Job> = None;
        loop {
            let first = match held.take() {
                Some(job) => job,
                None => tokio::select! {
                    biased;
                    changed = self.shutdown.changed(), if !closing => {
                        if changed.is_err() || *self.shutdown.borrow() {
                            // Refuse new jobs; keep draining what is queued.
                            self.jobs.close();
                            closing = true;
                        }
                        continue;
                    }
                    job = self.jobs.recv() => match job {
                        Some(job) => job,
                        None => break,
                    },
                    () = tokio::time::sleep_until(next_sweep), if self.may_expire && !closing => {
                        let removed = self.sweep().await;
                        // A full sweep may have left more: come back as soon
                        // as the queue is served.
                        next_sweep = Instant::now() + if removed < SWEEP_LIMIT { SWEEP_INTERVAL } else { Duration::ZERO };
                        continue;
                    }
                },
            };
            match first {
                Job::Ops { ops, reply } => {
                    // Let the tasks that are about to send run first: under
                    // load this gathers more requests into the commit, at the
                    // cost of one pass of the scheduler when idle.
                    tokio::task::yield_now().await;
                    let mut size = ops.len();
                    let mut batch = vec![(ops, reply)];
                    while size < self.batch_limit {
                        match self.jobs.try_recv() {
                            Ok(Job::Ops { ops, reply }) => {
                                size += ops.len();
                                batch.push((ops, reply));
                            }
                            Ok(other) => {
                                held = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit_batch(batch).await;
                }
                Job::Purge {
                    collection,
                    limit,
                    reply,
                } => {
                    let purged = self.purge(&collection, limit).await;
                    let _ = reply.send(purged);
                }
            }
        }
        self.close().await;
    }

    async fn close(mut self) {
        // Every write is drained: the exact highest id replaces the reserve,
        // so a clean restart continues the sequence without a gap.
        if let Err(e) = sqlx::query("UPDATE shard_meta SET value = ?1 WHERE key = 'max_counter_id'")
            .bind(i64::try_from(self.max_counter_id).unwrap_or(i64::MAX))
            .execute(&mut self.conn)
            .await
        {
            tracing::warn!(shard = self.shard, error = %e, "recording the id ceiling failed");
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut self.conn)
            .await
        {
            tracing::warn!(shard = self.shard, error = %e, "final WAL checkpoint failed");
        }
        if let Err(e) = self.conn.close().await {
            tracing::warn!(shard = self.shard, error = %e, "closing the write connection failed");
        }
        self.running.store(false, Ordering::SeqCst);
        tracing::info!(
            shard = self.shard,
            commits = self.commits,
            writes = self.writes,
            "writer stopped"
        );
    }

    async fn commit_batch(&mut self, batch: Vec<(Vec<WriteOp>, oneshot::Sender<Vec<WriteResult>>)>) {
        let groups: Vec<&[WriteOp]> = batch.iter().map(|(ops, _)| ops.as_slice()).collect();
        match self.apply(&groups).await {
            Ok(applied) => {
                let replies = batch.into_iter().map(|(ops, reply)| (ops.len(), reply));
                self.finish(applied, replies).await;
            }
            Err(err) if batch.len() == 1 => {
                let err = self.db_error(err);
                for (ops, reply) in batch {
                    let _ = reply.send(ops.iter().map(|_| Err(err.clone())).collect());
                }
            }
            Err(err) => {
                tracing::warn!(shard = self.shard, error = %err, requests = batch.len(), "batch failed; retrying its requests one by one");
                for (ops, reply) in batch {
                    match self.apply(&[ops.as_slice()]).await {
                        Ok(applied) => self.finish(applied, [(ops.len(), reply)]).await,
                        Err(err) => {
                            let err = self.db_error(err);
                            let _ = reply.send(ops.iter().map(|_| Err(err.clone())).collect());
                        }
                    }
                }
            }
        }
    }

    /// After COMMIT: publish to the cache, then acknowledge each request
    /// with its share of the answers.
    async fn finish(
        &mut self,
        applied: Applied,
        replies: impl IntoIterator<Item = (usize, oneshot::Sender<Vec<WriteResult>>)>,
    ) {
        self.max_counter_id = self.max_counter_id.max(applied.max_counter_id);
        self.id_ceiling = applied.id_ceiling;
        for (key, change) in applied.changes {
            if change.doc.as_ref().is_some_and(|doc| doc.expires_at_ms.is_some()) {
                self.may_expire = true;
            }
            self.cache.committed(&key, change.doc, change.row_existed).await;
        }
        let mut answers = applied.answers.into_iter();
        for (count, reply) in replies {
            // The client may have gone; its write is committed all the same.
            let _ = reply.send(answers.by_ref().take(count).collect());
        }
    }

    fn db_error(&self, err: sqlx::Error) -> StoreError {
        StoreError::Database {
            shard: self.shard,
            source: Arc::new(err),
        }
    }

    /// Applies the groups' operations in order, in one transaction.
    /// Per-operation refusals (a failed precondition) are answers; only
    /// database failures abort the whole.
    ///
    /// Whatever the batch size, this costs at most two trips to SQLite: one
    /// SELECT for the keys whose committed state is not already known, and
    /// one script that writes every change and commits. Decisions in between
    /// are plain Rust.
    async fn apply(&mut self, groups: &[&[WriteOp]]) -> Result<Applied, sqlx::Error> {
        let now = now_millis();
        let ops = || groups.iter().flat_map(|group| group.iter());
        let mut state = self.committed_state(ops()).await?;

        let mut answers = Vec::with_capacity(groups.iter().map(|g| g.len()).sum());
        let mut changes: HashMap<DocKey, Change> = HashMap::new();
        let mut max_counter_id = self.max_counter_id;
        for op in ops() {
            let current = state.get(&op.key).and_then(Option::as_ref);
            let (answer, new_state) = decide(op, current, now);
            if let Some(new_state) = new_state {
                if new_state.is_some() {
                    if let Some(n) = op.key.id.as_counter_value() {
                        max_counter_id = max_counter_id.max(n);
                    }
                }
                let row_existed = changes
                    .get(&op.key)
                    .map_or(current.is_some(), |change| change.row_existed);
                changes.insert(
                    op.key.clone(),
                    Change {
                        bucket: op.bucket,
                        doc: new_state.clone(),
                        row_existed,
                    },
                );
                state.insert(op.key.clone(), new_state);
            }
            answers.push(answer);
        }

        let id_ceiling = if changes.is_empty() {
            self.id_ceiling
        } else {
            self.persist(&changes, max_counter_id).await?
        };
        self.writes += answers.len() as u64;
        Ok(Applied {
            answers,
            changes,
            max_counter_id,
            id_ceiling,
        })
    }

    /// The committed row of every key the operations touch: from the cache,
    /// from what the id counter guarantees, else from disk in one SELECT.
    /// Reading outside the transaction is safe: this writer is the shard's
    /// only one.
    async fn committed_state<'a>(
        &mut self,
        ops: impl Iterator<Item = &'a WriteOp>,
    ) -> Result<HashMap<DocKey, Option<Document>>, sqlx::Error> {
        let mut state: HashMap<DocKey, Option<Document>> = HashMap::new();
        let mut unknown: Vec<DocKey> = Vec::new();
        for op in ops {
            if state.contains_key(&op.key) {
                continue;
            }
            // Every counter-shaped id stored in this shard is at most
            // `max_counter_id`, so a fresh id from the counter needs no read.
            let surely_absent =
                op.expect == Expect::Absent && op.key.id.as_counter_value().is_some_and(|n| n > self.max_counter_id);
            let cached = if surely_absent {
                None
            } else {
                self.cache.get(&op.key).await
            };
            if cached.is_none() && !surely_absent {
                unknown.push(op.key.clone());
            }
            state.insert(op.key.clone(), cached);
        }
        if !unknown.is_empty() {
            for (index, doc) in select_many(&mut self.conn, &unknown).await? {
                if let Some(key) = unknown.get(index) {
                    state.insert(key.clone(), Some(doc));
                }
            }
        }
        Ok(state)
    }

    /// Writes every changed key's final state (and, when an id passed it,
    /// a raised id ceiling) in one transaction, sent to SQLite as one script.
    /// If any part fails, the transaction is rolled back and nothing of it is
    /// visible. Returns the id ceiling now on disk.
    async fn persist(&mut self, changes: &HashMap<DocKey, Change>, max_counter_id: u64) -> Result<u64, sqlx::Error> {
        // Row fields go as one JSON array; the documents' text goes as one
        // blob that the rows slice by byte offset, so it is neither escaped
        // here nor parsed by SQLite. Collection names and ids are plain ASCII
        // without quotes or backslashes (see `domain`): no escaping either.
        let mut upserts = String::from("[");
        let mut texts: Vec<u8> = Vec::new();
        let mut deletes = String::from("[");
        for (key, change) in changes {
            let list = if change.doc.is_some() {
                &mut upserts
            } else {
                &mut deletes
            };
            if list.len() > 1 {
                list.push(',');
            }
            let _ = write!(list, "[\"{}\",\"{}\"", key.collection, key.id);
            if let Some(doc) = &change.doc {
                let _ = write!(
                    list,
                    ",{},{},{},{},{},",
                    change.bucket,
                    doc.version,
                    doc.updated_at_ms,
                    texts.len() + 1,
                    doc.data.len()
                );
                match doc.expires_at_ms {
                    Some(at) => {
                        let _ = write!(list, "{at}");
                    }
                    None => list.push_str("null"),
                }
                texts.extend_from_slice(doc.data.as_bytes());
            }
            list.push(']');
        }
        upserts.push(']');
        deletes.push(']');
        let ceiling = (max_counter_id > self.id_ceiling).then(|| max_counter_id.saturating_add(ID_RESERVE));
        let script = write_script(upserts.len() > 2, deletes.len() > 2, ceiling.is_some());
        let written = sqlx::query(script)
            .bind(upserts)
            .bind(texts)
            .bind(deletes)
            // Ceilings stay below 2^53 + the reserve (see `MAX_COUNTER_ID`).
            .bind(i64::try_from(ceiling.unwrap_or(0)).unwrap_or(i64::MAX))
            .execute(&mut self.conn)
            .await;
        if let Err(err) = written {
            self.rollback().await;
            return Err(err);
        }
        self.commits += 1;
        Ok(ceiling.unwrap_or(self.id_ceiling))
    }

    /// Ends the transaction a failed script left open, so the connection is
    /// clean for the next.
    async fn rollback(&mut self) {
        if let Err(e) = sqlx::query("ROLLBACK").execute(&mut self.conn).await {
            tracing::debug!(shard = self.shard, error = %e, "rollback after a failed commit");
        }
    }

    /// Removes up to `SWEEP_LIMIT` expired documents and drops them from the
    /// cache. Readers already treat them as gone; this reclaims the space.
    async fn sweep(&mut self) -> u32 {
        let deleted = sqlx::query(
            "DELETE FROM documents WHERE (collection, id) IN \
             (SELECT collection, id FROM documents WHERE expires_at <= ?1 LIMIT ?2) \
             RETURNING collection, id",
        )
        .bind(now_millis())
        .bind(SWEEP_LIMIT)
        .fetch_all(&mut self.conn)
        .await;
        match deleted {
            Ok(rows) => {
                let count = rows.len() as u32;
                self.forget(&rows, None).await;
                if count > 0 {
                    tracing::debug!(shard = self.shard, count, "removed expired documents");
                }
                count
            }
            Err(e) => {
                tracing::warn!(shard = self.shard, error = %e, "removing expired documents failed");
                0
            }
        }
    }

    /// Deletes up to `limit` documents of `collection` in one transaction.
    async fn purge(&mut self, collection: &CollectionName, limit: u32) -> Result<u64, StoreError> {
        let rows = sqlx::query(
            "DELETE FROM documents WHERE collection = ?1 AND id IN \
             (SELECT id FROM documents WHERE collection = ?1 LIMIT ?2) RETURNING id",
        )
        .bind(collection.as_str())
        .bind(limit)
        .fetch_all(&mut self.conn)
        .await
        .map_err(|e| self.db_error(e))?;
        self.forget(&rows, Some(collection)).await;
        Ok(rows.len() as u64)
    }

    /// Drops deleted rows' keys from the cache. Rows carry `id`, and
    /// `collection` unless it is given.
    async fn forget(&mut self, rows: &[sqlx::sqlite::SqliteRow], collection: Option<&CollectionName>) {
        for row in rows {
            let collection = match collection {
                Some(c) => Ok(c.clone()),
                None => row
                    .try_get::<&str, _>("collection")
                    .ok()
                    .and_then(|c| CollectionName::parse(c).ok())
                    .ok_or(()),
            };
            let id = row.try_get::<&str, _>("id").ok().and_then(|id| DocId::parse(id).ok());
            if let (Ok(collection), Some(id)) = (collection, id) {
                self.cache.committed(&DocKey::new(collection, id), None, true).await;
            }
        }
    }
}

/// Ids the ceiling is raised past the highest one written, so that a run
/// of anonymous writes updates `shard_meta` once per this many ids instead
/// of in every commit. A crash can skip up to this many ids; a clean stop
/// records the exact highest one.
const ID_RESERVE: u64 = 1024;

/// The commit script for the parts a batch needs. Parameters: ?1 the rows
/// to upsert as JSON `[collection, id, bucket, version, updated_at, offset,
/// length, expires_at]`, ?2 the documents' text they slice, ?3 the keys to
/// delete as JSON `[collection, id]`, ?4 the new id ceiling.
fn write_script(upsert: bool, delete: bool, raise_ceiling: bool) -> &'static str {
    macro_rules! upsert {
        () => {
            "INSERT INTO documents (collection, id, bucket, version, updated_at, data, expires_at) \
             SELECT value->>0, value->>1, value->>2, value->>3, value->>4, \
             CAST(substr(?2, value->>5, value->>6) AS TEXT), value->>7 FROM json_each(?1) WHERE true \
             ON CONFLICT (collection, id) DO UPDATE SET version = excluded.version, \
             updated_at = excluded.updated_at, data = excluded.data, expires_at = excluded.expires_at;"
        };
    }
    macro_rules! delete {
        () => {
            "DELETE FROM documents WHERE (collection, id) IN (SELECT value->>0, value->>1 FROM json_each(?3));"
        };
    }
    macro_rules! ceiling {
        () => {
            "UPDATE shard_meta SET value = ?4 WHERE key = 'max_counter_id' AND value < ?4;"
        };
    }
    macro_rules! script {
        ($($part:expr),*) => { concat!("BEGIN IMMEDIATE;", $($part,)* "COMMIT;") };
    }
    match (upsert, delete, raise_ceiling) {
        (true, true, true) => script!(upsert!(), delete!(), ceiling!()),
        (true, true, false) => script!(upsert!(), delete!()),
        (true, false, true) => script!(upsert!(), ceiling!()),
        (true, false, false) => script!(upsert!()),
        (false, true, true) => script!(delete!(), ceiling!()),
        (false, true, false) => script!(delete!()),
        (false, false, true) => script!(ceiling!()),
        (false, false, false) => script!(),
    }
}

/// The committed rows among `keys`, as (index in `keys`, document).
async fn select_many(conn: &mut SqliteConnection, keys: &[DocKey]) -> Result<Vec<(usize, Document)>, sqlx::Error> {
    let mut param = String::from("[");
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            param.push(',');
        }
        let _ = write!(param, "[\"{}\",\"{}\"]", key.collection, key.id);
    }
    param.push(']');
    let rows = sqlx::query(
        "SELECT k.key AS idx, d.version, d.updated_at, d.expires_at, d.data FROM json_each(?1) AS k \
         JOIN documents AS d ON d.collection = k.value->>0 AND d.id = k.value->>1",
    )
    .bind(param)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| Ok((row.try_get::<i64, _>("idx")? as usize, document_from_row(row)?)))
        .collect()
}

/// The committed row at `key`, read on the given connection (expired or not).
pub async fn select(conn: &mut SqliteConnection, key: &DocKey) -> Result<Option<Document>, sqlx::Error> {
    let row =
        sqlx::query("SELECT version, updated_at, expires_at, data FROM documents WHERE collection = ?1 AND id = ?2")
            .bind(key.collection.as_str())
            .bind(key.id.as_str())
            .fetch_optional(&mut *conn)
            .await?;
    row.map(|row| document_from_row(&row)).transpose()
}

/// A document from a row with `version`, `updated_at`, `expires_at`, `data`.
pub fn document_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Document, sqlx::Error> {
    Ok(Document {
        version: row.try_get::<i64, _>("version")? as u64,
        updated_at_ms: row.try_get("updated_at")?,
        expires_at_ms: row.try_get("expires_at")?,
        data: Arc::from(row.try_get::<&str, _>("data")?),
    })
}

/// Wall-clock time in Unix milliseconds.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
