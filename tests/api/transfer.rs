//! NDJSON import and export: a line-by-line report of what an import took,
//! an export streamed in id order, and the two round-tripping.

use reqwest::{Method, Response};
use serde_json::{json, Value};

use crate::helpers::{json, send, spawn_app, spawn_app_with, TestApp};

async fn import(app: &TestApp, collection: &str, body: String) -> Response {
    send(
        app.request(Method::POST, &format!("/v1/collections/{collection}/import"))
            .header("content-type", "application/x-ndjson")
            .body(body),
    )
    .await
}

/// The export of a collection: its content type and its lines, parsed.
async fn export(app: &TestApp, collection: &str) -> (String, Vec<Value>) {
    let resp = app.get(&format!("/v1/collections/{collection}/export")).await;
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().expect("ascii").to_owned();
    let text = resp.text().await.expect("body");
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "every line ends with a newline"
    );
    let lines = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("line {line:?}: {e}")))
        .collect();
    (content_type, lines)
}

#[tokio::test]
async fn an_import_reports_each_refused_line_by_number() {
    let app = spawn_app_with(&[("EXDAAS_MAX_BODY_BYTES", "2048")]).await;
    let long = json!({"id": "long", "data": "x".repeat(3000)}).to_string();
    let lines = [
        r#"{"id": "alice", "data": {"name": "Alice"}}"#.to_string(), // 1
        r#"{"id": "bob", "data": "#.to_string(),                     // 2: malformed
        r#"{"id": "carol"}"#.to_string(),                            // 3: no data
        r#"{"id": "bad id", "data": 1}"#.to_string(),                // 4: invalid id
        String::new(),                                               // 5: blank, skipped
        long,                                                        // 6: too long
        r#"{"data": {"anonymous": 1}}"#.to_string(),                 // 7: fresh id
        "   ".to_string(),                                           // 8: blank, skipped
        r#"{"id": "dave", "data": [1, 2], "ttl": 3600}"#.to_string(), // 9
        r#"{"id": null, "data": {"anonymous": 2}}"#.to_string(),     // 10: fresh id
        r#"{"id": 77, "data": "numeric"}"#.to_string(),              // 11
        r#"{"id": "eve", "data": 1, "ttl": 0}"#.to_string(),         // 12: bad ttl
        r#"{"id": "alice", "data": {"name": "Alice", "v": 2}}"#.to_string(), // 13: replaces line 1
    ];
    let resp = import(&app, "people", lines.join("\n") + "\n").await;
    assert_eq!(resp.status(), 200);
    let report = json(resp).await;
    assert_eq!(report["lines"], 13, "{report}");
    assert_eq!(report["imported"], 6, "{report}");
    assert_eq!(report["rejected_count"], 5, "{report}");
    let rejected = report["rejected"].as_array().expect("rejected");
    let numbers: Vec<u64> = rejected.iter().map(|r| r["line"].as_u64().expect("line")).collect();
    assert_eq!(numbers, vec![2, 3, 4, 6, 12], "{report}");
    for r in rejected {
        assert!(r["detail"].as_str().is_some_and(|d| !d.is_empty()), "{r}");
    }
    assert!(
        rejected[1]["detail"].as_str().is_some_and(|d| d.contains("data")),
        "{report}"
    );
    assert!(
        rejected[3]["detail"].as_str().is_some_and(|d| d.contains("2048")),
        "{report}"
    );

    let alice = json(app.get_doc("people", "alice").await).await;
    assert_eq!(
        (alice["version"].clone(), alice["data"].clone()),
        (json!(2), json!({"name": "Alice", "v": 2}))
    );
    let dave = json(app.get_doc("people", "dave").await).await;
    assert_eq!(dave["data"], json!([1, 2]));
    assert!(dave["expires_at"].is_string(), "ttl is honoured: {dave}");
    assert_eq!(json(app.get_doc("people", "77").await).await["data"], "numeric");
    for id in ["bob", "carol", "long", "eve"] {
        assert_eq!(app.get_doc("people", id).await.status(), 404, "{id}");
    }

    // The lines without an id got fresh numeric ids of their own.
    let all = app.list_all("people").await;
    let anonymous: Vec<&Value> = all.iter().filter(|d| d["data"].get("anonymous").is_some()).collect();
    assert_eq!(anonymous.len(), 2, "{all:?}");
    for doc in &anonymous {
        let id = doc["id"].as_str().expect("id");
        assert!(id.parse::<u64>().is_ok(), "a fresh id is numeric: {id}");
    }
    assert_ne!(anonymous[0]["id"], anonymous[1]["id"]);
    assert_eq!(all.len(), 5, "alice, dave, 77 and the two anonymous ones");
}

#[tokio::test]
async fn an_import_needs_ndjson() {
    let app = spawn_app().await;
    for content_type in ["application/json", "text/plain"] {
        let resp = send(
            app.request(Method::POST, "/v1/collections/c/import")
                .header("content-type", content_type)
                .body(r#"{"id": "a", "data": 1}"#),
        )
        .await;
        assert_eq!(resp.status(), 415, "{content_type}");
        assert_eq!(json(resp).await["status"], 415);
    }
    assert_eq!(app.get_doc("c", "a").await.status(), 404);
    // The other NDJSON name is accepted, and a last line without a newline counts.
    let resp = send(
        app.request(Method::POST, "/v1/collections/c/import")
            .header("content-type", "application/jsonl")
            .body("{\"id\": \"a\", \"data\": 1}\n{\"id\": \"b\", \"data\": 2}"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let report = json(resp).await;
    assert_eq!(
        (report["lines"].clone(), report["imported"].clone()),
        (json!(2), json!(2))
    );
}

#[tokio::test]
async fn an_export_streams_every_document_in_id_order() {
    let app = spawn_app().await;
    let mut stored = Vec::new();
    for chunk in 0..3 {
        let ops: Vec<Value> = (chunk * 400..(chunk + 1) * 400)
            .map(|i| json!({"op": "put", "id": format!("doc-{i}"), "data": {"i": i, "tags": ["t", i % 7]}}))
            .collect();
        let body = json(app.batch("big", json!(ops)).await).await;
        for result in body["results"].as_array().expect("results") {
            assert_eq!(result["status"], 201, "{result}");
            stored.push(result["doc"].clone());
        }
    }
    app.put_doc("other", "doc-5", &json!("not exported")).await;

    let resp = app.get("/v1/collections/big/export").await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().get("content-length").is_none(),
        "the export is streamed, not assembled first"
    );
    drop(resp);
    let (content_type, lines) = export(&app, "big").await;
    assert_eq!(content_type, "application/x-ndjson");
    assert_eq!(lines.len(), 1200);
    stored.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    assert_eq!(lines, stored, "one envelope per line, in id order, as stored");

    let (_, empty) = export(&app, "nothing").await;
    assert!(empty.is_empty());
}

#[tokio::test]
async fn an_export_imports_into_another_collection_unchanged() {
    let app = spawn_app().await;
    let ops: Vec<Value> = (0..300)
        .map(|i| json!({"op": "put", "id": format!("k{i}"), "data": {"i": i, "nested": {"s": format!("v{i}")}}}))
        .collect();
    app.batch("source", json!(ops)).await;
    app.put_doc("source", "odd:id@x", &json!([null, {"deep": null}])).await;
    let resp = send(
        app.request(Method::PUT, "/v1/collections/source/docs/expiring?ttl=3600")
            .json(&json!("soon")),
    )
    .await;
    assert_eq!(resp.status(), 201);

    let resp = app.get("/v1/collections/source/export").await;
    let text = resp.text().await.expect("body");
    let resp = import(&app, "copy", text).await;
    assert_eq!(resp.status(), 200);
    let report = json(resp).await;
    assert_eq!(report["imported"], 302, "{report}");
    assert_eq!(report["rejected_count"], 0, "{report}");

    let (_, source) = export(&app, "source").await;
    let (_, copy) = export(&app, "copy").await;
    let fields = |doc: &Value| (doc["id"].clone(), doc["data"].clone(), doc["expires_at"].clone());
    assert_eq!(
        copy.iter().map(fields).collect::<Vec<_>>(),
        source.iter().map(fields).collect::<Vec<_>>()
    );
    assert!(copy.iter().all(|doc| doc["collection"] == "copy"));
}

#[tokio::test]
async fn an_anonymous_import_line_is_never_overwritten_by_a_named_one() {
    let app = spawn_app().await;
    // On a fresh server the next counter id is 1.
    let body = "{\"data\": \"anonymous\"}\n{\"id\": \"1\", \"data\": \"named\"}\n".to_string();
    let report = json(import(&app, "c", body).await).await;
    assert_eq!(report["imported"], 2, "{report}");
    let all = app.list_all("c").await;
    let data: Vec<&Value> = all.iter().map(|d| &d["data"]).collect();
    assert_eq!(all.len(), 2, "both imported documents exist: {data:?}");
}

#[tokio::test]
async fn a_null_document_survives_export_and_import() {
    let app = spawn_app().await;
    assert_eq!(app.put_doc("source", "nothing", &json!(null)).await.status(), 201);
    let text = app
        .get("/v1/collections/source/export")
        .await
        .text()
        .await
        .expect("body");
    let report = json(import(&app, "copy", text).await).await;
    assert_eq!(report["imported"], 1, "{report}");
    let resp = app.get_doc("copy", "nothing").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["data"], json!(null));
}

#[tokio::test]
async fn a_huge_client_chosen_id_does_not_stop_fresh_ids() {
    let app = spawn_app().await;
    assert_eq!(
        app.put_doc("c", "9223372036854775807", &json!("huge")).await.status(),
        201
    );

    let resp = app.post_json("/v1/collections/c/docs", &json!("fresh")).await;
    assert_eq!(resp.status(), 201, "POST after a huge id");
    let resp = app.post_api(json!({"id": null, "data": "fresh"})).await;
    assert_eq!(resp.status(), 200, "anonymous POST /api after a huge id");
    let report = json(import(&app, "c", "{\"data\": \"fresh\"}\n".to_string()).await).await;
    assert_eq!(report["imported"], 1, "import without id after a huge id: {report}");
}
