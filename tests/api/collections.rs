//! `GET /v1/collections` (names and counts) and dropping a collection, which
//! needs its name repeated.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{json, rows_on_disk, send, spawn_app, TestApp};

async fn collections(app: &TestApp) -> Value {
    let resp = app.get("/v1/collections").await;
    assert_eq!(resp.status(), 200);
    json(resp).await["collections"].clone()
}

async fn fill(app: &TestApp, collection: &str, count: usize) {
    let ops: Vec<Value> = (0..count)
        .map(|i| json!({"op": "put", "id": format!("{collection}-{i}"), "data": i}))
        .collect();
    assert_eq!(app.batch(collection, json!(ops)).await.status(), 200);
}

async fn drop_collection(app: &TestApp, path: &str) -> reqwest::Response {
    send(app.request(Method::DELETE, path)).await
}

#[tokio::test]
async fn every_collection_is_listed_by_name_with_its_count() {
    let app = spawn_app().await;
    assert_eq!(collections(&app).await, json!([]));
    fill(&app, "b-coll", 3).await;
    fill(&app, "a_coll", 2).await;
    fill(&app, "Zeta", 120).await;
    app.post_api(json!({"id": 1, "data": "legacy"})).await;
    fill(&app, "emptied", 2).await;
    app.delete_doc("emptied", "emptied-0").await;
    app.delete_doc("emptied", "emptied-1").await;
    // A replaced document still counts once.
    app.put_doc("a_coll", "a_coll-0", &json!("again")).await;

    assert_eq!(
        collections(&app).await,
        json!([
            {"name": "Zeta", "documents": 120},
            {"name": "a_coll", "documents": 2},
            {"name": "b-coll", "documents": 3},
            {"name": "default", "documents": 1},
        ])
    );
}

#[tokio::test]
async fn a_drop_needs_the_name_repeated() {
    let app = spawn_app().await;
    fill(&app, "precious", 5).await;
    for path in [
        "/v1/collections/precious",
        "/v1/collections/precious?confirm=",
        "/v1/collections/precious?confirm=other",
        "/v1/collections/precious?confirm=PRECIOUS",
        "/v1/collections/precious?confirm=precious%20",
    ] {
        let resp = drop_collection(&app, path).await;
        assert_eq!(resp.status(), 400, "{path}");
        let problem = json(resp).await;
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("confirm=precious")),
            "says how to confirm: {problem}"
        );
    }
    assert_eq!(collections(&app).await, json!([{"name": "precious", "documents": 5}]));
    assert_eq!(app.get_doc("precious", "precious-4").await.status(), 200);
}

#[tokio::test]
async fn a_confirmed_drop_deletes_that_collection_only() {
    let app = spawn_app().await;
    fill(&app, "doomed", 250).await;
    fill(&app, "kept", 10).await;
    // Read some into the cache first: the drop must not leave them there.
    for i in 0..5 {
        assert_eq!(app.get_doc("doomed", &format!("doomed-{i}")).await.status(), 200);
    }

    let resp = drop_collection(&app, "/v1/collections/doomed?confirm=doomed").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await, json!({"collection": "doomed", "deleted": 250}));

    for i in 0..250 {
        let resp = app.get_doc("doomed", &format!("doomed-{i}")).await;
        assert_eq!(resp.status(), 404, "doomed-{i}");
    }
    let listing = json(app.get("/v1/collections/doomed/docs").await).await;
    assert_eq!(listing["items"], json!([]));
    assert_eq!(collections(&app).await, json!([{"name": "kept", "documents": 10}]));
    for i in 0..10 {
        assert_eq!(json(app.get_doc("kept", &format!("kept-{i}")).await).await["data"], i);
    }

    // The name can be used again, from version 1.
    let resp = app.put_doc("doomed", "doomed-0", &json!("reborn")).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(json(resp).await["version"], 1);

    // Dropping what does not exist deletes nothing.
    let resp = drop_collection(&app, "/v1/collections/never?confirm=never").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await, json!({"collection": "never", "deleted": 0}));
}

#[tokio::test]
async fn a_large_collection_is_dropped_whole_and_its_rows_leave_the_disk() {
    // More documents than one delete chunk (5000) per shard.
    const DOCS: usize = 24_000;
    let app = spawn_app().await;
    let mut lines = String::new();
    for i in 0..DOCS {
        lines.push_str(&format!("{{\"id\": \"d{i}\", \"data\": {i}}}\n"));
    }
    let resp = send(
        app.request(Method::POST, "/v1/collections/huge/import")
            .header("content-type", "application/x-ndjson")
            .body(lines),
    )
    .await;
    assert_eq!(json(resp).await["imported"], DOCS);
    fill(&app, "small", 3).await;
    let per_shard = rows_on_disk(&app.data_dir, "huge").await;
    assert!(per_shard.iter().all(|&n| n > 5000), "{per_shard:?}");

    let resp = drop_collection(&app, "/v1/collections/huge?confirm=huge").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await, json!({"collection": "huge", "deleted": DOCS}));
    assert_eq!(rows_on_disk(&app.data_dir, "huge").await, vec![0, 0, 0, 0]);
    assert_eq!(rows_on_disk(&app.data_dir, "small").await.iter().sum::<i64>(), 3);
    assert_eq!(collections(&app).await, json!([{"name": "small", "documents": 3}]));
}

#[tokio::test]
async fn a_key_limited_to_some_collections_lists_and_counts_those_alone() {
    let keys = "admin:0123456789abcdef-admin;read:0123456789abcdef-reader:users,logs";
    let served = crate::helpers::spawn_app_with(&[("EXDAAS_API_KEYS", keys)]).await;
    let app = &served;
    let put = |collection: &str, id: &str, ttl: &str| {
        app.request(Method::PUT, &format!("/v1/collections/{collection}/docs/{id}{ttl}"))
            .bearer_auth("0123456789abcdef-admin")
            .json(&json!({}))
            .send()
    };
    for i in 0..3 {
        assert_eq!(put("users", &format!("u{i}"), "").await.expect("put").status(), 201);
        assert_eq!(put("orders", &format!("o{i}"), "").await.expect("put").status(), 201);
    }
    assert_eq!(put("users", "brief", "?ttl=1").await.expect("put").status(), 201);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let list = |key: &'static str| async move {
        let resp = send(app.request(Method::GET, "/v1/collections").bearer_auth(key)).await;
        assert_eq!(resp.status(), 200);
        json(resp).await["collections"].clone()
    };
    // Its own collections, live documents only; no word of the others.
    assert_eq!(
        list("0123456789abcdef-reader").await,
        json!([{"name": "users", "documents": 3}])
    );
    let everything = json!([{"name": "orders", "documents": 3}, {"name": "users", "documents": 3}]);
    // Many at once share counts, and each sees what was written before it.
    let all = futures_util::future::join_all((0..20).map(|_| list("0123456789abcdef-admin"))).await;
    assert!(all.iter().all(|listed| *listed == everything), "{all:?}");
    served.stop().await;
}
