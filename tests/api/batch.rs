//! `POST /v1/collections/{c}/batch`: a list of operations, each answered
//! with its own status; a failed one fails alone.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{json, send, spawn_app};

/// The `status` of each result.
fn statuses(results: &[Value]) -> Vec<u64> {
    results
        .iter()
        .map(|r| r["status"].as_u64().unwrap_or_else(|| panic!("no status: {r}")))
        .collect()
}

#[tokio::test]
async fn each_operation_gets_its_own_status_and_a_failed_one_fails_alone() {
    let app = spawn_app().await;
    app.put_doc("c", "old", &json!({"n": 1})).await;
    app.put_doc("c", "doomed", &json!("bye")).await;
    app.put_doc("c", "guarded", &json!({"v": 1})).await;
    app.put_doc("c", "guarded", &json!({"v": 2})).await;

    let resp = app
        .batch(
            "c",
            json!([
                {"op": "put", "id": "new", "data": {"fresh": true}},
                {"op": "put", "id": "old", "data": {"n": 2}},
                {"op": "patch", "id": "old", "data": {"m": 3}},
                {"op": "delete", "id": "doomed"},
                {"op": "get", "id": "missing"},
                {"op": "put", "id": "bad id", "data": 1},
                {"op": "patch", "id": "guarded", "data": {"v": 99}, "expected_version": 1},
                {"op": "get", "id": "guarded"},
                {"op": "delete", "id": "missing"},
                {"op": "patch", "id": "missing", "data": {"x": 1}},
                {"op": "put", "id": "x", "data": 1, "ttl": 0},
                {"op": "put", "id": "x"},
                {"op": "get", "id": "old", "data": 1},
            ]),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json; charset=utf-8");
    let body = json(resp).await;
    let results = body["results"].as_array().expect("results");
    assert_eq!(
        statuses(results),
        vec![201, 200, 200, 204, 404, 400, 412, 200, 404, 404, 400, 400, 400],
        "{body}"
    );

    assert_eq!(results[0]["doc"]["id"], "new");
    assert_eq!(results[0]["doc"]["version"], 1);
    assert_eq!(results[0]["doc"]["data"], json!({"fresh": true}));
    assert_eq!(results[1]["doc"]["version"], 2);
    // The patch sees the put before it.
    assert_eq!(results[2]["doc"]["version"], 3);
    assert_eq!(results[2]["doc"]["data"], json!({"n": 2, "m": 3}));
    assert!(results[3].get("doc").is_none_or(Value::is_null), "{}", results[3]);
    for i in [4, 5, 6, 8, 9, 10, 11, 12] {
        assert!(
            results[i]["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "result {i}: {}",
            results[i]
        );
    }
    assert!(
        results[6]["detail"].as_str().is_some_and(|d| d.contains('2')),
        "names the current version"
    );
    assert_eq!(
        results[7]["doc"]["data"],
        json!({"v": 2}),
        "the failed patch changed nothing"
    );

    // What the answers say is what is stored.
    let old = json(app.get_doc("c", "old").await).await;
    assert_eq!(
        (old["version"].clone(), old["data"].clone()),
        (json!(3), json!({"n": 2, "m": 3}))
    );
    assert_eq!(
        json(app.get_doc("c", "new").await).await["data"],
        json!({"fresh": true})
    );
    assert_eq!(app.get_doc("c", "doomed").await.status(), 404);
    assert_eq!(json(app.get_doc("c", "guarded").await).await["version"], 2);
    assert_eq!(app.get_doc("c", "x").await.status(), 404);
    assert_eq!(app.get_doc("c", "missing").await.status(), 404);
}

#[tokio::test]
async fn a_get_sees_the_operations_before_it_in_the_same_batch() {
    let app = spawn_app().await;
    let resp = app
        .batch(
            "c",
            json!([
                {"op": "get", "id": "a"},
                {"op": "put", "id": "a", "data": {"n": 1}},
                {"op": "get", "id": "a"},
                {"op": "patch", "id": "a", "data": {"m": 2}},
                {"op": "get", "id": "a"},
                {"op": "delete", "id": "a"},
                {"op": "get", "id": "a"},
                {"op": "put", "id": "a", "data": "again"},
                {"op": "get", "id": "a"},
            ]),
        )
        .await;
    let body = json(resp).await;
    let results = body["results"].as_array().expect("results");
    assert_eq!(
        statuses(results),
        vec![404, 201, 200, 200, 200, 204, 404, 201, 200],
        "{body}"
    );
    assert_eq!(results[2]["doc"]["data"], json!({"n": 1}));
    assert_eq!(results[4]["doc"]["data"], json!({"n": 1, "m": 2}));
    assert_eq!(results[4]["doc"]["version"], 2);
    assert_eq!(results[8]["doc"]["data"], "again");
    assert_eq!(results[8]["doc"]["version"], 1);
    assert_eq!(json(app.get_doc("c", "a").await).await["data"], "again");
}

#[tokio::test]
async fn expected_version_0_only_creates() {
    let app = spawn_app().await;
    app.put_doc("c", "taken", &json!("mine")).await;
    let resp = app
        .batch(
            "c",
            json!([
                {"op": "put", "id": "free", "data": 1, "expected_version": 0},
                {"op": "put", "id": "free", "data": 2, "expected_version": 0},
                {"op": "put", "id": "taken", "data": "yours", "expected_version": 0},
                {"op": "put", "id": "taken", "data": "yours", "expected_version": 1},
                {"op": "delete", "id": "taken", "expected_version": 1},
            ]),
        )
        .await;
    let body = json(resp).await;
    let results = body["results"].as_array().expect("results");
    assert_eq!(statuses(results), vec![201, 412, 412, 200, 412], "{body}");
    assert_eq!(json(app.get_doc("c", "free").await).await["data"], 1);
    let taken = json(app.get_doc("c", "taken").await).await;
    assert_eq!(
        (taken["version"].clone(), taken["data"].clone()),
        (json!(2), json!("yours"))
    );
}

#[tokio::test]
async fn more_than_1000_operations_are_refused_whole() {
    let app = spawn_app().await;
    let mut ops: Vec<Value> = (0..1001)
        .map(|i| json!({"op": "put", "id": format!("d{i}"), "data": i}))
        .collect();
    let resp = app.batch("c", json!(ops)).await;
    assert_eq!(resp.status(), 400);
    let problem = json(resp).await;
    assert!(
        problem["detail"].as_str().is_some_and(|d| d.contains("1000")),
        "{problem}"
    );
    assert_eq!(app.get_doc("c", "d0").await.status(), 404, "nothing of it was applied");

    ops.pop();
    let resp = app.batch("c", json!(ops)).await;
    assert_eq!(resp.status(), 200, "1000 operations are fine");
    let body = json(resp).await;
    assert!(statuses(body["results"].as_array().expect("results"))
        .iter()
        .all(|&s| s == 201));
    assert_eq!(json(app.get_doc("c", "d999").await).await["data"], 999);
}

#[tokio::test]
async fn a_body_that_is_not_a_batch_is_refused() {
    let app = spawn_app().await;
    for body in [
        json!([{"op": "put", "id": "a", "data": 1}]),
        json!({}),
        json!({"ops": 5}),
        json!({"ops": [{"op": "frobnicate", "id": "a"}]}),
        json!({"ops": [{"op": "put", "data": 1}]}),
    ] {
        let resp = app.post_json("/v1/collections/c/batch", &body).await;
        assert_eq!(resp.status(), 400, "{body}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        assert_eq!(json(resp).await["status"], 400, "{body}");
    }
    let resp = send(
        app.request(Method::POST, "/v1/collections/c/batch")
            .header("content-type", "application/json")
            .body("{\"ops\": ["),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let resp = send(
        app.request(Method::POST, "/v1/collections/c/batch")
            .header("content-type", "text/plain")
            .body("{\"ops\": []}"),
    )
    .await;
    assert_eq!(resp.status(), 415);
    assert_eq!(app.get_doc("c", "a").await.status(), 404);

    let resp = app.batch("c", json!([])).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await, json!({"results": []}));
}
