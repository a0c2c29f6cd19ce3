//! Rows that do not parse: a document whose stored text is not JSON, put
//! there with raw SQL as damage or a bug would.
//!
//! Contract (both engines):
//! - The engine does not parse a document's text: every read path (point
//!   read, listing, load, warm-up, index build) gives it back byte for
//!   byte, never drops the row nor turns it into `null`. Deciding what
//!   text that is not JSON means (the shard is damaged) is the store's.

use exdaas::store::engine::IdBounds;
use futures_util::TryStreamExt;

use crate::engines::{collection, commit, doc, entries_for, key, Engine, Shard};

const BROKEN: &str = "{\"broken";

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
