//! The id counter for anonymous writes.
//!
//! It lives in memory and restarts from the highest id ceiling any shard has
//! recorded. Each shard keeps in `shard_meta` a bound that every counter-shaped
//! id it stores stays under, raised in the same transaction as the documents
//! and always with a reserve, so a run of writes raises it once per
//! thousand ids; a clean stop records the exact highest id. So an id is never
//! reused, after a crash or a restart, and persisting the counter costs no
//! extra disk write per id (a crash may skip up to a reserve's worth of ids).
//! It moves past every numeric id a client chooses, and anonymous writes are
//! create-only, so a race with a client's id is retried, never an overwrite.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::domain::MAX_COUNTER_ID;

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

    /// A fresh id, never handed out before by this counter; `None` once
    /// every id up to [`MAX_COUNTER_ID`] is used.
    pub fn next(&self) -> Option<u64> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        (id <= MAX_COUNTER_ID).then_some(id)
    }

    /// Moves the counter past an id a client chose (one of the counter's
    /// range: see `DocId::as_counter_value`).
    pub fn observe(&self, used: u64) {
        self.next.fetch_max(used.saturating_add(1), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_after_the_highest_id_and_skips_client_ids() {
        let ids = IdCounter::starting_after(0);
        assert_eq!(ids.next(), Some(1));
        assert_eq!(ids.next(), Some(2));
        ids.observe(10);
        assert_eq!(ids.next(), Some(11));
        ids.observe(5);
        assert_eq!(ids.next(), Some(12));
        assert_eq!(IdCounter::starting_after(41).next(), Some(42));
        assert_eq!(IdCounter::starting_after(MAX_COUNTER_ID).next(), None);
    }
}
