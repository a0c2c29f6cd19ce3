//! `/v1/collections/{c}/schema`: a JSON Schema every write path checks,
//! 422 with the pointer and keyword of what failed, a report of the
//! documents already stored, admin keys only, and the feed's record.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{json, send, spawn_app, spawn_app_on, spawn_app_with, TestApp};

const PEOPLE: &str = "/v1/collections/people/schema";

fn person_schema() -> Value {
    json!({
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "age": {"type": "integer", "minimum": 0}
        }
    })
}

async fn put_json(app: &TestApp, path: &str, body: &Value) -> reqwest::Response {
    send(app.request(Method::PUT, path).json(body)).await
}

/// The `(pointer, keyword)` of each violation an error body lists.
fn violations(body: &Value) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = body["violations"]
        .as_array()
        .unwrap_or_else(|| panic!("no violations: {body}"))
        .iter()
        .map(|v| {
            assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
            (
                v["pointer"].as_str().expect("pointer").to_owned(),
                v["keyword"].as_str().expect("keyword").to_owned(),
            )
        })
        .collect();
    found.sort();
    found
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(p, k)| (p.to_string(), k.to_string())).collect()
}

#[tokio::test]
async fn a_schema_is_set_read_and_removed() {
    let app = spawn_app().await;
    assert_eq!(app.get(PEOPLE).await.status(), 404);

    let resp = put_json(&app, PEOPLE, &person_schema()).await;
    assert_eq!(resp.status(), 200);
    let set = json(resp).await;
    assert_eq!(set["collection"], "people");
    assert_eq!(set["version"], 1);
    assert_eq!(set["schema"], person_schema());
    assert_eq!(set["existing"]["checked"], 0);

    let read = json(app.get(PEOPLE).await).await;
    assert_eq!(
        (read["version"].clone(), read["schema"].clone()),
        (json!(1), person_schema())
    );
    assert!(read["updated_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{read}");

    let resp = send(app.request(Method::DELETE, PEOPLE)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["version"], 2);
    assert_eq!(app.get(PEOPLE).await.status(), 404);
    assert_eq!(send(app.request(Method::DELETE, PEOPLE)).await.status(), 404);
    // Anything goes again; a new schema goes on numbering.
    assert_eq!(app.put_doc("people", "x", &json!(42)).await.status(), 201);
    assert_eq!(json(put_json(&app, PEOPLE, &json!(true)).await).await["version"], 3);
    app.stop().await;
}

#[tokio::test]
async fn what_is_not_a_usable_schema_is_refused_with_400() {
    let app = spawn_app().await;
    for bad in [
        json!({"type": "no-such-type"}),
        json!({"$ref": "https://example.com/remote.json"}),
        json!({"properties": {"a": {"pattern": "(unclosed"}}}),
        json!(12),
    ] {
        let resp = put_json(&app, PEOPLE, &bad).await;
        assert_eq!(resp.status(), 400, "{bad}");
        let body = json(resp).await;
        assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
    }
    assert_eq!(app.get(PEOPLE).await.status(), 404, "nothing was set");
    app.stop().await;
}

#[tokio::test]
async fn every_write_path_is_checked_against_the_schema() {
    let app = spawn_app().await;
    assert_eq!(put_json(&app, PEOPLE, &person_schema()).await.status(), 200);

    // PUT: the pointer and the keyword of each failure.
    let resp = app.put_doc("people", "ann", &json!({"age": -1})).await;
    assert_eq!(resp.status(), 422);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body = json(resp).await;
    assert_eq!(violations(&body), pairs(&[("", "required"), ("/age", "minimum")]));
    assert_eq!(app.get_doc("people", "ann").await.status(), 404, "nothing stored");

    assert_eq!(
        app.put_doc("people", "ann", &json!({"name": "Ann", "age": 30}))
            .await
            .status(),
        201
    );

    // POST with a fresh id.
    let resp = app.post_json("/v1/collections/people/docs", &json!({"name": 7})).await;
    assert_eq!(resp.status(), 422);
    assert_eq!(violations(&json(resp).await), pairs(&[("/name", "type")]));

    // PATCH: the merged result is what is checked.
    let resp = app.patch_doc("people", "ann", &json!({"age": "old"})).await;
    assert_eq!(resp.status(), 422);
    assert_eq!(violations(&json(resp).await), pairs(&[("/age", "type")]));
    let resp = app.patch_doc("people", "ann", &json!({"name": null})).await;
    assert_eq!(violations(&json(resp).await), pairs(&[("", "required")]));
    assert_eq!(app.patch_doc("people", "ann", &json!({"age": 31})).await.status(), 200);

    // A batch: each operation alone.
    let resp = app
        .batch(
            "people",
            json!([
                {"op": "put", "id": "bob", "data": {"name": "Bob"}},
                {"op": "put", "id": "eve", "data": {"name": ""}},
                {"op": "patch", "id": "ann", "data": {"age": 1.5}},
            ]),
        )
        .await;
    let body = json(resp).await;
    let results = body["results"].as_array().expect("results");
    let statuses: Vec<&Value> = results.iter().map(|r| &r["status"]).collect();
    assert_eq!(statuses, vec![&json!(201), &json!(422), &json!(422)], "{body}");
    assert_eq!(violations(&results[1]), pairs(&[("/name", "minLength")]));
    assert_eq!(violations(&results[2]), pairs(&[("/age", "type")]));

    // An import: a refused line is reported by number, the others stored.
    let lines = "{\"id\": \"cy\", \"data\": {\"name\": \"Cy\"}}\n{\"id\": \"dee\", \"data\": {\"age\": 3}}\n";
    let resp = send(
        app.request(Method::POST, "/v1/collections/people/import")
            .header("content-type", "application/x-ndjson")
            .body(lines),
    )
    .await;
    let report = json(resp).await;
    assert_eq!(report["imported"], 1, "{report}");
    assert_eq!(report["rejected"][0]["line"], 2, "{report}");
    assert!(
        report["rejected"][0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("required")),
        "{report}"
    );

    let stored: Vec<Value> = app.list_all("people").await.iter().map(|d| d["id"].clone()).collect();
    assert_eq!(stored, vec![json!("ann"), json!("bob"), json!("cy")]);
    assert_eq!(
        json(app.get_doc("people", "ann").await).await["data"],
        json!({"name": "Ann", "age": 31})
    );
    app.stop().await;
}

#[tokio::test]
async fn the_original_api_is_checked_too() {
    let app = spawn_app().await;
    let schema = json!({"type": "object", "properties": {"n": {"type": "number"}}});
    assert_eq!(
        put_json(&app, "/v1/collections/default/schema", &schema).await.status(),
        200
    );
    let resp = app.post_api(json!({"id": 1, "data": {"n": "one"}})).await;
    assert_eq!(resp.status(), 422);
    let body = json(resp).await;
    assert!(body["message"].as_str().is_some_and(|m| m.contains("schema")), "{body}");
    assert_eq!(violations(&body), pairs(&[("/n", "type")]));
    assert_eq!(app.post_api(json!({"id": 1, "data": {"n": 1}})).await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn setting_a_schema_reports_the_documents_that_do_not_match_and_keeps_them() {
    let app = spawn_app().await;
    for i in 0..250 {
        let data = if i % 5 == 0 {
            json!({"age": i})
        } else {
            json!({"name": format!("p{i}")})
        };
        assert!(app
            .put_doc("people", &format!("p{i:03}"), &data)
            .await
            .status()
            .is_success());
    }
    let set = json(put_json(&app, PEOPLE, &person_schema()).await).await;
    let existing = &set["existing"];
    assert_eq!(
        (existing["checked"].clone(), existing["count"].clone()),
        (json!(250), json!(50)),
        "{set}"
    );
    let listed: Vec<&str> = existing["mismatches"]
        .as_array()
        .expect("mismatches")
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    let expected: Vec<String> = (0..250).step_by(5).map(|i| format!("p{i:03}")).collect();
    assert_eq!(listed, expected);
    assert_eq!(existing["mismatches"][0]["violations"][0]["keyword"], "required");

    // Paged: 20 at a time, every mismatch once, in id order.
    let mut paged = Vec::new();
    let mut after = String::new();
    loop {
        let page = json(
            app.get(&format!("{PEOPLE}/mismatches?limit=20&start_after={after}"))
                .await,
        )
        .await;
        for m in page["mismatches"].as_array().expect("mismatches") {
            paged.push(m["id"].as_str().expect("id").to_owned());
        }
        match page["next_start_after"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(paged, expected);
    // A bound need not be an id itself ("." is none), as in listings.
    let page = json(app.get(&format!("{PEOPLE}/mismatches?start_after=.")).await).await;
    assert_eq!(page["count"], 50, "{page}");
    // Nothing was deleted or changed.
    assert_eq!(app.list_all("people").await.len(), 250);
    assert_eq!(json(app.get_doc("people", "p005").await).await["version"], 1);
    app.stop().await;
}

#[tokio::test]
async fn only_an_admin_key_changes_a_schema() {
    let keys = "admin:admin-key-0123456789;write:writer-key-0123456789;read:reader-key-0123456789";
    let app = spawn_app_with(&[("EXDAAS_API_KEYS", keys)]).await;
    for key in ["writer-key-0123456789", "reader-key-0123456789"] {
        let resp = send(app.request(Method::PUT, PEOPLE).bearer_auth(key).json(&person_schema())).await;
        assert_eq!(resp.status(), 403, "{key}");
    }
    let resp = send(
        app.request(Method::PUT, PEOPLE)
            .bearer_auth("admin-key-0123456789")
            .json(&person_schema()),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let resp = send(app.request(Method::GET, PEOPLE).bearer_auth("reader-key-0123456789")).await;
    assert_eq!(resp.status(), 200, "reading it needs a read key");
    let resp = send(app.request(Method::DELETE, PEOPLE).bearer_auth("writer-key-0123456789")).await;
    assert_eq!(resp.status(), 403);
    app.stop().await;
}

#[tokio::test]
async fn the_feed_records_schema_changes_among_the_writes() {
    let app = spawn_app().await;
    assert_eq!(app.put_doc("people", "a", &json!({"name": "A"})).await.status(), 201);
    assert_eq!(put_json(&app, PEOPLE, &person_schema()).await.status(), 200);
    assert_eq!(send(app.request(Method::DELETE, PEOPLE)).await.status(), 200);
    let page = json(app.get("/v1/collections/people/changes?since=0").await).await;
    let seen: Vec<(Value, Value, Value)> = page["changes"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .iter()
        .map(|c| (c["kind"].clone(), c["id"].clone(), c["version"].clone()))
        .collect();
    assert!(seen.contains(&(json!("written"), json!("a"), json!(1))), "{page}");
    let schema_changes: Vec<&(Value, Value, Value)> = seen.iter().filter(|(_, id, _)| id == "").collect();
    assert_eq!(
        schema_changes,
        vec![
            &(json!("schema_set"), json!(""), json!(1)),
            &(json!("schema_removed"), json!(""), json!(2))
        ],
        "one entry per change, not one per shard: {page}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_schema_holds_across_a_restart() {
    let folder = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(folder.path(), &[]).await;
    assert_eq!(put_json(&app, PEOPLE, &person_schema()).await.status(), 200);
    app.stop().await;
    let app = spawn_app_on(folder.path(), &[]).await;
    assert_eq!(json(app.get(PEOPLE).await).await["version"], 1);
    // Every shard checks it, whichever the id lands on.
    for i in 0..16 {
        let resp = app.put_doc("people", &format!("id{i}"), &json!({"age": 1})).await;
        assert_eq!(resp.status(), 422, "id{i}");
    }
    app.stop().await;
}

/// `d0 … d{levels-1}`, each `{"allOf": [{"$ref": d(i+1)}, {"$ref": d(i+1)}]}`,
/// down to `leaf`: a value checked against `d0` is checked against
/// 2^levels copies of `leaf`, though the text stays small.
fn doubling_defs(levels: usize, leaf: Value) -> serde_json::Map<String, Value> {
    let mut defs = serde_json::Map::new();
    for i in 0..levels {
        let next = format!("#/$defs/d{}", i + 1);
        defs.insert(format!("d{i}"), json!({"allOf": [{"$ref": next}, {"$ref": next}]}));
    }
    defs.insert(format!("d{levels}"), leaf);
    defs
}

/// The security review's schema: its refs fan out `levels` times over.
fn doubling_schema(levels: usize) -> Value {
    json!({"$defs": doubling_defs(levels, json!({"type": "object"})), "$ref": "#/$defs/d0"})
}

/// The `detail` of a refusal.
async fn detail(resp: reqwest::Response) -> String {
    let body = json(resp).await;
    body["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("no detail: {body}"))
        .to_owned()
}

/// A field of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[tokio::test]
async fn a_schema_whose_refs_fan_out_is_refused_when_set_naming_the_bound() {
    let folder = tempfile::tempdir().expect("temp dir");
    let server = crate::helpers::ServerProcess::start(folder.path(), &[]).await;
    let client = reqwest::Client::new();
    let schema_url = server.url("/v1/collections/tenant_a/schema");

    // 1.7 KB of text, 2^25 subschemas once the refs are written out: it
    // killed the server at its first write.
    let schema = doubling_schema(25);
    assert!(schema.to_string().len() < 2_000);
    let resp = client.put(&schema_url).json(&schema).send().await.expect("sent");
    assert_eq!(resp.status(), 400);
    let said = detail(resp).await;
    assert!(said.contains("10000"), "the bound is named: {said}");
    assert!(said.contains("134217726"), "the cost found is named: {said}");

    // Fan-out through recursion: each level of the document doubles it.
    let recursive = json!({"allOf": [
        {"properties": {"a": {"$ref": "#"}}},
        {"properties": {"a": {"$ref": "#"}}}
    ]});
    let resp = client.put(&schema_url).json(&recursive).send().await.expect("sent");
    assert_eq!(resp.status(), 400);
    let said = detail(resp).await;
    assert!(said.contains("10000") && said.contains("/a/a/a"), "{said}");

    // Nothing was set: the write goes in, and the server stays up and small.
    let resp = client.get(&schema_url).send().await.expect("sent");
    assert_eq!(resp.status(), 404);
    let resp = client
        .put(server.url("/v1/collections/tenant_a/docs/x"))
        .json(&json!([]))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 201);
    let health = client.get(server.url("/healthz")).send().await.expect("sent");
    assert_eq!(health.status(), 200);
    let peak_mib = status_kib(server.child.id().expect("running"), "VmHWM:") / 1024;
    assert!(peak_mib < 256, "the server peaked at {peak_mib} MiB");
}

#[tokio::test]
async fn a_ref_cycle_that_does_not_descend_is_refused_and_a_recursive_tree_schema_works() {
    let app = spawn_app().await;
    for cycle in [
        json!({"$ref": "#"}),
        json!({
            "$defs": {
                "a": {"allOf": [{"$ref": "#/$defs/b"}]},
                "b": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/a"}]}
            },
            "$ref": "#/$defs/a"
        }),
    ] {
        let resp = put_json(&app, PEOPLE, &cycle).await;
        assert_eq!(resp.status(), 400, "{cycle}");
        let said = detail(resp).await;
        assert!(said.contains("cycle"), "{cycle}: {said}");
    }
    assert_eq!(app.get(PEOPLE).await.status(), 404, "nothing was set");

    // Recursion through the document's own nesting is a tree: accepted.
    let tree = json!({
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "children": {"type": "array", "items": {"$ref": "#"}}
        }
    });
    assert_eq!(
        put_json(&app, "/v1/collections/trees/schema", &tree).await.status(),
        200
    );
    // So is a binary tree, whose two branches recurse on different keys.
    let binary = json!({"properties": {"left": {"$ref": "#"}, "right": {"$ref": "#"}, "v": {"type": "integer"}}});
    assert_eq!(
        put_json(&app, "/v1/collections/pairs/schema", &binary).await.status(),
        200
    );

    // 45 levels of children: 90 arrays and objects deep.
    let nest = |leaf: Value| {
        let mut doc = leaf;
        for level in 0..44 {
            doc = json!({"name": format!("n{level}"), "children": [doc]});
        }
        doc
    };
    assert_eq!(
        app.put_doc("trees", "good", &nest(json!({"name": "leaf"})))
            .await
            .status(),
        201
    );
    let resp = app.put_doc("trees", "bad", &nest(json!({"name": 7}))).await;
    assert_eq!(resp.status(), 422);
    let found = violations(&json(resp).await);
    let deep = format!("{}/name", "/children/0".repeat(44));
    assert_eq!(found, vec![(deep, "type".to_owned())]);

    let mut pair = json!({"v": 1});
    for _ in 0..40 {
        pair = json!({"left": pair.clone(), "right": {"v": 2}, "v": 3});
    }
    assert_eq!(app.put_doc("pairs", "p", &pair).await.status(), 201);
    let resp = app.put_doc("pairs", "q", &json!({"left": {"right": {"v": "x"}}})).await;
    assert_eq!(violations(&json(resp).await), pairs(&[("/left/right/v", "type")]));
    app.stop().await;
}

/// The costliest schema still accepted: each item of an array is checked
/// against 2^11 copies of `{"type": "object"}`, 8,190 subschemas in all.
fn costliest_items_schema(leaf: Value) -> Value {
    json!({"$defs": doubling_defs(11, leaf), "type": "array", "items": {"$ref": "#/$defs/d0"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_costly_check_holds_no_other_collections_write_on_its_shard() {
    use std::time::{Duration, Instant};
    // One shard: both collections are written by the same writer.
    let app = std::sync::Arc::new(spawn_app_with(&[("SHARD_LIMIT", "1")]).await);
    let schema = costliest_items_schema(json!({"type": "object"}));
    assert_eq!(
        put_json(&app, "/v1/collections/heavy/schema", &schema).await.status(),
        200
    );
    // A small document answers at once.
    let started = Instant::now();
    assert_eq!(app.put_doc("heavy", "small", &json!([{}])).await.status(), 201);
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());

    // Large ones take a while each to check.
    let large = Value::Array(vec![json!({}); 3_000]);
    let heavy: Vec<_> = (0..3)
        .map(|n| {
            let (app, large) = (app.clone(), large.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let status = app.put_doc("heavy", &format!("large{n}"), &large).await.status();
                (status, started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    assert_eq!(app.put_doc("light", "a", &json!({"n": 1})).await.status(), 201);
    let light = started.elapsed();
    let started = Instant::now();
    assert_eq!(app.get("/healthz").await.status(), 200);
    let health = started.elapsed();

    let mut slowest = Duration::ZERO;
    for task in heavy {
        let (status, took) = task.await.expect("a heavy write");
        assert_eq!(status, 201);
        slowest = slowest.max(took);
    }
    eprintln!("light write {light:?}, /healthz {health:?}, while the heavy writes took up to {slowest:?}");
    assert!(
        light < Duration::from_secs(2),
        "the other collection's write took {light:?}"
    );
    assert!(health < Duration::from_secs(2), "/healthz took {health:?}");
}

#[tokio::test]
async fn a_document_with_thousands_of_violations_answers_at_most_16_quickly() {
    use std::time::{Duration, Instant};
    let app = spawn_app().await;
    let strings = json!({"type": "array", "items": {"type": "string"}});
    assert_eq!(
        put_json(&app, "/v1/collections/plain/schema", &strings).await.status(),
        200
    );
    let numbers = Value::Array((0..5_000).map(|n| json!(n)).collect());
    let resp = app.put_doc("plain", "n", &numbers).await;
    assert_eq!(resp.status(), 422);
    let found = violations(&json(resp).await);
    assert!((1..=16).contains(&found.len()), "{found:?}");

    // Every item fails 2,048 times over: 2 million violations in all.
    let schema = costliest_items_schema(json!({"type": "string"}));
    assert_eq!(
        put_json(&app, "/v1/collections/fanned/schema", &schema).await.status(),
        200
    );
    let numbers = Value::Array((0..1_000).map(|n| json!(n)).collect());
    let started = Instant::now();
    let resp = app.put_doc("fanned", "n", &numbers).await;
    let took = started.elapsed();
    assert_eq!(resp.status(), 422);
    let found = violations(&json(resp).await);
    assert!((1..=16).contains(&found.len()), "{} violations", found.len());
    assert_eq!(found[0], ("/0".to_owned(), "type".to_owned()));
    assert!(took < Duration::from_secs(2), "the refusal took {took:?}");
    app.stop().await;
}

#[tokio::test]
async fn checking_is_bounded_per_document_and_per_page_of_mismatches() {
    use std::time::{Duration, Instant};
    let app = spawn_app().await;
    let path = "/v1/collections/heavy/schema";
    let set = json(put_json(&app, path, &costliest_items_schema(json!({"type": "object"}))).await).await;
    let cost = set["cost"].as_u64().unwrap_or_else(|| panic!("a cost: {set}"));
    assert!((8_000..=10_000).contains(&cost), "{set}");

    // What a document may cost to check: 50 million subschemas.
    let items = (50_000_000 / cost) as usize;
    let started = Instant::now();
    let resp = app
        .put_doc("heavy", "over", &Value::Array(vec![json!({}); items + 10]))
        .await;
    assert_eq!(resp.status(), 422);
    let found = violations(&json(resp).await);
    assert_eq!(found, pairs(&[("", "cost")]));
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    for n in 0..3 {
        let resp = app
            .put_doc("heavy", &format!("d{n}"), &Value::Array(vec![json!({}); items - 10]))
            .await;
        assert_eq!(resp.status(), 201);
    }

    // A page of mismatches stops once it spent two documents' worth.
    let page = json(app.get(&format!("{path}/mismatches")).await).await;
    assert_eq!(
        (page["checked"].clone(), page["count"].clone()),
        (json!(2), json!(0)),
        "{page}"
    );
    assert_eq!(page["next_start_after"], "d1", "{page}");
    let page = json(app.get(&format!("{path}/mismatches?start_after=d1")).await).await;
    assert_eq!(page["checked"], 1, "{page}");
    assert_eq!(page["next_start_after"], Value::Null, "{page}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_of_one_document_are_each_checked_on_what_they_make() {
    // Each patch is checked before it is queued against the document as it
    // was then; the writer checks again what another patch changed since.
    let app = std::sync::Arc::new(spawn_app_with(&[("SHARD_LIMIT", "1")]).await);
    let fields: serde_json::Map<String, Value> =
        (0..20).map(|n| (format!("n{n}"), json!({"type": "integer"}))).collect();
    let schema = json!({"type": "object", "properties": fields, "additionalProperties": false});
    assert_eq!(
        put_json(&app, "/v1/collections/counts/schema", &schema).await.status(),
        200
    );
    assert_eq!(app.put_doc("counts", "c", &json!({})).await.status(), 201);
    let patches: Vec<_> = (0..21)
        .map(|n| {
            let app = app.clone();
            tokio::spawn(async move {
                let patch = if n == 20 {
                    json!({"other": 1})
                } else {
                    json!({ format!("n{n}"): n })
                };
                app.patch_doc("counts", "c", &patch).await.status()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for patch in patches {
        statuses.push(patch.await.expect("a patch").as_u16());
    }
    assert_eq!(statuses[..20], [200; 20], "{statuses:?}");
    assert_eq!(statuses[20], 422);
    let doc = json(app.get_doc("counts", "c").await).await;
    let expected: serde_json::Map<String, Value> = (0..20).map(|n| (format!("n{n}"), json!(n))).collect();
    assert_eq!(doc["data"], Value::Object(expected));
}
