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
        tracing::debug!(shard = self.shard, "writer stopped");
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
    async fn apply(&mut self, ops: &[WriteOp]) -> Result<Applied, sqlx::Error> {
        let now = now_millis();
        let mut tx = self.conn.begin().await?;
        let mut changes: HashMap<DocKey, Option<Document>> = HashMap::new();
        let mut answers = Vec::with_capacity(ops.len());
        let mut max_counter_id = self.max_counter_id;

        for op in ops {
            let key = op.key();
            let current = match changes.get(key) {
                Some(doc) => doc.clone(),
                None => match self.cache.get(key).await {
                    Some(doc) => Some(doc),
                    None => select(&mut tx, key).await?,
                },
            };
            if let (
                WriteOp::Put {
                    data,
                    create_only: false,
                    ..
                },
                Some(doc),
            ) = (op, &current)
            {
                if doc.data == *data {
                    answers.push(Ok(WriteOutcome::Unchanged(doc.clone())));
                    continue;
                }
            }
            let answer = match op {
                WriteOp::Put { create_only: true, .. } if current.is_some() => {
                    Err(StoreError::AlreadyExists { key: key.clone() })
                }
                WriteOp::Put { bucket, data, .. } => {
                    let doc = Document {
                        version: current.as_ref().map_or(1, |c| c.version + 1),
                        // Never let a clock step back make a change look older.
                        updated_at_ms: current.as_ref().map_or(now, |c| now.max(c.updated_at_ms)),
                        data: data.clone(),
                    };
                    sqlx::query(
                        "INSERT INTO documents (collection, id, bucket, version, updated_at, data) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                         ON CONFLICT (collection, id) DO UPDATE SET \
                         version = excluded.version, updated_at = excluded.updated_at, data = excluded.data",
                    )
                    .bind(key.collection.as_str())
                    .bind(key.id.as_str())
                    .bind(i64::from(*bucket))
                    .bind(doc.version as i64)
                    .bind(doc.updated_at_ms)
                    .bind(&*doc.data)
                    .execute(&mut *tx)
                    .await?;
                    if let Some(n) = key.id.as_counter_value() {
                        max_counter_id = max_counter_id.max(n);
                    }
                    changes.insert(key.clone(), Some(doc.clone()));
                    Ok(WriteOutcome::Written {
                        doc,
                        created: current.is_none(),
                    })
                }
                WriteOp::Delete { .. } if current.is_none() => Ok(WriteOutcome::NotFound),
                WriteOp::Delete { .. } => {
                    sqlx::query("DELETE FROM documents WHERE collection = ?1 AND id = ?2")
                        .bind(key.collection.as_str())
                        .bind(key.id.as_str())
                        .execute(&mut *tx)
                        .await?;
                    changes.insert(key.clone(), None);
                    Ok(WriteOutcome::Deleted)
                }
            };
            answers.push(answer);
        }
        if max_counter_id > self.max_counter_id {
            sqlx::query("UPDATE shard_meta SET value = ?1 WHERE key = 'max_counter_id'")
                .bind(max_counter_id as i64)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Applied {
            answers,
            changes,
            max_counter_id,
        })
    }
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
