//! What a shard's writer publishes about itself: whether the shard can
//! serve (for `/readyz`), and how far its feed is published. Below both the
//! shard and its writer, which share it.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::sync::watch;

use super::error::Outage;

/// Whether a shard can serve, for `/readyz`.
#[derive(Debug, Default)]
pub struct ShardStatus {
    writer_running: AtomicBool,
    /// What is wrong, while something is: what clients may read, and the
    /// whole story for the log.
    problem: Mutex<Option<(Outage, String)>>,
    /// Found damaged (stored data that does not read back): stays until an
    /// operator restores the file and restarts, whatever commits since.
    damaged: Mutex<Option<String>>,
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
        *self.problem.lock() = Some((outage, reason));
    }

    pub fn clear_problem(&self) {
        *self.problem.lock() = None;
    }

    /// Marks the shard damaged for good (see `damaged`).
    pub fn mark_damaged(&self, reason: String) {
        self.damaged.lock().get_or_insert(reason);
    }

    pub fn problem(&self) -> Option<(Outage, String)> {
        if let Some(reason) = self.damaged.lock().clone() {
            return Some((Outage::Damaged, reason));
        }
        self.problem.lock().clone()
    }

    pub(super) fn is_ready(&self) -> bool {
        self.writer_running.load(Ordering::SeqCst) && self.problem().is_none()
    }
}

/// Moves `head` up to `seq`, never down: a writer and the follower of
/// other replicas both move it.
pub fn advance(head: &watch::Sender<u64>, seq: u64) {
    head.send_if_modified(|current| {
        let moved = seq > *current;
        if moved {
            *current = seq;
        }
        moved
    });
}
