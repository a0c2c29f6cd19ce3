//! What an expiry sweep and a collection drop read and remove
//! (`expired`, `in_collection`, `delete_with_feed`), and the counts
//! (`count_live`, `add_collection_counts`, `add_counts_of`).
//!
//! Contract (both engines): a document is gone from its expiry on (counts
//! leave it out before a sweep removes it); `expired` and `in_collection`
//! answer keys with their versions, at most `limit`; `delete_with_feed`
//! removes exactly the feed's keys and records the feed with them.

use std::collections::BTreeMap;

use exdaas::store::engine::{ChangeKind, IdBounds};

use crate::engines::{collection, commit, doc, entry, key};

const NOW: i64 = 10_000;

conformance! {
    async fn sweeps_find_and_remove_what_expired_or_was_dropped(engine) {
        let mut shard = engine.boot().await;
        let mut gone = doc(3, 1_000, "{}");
        gone.expires_at_ms = Some(NOW - 1);
        let mut later = doc(1, 1_000, "{}");
        later.expires_at_ms = Some(NOW + 1);
        let rows = vec![
            (key("a", "1"), Some(gone.clone())),
            (key("a", "2"), Some(later)),
            (key("a", "3"), Some(doc(1, 1_000, "{}"))),
            (key("b", "1"), Some(gone)),
            (key("b", "2"), Some(doc(2, 1_000, "{}"))),
        ];
        commit(&mut shard.writes, &rows, &[], None)
            .await
            .unwrap_or_else(|e| panic!("{engine}: commit: {e}"));

        assert_eq!(
            shard.reads.count_live(NOW).await,
            Some(3),
            "{engine}: expired ones do not count"
        );
        let mut totals = BTreeMap::new();
        shard
            .reads
            .add_collection_counts(NOW, &mut totals)
            .await
            .unwrap_or_else(|e| panic!("{engine}: add_collection_counts: {e}"));
        assert_eq!(
            totals,
            BTreeMap::from([("a".to_owned(), 2), ("b".to_owned(), 1)]),
            "{engine}: per collection"
        );
        let mut of_b = BTreeMap::new();
        shard
            .reads
            .add_counts_of(NOW, &[collection("b")], &mut of_b)
            .await
            .unwrap_or_else(|e| panic!("{engine}: add_counts_of: {e}"));
        assert_eq!(
            of_b,
            BTreeMap::from([("b".to_owned(), 1)]),
            "{engine}: one collection's"
        );

        let mut expired = shard
            .writes
            .expired(NOW, 10)
            .await
            .unwrap_or_else(|e| panic!("{engine}: expired: {e}"));
        expired.sort_by_key(|(k, _)| k.to_string());
        assert_eq!(
            expired,
            [(key("a", "1"), 3), (key("b", "1"), 3)],
            "{engine}: what expired, with versions"
        );
        assert_eq!(
            shard.writes.expired(NOW, 1).await.map(|found| found.len()).ok(),
            Some(1),
            "{engine}: at most limit"
        );
        let feed: Vec<_> = expired
            .iter()
            .zip(1..)
            .map(|((k, version), seq)| entry(seq, k, *version, ChangeKind::Expired, NOW))
            .collect();
        let deleted = shard
            .writes
            .delete_with_feed(&feed)
            .await
            .unwrap_or_else(|e| panic!("{engine}: delete_with_feed: {e}"));
        assert_eq!(deleted, 2, "{engine}: both swept");
        assert!(
            shard.writes.expired(NOW, 10).await.is_ok_and(|left| left.is_empty()),
            "{engine}: nothing left to sweep"
        );
        assert_eq!(
            shard.feed(0, 100, 100).await.entries,
            feed,
            "{engine}: the sweep's entries"
        );

        let mut in_a = shard
            .writes
            .in_collection(&collection("a"), 10)
            .await
            .unwrap_or_else(|e| panic!("{engine}: in_collection: {e}"));
        in_a.sort_by_key(|(k, _)| k.to_string());
        assert_eq!(
            in_a,
            [(key("a", "2"), 1), (key("a", "3"), 1)],
            "{engine}: a's documents"
        );
        assert_eq!(
            shard.reads.count_live(NOW).await,
            Some(3),
            "{engine}: the count after the sweep"
        );
        shard.close(IdBounds::default(), IdBounds::default()).await;
    }
}
