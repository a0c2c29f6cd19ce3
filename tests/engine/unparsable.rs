//! Rows that do not parse: a document whose stored text is not JSON, and
//! feed rows the engine cannot read back as an entry (an unknown kind, an
//! id that is not one), put there with raw SQL as damage or a bug would.
//!
//! Contract (both engines):
//! - The engine does not parse a document's text: every read path (point
//!   read, listing, load, warm-up, index build) gives it back byte for
//!   byte, never drops the row nor turns it into `null`. Deciding what
//!   text that is not JSON means (the shard is damaged) is the store's.
//! - A feed row that does not parse fails the feed read that reaches it
//!   with `ErrorKind::Damaged`, naming its seq; reads that stop before it
//!   or start after it go on. It is never skipped: a skipped entry is a key
//!   a replica never evicts from its cache (it goes on serving the old
//!   document) and a change a feed reader never hears of. Failing is
//!   loud: the replica stops trusting its cache (reads go to the database)
//!   and says why in readiness, a feed client gets a 503 saying the shard
//!   is damaged (the log names the entry), until the row is repaired or
//!   compacted away (the floor then passes it and followers start over).

use exdaas::store::engine::{ChangeKind, EngineError, ErrorKind, IdBounds};
use futures_util::TryStreamExt;

use crate::engines::{collection, commit, doc, entries_for, entry, key, Engine, Shard};

const BROKEN: &str = "{\"broken";
const ALL: u64 = i64::MAX as u64;

async fn damage_the_text(engine: &Engine, shard: &Shard) {
    engine
        .raw(
            shard,
            &format!("UPDATE documents SET data = '{BROKEN}' WHERE collection = 'c' AND id = 'bad'"),
            &format!("UPDATE exdaas_documents SET data = '{BROKEN}' WHERE collection = 'c' AND id = 'bad'"),
        )
        .await;
}

conformance! {
    async fn a_document_that_is_not_json_is_given_back_as_stored(engine) {
        let mut shard = engine.boot().await;
        let rows = vec![
            (key("c", "bad"), Some(doc(1, 1_000, "{\"fine\":true}"))),
            (key("c", "good"), Some(doc(1, 1_000, "{\"fine\":true}"))),
        ];
        commit(&mut shard.writes, &rows, &entries_for(1, &rows, 1_000), None)
            .await
            .unwrap_or_else(|e| panic!("{engine}: commit: {e}"));
        damage_the_text(engine, &shard).await;
        let bad = key("c", "bad");

        let slot = shard
            .reads
            .reserve()
            .await
            .unwrap_or_else(|e| panic!("{engine}: reserve: {e}"));
        let read = slot.read(&bad).await.unwrap_or_else(|e| panic!("{engine}: read: {e}"));
        assert_eq!(
            read.map(|d| d.data.to_string()).as_deref(),
            Some(BROKEN),
            "{engine}: a point read"
        );

        let found = shard
            .reads
            .documents(&collection("c"), &["bad", "good"], 2_000)
            .await
            .unwrap_or_else(|e| panic!("{engine}: documents: {e}"));
        let text = found
            .iter()
            .find(|(id, _)| id == "bad")
            .map(|(_, d)| d.data.to_string());
        assert_eq!(text.as_deref(), Some(BROKEN), "{engine}: documents");
        assert_eq!(found.len(), 2, "{engine}: documents gives both");

        let listed = shard
            .reads
            .entries(&collection("c"), None, None, 2_000, 10)
            .await
            .unwrap_or_else(|e| panic!("{engine}: entries: {e}"));
        let size = listed
            .iter()
            .find(|(id, _, _)| id.as_str() == "bad")
            .map(|(_, _, n)| *n);
        assert_eq!(size, Some(BROKEN.len()), "{engine}: a listing counts it");

        let loaded = shard
            .writes
            .load(std::slice::from_ref(&bad), 1 << 20)
            .await
            .unwrap_or_else(|e| panic!("{engine}: load: {e}"));
        assert_eq!(loaded.len(), 1, "{engine}: load finds it");
        assert_eq!(&*loaded[0].doc.data, BROKEN, "{engine}: load");
        let texts = shard
            .writes
            .load_texts(std::slice::from_ref(&bad))
            .await
            .unwrap_or_else(|e| panic!("{engine}: load_texts: {e}"));
        assert_eq!(texts.first().map(|(_, t)| &**t), Some(BROKEN), "{engine}: load_texts");
        let after = shard
            .writes
            .documents_after(&collection("c"), None, 10)
            .await
            .unwrap_or_else(|e| panic!("{engine}: documents_after: {e}"));
        assert_eq!(
            after.iter().find(|(id, _)| id == "bad").map(|(_, t)| &**t),
            Some(BROKEN),
            "{engine}: an index build's read"
        );

        let budget = exdaas::store::engine::WarmBudget {
            bytes: 1 << 20,
            per_entry: 512,
            largest: 64 << 10,
        };
        let warmed: Vec<_> = shard
            .reads
            .recent(2_000, budget)
            .try_collect()
            .await
            .unwrap_or_else(|e| panic!("{engine}: the warm-up: {e}"));
        let text = warmed.iter().find(|(k, _)| *k == bad).map(|(_, d)| d.data.to_string());
        assert_eq!(text.as_deref(), Some(BROKEN), "{engine}: the warm-up");
        shard.close(IdBounds::default(), IdBounds::default()).await;
    }
}

/// The read fails as damaged, naming `seq`.
fn damaged_at(engine: &str, what: &str, result: Result<exdaas::store::engine::FeedRun, EngineError>, seq: u64) {
    match result {
        Err(EngineError::Storage { error, .. }) => {
            assert_eq!(error.kind, ErrorKind::Damaged, "{engine}: {what}: {error}");
            assert!(
                error.detail.contains(&format!("feed entry {seq}")),
                "{engine}: {what}: the error names the entry: {error}"
            );
        }
        Err(other) => panic!("{engine}: {what}: not a storage error: {other}"),
        Ok(run) => panic!(
            "{engine}: {what}: read without an error, entries {:?}: the unparsable one was dropped",
            run.entries.iter().map(|e| e.seq).collect::<Vec<_>>()
        ),
    }
}

/// What is wrong with a damaged feed row, and its columns after seq:
/// collection, id, version, kind, at.
const DAMAGES: [(&str, &str); 4] = [
    ("an unknown kind", "'c', 'k3', 1, 99, 1000"),
    ("an id that is not one", "'c', 'not an id', 1, 0, 1000"),
    ("a collection that is not one", "'no/such', 'k3', 1, 0, 1000"),
    ("a negative version", "'c', 'k3', -1, 0, 1000"),
];

conformance! {
    /// The drift "an unparsable feed row is logged on SQLite and silently
    /// dropped on PostgreSQL (so a replica never evicts that key)".
    async fn a_feed_row_that_does_not_parse_fails_the_read_that_reaches_it(engine) {
        let mut shard = engine.boot().await;
        let mut next = 1;
        for (what, values) in DAMAGES {
            // Entries next, a damaged next + 1, and next + 2 after it.
            let rows = vec![(key("c", "k1"), Some(doc(next, 1_000, "{}")))];
            commit(&mut shard.writes, &rows, &entries_for(next, &rows, 1_000), None)
                .await
                .unwrap_or_else(|e| panic!("{engine}: commit: {e}"));
            let bad = next + 1;
            engine
                .raw(
                    &shard,
                    &format!("INSERT INTO changes (seq, collection, id, version, kind, at) VALUES ({bad}, {values})"),
                    &format!(
                        "INSERT INTO exdaas_changes (shard, seq, collection, id, version, kind, at) \
                         VALUES (0, {bad}, {values})"
                    ),
                )
                .await;
            let after = entry(bad + 1, &key("c", "k2"), 1, ChangeKind::Written, 1_000);
            let rows = vec![(key("c", "k2"), Some(doc(1, 1_000, "{}")))];
            commit(&mut shard.writes, &rows, std::slice::from_ref(&after), None)
                .await
                .unwrap_or_else(|e| panic!("{engine}: commit: {e}"));

            let reached = shard.reads.feed(next - 1, ALL, Default::default(), 100).await;
            damaged_at(engine.name, &format!("{what}: a read over it"), reached, bad);
            let filtered = shard
                .reads
                .feed(
                    next - 1,
                    ALL,
                    exdaas::store::engine::FeedFilter {
                        collections: None,
                        prefix: None,
                    },
                    1,
                )
                .await;
            let before = filtered.unwrap_or_else(|e| panic!("{engine}: {what}: a read that stops before it: {e}"));
            assert_eq!(
                before.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
                [next],
                "{engine}: {what}: a read that stops before it"
            );
            let upto = shard.feed(next - 1, next, 100).await;
            assert_eq!(upto.entries.len(), 1, "{engine}: {what}: a read up to the one before");
            let past = shard.feed(bad, ALL, 100).await;
            assert_eq!(
                past.entries,
                std::slice::from_ref(&after),
                "{engine}: {what}: a read after it"
            );

            // Repaired (as compaction would), the feed reads on.
            engine
                .raw(
                    &shard,
                    &format!("DELETE FROM changes WHERE seq = {bad}"),
                    &format!("DELETE FROM exdaas_changes WHERE shard = 0 AND seq = {bad}"),
                )
                .await;
            next = bad + 2;
        }
        shard.close(IdBounds::default(), IdBounds::default()).await;
    }
}
