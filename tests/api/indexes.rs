//! Declared indexes: built in the background, kept by every write path,
//! used by the queries they fit (and `explain` says so), and named in the
//! refusal of a query on a large collection that none fits.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{ids, json, query, send, spawn_app, spawn_app_with, TestApp};

async fn declare(app: &TestApp, collection: &str, name: &str, fields: &[&str]) -> (u16, Value) {
    let resp = send(
        app.request(Method::PUT, &format!("/v1/collections/{collection}/indexes/{name}"))
            .json(&json!({ "fields": fields })),
    )
    .await;
    let status = resp.status().as_u16();
    (status, json(resp).await)
}

/// Waits (at most 10 s) until the index is built on every shard.
pub async fn wait_ready(app: &TestApp, collection: &str, name: &str) -> Value {
    let started = Instant::now();
    loop {
        let index = json(app.get(&format!("/v1/collections/{collection}/indexes/{name}")).await).await;
        if index["state"] == "ready" {
            return index;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never built: {index}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_index_is_declared_built_listed_used_and_dropped() {
    let app = spawn_app().await;
    let cities = ["Oslo", "Bergen", "Tromsø"];
    let mut expected = Vec::new();
    for i in 0..300u64 {
        let city = cities[(i % 3) as usize];
        let age = (i * 7) % 90;
        app.put_doc("people", &format!("p{i:03}"), &json!({"city": city, "age": age}))
            .await;
        if city == "Oslo" && age >= 30 {
            expected.push((age, format!("p{i:03}")));
        }
    }
    expected.sort();
    let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();

    let (status, index) = declare(&app, "people", "by_city_age", &["city", "age"]).await;
    assert_eq!(status, 201, "{index}");
    assert_eq!(index["fields"], json!(["city", "age"]));
    let built = wait_ready(&app, "people", "by_city_age").await;
    assert_eq!(built["indexed"], 300, "{built}");
    assert_eq!(built["shards_built"], built["shards"]);

    let body = json!({"filter": {"city": "Oslo", "age": {"$gte": 30}}, "sort": ["age"], "limit": 10, "explain": true});
    let (status, page) = query(&app, "people", &body).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["explain"]["plan"], "index");
    assert_eq!(page["explain"]["index"], "by_city_age");
    let read: u64 = page["explain"]["read_per_shard"]
        .as_array()
        .expect("per shard")
        .iter()
        .map(|n| n.as_u64().expect("a count"))
        .sum();
    // Each shard reads one batch of entries (16 at least), not its range.
    assert!(
        read <= 4 * 16,
        "each shard reads about a page, not the collection: {read}"
    );
    // Every page, through the index, in order.
    let mut got = ids(&page);
    let mut body = body;
    let mut cursor = page["next_cursor"].clone();
    while let Some(next) = cursor.as_str() {
        body["cursor"] = json!(next);
        let (_, page) = query(&app, "people", &body).await;
        got.extend(ids(&page));
        cursor = page["next_cursor"].clone();
    }
    assert_eq!(got, expected);

    // The same again is fine; other fields under the name are not.
    assert_eq!(declare(&app, "people", "by_city_age", &["city", "age"]).await.0, 200);
    assert_eq!(declare(&app, "people", "by_city_age", &["age"]).await.0, 409);
    assert_eq!(declare(&app, "people", "bad name!", &["age"]).await.0, 400);
    assert_eq!(declare(&app, "people", "by_nothing", &[]).await.0, 400);
    for body in [
        json!({"fields": [false]}),
        json!({"fields": ["a"], "unique": true}),
        json!(["a"]),
    ] {
        let resp = send(
            app.request(Method::PUT, "/v1/collections/people/indexes/odd")
                .json(&body),
        )
        .await;
        assert_eq!(resp.status(), 400, "{body}");
    }

    let list = json(app.get("/v1/collections/people/indexes").await).await;
    assert_eq!(list["indexes"][0]["name"], "by_city_age", "{list}");

    let resp = send(app.request(Method::DELETE, "/v1/collections/people/indexes/by_city_age")).await;
    assert_eq!(resp.status(), 200);
    let (_, page) = query(
        &app,
        "people",
        &json!({"filter": {"city": "Oslo", "age": {"$gte": 30}}, "explain": true}),
    )
    .await;
    assert_eq!(page["explain"]["plan"], "scan");
    assert_eq!(ids(&page).len(), expected.len());
    let resp = send(app.request(Method::DELETE, "/v1/collections/people/indexes/by_city_age")).await;
    assert_eq!(resp.status(), 404);

    // The build's progress is in the metrics; the feed records the
    // declaration and the drop once each, by the index's name.
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    let built: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("exdaas_index_build_documents_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no build counter in {metrics}"));
    assert!(built >= 300.0, "{built}");
    assert!(
        metrics.lines().any(|line| line == "exdaas_index_builds_running 0"),
        "{metrics}"
    );
    let page = json(app.get("/v1/collections/people/changes?since=0&limit=1000").await).await;
    let catalog: Vec<(Value, Value)> = page["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter(|c| c["kind"].as_str().is_some_and(|k| k.starts_with("index_")))
        .map(|c| (c["kind"].clone(), c["id"].clone()))
        .collect();
    assert_eq!(
        catalog,
        vec![
            (json!("index_declared"), json!("by_city_age")),
            (json!("index_dropped"), json!("by_city_age"))
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn every_write_path_keeps_the_index() {
    let app = spawn_app().await;
    assert_eq!(declare(&app, "c", "by_n", &["n"]).await.0, 201);
    assert_eq!(declare(&app, "default", "by_n", &["n"]).await.0, 201);
    wait_ready(&app, "c", "by_n").await;
    wait_ready(&app, "default", "by_n").await;
    let find = |collection: &'static str, n: i64| {
        let app = &app;
        async move {
            let (status, page) = query(app, collection, &json!({"filter": {"n": n}, "explain": true})).await;
            assert_eq!(status, 200, "{page}");
            assert_eq!(page["explain"]["plan"], "index", "{page}");
            ids(&page)
        }
    };

    app.put_doc("c", "a", &json!({"n": 1})).await;
    assert_eq!(find("c", 1).await, vec!["a"]);
    app.patch_doc("c", "a", &json!({"n": 2})).await;
    assert_eq!(find("c", 1).await, Vec::<String>::new(), "the old entry went");
    assert_eq!(find("c", 2).await, vec!["a"]);
    app.batch(
        "c",
        json!([{"op": "put", "id": "b", "data": {"n": 2}}, {"op": "delete", "id": "a"}]),
    )
    .await;
    assert_eq!(find("c", 2).await, vec!["b"]);
    let lines = "{\"id\": \"i1\", \"data\": {\"n\": 3}}\n{\"id\": \"i2\", \"data\": {\"n\": 3}}\n";
    send(
        app.request(Method::POST, "/v1/collections/c/import")
            .header("content-type", "application/x-ndjson")
            .body(lines),
    )
    .await;
    assert_eq!(find("c", 3).await, vec!["i1", "i2"]);
    assert_eq!(app.delete_doc("c", "i1").await.status(), 204);
    assert_eq!(find("c", 3).await, vec!["i2"]);

    // The original API writes to `default`.
    let ack = json(app.post_api(json!({"id": 7, "data": {"n": 4}})).await).await;
    assert_eq!(ack["id"], 7, "{ack}");
    assert_eq!(find("default", 4).await, vec!["7"]);

    // Expiry removes the entry with the document.
    let resp = send(
        app.request(Method::PUT, "/v1/collections/c/docs/short?ttl=1")
            .json(&json!({"n": 5})),
    )
    .await;
    assert_eq!(resp.status(), 201);
    assert_eq!(find("c", 5).await, vec!["short"]);
    let started = Instant::now();
    while !find("c", 5).await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the expired document is still found"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Dropping the collection takes its entries; the index stays declared.
    let resp = send(app.request(Method::DELETE, "/v1/collections/c?confirm=c")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(find("c", 2).await, Vec::<String>::new());
    app.put_doc("c", "again", &json!({"n": 2})).await;
    assert_eq!(find("c", 2).await, vec!["again"]);
    app.stop().await;
}

#[tokio::test]
async fn a_query_no_index_fits_on_a_large_collection_is_refused_naming_the_index() {
    let app = spawn_app_with(&[("EXDAAS_QUERY_MAX_SCAN", "50")]).await;
    for i in 0..60 {
        let city = ["Oslo", "Bergen"][i % 2];
        app.put_doc("big", &format!("d{i:02}"), &json!({"city": city, "age": i}))
            .await;
    }
    let body = json!({"filter": {"city": "Oslo"}, "sort": ["age"], "limit": 5});
    let (status, problem) = query(&app, "big", &body).await;
    assert_eq!(status, 422, "{problem}");
    let detail = problem["detail"].as_str().expect("detail");
    assert!(
        detail.contains("PUT /v1/collections/big/indexes/by_city_age") && detail.contains(r#"["city","age"]"#),
        "{detail}"
    );
    assert_eq!(declare(&app, "big", "by_city_age", &["city", "age"]).await.0, 201);
    wait_ready(&app, "big", "by_city_age").await;
    let (status, page) = query(&app, "big", &body).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids(&page), vec!["d00", "d02", "d04", "d06", "d08"]);
    app.stop().await;
}

#[tokio::test]
async fn a_value_too_large_for_a_key_is_refused_and_one_stored_before_fails_the_build() {
    let app = spawn_app().await;
    let long = "x".repeat(2000);
    app.put_doc("notes", "old", &json!({"title": long})).await;
    app.put_doc("notes", "short", &json!({"title": "hi"})).await;
    assert_eq!(declare(&app, "notes", "by_title", &["title"]).await.0, 201);
    let started = Instant::now();
    let index = loop {
        let index = json(app.get("/v1/collections/notes/indexes/by_title").await).await;
        if index["state"] != "building" {
            break index;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{index}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (index["state"].clone(), index["oversized"].clone()),
        (json!("failed"), json!(1)),
        "{index}"
    );
    let (_, page) = query(&app, "notes", &json!({"filter": {"title": "hi"}, "explain": true})).await;
    assert_eq!(page["explain"]["plan"], "scan", "a failed index is not used");
    assert_eq!(ids(&page), vec!["short"]);

    // From the declaration on, such a value is refused with a reason.
    let resp = app.put_doc("notes", "new", &json!({"title": long})).await;
    assert_eq!(resp.status(), 422);
    let problem = json(resp).await;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("by_title") && d.contains("1536")),
        "{problem}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_a_build_go_on_and_the_index_ends_exact() {
    let app = spawn_app().await;
    let lines: String = (0..3000)
        .map(|i| format!("{{\"id\": \"d{i:04}\", \"data\": {{\"k\": {}}}}}\n", i % 10))
        .collect();
    let resp = send(
        app.request(Method::POST, "/v1/collections/c/import")
            .header("content-type", "application/x-ndjson")
            .body(lines),
    )
    .await;
    assert_eq!(json(resp).await["imported"], 3000);
    assert_eq!(declare(&app, "c", "by_k", &["k"]).await.0, 201);
    // While the build runs: moves between values, new documents, deletions.
    let mut expected: Vec<i64> = (0..3000).map(|i| i % 10).collect();
    let mut was_building = false;
    for i in 0..300usize {
        let id = (i * 7) % 3000;
        match i % 3 {
            0 => {
                assert_eq!(
                    app.put_doc("c", &format!("d{id:04}"), &json!({"k": 42})).await.status(),
                    200
                );
                expected[id] = 42;
            }
            1 => {
                assert_eq!(app.delete_doc("c", &format!("d{id:04}")).await.status(), 204);
                expected[id] = -1;
            }
            _ => {
                assert_eq!(
                    app.put_doc("c", &format!("n{i:04}"), &json!({"k": 42})).await.status(),
                    201
                );
            }
        }
        if i == 0 {
            let index = json(app.get("/v1/collections/c/indexes/by_k").await).await;
            was_building = index["state"] == "building";
        }
    }
    wait_ready(&app, "c", "by_k").await;
    let count = |k: i64| expected.iter().filter(|v| **v == k).count() as u64;
    for (k, extra) in [(3, 0), (42, 100)] {
        let (status, page) = query(&app, "c", &json!({"filter": {"k": k}, "count": true, "explain": true})).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["explain"]["plan"], "index");
        assert_eq!(page["count"], count(k) + extra, "k = {k}");
    }
    eprintln!("the build was still running during the writes: {was_building}");
    app.stop().await;
}

/// exdaas only stores JSON it parsed, so stored text that does not parse is
/// a damaged file: an index build that meets it says so (the shard is not
/// ready, and stays so) instead of indexing the document as `null`.
#[tokio::test]
async fn an_index_build_that_meets_unreadable_stored_json_marks_the_shard_damaged() {
    if crate::helpers::skip_on_postgres("editing a shard file by hand") {
        return;
    }
    use sqlx::{ConnectOptions, Connection};
    let folder = tempfile::tempdir().expect("temp dir");
    let app = crate::helpers::spawn_app_on(folder.path(), &[("SHARD_LIMIT", "1")]).await;
    for (id, city) in [("a", "Oslo"), ("b", "Lima")] {
        let resp = app.put_doc("people", id, &json!({ "city": city })).await;
        assert_eq!(resp.status(), 201);
    }
    app.stop().await;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(folder.path().join("shard-0000.sqlite3"))
        .connect()
        .await
        .expect("open the shard file");
    sqlx::query("UPDATE documents SET data = '{\"city\": \"Os' WHERE collection = 'people' AND id = 'a'")
        .execute(&mut conn)
        .await
        .expect("damage one document's text");
    conn.close().await.expect("close");

    let mut app = crate::helpers::spawn_app_on(folder.path(), &[("SHARD_LIMIT", "1"), ("EXDAAS_CACHE_MIB", "0")]).await;
    app.keep_folder(folder);
    assert_eq!(
        app.get("/readyz").await.status(),
        200,
        "ready before anything reads the text"
    );
    let (status, _) = declare(&app, "people", "by_city", &["city"]).await;
    assert!(status < 300, "declared: {status}");
    let started = Instant::now();
    let readiness = loop {
        let resp = app.get("/readyz").await;
        if resp.status() == 503 {
            break json(resp).await;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the shard never said it is damaged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        readiness.to_string().contains("damaged"),
        "readiness names the damage: {readiness}"
    );
    let index = json(app.get("/v1/collections/people/indexes/by_city").await).await;
    assert_ne!(
        index["state"], "ready",
        "an index over an unread document is not used: {index}"
    );
    // The intact documents still read; the damage is still said later.
    assert_eq!(app.get(&crate::helpers::doc_path("people", "b")).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.get("/readyz").await.status(), 503, "still not ready");
    app.stop().await;
}
