//! The change feed: entries the writer numbers and commits with each change
//! (`commit`, `delete_with_feed`, `set_schema`, `declare_index`,
//! `drop_index`), read back by `ShardReads::feed`, compacted by
//! `compact_feed`.
//!
//! Contract (both engines):
//! - the feed holds exactly the entries committed, as committed (seq,
//!   key, version, kind, time), in seq order: the writer's numbering, no
//!   gaps added, none dropped; a catalog change that changed nothing
//!   records no entry;
//! - `feed(after, upto, filter, limit)` answers the entries with
//!   `after < seq <= upto` that `filter` lets through, at most `limit`,
//!   with the floor;
//! - `compact_feed(before_ms, keep, limit)` removes entries older than
//!   `before_ms` beyond the last `keep`, at most `limit`, answers how many,
//!   and raises the floor to the last one removed; the last seq survives
//!   compaction (`Opened::last_seq` after a reopen), so numbering goes on.

use exdaas::domain::DocId;
use exdaas::store::engine::{ChangeKind, FeedEntry, FeedFilter, IdBounds, StoredIndex, StoredSchema};

use crate::engines::{collection, commit, doc, entries_for, entry, key};

const ALL: u64 = i64::MAX as u64;

/// Commits a run of changes of every kind, numbered 1 to 10, and answers
/// their entries.
async fn fill(engine: &str, shard: &mut crate::engines::Shard) -> Vec<FeedEntry> {
    let mut all = Vec::new();
    let rows = vec![
        (key("a", "1"), Some(doc(1, 1_000, "{\"n\":1}"))),
        (key("b", "x-1"), Some(doc(1, 1_000, "{\"n\":2}"))),
        (key("a", "x-2"), Some(doc(1, 1_000, "{\"n\":3}"))),
    ];
    let feed = entries_for(1, &rows, 1_000);
    commit(&mut shard.writes, &rows, &feed, None)
        .await
        .unwrap_or_else(|e| panic!("{engine}: commit: {e}"));
    all.extend(feed);
    let rows = vec![
        (key("a", "1"), Some(doc(2, 1_001, "{\"n\":4}"))),
        (key("b", "x-1"), None),
    ];
    let feed = entries_for(4, &rows, 1_001);
    commit(&mut shard.writes, &rows, &feed, None)
        .await
        .unwrap_or_else(|e| panic!("{engine}: commit: {e}"));
    all.extend(feed);
    // A sweep's deletion, with its own entry.
    let swept = vec![entry(6, &key("a", "x-2"), 1, ChangeKind::Expired, 1_002)];
    let deleted = shard
        .writes
        .delete_with_feed(&swept)
        .await
        .unwrap_or_else(|e| panic!("{engine}: delete_with_feed: {e}"));
    assert_eq!(deleted, 1, "{engine}: one document swept");
    all.extend(swept);
    let schema = StoredSchema {
        collection: collection("a"),
        version: 1,
        schema: Some("{\"type\":\"object\"}".into()),
        updated_at_ms: 1_003,
    };
    let of_collection = exdaas::domain::DocKey::new(collection("a"), DocId::of_collection());
    let feed = vec![entry(7, &of_collection, 1, ChangeKind::SchemaSet, 1_003)];
    assert!(
        shard
            .writes
            .set_schema(&schema, &feed)
            .await
            .unwrap_or_else(|e| panic!("{engine}: set_schema: {e}")),
        "{engine}: the schema is stored"
    );
    all.extend(feed);
    let index = StoredIndex {
        collection: collection("a"),
        name: "by_n".into(),
        fields: vec!["n".into()],
        built: false,
        indexed: 0,
        oversized: 0,
        created_at_ms: 1_004,
    };
    let feed = vec![entry(8, &key("a", "by_n"), 0, ChangeKind::IndexDeclared, 1_004)];
    assert!(
        shard
            .writes
            .declare_index(&index, &feed)
            .await
            .unwrap_or_else(|e| panic!("{engine}: declare_index: {e}")),
        "{engine}: the index is declared"
    );
    all.extend(feed);
    let feed = vec![entry(9, &key("a", "by_n"), 0, ChangeKind::IndexDropped, 1_005)];
    assert!(
        shard
            .writes
            .drop_index(&collection("a"), "by_n", &feed)
            .await
            .unwrap_or_else(|e| panic!("{engine}: drop_index: {e}")),
        "{engine}: the index is dropped"
    );
    all.extend(feed);
    let rows = vec![(key("b", "2"), Some(doc(1, 1_006, "{}")))];
    let feed = entries_for(10, &rows, 1_006);
    commit(&mut shard.writes, &rows, &feed, None)
        .await
        .unwrap_or_else(|e| panic!("{engine}: commit: {e}"));
    all.extend(feed);
    all
}

fn seqs(entries: &[FeedEntry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

conformance! {
    async fn the_feed_gives_back_the_writers_numbering_in_order(engine) {
        let mut shard = engine.boot().await;
        let committed = fill(engine.name, &mut shard).await;

        let run = shard.feed(0, ALL, 100).await;
        assert_eq!(run.floor, 0, "{engine}: nothing compacted");
        assert_eq!(run.entries, committed, "{engine}: every entry as committed, in order");

        let run = shard.feed(2, 5, 100).await;
        assert_eq!(seqs(&run.entries), [3, 4, 5], "{engine}: after < seq <= upto");
        let run = shard.feed(0, ALL, 4).await;
        assert_eq!(seqs(&run.entries), [1, 2, 3, 4], "{engine}: at most limit");
        let run = shard.feed(10, ALL, 100).await;
        assert!(run.entries.is_empty(), "{engine}: nothing after the last");

        let only_b = [collection("b")];
        let run = shard
            .feed_of(
                0,
                ALL,
                FeedFilter {
                    collections: Some(&only_b),
                    prefix: None,
                },
                100,
            )
            .await;
        assert_eq!(seqs(&run.entries), [2, 5, 10], "{engine}: one collection's");
        let both = [collection("a"), collection("b")];
        let run = shard
            .feed_of(
                0,
                ALL,
                FeedFilter {
                    collections: Some(&both),
                    prefix: None,
                },
                100,
            )
            .await;
        assert_eq!(run.entries, committed, "{engine}: several collections'");
        let run = shard
            .feed_of(
                0,
                ALL,
                FeedFilter {
                    collections: None,
                    prefix: Some("x-"),
                },
                100,
            )
            .await;
        assert_eq!(seqs(&run.entries), [2, 3, 5, 6], "{engine}: ids with a prefix");

        // A catalog change that changes nothing records nothing.
        let stale = StoredSchema {
            collection: collection("a"),
            version: 1,
            schema: None,
            updated_at_ms: 1_007,
        };
        let of_collection = exdaas::domain::DocKey::new(collection("a"), DocId::of_collection());
        let unstored = shard
            .writes
            .set_schema(
                &stale,
                &[entry(11, &of_collection, 1, ChangeKind::SchemaRemoved, 1_007)],
            )
            .await
            .unwrap_or_else(|e| panic!("{engine}: set_schema: {e}"));
        assert!(!unstored, "{engine}: a schema version not newer is not stored");
        let dropped = shard
            .writes
            .drop_index(
                &collection("a"),
                "by_n",
                &[entry(11, &key("a", "by_n"), 0, ChangeKind::IndexDropped, 1_007)],
            )
            .await
            .unwrap_or_else(|e| panic!("{engine}: drop_index: {e}"));
        assert!(!dropped, "{engine}: no such index any more");
        let run = shard.feed(0, ALL, 100).await;
        assert_eq!(
            run.entries, committed,
            "{engine}: no entry for changes that changed nothing"
        );

        let (writes, opened) = shard.another_writer().await;
        drop(writes);
        assert_eq!(opened.last_seq, 10, "{engine}: the feed's last entry, on reopen");
        shard.close(IdBounds::default(), IdBounds::default()).await;
    }
}

conformance! {
    async fn compaction_raises_the_floor_and_the_numbering_goes_on(engine) {
        let mut shard = engine.boot().await;
        let committed = fill(engine.name, &mut shard).await;

        // Older than 1_001 (seq 1..=3); none beyond the last 100.
        let removed = shard
            .writes
            .compact_feed(1_001, 100, 100)
            .await
            .unwrap_or_else(|e| panic!("{engine}: compact_feed: {e}"));
        assert_eq!(removed, 3, "{engine}: entries removed");
        let run = shard.feed(0, ALL, 100).await;
        assert_eq!(run.floor, 3, "{engine}: the floor is the last removed");
        assert_eq!(run.entries, committed[3..], "{engine}: the rest, as committed");

        // Beyond the last 0 (all of them), at most `limit` at a time.
        let removed = shard
            .writes
            .compact_feed(0, 0, 2)
            .await
            .unwrap_or_else(|e| panic!("{engine}: compact_feed: {e}"));
        assert_eq!(removed, 2, "{engine}: at most limit removed");
        assert_eq!(
            shard.feed(0, ALL, 100).await.floor,
            5,
            "{engine}: the floor moved by two"
        );

        // Everything.
        shard
            .writes
            .compact_feed(0, 0, 100)
            .await
            .unwrap_or_else(|e| panic!("{engine}: compact_feed: {e}"));
        let run = shard.feed(0, ALL, 100).await;
        assert_eq!((run.floor, run.entries.len()), (10, 0), "{engine}: all compacted");

        // The numbering survives: a reopen knows the last seq, and the
        // next entry follows it.
        let (writes, opened) = shard.another_writer().await;
        drop(writes);
        assert_eq!(opened.last_seq, 10, "{engine}: the last seq survives compaction");
        let rows = vec![(key("a", "3"), Some(doc(1, 3_000, "{}")))];
        let feed = entries_for(11, &rows, 3_000);
        commit(&mut shard.writes, &rows, &feed, None)
            .await
            .unwrap_or_else(|e| panic!("{engine}: commit: {e}"));
        let run = shard.feed(10, ALL, 100).await;
        assert_eq!(run.entries, feed, "{engine}: the next entry after compaction");
        shard.close(IdBounds::default(), IdBounds::default()).await;
    }
}
