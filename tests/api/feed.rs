//! The change feed: every acknowledged change, in commit order per
//! document, as pages, long polls and server-sent events, resumable from a
//! cursor across disconnects, restarts and SIGKILL, and refused (410) once
//! a cursor cannot be followed without missing changes.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{
    json, merge_patch, send, skip_on_postgres, spawn_app, spawn_app_on, spawn_app_with, ServerProcess, TestApp,
};

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
        assert!(c["updated_at"].as_str().is_some_and(|at| at.ends_with('Z')), "{c}");
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
async fn a_long_poll_answers_with_the_first_change_or_empty_after_its_wait() {
    let app = spawn_app().await;
    let since = cursor_now(&app, "/v1/changes").await;

    let started = Instant::now();
    let page = json(app.get(&format!("/v1/changes?since={since}&wait=1")).await).await;
    assert!(started.elapsed() >= Duration::from_secs(1));
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
        app.get(&format!("/v1/changes?since={since}&wait=20&include_docs=true"))
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

#[tokio::test]
async fn a_prefix_narrows_the_feed_to_matching_ids() {
    let app = spawn_app().await;
    let since = cursor_now(&app, "/v1/collections/logs/changes").await;
    for id in ["web-1", "web-2", "db-1", "webhook"] {
        app.put_doc("logs", id, &json!({})).await;
    }
    let (changes, _) = read_all(&app, "/v1/collections/logs/changes", &since, 100, "&prefix=web-").await;
    let mut ids: Vec<_> = summary(&changes).into_iter().map(|(key, _, _)| key).collect();
    ids.sort();
    assert_eq!(ids, ["logs/web-1", "logs/web-2"]);
    app.stop().await;
}

/// A reader of a `text/event-stream` answer.
struct Events {
    resp: reqwest::Response,
    buffer: String,
}

/// One server-sent event: its id, its type and its data as JSON.
struct Event {
    id: String,
    kind: String,
    data: Value,
}

impl Events {
    /// Opens a stream with `Accept: text/event-stream`, resuming after
    /// `last_event_id` when given.
    async fn open(client: &reqwest::Client, url: &str, last_event_id: Option<&str>) -> Self {
        let mut request = client.get(url).header("Accept", "text/event-stream");
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

    /// The next event, or `None` if none comes within `wait` or the stream
    /// ends.
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
            let chunk = chunk.ok()??;
            self.buffer.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }
}

/// Deterministic random numbers, so a failure can be replayed.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// `(kind, version)` of one change of one document.
type Step = (String, u64);

/// What one writer did to its own documents, acknowledged, in order.
type Ledger = BTreeMap<String, Vec<Step>>;

/// A writer of its own keys (`{prefix}-k*`, and write-once `{prefix}-e*`
/// that expire): creates, replaces, patches, deletes, batches and short
/// lives, each acknowledged change recorded in order.
async fn storm_writer(client: reqwest::Client, base: String, prefix: String, steps: usize, seed: u64) -> Ledger {
    const KEYS: u64 = 6;
    let mut rng = seed;
    let mut ledger = Ledger::new();
    let mut live: BTreeMap<String, u64> = BTreeMap::new();
    let docs = format!("{base}/v1/collections/storm/docs");
    for step in 0..steps {
        let id = format!("{prefix}-k{}", next_random(&mut rng) % KEYS);
        let key = format!("storm/{id}");
        match next_random(&mut rng) % 10 {
            // A patch of a live document.
            0 | 1 if live.contains_key(&id) => {
                let resp = send(merge_patch(
                    client.patch(format!("{docs}/{id}")),
                    &json!({"step": step}),
                ))
                .await;
                assert_eq!(resp.status(), 200);
                let version = json(resp).await["version"].as_u64().expect("version");
                live.insert(id, version);
                ledger.entry(key).or_default().push(("written".into(), version));
            }
            // A delete of a live document.
            2 if live.contains_key(&id) => {
                let resp = send(client.delete(format!("{docs}/{id}"))).await;
                assert_eq!(resp.status(), 204);
                let version = live.remove(&id).expect("live");
                ledger.entry(key).or_default().push(("deleted".into(), version));
            }
            // A batch over up to three of the writer's keys (several shards).
            3 => {
                let mut ids: Vec<String> = (0..3)
                    .map(|_| format!("{prefix}-k{}", next_random(&mut rng) % KEYS))
                    .collect();
                ids.sort();
                ids.dedup();
                let ops: Vec<Value> = ids
                    .iter()
                    .map(|id| json!({"op": "put", "id": id, "data": {"step": step}}))
                    .collect();
                let resp = send(
                    client
                        .post(format!("{base}/v1/collections/storm/batch"))
                        .json(&json!({ "ops": ops })),
                )
                .await;
                assert_eq!(resp.status(), 200);
                let answer = json(resp).await;
                for (id, result) in ids.iter().zip(answer["results"].as_array().expect("results")) {
                    let version = result["doc"]["version"].as_u64().or_else(|| result["version"].as_u64());
                    let version = version.unwrap_or_else(|| panic!("a version in {result}"));
                    live.insert(id.clone(), version);
                    ledger
                        .entry(format!("storm/{id}"))
                        .or_default()
                        .push(("written".into(), version));
                }
            }
            // A document that lives one second, never touched again.
            4 => {
                let id = format!("{prefix}-e{step}");
                let resp = send(client.put(format!("{docs}/{id}?ttl=1")).json(&json!({"brief": step}))).await;
                assert_eq!(resp.status(), 201);
                let steps = ledger.entry(format!("storm/{id}")).or_default();
                steps.push(("written".into(), 1));
                steps.push(("expired".into(), 1));
            }
            // A create or a replace.
            _ => {
                let resp = send(client.put(format!("{docs}/{id}")).json(&json!({"step": step}))).await;
                assert!(resp.status().is_success(), "{}", resp.status());
                let version = json(resp).await["version"].as_u64().expect("version");
                live.insert(id, version);
                ledger.entry(key).or_default().push(("written".into(), version));
            }
        }
    }
    ledger
}

/// A follower of the whole feed by event stream that drops its connection
/// every few events and resumes with the last id it saw, as EventSource
/// does, until it has seen `expected` changes. Each document's changes, in
/// the order they came; every event id it was sent.
async fn follow_with_reconnects(
    client: reqwest::Client,
    base: String,
    since: String,
    expected: usize,
    seed: u64,
) -> Ledger {
    let mut seen = Ledger::new();
    let mut count = 0;
    let mut ids = HashSet::new();
    let mut last_id: Option<String> = None;
    let mut rng = seed;
    let deadline = Instant::now() + Duration::from_secs(90);
    while count < expected {
        assert!(Instant::now() < deadline, "saw {count} of {expected} changes");
        let url = match &last_id {
            Some(_) => format!("{base}/v1/changes"),
            None => format!("{base}/v1/changes?since={since}"),
        };
        let mut events = Events::open(&client, &url, last_id.as_deref()).await;
        let take = 1 + next_random(&mut rng) % 60;
        for _ in 0..take {
            let Some(event) = events.next(Duration::from_secs(5)).await else {
                break;
            };
            assert_eq!(event.kind, "change", "{}", event.data);
            assert!(ids.insert(event.id.clone()), "event id {} came twice", event.id);
            let key = format!(
                "{}/{}",
                event.data["collection"].as_str().expect("collection"),
                event.data["id"].as_str().expect("id")
            );
            let step = (
                event.data["kind"].as_str().expect("kind").to_owned(),
                event.data["version"].as_u64().expect("version"),
            );
            seen.entry(key).or_default().push(step);
            count += 1;
            last_id = Some(event.id);
        }
    }
    seen
}

#[tokio::test]
async fn a_storm_of_writers_reaches_every_reconnecting_stream_exactly_once_in_order() {
    const WRITERS: u64 = 6;
    const STEPS: usize = 80;
    let app = spawn_app().await;
    let since = cursor_now(&app, "/v1/changes").await;

    // Writers on disjoint documents: each acknowledged change of a document
    // is a commit of its own, so each must be in the feed once, in order.
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (client, base) = (app.client.clone(), app.address.clone());
            tokio::spawn(storm_writer(
                client,
                base,
                format!("w{w}"),
                STEPS,
                0x9E37_79B9_7F4A_7C15 ^ (w + 1),
            ))
        })
        .collect();
    let mut acked = Ledger::new();
    for writer in writers {
        acked.extend(writer.await.expect("writer"));
    }
    let expected: usize = acked.values().map(Vec::len).sum();

    // Three followers, started while the last expiries are still due.
    let followers: Vec<_> = (0..3u64)
        .map(|f| {
            let (client, base, since) = (app.client.clone(), app.address.clone(), since.clone());
            tokio::spawn(follow_with_reconnects(
                client,
                base,
                since,
                expected,
                0x2545_F491_4F6C_DD1D ^ (f + 1),
            ))
        })
        .collect();
    for follower in followers {
        let seen = follower.await.expect("follower");
        for (key, steps) in &acked {
            assert_eq!(
                seen.get(key),
                Some(steps),
                "{key}: every acknowledged change, in order, once"
            );
        }
        assert_eq!(seen.len(), acked.len(), "no change the writers did not make");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_stream_resumes_after_sigkill_and_restart_missing_nothing_acknowledged() {
    let folder = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(folder.path(), &[]).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let base = server.url("");
    let page: Value = json(send(client.get(format!("{base}/v1/changes?since=now"))).await).await;
    let since = page["cursor"].as_str().expect("cursor").to_owned();

    // A follower reads while four writers write documents once each.
    let follower = {
        let (client, url) = (client.clone(), format!("{base}/v1/changes?since={since}"));
        tokio::spawn(async move {
            let mut events = Events::open(&client, &url, None).await;
            let mut seen = Vec::new();
            let mut last_id = None;
            while let Some(event) = events.next(Duration::from_secs(3)).await {
                if event.kind != "change" {
                    break;
                }
                seen.push(event.data["id"].as_str().expect("id").to_owned());
                last_id = Some(event.id);
            }
            (seen, last_id)
        })
    };
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let (client, base) = (client.clone(), base.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0.. {
                    let id = format!("t{t}-{i}");
                    let sent = client
                        .put(format!("{base}/v1/collections/kill/docs/{id}"))
                        .json(&json!({"i": i}))
                        .send()
                        .await;
                    match sent {
                        Ok(resp) if resp.status() == 201 => acked.push(id),
                        _ => return acked,
                    }
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut server = server;
    server.signal("KILL");
    server.wait().await;
    let mut acked = Vec::new();
    for writer in writers {
        acked.extend(writer.await.expect("writer"));
    }
    let (mut seen, last_id) = follower.await.expect("follower");
    assert!(!acked.is_empty(), "writes were acknowledged before the kill");

    // Restarted on the same folder, the stream resumes where it stopped.
    let app = spawn_app_on(folder.path(), &[]).await;
    let resume = last_id.unwrap_or_else(|| since.clone());
    let mut events = Events::open(&app.client, &app.url("/v1/changes"), Some(&resume)).await;
    while let Some(event) = events.next(Duration::from_secs(2)).await {
        seen.push(event.data["id"].as_str().expect("id").to_owned());
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no change twice");
    for id in &acked {
        assert!(unique.contains(id), "acknowledged {id} is in the feed");
    }
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
    // So does a stream, before it begins.
    let refused = send(
        app.request(Method::GET, &format!("/v1/changes?since={oldest}"))
            .header("Accept", "text/event-stream"),
    )
    .await;
    assert_eq!(refused.status(), 410);
    // A recent cursor still reads.
    let recent = cursor_now(&app, "/v1/changes").await;
    app.put_doc("many", "late", &json!({})).await;
    let (changes, _) = read_all(&app, "/v1/changes", &recent, 100, "").await;
    assert_eq!(summary(&changes), vec![change("many/late", "written", 1)]);
    if skip_on_postgres("reshard and restore are the data folder's commands") {
        return;
    }
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
        ("wait=301", 400),
        ("wait=-1", 400),
        ("prefix=a%20b", 400),
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
    let mut stream = Events::open(&app.client, &app.url("/v1/changes"), None).await;
    let refused = app.get("/v1/changes?wait=1").await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert!(json(refused).await["detail"]
        .as_str()
        .is_some_and(|d| d.contains("EXDAAS_FEED_MAX_SUBSCRIBERS")));
    assert_eq!(app.get("/v1/changes").await.status(), 200);
    app.put_doc("x", "1", &json!({})).await;
    let event = stream.next(Duration::from_secs(5)).await.expect("an event");
    assert_eq!(event.data["id"], "1");
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    assert!(metrics.contains("exdaas_feed_followers 1"), "{metrics}");
    assert!(metrics.contains("exdaas_feed_changes_sent_total 1"), "{metrics}");
    assert!(metrics.contains("exdaas_feed_slowest_lag_seconds 0"), "{metrics}");
    app.stop().await;
}

#[tokio::test]
async fn a_key_follows_only_the_collections_it_reads() {
    let reader = "read:0123456789abcdef-reader:users";
    let admin = "admin:0123456789abcdef-admin";
    let app = spawn_app_with(&[("EXDAAS_API_KEYS", &format!("{reader};{admin}"))]).await;
    let get = |path: String, key: &'static str| {
        app.request(Method::GET, &path)
            .header("Authorization", format!("Bearer 0123456789abcdef-{key}"))
            .send()
    };
    let since = json(get("/v1/changes".into(), "admin").await.expect("sent")).await["cursor"]
        .as_str()
        .expect("cursor")
        .to_owned();
    for (collection, id) in [("users", "u1"), ("orders", "o1")] {
        let resp = app
            .request(Method::PUT, &format!("/v1/collections/{collection}/docs/{id}"))
            .header("Authorization", "Bearer 0123456789abcdef-admin")
            .json(&json!({}))
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status(), 201);
    }
    let ids = |page: Value| -> Vec<String> {
        summary(page["changes"].as_array().expect("changes"))
            .into_iter()
            .map(|(key, _, _)| key)
            .collect()
    };
    // The whole feed holds only what the key reads.
    let page = json(get(format!("/v1/changes?since={since}"), "reader").await.expect("sent")).await;
    assert_eq!(ids(page), ["users/u1"]);
    let mut all = ids(json(get(format!("/v1/changes?since={since}"), "admin").await.expect("sent")).await);
    all.sort();
    assert_eq!(all, ["orders/o1", "users/u1"]);
    let users = get("/v1/collections/users/changes".into(), "reader")
        .await
        .expect("sent");
    assert_eq!(users.status(), 200);
    let orders = get("/v1/collections/orders/changes".into(), "reader")
        .await
        .expect("sent");
    assert_eq!(orders.status(), 403);
    assert_eq!(app.get("/v1/changes").await.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn stopping_the_server_ends_long_polls_and_streams_with_where_to_resume() {
    let app = spawn_app().await;
    let mut stream = Events::open(&app.client, &app.url("/v1/changes"), None).await;
    let poll = {
        let (client, url) = (app.client.clone(), app.url("/v1/changes?wait=300"));
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
    let end = stream.next(Duration::from_secs(2)).await.expect("a final event");
    assert_eq!(end.kind, "end");
    assert_eq!(end.data["status"], 503);
    assert!(!end.id.is_empty(), "it says where to resume");
    assert!(stream.next(Duration::from_secs(2)).await.is_none(), "the stream ended");
}

#[tokio::test]
async fn a_quiet_stream_sends_heartbeats_and_still_delivers_what_comes_after() {
    let app = spawn_app_with(&[("EXDAAS_FEED_HEARTBEAT_SECS", "1")]).await;
    let resp = send(
        app.client
            .get(app.url("/v1/changes"))
            .header("Accept", "text/event-stream"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["cache-control"],
        "no-cache",
        "proxies must not cache a stream"
    );
    let mut stream = Events {
        resp,
        buffer: String::new(),
    };
    // Nothing changes for a while: comment lines keep the connection open.
    let mut heartbeats = 0;
    let quiet_until = tokio::time::Instant::now() + Duration::from_millis(2500);
    while let Ok(chunk) = tokio::time::timeout_at(quiet_until, stream.resp.chunk()).await {
        let chunk = chunk.expect("the stream stays open").expect("the stream has not ended");
        assert_eq!(&chunk[..], b":\n\n", "a quiet stream sends only heartbeats");
        heartbeats += 1;
    }
    assert!(heartbeats >= 2, "{heartbeats} heartbeats in 2.5 s at one a second");
    let put = app.put_doc("quiet", "a", &json!({"n": 1})).await;
    assert!(put.status().is_success(), "{}", put.status());
    let event = stream
        .next(Duration::from_secs(5))
        .await
        .expect("the change after the quiet");
    assert_eq!((event.kind.as_str(), &event.data["id"]), ("change", &json!("a")));
}

#[tokio::test]
async fn a_stream_whose_client_stops_reading_is_closed_and_gives_back_its_place() {
    let app = spawn_app_with(&[("EXDAAS_FEED_MAX_SUBSCRIBERS", "1"), ("EXDAAS_SEND_TIMEOUT_SECS", "2")]).await;
    // A follower that asks for documents and then never reads a byte.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("a small receive buffer");
    let addr = app.address.trim_start_matches("http://").parse().expect("address");
    let mut stalled = socket.connect(addr).await.expect("connect");
    let head = "GET /v1/changes?include_docs=true HTTP/1.1\r\nHost: exdaas\r\nAccept: text/event-stream\r\n\r\n";
    tokio::io::AsyncWriteExt::write_all(&mut stalled, head.as_bytes())
        .await
        .expect("request sent");
    let waiting = || async { app.get("/v1/changes?wait=1").await.status() };
    let mut held = false;
    for _ in 0..50 {
        held = waiting().await == 503;
        if held {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(held, "the stalled stream holds the only follower's place");
    // Far more than the socket buffers take: the server's writes stall.
    let big = "x".repeat(256 * 1024);
    for i in 0..64 {
        let put = app.put_doc("big", &format!("d{i}"), &json!({ "blob": big })).await;
        assert!(put.status().is_success(), "{}", put.status());
    }
    let started = Instant::now();
    loop {
        let status = waiting().await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the stalled client still holds its place after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Other clients were served all along, and still are.
    assert_eq!(app.get_doc("big", "d0").await.status(), 200);
}

/// Opens `n` long polls of `path` over raw TCP, each on a connection of its
/// own from `from` (an address of the loopback network), sends their
/// requests and returns the sockets: drop them to hang up.
async fn raw_long_polls(
    app: &TestApp,
    from: [u8; 4],
    path: &str,
    key: Option<&str>,
    n: usize,
) -> Vec<tokio::net::TcpStream> {
    let addr: std::net::SocketAddr = app.address.trim_start_matches("http://").parse().expect("address");
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let head = format!("GET {path} HTTP/1.1\r\nHost: exdaas\r\n{auth}\r\n");
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(std::net::SocketAddr::from((from, 0)))
            .expect("a loopback address");
        let mut socket = socket.connect(addr).await.expect("connect");
        tokio::io::AsyncWriteExt::write_all(&mut socket, head.as_bytes())
            .await
            .expect("request sent");
        sockets.push(socket);
    }
    sockets
}

/// The status of a one-second long poll of the feed with `key`.
async fn long_poll(app: &TestApp, key: Option<&str>) -> u16 {
    let mut request = app.request(Method::GET, "/v1/changes?wait=1");
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    send(request).await.status().as_u16()
}

/// Waits (up to 2 s) until the feed's waits number `n` in the metrics.
async fn followers_reach(app: &TestApp, n: usize) {
    let wanted = format!("exdaas_feed_followers {n}\n");
    for _ in 0..100 {
        let metrics = app.get("/metrics").await.text().await.expect("metrics");
        if metrics.contains(&wanted) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the feed never had {n} followers");
}

const READER: &str = "read:0123456789abcdef-reader";
const ADMIN: &str = "admin:0123456789abcdef-admin";

#[tokio::test]
async fn abandoned_long_polls_give_back_their_places_when_their_clients_hang_up() {
    let keys = format!("{READER};{ADMIN}");
    let app = spawn_app_with(&[
        ("EXDAAS_API_KEYS", &keys),
        ("EXDAAS_FEED_MAX_SUBSCRIBERS", "300"),
        ("EXDAAS_FEED_MAX_SUBSCRIBERS_PER_CLIENT", "300"),
    ])
    .await;
    let reader = Some("0123456789abcdef-reader");
    let admin = Some("0123456789abcdef-admin");
    // A reader opens 300 long polls of five minutes, then hangs up on them.
    let polls = raw_long_polls(&app, [127, 0, 0, 1], "/v1/changes?wait=300", reader, 300).await;
    followers_reach(&app, 300).await;
    assert_eq!(long_poll(&app, admin).await, 503, "every place is taken");
    drop(polls);
    let started = Instant::now();
    // At most 2 s, or this fails.
    followers_reach(&app, 0).await;
    eprintln!("300 places were given back within {:?}", started.elapsed());
    assert_eq!(long_poll(&app, admin).await, 200, "another key waits again");
    app.stop().await;
}

#[tokio::test]
async fn a_stream_whose_client_hangs_up_gives_back_its_place_at_once() {
    let app = spawn_app_with(&[
        ("EXDAAS_FEED_MAX_SUBSCRIBERS", "1"),
        ("EXDAAS_FEED_HEARTBEAT_SECS", "300"),
    ])
    .await;
    let addr: std::net::SocketAddr = app.address.trim_start_matches("http://").parse().expect("address");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = "GET /v1/changes HTTP/1.1\r\nHost: exdaas\r\nAccept: text/event-stream\r\n\r\n";
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes())
        .await
        .expect("request sent");
    followers_reach(&app, 1).await;
    drop(stream);
    // No heartbeat for five minutes: only the hang-up can end it.
    followers_reach(&app, 0).await;
    assert_eq!(long_poll(&app, None).await, 200);
    app.stop().await;
}

#[tokio::test]
async fn one_key_holding_its_whole_share_leaves_places_for_the_others() {
    let keys = format!("{READER};{ADMIN}");
    let app = spawn_app_with(&[
        ("EXDAAS_API_KEYS", &keys),
        ("EXDAAS_FEED_MAX_SUBSCRIBERS", "8"),
        ("EXDAAS_FEED_MAX_SUBSCRIBERS_PER_CLIENT", "3"),
    ])
    .await;
    let reader = Some("0123456789abcdef-reader");
    let admin = Some("0123456789abcdef-admin");
    let _held = raw_long_polls(&app, [127, 0, 0, 1], "/v1/changes?wait=300", reader, 3).await;
    followers_reach(&app, 3).await;
    let refused = send(
        app.request(Method::GET, "/v1/changes?wait=1")
            .bearer_auth("0123456789abcdef-reader"),
    )
    .await;
    assert_eq!(refused.status(), 429, "the reader has its whole share");
    assert!(refused.headers().contains_key("retry-after"));
    let detail = json(refused).await["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.contains("EXDAAS_FEED_MAX_SUBSCRIBERS_PER_CLIENT"), "{detail}");
    // Reading without waiting needs no place.
    let page = send(
        app.request(Method::GET, "/v1/changes")
            .bearer_auth("0123456789abcdef-reader"),
    )
    .await;
    assert_eq!(page.status(), 200);
    assert_eq!(long_poll(&app, admin).await, 200, "another key still finds a place");
    app.stop().await;
}

#[tokio::test]
async fn without_keys_one_client_address_holding_its_share_leaves_places_for_the_others() {
    let app = spawn_app_with(&[
        ("EXDAAS_FEED_MAX_SUBSCRIBERS", "8"),
        ("EXDAAS_FEED_MAX_SUBSCRIBERS_PER_CLIENT", "3"),
    ])
    .await;
    let mut held = raw_long_polls(&app, [127, 0, 0, 2], "/v1/changes?wait=300", None, 4).await;
    // The fourth is refused: its answer comes at once.
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut held[3], &mut answer),
    )
    .await
    .expect("answered at once")
    .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    followers_reach(&app, 3).await;
    assert_eq!(long_poll(&app, None).await, 200, "another address still finds a place");
    app.stop().await;
}
