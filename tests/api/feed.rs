//! The change feed: every acknowledged change, in commit order per
//! document, as pages, long polls and server-sent events, resumable from a
//! cursor across disconnects, restarts and SIGKILL, and refused (410) once
//! a cursor cannot be followed without missing changes.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{json, send, spawn_app, spawn_app_on, spawn_app_with, ServerProcess, TestApp};

/// The cursor a fresh reader starts from.
async fn cursor_now(app: &TestApp, path: &str) -> String {
    let page = json(app.get(&format!("{path}?since=now")).await).await;
    page["cursor"].as_str().expect("a cursor").to_owned()
}

/// Every change after `since`, paging `limit` at a time; and the last
/// cursor.
async fn read_all(app: &TestApp, path: &str, since: &str, limit: usize, extra: &str) -> (Vec<Value>, String) {
    let mut changes = Vec::new();
    let mut cursor = since.to_owned();
    loop {
        let resp = app.get(&format!("{path}?since={cursor}&limit={limit}{extra}")).await;
        assert_eq!(resp.status(), 200, "{path}");
        let page = json(resp).await;
        let got = page["changes"].as_array().expect("changes");
        assert!(got.len() <= limit, "a page holds at most limit changes");
        changes.extend(got.iter().cloned());
        cursor = page["cursor"].as_str().expect("cursor").to_owned();
        if page["more"] == false {
            return (changes, cursor);
        }
    }
}

/// `(collection/id, kind, version)` of each change.
fn summary(changes: &[Value]) -> Vec<(String, String, u64)> {
    changes
        .iter()
        .map(|c| {
            (
                format!(
                    "{}/{}",
                    c["collection"].as_str().unwrap_or(""),
                    c["id"].as_str().unwrap_or("")
                ),
                c["kind"].as_str().unwrap_or("").to_owned(),
                c["version"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn change(key: &str, kind: &str, version: u64) -> (String, String, u64) {
    (key.to_owned(), kind.to_owned(), version)
}

#[tokio::test]
async fn a_page_names_every_acknowledged_change_in_commit_order() {
    let app = spawn_app().await;
    let since = cursor_now(&app, "/v1/changes").await;
    assert_eq!(app.put_doc("users", "alice", &json!({"n": 1})).await.status(), 201);
    assert_eq!(app.put_doc("users", "alice", &json!({"n": 2})).await.status(), 200);
    assert_eq!(app.patch_doc("users", "alice", &json!({"m": 3})).await.status(), 200);
    assert_eq!(app.put_doc("orders", "o-1", &json!({"total": 9})).await.status(), 201);
    assert_eq!(app.delete_doc("users", "alice").await.status(), 204);
    // Writing what is already stored changes nothing, and is no change.
    assert_eq!(app.put_doc("orders", "o-1", &json!({"total": 9})).await.status(), 200);
    let batch = app
        .batch(
            "orders",
            json!([
                {"op": "put", "id": "o-2", "data": {"total": 1}},
                {"op": "put", "id": "o-3", "data": {"total": 2}},
            ]),
        )
        .await;
    assert_eq!(batch.status(), 200);

    // Pages of two: the cursor carries a reader from one to the next.
    let (changes, _) = read_all(&app, "/v1/changes", &since, 2, "").await;
    let seen = summary(&changes);
    let expected_before_batch = [
        change("users/alice", "written", 1),
        change("users/alice", "written", 2),
        change("users/alice", "written", 3),
        change("orders/o-1", "written", 1),
        change("users/alice", "deleted", 3),
    ];
    assert_eq!(seen[..5], expected_before_batch[..], "{seen:?}");
    // A batch's writes on several shards commit apart: any order.
    let mut batch_part = seen[5..].to_vec();
    batch_part.sort();
    assert_eq!(
        batch_part,
        vec![change("orders/o-2", "written", 1), change("orders/o-3", "written", 1)]
    );
    for c in &changes {
        assert!(c["at"].as_str().is_some_and(|at| at.ends_with('Z')), "{c}");
        assert!(c.get("doc").is_none(), "no document unless asked: {c}");
    }

    // With include_docs, each change comes with the document as it is now.
    let (changes, _) = read_all(&app, "/v1/changes", &since, 100, "&include_docs=true").await;
    assert_eq!(changes.len(), 7);
    for c in &changes {
        match c["id"].as_str() {
            Some("alice") => assert_eq!(c["doc"], Value::Null, "alice is deleted: {c}"),
            Some("o-1") => assert_eq!(c["doc"]["data"], json!({"total": 9}), "{c}"),
            _ => assert_eq!(c["doc"]["version"], 1, "{c}"),
        }
    }

    // A reader at the end sees nothing new, and keeps its place.
    let (rest, end) = read_all(&app, "/v1/changes", &since, 100, "").await;
    assert_eq!(rest.len(), 7);
    let page = json(app.get(&format!("/v1/changes?since={end}")).await).await;
    assert_eq!(page["changes"], json!([]));
    assert_eq!(page["cursor"], end.as_str());
    assert_eq!(page["more"], false);
    app.stop().await;
}

#[tokio::test]
async fn a_collection_feed_holds_its_writes_expiries_and_drop() {
    let app = spawn_app().await;
    let since = cursor_now(&app, "/v1/collections/users/changes").await;
    app.put_doc("users", "u1", &json!({})).await;
    app.put_doc("users", "u2", &json!({})).await;
    app.put_doc("orders", "o1", &json!({})).await;
    let short = send(
        app.request(Method::PUT, "/v1/collections/users/docs/brief?ttl=1")
            .json(&json!({"brief": true})),
    )
    .await;
    assert_eq!(short.status(), 201);

    // The expiry is in the feed once the writer has removed the document.
    let deadline = Instant::now() + Duration::from_secs(10);
    let expired = loop {
        let (changes, _) = read_all(&app, "/v1/collections/users/changes", &since, 100, "").await;
        let seen = summary(&changes);
        if seen.contains(&change("users/brief", "expired", 1)) {
            break seen;
        }
        assert!(Instant::now() < deadline, "no expiry in the feed: {seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        expired.iter().all(|(key, _, _)| key.starts_with("users/")),
        "{expired:?}"
    );

    let dropped = send(app.request(Method::DELETE, "/v1/collections/users?confirm=users")).await;
    assert!(dropped.status().is_success(), "{}", dropped.status());
    let (changes, _) = read_all(&app, "/v1/collections/users/changes", &since, 100, "").await;
    let mut drops: Vec<_> = summary(&changes)
        .into_iter()
        .filter(|(_, kind, _)| kind == "dropped")
        .collect();
    drops.sort();
    assert_eq!(
        drops,
        vec![change("users/u1", "dropped", 1), change("users/u2", "dropped", 1)]
    );
    app.stop().await;
}

#[tokio::test]
async fn a_long_poll_answers_with_the_first_change_or_empty_after_its_timeout() {
    let app = spawn_app().await;
    let since = cursor_now(&app, "/v1/changes").await;

    let started = Instant::now();
    let page = json(
        app.get(&format!("/v1/changes?since={since}&feed=longpoll&timeout=300"))
            .await,
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(page["changes"], json!([]));
    assert_eq!(page["cursor"], since.as_str(), "nothing passed: the same place");

    let writer = {
        let (client, url) = (app.client.clone(), app.url("/v1/collections/notes/docs/n1"));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            client.put(url).json(&json!({"text": "hi"})).send().await.expect("put")
        })
    };
    let started = Instant::now();
    let page = json(
        app.get(&format!(
            "/v1/changes?since={since}&feed=longpoll&timeout=20000&include_docs=true"
        ))
        .await,
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered when the change came"
    );
    assert_eq!(
        summary(page["changes"].as_array().expect("changes")),
        vec![change("notes/n1", "written", 1)]
    );
    assert_eq!(page["changes"][0]["doc"]["data"], json!({"text": "hi"}));
    assert_eq!(writer.await.expect("writer").status(), 201);
    app.stop().await;
}

/// A reader of a `text/event-stream` answer.
struct Events {
    resp: reqwest::Response,
    buffer: String,
}

/// One server-sent event: its id and its data as JSON.
struct Event {
    id: String,
    kind: String,
    data: Value,
}

impl Events {
    async fn open(client: &reqwest::Client, url: &str, last_event_id: Option<&str>) -> Self {
        let mut request = client.get(url);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let resp = send(request).await;
        assert_eq!(resp.status(), 200, "{url}");
        let content_type = resp.headers()["content-type"].to_str().unwrap_or("").to_owned();
        assert!(content_type.starts_with("text/event-stream"), "{content_type}");
        Self {
            resp,
            buffer: String::new(),
        }
    }

    /// The next event, or `None` if none comes within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut kind, mut data) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        kind = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if data.is_empty() {
                    continue; // a heartbeat comment
                }
                let data = serde_json::from_str(&data).expect("event data is JSON");
                return Some(Event { id, kind, data });
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk()).await.ok()?;
            let chunk = chunk.expect("stream readable")?;
            self.buffer.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }
}

#[tokio::test]
async fn event_streams_resume_after_their_last_event_without_losing_or_repeating_a_change() {
    const WRITERS: usize = 6;
    const KEYS_PER_WRITER: usize = 8;
    const WRITES_PER_WRITER: usize = 120;
    let app = spawn_app().await;
    let since = cursor_now(&app, "/v1/changes").await;

    // Writers on disjoint keys, so each acknowledged version is a commit of
    // its own and must be in the feed exactly once.
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (client, base) = (app.client.clone(), app.address.clone());
        writers.push(tokio::spawn(async move {
            let mut acked: Vec<(String, u64)> = Vec::new();
            for i in 0..WRITES_PER_WRITER {
                let id = format!("w{w}-k{}", i % KEYS_PER_WRITER);
                let resp = client
                    .put(format!("{base}/v1/collections/storm/docs/{id}"))
                    .json(&json!({"w": w, "i": i}))
                    .send()
                    .await
                    .expect("put");
                assert!(resp.status().is_success(), "{}", resp.status());
                let body: Value = resp.json().await.expect("envelope");
                acked.push((format!("storm/{id}"), body["version"].as_u64().expect("version")));
            }
            acked
        }));
    }

    // Two followers; each drops its stream every few events and reconnects
    // with the last id it saw, as EventSource does.
    let expected_total = WRITERS * WRITES_PER_WRITER;
    let mut followers = Vec::new();
    for f in 0..2u64 {
        let (client, base) = (app.client.clone(), app.address.clone());
        let since = since.clone();
        followers.push(tokio::spawn(async move {
            let mut seen: Vec<(String, u64)> = Vec::new();
            let mut ids = HashSet::new();
            let mut last_id: Option<String> = None;
            let mut rng = 0x2545_F491_4F6C_DD1D_u64 ^ (f + 1);
            let deadline = Instant::now() + Duration::from_secs(60);
            while seen.len() < expected_total {
                assert!(
                    Instant::now() < deadline,
                    "follower {f} saw {} of {expected_total}",
                    seen.len()
                );
                let path = match &last_id {
                    Some(_) => "/v1/changes?feed=eventsource".to_owned(),
                    None => format!("/v1/changes?feed=eventsource&since={since}"),
                };
                let mut events = Events::open(&client, &format!("{base}{path}"), last_id.as_deref()).await;
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let take = 1 + (rng % 97) as usize;
                for _ in 0..take {
                    let Some(event) = events.next(Duration::from_secs(5)).await else {
                        break;
                    };
                    assert_eq!(event.kind, "change");
                    assert!(ids.insert(event.id.clone()), "event id {} came twice", event.id);
                    let key = format!(
                        "{}/{}",
                        event.data["collection"].as_str().expect("collection"),
                        event.data["id"].as_str().expect("id")
                    );
                    assert_eq!(event.data["kind"], "written");
                    seen.push((key, event.data["version"].as_u64().expect("version")));
                    last_id = Some(event.id);
                }
            }
            seen
        }));
    }

    let mut acked: Vec<(String, u64)> = Vec::new();
    for writer in writers {
        acked.extend(writer.await.expect("writer"));
    }
    acked.sort();
    for follower in followers {
        let seen = follower.await.expect("follower");
        // Each document's versions in commit order: rising by one.
        let mut per_key: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for (key, version) in &seen {
            per_key.entry(key.as_str()).or_default().push(*version);
        }
        for (key, versions) in &per_key {
            let expected: Vec<u64> = (1..=versions.len() as u64).collect();
            assert_eq!(versions, &expected, "{key}'s changes in order, none lost or repeated");
        }
        let mut seen = seen;
        seen.sort();
        assert_eq!(seen, acked, "exactly the acknowledged writes");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_cursor_survives_sigkill_and_every_acknowledged_write_is_in_the_feed() {
    let folder = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(folder.path(), &[]).await;
    let client = reqwest::Client::new();
    let page: Value = client
        .get(server.url("/v1/changes?since=now"))
        .send()
        .await
        .expect("feed")
        .json()
        .await
        .expect("page");
    let since = page["cursor"].as_str().expect("cursor").to_owned();
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (client, url) = (client.clone(), server.url(""));
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..60 {
                let id = format!("t{t}-{i}");
                let resp = client
                    .put(format!("{url}/v1/collections/kill/docs/{id}"))
                    .json(&json!({"i": i}))
                    .send()
                    .await
                    .expect("put");
                assert_eq!(resp.status(), 201);
                acked.push(format!("kill/{id}"));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.expect("writer"));
    }
    let mut server = server;
    server.signal("KILL");
    server.wait().await;

    let app = spawn_app_on(folder.path(), &[]).await;
    let (changes, _) = read_all(&app, "/v1/collections/kill/changes", &since, 1000, "").await;
    let mut seen: Vec<String> = summary(&changes).into_iter().map(|(key, _, _)| key).collect();
    seen.sort();
    acked.sort();
    assert_eq!(seen, acked, "every acknowledged write, once");
    app.stop().await;
}

#[tokio::test]
async fn a_cursor_the_feed_cannot_follow_any_more_is_gone() {
    let data = tempfile::tempdir().expect("temp dir");
    let settings = [("SHARD_LIMIT", "1"), ("EXDAAS_FEED_MAX_ENTRIES", "1000")];
    let app = spawn_app_on(data.path(), &settings).await;
    let oldest = cursor_now(&app, "/v1/changes").await;
    for round in 0..3 {
        let ops: Vec<Value> = (0..500)
            .map(|i| json!({"op": "put", "id": format!("d{round}-{i}"), "data": {"i": i}}))
            .collect();
        assert_eq!(app.batch("many", json!(ops)).await.status(), 200);
    }
    app.stop().await;

    // The feed keeps the last 1000 of 1500: from the start, some are gone.
    let app = spawn_app_on(data.path(), &settings).await;
    for since in [oldest.as_str(), "0"] {
        let resp = app.get(&format!("/v1/changes?since={since}")).await;
        assert_eq!(resp.status(), 410, "since={since}");
        let problem = json(resp).await;
        assert!(
            problem["detail"].as_str().is_some_and(|d| d.contains("since=now")),
            "says how to start over: {problem}"
        );
    }
    // A recent cursor still reads.
    let recent = cursor_now(&app, "/v1/changes").await;
    app.put_doc("many", "late", &json!({})).await;
    let (changes, _) = read_all(&app, "/v1/changes", &recent, 100, "").await;
    assert_eq!(summary(&changes), vec![change("many/late", "written", 1)]);
    let before_reshard = cursor_now(&app, "/v1/changes").await;
    app.stop().await;

    // A reshard starts new feeds: older cursors, and since=0, are gone.
    let count = exdaas::domain::ShardCount::new(2).expect("2 shards");
    exdaas::store::maintenance::reshard(data.path(), count)
        .await
        .expect("reshard");
    let resharded = [("SHARD_LIMIT", "2"), ("EXDAAS_FEED_MAX_ENTRIES", "1000")];
    let app = spawn_app_on(data.path(), &resharded).await;
    for since in [before_reshard.as_str(), "0"] {
        assert_eq!(
            app.get(&format!("/v1/changes?since={since}")).await.status(),
            410,
            "since={since}"
        );
    }
    let before_restore = cursor_now(&app, "/v1/changes").await;
    app.stop().await;

    // So does a restore: the folder is another one.
    let backup = tempfile::tempdir().expect("temp dir");
    let snapshot = backup.path().join("snapshot");
    exdaas::store::maintenance::backup(data.path(), &snapshot)
        .await
        .expect("backup");
    let restored = tempfile::tempdir().expect("temp dir");
    let target = restored.path().join("data");
    exdaas::store::maintenance::restore(&snapshot, &target)
        .await
        .expect("restore");
    let app = spawn_app_on(&target, &resharded).await;
    assert_eq!(
        app.get(&format!("/v1/changes?since={before_restore}")).await.status(),
        410
    );
    app.stop().await;
}

#[tokio::test]
async fn feed_requests_are_checked_and_waiting_clients_are_bounded() {
    let app = spawn_app_with(&[("EXDAAS_FEED_MAX_SUBSCRIBERS", "1")]).await;
    for (query, status) in [
        ("since=garbage", 400),
        ("since=0000000000000001-0-1.2.3.4", 410),
        ("since=0000000000000001-0-1.2.3.4.5.6.7.8.9.10", 410),
        ("limit=0", 400),
        ("limit=1001", 400),
        ("feed=sometimes", 400),
        ("feed=longpoll&timeout=300001", 400),
        ("include_docs=maybe", 400),
    ] {
        let resp = app.get(&format!("/v1/changes?{query}")).await;
        assert_eq!(resp.status(), status, "{query}");
        let problem = json(resp).await;
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{query}: {problem}"
        );
    }
    // A cursor from the future (a file restored under its name) is gone too.
    let now = cursor_now(&app, "/v1/changes").await;
    let (head, _) = now.rsplit_once('-').expect("cursor");
    let ahead = format!("{head}-9.9.9.9");
    assert_eq!(app.get(&format!("/v1/changes?since={ahead}")).await.status(), 410);

    // One client may wait; the next hears 503 with Retry-After, and may
    // still read without waiting.
    let mut stream = Events::open(&app.client, &app.url("/v1/changes?feed=eventsource"), None).await;
    let refused = app.get("/v1/changes?feed=longpoll&timeout=100").await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert!(json(refused).await["detail"]
        .as_str()
        .is_some_and(|d| d.contains("EXDAAS_FEED_MAX_SUBSCRIBERS")));
    assert_eq!(app.get("/v1/changes").await.status(), 200);
    app.put_doc("x", "1", &json!({})).await;
    let event = stream.next(Duration::from_secs(5)).await.expect("an event");
    assert_eq!(event.data["id"], "1");
    app.stop().await;
}

#[tokio::test]
async fn a_key_follows_only_the_collections_it_reads() {
    let reader = "read:0123456789abcdef-reader:users";
    let admin = "admin:0123456789abcdef-admin";
    let app = spawn_app_with(&[("EXDAAS_API_KEYS", &format!("{reader};{admin}"))]).await;
    let get = |path: &str, key: &str| {
        app.request(Method::GET, path)
            .header("Authorization", format!("Bearer {key}"))
            .send()
    };
    assert_eq!(
        get("/v1/collections/users/changes", "0123456789abcdef-reader")
            .await
            .expect("sent")
            .status(),
        200
    );
    assert_eq!(
        get("/v1/collections/orders/changes", "0123456789abcdef-reader")
            .await
            .expect("sent")
            .status(),
        403
    );
    assert_eq!(
        get("/v1/changes", "0123456789abcdef-reader")
            .await
            .expect("sent")
            .status(),
        403
    );
    assert_eq!(
        get("/v1/changes", "0123456789abcdef-admin")
            .await
            .expect("sent")
            .status(),
        200
    );
    assert_eq!(app.get("/v1/changes").await.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn stopping_the_server_ends_long_polls_and_event_streams_at_once() {
    let app = spawn_app().await;
    let mut stream = Events::open(&app.client, &app.url("/v1/changes?feed=eventsource"), None).await;
    let poll = {
        let (client, url) = (app.client.clone(), app.url("/v1/changes?feed=longpoll&timeout=300000"));
        tokio::spawn(async move { client.get(url).send().await.expect("long poll") })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the stop waited {:?} for followers",
        started.elapsed()
    );
    let answered = poll.await.expect("long poll");
    assert_eq!(answered.status(), 200, "the long poll answered with what it had");
    assert!(stream.next(Duration::from_secs(2)).await.is_none(), "the stream ended");
}
