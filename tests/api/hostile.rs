//! What a hostile or careless client sends: nothing of it takes the server
//! down, breaks it for others, or grows its state without bound. Each answer
//! is a clear 4xx, and the server serves on.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{json, merge_patch, send, skip_on_postgres, spawn_app, TestApp};

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

/// An anonymous create through each route that makes one: `POST /api` with
/// `"id": null`, `POST /v1/collections/{c}/docs`, and an import line without
/// id. Answers the ids the first two got (an import reports no ids).
async fn create_everywhere(app: &TestApp) -> Vec<u64> {
    let resp = app.post_api(json!({"id": null, "data": "anonymous"})).await;
    assert_eq!(resp.status(), 200, "POST /api with a null id");
    let legacy = json(resp).await["id"].as_u64().expect("an integer id");
    let resp = app.post_json("/v1/collections/other/docs", &json!("anonymous")).await;
    assert_eq!(resp.status(), 201, "POST /v1/collections/other/docs");
    let v1: u64 = json(resp).await["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("a numeric id");
    let resp = send(
        app.request(Method::POST, "/v1/collections/other/import")
            .header("content-type", "application/x-ndjson")
            .body("{\"data\": \"anonymous\"}\n"),
    )
    .await;
    assert_eq!(json(resp).await["imported"], 1, "an import line without id");
    vec![legacy, v1]
}

#[tokio::test]
async fn no_client_id_makes_anonymous_creates_fail_not_even_after_a_restart() {
    let folder = tempfile::tempdir().expect("temp dir");
    let keys = [(
        "EXDAAS_API_KEYS",
        "write:writer-key-0123456789;read:reader-key-0123456789",
    )];
    let writer = ("authorization", "Bearer writer-key-0123456789");
    let app = crate::helpers::spawn_app_on(folder.path(), &keys).await;
    let top = exdaas::domain::MAX_COUNTER_ID.to_string();
    // The largest counter id, in some collection, and in the original's.
    let resp = send(
        app.request(Method::PUT, &format!("/v1/collections/mine/docs/{top}"))
            .header(writer.0, writer.1)
            .json(&json!("mine")),
    )
    .await;
    assert_eq!(resp.status(), 201);
    let resp = send(
        app.request(Method::POST, "/api")
            .header(writer.0, writer.1)
            .json(&json!({"id": exdaas::domain::MAX_COUNTER_ID, "data": "top"})),
    )
    .await;
    assert_eq!(resp.status(), 200);
    // A read-only key's batch read of it moves nothing either.
    let resp = send(
        app.request(Method::POST, "/v1/collections/default/batch")
            .header("authorization", "Bearer reader-key-0123456789")
            .json(&json!({"ops": [{"op": "get", "id": top}]})),
    )
    .await;
    assert_eq!(resp.status(), 200);
    app.stop().await;

    let app = crate::helpers::spawn_app_on(folder.path(), &[]).await;
    let first = create_everywhere(&app).await;
    assert!(first.iter().all(|id| *id < 100), "fresh ids stay small: {first:?}");
    let resp = app.delete_doc("mine", &top).await;
    assert_eq!(resp.status(), 204);
    let second = create_everywhere(&app).await;
    assert!(
        second.iter().zip(&first).all(|(b, a)| b > a),
        "{first:?} then {second:?}"
    );
    app.stop().await;

    let app = crate::helpers::spawn_app_on(folder.path(), &[]).await;
    let third = create_everywhere(&app).await;
    assert!(
        third.iter().all(|id| second.iter().all(|earlier| id > earlier)),
        "never reused after a restart: {second:?} then {third:?}"
    );
    assert_eq!(
        json(app.get_api(&top).await).await["data"],
        json!("top"),
        "the client's document stands"
    );
}

#[tokio::test]
async fn a_fresh_id_skips_a_run_of_client_ids_it_never_saw() {
    let app = spawn_app().await;
    let window = exdaas::store::ids::OBSERVE_WINDOW;
    // Ids too far ahead to move the counter when they are written...
    let run = 2 * window..2 * window + 300;
    let ops: Vec<Value> = run
        .clone()
        .map(|id| json!({"op": "put", "id": id.to_string(), "data": "client"}))
        .collect();
    assert_eq!(app.batch("default", json!(ops)).await.status(), 200);
    // ...then ids that walk the counter up to the run, each near enough.
    for step in [window, 2 * window - 1] {
        assert_eq!(app.post_api(json!({"id": step, "data": "step"})).await.status(), 200);
    }
    let resp = app.post_api(json!({"id": null, "data": "fresh"})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        json(resp).await["id"],
        json!(run.end),
        "the first free id after the run"
    );
    for id in [run.start, run.end - 1] {
        assert_eq!(json(app.get_api(&id.to_string()).await).await["data"], json!("client"));
    }
}

#[tokio::test]
async fn invented_methods_do_not_grow_the_metrics() {
    for keys in [None, Some("read:reader-key-0123456789")] {
        let app = match keys {
            None => spawn_app().await,
            Some(keys) => crate::helpers::spawn_app_with(&[("EXDAAS_API_KEYS", keys)]).await,
        };
        let lines = |text: String| text.lines().filter(|l| !l.starts_with('#')).count();
        let invent = |i: usize| Method::from_bytes(format!("M{i}X").as_bytes()).expect("a method token");
        // Once, so every series these requests touch exists.
        send(app.request(invent(0), "/api")).await;
        send(app.request(invent(0), "/nowhere")).await;
        app.get("/metrics").await;
        let before = lines(app.get("/metrics").await.text().await.expect("metrics"));
        for i in 1..300 {
            let path = if i % 2 == 0 { "/api" } else { "/nowhere" };
            let resp = send(app.request(invent(i), path)).await;
            assert!(resp.status().is_client_error(), "{}", resp.status());
        }
        let text = app.get("/metrics").await.text().await.expect("metrics");
        assert!(text.contains("method=\"OTHER\""), "invented methods count as OTHER");
        assert!(
            lines(text) == before,
            "metrics grew with invented methods (keys: {keys:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_show_clients_a_stable_message_and_the_log_an_id_with_the_detail() {
    if skip_on_postgres("it breaks a shard file under the server") {
        return;
    }
    let folder = tempfile::tempdir().expect("temp dir");
    let server = crate::helpers::ServerProcess::start(folder.path(), &[("SHARD_LIMIT", "1")]).await;
    let client = reqwest::Client::new();
    let put = |id: &'static str| {
        client
            .put(server.url(&format!("/v1/collections/c/docs/{id}")))
            .json(&json!(1))
            .send()
    };
    assert_eq!(put("a").await.expect("sent").status(), 201);
    std::fs::remove_file(folder.path().join("shard-0000.sqlite3")).expect("delete the shard file");

    let resp = put("b").await.expect("sent");
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.expect("a problem");
    let detail = body["detail"].as_str().unwrap_or_default();
    let error_id = body["error_id"].as_str().expect("an error id").to_owned();
    assert!(detail.contains(&error_id), "{detail}");
    let folder_path = folder.path().to_string_lossy().into_owned();
    for leak in [folder_path.as_str(), ".sqlite3", "SQLITE", "sqlx"] {
        assert!(!detail.contains(leak), "the answer shows {leak:?}: {detail}");
    }
    // The original API answers the same way.
    let resp = client
        .post(server.url("/api"))
        .json(&json!({"id": 5, "data": 1}))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.expect("a message");
    assert!(
        body["error_id"].is_string() && !body["message"].as_str().unwrap_or_default().contains(".sqlite3"),
        "{body}"
    );

    // /readyz, open to anyone, says what is wrong without where.
    let ready: Value = client
        .get(server.url("/readyz"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    let problem = ready["shards"][0]["problem"].as_str().unwrap_or_default().to_owned();
    assert!(
        problem.contains("deleted or replaced") && !problem.contains(&folder_path),
        "{problem}"
    );

    // The log line with that id has the whole story.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = server.log_text();
    let line = log
        .lines()
        .find(|line| line.contains(&error_id))
        .unwrap_or_else(|| panic!("no log line carries {error_id}:\n{log}"));
    assert!(line.contains("shard-0000.sqlite3"), "{line}");
}

#[tokio::test]
async fn a_document_cannot_outgrow_the_body_limit_by_patches() {
    let app = crate::helpers::spawn_app_with(&[("EXDAAS_MAX_BODY_BYTES", "4096")]).await;
    assert_eq!(
        app.put_doc("c", "grows", &json!({"a": "x".repeat(3000)}))
            .await
            .status(),
        201
    );
    // Each patch fits in a body; what it would make of the document does not.
    let resp = app.patch_doc("c", "grows", &json!({"b": "y".repeat(2000)})).await;
    assert_eq!(resp.status(), 422);
    let detail = json(resp).await["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.contains("4096"), "{detail}");
    let doc = json(app.get_doc("c", "grows").await).await;
    assert_eq!(
        (doc["version"].clone(), doc["data"].get("b").is_none()),
        (json!(1), true)
    );
}

#[tokio::test]
async fn a_commands_answer_is_bounded_in_keys_and_bytes() {
    let app = crate::helpers::spawn_app_with(&[("EXDAAS_MAX_PAGE_BYTES", "65536")]).await;
    assert_eq!(
        app.post_api(json!({"id": 1, "data": {"big": "b".repeat(10_000)}}))
            .await
            .status(),
        200
    );
    let keys = |n: usize| "&cmd%5Bkeys%5D%5B%5D=big".repeat(n);
    let resp = app.get(&format!("/api/cmd?id=1&cmd%5Bquery%5D=ONLY{}", keys(5))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["values"].as_array().map(Vec::len), Some(5));
    // The same field named often enough to outgrow the page budget.
    let resp = app.get(&format!("/api/cmd?id=1&cmd%5Bquery%5D=ONLY{}", keys(10))).await;
    assert_eq!(resp.status(), 422);
    let resp = app
        .get(&format!("/api/cmd?id=1&cmd%5Bquery%5D=ONLY{}", keys(1001)))
        .await;
    assert_eq!(resp.status(), 400, "more than 1000 keys");
}

#[tokio::test]
async fn an_import_report_quotes_what_a_line_held_cut_short() {
    let app = spawn_app().await;
    let long_bad_id = format!("a b{}", "c".repeat(500_000));
    let body = format!("{}\n", json!({"id": long_bad_id, "data": 1}));
    let resp = send(
        app.request(Method::POST, "/v1/collections/c/import")
            .header("content-type", "application/x-ndjson")
            .body(body),
    )
    .await;
    let text = resp.text().await.expect("a report");
    assert!(text.len() < 2000, "the report holds {} bytes", text.len());
    let report: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(report["rejected_count"], 1);
}

#[tokio::test]
async fn the_original_api_takes_the_id_from_the_query_too() {
    // Phoenix merged query and body parameters.
    let app = spawn_app().await;
    let resp = send(
        app.request(Method::POST, "/api?id=5")
            .json(&json!({"data": {"q": true}})),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await, json!({"id": 5, "data": {"q": true}}));
    // The body's id wins when both are there.
    let resp = send(
        app.request(Method::POST, "/api?id=6")
            .json(&json!({"id": 7, "data": 1})),
    )
    .await;
    assert_eq!(json(resp).await["id"], 7);
}
