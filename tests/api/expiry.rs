//! Documents with a time to live: gone for every read from their expiry on,
//! then removed from disk by the background sweeper.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::helpers::{doc_path, json, rows_on_disk, send, spawn_app, TestApp};

fn parse_time(value: &Value) -> OffsetDateTime {
    let text = value.as_str().unwrap_or_else(|| panic!("not a time: {value}"));
    OffsetDateTime::parse(text, &Rfc3339).unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
}

/// Sleeps until `at` has passed (plus a margin for the clock's granularity).
async fn sleep_past(at: OffsetDateTime) {
    let left = at - OffsetDateTime::now_utc() + time::Duration::milliseconds(150);
    if left.is_positive() {
        tokio::time::sleep(Duration::try_from(left).expect("positive")).await;
    }
}

async fn put_with_ttl(app: &TestApp, collection: &str, id: &str, ttl: &str, body: &Value) -> reqwest::Response {
    send(
        app.request(Method::PUT, &format!("{}?ttl={ttl}", doc_path(collection, id)))
            .json(body),
    )
    .await
}

async fn collection_count(app: &TestApp, name: &str) -> Option<u64> {
    let list = json(app.get("/v1/collections").await).await;
    list["collections"]
        .as_array()
        .expect("collections")
        .iter()
        .find(|c| c["name"] == name)
        .map(|c| c["documents"].as_u64().expect("count"))
}

#[tokio::test]
async fn an_expired_document_is_gone_everywhere_then_swept_from_disk() {
    let app = spawn_app().await;
    // The `default` collection, so the original API sees it too.
    let resp = put_with_ttl(&app, "default", "41", "1", &json!({"short": "lived"})).await;
    assert_eq!(resp.status(), 201);
    let doc = json(resp).await;
    let expires_at = parse_time(&doc["expires_at"]);
    let ttl = expires_at - parse_time(&doc["updated_at"]);
    assert!(
        ttl > time::Duration::milliseconds(800) && ttl <= time::Duration::seconds(1),
        "expires_at is a second after the write: {doc}"
    );
    app.put_doc("default", "42", &json!({"stays": true})).await;
    // A collection holding only expiring documents.
    assert_eq!(put_with_ttl(&app, "fleeting", "x", "1", &json!(1)).await.status(), 201);

    // Before its expiry it is there for every reader.
    let resp = app.get_doc("default", "41").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["expires_at"], doc["expires_at"]);
    assert_eq!(json(app.get_api("41").await).await["data"], json!({"short": "lived"}));
    assert_eq!(app.list_all("default").await.len(), 2);
    assert_eq!(collection_count(&app, "default").await, Some(2));
    assert_eq!(collection_count(&app, "fleeting").await, Some(1));

    sleep_past(expires_at).await;

    let resp = app.get_doc("default", "41").await;
    assert_eq!(resp.status(), 404);
    assert_eq!(json(app.get_api("41").await).await, json!({"id": 41, "data": null}));
    let listed: Vec<Value> = app.list_all("default").await.iter().map(|d| d["id"].clone()).collect();
    assert_eq!(listed, vec![json!("42")]);
    assert_eq!(collection_count(&app, "default").await, Some(1));
    assert_eq!(
        collection_count(&app, "fleeting").await,
        None,
        "a collection of expired documents is not listed"
    );
    let resp = app.patch_doc("default", "41", &json!({"x": 1})).await;
    assert_eq!(resp.status(), 404, "an expired document cannot be patched");
    assert_eq!(app.delete_doc("default", "41").await.status(), 404);

    // The sweeper removes the row itself within a few seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let rows: i64 = rows_on_disk(&app.data_dir, "default").await.iter().sum();
        let fleeting: i64 = rows_on_disk(&app.data_dir, "fleeting").await.iter().sum();
        if rows == 1 && fleeting == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expired rows are still on disk after 5 s ({rows} in default, {fleeting} in fleeting)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(json(app.get_api("42").await).await["data"], json!({"stays": true}));
}

#[tokio::test]
async fn an_expired_id_can_be_created_again_from_version_1() {
    let app = spawn_app().await;
    put_with_ttl(&app, "c", "a", "1", &json!("old")).await;
    app.put_doc("c", "a", &json!("old")).await; // clears the expiry...
    let doc = json(put_with_ttl(&app, "c", "a", "1", &json!("old")).await).await; // ...and sets it again
    assert_eq!(doc["version"], 3);
    sleep_past(parse_time(&doc["expires_at"])).await;

    let resp = send(
        app.request(Method::PUT, &doc_path("c", "a"))
            .header("if-none-match", "*")
            .json(&json!("new")),
    )
    .await;
    assert_eq!(resp.status(), 201, "an expired document does not exist");
    let created = json(resp).await;
    assert_eq!(
        (created["version"].clone(), created["data"].clone()),
        (json!(1), json!("new"))
    );
    assert_eq!(created["expires_at"], json!(null));
}

#[tokio::test]
async fn ttl_must_be_a_positive_number_of_seconds() {
    let app = spawn_app().await;
    app.put_doc("c", "kept", &json!({"x": 1})).await;
    for ttl in ["0", "abc", "-1", "1.5", "315360001"] {
        let resp = put_with_ttl(&app, "c", "t", ttl, &json!(1)).await;
        assert_eq!(resp.status(), 400, "PUT ttl={ttl}");
        assert_eq!(json(resp).await["status"], 400, "PUT ttl={ttl}");
        let resp = app
            .post_json(&format!("/v1/collections/c/docs?ttl={ttl}"), &json!(1))
            .await;
        assert_eq!(resp.status(), 400, "POST ttl={ttl}");
        let resp = send(crate::helpers::merge_patch(
            app.request(Method::PATCH, &format!("{}?ttl={ttl}", doc_path("c", "kept"))),
            &json!({"y": 2}),
        ))
        .await;
        assert_eq!(resp.status(), 400, "PATCH ttl={ttl}");
    }
    assert_eq!(app.get_doc("c", "t").await.status(), 404);
    assert_eq!(app.list_all("c").await.len(), 1, "no POST stored anything");
    let kept = json(app.get_doc("c", "kept").await).await;
    assert_eq!(
        (kept["version"].clone(), kept["data"].clone()),
        (json!(1), json!({"x": 1}))
    );
    // The largest ttl is accepted, and a created document may expire too.
    assert_eq!(put_with_ttl(&app, "c", "t", "315360000", &json!(1)).await.status(), 201);
    let resp = app.post_json("/v1/collections/c/docs?ttl=60", &json!("posted")).await;
    assert_eq!(resp.status(), 201);
    let posted = json(resp).await;
    let ttl = parse_time(&posted["expires_at"]) - parse_time(&posted["updated_at"]);
    assert!(
        ttl > time::Duration::seconds(59) && ttl <= time::Duration::seconds(60),
        "{posted}"
    );
}

#[tokio::test]
async fn put_without_ttl_clears_the_expiry_and_patch_keeps_it() {
    let app = spawn_app().await;
    let first = json(put_with_ttl(&app, "c", "a", "3600", &json!({"n": 1})).await).await;
    let expires_at = first["expires_at"].clone();
    assert!(parse_time(&expires_at) > OffsetDateTime::now_utc() + time::Duration::minutes(59));

    // A patch without ttl keeps it...
    let patched = json(app.patch_doc("c", "a", &json!({"m": 2})).await).await;
    assert_eq!(patched["version"], 2);
    assert_eq!(patched["expires_at"], expires_at);
    assert_eq!(json(app.get_doc("c", "a").await).await["expires_at"], expires_at);

    // ...a patch with ttl moves it...
    let resp = send(crate::helpers::merge_patch(
        app.request(Method::PATCH, &format!("{}?ttl=7200", doc_path("c", "a"))),
        &json!({"m": 3}),
    ))
    .await;
    let moved = json(resp).await;
    assert!(parse_time(&moved["expires_at"]) > parse_time(&expires_at) + time::Duration::minutes(59));

    // ...and a put without ttl makes the document permanent, even with equal data.
    let resp = app.put_doc("c", "a", &json!({"n": 1, "m": 3})).await;
    assert_eq!(resp.status(), 200);
    let replaced = json(resp).await;
    assert_eq!(replaced["version"], 4);
    assert_eq!(replaced["expires_at"], json!(null));
    assert_eq!(json(app.get_doc("c", "a").await).await["expires_at"], json!(null));
}
