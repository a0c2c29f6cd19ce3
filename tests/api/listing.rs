//! `GET /v1/collections/{c}/docs`: pages in id byte order merged across
//! every shard, cursors, prefixes, `start_after` and `keys_only`.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{doc_path, json, rows_on_disk, send, spawn_app, TestApp};

/// Stores `{"id": id}` under each id, in batches.
async fn store_ids(app: &TestApp, collection: &str, ids: &[String]) {
    for chunk in ids.chunks(500) {
        let ops: Vec<Value> = chunk
            .iter()
            .map(|id| json!({"op": "put", "id": id, "data": {"id": id}}))
            .collect();
        let resp = app.batch(collection, json!(ops)).await;
        assert_eq!(resp.status(), 200);
        for result in json(resp).await["results"].as_array().expect("results") {
            assert_eq!(result["status"], 201, "{result}");
        }
    }
}

/// One page: its ids and its `next_cursor`.
async fn page(app: &TestApp, collection: &str, query: &str) -> (Vec<String>, Option<String>) {
    let path = format!("/v1/collections/{collection}/docs?{query}");
    let resp = app.get(&path).await;
    assert_eq!(resp.status(), 200, "{path}");
    let body = json(resp).await;
    let ids = body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["id"].as_str().expect("id").to_owned())
        .collect();
    (ids, body["next_cursor"].as_str().map(str::to_owned))
}

/// Every page from the start with `query`, following the cursors.
async fn all_pages(app: &TestApp, collection: &str, query: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let (ids, mut cursor) = page(app, collection, query).await;
    pages.push(ids);
    while let Some(next) = cursor {
        let (ids, after) = page(app, collection, &format!("{query}&cursor={next}")).await;
        assert!(!ids.is_empty(), "a page with a next_cursor led to an empty page");
        pages.push(ids);
        cursor = after;
    }
    pages
}

fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:03}")).collect()
}

fn sorted(ids: &[String]) -> Vec<String> {
    let mut ids = ids.to_vec();
    ids.sort();
    ids
}

#[tokio::test]
async fn items_come_in_id_byte_order_merged_across_every_shard() {
    let app = spawn_app().await;
    let mut ids: Vec<String> = [
        "~tilde", "Zed", "_under", "a", "a-b", "a.b", "a:b", "a@b", "aa", "b", "B", "0", "10", "9", "-dash", "@at",
        "A~", "a~", "x", "X",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    ids.extend((0..40).map(|i| format!("n{}", i * 7919 % 1000)));
    store_ids(&app, "mixed", &ids).await;

    // The documents really are spread over all four shards.
    let per_shard = rows_on_disk(&app.data_dir, "mixed").await;
    assert_eq!(per_shard.len(), 4);
    assert!(per_shard.iter().all(|&n| n > 0), "rows per shard: {per_shard:?}");

    let resp = app.get("/v1/collections/mixed/docs?limit=1000").await;
    assert_eq!(resp.status(), 200);
    let body = json(resp).await;
    assert_eq!(body["next_cursor"], json!(null));
    let items = body["items"].as_array().expect("items");
    let listed: Vec<String> = items.iter().map(|i| i["id"].as_str().expect("id").to_owned()).collect();
    assert_eq!(
        listed,
        sorted(&ids),
        "byte order: '-' < digits < ':' < '@' < upper < '_' < lower < '~'"
    );
    for item in items {
        assert_eq!(item["collection"], "mixed");
        assert_eq!(item["version"], 1);
        assert_eq!(item["data"], json!({"id": item["id"]}));
    }
}

#[tokio::test]
async fn pages_hold_100_by_default_and_limit_is_bounded() {
    let app = spawn_app().await;
    let ids = numbered("d", 250);
    store_ids(&app, "c", &ids).await;

    let (first, cursor) = page(&app, "c", "").await;
    assert_eq!(first, ids[..100].to_vec());
    assert!(cursor.is_some());

    let (all, cursor) = page(&app, "c", "limit=1000").await;
    assert_eq!((all.len(), cursor), (250, None));
    let (one, cursor) = page(&app, "c", "limit=1").await;
    assert_eq!(one, vec!["d000".to_string()]);
    assert!(cursor.is_some());

    for limit in ["0", "1001", "-1", "abc"] {
        let resp = app.get(&format!("/v1/collections/c/docs?limit={limit}")).await;
        assert_eq!(resp.status(), 400, "limit={limit}");
        assert_eq!(json(resp).await["status"], 400, "limit={limit}");
    }
}

#[tokio::test]
async fn cursors_return_every_document_once_in_order() {
    let app = spawn_app().await;
    let ids = numbered("d", 250);
    store_ids(&app, "c", &ids).await;

    let pages = all_pages(&app, "c", "limit=40").await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![40, 40, 40, 40, 40, 40, 10]);
    assert_eq!(pages.concat(), ids);

    // A limit that divides the collection: the last full page ends it.
    let pages = all_pages(&app, "c", "limit=50").await;
    assert_eq!(pages.len(), 5, "no empty page after the last full one");
    assert_eq!(pages.concat(), ids);
}

#[tokio::test]
async fn documents_added_while_paging_appear_only_after_the_cursor() {
    let app = spawn_app().await;
    let ids = numbered("k", 100);
    store_ids(&app, "c", &ids).await;

    let (first, cursor) = page(&app, "c", "limit=30").await;
    assert_eq!(first, ids[..30].to_vec());
    let cursor = cursor.expect("more pages");

    let before = ["a-early", "k0005", "k0289"];
    let after = ["k0295", "k050x", "zz-late"];
    for id in before.iter().chain(&after) {
        assert_eq!(app.put_doc("c", id, &json!({"late": true})).await.status(), 201);
    }
    // Changed or deleted while paging: a changed old one is not listed again,
    // a deleted later one is not listed at all.
    app.put_doc("c", "k010", &json!({"changed": true})).await;
    assert_eq!(app.delete_doc("c", "k060").await.status(), 204);

    let mut rest = Vec::new();
    let mut next = Some(cursor);
    while let Some(cursor) = next {
        let (ids, after_cursor) = page(&app, "c", &format!("limit=30&cursor={cursor}")).await;
        rest.extend(ids);
        next = after_cursor;
    }
    let mut expected: Vec<String> = ids[30..].iter().filter(|id| *id != "k060").cloned().collect();
    expected.extend(after.iter().map(|s| s.to_string()));
    assert_eq!(rest, sorted(&expected));

    let mut seen = HashSet::new();
    for id in first.iter().chain(&rest) {
        assert!(seen.insert(id), "{id} listed twice");
    }
    for id in before {
        assert!(!seen.contains(&id.to_string()), "{id} sorts before the cursor");
    }
}

#[tokio::test]
async fn prefix_and_start_after_narrow_the_listing() {
    let app = spawn_app().await;
    let ids: Vec<String> = [
        "admin:1", "usa", "user", "user:1", "user:10", "user:2", "users", "a~", "a~b", "a~~", "b",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    store_ids(&app, "c", &ids).await;

    let (listed, cursor) = page(&app, "c", "prefix=user:").await;
    assert_eq!(
        (listed, cursor),
        (vec!["user:1".into(), "user:10".into(), "user:2".into()], None)
    );
    let (listed, _) = page(&app, "c", "prefix=user").await;
    assert_eq!(listed, vec!["user", "user:1", "user:10", "user:2", "users"]);
    // The last printable id byte as the prefix's end.
    let (listed, _) = page(&app, "c", "prefix=a~").await;
    assert_eq!(listed, vec!["a~", "a~b", "a~~"]);
    let (listed, _) = page(&app, "c", "prefix=nothing").await;
    assert!(listed.is_empty());
    let (listed, _) = page(&app, "c", "prefix=").await;
    assert_eq!(listed.len(), ids.len(), "an empty prefix is no prefix");

    let (listed, _) = page(&app, "c", "start_after=user:10").await;
    assert_eq!(listed, vec!["user:2", "users"]);
    // start_after need not exist.
    let (listed, _) = page(&app, "c", "start_after=user:1a").await;
    assert_eq!(listed, vec!["user:2", "users"]);
    let (listed, _) = page(&app, "c", "prefix=user:&start_after=user:10").await;
    assert_eq!(listed, vec!["user:2"]);
    // A start before the prefix is overtaken by it.
    let (listed, _) = page(&app, "c", "prefix=user:&start_after=a").await;
    assert_eq!(listed, vec!["user:1", "user:10", "user:2"]);

    // Paging keeps the prefix.
    let pages = all_pages(&app, "c", "prefix=user:&limit=2").await;
    assert_eq!(pages, vec![vec!["user:1", "user:10"], vec!["user:2"]]);

    // With a cursor and start_after both, the later bound counts.
    let (_, cursor) = page(&app, "c", "prefix=user:&limit=1").await;
    let cursor = cursor.expect("more");
    let (listed, _) = page(&app, "c", &format!("prefix=user:&start_after=a&cursor={cursor}")).await;
    assert_eq!(listed, vec!["user:10", "user:2"]);
    let (listed, _) = page(&app, "c", &format!("prefix=user:&start_after=user:10&cursor={cursor}")).await;
    assert_eq!(listed, vec!["user:2"]);
    for query in ["prefix=a%20b", "start_after=a%20b"] {
        let resp = app.get(&format!("/v1/collections/c/docs?{query}")).await;
        assert_eq!(resp.status(), 400, "{query}");
    }
}

#[tokio::test]
async fn a_cursor_the_server_did_not_give_is_refused() {
    let app = spawn_app().await;
    store_ids(&app, "c", &numbered("d", 3)).await;
    // Not hex; hex of an invalid id ("a b"); hex of invalid UTF-8; empty.
    for cursor in ["zz", "612062", "ff", "abc", ""] {
        let resp = app.get(&format!("/v1/collections/c/docs?cursor={cursor}")).await;
        assert_eq!(resp.status(), 400, "cursor={cursor:?}");
        let problem = json(resp).await;
        assert!(
            problem["detail"].as_str().is_some_and(|d| d.contains("cursor")),
            "{problem}"
        );
    }
}

#[tokio::test]
async fn keys_only_leaves_the_data_out() {
    let app = spawn_app().await;
    store_ids(&app, "c", &numbered("d", 5)).await;
    let resp = app.get("/v1/collections/c/docs?keys_only=true").await;
    let body = json(resp).await;
    let items = body["items"].as_array().expect("items");
    assert_eq!(items.len(), 5);
    for item in items {
        let fields = item.as_object().expect("an envelope");
        assert!(!fields.contains_key("data"), "{item}");
        for key in ["collection", "id", "version", "updated_at", "expires_at"] {
            assert!(fields.contains_key(key), "{key} missing: {item}");
        }
    }
    let body = json(app.get("/v1/collections/c/docs?keys_only=false").await).await;
    assert_eq!(body["items"][0]["data"], json!({"id": "d000"}));
}

#[tokio::test]
async fn an_empty_or_unknown_collection_lists_nothing() {
    let app = spawn_app().await;
    let body = json(app.get("/v1/collections/none/docs").await).await;
    assert_eq!(body, json!({"items": [], "next_cursor": null}));
    assert_eq!(app.get("/v1/collections/b%C3%A4d/docs").await.status(), 400);
}

#[tokio::test]
async fn expired_documents_are_not_listed() {
    let app = spawn_app().await;
    store_ids(&app, "c", &["p1".to_string(), "p3".to_string()]).await;
    for id in ["p0", "p2", "p4", "p5", "p6"] {
        let resp = send(
            app.request(Method::PUT, &format!("{}?ttl=1", doc_path("c", id)))
                .json(&json!("short-lived")),
        )
        .await;
        assert_eq!(resp.status(), 201);
    }
    let (listed, _) = page(&app, "c", "limit=10").await;
    assert_eq!(listed.len(), 7);

    tokio::time::sleep(Duration::from_millis(1150)).await;
    // The last page ends at the last live document, although expired rows
    // (maybe not yet swept) follow it.
    let pages = all_pages(&app, "c", "limit=2").await;
    assert_eq!(pages, vec![vec!["p1", "p3"]]);
    let (listed, _) = page(&app, "c", "keys_only=true").await;
    assert_eq!(listed, vec!["p1", "p3"]);
    let (listed, _) = page(&app, "c", "prefix=p&start_after=p1").await;
    assert_eq!(listed, vec!["p3"]);
}

#[tokio::test]
async fn a_prefix_that_is_not_itself_a_valid_id_still_lists() {
    let app = spawn_app().await;
    store_ids(&app, "c", &[".x".to_string(), "..y".to_string(), "z".to_string()]).await;
    let (listed, _) = page(&app, "c", "prefix=.").await;
    assert_eq!(listed, vec!["..y", ".x"]);
    let (listed, _) = page(&app, "c", "prefix=..").await;
    assert_eq!(listed, vec!["..y"]);
}
