//! What a hostile or careless client sends: nothing of it takes the server
//! down, breaks it for others, or grows its state without bound. Each answer
//! is a clear 4xx, and the server serves on.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{json, merge_patch, send, spawn_app, TestApp};

const FORM: &str = "application/x-www-form-urlencoded";

/// The deepest a document may nest (see `exdaas::domain::MAX_DEPTH`).
const MAX_DEPTH: usize = exdaas::domain::MAX_DEPTH;

async fn post_form(app: &TestApp, body: String) -> reqwest::Response {
    send(
        app.request(Method::POST, "/api")
            .header("content-type", FORM)
            .body(body),
    )
    .await
}

/// `levels` nested one-element arrays around a string.
fn nested_json(levels: usize) -> String {
    format!("{}\"x\"{}", "[".repeat(levels), "]".repeat(levels))
}

async fn still_serving(app: &TestApp) {
    let resp = app.post_api(json!({"id": 1, "data": {"alive": true}})).await;
    assert_eq!(resp.status(), 200, "the server still serves writes");
    assert_eq!(json(app.get_api("1").await).await["data"], json!({"alive": true}));
}

#[tokio::test]
async fn a_form_nested_a_hundred_thousand_levels_deep_is_refused_and_the_server_lives() {
    let app = spawn_app().await;
    // About 300 KB, under the body limit: it used to overflow the stack.
    let body = format!("id=1&data{}=x", "[a]".repeat(100_000));
    let resp = post_form(&app, body).await;
    assert_eq!(resp.status(), 400);
    let message = json(resp).await["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("levels of brackets"), "{message}");
    assert!(
        message.len() < 400,
        "the error quotes the key cut short: {} bytes",
        message.len()
    );
    still_serving(&app).await;
}

#[tokio::test]
async fn a_deep_form_document_is_refused_and_one_at_the_limit_stays_readable() {
    let app = spawn_app().await;
    let resp = post_form(&app, format!("id=7&data{}=x", "[a]".repeat(300))).await;
    assert_eq!(resp.status(), 400, "300 levels is past the limit");
    assert_eq!(
        json(app.get_api("7").await).await["data"],
        json!(null),
        "nothing stored"
    );

    // At the limit: stored, and every reader of it answers.
    let resp = post_form(&app, format!("id=8&data[keep]=1&data{}=x", "[a]".repeat(MAX_DEPTH))).await;
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    let resp = app
        .get("/api/cmd?id=8&cmd%5Bquery%5D=ONLY&cmd%5Bkeys%5D%5B%5D=keep")
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await, json!({"values": ["1"]}));
    let resp = app.patch_doc("default", "8", &json!({"more": true})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["data"]["more"], json!(true));
    let resp = app.get_doc("default", "8").await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn every_write_path_refuses_documents_past_the_depth_limit() {
    let app = spawn_app().await;
    let too_deep: Value = serde_json::from_str(&nested_json(MAX_DEPTH + 1)).expect("serde reads 101 levels");
    let at_limit: Value = serde_json::from_str(&nested_json(MAX_DEPTH)).expect("parses");

    // v1 put and create.
    assert_eq!(app.put_doc("c", "deep", &too_deep).await.status(), 400);
    assert_eq!(app.put_doc("c", "ok", &at_limit).await.status(), 201);
    assert_eq!(app.post_json("/v1/collections/c/docs", &too_deep).await.status(), 400);
    // The original API, JSON.
    assert_eq!(app.post_api(json!({"id": 9, "data": too_deep})).await.status(), 400);
    assert_eq!(app.post_api(json!({"id": null, "data": too_deep})).await.status(), 400);
    // A merge patch.
    assert_eq!(app.patch_doc("c", "ok", &json!({"a": too_deep})).await.status(), 400);
    // A batch: the operation fails alone.
    let resp = app
        .batch(
            "c",
            json!([{"op": "put", "id": "b", "data": too_deep}, {"op": "put", "id": "b2", "data": 1}]),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let results = json(resp).await["results"].clone();
    assert_eq!(
        (results[0]["status"].clone(), results[1]["status"].clone()),
        (json!(400), json!(201))
    );
    // An import line.
    let body = format!(
        "{{\"id\": \"i\", \"data\": {}}}\n{{\"id\": \"j\", \"data\": 2}}\n",
        nested_json(MAX_DEPTH + 1)
    );
    let resp = send(
        app.request(Method::POST, "/v1/collections/c/import")
            .header("content-type", "application/x-ndjson")
            .body(body),
    )
    .await;
    let report = json(resp).await;
    assert_eq!(
        (report["imported"].clone(), report["rejected_count"].clone()),
        (json!(1), json!(1)),
        "{report}"
    );

    // Bodies deeper than any parser reads get a 400 that says why.
    let resp = send(
        app.request(Method::PUT, "/v1/collections/c/docs/deeper")
            .header("content-type", "application/json")
            .body(nested_json(100_000)),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let detail = json(resp).await["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.contains("nests more than"), "{detail}");
    let resp = send(
        merge_patch(app.request(Method::PATCH, "/v1/collections/c/docs/ok"), &json!(null)).body(nested_json(5000)),
    )
    .await;
    assert_eq!(resp.status(), 400);
    still_serving(&app).await;
}
