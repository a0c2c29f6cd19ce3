//! The id counter for anonymous writes.
//!
//! It lives in memory and restarts past the highest id it ever handed out or
//! moved past: each shard keeps that bound in `shard_meta` (`counter_high`),
//! always raised with a reserve, so a run of writes raises it once per
//! thousand ids, and durably before any id it covers is acknowledged: with
//! `EXDAAS_SYNC=full` in the commit of the documents (synced), with `normal`
//! (whose last commits a power cut may take back) in a synced transaction
//! of its own just before it. A clean stop records the exact value. So an id
//! is never handed out twice, after a crash, a power cut or a restart, even
//! where the write that took it was lost; persisting the counter costs no
//! extra disk write per id, and under `normal` one fsync per reserve (a
//! crash may skip up to a reserve's worth of ids).
//!
//! It moves past a numeric id a client chooses when that id is near (within
//! [`OBSERVE_WINDOW`] of the next one), so mixing chosen and fresh ids, as
//! the original's clients do, rarely collides. Ids further ahead do not move
//! it: one client's huge id must not use up (or exhaust) the ids of every
//! collection. A fresh id is written create-only; when it turns out taken,
//! the store looks for the next free one and moves the counter there. Past
//! [`MAX_COUNTER_ID`] the counter starts again from 1, still create-only, so
//! anonymous creates never run out.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::domain::MAX_COUNTER_ID;

/// How far ahead of the next fresh id a client's id still moves the counter.
pub const OBSERVE_WINDOW: u64 = 1 << 20;

#[derive(Debug)]
pub struct IdCounter {
    next: AtomicU64,
}

impl IdCounter {
    /// A counter whose first id is `highest_used + 1` (so `1` on a new store).
    pub fn starting_after(highest_used: u64) -> Self {
        Self {
            next: AtomicU64::new(highest_used.saturating_add(1)),
        }
    }

    /// A fresh id: never handed out before by this counter, unless every id
    /// up to [`MAX_COUNTER_ID`] was, in which case it starts again from 1.
    pub fn next(&self) -> u64 {
        loop {
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            if (1..=MAX_COUNTER_ID).contains(&id) {
                return id;
            }
            // Wrapped: whoever sees it first starts the counter over.
            if self
                .next
                .compare_exchange(id.wrapping_add(1), 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                tracing::warn!("the id counter passed {MAX_COUNTER_ID}; it starts again from 1, skipping ids in use");
            }
        }
    }

    /// Moves the counter past `used`, a counter-shaped id a client wrote
    /// (see `DocId::as_counter_value`), if it is near. Answers whether the
    /// counter is now past it, so that the restart position covers it.
    pub fn observe(&self, used: u64) -> bool {
        let next = self.next.load(Ordering::Relaxed);
        if used < next {
            return true;
        }
        if used - next >= OBSERVE_WINDOW {
            return false;
        }
        self.next.fetch_max(used.saturating_add(1), Ordering::Relaxed);
        true
    }

    /// The id `next` would hand out: where the counter is shared, the
    /// floor of the ids this process takes from blocks (past every id a
    /// client wrote near it, and past where it restarted).
    pub fn peek(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    /// Makes the next fresh id at least `id` (past ids found taken).
    pub fn skip_to(&self, id: u64) {
        self.next.fetch_max(id, Ordering::Relaxed);
    }
}

/// Where several processes share the counter (a shared database): each
/// takes blocks of ids from the database and hands them out, so no two
/// processes ever hand out the same id.
pub struct IdBlocks {
    source: crate::store::engine::SharedDatabase,
    /// What is left of this process's block.
    left: parking_lot::Mutex<std::ops::RangeInclusive<u64>>,
    /// One refill at a time.
    refill: tokio::sync::Mutex<()>,
    /// Where the counter starts on a new database.
    highest_used: u64,
}

/// Ids one block holds.
pub const ID_BLOCK: u64 = 256;

impl IdBlocks {
    /// No block yet: the first fresh id takes one.
    pub fn new(source: crate::store::engine::SharedDatabase, highest_used: u64) -> Self {
        Self {
            source,
            left: parking_lot::Mutex::new(std::ops::RangeInclusive::new(1, 0)),
            refill: tokio::sync::Mutex::new(()),
            highest_used,
        }
    }

    /// The database the blocks come from.
    pub fn database(&self) -> &crate::store::engine::SharedDatabase {
        &self.source
    }

    fn take(&self) -> Option<u64> {
        self.left.lock().next()
    }

    /// A fresh id, at least `at_least` (past ids found taken).
    pub async fn next(&self, at_least: u64) -> Result<u64, crate::store::StoreError> {
        loop {
            if let Some(n) = self.take() {
                if n >= at_least {
                    return Ok(n);
                }
                continue;
            }
            let _refill = self.refill.lock().await;
            if !self.left.lock().is_empty() {
                continue;
            }
            let (first, last) = self.source.reserve(ID_BLOCK, at_least, self.highest_used).await?;
            *self.left.lock() = first..=last.min(MAX_COUNTER_ID);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_after_the_highest_id_and_skips_near_client_ids() {
        let ids = IdCounter::starting_after(0);
        assert_eq!(ids.next(), 1);
        assert_eq!(ids.next(), 2);
        assert!(ids.observe(10));
        assert_eq!(ids.next(), 11);
        assert!(ids.observe(5));
        assert_eq!(ids.next(), 12);
        assert_eq!(IdCounter::starting_after(41).next(), 42);
    }

    #[test]
    fn far_client_ids_do_not_move_it_and_it_never_runs_out() {
        let ids = IdCounter::starting_after(0);
        assert!(!ids.observe(MAX_COUNTER_ID));
        assert!(!ids.observe(OBSERVE_WINDOW + 1));
        assert_eq!(ids.next(), 1);
        ids.skip_to(100);
        assert_eq!(ids.next(), 100);
        let full = IdCounter::starting_after(MAX_COUNTER_ID - 1);
        assert_eq!(full.next(), MAX_COUNTER_ID);
        assert_eq!(full.next(), 1, "past the last id it starts again");
        assert_eq!(full.next(), 2);
        assert_eq!(IdCounter::starting_after(u64::MAX).next(), 1);
    }
}
