//! The cache's warm-up: `ShardReads::recent(now, WarmBudget)`.
//!
//! Contract (both engines):
//! - only documents live at `now`, none longer than `largest`, and their
//!   weights (`WarmBudget::weight`) add up to at most `bytes`;
//! - newest first: every candidate (live, not over `largest`) changed after
//!   the newest one left out is taken. SQLite decides by time slices (a
//!   4096th of the shard's span of change times, each a millisecond here),
//!   so that it need not sort the shard;
//! - one that does not fit is skipped and the walk goes on: no candidate
//!   left out would fit in the room left over. Which older documents fill
//!   that room is the engine's choice (PostgreSQL: newest first; SQLite: in
//!   key order, in the same walk), so the tests ask for the property, not
//!   one set;
//! - the order of the stream is not promised.

use std::collections::BTreeSet;

use exdaas::domain::DocKey;
use exdaas::store::engine::WarmBudget;
use exdaas::store::Document;
use futures_util::TryStreamExt;

use crate::engines::{commit, doc, key, Shard};

const NOW: i64 = 1_000_000;

/// Text of `n` bytes (a JSON string).
fn text(n: usize) -> String {
    format!("\"{}\"", "x".repeat(n - 2))
}

async fn warmed(shard: &Shard, budget: WarmBudget) -> Vec<(DocKey, Document)> {
    shard
        .reads
        .recent(NOW, budget)
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("{}: the warm-up reads: {e}", shard.engine))
}

fn ids(docs: &[(DocKey, Document)]) -> BTreeSet<String> {
    docs.iter().map(|(key, _)| key.id.as_str().to_owned()).collect()
}

/// Checks the contract's properties for `taken` out of `stored`.
fn check(engine: &str, stored: &[(DocKey, Document)], taken: &[(DocKey, Document)], budget: WarmBudget) {
    let taken_ids = ids(taken);
    assert_eq!(taken_ids.len(), taken.len(), "{engine}: a document came twice");
    let used: u64 = taken.iter().map(|(k, d)| budget.weight(k, d)).sum();
    assert!(
        used <= budget.bytes,
        "{engine}: {used} bytes warmed, over {}",
        budget.bytes
    );
    for (key, doc) in taken {
        let stored_doc = stored.iter().find(|(k, _)| k == key).map(|(_, d)| d);
        assert_eq!(stored_doc, Some(doc), "{engine}: {key} came back as it was stored");
        assert!(doc.is_live(NOW), "{engine}: {key} expired, yet warmed");
        assert!(
            doc.data.len() as u64 <= budget.largest,
            "{engine}: {key} is over `largest`, yet warmed"
        );
    }
    let mut candidates: Vec<&(DocKey, Document)> = stored
        .iter()
        .filter(|(_, d)| d.is_live(NOW) && d.data.len() as u64 <= budget.largest)
        .collect();
    candidates.sort_by_key(|(_, d)| std::cmp::Reverse(d.updated_at_ms));
    let left_out: Vec<_> = candidates
        .iter()
        .filter(|(k, _)| !taken_ids.contains(k.id.as_str()))
        .collect();
    if let Some((newest_left, left_doc)) = left_out.first() {
        for (key, doc) in &candidates {
            if doc.updated_at_ms > left_doc.updated_at_ms {
                assert!(
                    taken_ids.contains(key.id.as_str()),
                    "{engine}: {key} is newer than {newest_left}, which was left out, yet not warmed"
                );
            }
        }
    }
    for (key, doc) in left_out {
        let weight = budget.weight(key, doc);
        assert!(
            weight > budget.bytes - used,
            "{engine}: {key} ({weight} bytes) was left out though {} bytes were left",
            budget.bytes - used
        );
    }
}

conformance! {
    async fn the_warm_up_takes_the_newest_and_fills_the_room_with_smaller_older_ones(engine) {
        let mut shard = engine.boot().await;
        let per_entry = 100;
        // Newest first: n1 fits; o2 is over `largest`; a3 does not fit in
        // what n1 leaves; m4 and b5, smaller and older, do, one of them.
        // Ids sort otherwise than times (a3 < b5 < m4 < n1).
        let mut expired = doc(1, NOW - 1, &text(10));
        expired.expires_at_ms = Some(NOW);
        let mut later = doc(1, NOW - 60, &text(10));
        later.expires_at_ms = Some(NOW + 60_000);
        let stored = vec![
            (key("c", "e0"), expired),
            (key("c", "n1"), doc(1, NOW - 10, &text(100))),
            (key("c", "o2"), doc(1, NOW - 20, &text(5000))),
            (key("c", "a3"), doc(1, NOW - 30, &text(600))),
            (key("c", "m4"), doc(1, NOW - 40, &text(150))),
            (key("c", "b5"), doc(1, NOW - 50, &text(150))),
            (key("c", "z6"), later),
        ];
        let rows: Vec<_> = stored.iter().map(|(k, d)| (k.clone(), Some(d.clone()))).collect();
        commit(&mut shard.writes, &rows, &[], None)
            .await
            .unwrap_or_else(|e| panic!("{engine}: the documents commit: {e}"));
        let weight = |id: &str| {
            let (k, d) = stored.iter().find(|(k, _)| k.id.as_str() == id).expect("stored");
            WarmBudget {
                bytes: 0,
                per_entry,
                largest: 0,
            }
            .weight(k, d)
        };

        // n1 and one of m4 or b5, with less room left than either.
        let budget = WarmBudget {
            bytes: weight("n1") + weight("m4") + 50,
            per_entry,
            largest: 1000,
        };
        let taken = warmed(&shard, budget).await;
        check(engine.name, &stored, &taken, budget);
        let taken = ids(&taken);
        assert!(taken.contains("n1"), "{engine}: the newest is warmed: {taken:?}");
        assert!(
            !taken.contains("a3"),
            "{engine}: one that does not fit is skipped: {taken:?}"
        );
        assert!(
            !taken.contains("o2"),
            "{engine}: one over `largest` is left to its first read"
        );
        assert!(!taken.contains("e0"), "{engine}: an expired one is not warmed");
        assert!(
            taken.contains("m4") || taken.contains("b5"),
            "{engine}: after one that does not fit, a smaller older one still fills the room: {taken:?}"
        );
        assert_eq!(taken.len(), 2, "{engine}: {taken:?}");

        // Room for all: every live one up to `largest`.
        let all = WarmBudget {
            bytes: 1 << 20,
            per_entry,
            largest: 1000,
        };
        let taken = warmed(&shard, all).await;
        check(engine.name, &stored, &taken, all);
        let expected: BTreeSet<String> = ["n1", "a3", "m4", "b5", "z6"].map(String::from).into();
        assert_eq!(ids(&taken), expected, "{engine}: everything live fits");

        // Room for none: not even the smallest.
        let none = WarmBudget {
            bytes: per_entry,
            per_entry,
            largest: 1000,
        };
        assert!(
            warmed(&shard, none).await.is_empty(),
            "{engine}: nothing fits in {per_entry} bytes"
        );

        // Not even the newest fits; the oldest, smallest one does.
        let tight = WarmBudget {
            bytes: weight("z6") + 10,
            per_entry,
            largest: 1000,
        };
        let taken = warmed(&shard, tight).await;
        check(engine.name, &stored, &taken, tight);
        let expected: BTreeSet<String> = ["z6"].map(String::from).into();
        assert_eq!(
            ids(&taken),
            expected,
            "{engine}: the newest did not fit, the smallest does"
        );
        shard.close(Default::default(), Default::default()).await;
    }
}

conformance! {
    async fn the_warm_up_of_an_empty_shard_is_empty(engine) {
        let shard = engine.boot().await;
        let budget = WarmBudget {
            bytes: 1 << 20,
            per_entry: 512,
            largest: 64 << 10,
        };
        assert!(warmed(&shard, budget).await.is_empty(), "{engine}: nothing to warm");
        shard.close(Default::default(), Default::default()).await;
    }
}
