//! A shard: its supervised writer, its write queue and its reads, over the
//! engine's file for it (`engine::sqlite`).
//!
//! The writer runs under a supervisor, the original's one-for-one restart:
//! if it panics or its connection breaks, what is queued gets a clear 503,
//! the shard reports itself not ready, and a new writer is opened after a
//! growing pause.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::cache::DocCache;
use super::engine::{Opened, ReadSlot, ShardFile, ShardReads, ShardWrites};
use super::feed::RecentFeed;
use super::ops::{WriteOp, WriteResult};
use super::schema::PublishedSchemas;
use super::status::{advance, ShardStatus};
use super::writer::{Exit, FeedWriter, Job, Writer};
use super::{Outage, StoreError, StoreOptions};
use crate::domain::CollectionName;

/// Pauses between attempts to reopen a failed writer: doubling from the
/// first to the last, so a broken disk does not become a busy loop, yet
/// short enough that writes flow within about a second of a database
/// coming back (a failover's new primary), and jittered, so the shards of
/// many replicas do not reconnect in step.
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(100);
const LONGEST_RESTART_DELAY: Duration = Duration::from_secs(1);

/// `delay`, give or take a quarter, at random.
fn jittered(delay: Duration) -> Duration {
    let mut byte = [0u8; 1];
    // Without randomness, the delay as it is: jitter is a nicety.
    let spread = getrandom::fill(&mut byte).map_or(0.5, |()| f64::from(byte[0]) / 255.0);
    delay.mul_f64(0.75 + spread / 2.0)
}

/// Feed entries kept in memory across all shards, for readers near the
/// head (about 100 bytes each besides the keys, which the cache shares).
const RECENT_FEED_ENTRIES: usize = 65_536;

/// What it takes to open (and reopen) a shard's writer.
#[derive(Clone)]
struct WriterSetup {
    index: usize,
    file: ShardFile,
    options: StoreOptions,
    cache: DocCache,
    shutdown: watch::Receiver<bool>,
    status: Arc<ShardStatus>,
    /// The feed's last committed entry, told by whichever writer runs.
    feed_head: Arc<watch::Sender<u64>>,
    /// Told whenever any shard publishes entries.
    feed_published: Arc<watch::Sender<u64>>,
    /// The last entries published, for readers near the head.
    recent_feed: Arc<RecentFeed>,
    /// The collection schemas whichever writer runs holds.
    schemas: PublishedSchemas,
}

pub struct Shard {
    pub index: usize,
    jobs: mpsc::Sender<Job>,
    /// Bytes of documents the writer's queue may hold: jobs are bounded by
    /// bytes as well as by count, so large documents cannot pile up.
    queue_bytes: Arc<tokio::sync::Semaphore>,
    reads: ShardReads,
    status: Arc<ShardStatus>,
    supervisor: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    /// How long a write waits for room in a full queue before a 503.
    queue_wait: Duration,
    queue_capacity_bytes: usize,
    /// The feed's last committed entry: followers wait on it.
    feed_head: watch::Receiver<u64>,
    /// Moves it when other processes' entries are found (see `replicas`).
    feed_head_tx: Arc<watch::Sender<u64>>,
    /// Other processes write this shard too (a shared database).
    pub shared: bool,
    /// The engine's name (`db.system.name` on traces).
    engine: &'static str,
    recent_feed: Arc<RecentFeed>,
    /// Every id the counter handed out or moved past that is stored here
    /// was at most this when the shard was opened: where the counter
    /// restarts.
    pub counter_high: u64,
    /// The collection schemas its writer holds: what a write is checked
    /// against before it is queued.
    schemas: PublishedSchemas,
}

impl Shard {
    /// Opens (creating if needed) the shard file, checks it is an intact
    /// exdaas shard, applies migrations, and starts the supervised writer.
    pub async fn open(
        file: ShardFile,
        options: &StoreOptions,
        cache: DocCache,
        shutdown: watch::Receiver<bool>,
        feed_published: Arc<watch::Sender<u64>>,
    ) -> Result<Self, StoreError> {
        let index = file.index();
        let engine = file.engine_name();
        let setup = WriterSetup {
            index,
            file,
            options: options.clone(),
            cache,
            shutdown,
            status: Arc::new(ShardStatus::default()),
            feed_head: Arc::new(watch::Sender::new(0)),
            feed_published,
            recent_feed: Arc::new(RecentFeed::new(
                (RECENT_FEED_ENTRIES / options.shards.get() as usize).max(1024),
            )),
            schemas: PublishedSchemas::default(),
        };
        let (writes, opened) = setup.file.open_at_boot(options.boot_check).await?;
        let mut writer = setup.writer_on(writes, opened);
        writer.load_catalog().await?;
        writer.compact_at_open().await?;
        let counter_high = writer.ids.counter;
        let feed_head = setup.feed_head.subscribe();
        let feed_head_tx = setup.feed_head.clone();
        let shared = writer.writes.shared();
        let recent_feed = setup.recent_feed.clone();
        let schemas = setup.schemas.clone();
        let reads = setup
            .file
            .open_reads(options.read_connections, options.queue_wait)
            .await?;

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
            feed_head,
            feed_head_tx,
            shared,
            engine,
            recent_feed,
            counter_high,
            schemas,
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
            db.system.name = self.engine,
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

    /// The collection schemas its writer holds now.
    pub fn published_schemas(&self) -> &PublishedSchemas {
        &self.schemas
    }

    /// Requests waiting in the writer's queue.
    pub fn queued(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    /// Sets or removes a collection's schema on this shard, after the
    /// writes queued before it; answers what the shard then holds.
    pub async fn change_schema(
        &self,
        change: super::writer::SchemaChange,
    ) -> Result<super::schema::SchemaState, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Schema { change, reply }).await?;
        answer.await.map_err(|_| self.stopped())?
    }

    /// Declares (`fields`) or drops (`None`) an index on this shard.
    pub async fn change_index(
        &self,
        collection: &CollectionName,
        name: &str,
        fields: Option<Vec<String>>,
        recorded: bool,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Index {
            collection: collection.clone(),
            name: name.to_owned(),
            fields,
            recorded,
            at_ms,
            reply,
        })
        .await?;
        answer.await.map_err(|_| self.stopped())?
    }

    /// Covers up to `limit` more documents of an index's build.
    pub async fn build_index(
        &self,
        collection: &CollectionName,
        name: &str,
        limit: u32,
    ) -> Result<(u64, bool), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::IndexBuild {
            collection: collection.clone(),
            name: name.to_owned(),
            limit,
            reply,
        })
        .await?;
        answer.await.map_err(|_| self.stopped())?
    }

    /// A collection's schema as this shard holds it, after the writes
    /// queued before the question.
    pub async fn schema_of(
        &self,
        collection: &CollectionName,
    ) -> Result<Option<super::schema::SchemaState>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let collection = collection.clone();
        self.send(Job::SchemaOf { collection, reply }).await?;
        answer.await.map_err(|_| self.stopped())?
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
        for _ in 0..self.reads.connections() {
            held.push(self.read_slot().await?);
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
    pub async fn read_slot(&self) -> Result<ReadSlot, StoreError> {
        Ok(self.reads.reserve().await?)
    }

    /// The last entries published, for readers near the head.
    pub fn recent_feed(&self) -> &RecentFeed {
        &self.recent_feed
    }

    /// The feed's last entry published (committed, and in the cache).
    pub fn published_seq(&self) -> u64 {
        *self.feed_head.borrow()
    }

    /// Entries up to `seq` are committed (found by following the feed).
    pub fn advance_head(&self, seq: u64) {
        advance(&self.feed_head_tx, seq);
    }

    /// The shard's reads: scans, counts, the cache's warm-up.
    pub fn reads(&self) -> &ShardReads {
        &self.reads
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

impl WriterSetup {
    /// A writer over a freshly opened write connection.
    fn writer_on(&self, writes: ShardWrites, opened: Opened) -> Writer {
        let in_memory = !writes.shared();
        self.feed_head.send_replace(opened.last_seq);
        Writer {
            shard: self.index,
            writes,
            cache: self.cache.clone(),
            batch_limit: self.options.writer_batch,
            max_document_bytes: self.options.max_document_bytes,
            ids: opened.ids,
            ceilings: opened.ids,
            may_expire: opened.may_expire,
            shutdown: self.shutdown.clone(),
            status: self.status.clone(),
            unpublished: Arc::new(Mutex::new(Vec::new())),
            commits: 0,
            writes_done: 0,
            #[cfg(feature = "fault-injection")]
            panic_after_commit: false,
            events: self.options.events.clone(),
            feed: FeedWriter {
                // Where other processes write the shard too, entries this
                // one publishes are not the whole run: none go in memory.
                in_memory,
                last_seq: opened.last_seq,
                head: self.feed_head.clone(),
                published: self.feed_published.clone(),
                recent: self.recent_feed.clone(),
                retention: self.options.feed_retention,
                keep: self.options.feed_max_entries,
            },
            schemas: std::collections::HashMap::new(),
            published: self.schemas.clone(),
            indexes: std::collections::HashMap::new(),
            schema_seq: opened.schema_seq,
        }
    }

    /// Opens the writer again after a failure (see `ShardFile::reopen`).
    async fn reopen(&self) -> Result<Writer, StoreError> {
        let (writes, opened) = self.file.reopen().await?;
        let mut writer = self.writer_on(writes, opened);
        writer.load_catalog().await?;
        Ok(writer)
    }
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
                    .or_else(|| panic.downcast_ref::<String>().cloned());
                #[cfg(feature = "fault-injection")]
                let message = message.or_else(|| {
                    let (hold, message) = super::faults::StayDown::of(&*panic)?;
                    delay = delay.max(hold);
                    Some(message)
                });
                let message = message.unwrap_or_else(|| "unknown panic".into());
                (Outage::WriterPanicked, format!("its writer panicked: {message}"))
            }
        };
        let permanent = outage == Outage::FileGone;
        setup.status.writer_down(outage, reason.clone());
        // Commits whose keys never reached the cache: evict them (under the
        // cache's per-key lock), so no reader is served their old versions.
        let keys = std::mem::take(&mut *unpublished.lock());
        for key in &keys {
            setup.cache.committed(key, None, true).await;
        }
        tracing::error!(shard = index, reason = %reason, evicted = keys.len(), "shard writer down");
        loop {
            if permanent {
                refuse_until(&mut jobs, &setup, outage, &reason, None).await;
                return;
            }
            if !refuse_until(&mut jobs, &setup, outage, &reason, Some(jittered(delay))).await {
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
        Job::Schema { reply, .. } => {
            let _ = reply.send(Err(err));
        }
        Job::SchemaOf { reply, .. } => {
            let _ = reply.send(Err(err));
        }
        Job::Index { reply, .. } => {
            let _ = reply.send(Err(err));
        }
        Job::IndexBuild { reply, .. } => {
            let _ = reply.send(Err(err));
        }
        #[cfg(feature = "fault-injection")]
        Job::Fault(_) => {}
    }
}
