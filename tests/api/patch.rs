//! `PATCH` with a JSON merge patch (RFC 7396): fields merge, `null`
//! removes, and concurrent patches of different fields all land.

use futures_util::future::join_all;
use reqwest::Method;
use serde_json::json;

use crate::helpers::{doc_path, json, send, spawn_app};

#[tokio::test]
async fn a_merge_patch_sets_removes_and_merges_nested_fields() {
    let app = spawn_app().await;
    app.put_doc(
        "users",
        "alice",
        &json!({"name": "Alice", "nick": "al", "address": {"city": "Oslo", "zip": "0150"}, "tags": ["a", "b"]}),
    )
    .await;

    let resp = app
        .patch_doc(
            "users",
            "alice",
            &json!({"nick": null, "address": {"zip": null, "street": "Main 1"}, "tags": ["c"], "age": 30}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["etag"], "\"2\"");
    let patched = json(resp).await;
    let expected = json!({"name": "Alice", "address": {"city": "Oslo", "street": "Main 1"}, "tags": ["c"], "age": 30});
    assert_eq!(patched["collection"], "users");
    assert_eq!(patched["id"], "alice");
    assert_eq!(patched["version"], 2);
    assert_eq!(patched["expires_at"], json!(null));
    assert!(patched["updated_at"].is_string(), "{patched}");
    assert_eq!(patched["data"], expected);

    let stored = json(app.get_doc("users", "alice").await).await;
    assert_eq!(
        (stored["version"].clone(), stored["data"].clone()),
        (json!(2), expected)
    );
}

#[tokio::test]
async fn a_patch_that_changes_nothing_keeps_the_version() {
    let app = spawn_app().await;
    app.put_doc("c", "a", &json!({"x": 1})).await;
    let resp = app.patch_doc("c", "a", &json!({"x": 1, "gone": null})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["etag"], "\"1\"");
    assert_eq!(json(resp).await["version"], 1);
}

#[tokio::test]
async fn a_patch_that_is_not_an_object_replaces_the_document() {
    let app = spawn_app().await;
    app.put_doc("c", "a", &json!({"x": 1})).await;
    let resp = app.patch_doc("c", "a", &json!(["whole"])).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["data"], json!(["whole"]));
}

#[tokio::test]
async fn only_merge_patch_bodies_are_accepted() {
    let app = spawn_app().await;
    app.put_doc("c", "a", &json!({"x": 1})).await;
    for content_type in ["application/json-patch+json", "application/json", "text/plain"] {
        let resp = send(
            app.request(Method::PATCH, &doc_path("c", "a"))
                .header("content-type", content_type)
                .body(r#"[{"op": "replace", "path": "/x", "value": 2}]"#),
        )
        .await;
        assert_eq!(resp.status(), 415, "{content_type}");
        assert_eq!(json(resp).await["status"], 415, "{content_type}");
    }
    let resp = send(
        app.request(Method::PATCH, &doc_path("c", "a"))
            .header("content-type", "application/merge-patch+json")
            .body("{not json"),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let doc = json(app.get_doc("c", "a").await).await;
    assert_eq!(
        (doc["version"].clone(), doc["data"].clone()),
        (json!(1), json!({"x": 1}))
    );
}

#[tokio::test]
async fn patching_a_missing_document_is_404_and_creates_nothing() {
    let app = spawn_app().await;
    let resp = app.patch_doc("c", "nobody", &json!({"x": 1})).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert_eq!(json(resp).await["status"], 404);
    assert_eq!(app.get_doc("c", "nobody").await.status(), 404);

    // Nor does a deleted one come back through a patch.
    app.put_doc("c", "gone", &json!({})).await;
    app.delete_doc("c", "gone").await;
    assert_eq!(app.patch_doc("c", "gone", &json!({"x": 1})).await.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_of_different_fields_all_land() {
    const PATCHES: usize = 50;
    let app = spawn_app().await;
    app.put_doc("c", "shared", &json!({"start": true})).await;

    let patches: Vec<_> = (0..PATCHES).map(|i| json!({ format!("f{i}"): i })).collect();
    let answers = join_all(patches.iter().map(|patch| app.patch_doc("c", "shared", patch))).await;
    let mut versions = Vec::new();
    for (i, resp) in answers.into_iter().enumerate() {
        assert_eq!(resp.status(), 200, "patch {i}");
        versions.push(json(resp).await["version"].as_u64().expect("version"));
    }
    // Each patch saw its own version: they were applied one after another.
    versions.sort_unstable();
    assert_eq!(versions, (2..=PATCHES as u64 + 1).collect::<Vec<_>>());

    let doc = json(app.get_doc("c", "shared").await).await;
    assert_eq!(doc["version"], PATCHES as u64 + 1);
    let mut expected = serde_json::Map::new();
    expected.insert("start".into(), json!(true));
    for i in 0..PATCHES {
        expected.insert(format!("f{i}"), json!(i));
    }
    assert_eq!(doc["data"], serde_json::Value::Object(expected));
}
