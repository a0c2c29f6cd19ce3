//! Writes that arrive together are committed together; each still gets its
//! own correct answer.

use std::collections::BTreeSet;

use exdaas::domain::{CollectionName, DocId, DocKey};
use futures_util::future::join_all;
use serde_json::json;

use crate::helpers::{json, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_to_one_key_each_get_their_own_version() {
    let app = spawn_app().await;
    let key = DocKey::new(
        CollectionName::parse("c").expect("name"),
        DocId::parse("hot").expect("id"),
    );
    let writes = (0..300).map(|n| {
        let (store, key) = (app.store.clone(), key.clone());
        async move { store.put(key, &json!({"n": n})).await.expect("write").doc.version }
    });
    let versions: BTreeSet<u64> = join_all(writes).await.into_iter().collect();
    assert_eq!(
        versions,
        (1..=300).collect(),
        "every write got a distinct version, none skipped"
    );
    assert_eq!(json(app.get_doc("c", "hot").await).await["version"], 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_anonymous_writes_get_distinct_ids() {
    let app = spawn_app().await;
    let creates = (0..300).map(|n| {
        let store = app.store.clone();
        async move {
            let collection = CollectionName::parse("anon").expect("name");
            store
                .create(collection, &json!({"n": n}), None)
                .await
                .expect("create")
                .0
        }
    });
    let ids: BTreeSet<String> = join_all(creates)
        .await
        .into_iter()
        .map(|id| id.as_str().to_owned())
        .collect();
    assert_eq!(ids.len(), 300);
    for id in ids.iter().take(5) {
        assert_eq!(app.get_doc("anon", id).await.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_and_a_put_in_flight_together_leave_one_answer_true() {
    let app = spawn_app().await;
    let key = DocKey::new(
        CollectionName::parse("c").expect("name"),
        DocId::parse("k").expect("id"),
    );
    for round in 0..50 {
        app.store.put(key.clone(), &json!({"round": round})).await.expect("put");
        let after = json!("after");
        let (deleted, put) = tokio::join!(app.store.delete(key.clone()), app.store.put(key.clone(), &after));
        let (deleted, put) = (deleted.expect("delete"), put.expect("put"));
        assert!(deleted, "round {round}: the document existed");
        let now = app.get_doc("c", "k").await;
        // Whichever committed last decides: deleted then re-created, or replaced then deleted.
        if put.created {
            assert_eq!(json(now).await["data"], "after", "round {round}");
        } else {
            assert_eq!(now.status(), 404, "round {round}");
        }
    }
}
