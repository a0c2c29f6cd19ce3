//! A shard's writer: the one task that owns the shard's only write connection.
//!
//! Requests arrive on a bounded channel. The writer takes what is queued (up
//! to the batch bound), applies it in one transaction, commits, updates the
//! cache, and only then acknowledges each request: group commit, so one fsync
//! serves a whole batch. If the batch's transaction fails, each request is
//! retried in a transaction of its own, so a bad request fails alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sqlx::{Connection, Row, SqliteConnection};
use tokio::sync::{mpsc, oneshot, watch};

use super::cache::DocCache;
use super::{Document, StoreError};
use crate::domain::DocKey;

/// One change to one document.
#[derive(Debug)]
pub enum WriteOp {
    /// Store `data` (canonical JSON text). `create_only` fails if it exists.
    Put {
        key: DocKey,
        bucket: u32,
        data: Arc<str>,
        create_only: bool,
    },
    Delete {
        key: DocKey,
    },
}

impl WriteOp {
    fn key(&self) -> &DocKey {
        match self {
            WriteOp::Put { key, .. } | WriteOp::Delete { key } => key,
        }
    }
}

/// What a write did.
#[derive(Debug, Clone)]
pub enum WriteOutcome {
    /// Stored a new version; `created` when the document did not exist.
    Written {
        doc: Document,
        created: bool,
    },
    /// The data equalled the stored document: nothing was written.
    Unchanged(Document),
    Deleted,
    /// Delete of a document that does not exist.
    NotFound,
}

pub type WriteResult = Result<WriteOutcome, StoreError>;

pub struct WriteRequest {
    pub op: WriteOp,
    pub reply: oneshot::Sender<WriteResult>,
}

/// Effects of a committed batch: what to put in the cache, what to answer.
struct Applied {
    answers: Vec<WriteResult>,
    changes: HashMap<DocKey, Option<Document>>,
    max_counter_id: u64,
}

pub struct Writer {
    pub shard: usize,
    pub conn: SqliteConnection,
    pub requests: mpsc::Receiver<WriteRequest>,
    pub cache: DocCache,
    pub batch_limit: usize,
    /// Highest counter-shaped id stored in this shard (persisted in shard_meta).
    pub max_counter_id: u64,
    pub shutdown: watch::Receiver<bool>,
    pub running: Arc<AtomicBool>,
    /// Commits and writes since start: their ratio is the mean group size.
    pub commits: u64,
    pub writes: u64,
}

impl Writer {
    /// Runs until shutdown is signalled and every queued request is answered,
    /// then checkpoints the WAL and closes the connection.
    pub async fn run(mut self) {
        self.running.store(true, Ordering::SeqCst);
        let mut closing = false;
        loop {
            let first = tokio::select! {
                biased;
                changed = self.shutdown.changed(), if !closing => {
                    if changed.is_err() || *self.shutdown.borrow() {
                        // Refuse new requests; keep draining what is queued.
                        self.requests.close();
                        closing = true;
                    }
                    continue;
                }
                request = self.requests.recv() => match request {
                    Some(request) => request,
                    None => break,
                },
            };
            let mut batch = Vec::with_capacity(self.batch_limit.min(256));
            batch.push(first);
            while batch.len() < self.batch_limit {
                match self.requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch).await;
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

    async fn commit_batch(&mut self, batch: Vec<WriteRequest>) {
        let (ops, replies): (Vec<WriteOp>, Vec<_>) = batch.into_iter().map(|r| (r.op, r.reply)).unzip();
        match self.apply(&ops).await {
            Ok(applied) => self.finish(applied, replies).await,
            Err(err) if ops.len() == 1 => {
                let _ = replies
                    .into_iter()
                    .next()
                    .map(|reply| reply.send(Err(self.db_error(err))));
            }
            Err(err) => {
                tracing::warn!(shard = self.shard, error = %err, size = ops.len(), "batch failed; retrying its writes one by one");
                for (op, reply) in ops.into_iter().zip(replies) {
                    let single = [op];
                    match self.apply(&single).await {
                        Ok(applied) => self.finish(applied, vec![reply]).await,
                        Err(err) => {
                            let _ = reply.send(Err(self.db_error(err)));
                        }
                    }
                }
            }
        }
    }

    /// After COMMIT: publish to the cache, then acknowledge.
    async fn finish(&mut self, applied: Applied, replies: Vec<oneshot::Sender<WriteResult>>) {
        self.max_counter_id = self.max_counter_id.max(applied.max_counter_id);
        for (key, doc) in applied.changes {
            self.cache.committed(&key, doc).await;
        }
        for (reply, answer) in replies.into_iter().zip(applied.answers) {
            // The client may have gone; its write is committed all the same.
            let _ = reply.send(answer);
        }
    }

    fn db_error(&self, err: sqlx::Error) -> StoreError {
        StoreError::Database {
            shard: self.shard,
            source: err,
        }
    }

    /// Applies `ops` in one transaction. Per-request refusals (a create of an
    /// existing id) are answers; only database failures abort the whole.
    ///
    /// Whatever the batch size, this costs a fixed number of statements: one
    /// SELECT for every key the cache does not know, one INSERT for every
    /// document written, one DELETE, each passing its rows as one JSON array
    /// read with `json_each`. Decisions in between are plain Rust.
    async fn apply(&mut self, ops: &[WriteOp]) -> Result<Applied, sqlx::Error> {
        let now = now_millis();
        let mut tx = self.conn.begin().await?;

        // The committed state of every key: from the cache, else from disk.
        let mut state: HashMap<DocKey, Option<Document>> = HashMap::with_capacity(ops.len());
        let mut unknown: Vec<DocKey> = Vec::new();
        for op in ops {
            let key = op.key();
            if state.contains_key(key) {
                continue;
            }
            let cached = self.cache.get(key).await;
            if cached.is_none() {
                unknown.push(key.clone());
            }
            state.insert(key.clone(), cached);
        }
        if !unknown.is_empty() {
            for (index, doc) in select_many(&mut tx, &unknown).await? {
                if let Some(key) = unknown.get(index) {
                    state.insert(key.clone(), Some(doc));
                }
            }
        }

        // Decide each request in order, each seeing the ones before it.
        let mut answers = Vec::with_capacity(ops.len());
        let mut changes: HashMap<DocKey, (u32, Option<Document>)> = HashMap::new();
        let mut max_counter_id = self.max_counter_id;
        for op in ops {
            let key = op.key();
            let current = state.get(key).cloned().flatten();
            let answer = match (op, current) {
                (WriteOp::Put { create_only: true, .. }, Some(_)) => {
                    Err(StoreError::AlreadyExists { key: key.clone() })
                }
                (WriteOp::Put { data, .. }, Some(doc)) if doc.data == *data => Ok(WriteOutcome::Unchanged(doc)),
                (WriteOp::Put { bucket, data, .. }, current) => {
                    let doc = Document {
                        version: current.as_ref().map_or(1, |c| c.version + 1),
                        // Never let a clock step back make a change look older.
                        updated_at_ms: current.as_ref().map_or(now, |c| now.max(c.updated_at_ms)),
                        data: data.clone(),
                    };
                    if let Some(n) = key.id.as_counter_value() {
                        max_counter_id = max_counter_id.max(n);
                    }
                    state.insert(key.clone(), Some(doc.clone()));
                    changes.insert(key.clone(), (*bucket, Some(doc.clone())));
                    Ok(WriteOutcome::Written {
                        doc,
                        created: current.is_none(),
                    })
                }
                (WriteOp::Delete { .. }, None) => Ok(WriteOutcome::NotFound),
                (WriteOp::Delete { .. }, Some(_)) => {
                    state.insert(key.clone(), None);
                    changes.insert(key.clone(), (0, None));
                    Ok(WriteOutcome::Deleted)
                }
            };
            answers.push(answer);
        }

        // Write each changed key's final state.
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        for (key, (bucket, doc)) in &changes {
            match doc {
                Some(doc) => upserts.push(json!([
                    key.collection.as_str(),
                    key.id.as_str(),
                    bucket,
                    doc.version,
                    doc.updated_at_ms,
                    &*doc.data
                ])),
                None => deletes.push(json!([key.collection.as_str(), key.id.as_str()])),
            }
        }
        if !upserts.is_empty() {
            sqlx::query(
                "INSERT INTO documents (collection, id, bucket, version, updated_at, data) \
                 SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5 FROM json_each(?1) WHERE true \
                 ON CONFLICT (collection, id) DO UPDATE SET \
                 version = excluded.version, updated_at = excluded.updated_at, data = excluded.data",
            )
            .bind(Value::Array(upserts).to_string())
            .execute(&mut *tx)
            .await?;
        }
        if !deletes.is_empty() {
            sqlx::query(
                "DELETE FROM documents WHERE (collection, id) IN \
                 (SELECT value->>0, value->>1 FROM json_each(?1))",
            )
            .bind(Value::Array(deletes).to_string())
            .execute(&mut *tx)
            .await?;
        }
        if max_counter_id > self.max_counter_id {
            sqlx::query("UPDATE shard_meta SET value = ?1 WHERE key = 'max_counter_id'")
                .bind(max_counter_id as i64)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.commits += 1;
        self.writes += ops.len() as u64;
        let changes = changes.into_iter().map(|(key, (_, doc))| (key, doc)).collect();
        Ok(Applied {
            answers,
            changes,
            max_counter_id,
        })
    }
}

/// The committed documents among `keys`, as (index in `keys`, document).
async fn select_many(conn: &mut SqliteConnection, keys: &[DocKey]) -> Result<Vec<(usize, Document)>, sqlx::Error> {
    let param = Value::Array(
        keys.iter()
            .map(|k| json!([k.collection.as_str(), k.id.as_str()]))
            .collect(),
    );
    let rows = sqlx::query(
        "SELECT k.key AS idx, d.version, d.updated_at, d.data FROM json_each(?1) AS k \
         JOIN documents AS d ON d.collection = k.value->>0 AND d.id = k.value->>1",
    )
    .bind(param.to_string())
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| Ok((row.try_get::<i64, _>("idx")? as usize, document_from_row(row)?)))
        .collect()
}

/// The committed document at `key`, read on the given connection.
pub async fn select(conn: &mut SqliteConnection, key: &DocKey) -> Result<Option<Document>, sqlx::Error> {
    let row = sqlx::query("SELECT version, updated_at, data FROM documents WHERE collection = ?1 AND id = ?2")
        .bind(key.collection.as_str())
        .bind(key.id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|row| document_from_row(&row)).transpose()
}

pub fn document_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Document, sqlx::Error> {
    Ok(Document {
        version: row.try_get::<i64, _>("version")? as u64,
        updated_at_ms: row.try_get("updated_at")?,
        data: Arc::from(row.try_get::<&str, _>("data")?),
    })
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
