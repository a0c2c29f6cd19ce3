//! A shard: one SQLite file in WAL mode, its supervised writer and its read
//! pool.
//!
//! Opening checks the file is an exdaas shard (not another program's
//! database, not damaged) before anything is written to it. The writer runs
//! under a supervisor, the original's one-for-one restart: if it panics or
//! its connection breaks, what is queued gets a clear 503, the shard reports
//! itself not ready, and a new writer is opened after a growing pause.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Sqlite, SqliteConnection};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::cache::DocCache;
use super::ops::{WriteOp, WriteResult};
use super::writer::{self, Exit, IdBounds, Job, Writer};
use super::{Document, Outage, StoreError, StoreOptions};
use crate::domain::SyncMode;
use crate::domain::{CollectionName, DocKey};

/// The shard schema, from `migrations/`, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// `PRAGMA application_id` of exdaas shard files ("exda"), so a foreign
/// SQLite database is never mistaken for a shard.
pub const APPLICATION_ID: i32 = 0x6578_6461;

/// The largest the WAL file is left at after a checkpoint.
const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// Pauses between attempts to reopen a failed writer: doubling from the
/// first to the last, so a broken disk does not become a busy loop.
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(100);
const LONGEST_RESTART_DELAY: Duration = Duration::from_secs(5);

/// Which file a path named when it was opened (device and inode), to notice
/// it being deleted or replaced under a running server.
#[derive(Debug, Clone)]
pub struct FileIdentity {
    pub path: PathBuf,
    #[cfg(unix)]
    id: Option<(u64, u64)>,
}

impl FileIdentity {
    fn of(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            #[cfg(unix)]
            id: Self::current(path),
        }
    }

    #[cfg(unix)]
    fn current(path: &Path) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }

    /// The path still names the file that was opened.
    pub fn still_there(&self) -> bool {
        #[cfg(unix)]
        {
            self.id.is_some() && Self::current(&self.path) == self.id
        }
        #[cfg(not(unix))]
        {
            self.path.exists()
        }
    }
}

/// Whether a shard can serve, for `/readyz`.
#[derive(Debug, Default)]
pub struct ShardStatus {
    writer_running: AtomicBool,
    /// What is wrong, while something is: what clients may read, and the
    /// whole story for the log.
    problem: Mutex<Option<(Outage, String)>>,
}

impl ShardStatus {
    pub fn writer_started(&self) {
        self.writer_running.store(true, Ordering::SeqCst);
        self.clear_problem();
    }

    pub fn writer_down(&self, outage: Outage, reason: String) {
        self.writer_running.store(false, Ordering::SeqCst);
        self.set_problem(outage, reason);
    }

    pub fn set_problem(&self, outage: Outage, reason: String) {
        if let Ok(mut current) = self.problem.lock() {
            *current = Some((outage, reason));
        }
    }

    pub fn clear_problem(&self) {
        if let Ok(mut current) = self.problem.lock() {
            *current = None;
        }
    }

    pub fn problem(&self) -> Option<(Outage, String)> {
        self.problem.lock().ok().and_then(|p| p.clone())
    }

    fn is_ready(&self) -> bool {
        self.writer_running.load(Ordering::SeqCst) && self.problem().is_none()
    }
}

/// What it takes to open (and reopen) a shard's writer.
#[derive(Clone)]
struct WriterSetup {
    index: usize,
    path: PathBuf,
    /// The data folder's identity, which the file must record (see
    /// `layout`).
    folder_id: u64,
    options: StoreOptions,
    cache: DocCache,
    shutdown: watch::Receiver<bool>,
    status: Arc<ShardStatus>,
}

pub struct Shard {
    pub index: usize,
    jobs: mpsc::Sender<Job>,
    /// Bytes of documents the writer's queue may hold: jobs are bounded by
    /// bytes as well as by count, so large documents cannot pile up.
    queue_bytes: Arc<tokio::sync::Semaphore>,
    reads: SqlitePool,
    status: Arc<ShardStatus>,
    supervisor: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    /// How long a write waits for room in a full queue before a 503.
    queue_wait: Duration,
    queue_capacity_bytes: usize,
    /// Every id the counter handed out or moved past that is stored here
    /// was at most this when the shard was opened: where the counter
    /// restarts.
    pub counter_high: u64,
}

impl Shard {
    /// Opens (creating if needed) the shard file, checks it is an intact
    /// exdaas shard, applies migrations, and starts the supervised writer.
    pub async fn open(
        index: usize,
        path: &Path,
        folder_id: u64,
        options: &StoreOptions,
        cache: DocCache,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, StoreError> {
        check_header(path)?;
        let setup = WriterSetup {
            index,
            path: path.to_path_buf(),
            folder_id,
            options: options.clone(),
            cache,
            shutdown,
            status: Arc::new(ShardStatus::default()),
        };
        let writer = setup.open_at_boot().await?;
        let counter_high = writer.ids.counter;
        let reads = SqlitePoolOptions::new()
            .max_connections(options.read_connections)
            .acquire_timeout(options.queue_wait)
            .min_connections(0)
            .connect_with(base_options(path).read_only(true))
            .await
            .map_err(|e| super::engine::sqlite::store_error(index, e))?;

        let (jobs_tx, jobs) = mpsc::channel(options.writer_queue);
        let status = setup.status.clone();
        let supervisor = tokio::spawn(supervise(setup, writer, jobs));
        Ok(Self {
            index,
            jobs: jobs_tx,
            queue_bytes: Arc::new(tokio::sync::Semaphore::new(options.writer_queue_bytes)),
            reads,
            status,
            supervisor: tokio::sync::Mutex::new(Some(supervisor)),
            queue_wait: options.queue_wait,
            queue_capacity_bytes: options.writer_queue_bytes,
            counter_high,
        })
    }

    /// Hands `ops` to the writer and waits for their answers, which come
    /// only after the changes are committed.
    pub async fn submit(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteResult>, StoreError> {
        let span = tracing::debug_span!(
            target: "exdaas::trace::store",
            "shard write",
            // Signed: OpenTelemetry has no unsigned integers.
            exdaas.shard = self.index as i64,
            exdaas.operations = ops.len() as i64,
            exdaas.batch.size = tracing::field::Empty,
            db.system.name = "sqlite",
        );
        async {
            let deadline = tokio::time::Instant::now() + self.queue_wait;
            let room = self.room_for(&ops, deadline).await?;
            let (reply, answer) = oneshot::channel();
            let job = Job::Ops {
                ops,
                reply,
                span: tracing::Span::current(),
                room,
            };
            self.send_by(job, deadline).await?;
            answer.await.map_err(|_| self.stopped())
        }
        .instrument(span)
        .await
    }

    /// Waits until `deadline` for the queue to have room for the bytes of
    /// `ops` (at most its whole capacity, so one huge write can still pass
    /// alone).
    async fn room_for(
        &self,
        ops: &[WriteOp],
        deadline: tokio::time::Instant,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, StoreError> {
        /// What an operation costs besides its document: key, bookkeeping.
        const OP_OVERHEAD: usize = 128;
        let bytes: usize = ops
            .iter()
            .map(|op| OP_OVERHEAD + op.key.id.as_str().len() + op.action.bytes())
            .sum();
        let capacity = self.queue_capacity_bytes;
        let permits = u32::try_from(bytes.min(capacity)).unwrap_or(u32::MAX);
        match tokio::time::timeout_at(deadline, self.queue_bytes.clone().acquire_many_owned(permits)).await {
            Ok(Ok(room)) => Ok(room),
            // The semaphore is never closed.
            Ok(Err(_)) => Err(StoreError::Internal("the write queue's byte count was closed")),
            Err(_) => Err(self.busy()),
        }
    }

    /// Requests waiting in the writer's queue.
    pub fn queued(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
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

    /// Queues a test's fault for the writer (or, holding the read
    /// connections, applies it here: it returns once they are all held).
    #[cfg(feature = "fault-injection")]
    pub async fn inject(&self, fault: super::faults::Fault) -> Result<(), StoreError> {
        let super::faults::Fault::HoldReads(duration) = fault else {
            return self.send(Job::Fault(fault)).await;
        };
        let mut held = Vec::new();
        for _ in 0..self.reads.options().get_max_connections() {
            held.push(self.read_connection().await?);
        }
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            drop(held);
        });
        Ok(())
    }

    /// Queues `job`, waiting at most `queue_wait` for room: back-pressure
    /// with a bound, so memory does not grow with a slow disk and clients
    /// hear "retry later" instead of hanging.
    async fn send(&self, job: Job) -> Result<(), StoreError> {
        self.send_by(job, tokio::time::Instant::now() + self.queue_wait).await
    }

    async fn send_by(&self, job: Job, deadline: tokio::time::Instant) -> Result<(), StoreError> {
        match tokio::time::timeout_at(deadline, self.jobs.send(job)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Unavailable {
                shard: self.index,
                outage: Outage::Stopped,
                reason: "its writer has stopped".into(),
            }),
            Err(_) => Err(self.busy()),
        }
    }

    fn busy(&self) -> StoreError {
        StoreError::Busy {
            shard: self.index,
            waited_ms: self.queue_wait.as_millis() as u64,
            reads: false,
        }
    }

    fn stopped(&self) -> StoreError {
        let (outage, reason) = self
            .status
            .problem()
            .unwrap_or((Outage::Stopped, "its writer stopped before answering".into()));
        StoreError::Unavailable {
            shard: self.index,
            outage,
            reason,
        }
    }

    /// A read connection, waiting at most `queue_wait` for one (then a 503).
    pub async fn read_connection(&self) -> Result<PoolConnection<Sqlite>, StoreError> {
        self.reads.acquire().await.map_err(|e| self.db_error(e))
    }

    /// Reads the committed document at `key` from disk, on `conn`.
    pub async fn read_on(
        &self,
        mut conn: PoolConnection<Sqlite>,
        key: &DocKey,
    ) -> Result<Option<Document>, StoreError> {
        writer::select(&mut conn, key).await.map_err(|e| self.db_error(e))
    }

    /// The counter-shaped ids of `collection` stored here from `first` to
    /// `last` (inclusive), two numbers with as many digits: ids of one
    /// length sort as their numbers do, so the primary key finds them in
    /// order.
    pub async fn counter_ids_between(
        &self,
        collection: &CollectionName,
        first: u64,
        last: u64,
    ) -> Result<Vec<u64>, StoreError> {
        let (first, last) = (first.to_string(), last.to_string());
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM documents WHERE collection = ?1 AND id >= ?2 AND id <= ?3 \
             AND length(id) = ?4 AND id NOT GLOB '*[^0-9]*'",
        )
        .bind(collection.as_str())
        .bind(&first)
        .bind(&last)
        .bind(first.len() as i64)
        .fetch_all(&self.reads)
        .await
        .map_err(|e| self.db_error(e))?;
        Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
    }

    /// The read pool, for scans (listings, exports, cache warming).
    pub fn reads(&self) -> &SqlitePool {
        &self.reads
    }

    pub fn db_error(&self, source: sqlx::Error) -> StoreError {
        match source {
            sqlx::Error::PoolTimedOut => StoreError::Busy {
                shard: self.index,
                waited_ms: self.queue_wait.as_millis() as u64,
                reads: true,
            },
            source => super::engine::sqlite::store_error(self.index, source),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.status.is_ready() && !self.reads.is_closed()
    }

    /// What is wrong with the shard, if anything, in words for clients.
    pub fn outage(&self) -> Option<Outage> {
        self.status.problem().map(|(outage, _)| outage)
    }

    /// Closes the read pool, then waits for the writer to drain its queue,
    /// checkpoint and close: as the last connection, it removes the WAL.
    pub async fn close(&self) {
        self.reads.close().await;
        if let Some(task) = self.supervisor.lock().await.take() {
            if let Err(e) = task.await {
                tracing::error!(shard = self.index, error = %e, "shard supervisor failed");
            }
        }
    }
}

/// Connection options shared by the writer and the readers.
fn base_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10))
        .log_statements(tracing::log::LevelFilter::Trace)
}

/// An existing, non-empty shard file must start as every SQLite database
/// does; anything else is not ours to open.
fn check_header(path: &Path) -> Result<(), StoreError> {
    use std::io::Read;
    let mut header = [0u8; 16];
    let read = match std::fs::File::open(path) {
        Ok(mut file) => file.read(&mut header),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
    };
    match read {
        Ok(0) => Ok(()),
        Ok(n) if n == header.len() && &header == b"SQLite format 3\0" => Ok(()),
        Ok(_) => Err(StoreError::CorruptFile {
            path: path.to_path_buf(),
            reason: "not an SQLite database (wrong header): not a shard exdaas wrote".into(),
        }),
        Err(e) => Err(StoreError::CorruptFile {
            path: path.to_path_buf(),
            reason: format!("cannot read it: {e}"),
        }),
    }
}

impl WriterSetup {
    fn corrupt(&self, reason: String) -> StoreError {
        StoreError::CorruptFile {
            path: self.path.clone(),
            reason,
        }
    }

    /// Opens the write connection, checks the file, migrates it and starts
    /// a writer on it: at boot, when the file may be created.
    async fn open_at_boot(&self) -> Result<Writer, StoreError> {
        let mut conn = self.connect(true).await?;
        let checked = match self.check_ours(&mut conn).await {
            Ok(()) => match self.check_integrity_and_migrate(&mut conn).await {
                Ok(()) => self.check_identity(&mut conn, true).await,
                Err(err) => Err(err),
            },
            Err(err) => Err(err),
        };
        if let Err(err) = checked {
            let _ = conn.close().await;
            return Err(err);
        }
        self.writer_on(conn).await
    }

    /// Opens a writer again after a failure. Never creates the file (an
    /// empty one would silently stand in for the lost data) and does not
    /// migrate (boot did).
    async fn reopen(&self) -> Result<Writer, StoreError> {
        let mut conn = self.connect(false).await?;
        let checked = match self.check_ours(&mut conn).await {
            Ok(()) => self.check_identity(&mut conn, false).await,
            Err(err) => Err(err),
        };
        if let Err(err) = checked {
            let _ = conn.close().await;
            return Err(err);
        }
        self.writer_on(conn).await
    }

    async fn connect(&self, create: bool) -> Result<SqliteConnection, StoreError> {
        base_options(&self.path)
            .create_if_missing(create)
            .pragma("cache_size", "-65536")
            .pragma("temp_store", "memory")
            .pragma("journal_size_limit", WAL_SIZE_LIMIT.to_string())
            .synchronous(match self.options.sync {
                SyncMode::Normal => SqliteSynchronous::Normal,
                SyncMode::Full => SqliteSynchronous::Full,
            })
            .connect()
            .await
            .map_err(|e| self.corrupt(e.to_string()))
    }

    async fn writer_on(&self, mut conn: SqliteConnection) -> Result<Writer, StoreError> {
        let file = FileIdentity::of(&self.path);
        let meta: Vec<(String, i64)> =
            sqlx::query_as("SELECT key, value FROM shard_meta WHERE key IN ('max_counter_id', 'counter_high')")
                .fetch_all(&mut conn)
                .await
                .map_err(|e| super::engine::sqlite::store_error(self.index, e))?;
        let bound = |name: &str| {
            let value = meta.iter().find(|(key, _)| key == name).map_or(0, |(_, value)| *value);
            u64::try_from(value).unwrap_or(0)
        };
        let ids = IdBounds {
            stored: bound("max_counter_id"),
            counter: bound("counter_high"),
        };
        let may_expire = sqlx::query("SELECT 1 FROM documents WHERE expires_at IS NOT NULL LIMIT 1")
            .fetch_optional(&mut conn)
            .await
            .map_err(|e| super::engine::sqlite::store_error(self.index, e))?
            .is_some();
        Ok(Writer {
            shard: self.index,
            conn: Some(conn),
            file,
            cache: self.cache.clone(),
            batch_limit: self.options.writer_batch,
            max_document_bytes: self.options.max_document_bytes,
            ids,
            ceilings: ids,
            may_expire,
            shutdown: self.shutdown.clone(),
            status: self.status.clone(),
            unpublished: Arc::new(Mutex::new(Vec::new())),
            commits: 0,
            writes: 0,
            #[cfg(feature = "fault-injection")]
            panic_after_commit: false,
            events: self.options.events.clone(),
        })
    }

    /// Refuses a foreign database: one with tables that is not marked as
    /// an exdaas shard (nor holds our schema from before the mark).
    async fn check_ours(&self, conn: &mut SqliteConnection) -> Result<(), StoreError> {
        let application_id: i32 = sqlx::query_scalar("PRAGMA application_id")
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| self.corrupt(format!("cannot read it: {e}")))?;
        let tables: Vec<String> = sqlx::query_scalar("SELECT name FROM sqlite_schema WHERE type = 'table'")
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.corrupt(format!("cannot read it: {e}")))?;
        let has = |name: &str| tables.iter().any(|t| t == name);
        let ours =
            application_id == APPLICATION_ID || (application_id == 0 && has("documents") && has("_sqlx_migrations"));
        if ours || tables.is_empty() {
            Ok(())
        } else {
            Err(self.corrupt(format!(
                "a foreign SQLite database (application_id {application_id:#x}, tables {}): not a shard exdaas wrote",
                tables.join(", ")
            )))
        }
    }

    /// Refuses a shard file of another data folder, or of another shard of
    /// this one: what it records must match the layout and its place. A
    /// file from before identities existed takes them, when `stamp`.
    async fn check_identity(&self, conn: &mut SqliteConnection, stamp: bool) -> Result<(), StoreError> {
        let recorded = read_identity(conn)
            .await
            .map_err(|e| self.corrupt(format!("cannot read it: {e}")))?;
        match recorded {
            Identity {
                folder_id: Some(folder),
                ..
            } if folder != self.folder_id => Err(self.corrupt(format!(
                "it belongs to another data folder (it records folder {folder:#x}, {} names {:#x}): \
                 put this folder's own shard file back, or restore the folder from a backup",
                super::layout::LAYOUT_FILE,
                self.folder_id
            ))),
            Identity { shard: Some(shard), .. } if shard != self.index as u64 => Err(self.corrupt(format!(
                "it is shard {shard}'s file, found in shard {}'s place: files were renamed or swapped",
                self.index
            ))),
            Identity {
                folder_id: Some(_),
                shard: Some(_),
            } => Ok(()),
            _ if stamp => stamp_identity(conn, self.folder_id, self.index)
                .await
                .map_err(|e| super::engine::sqlite::store_error(self.index, e)),
            _ => Err(self.corrupt("it records no data folder: it is not the file this server opened".into())),
        }
    }

    /// Checks the file's integrity (it reads the whole file, so only at
    /// boot, and only if `EXDAAS_BOOT_CHECK` says so), then brings the schema
    /// up to date and marks the file as an exdaas shard.
    async fn check_integrity_and_migrate(&self, conn: &mut SqliteConnection) -> Result<(), StoreError> {
        if self.options.boot_check {
            let started = std::time::Instant::now();
            let verdict: Vec<String> = sqlx::query_scalar("PRAGMA quick_check")
                .fetch_all(&mut *conn)
                .await
                .map_err(|e| self.corrupt(format!("damaged: {e}")))?;
            if verdict != ["ok"] {
                return Err(self.corrupt(format!("damaged: {}", verdict.join("; "))));
            }
            tracing::debug!(
                shard = self.index,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "integrity check passed"
            );
        }
        MIGRATOR
            .run(&mut *conn)
            .await
            .map_err(|e| self.corrupt(format!("cannot apply schema: {e}")))?;
        sqlx::query(&format!("PRAGMA application_id = {APPLICATION_ID}"))
            .execute(&mut *conn)
            .await
            .map_err(|e| super::engine::sqlite::store_error(self.index, e))?;
        Ok(())
    }
}

/// Which folder and shard a shard file says it belongs to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Identity {
    pub folder_id: Option<u64>,
    pub shard: Option<u64>,
}

/// The identity a shard file records in `shard_meta`.
pub async fn read_identity(conn: &mut SqliteConnection) -> Result<Identity, sqlx::Error> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT key, value FROM shard_meta WHERE key IN ('folder_id', 'shard_index')")
            .fetch_all(&mut *conn)
            .await?;
    let value = |name: &str| {
        rows.iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| u64::try_from(*value).ok())
    };
    Ok(Identity {
        folder_id: value("folder_id"),
        shard: value("shard_index"),
    })
}

/// Records in a shard file which folder and shard it belongs to.
pub async fn stamp_identity(conn: &mut SqliteConnection, folder_id: u64, shard: usize) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT OR REPLACE INTO shard_meta (key, value) VALUES ('folder_id', ?1), ('shard_index', ?2)")
        .bind(i64::try_from(folder_id).unwrap_or(i64::MAX))
        .bind(shard as i64)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Runs the shard's writer and, when it fails, restarts it: one-for-one,
/// as the original's supervisor did. While it is down, jobs are answered
/// with 503 naming the problem; a file deleted or replaced under the server
/// is not reopened (that would hide the loss) and stays down until restart.
async fn supervise(setup: WriterSetup, mut writer: Writer, mut jobs: mpsc::Receiver<Job>) {
    let index = setup.index;
    let mut delay = FIRST_RESTART_DELAY;
    loop {
        let unpublished = writer.unpublished.clone();
        // Boxed as `Send` here, where its lifetimes are concrete: proving it
        // through `tokio::spawn` trips the compiler's higher-ranked checks.
        let run: Pin<Box<dyn Future<Output = Exit> + Send + '_>> = Box::pin(writer.run(&mut jobs));
        let outcome = std::panic::AssertUnwindSafe(run).catch_unwind().await;
        drop(writer);
        let (outage, reason) = match outcome {
            Ok(Exit::Stopped) => return,
            Ok(Exit::Failed { outage, reason }) => (outage, reason),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                (Outage::WriterPanicked, format!("its writer panicked: {message}"))
            }
        };
        let permanent = outage == Outage::FileGone;
        setup.status.writer_down(outage, reason.clone());
        // Commits whose keys never reached the cache: evict them (under the
        // cache's per-key lock), so no reader is served their old versions.
        let keys = unpublished
            .lock()
            .map(|mut k| std::mem::take(&mut *k))
            .unwrap_or_default();
        for key in &keys {
            setup.cache.committed(key, None, true).await;
        }
        tracing::error!(shard = index, reason = %reason, evicted = keys.len(), "shard writer down");
        loop {
            if permanent {
                refuse_until(&mut jobs, &setup, outage, &reason, None).await;
                return;
            }
            if !refuse_until(&mut jobs, &setup, outage, &reason, Some(delay)).await {
                return;
            }
            match setup.reopen().await {
                Ok(reopened) => {
                    tracing::info!(shard = index, "shard writer restarted");
                    writer = reopened;
                    delay = FIRST_RESTART_DELAY;
                    break;
                }
                Err(e) => {
                    tracing::error!(shard = index, error = %e, retry_in_ms = delay.as_millis() as u64, "reopening the shard failed");
                    setup
                        .status
                        .writer_down(outage, format!("{reason}; reopening failed: {e}"));
                    delay = (delay * 2).min(LONGEST_RESTART_DELAY);
                }
            }
        }
    }
}

/// Answers jobs with 503 naming `reason` for `wait` (forever if `None`), or
/// until shutdown, after which it answers what is left and returns `false`.
async fn refuse_until(
    jobs: &mut mpsc::Receiver<Job>,
    setup: &WriterSetup,
    outage: Outage,
    reason: &str,
    wait: Option<Duration>,
) -> bool {
    let mut shutdown = setup.shutdown.clone();
    let deadline = wait.map(|w| tokio::time::Instant::now() + w);
    let refusal = StoreError::Unavailable {
        shard: setup.index,
        outage,
        reason: reason.to_owned(),
    };
    loop {
        if *shutdown.borrow() {
            jobs.close();
            while let Some(job) = jobs.recv().await {
                refuse(job, refusal.clone());
            }
            return false;
        }
        tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => refuse(job, refusal.clone()),
                None => return false,
            },
            changed = shutdown.changed() => {
                if changed.is_err() {
                    jobs.close();
                }
            }
            () = sleep_until(deadline) => return true,
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn refuse(job: Job, err: StoreError) {
    match job {
        Job::Ops { ops, reply, .. } => {
            let _ = reply.send(ops.iter().map(|_| Err(err.clone())).collect());
        }
        Job::Purge { reply, .. } => {
            let _ = reply.send(Err(err));
        }
        #[cfg(feature = "fault-injection")]
        Job::Fault(_) => {}
    }
}
