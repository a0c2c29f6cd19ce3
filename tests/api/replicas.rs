//! Several exdaas processes on one PostgreSQL database act as one service:
//! a conditional write has one winner whatever replica it goes through,
//! anonymous ids never collide, a change made through one replica stops
//! being served stale by the others within `EXDAAS_REPLICA_POLL_MS`, and
//! the feed read through any replica holds every replica's writes. Only on
//! PostgreSQL: a data folder has one process.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{json, on_postgres, send, spawn_app_on, ServerProcess, TestApp};

/// Three replicas on one database, each following the others every 50 ms.
async fn replicas() -> Option<(tempfile::TempDir, Vec<TestApp>)> {
    if !on_postgres() {
        eprintln!("only on PostgreSQL: a data folder has one process");
        return None;
    }
    let folder = tempfile::tempdir().expect("temp dir");
    let settings = [("EXDAAS_REPLICA_POLL_MS", "50")];
    let mut apps = Vec::new();
    for _ in 0..3 {
        apps.push(spawn_app_on(folder.path(), &settings).await);
    }
    Some((folder, apps))
}

#[tokio::test]
async fn a_change_through_one_replica_reaches_the_others_caches_within_the_poll() {
    let Some((_folder, apps)) = replicas().await else {
        return;
    };
    let (a, b) = (&apps[0], &apps[1]);
    assert_eq!(a.put_doc("users", "alice", &json!({"n": 1})).await.status(), 201);
    // b reads it, and so caches it.
    assert_eq!(json(b.get_doc("users", "alice").await).await["data"], json!({"n": 1}));
    let mut worst = Duration::ZERO;
    for n in 2..12 {
        assert_eq!(a.put_doc("users", "alice", &json!({ "n": n })).await.status(), 200);
        let changed = Instant::now();
        // Past the cache, at once.
        let fresh = send(
            b.request(Method::GET, "/v1/collections/users/docs/alice")
                .header("Cache-Control", "no-cache"),
        )
        .await;
        assert_eq!(
            json(fresh).await["data"],
            json!({ "n": n }),
            "no-cache reads what is committed"
        );
        // Through the cache, within the poll.
        loop {
            if json(b.get_doc("users", "alice").await).await["data"] == json!({ "n": n }) {
                break;
            }
            assert!(
                changed.elapsed() < Duration::from_secs(2),
                "b still serves the old version after 2 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        worst = worst.max(changed.elapsed());
    }
    eprintln!("worst staleness with a 50 ms poll: {worst:?}");
    // A deletion reaches them too.
    assert_eq!(a.delete_doc("users", "alice").await.status(), 204);
    let deleted = Instant::now();
    while b.get_doc("users", "alice").await.status() != 404 {
        assert!(
            deleted.elapsed() < Duration::from_secs(2),
            "b still serves a deleted document"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_put_through_a_replica_with_a_stale_cache_still_writes() {
    let Some((_folder, apps)) = replicas().await else {
        return;
    };
    let (a, b) = (&apps[0], &apps[1]);
    for round in 0..10 {
        let id = format!("doc{round}");
        assert_eq!(b.put_doc("stale", &id, &json!({"n": 1})).await.status(), 201);
        // b caches {"n": 1}; a changes it; b at once is told {"n": 1}
        // again, before its follower can have heard of a's write.
        assert_eq!(json(b.get_doc("stale", &id).await).await["data"], json!({"n": 1}));
        assert_eq!(a.put_doc("stale", &id, &json!({"n": 2})).await.status(), 200);
        let resp = b.put_doc("stale", &id, &json!({"n": 1})).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            json(resp).await["version"],
            3,
            "round {round}: b's put is a new version"
        );
        let fresh = send(
            a.request(Method::GET, &format!("/v1/collections/stale/docs/{id}"))
                .header("Cache-Control", "no-cache"),
        )
        .await;
        assert_eq!(
            json(fresh).await["data"],
            json!({"n": 1}),
            "round {round}: the last acknowledged put stands"
        );
    }
}

#[tokio::test]
async fn if_match_races_across_replicas_have_exactly_one_winner() {
    let Some((_folder, apps)) = replicas().await else {
        return;
    };
    assert_eq!(apps[0].put_doc("race", "doc", &json!({"round": 0})).await.status(), 201);
    for round in 1..=20u64 {
        // Every replica tries to move the document from the version before.
        let attempts = apps.iter().enumerate().map(|(i, app)| {
            let request = app
                .request(Method::PUT, "/v1/collections/race/docs/doc")
                .header("If-Match", format!("\"{round}\""))
                .json(&json!({ "round": round, "by": i }));
            send(request)
        });
        let statuses: Vec<u16> = futures_util::future::join_all(attempts)
            .await
            .iter()
            .map(|r| r.status().as_u16())
            .collect();
        let won = statuses.iter().filter(|s| **s == 200).count();
        let lost = statuses.iter().filter(|s| **s == 412).count();
        assert_eq!((won, lost), (1, apps.len() - 1), "round {round}: {statuses:?}");
    }
    // Through the cache, another replica's last win may be a poll away.
    let doc = json(
        send(
            apps[2]
                .request(Method::GET, "/v1/collections/race/docs/doc")
                .header("Cache-Control", "no-cache"),
        )
        .await,
    )
    .await;
    assert_eq!(doc["version"], 21);
}

#[tokio::test]
async fn anonymous_ids_from_every_replica_never_collide() {
    let Some((_folder, apps)) = replicas().await else {
        return;
    };
    let writers = apps.iter().enumerate().map(|(r, app)| async move {
        let mut ids = Vec::new();
        for i in 0..60 {
            let body = json(app.post_api(json!({"id": null, "data": {"replica": r, "i": i}})).await).await;
            let id = body["id"].as_u64().unwrap_or_else(|| panic!("a fresh id, not {body}"));
            ids.push((id, r, i));
        }
        ids
    });
    let all: Vec<(u64, usize, i32)> = futures_util::future::join_all(writers)
        .await
        .into_iter()
        .flatten()
        .collect();
    let distinct: HashSet<u64> = all.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(distinct.len(), all.len(), "two writes got the same id");
    // And none overwrote another: each reads back as written.
    for (id, r, i) in &all {
        let body = json(apps[0].get_api(&id.to_string()).await).await;
        assert_eq!(body["data"], json!({"replica": r, "i": i}), "id {id}");
    }
}

#[tokio::test]
async fn the_feed_through_any_replica_holds_every_replicas_writes_in_order() {
    let Some((_folder, apps)) = replicas().await else {
        return;
    };
    let since = json(apps[0].get("/v1/changes?since=now").await).await["cursor"]
        .as_str()
        .expect("a cursor")
        .to_owned();
    // A long poll on one replica wakes for a write through another.
    let poll = {
        let (client, url) = (
            apps[2].client.clone(),
            apps[2].url(&format!("/v1/changes?since={since}&wait=10")),
        );
        tokio::spawn(async move { client.get(url).send().await.expect("long poll") })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    assert_eq!(apps[0].put_doc("feed", "first", &json!({})).await.status(), 201);
    let woke = json(poll.await.expect("long poll")).await;
    assert_eq!(woke["changes"][0]["id"], "first");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "woke after {:?}",
        started.elapsed()
    );

    // Writers on every replica, on shared keys: each acknowledged version
    // appears once, in order.
    let writers = apps.iter().enumerate().map(|(r, app)| async move {
        let mut acked: Vec<(String, u64)> = Vec::new();
        for i in 0..40 {
            let id = format!("k{}", (i + r) % 7);
            let resp = app.put_doc("feed", &id, &json!({ "r": r, "i": i })).await;
            assert!(resp.status().is_success(), "{}", resp.status());
            acked.push((id, json(resp).await["version"].as_u64().expect("a version")));
        }
        acked
    });
    let acked: Vec<(String, u64)> = futures_util::future::join_all(writers)
        .await
        .into_iter()
        .flatten()
        .collect();
    let mut expected: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (id, version) in acked {
        expected.entry(id).or_default().push(version);
    }
    for versions in expected.values_mut() {
        versions.sort_unstable();
    }
    // Each replica names a change once it has followed it (within the
    // poll): read on from the cursor until all are there.
    for reader in &apps {
        let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut cursor = since.clone();
        let started = Instant::now();
        while seen != expected {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "after 5 s the feed still lacks some: {seen:?}"
            );
            let page = json(
                reader
                    .get(&format!("/v1/collections/feed/changes?since={cursor}&limit=50"))
                    .await,
            )
            .await;
            for change in page["changes"].as_array().expect("changes") {
                let id = change["id"].as_str().expect("id");
                if id != "first" {
                    seen.entry(id.to_owned())
                        .or_default()
                        .push(change["version"].as_u64().expect("version"));
                }
            }
            cursor = page["cursor"].as_str().expect("cursor").to_owned();
            for (id, versions) in &seen {
                let wanted = expected.get(id).map(Vec::as_slice).unwrap_or_default();
                assert!(
                    wanted.starts_with(versions),
                    "{id}: {versions:?} is not a prefix of the acknowledged {wanted:?}"
                );
            }
            if page["more"] == Value::Bool(false) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test]
async fn a_backup_over_http_says_to_use_the_databases_tools() {
    let Some((_folder, apps)) = replicas().await else {
        return;
    };
    let resp = send(apps[0].request(Method::POST, "/v1/admin/backup")).await;
    assert_eq!(resp.status(), 501);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let problem = json(resp).await;
    assert!(
        problem["detail"].as_str().is_some_and(|d| d.contains("pg_dump")),
        "{problem}"
    );
}

#[tokio::test]
async fn metrics_show_the_database_pool_and_retries() {
    let Some((_folder, apps)) = replicas().await else {
        return;
    };
    apps[0].put_doc("m", "a", &json!({})).await;
    let text = apps[0].get("/metrics").await.text().await.expect("metrics");
    // SHARD_LIMIT 4 x (4 read connections + 1 writer) + 2.
    assert!(text.contains("exdaas_database_connections{state=\"max\"} 22"), "{text}");
    assert!(text.contains("exdaas_database_connections{state=\"open\"}"), "{text}");
    assert!(text.contains("exdaas_transaction_retries_total 0"), "{text}");
    // The followers' queries, there and back.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = apps[0].get("/metrics").await.text().await.expect("metrics");
    let trips = text
        .lines()
        .find_map(|line| line.strip_prefix("exdaas_database_round_trip_seconds_count "))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(trips >= 4, "{text}");
}

/// Three exdaas processes on one database, loaded through all of them, and
/// one killed (SIGKILL) mid-load: every write any of them acknowledged is
/// there, through the survivors, in their feed, and through a replica
/// started afresh; anonymous ids stayed distinct throughout.
#[tokio::test]
async fn killing_one_replica_mid_load_loses_nothing_acknowledged() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    if !on_postgres() {
        eprintln!("only on PostgreSQL: a data folder has one process");
        return;
    }
    let folder = tempfile::tempdir().expect("temp dir");
    let settings = [("EXDAAS_REPLICA_POLL_MS", "50")];
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(ServerProcess::start(folder.path(), &settings).await);
    }
    let client = reqwest::Client::new();
    let since = json(send(client.get(replicas[1].url("/v1/changes?since=now"))).await).await["cursor"]
        .as_str()
        .expect("a cursor")
        .to_owned();

    // Three writers per replica, each alternating a chosen-id PUT and an
    // anonymous POST until stopped or its replica is gone.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (r, replica) in replicas.iter().enumerate() {
        for w in 0..3 {
            let (client, stop, base) = (client.clone(), stop.clone(), replica.url(""));
            writers.push(tokio::spawn(async move {
                let mut acked: Vec<(String, String, Value)> = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let body = json!({ "r": r, "w": w, "i": i });
                    let id = format!("{r}-{w}-{i}");
                    let Ok(resp) = client
                        .put(format!("{base}/v1/collections/load/docs/{id}"))
                        .json(&body)
                        .send()
                        .await
                    else {
                        break;
                    };
                    if resp.status() == 201 {
                        acked.push(("load".into(), id, body.clone()));
                    }
                    let Ok(resp) = client
                        .post(format!("{base}/v1/collections/anon/docs"))
                        .json(&body)
                        .send()
                        .await
                    else {
                        break;
                    };
                    if resp.status() == 201 {
                        if let Ok(created) = resp.json::<Value>().await {
                            let id = created["id"].as_str().expect("an id").to_owned();
                            acked.push(("anon".into(), id, body));
                        }
                    }
                    i += 1;
                }
                (r, acked)
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    replicas[0].signal("KILL");
    assert_eq!(replicas[0].wait().await, None, "killed by the signal");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut by_killed = 0;
    for writer in writers {
        let (r, writes) = writer.await.expect("writer");
        if r == 0 {
            by_killed += writes.len();
        }
        acked.extend(writes);
    }
    assert!(by_killed > 0, "the killed replica acknowledged writes before it died");
    let anon: Vec<&String> = acked
        .iter()
        .filter(|(c, _, _)| c == "anon")
        .map(|(_, id, _)| id)
        .collect();
    assert_eq!(
        anon.iter().collect::<HashSet<_>>().len(),
        anon.len(),
        "two anonymous writes got the same id"
    );
    eprintln!("{} writes acknowledged, {by_killed} by the killed replica", acked.len());

    // Every acknowledged write, as written, through each survivor and a
    // replica started afresh.
    let fresh = ServerProcess::start(folder.path(), &settings).await;
    for reader in [&replicas[1], &replicas[2], &fresh] {
        let mut stored: BTreeMap<(String, String), Value> = BTreeMap::new();
        for collection in ["load", "anon"] {
            let mut cursor = String::new();
            loop {
                let page = json(
                    send(client.get(reader.url(&format!("/v1/collections/{collection}/docs?limit=1000{cursor}"))))
                        .await,
                )
                .await;
                for item in page["items"].as_array().expect("items") {
                    let id = item["id"].as_str().expect("id").to_owned();
                    stored.insert((collection.to_owned(), id), item["data"].clone());
                }
                match page["next_cursor"].as_str() {
                    Some(next) => cursor = format!("&cursor={next}"),
                    None => break,
                }
            }
        }
        for (collection, id, body) in &acked {
            assert_eq!(
                stored.get(&(collection.clone(), id.clone())),
                Some(body),
                "{collection}/{id} was acknowledged"
            );
        }
    }

    // The survivors' feed names every acknowledged write.
    let mut missing: HashSet<(String, String)> = acked.iter().map(|(c, id, _)| (c.clone(), id.clone())).collect();
    let mut cursor = since;
    let started = Instant::now();
    while !missing.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "after 10 s the feed still lacks {} acknowledged writes",
            missing.len()
        );
        let page =
            json(send(client.get(replicas[2].url(&format!("/v1/changes?since={cursor}&limit=1000")))).await).await;
        for change in page["changes"].as_array().expect("changes") {
            let key = (
                change["collection"].as_str().expect("collection").to_owned(),
                change["id"].as_str().expect("id").to_owned(),
            );
            missing.remove(&key);
        }
        cursor = page["cursor"].as_str().expect("cursor").to_owned();
        if page["more"] == Value::Bool(false) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// While a replica cannot follow the others' writes (here: the feed table
/// out of reach), its cache would go stale past its promise: after
/// `max(1 s, 10 polls)` its reads go to the database and `/readyz` says
/// why; once following works again, it is ready and caches again.
#[tokio::test]
async fn a_replica_that_cannot_follow_stops_trusting_its_cache_and_says_so() {
    use sqlx::Connection;
    let Some((folder, apps)) = replicas().await else {
        return;
    };
    let app = &apps[0];
    let ready = json(app.get("/readyz").await).await;
    assert_eq!(ready["database"]["reachable"], true, "{ready}");
    assert_eq!(ready["database"]["trust_ms"], 1000, "{ready}");
    assert_eq!(app.put_doc("users", "alice", &json!({"n": 1})).await.status(), 201);
    assert_eq!(json(app.get_doc("users", "alice").await).await["data"], json!({"n": 1}));

    let url = crate::helpers::database_for(folder.path()).expect("a database");
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("the database answers");
    sqlx::query("ALTER TABLE exdaas_changes RENAME TO exdaas_changes_away")
        .execute(&mut conn)
        .await
        .expect("renamed");
    // A change no replica's feed can tell of.
    sqlx::query("UPDATE exdaas_documents SET data = '{\"n\":2}', version = version + 1 WHERE id = 'alice'")
        .execute(&mut conn)
        .await
        .expect("changed");
    let started = Instant::now();
    let not_ready = loop {
        let resp = app.get("/readyz").await;
        if resp.status() == 503 {
            break json(resp).await;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "still ready after 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(not_ready["database"]["reachable"], false, "{not_ready}");
    assert!(
        not_ready["database"]["problem"]
            .as_str()
            .is_some_and(|p| p.contains("feed")),
        "{not_ready}"
    );
    assert_eq!(
        json(app.get_doc("users", "alice").await).await["data"],
        json!({"n": 2}),
        "past its trust, the cache does not answer"
    );

    sqlx::query("ALTER TABLE exdaas_changes_away RENAME TO exdaas_changes")
        .execute(&mut conn)
        .await
        .expect("renamed back");
    let started = Instant::now();
    while app.get("/readyz").await.status() != 200 {
        assert!(started.elapsed() < Duration::from_secs(5), "not ready again after 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = json(app.get("/readyz").await).await;
    assert_eq!(ready["database"]["problem"], Value::Null, "{ready}");
}

/// Under SERIALIZABLE (CockroachDB's only isolation level, YugabyteDB's
/// default), the database refuses one of two transactions that overlap on a
/// shard (SQLSTATE 40001). The writer runs it again: every client gets its
/// answer, and the retries show in the metrics.
#[tokio::test]
async fn serialization_failures_are_retried_and_never_reach_a_client() {
    use sqlx::Connection;
    if !on_postgres() {
        eprintln!("only on PostgreSQL: a data folder has one process");
        return;
    }
    let folder = tempfile::tempdir().expect("temp dir");
    let url = crate::helpers::database_for(folder.path()).expect("a database");
    let path = url.split_once('?').map_or(url.as_str(), |(path, _)| path);
    let name = path.rsplit_once('/').expect("a database name").1.to_owned();
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("the database answers");
    sqlx::query(&format!(
        "ALTER DATABASE {name} SET default_transaction_isolation = 'serializable'"
    ))
    .execute(&mut conn)
    .await
    .expect("serializable by default");
    // One shard: every write of both replicas contends for it.
    let settings = [("SHARD_LIMIT", "1"), ("EXDAAS_REPLICA_POLL_MS", "50")];
    let apps = [
        spawn_app_on(folder.path(), &settings).await,
        spawn_app_on(folder.path(), &settings).await,
    ];
    let isolation: String = sqlx::query_scalar("SHOW default_transaction_isolation")
        .fetch_one(&mut sqlx::PgConnection::connect(&url).await.expect("connects"))
        .await
        .expect("isolation");
    assert_eq!(isolation, "serializable");

    let writers = apps.iter().enumerate().flat_map(|(a, app)| {
        (0..4).map(move |w| async move {
            for i in 0..25 {
                let resp = app.put_doc("hot", &format!("{a}-{w}-{i}"), &json!({ "i": i })).await;
                assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap_or_default());
                let resp = app.post_json("/v1/collections/hot/docs", &json!({ "i": i })).await;
                assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap_or_default());
                let resp = app.put_doc("hot", "shared", &json!({ "by": a, "i": i })).await;
                assert!(resp.status().is_success(), "{}", resp.text().await.unwrap_or_default());
            }
        })
    });
    futures_util::future::join_all(writers).await;

    let mut retries = 0;
    for app in &apps {
        let text = app.get("/metrics").await.text().await.expect("metrics");
        retries += text
            .lines()
            .find_map(|line| line.strip_prefix("exdaas_transaction_retries_total "))
            .and_then(|n| n.parse::<u64>().ok())
            .expect("the retries metric");
    }
    eprintln!("{retries} transactions run again");
    assert!(
        retries > 0,
        "two replicas on one shard under SERIALIZABLE never conflicted"
    );
    assert_eq!(apps[0].list_all("hot").await.len(), 2 * 4 * 25 * 2 + 1);
}

#[tokio::test]
async fn a_schema_set_through_one_replica_holds_at_once_on_every_other() {
    let Some((_folder, apps)) = replicas().await else {
        return;
    };
    let schema = json!({"type": "object", "required": ["name"]});
    let resp = send(
        apps[0]
            .request(Method::PUT, "/v1/collections/people/schema")
            .json(&schema),
    )
    .await;
    assert_eq!(resp.status(), 200);
    // No wait for the poll: each writer sees the change in the shard's
    // row it locks anyway.
    for (r, app) in apps.iter().enumerate() {
        for i in 0..8 {
            let resp = app.put_doc("people", &format!("r{r}-{i}"), &json!({"age": 1})).await;
            assert_eq!(resp.status(), 422, "replica {r}, id {i}");
        }
        assert_eq!(json(app.get("/v1/collections/people/schema").await).await["version"], 1);
    }
    let resp = send(apps[1].request(Method::DELETE, "/v1/collections/people/schema")).await;
    assert_eq!(resp.status(), 200);
    for (r, app) in apps.iter().enumerate() {
        let resp = app.put_doc("people", &format!("r{r}"), &json!({"age": 1})).await;
        assert_eq!(resp.status(), 201, "replica {r} takes anything again");
    }
}

#[tokio::test]
async fn an_index_declared_through_one_replica_is_kept_by_the_others_writes() {
    let Some((_folder, apps)) = replicas().await else {
        return;
    };
    for i in 0..30 {
        assert_eq!(
            apps[0]
                .put_doc("things", &format!("t{i}"), &json!({"n": i % 3}))
                .await
                .status(),
            201
        );
    }
    let resp = send(
        apps[0]
            .request(Method::PUT, "/v1/collections/things/indexes/by_n")
            .json(&json!({"fields": ["n"]})),
    )
    .await;
    assert_eq!(resp.status(), 201);
    crate::indexes::wait_ready(&apps[2], "things", "by_n").await;
    // Writes through another replica, at once: its writers see the
    // declaration in the shard rows they lock.
    for i in 30..40 {
        assert_eq!(
            apps[1]
                .put_doc("things", &format!("t{i}"), &json!({"n": 7}))
                .await
                .status(),
            201
        );
    }
    assert_eq!(apps[1].patch_doc("things", "t0", &json!({"n": 7})).await.status(), 200);
    let page = json(
        apps[2]
            .post_json(
                "/v1/collections/things/query",
                &json!({"filter": {"n": 7}, "explain": true}),
            )
            .await,
    )
    .await;
    assert_eq!(page["explain"]["plan"], "index", "{page}");
    let mut found: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|d| d["id"].as_str().expect("id"))
        .collect();
    found.sort_unstable();
    let mut expected: Vec<String> = (30..40).map(|i| format!("t{i}")).collect();
    expected.push("t0".into());
    expected.sort_unstable();
    assert_eq!(found, expected);
}

/// The original API's read honours `Cache-Control: no-cache` as v1's does:
/// past the replica's cache, which here (a poll of a minute) stays behind.
#[tokio::test]
async fn the_original_apis_read_with_no_cache_reads_what_is_committed() {
    if !on_postgres() {
        eprintln!("only on PostgreSQL: a data folder has one process");
        return;
    }
    let folder = tempfile::tempdir().expect("temp dir");
    let settings = [("EXDAAS_REPLICA_POLL_MS", "60000")];
    let a = spawn_app_on(folder.path(), &settings).await;
    let b = spawn_app_on(folder.path(), &settings).await;
    let upsert = |n: i64| json!({"id": 7, "data": {"n": n}});
    assert_eq!(a.post_json("/api", &upsert(1)).await.status(), 200);
    // b reads it, and so caches it.
    assert_eq!(json(b.get_api("7").await).await["data"], json!({"n": 1}));
    assert_eq!(a.post_json("/api", &upsert(2)).await.status(), 200);
    assert_eq!(
        json(b.get_api("7").await).await["data"],
        json!({"n": 1}),
        "through the cache, b is a poll behind"
    );
    let fresh = send(b.request(Method::GET, "/api?id=7").header("Cache-Control", "no-cache")).await;
    assert_eq!(
        json(fresh).await["data"],
        json!({"n": 2}),
        "no-cache reads what is committed"
    );
    a.stop().await;
    b.stop().await;
}
