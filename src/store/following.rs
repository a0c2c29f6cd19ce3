//! How current this replica's knowledge of the other replicas' writes is,
//! where several processes share a database: the state the read path
//! checks and the follower task (`replicas.rs`) keeps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How current this process's knowledge of the other replicas' writes is.
#[derive(Debug)]
pub struct Following {
    epoch: Instant,
    /// When (ms after `epoch`) the last round that read every shard's feed
    /// to its end began: every change committed before then is known.
    round_began_ms: AtomicU64,
    /// Past this since that round, the cache is not trusted.
    pub trust: Duration,
    /// Why the last round failed, while rounds fail.
    problem: parking_lot::Mutex<Option<String>>,
}

impl Following {
    /// Caught up now (the cache was just warmed from the database); trusted
    /// for ten intervals, and at least a second.
    pub fn new(interval: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            round_began_ms: AtomicU64::new(0),
            trust: (interval * 10).max(Duration::from_secs(1)),
            problem: parking_lot::Mutex::new(None),
        }
    }

    /// How long ago the last complete round began.
    pub fn behind(&self) -> Duration {
        self.epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(self.round_began_ms.load(Ordering::Relaxed)))
    }

    /// The cache may answer reads: some round began within [`Self::trust`].
    pub fn cache_trusted(&self) -> bool {
        self.behind() <= self.trust
    }

    /// Why following fails, while it does.
    pub fn problem(&self) -> Option<String> {
        self.problem.lock().clone()
    }

    pub(super) fn round_done(&self, began: Instant, problem: Option<String>) {
        if problem.is_none() {
            let ms = u64::try_from(began.duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX);
            self.round_began_ms.fetch_max(ms, Ordering::Relaxed);
        }
        *self.problem.lock() = problem;
    }
}
