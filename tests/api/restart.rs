//! A restart on the same folder finds every document and the id counter, and
//! a different SHARD_LIMIT is refused instead of hiding documents.

use exdaas::app::BootError;
use exdaas::Application;
use serde_json::json;

use crate::helpers::{json, spawn_app_on, test_settings, ServerProcess};

#[tokio::test]
async fn documents_and_the_counter_survive_a_restart() {
    let folder = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(folder.path(), &[]).await;
    let mut legacy = Vec::new();
    for i in 0..50 {
        let body = json(app.post_api(json!({"id": null, "data": {"i": i}})).await).await;
        legacy.push(body);
    }
    app.put_doc("users", "alice", &json!({"name": "Alice"})).await;
    app.put_doc("users", "alice", &json!({"name": "Alice", "v": 2})).await;
    // The highest id anyone used is a client's: the counter must pass it.
    app.put_doc("things", "500", &json!("client chose 500")).await;
    app.stop().await;

    let app = spawn_app_on(folder.path(), &[]).await;
    for body in &legacy {
        let id = body["id"].to_string();
        assert_eq!(&json(app.get_api(&id).await).await, body);
    }
    let alice = json(app.get_doc("users", "alice").await).await;
    assert_eq!(
        (alice["version"].clone(), alice["data"].clone()),
        (json!(2), json!({"name": "Alice", "v": 2}))
    );

    let next = json(app.post_api(json!({"id": null, "data": {}})).await).await;
    assert_eq!(next["id"], 501, "the counter restarts past every id used");
    app.stop().await;
}

#[tokio::test]
async fn a_different_shard_limit_is_refused() {
    let folder = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(folder.path(), &[("SHARD_LIMIT", "4")]).await;
    app.post_api(json!({"id": 1, "data": {}})).await;
    app.stop().await;

    let refused = Application::build(test_settings(folder.path(), &[("SHARD_LIMIT", "8")])).await;
    match refused {
        Err(err @ BootError::Store(_)) => {
            let message = err.to_string();
            assert!(
                message.contains("SHARD_LIMIT=4") && message.contains("SHARD_LIMIT=8"),
                "{message}"
            );
            assert_eq!(err.exit_code(), 2);
        }
        Err(other) => panic!("refused for the wrong reason: {other}"),
        Ok(_) => panic!("a different SHARD_LIMIT must be refused"),
    }

    // The original count still opens, with the data.
    let app = spawn_app_on(folder.path(), &[("SHARD_LIMIT", "4")]).await;
    assert_eq!(json(app.get_api("1").await).await["data"], json!({}));
    app.stop().await;
}

#[tokio::test]
async fn the_cache_is_warm_after_a_restart() {
    let folder = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(folder.path(), &[]).await;
    for i in 0..20 {
        app.put_doc("warm", &i.to_string(), &json!({"i": i})).await;
    }
    app.stop().await;
    let app = spawn_app_on(folder.path(), &[]).await;
    let (entries, _) = app.store.cache_usage().await;
    assert_eq!(entries, 20, "every document fits, so every document is cached at boot");
    app.stop().await;
}

/// When the documents outgrow the cache, the boot warms it with the most
/// recently changed ones, whatever their ids, and stays within its size.
#[tokio::test]
async fn a_cache_too_small_for_everything_is_warmed_with_the_newest_documents() {
    let folder = tempfile::tempdir().expect("temp dir");
    // 1 MiB of cache, and one shard, so the whole budget meets both writes.
    let settings = [("EXDAAS_CACHE_MIB", "1"), ("SHARD_LIMIT", "1")];
    let app = spawn_app_on(folder.path(), &settings).await;
    // First 500 documents of 1.5 KiB (more than the cache holds), whose ids
    // sort before the newer ones: a warm-up that took ids in order, not by
    // time, would fill the cache with these.
    let filler = "x".repeat(1500);
    let old: Vec<_> = (0..500)
        .map(|i| json!({"op": "put", "id": format!("a{i:04}"), "data": {"fill": filler}}))
        .collect();
    assert_eq!(app.batch("warm", json!(old)).await.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let new: Vec<_> = (0..200)
        .map(|i| json!({"op": "put", "id": format!("b{i:04}"), "data": {"i": i}}))
        .collect();
    assert_eq!(app.batch("warm", json!(new)).await.status(), 200);
    app.stop().await;

    let app = spawn_app_on(folder.path(), &settings).await;
    let (entries, bytes) = app.store.cache_usage().await;
    assert!(bytes <= 1 << 20, "the warm-up filled {bytes} bytes of a 1 MiB cache");
    assert!(
        (300..700).contains(&entries),
        "{entries} documents warmed: the 200 new ones and the old ones that fit beside them"
    );
    for i in 0..200 {
        assert_eq!(app.get_doc("warm", &format!("b{i:04}")).await.status(), 200);
    }
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    let misses = metrics
        .lines()
        .find_map(|l| l.strip_prefix("exdaas_cache_misses_total "))
        .expect("the cache's misses are counted");
    assert_eq!(misses.trim(), "0", "every new document was read from the warmed cache");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_never_reused_after_a_crash() {
    let folder = tempfile::tempdir().expect("temp dir");
    let client = reqwest::Client::new();
    let mut highest = 0;
    for round in 0..3 {
        let mut server = ServerProcess::start(folder.path(), &[]).await;
        let mut ids = Vec::new();
        for i in 0..40 {
            let resp = client
                .post(server.url("/api"))
                .json(&json!({"id": null, "data": {"round": round, "i": i}}))
                .send()
                .await
                .expect("request sent");
            assert_eq!(resp.status(), 200);
            ids.push(json(resp).await["id"].as_u64().expect("an integer id"));
        }
        assert!(
            ids.iter().all(|&id| id > highest),
            "round {round}: ids {ids:?} reuse one at or below {highest}, handed out before the crash"
        );
        highest = ids.iter().copied().max().unwrap_or(highest);
        server.signal("KILL");
        server.wait().await;
    }
    // Everything acknowledged before each kill is still there.
    let app = spawn_app_on(folder.path(), &[]).await;
    let last = json(app.get_api(&highest.to_string()).await).await;
    assert_eq!(last["data"], json!({"round": 2, "i": 39}));
    app.stop().await;
}

/// A commit that deletes one document and stores a numeric id raises the
/// shard's id bounds like any other: after a crash, fresh ids still know the
/// id is taken and never overwrite it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_with_deletes_still_records_its_ids_across_a_crash() {
    let folder = tempfile::tempdir().expect("temp dir");
    let client = reqwest::Client::new();
    // One shard, so the delete and the put share a commit.
    let one_shard = [("SHARD_LIMIT", "1")];
    let mut server = ServerProcess::start(folder.path(), &one_shard).await;
    let put = client
        .put(server.url("/v1/collections/default/docs/gone"))
        .json(&json!("soon deleted"))
        .send()
        .await
        .expect("request sent");
    assert_eq!(put.status(), 201);
    let batch = client
        .post(server.url("/v1/collections/default/batch"))
        .json(&json!({"ops": [
            {"op": "delete", "id": "gone"},
            {"op": "put", "id": "20", "data": "client"},
        ]}))
        .send()
        .await
        .expect("request sent");
    assert_eq!(json(batch).await["results"][1]["status"], json!(201));
    server.signal("KILL");
    server.wait().await;

    let app = spawn_app_on(folder.path(), &one_shard).await;
    for _ in 0..25 {
        let resp = app.post_api(json!({"id": null, "data": "anonymous"})).await;
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(json(app.get_api("20").await).await["data"], json!("client"));
    app.stop().await;
}
