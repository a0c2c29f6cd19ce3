//! Faults under a running server: a writer that panics or loses its
//! connection is restarted while its queue gets 503s, not a hang; a full
//! disk, an unwritable file, a deleted or damaged shard file get clear
//! errors naming the shard; a full queue pushes back with 503 and
//! Retry-After. Other shards keep serving through all of it.

use std::time::{Duration, Instant};

use exdaas::domain::{CollectionName, DocId, DocKey};
use exdaas::store::Fault;
use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::helpers::{json, on_postgres, skip_on_postgres, spawn_app_on, TestApp};

/// Ids in collection `c` whose documents live on `shard`, and one id that
/// lives on another shard.
fn ids_on(app: &TestApp, shard: usize, count: usize) -> (Vec<String>, String) {
    let key = |id: &str| DocKey::new(CollectionName::parse("c").expect("name"), DocId::parse(id).expect("id"));
    let mut on = Vec::new();
    let mut elsewhere = None;
    for n in 0.. {
        let id = format!("k{n}");
        if app.store.shard_of(&key(&id)) == shard {
            if on.len() < count {
                on.push(id);
            }
        } else if elsewhere.is_none() {
            elsewhere = Some(id);
        }
        if on.len() == count && elsewhere.is_some() {
            break;
        }
    }
    (on, elsewhere.unwrap_or_default())
}

async fn spawn(extra: &[(&str, &str)]) -> TestApp {
    let folder = tempfile::tempdir().expect("temp dir");
    let mut app = spawn_app_on(folder.path(), extra).await;
    app.keep_folder(folder);
    app
}

/// A PUT that must answer within 10 s: a hang fails the test.
async fn put(app: &TestApp, id: &str, body: &Value) -> (u16, Value, Option<String>) {
    let sent = tokio::time::timeout(Duration::from_secs(10), app.put_doc("c", id, body))
        .await
        .expect("answered within 10 s, not hung");
    let status = sent.status().as_u16();
    let retry_after = sent
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = sent.json().await.unwrap_or(Value::Null);
    (status, body, retry_after)
}

async fn readiness(app: &TestApp, shard: usize) -> (u16, Value) {
    let resp = app.get("/readyz").await;
    let status = resp.status().as_u16();
    let body = json(resp).await;
    (status, body["shards"][shard].clone())
}

/// Polls until the shard is ready again (at most 10 s).
async fn wait_ready(app: &TestApp, shard: usize) {
    let started = Instant::now();
    loop {
        let (status, state) = readiness(app, shard).await;
        if status == 200 && state["ready"] == true {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "shard {shard} never came back: {state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_failed_writer_is_restarted(fault: Fault) {
    let app = spawn(&[]).await;
    let shard = 1;
    let (ids, elsewhere) = ids_on(&app, shard, 20);
    assert_eq!(put(&app, &ids[0], &json!({"before": true})).await.0, 201);

    app.store.inject_fault(shard, fault).await.expect("fault queued");
    // Writes racing with the failure: each answers, success or a clear 503.
    let bodies: Vec<Value> = ids.iter().map(|id| json!({"during": id})).collect();
    let answers = join_all(ids.iter().zip(&bodies).map(|(id, body)| put(&app, id, body))).await;
    for (status, body, retry_after) in &answers {
        assert!(matches!(status, 200 | 201 | 503), "{status}: {body}");
        if *status == 503 {
            let detail = body["detail"].as_str().unwrap_or_default();
            assert!(detail.contains(&format!("shard {shard}")), "names the shard: {detail}");
            assert_eq!(retry_after.as_deref(), Some("1"), "a restart is temporary: Retry-After");
        }
    }
    assert!(
        answers.iter().any(|(status, ..)| *status == 503),
        "the failure was felt: {:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    // Another shard is not affected.
    assert_eq!(put(&app, &elsewhere, &json!({"other": true})).await.0, 201);

    wait_ready(&app, shard).await;
    let (status, body, _) = put(&app, &ids[0], &json!({"after": true})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json(app.get_doc("c", &ids[0]).await).await["data"],
        json!({"after": true})
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_writer_is_restarted() {
    a_failed_writer_is_restarted(Fault::Panic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_whose_connection_breaks_is_restarted() {
    a_failed_writer_is_restarted(Fault::BreakConnection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_the_shard_while_its_writer_is_down() {
    let app = spawn(&[]).await;
    let (ids, _) = ids_on(&app, 2, 1);
    // Down for a second, not the usual 100 ms before the restart: a slow
    // readiness answer on a busy machine cannot miss the outage.
    app.store
        .inject_fault(2, Fault::PanicAndStayDown(Duration::from_secs(1)))
        .await
        .expect("fault queued");
    let started = Instant::now();
    let state = loop {
        let (status, state) = readiness(&app, 2).await;
        if status == 503 {
            break state;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "never reported down");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(state["ready"], false);
    assert!(
        state["problem"].as_str().is_some_and(|p| p.contains("panicked")),
        "{state}"
    );
    wait_ready(&app, 2).await;
    assert_eq!(put(&app, &ids[0], &json!(1)).await.0, 201);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_the_writer_died_after_is_not_served_stale_from_the_cache() {
    let app = spawn(&[]).await;
    let (ids, _) = ids_on(&app, 0, 1);
    let id = &ids[0];
    assert_eq!(put(&app, id, &json!({"v": 1})).await.0, 201);
    assert_eq!(json(app.get_doc("c", id).await).await["version"], 1, "now cached");

    app.store
        .inject_fault(0, Fault::PanicAfterCommit)
        .await
        .expect("fault queued");
    // Committed, then the writer died before acknowledging: a 503.
    assert_eq!(put(&app, id, &json!({"v": 2})).await.0, 503);
    wait_ready(&app, 0).await;
    // What is on disk is what is served, and the next version follows it.
    let now = json(app.get_doc("c", id).await).await;
    assert_eq!(
        (now["version"].clone(), now["data"].clone()),
        (json!(2), json!({"v": 2}))
    );
    let (status, next, _) = put(&app, id, &json!({"v": 3})).await;
    assert_eq!((status, next["version"].clone()), (200, json!(3)));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_507_and_recovers_when_space_returns() {
    if skip_on_postgres("faults of the shard files (a full disk, a damaged, deleted or growing file)") {
        return;
    }
    let app = spawn(&[]).await;
    let shard = 3;
    let (ids, elsewhere) = ids_on(&app, shard, 30);
    app.store
        .inject_fault(shard, Fault::DiskFull)
        .await
        .expect("fault queued");
    // Documents large enough that the file must grow.
    let big = json!({"pad": "x".repeat(64 * 1024)});
    let mut full = None;
    for id in &ids {
        let (status, body, _) = put(&app, id, &big).await;
        if status == 507 {
            full = Some(body);
            break;
        }
        assert_eq!(status, 201, "{body}");
    }
    let body = full.expect("the disk filled up");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!("shard {shard}")) && detail.contains("full"),
        "{detail}"
    );
    let (status, state) = readiness(&app, shard).await;
    assert_eq!(status, 503);
    assert!(state["problem"].as_str().is_some_and(|p| p.contains("full")), "{state}");
    // Other shards write on.
    assert_eq!(put(&app, &elsewhere, &big).await.0, 201);

    app.store.inject_fault(shard, Fault::Heal).await.expect("fault queued");
    let (status, body, _) = put(&app, &ids[ids.len() - 1], &big).await;
    assert_eq!(status, 201, "{body}");
    wait_ready(&app, shard).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_file_answers_503_naming_the_shard() {
    if skip_on_postgres("a read-only database connection is a failover's, tested below") {
        return;
    }
    let app = spawn(&[]).await;
    let (ids, elsewhere) = ids_on(&app, 0, 2);
    app.store.inject_fault(0, Fault::ReadOnly).await.expect("fault queued");
    let (status, body, _) = put(&app, &ids[0], &json!(1)).await;
    assert_eq!(status, 503, "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("shard 0") && detail.contains("cannot be written"),
        "{detail}"
    );
    assert_eq!(put(&app, &elsewhere, &json!(1)).await.0, 201);
    // Reads still work.
    assert_eq!(app.get_doc("c", &elsewhere).await.status(), 200);
    app.store.inject_fault(0, Fault::Heal).await.expect("fault queued");
    assert_eq!(put(&app, &ids[1], &json!(1)).await.0, 201);
    app.stop().await;
}

/// On PostgreSQL, a writer whose connection reached a server that will not
/// take writes (25006: a standby, after a failover or while a routing layer
/// catches up) says so in a database's words, asks the client to retry,
/// drops that connection, and writes again on a new one within a few
/// seconds: no restart, no operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_a_connection_that_will_not_write_is_dropped_and_writes_flow_again() {
    if !on_postgres() {
        eprintln!("only on PostgreSQL: a data folder has no standby");
        return;
    }
    let app = spawn(&[]).await;
    let (ids, elsewhere) = ids_on(&app, 0, 2);
    app.store.inject_fault(0, Fault::ReadOnly).await.expect("fault queued");
    let (status, body, retry_after) = put(&app, &ids[0], &json!(1)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"), "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("shard 0") && detail.contains("database") && !detail.contains("file"),
        "{detail}"
    );
    assert_eq!(put(&app, &elsewhere, &json!(1)).await.0, 201);
    // No heal: the writer finds a writable connection by itself.
    let down = Instant::now();
    loop {
        let (status, body, _) = put(&app, &ids[1], &json!(1)).await;
        if status == 201 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            down.elapsed() < Duration::from_secs(3),
            "still refused after 3 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("writes flowed again {:?} after the first refusal", down.elapsed());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_pushes_back_with_503_and_retry_after() {
    let app = spawn(&[("EXDAAS_WRITER_QUEUE", "2"), ("EXDAAS_WRITER_QUEUE_WAIT_MS", "200")]).await;
    let (ids, elsewhere) = ids_on(&app, 1, 24);
    app.store
        .inject_fault(1, Fault::Stall(Duration::from_secs(2)))
        .await
        .expect("fault queued");
    let started = Instant::now();
    let one = json!(1);
    let answers = join_all(ids.iter().map(|id| put(&app, id, &one))).await;
    let busy: Vec<_> = answers.iter().filter(|(status, ..)| *status == 503).collect();
    assert!(
        !busy.is_empty(),
        "{:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    for (_, body, retry_after) in &busy {
        assert_eq!(retry_after.as_deref(), Some("1"));
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("queue"), "{detail}");
    }
    // Those that found room were served once the stall ended.
    assert!(answers.iter().all(|(status, ..)| matches!(status, 201 | 503)));
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(put(&app, &elsewhere, &json!(1)).await.0, 201);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_full_of_bytes_pushes_back_whatever_its_count() {
    // Room for thousands of jobs, but for only 1 MiB of documents.
    let app = spawn(&[
        ("EXDAAS_WRITER_QUEUE_BYTES", "1048576"),
        ("EXDAAS_WRITER_QUEUE_WAIT_MS", "200"),
        ("EXDAAS_MAX_BODY_BYTES", "2097152"),
    ])
    .await;
    let (ids, _) = ids_on(&app, 1, 6);
    app.store
        .inject_fault(1, Fault::Stall(Duration::from_secs(2)))
        .await
        .expect("fault queued");
    let large = json!("x".repeat(300 << 10));
    let answers = join_all(ids.iter().map(|id| put(&app, id, &large))).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    let stored = statuses.iter().filter(|s| **s == 201).count();
    assert!((1..=3).contains(&stored), "at most 1 MiB waited: {statuses:?}");
    assert!(statuses.iter().all(|s| matches!(s, 201 | 503)), "{statuses:?}");
    // Writes fit again once the large ones are through.
    for id in &ids {
        assert!(matches!(put(&app, id, &json!(1)).await.0, 200 | 201));
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_file_deleted_under_the_server_is_never_acknowledged_to() {
    if skip_on_postgres("faults of the shard files (a full disk, a damaged, deleted or growing file)") {
        return;
    }
    let app = spawn(&[]).await;
    let (ids, elsewhere) = ids_on(&app, 2, 3);
    assert_eq!(put(&app, &ids[0], &json!(1)).await.0, 201);
    let file = app.data_dir.join("shard-0002.sqlite3");
    std::fs::remove_file(&file).expect("deleted the shard file");

    let (status, body, _) = put(&app, &ids[1], &json!(2)).await;
    assert_eq!(status, 503, "a write to a deleted file is not acknowledged: {body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("shard 2") && detail.contains("deleted or replaced"),
        "names the shard and what happened to its file: {detail}"
    );
    // Where the file lives is for the log, not for clients.
    assert!(
        !detail.contains(".sqlite3") && !detail.contains(&*app.data_dir.to_string_lossy()),
        "{detail}"
    );
    // It stays down (reopening would start an empty shard) and says why.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, state) = readiness(&app, 2).await;
    assert_eq!(status, 503);
    assert!(
        state["problem"].as_str().is_some_and(|p| p.contains("deleted")),
        "{state}"
    );
    assert_eq!(put(&app, &ids[2], &json!(3)).await.0, 503);
    assert!(!file.exists(), "no empty file was created in its place");
    // The rest of the service goes on.
    assert_eq!(put(&app, &elsewhere, &json!(1)).await.0, 201);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_file_damaged_under_the_server_answers_503_naming_the_shard() {
    if skip_on_postgres("faults of the shard files (a full disk, a damaged, deleted or growing file)") {
        return;
    }
    let folder = tempfile::tempdir().expect("temp dir");
    // Write enough that the documents fill many pages, then stop: the WAL
    // is checkpointed into the file.
    let app = spawn_app_on(folder.path(), &[]).await;
    let pad = "y".repeat(2000);
    for n in 0..400 {
        app.put_doc("c", &format!("d{n}"), &json!({"n": n, "pad": pad})).await;
    }
    app.stop().await;

    // No cache, so reads go to the file.
    let app = spawn_app_on(folder.path(), &[("EXDAAS_CACHE_MIB", "0")]).await;
    let file = folder.path().join("shard-0000.sqlite3");
    let mut bytes = std::fs::read(&file).expect("read shard file");
    let len = bytes.len();
    assert!(len > 64 * 4096, "the shard has pages to damage: {len} bytes");
    // Garble every page past the first few, leaving the header and schema.
    for byte in bytes.iter_mut().skip(8 * 4096) {
        *byte ^= 0x5a;
    }
    std::fs::write(&file, &bytes).expect("write damaged file");

    let mut damaged = 0;
    let mut served = 0;
    for n in 0..400 {
        let resp = app.get_doc("c", &format!("d{n}")).await;
        match resp.status().as_u16() {
            200 => served += 1,
            503 => {
                let body = json(resp).await;
                let detail = body["detail"].as_str().unwrap_or_default();
                assert!(detail.contains("shard 0") && detail.contains("damaged"), "{detail}");
                damaged += 1;
            }
            other => panic!("d{n}: {other}, not a clear 503"),
        }
    }
    assert!(damaged > 0, "the damage was noticed");
    assert!(served > 0, "documents on other shards are still served");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded_under_steady_writes() {
    if skip_on_postgres("faults of the shard files (a full disk, a damaged, deleted or growing file)") {
        return;
    }
    let app = std::sync::Arc::new(spawn(&[]).await);
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    // Watch every WAL file's size while the load runs.
    let watcher = {
        let (dir, writing) = (app.data_dir.clone(), writing.clone());
        tokio::spawn(async move {
            let mut largest = 0u64;
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                for n in 0..4 {
                    let wal = dir.join(format!("shard-{n:04}.sqlite3-wal"));
                    largest = largest.max(std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            largest
        })
    };
    let pad = "w".repeat(8 * 1024);
    let writers = (0..8).map(|w| {
        let (app, pad) = (app.clone(), pad.clone());
        tokio::spawn(async move {
            for n in 0..1000 {
                let resp = app
                    .put_doc("wal", &format!("w{w}-{}", n % 100), &json!({"n": n, "pad": pad}))
                    .await;
                assert!(resp.status().is_success());
            }
        })
    });
    let readers = (0..2).map(|_| {
        let app = app.clone();
        tokio::spawn(async move {
            for _ in 0..100 {
                assert_eq!(app.get("/v1/collections/wal/docs?limit=50").await.status(), 200);
            }
        })
    });
    for task in writers.chain(readers).collect::<Vec<_>>() {
        task.await.expect("task");
    }
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    let largest = watcher.await.expect("watcher");
    // 8,000 writes of 8 KiB: some 24 MiB through each shard's WAL, which
    // checkpoints every 1,000 pages (4 MiB) and is reused from its start.
    eprintln!("largest WAL: {largest} bytes");
    assert!(largest > 0, "the WAL was watched");
    assert!(largest < 10 << 20, "the WAL grew to {largest} bytes");
}

/// A server whose shard `shard` holds `victim` on disk but not in its cache:
/// written first, then pushed out of a 1 MiB cache's warm-up by newer
/// documents on the same shard.
async fn spawn_with_uncached_victim(shard: usize, extra: &[(&str, &str)]) -> (TestApp, String) {
    let folder = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(folder.path(), &[]).await;
    let (ids, _) = ids_on(&app, shard, 9);
    let victim = ids[0].clone();
    // Over 64 KiB: the warm-up leaves it to its first read (a small one
    // would take the room the newer ones leave).
    let big = json!({"v": 1, "pad": "p".repeat(70_000)});
    assert_eq!(put(&app, &victim, &big).await.0, 201);
    // Newer than the victim, small enough to be warmed (at most 64 KiB),
    // and more than a 1 MiB cache's share for the shard.
    let filler = json!("f".repeat(60_000));
    for id in &ids[1..] {
        assert_eq!(put(&app, id, &filler).await.0, 201);
    }
    app.stop().await;
    let mut settings = vec![("EXDAAS_CACHE_MIB", "1")];
    settings.extend_from_slice(extra);
    let mut app = spawn_app_on(folder.path(), &settings).await;
    app.keep_folder(folder);
    (app, victim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_waiting_for_a_connection_never_holds_up_a_write() {
    let (app, victim) = spawn_with_uncached_victim(2, &[("EXDAAS_WRITER_QUEUE_WAIT_MS", "5000")]).await;
    let hold = Duration::from_millis(1500);
    app.store
        .inject_fault(2, Fault::HoldReads(hold))
        .await
        .expect("reads held");
    let started = Instant::now();
    let reader = {
        let (client, url) = (app.client.clone(), app.url(&format!("/v1/collections/c/docs/{victim}")));
        tokio::spawn(async move {
            let resp = client.get(url).send().await.expect("answered");
            (
                resp.status().as_u16(),
                resp.json::<Value>().await.unwrap_or(Value::Null),
                started.elapsed(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The miss above waits for a connection; the writer must not wait on it.
    let writing = Instant::now();
    assert_eq!(put(&app, &victim, &json!({"v": 2})).await.0, 200);
    let took = writing.elapsed();
    assert!(
        took < Duration::from_millis(800),
        "the write waited {took:?} for a reader's connection"
    );
    let (status, body, waited) = reader.await.expect("reader");
    assert!(
        waited >= Duration::from_millis(1200),
        "the read was a miss that waited for a connection: {waited:?}"
    );
    assert_eq!(status, 200);
    assert_eq!(
        body["data"],
        json!({"v": 2}),
        "the read answers the write acknowledged before it"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_that_find_no_free_connection_get_503_with_retry_after() {
    let (app, victim) = spawn_with_uncached_victim(1, &[("EXDAAS_WRITER_QUEUE_WAIT_MS", "300")]).await;
    app.store
        .inject_fault(1, Fault::HoldReads(Duration::from_secs(3)))
        .await
        .expect("reads held");
    let resp = tokio::time::timeout(Duration::from_secs(2), app.get_doc("c", &victim))
        .await
        .expect("answered, not hung");
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let detail = json(resp).await["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.contains("read connection"), "{detail}");
    app.stop().await;
}
