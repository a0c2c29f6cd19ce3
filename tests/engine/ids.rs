//! Id bounds: what a shard records of the counter-shaped ids it holds
//! (`stored`) and of the counter's reservation (`counter`), through
//! commits, a crash, a clean close and a reopen.
//!
//! Contract (both engines):
//! - `commit(.., Some(ceilings))` raises the shard's bounds to at least
//!   `ceilings`, in the commit's transaction; never lowers them;
//! - `Opened::ids` (from `open_at_boot` and `reopen` alike) is what the
//!   shard holds: after a crash, the last ceilings committed, so the
//!   counter restarts above every id handed out; after a clean close, the
//!   exact bounds, so it continues without a gap;
//! - `close(ids, ceilings)` puts `ids` in place of `ceilings` only where
//!   the shard still holds those `ceilings`: bounds another writer raised
//!   since stay, or a restart would hand out again ids that writer
//!   reserved (PostgreSQL's replicas share shards; on files the same rule
//!   holds, though one writer per shard makes it moot).

use exdaas::store::engine::IdBounds;
use exdaas::store::ids::IdCounter;

use crate::engines::{commit, doc, entries_for, key};

fn bounds(stored: u64, counter: u64) -> IdBounds {
    IdBounds { stored, counter }
}

/// Rows with counter-shaped ids `ids` in collection `notes`.
fn numbered(ids: &[u64]) -> Vec<(exdaas::domain::DocKey, Option<exdaas::store::Document>)> {
    ids.iter()
        .map(|n| (key("notes", &n.to_string()), Some(doc(1, 1_000, "{}"))))
        .collect()
}

conformance! {
    async fn after_a_crash_the_bounds_are_the_ceilings_committed_and_ids_go_on_above_them(engine) {
        let mut shard = engine.boot().await;
        assert_eq!(
            shard.opened.ids,
            IdBounds::default(),
            "{engine}: a new shard holds no ids"
        );
        let rows = numbered(&[1, 2, 3]);
        let ceilings = bounds(1027, 1027);
        commit(&mut shard.writes, &rows, &entries_for(1, &rows, 1_000), Some(ceilings))
            .await
            .unwrap_or_else(|e| panic!("{engine}: the commit: {e}"));
        // Lower ceilings in a later commit do not lower the bounds.
        let more = numbered(&[4]);
        commit(
            &mut shard.writes,
            &more,
            &entries_for(4, &more, 1_000),
            Some(bounds(4, 4)),
        )
        .await
        .unwrap_or_else(|e| panic!("{engine}: the commit: {e}"));

        // A crash: the writes are dropped, never closed.
        let (writes, opened) = shard.another_writer().await;
        drop(writes);
        assert_eq!(
            opened.ids, ceilings,
            "{engine}: reopen after a crash reports the ceilings"
        );
        let stored = shard
            .reads
            .counter_ids_between(&crate::engines::collection("notes"), 1, 9)
            .await
            .unwrap_or_else(|e| panic!("{engine}: counter ids read: {e}"));
        assert_eq!(stored, vec![1, 2, 3, 4], "{engine}: the ids stored");
        let next = IdCounter::starting_after(opened.ids.counter).next();
        assert!(
            next > 4,
            "{engine}: the counter restarts at {next}, above every id stored"
        );

        // And a whole new boot of the engine says the same.
        shard.crash().await;
        let again = engine.boot().await;
        assert_eq!(
            again.opened.ids, ceilings,
            "{engine}: a boot after a crash reports the ceilings"
        );
        assert_eq!(again.opened.last_seq, 4, "{engine}: the feed's last entry");
        again.close(ceilings, ceilings).await;
    }
}

conformance! {
    async fn a_clean_close_records_the_exact_bounds(engine) {
        let mut shard = engine.boot().await;
        let rows = numbered(&[1, 2, 3]);
        let ceilings = bounds(1027, 1027);
        commit(&mut shard.writes, &rows, &entries_for(1, &rows, 1_000), Some(ceilings))
            .await
            .unwrap_or_else(|e| panic!("{engine}: the commit: {e}"));
        shard.close(bounds(3, 3), ceilings).await;

        let shard = engine.boot().await;
        assert_eq!(
            shard.opened.ids,
            bounds(3, 3),
            "{engine}: the exact bounds, after a clean close"
        );
        assert_eq!(
            IdCounter::starting_after(shard.opened.ids.counter).next(),
            4,
            "{engine}: the counter goes on without a gap"
        );
        shard.close(bounds(3, 3), bounds(3, 3)).await;
    }
}

conformance! {
    /// The drift `close(ids)` (SQLite) against `close(ids, ceilings)`
    /// (PostgreSQL): SQLite's close wrote the exact bounds whatever the shard
    /// held, so bounds another writer had raised went back down.
    async fn a_close_leaves_bounds_another_writer_raised(engine) {
        let mut shard = engine.boot().await;
        let (mut other, _) = shard.another_writer().await;
        let mine = bounds(1027, 1027);
        let rows = numbered(&[1, 2, 3]);
        commit(&mut shard.writes, &rows, &entries_for(1, &rows, 1_000), Some(mine))
            .await
            .unwrap_or_else(|e| panic!("{engine}: the first writer commits: {e}"));
        let theirs = bounds(2051, 2051);
        let more = numbered(&[1028]);
        commit(&mut other, &more, &entries_for(4, &more, 1_000), Some(theirs))
            .await
            .unwrap_or_else(|e| panic!("{engine}: the second writer commits: {e}"));
        // The first writer closes with its exact ids in place of its own
        // ceilings, which the shard no longer holds.
        shard.writes.close(bounds(3, 3), mine).await;
        let (mut check, opened) = shard.another_writer().await;
        assert_eq!(
            opened.ids, theirs,
            "{engine}: the bounds the second writer raised stay; a restart must not hand out 1029..=2051 again"
        );
        check.close(opened.ids, opened.ids).await;
        other.close(theirs, theirs).await;
        shard.reads.close().await;
    }
}
