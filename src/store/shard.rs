//! A shard: one SQLite file in WAL mode, its writer task and its read pool.

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Row};
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tokio::task::JoinHandle;

use super::cache::DocCache;
use super::ops::{WriteOp, WriteResult};
use super::writer::{self, Job, Writer};
use super::{Document, StoreError, StoreOptions};
use crate::config::SyncMode;
use crate::domain::{CollectionName, DocKey};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

pub struct Shard {
    pub index: usize,
    jobs: mpsc::Sender<Job>,
    reads: SqlitePool,
    writer_running: Arc<AtomicBool>,
    writer_task: Mutex<Option<JoinHandle<()>>>,
    /// Highest counter-shaped id stored here when the shard was opened.
    pub max_counter_id: u64,
}

impl Shard {
    /// Opens (creating if needed) the shard file, applies migrations, and
    /// starts the writer.
    pub async fn open(
        index: usize,
        path: &Path,
        options: &StoreOptions,
        cache: DocCache,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, StoreError> {
        let db_error = |source| StoreError::Database {
            shard: index,
            source: Arc::new(source),
        };
        let base = SqliteConnectOptions::from_str("sqlite://")
            .map_err(db_error)?
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10))
            .log_statements(tracing::log::LevelFilter::Trace);
        let mut conn = base
            .clone()
            .create_if_missing(true)
            .pragma("cache_size", "-65536")
            .pragma("temp_store", "memory")
            .synchronous(match options.sync {
                SyncMode::Normal => SqliteSynchronous::Normal,
                SyncMode::Full => SqliteSynchronous::Full,
            })
            .connect()
            .await
            .map_err(|e| StoreError::CorruptFile {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        MIGRATOR.run(&mut conn).await.map_err(|e| StoreError::CorruptFile {
            path: path.to_path_buf(),
            reason: format!("cannot apply schema: {e}"),
        })?;
        let max_counter_id = sqlx::query("SELECT value FROM shard_meta WHERE key = 'max_counter_id'")
            .fetch_one(&mut conn)
            .await
            .and_then(|row| row.try_get::<i64, _>(0))
            .map_err(db_error)? as u64;
        let may_expire = sqlx::query("SELECT 1 FROM documents WHERE expires_at IS NOT NULL LIMIT 1")
            .fetch_optional(&mut conn)
            .await
            .map_err(db_error)?
            .is_some();

        let reads = SqlitePoolOptions::new()
            .max_connections(options.read_connections)
            .min_connections(0)
            .connect_with(base.read_only(true))
            .await
            .map_err(db_error)?;

        let (jobs_tx, jobs) = mpsc::channel(options.writer_queue);
        let writer_running = Arc::new(AtomicBool::new(true));
        let writer = Writer {
            shard: index,
            conn,
            jobs,
            cache,
            batch_limit: options.writer_batch,
            max_counter_id,
            id_ceiling: max_counter_id,
            may_expire,
            shutdown,
            running: writer_running.clone(),
            commits: 0,
            writes: 0,
        };
        let writer_task = tokio::spawn(writer.run());
        Ok(Self {
            index,
            jobs: jobs_tx,
            reads,
            writer_running,
            writer_task: Mutex::new(Some(writer_task)),
            max_counter_id,
        })
    }

    /// Hands `ops` to the writer and waits for their answers, which come
    /// only after the changes are committed.
    pub async fn submit(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteResult>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Ops { ops, reply }).await?;
        answer.await.map_err(|_| self.stopped())
    }

    /// Deletes up to `limit` documents of `collection`; answers how many.
    pub async fn purge(&self, collection: &CollectionName, limit: u32) -> Result<u64, StoreError> {
        let (reply, answer) = oneshot::channel();
        let collection = collection.clone();
        self.send(Job::Purge {
            collection,
            limit,
            reply,
        })
        .await?;
        answer.await.map_err(|_| self.stopped())?
    }

    async fn send(&self, job: Job) -> Result<(), StoreError> {
        self.jobs.send(job).await.map_err(|_| StoreError::Unavailable {
            shard: self.index,
            reason: "its writer has stopped",
        })
    }

    fn stopped(&self) -> StoreError {
        StoreError::Unavailable {
            shard: self.index,
            reason: "its writer stopped before answering",
        }
    }

    /// Reads the committed document at `key` from disk.
    pub async fn read(&self, key: &DocKey) -> Result<Option<Document>, StoreError> {
        let mut conn = self.reads.acquire().await.map_err(|e| self.db_error(e))?;
        writer::select(&mut conn, key).await.map_err(|e| self.db_error(e))
    }

    /// The read pool, for scans (listings, exports, cache warming).
    pub fn reads(&self) -> &SqlitePool {
        &self.reads
    }

    pub fn db_error(&self, source: sqlx::Error) -> StoreError {
        StoreError::Database {
            shard: self.index,
            source: Arc::new(source),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.writer_running.load(Ordering::SeqCst) && !self.reads.is_closed()
    }

    /// Closes the read pool, then waits for the writer to drain its queue,
    /// checkpoint and close: as the last connection, it removes the WAL.
    pub async fn close(&self) {
        self.reads.close().await;
        if let Some(task) = self.writer_task.lock().await.take() {
            if let Err(e) = task.await {
                tracing::error!(shard = self.index, error = %e, "writer task failed");
            }
        }
    }
}
