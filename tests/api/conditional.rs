//! Conditional requests: the `ETag` is the version, `If-Match` and
//! `If-None-Match` guard writes (412) and reads (304).

use futures_util::future::join_all;
use reqwest::{Method, Response};
use serde_json::{json, Value};

use crate::helpers::{doc_path, json, merge_patch, send, spawn_app, ServerProcess, TestApp};

async fn put_with(app: &TestApp, id: &str, header: (&str, &str), body: &Value) -> Response {
    send(
        app.request(Method::PUT, &doc_path("c", id))
            .header(header.0, header.1)
            .json(body),
    )
    .await
}

/// A 412 answered as a problem document.
async fn assert_precondition_failed(resp: Response, what: &str) {
    assert_eq!(resp.status(), 412, "{what}");
    assert_eq!(resp.headers()["content-type"], "application/problem+json", "{what}");
    let problem = json(resp).await;
    assert_eq!(problem["status"], 412, "{what}: {problem}");
    assert!(problem["detail"].is_string(), "{what}: {problem}");
}

/// The document's version and data, read back.
async fn stored(app: &TestApp, id: &str) -> (Value, Value) {
    let doc = json(app.get_doc("c", id).await).await;
    (doc["version"].clone(), doc["data"].clone())
}

#[tokio::test]
async fn every_document_answer_carries_the_version_as_etag() {
    let app = spawn_app().await;
    let resp = app.put_doc("c", "a", &json!({"n": 1})).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["etag"], "\"1\"");
    assert_eq!(json(resp).await["version"], 1);

    let resp = app.put_doc("c", "a", &json!({"n": 2})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["etag"], "\"2\"");

    // A put of equal data changes nothing, and says so with the same tag.
    let resp = app.put_doc("c", "a", &json!({"n": 2})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["etag"], "\"2\"");

    let resp = app.patch_doc("c", "a", &json!({"m": true})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["etag"], "\"3\"");
    assert_eq!(json(resp).await["version"], 3);

    let resp = app.get_doc("c", "a").await;
    assert_eq!(resp.headers()["etag"], "\"3\"");

    let resp = app.post_json("/v1/collections/c/docs", &json!("fresh")).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["etag"], "\"1\"");
}

#[tokio::test]
async fn if_match_replaces_only_the_named_version() {
    let app = spawn_app().await;
    app.put_doc("c", "a", &json!({"n": 1})).await;

    let resp = put_with(&app, "a", ("if-match", "\"1\""), &json!({"n": 2})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["etag"], "\"2\"");
    assert_eq!(json(resp).await["data"], json!({"n": 2}));

    // Version 1 is gone now: a client still holding it is refused.
    let resp = put_with(&app, "a", ("if-match", "\"1\""), &json!({"n": 3})).await;
    assert_precondition_failed(resp, "stale If-Match").await;
    let resp = put_with(&app, "a", ("if-match", "\"99\""), &json!({"n": 3})).await;
    assert_precondition_failed(resp, "future If-Match").await;
    // If-Match compares strongly: a weak tag never matches.
    let resp = put_with(&app, "a", ("if-match", "W/\"2\""), &json!({"n": 3})).await;
    assert_precondition_failed(resp, "weak If-Match").await;
    assert_eq!(stored(&app, "a").await, (json!(2), json!({"n": 2})));

    // Any of a list of tags, or `*` for whatever exists.
    let resp = put_with(&app, "a", ("if-match", "\"7\", \"2\""), &json!({"n": 3})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["etag"], "\"3\"");
    let resp = put_with(&app, "a", ("if-match", "*"), &json!({"n": 4})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(stored(&app, "a").await, (json!(4), json!({"n": 4})));
}

#[tokio::test]
async fn if_match_star_on_a_missing_document_is_refused() {
    let app = spawn_app().await;
    let resp = put_with(&app, "ghost", ("if-match", "*"), &json!(1)).await;
    assert_precondition_failed(resp, "If-Match: * on a missing document").await;
    let resp = put_with(&app, "ghost", ("if-match", "\"1\""), &json!(1)).await;
    assert_precondition_failed(resp, "If-Match: \"1\" on a missing document").await;
    assert_eq!(app.get_doc("c", "ghost").await.status(), 404);
}

#[tokio::test]
async fn if_none_match_star_only_creates() {
    let app = spawn_app().await;
    let resp = put_with(&app, "once", ("if-none-match", "*"), &json!({"first": true})).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["etag"], "\"1\"");

    let resp = put_with(&app, "once", ("if-none-match", "*"), &json!({"second": true})).await;
    assert_precondition_failed(resp, "second create-only put").await;
    // Even a put of the very same data is refused: the document exists.
    let resp = put_with(&app, "once", ("if-none-match", "*"), &json!({"first": true})).await;
    assert_precondition_failed(resp, "create-only put of equal data").await;
    assert_eq!(stored(&app, "once").await, (json!(1), json!({"first": true})));
}

#[tokio::test]
async fn put_with_both_conditions_fails_them_and_refuses_a_tag_in_if_none_match() {
    let app = spawn_app().await;
    app.put_doc("c", "a", &json!(1)).await;
    // RFC 9110 13.2.2: If-Match first; a document that passes it exists, so
    // If-None-Match: * then fails. No document passes both.
    let resp = send(
        app.request(Method::PUT, &doc_path("c", "a"))
            .header("if-match", "\"1\"")
            .header("if-none-match", "*")
            .json(&json!(2)),
    )
    .await;
    assert_eq!(resp.status(), 412);
    let resp = put_with(&app, "a", ("if-none-match", "\"1\""), &json!(2)).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(stored(&app, "a").await, (json!(1), json!(1)));
}

#[tokio::test]
async fn a_stale_if_match_leaves_patch_and_delete_undone() {
    let app = spawn_app().await;
    app.put_doc("c", "a", &json!({"n": 1})).await;
    app.put_doc("c", "a", &json!({"n": 2})).await;

    let resp = send(merge_patch(
        app.request(Method::PATCH, &doc_path("c", "a"))
            .header("if-match", "\"1\""),
        &json!({"n": 3}),
    ))
    .await;
    assert_precondition_failed(resp, "stale PATCH").await;
    let resp = send(
        app.request(Method::DELETE, &doc_path("c", "a"))
            .header("if-match", "\"1\""),
    )
    .await;
    assert_precondition_failed(resp, "stale DELETE").await;
    assert_eq!(stored(&app, "a").await, (json!(2), json!({"n": 2})));

    // With the current version both go through.
    let resp = send(merge_patch(
        app.request(Method::PATCH, &doc_path("c", "a"))
            .header("if-match", "\"2\""),
        &json!({"n": 3}),
    ))
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["etag"], "\"3\"");
    let resp = send(
        app.request(Method::DELETE, &doc_path("c", "a"))
            .header("if-match", "\"3\""),
    )
    .await;
    assert_eq!(resp.status(), 204);
    assert_eq!(app.get_doc("c", "a").await.status(), 404);

    // On a document that does not exist, the precondition fails first.
    let resp = send(
        app.request(Method::DELETE, &doc_path("c", "a"))
            .header("if-match", "\"3\""),
    )
    .await;
    assert_precondition_failed(resp, "DELETE with If-Match of a missing document").await;
}

#[tokio::test]
async fn if_none_match_on_get_answers_304_while_unchanged() {
    let app = spawn_app().await;
    app.put_doc("c", "a", &json!({"n": 1})).await;
    app.put_doc("c", "a", &json!({"n": 2})).await;
    let get_with = |tags: &'static str| {
        send(
            app.request(Method::GET, &doc_path("c", "a"))
                .header("if-none-match", tags),
        )
    };

    for tags in ["\"2\"", "W/\"2\"", "\"1\", \"2\"", "*"] {
        let resp = get_with(tags).await;
        assert_eq!(resp.status(), 304, "If-None-Match: {tags}");
        assert_eq!(resp.headers()["etag"], "\"2\"", "If-None-Match: {tags}");
        assert!(resp.bytes().await.expect("body").is_empty(), "a 304 has no body");
    }

    for tags in ["\"1\"", "\"3\"", "\"x\""] {
        let resp = get_with(tags).await;
        assert_eq!(resp.status(), 200, "If-None-Match: {tags}");
        assert_eq!(resp.headers()["etag"], "\"2\"");
        assert_eq!(json(resp).await["data"], json!({"n": 2}));
    }

    // After a change, the tag the client holds no longer matches.
    app.patch_doc("c", "a", &json!({"n": 3})).await;
    let resp = get_with("\"2\"").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["etag"], "\"3\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_racing_create_only_puts_exactly_one_wins() {
    const RACERS: usize = 20;
    let app = spawn_app().await;
    let bodies: Vec<Value> = (0..RACERS).map(|i| json!({"racer": i})).collect();
    let answers = join_all(
        bodies
            .iter()
            .map(|body| put_with(&app, "prize", ("if-none-match", "*"), body)),
    )
    .await;
    let mut winners = Vec::new();
    for (i, resp) in answers.into_iter().enumerate() {
        match resp.status().as_u16() {
            201 => winners.push(i),
            412 => {}
            other => panic!("racer {i}: {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    assert_eq!(stored(&app, "prize").await, (json!(1), json!({"racer": winners[0]})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_racing_puts_with_the_same_if_match_exactly_one_wins() {
    const RACERS: usize = 20;
    let app = spawn_app().await;
    app.put_doc("c", "counter", &json!({"n": 0})).await;
    let bodies: Vec<Value> = (1..=RACERS).map(|i| json!({"n": i})).collect();
    let answers = join_all(
        bodies
            .iter()
            .map(|body| put_with(&app, "counter", ("if-match", "\"1\""), body)),
    )
    .await;
    let mut winners = Vec::new();
    for (i, resp) in answers.into_iter().enumerate() {
        match resp.status().as_u16() {
            200 => winners.push(i + 1),
            412 => {}
            other => panic!("racer {i}: {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "a compare-and-swap has one winner: {winners:?}");
    assert_eq!(stored(&app, "counter").await, (json!(2), json!({"n": winners[0]})));
}

#[tokio::test]
async fn create_only_never_overwrites_after_a_crash() {
    let folder = tempfile::tempdir().expect("temp dir");
    let path = doc_path("c", "18446744073709551615");
    let client = reqwest::Client::new();
    let mut server = ServerProcess::start(folder.path(), &[]).await;
    let resp = client
        .put(server.url(&path))
        .json(&json!("original"))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 201);
    server.signal("KILL");
    server.wait().await;

    let server = ServerProcess::start(folder.path(), &[]).await;
    let resp = client
        .put(server.url(&path))
        .header("if-none-match", "*")
        .json(&json!("intruder"))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 412, "the document exists");
    let resp = client.get(server.url(&path)).send().await.expect("sent");
    assert_eq!(json(resp).await["data"], "original");
}
