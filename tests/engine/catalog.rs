//! The shard's catalog: index declarations and their builds
//! (`declare_index`, `indexes`, `build_step`, `build_progress`,
//! `drop_index`, and the reads' `index_catalog`, `unbuilt_indexes`,
//! `index_range`), and collection schemas (`set_schema`, `schemas`).
//!
//! Contract (both engines):
//! - `declare_index` stores a declaration unless one of its name is there
//!   (answering whether it stored it); `drop_index` removes it and its
//!   entries (answering whether there was one); both readers and the
//!   writer list what is declared, with its fields in order;
//! - a build step's entries are found by `index_range` in (key, id) order;
//!   the build's progress and counts are kept;
//! - `set_schema` stores a version only above the one held (a removal is
//!   a version with no schema, kept so versions go on rising); `schemas`
//!   lists the newest of each collection.

use exdaas::store::engine::{IdBounds, IndexChanges, StoredIndex, StoredSchema};

use crate::engines::{collection, commit, doc, key};

fn index(collection_name: &str, name: &str, fields: &[&str]) -> StoredIndex {
    StoredIndex {
        collection: collection(collection_name),
        name: name.into(),
        fields: fields.iter().map(|f| (*f).to_owned()).collect(),
        built: false,
        indexed: 0,
        oversized: 0,
        created_at_ms: 5_000,
    }
}

/// Name, fields, built, indexed and oversized: what a listing tells.
fn summary(indexes: &[StoredIndex]) -> Vec<(String, String, Vec<String>, bool, u64, u64)> {
    let mut listed: Vec<_> = indexes
        .iter()
        .map(|i| {
            (
                i.collection.as_str().to_owned(),
                i.name.clone(),
                i.fields.clone(),
                i.built,
                i.indexed,
                i.oversized,
            )
        })
        .collect();
    listed.sort();
    listed
}

conformance! {
    async fn indexes_are_declared_built_listed_and_dropped(engine) {
        let mut shard = engine.boot().await;
        let w = &mut shard.writes;
        let by_n = index("a", "by_n", &["n", "m.k"]);
        assert!(
            w.declare_index(&by_n, &[])
                .await
                .unwrap_or_else(|e| panic!("{engine}: declare: {e}")),
            "{engine}: declared"
        );
        assert!(
            !w.declare_index(&index("a", "by_n", &["other"]), &[])
                .await
                .unwrap_or_else(|e| panic!("{engine}: declare again: {e}")),
            "{engine}: a second declaration of the name is not stored"
        );
        w.declare_index(&index("b", "by_n", &["n"]), &[])
            .await
            .unwrap_or_else(|e| panic!("{engine}: declare: {e}"));
        let listed = summary(&w.indexes().await.unwrap_or_else(|e| panic!("{engine}: indexes: {e}")));
        let expected = vec![
            (
                "a".to_owned(),
                "by_n".to_owned(),
                vec!["n".to_owned(), "m.k".to_owned()],
                false,
                0,
                0,
            ),
            ("b".to_owned(), "by_n".to_owned(), vec!["n".to_owned()], false, 0, 0),
        ];
        assert_eq!(
            listed, expected,
            "{engine}: the writer lists both, the first declaration kept"
        );
        let of_a = shard
            .reads
            .index_catalog(&collection("a"))
            .await
            .unwrap_or_else(|e| panic!("{engine}: index_catalog: {e}"));
        assert_eq!(summary(&of_a), expected[..1], "{engine}: the reads list a's");
        let mut unbuilt = shard
            .reads
            .unbuilt_indexes()
            .await
            .unwrap_or_else(|e| panic!("{engine}: unbuilt_indexes: {e}"));
        unbuilt.sort();
        assert_eq!(
            unbuilt,
            [("a".to_owned(), "by_n".to_owned()), ("b".to_owned(), "by_n".to_owned())],
            "{engine}: both wait for their build"
        );

        // A build step, then entries a commit keeps.
        let w = &mut shard.writes;
        w.build_step(
            &collection("a"),
            "by_n",
            &[("2".into(), vec![2]), ("1".into(), vec![1])],
            1,
            Some("2"),
            true,
        )
        .await
        .unwrap_or_else(|e| panic!("{engine}: build_step: {e}"));
        assert_eq!(
            w.build_progress(&collection("a"), "by_n")
                .await
                .unwrap_or_else(|e| panic!("{engine}: build_progress: {e}")),
            Some((Some("2".into()), true)),
            "{engine}: the build's progress"
        );
        assert_eq!(
            w.build_progress(&collection("a"), "nope").await.ok(),
            Some(None),
            "{engine}: no such index"
        );
        let changes = IndexChanges {
            removed: vec![key("a", "2")],
            added: vec![
                (key("a", "2"), "by_n".into(), vec![0]),
                (key("a", "3"), "by_n".into(), vec![1]),
            ],
        };
        w.index_changes(&changes)
            .await
            .unwrap_or_else(|e| panic!("{engine}: index_changes: {e}"));
        let rows = vec![
            (key("a", "2"), Some(doc(2, 5_001, "{\"n\":0}"))),
            (key("a", "3"), Some(doc(1, 5_001, "{\"n\":1}"))),
        ];
        commit(w, &rows, &[], None)
            .await
            .unwrap_or_else(|e| panic!("{engine}: commit with index changes: {e}"));
        let found = shard
            .reads
            .index_range(&collection("a"), "by_n", &[0], &[9], None, 10)
            .await
            .unwrap_or_else(|e| panic!("{engine}: index_range: {e}"));
        let expected_range = vec![
            (vec![0], "2".to_owned()),
            (vec![1], "1".to_owned()),
            (vec![1], "3".to_owned()),
        ];
        assert_eq!(found, expected_range, "{engine}: entries in (key, id) order");
        let after = shard
            .reads
            .index_range(&collection("a"), "by_n", &[0], &[9], Some((&[1], "1")), 10)
            .await
            .unwrap_or_else(|e| panic!("{engine}: index_range: {e}"));
        assert_eq!(after, expected_range[2..], "{engine}: after a (key, id)");
        let listed = summary(
            &shard
                .writes
                .indexes()
                .await
                .unwrap_or_else(|e| panic!("{engine}: indexes: {e}")),
        );
        assert_eq!(
            listed[0],
            (
                "a".to_owned(),
                "by_n".to_owned(),
                vec!["n".to_owned(), "m.k".to_owned()],
                true,
                2,
                1
            ),
            "{engine}: built, two indexed, one oversized"
        );

        let w = &mut shard.writes;
        assert!(
            w.drop_index(&collection("a"), "by_n", &[])
                .await
                .unwrap_or_else(|e| panic!("{engine}: drop: {e}")),
            "{engine}: dropped"
        );
        assert!(
            !w.drop_index(&collection("a"), "by_n", &[])
                .await
                .unwrap_or_else(|e| panic!("{engine}: drop again: {e}")),
            "{engine}: nothing to drop the second time"
        );
        let listed = summary(&w.indexes().await.unwrap_or_else(|e| panic!("{engine}: indexes: {e}")));
        assert_eq!(listed, expected[1..], "{engine}: b's is left");
        let found = shard
            .reads
            .index_range(&collection("a"), "by_n", &[0], &[9], None, 10)
            .await
            .unwrap_or_else(|e| panic!("{engine}: index_range: {e}"));
        assert!(
            found.is_empty(),
            "{engine}: a dropped index's entries go with it: {found:?}"
        );
        shard.close(IdBounds::default(), IdBounds::default()).await;
    }
}

fn schema(collection_name: &str, version: u64, text: Option<&str>) -> StoredSchema {
    StoredSchema {
        collection: collection(collection_name),
        version,
        schema: text.map(str::to_owned),
        updated_at_ms: 6_000 + version as i64,
    }
}

conformance! {
    async fn schemas_keep_the_newest_version(engine) {
        let mut shard = engine.boot().await;
        let w = &mut shard.writes;
        let set = |stored: Result<bool, _>| stored.unwrap_or_else(|e| panic!("{engine}: set_schema: {e}"));
        assert!(
            set(w.set_schema(&schema("a", 1, Some("{}")), &[]).await),
            "{engine}: v1"
        );
        assert!(
            set(w.set_schema(&schema("a", 3, Some("{\"type\":\"object\"}")), &[]).await),
            "{engine}: v3"
        );
        assert!(
            !set(w.set_schema(&schema("a", 2, Some("{}")), &[]).await),
            "{engine}: v2 is older"
        );
        assert!(
            !set(w.set_schema(&schema("a", 3, Some("{}")), &[]).await),
            "{engine}: v3 again"
        );
        assert!(
            set(w.set_schema(&schema("b", 1, Some("{}")), &[]).await),
            "{engine}: b's v1"
        );
        assert!(
            set(w.set_schema(&schema("b", 2, None), &[]).await),
            "{engine}: b's removal"
        );
        let mut held: Vec<_> = w
            .schemas()
            .await
            .unwrap_or_else(|e| panic!("{engine}: schemas: {e}"))
            .into_iter()
            .map(|s| (s.collection.as_str().to_owned(), s.version, s.schema, s.updated_at_ms))
            .collect();
        held.sort();
        assert_eq!(
            held,
            [
                ("a".to_owned(), 3, Some("{\"type\":\"object\"}".to_owned()), 6_003),
                ("b".to_owned(), 2, None, 6_002),
            ],
            "{engine}: the newest of each, a removal kept as a version"
        );
        // Across a reopen.
        let (mut other, _) = shard.another_writer().await;
        let again = other
            .schemas()
            .await
            .unwrap_or_else(|e| panic!("{engine}: schemas: {e}"));
        assert_eq!(again.len(), 2, "{engine}: schemas survive a reopen");
        drop(other);
        shard.close(IdBounds::default(), IdBounds::default()).await;
    }
}
