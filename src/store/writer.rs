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

use std::fmt::Write as _;

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
    changes: HashMap<DocKey, Change>,
    max_counter_id: u64,
    id_ceiling: u64,
}

pub struct Writer {
    pub shard: usize,
    pub conn: SqliteConnection,
    pub requests: mpsc::Receiver<WriteRequest>,
    pub cache: DocCache,
    pub batch_limit: usize,
    /// Every counter-shaped id stored in this shard is at most this: the
    /// ceiling read at open, raised by every such id written since.
    pub max_counter_id: u64,
    /// The bound recorded in `shard_meta`, at least `max_counter_id`.
    pub id_ceiling: u64,
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
            // Let the tasks that are about to send run first: under load this
            // gathers more requests into the commit, at the cost of one pass
            // of the scheduler when idle.
            tokio::task::yield_now().await;
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
        // Every write is drained: the exact highest id replaces the reserve,
        // so a clean restart continues the sequence without a gap.
        if let Err(e) = sqlx::query("UPDATE shard_meta SET value = ?1 WHERE key = 'max_counter_id'")
            .bind(self.max_counter_id as i64)
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
        self.id_ceiling = applied.id_ceiling;
        for (key, change) in applied.changes {
            self.cache.committed(&key, change.doc, change.existed).await;
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
    /// Whatever the batch size, this costs at most two trips to SQLite: one
    /// SELECT for the keys whose committed state is not already known, and
    /// one script that writes every change and commits. Decisions in between
    /// are plain Rust.
    async fn apply(&mut self, ops: &[WriteOp]) -> Result<Applied, sqlx::Error> {
        let now = now_millis();
        let mut state = self.committed_state(ops).await?;

        // Decide each request in order, each seeing the ones before it.
        let mut answers = Vec::with_capacity(ops.len());
        let mut changes: HashMap<DocKey, Change> = HashMap::new();
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
                    let existed = changes.get(key).map_or(current.is_some(), |c| c.existed);
                    changes.insert(
                        key.clone(),
                        Change {
                            bucket: *bucket,
                            doc: Some(doc.clone()),
                            existed,
                        },
                    );
                    Ok(WriteOutcome::Written {
                        doc,
                        created: current.is_none(),
                    })
                }
                (WriteOp::Delete { .. }, None) => Ok(WriteOutcome::NotFound),
                (WriteOp::Delete { .. }, Some(_)) => {
                    state.insert(key.clone(), None);
                    let existed = changes.get(key).map_or(true, |c| c.existed);
                    changes.insert(
                        key.clone(),
                        Change {
                            bucket: 0,
                            doc: None,
                            existed,
                        },
                    );
                    Ok(WriteOutcome::Deleted)
                }
            };
            answers.push(answer);
        }

        let id_ceiling = if changes.is_empty() {
            self.id_ceiling
        } else {
            self.persist(&changes, max_counter_id).await?
        };
        self.writes += ops.len() as u64;
        Ok(Applied {
            answers,
            changes,
            max_counter_id,
            id_ceiling,
        })
    }

    /// The committed state of every key `ops` touch: from the cache, from
    /// what the id counter guarantees, else from disk in one SELECT. Reading
    /// outside the transaction is safe: this writer is the shard's only one.
    async fn committed_state(&mut self, ops: &[WriteOp]) -> Result<HashMap<DocKey, Option<Document>>, sqlx::Error> {
        let mut state: HashMap<DocKey, Option<Document>> = HashMap::with_capacity(ops.len());
        let mut unknown: Vec<DocKey> = Vec::new();
        for op in ops {
            let key = op.key();
            if state.contains_key(key) {
                continue;
            }
            let cached = self.cache.get(key).await;
            // Every counter-shaped id stored in this shard is at most
            // `max_counter_id`, so a fresh id from the counter needs no read.
            let surely_absent = matches!(op, WriteOp::Put { create_only: true, .. })
                && key.id.as_counter_value().is_some_and(|n| n > self.max_counter_id);
            if cached.is_none() && !surely_absent {
                unknown.push(key.clone());
            }
            state.insert(key.clone(), cached);
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
                    ",{},{},{},{},{}",
                    change.bucket,
                    doc.version,
                    doc.updated_at_ms,
                    texts.len() + 1,
                    doc.data.len()
                );
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
            .bind(ceiling.unwrap_or(0) as i64)
            .execute(&mut self.conn)
            .await;
        if let Err(err) = written {
            // The script stopped at the failing statement, inside the
            // transaction: end it, so the connection is clean for the next.
            if let Err(e) = sqlx::query("ROLLBACK").execute(&mut self.conn).await {
                tracing::debug!(shard = self.shard, error = %e, "rollback after a failed commit");
            }
            return Err(err);
        }
        self.commits += 1;
        Ok(ceiling.unwrap_or(self.id_ceiling))
    }
}

/// Ids the ceiling is raised past the highest one written, so that a run
/// of anonymous writes updates `shard_meta` once per this many ids instead
/// of in every commit. A crash can skip up to this many ids; a clean stop
/// records the exact highest one.
const ID_RESERVE: u64 = 1024;

/// The commit script for the parts a batch needs. Parameters: ?1 the rows
/// to upsert as JSON `[collection, id, bucket, version, updated_at, offset,
/// length]`, ?2 the documents' text they slice, ?3 the keys to delete as JSON
/// `[collection, id]`, ?4 the new id ceiling.
fn write_script(upsert: bool, delete: bool, raise_ceiling: bool) -> &'static str {
    macro_rules! upsert {
        () => {
            "INSERT INTO documents (collection, id, bucket, version, updated_at, data) \
             SELECT value->>0, value->>1, value->>2, value->>3, value->>4, \
             CAST(substr(?2, value->>5, value->>6) AS TEXT) FROM json_each(?1) WHERE true \
             ON CONFLICT (collection, id) DO UPDATE SET \
             version = excluded.version, updated_at = excluded.updated_at, data = excluded.data;"
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

/// A key's final state after a batch, and whether it existed before it.
#[derive(Debug)]
struct Change {
    bucket: u32,
    /// `None`: deleted.
    doc: Option<Document>,
    existed: bool,
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
