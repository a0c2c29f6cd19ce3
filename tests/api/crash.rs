//! Crash safety: concurrent writers against the real binary, killed with
//! SIGKILL at random moments, restarted on the same folder. Every write that
//! was acknowledged before the kill is there with its exact data; a batch's
//! operations on one shard are all there or none; ids are never reused.
//! Run in both sync modes (a process crash loses nothing in either).
//!
//! A new folder's first boot, killed at any moment, boots again; what an
//! older version's interrupted first boot left is made anew, and an empty
//! file where the layout records a created shard is refused, by the server
//! and by `exdaas check` alike.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use exdaas::domain::ShardCount;
use exdaas::domain::{CollectionName, DocId, DocKey};
use exdaas::store::placement::Placement;
use serde_json::{json, Value};

use crate::helpers::{json, skip_on_postgres, ServerProcess};

/// Kill rounds per sync mode: `EXDAAS_CRASH_ROUNDS` raises it for a soak (scripts/soak.sh).
fn rounds() -> u64 {
    std::env::var("EXDAAS_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
}
const WRITERS: u64 = 12;

/// What the clients saw, across every round.
#[derive(Default)]
struct Ledger {
    /// Acknowledged v1 puts: id -> data.
    puts: BTreeMap<String, Value>,
    /// Puts sent but not acknowledged (the kill came first): id -> data.
    unacked: BTreeMap<String, Value>,
    /// Acknowledged anonymous ids (original API) -> data.
    anonymous: BTreeMap<u64, Value>,
    /// Batches acknowledged, and batches sent but not acknowledged: the ids
    /// of each (all on one shard).
    batches: Vec<(bool, Vec<String>)>,
}

/// Deterministic per-writer random numbers, so a failure can be replayed.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// `count` ids (prefix-n) that all land on the same one of 4 shards.
fn same_shard_ids(prefix: &str, count: usize) -> Vec<String> {
    let placement = Placement::new(ShardCount::new(4).expect("4 shards"));
    let collection = CollectionName::parse("crash").expect("name");
    let shard_of = |id: &str| placement.shard_of(&DocKey::new(collection.clone(), DocId::parse(id).expect("id")));
    let first = format!("{prefix}-0");
    let target = shard_of(&first);
    let mut ids = vec![first];
    let mut n = 1;
    while ids.len() < count {
        let id = format!("{prefix}-{n}");
        if shard_of(&id) == target {
            ids.push(id);
        }
        n += 1;
    }
    ids
}

async fn kill_and_check(sync: &str) {
    let folder = tempfile::tempdir().expect("temp dir");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    for round in 0..rounds() {
        let mut server = ServerProcess::start(folder.path(), &[("EXDAAS_SYNC", sync)]).await;
        let port = server.port;
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let (client, stop, ledger) = (client.clone(), stop.clone(), ledger.clone());
            writers.push(tokio::spawn(async move {
                let mut rng = 0x9E37_79B9_7F4A_7C15 ^ (round * 1000 + w + 1);
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let base = format!("http://127.0.0.1:{port}");
                    match next_random(&mut rng) % 8 {
                        // An anonymous write of the original API.
                        0 => {
                            let data = json!({"anon": [round, w, i]});
                            let sent = client
                                .post(format!("{base}/api"))
                                .json(&json!({"id": null, "data": data}))
                                .send()
                                .await;
                            let Ok(resp) = sent else { break };
                            if !resp.status().is_success() {
                                break;
                            }
                            let Ok(body) = resp.json::<Value>().await else { break };
                            let id = body["id"].as_u64().expect("an integer id");
                            ledger.lock().expect("ledger").anonymous.insert(id, data);
                        }
                        // A batch of puts that all land on one shard.
                        1 => {
                            let ids = same_shard_ids(&format!("b{round}-{w}-{i}"), 4);
                            let ops: Vec<Value> = ids
                                .iter()
                                .map(|id| json!({"op": "put", "id": id, "data": {"batch": id}}))
                                .collect();
                            let sent = client
                                .post(format!("{base}/v1/collections/crash/batch"))
                                .json(&json!({ "ops": ops }))
                                .send()
                                .await;
                            let acked = match sent {
                                Ok(resp) if resp.status().is_success() => resp.json::<Value>().await.is_ok(),
                                _ => false,
                            };
                            ledger.lock().expect("ledger").batches.push((acked, ids));
                            if !acked {
                                break;
                            }
                        }
                        // A put under a fresh id, sometimes a rewrite of an earlier one.
                        _ => {
                            let id = format!("p{round}-{w}-{}", i - (next_random(&mut rng) % 3).min(i));
                            let data = json!({"put": [round, w, i], "pad": "x".repeat((next_random(&mut rng) % 512) as usize)});
                            ledger.lock().expect("ledger").unacked.insert(id.clone(), data.clone());
                            let sent = client
                                .put(format!("{base}/v1/collections/crash/docs/{id}"))
                                .json(&data)
                                .send()
                                .await;
                            match sent {
                                Ok(resp) if resp.status().is_success() => {
                                    let mut ledger = ledger.lock().expect("ledger");
                                    ledger.unacked.remove(&id);
                                    ledger.puts.insert(id, data);
                                }
                                _ => break,
                            }
                        }
                    }
                }
            }));
        }
        // Kill at a random moment, mid-load.
        let wait = 150 + (next_random(&mut (round + 7)) % 500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        server.signal("KILL");
        server.wait().await;
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            let _ = w.await;
        }
    }

    // Restart once more and check everything against the ledger.
    let server = ServerProcess::start(folder.path(), &[("EXDAAS_SYNC", sync)]).await;
    // Every writer has stopped: take the ledger out of its lock.
    let ledger = std::mem::take(&mut *ledger.lock().expect("ledger"));
    // Enough acknowledged writes for the check to mean something (a
    // database's round trips make fewer in the same time than files do).
    let enough = if crate::helpers::on_postgres() { 30 } else { 100 };
    assert!(
        ledger.puts.len() > enough,
        "the load got going: {} puts acknowledged",
        ledger.puts.len()
    );
    let in_flight = ledger.unacked.len() + ledger.batches.iter().filter(|(acked, _)| !acked).count();
    assert!(in_flight > 0, "the kills came mid-load: nothing was in flight");
    eprintln!(
        "{sync}: {} puts, {} anonymous writes, {} batches acknowledged; {in_flight} writes in flight at the kills",
        ledger.puts.len(),
        ledger.anonymous.len(),
        ledger.batches.iter().filter(|(acked, _)| *acked).count()
    );
    let get = |path: String| {
        let client = client.clone();
        let url = server.url(&path);
        async move {
            let resp = client.get(url).send().await.expect("request sent");
            let status = resp.status().as_u16();
            (status, if status == 200 { json(resp).await } else { Value::Null })
        }
    };
    for (id, data) in &ledger.puts {
        let (status, doc) = get(format!("/v1/collections/crash/docs/{id}")).await;
        assert_eq!(status, 200, "{sync}: acknowledged put {id} lost");
        // A later unacknowledged rewrite of the same id may have landed.
        let unacked = ledger.unacked.get(id);
        assert!(
            &doc["data"] == data || Some(&doc["data"]) == unacked,
            "{sync}: {id} holds {}, acknowledged {data}",
            doc["data"]
        );
    }
    for (id, data) in &ledger.unacked {
        if ledger.puts.contains_key(id) {
            continue;
        }
        let (status, doc) = get(format!("/v1/collections/crash/docs/{id}")).await;
        assert!(
            status == 404 || &doc["data"] == data,
            "{sync}: unacknowledged {id} is half there: {doc}"
        );
    }
    for (id, data) in &ledger.anonymous {
        let (status, doc) = get(format!("/api?id={id}")).await;
        assert_eq!((status, &doc["data"]), (200, data), "{sync}: anonymous write {id} lost");
    }
    for (acked, ids) in &ledger.batches {
        let mut present = BTreeSet::new();
        for id in ids {
            if get(format!("/v1/collections/crash/docs/{id}")).await.0 == 200 {
                present.insert(id.clone());
            }
        }
        if *acked {
            assert_eq!(
                present.len(),
                ids.len(),
                "{sync}: acknowledged batch {ids:?} lost {present:?}"
            );
        } else {
            assert!(
                present.is_empty() || present.len() == ids.len(),
                "{sync}: a batch on one shard is partly there: {present:?} of {ids:?}"
            );
        }
    }
    // The counter moved past every id it handed out.
    let resp = client
        .post(server.url("/api"))
        .json(&json!({"id": null, "data": "after"}))
        .send()
        .await
        .expect("request sent");
    let next = json(resp).await["id"].as_u64().expect("id");
    let highest = ledger.anonymous.keys().last().copied().unwrap_or(0);
    assert!(next > highest, "{sync}: id {next} reuses one at or below {highest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_with_sync_full() {
    kill_and_check("full").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_with_sync_normal() {
    kill_and_check("normal").await;
}

/// First boots killed per run: `EXDAAS_FIRST_BOOT_KILLS` raises it for a soak.
fn first_boot_kills() -> u64 {
    std::env::var("EXDAAS_FIRST_BOOT_KILLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100)
}

/// A new folder's first boot killed (SIGKILL) 0 to 99 ms after it started,
/// when it may be creating and migrating its shard files (from about 30 to
/// 70 ms on a debug build), then started again: the second boot must come
/// up every time and take writes. Half the tries with each sync mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_boot_killed_at_any_moment_boots_again() {
    if skip_on_postgres("a new data folder's shard files") {
        return;
    }
    let kills = first_boot_kills();
    let client = reqwest::Client::new();
    let mut rng = 0x2545_F491_4F6C_DD1D_u64;
    // Kills that caught the folder with its layout written but its shards
    // not all recorded as created: the moments that matter.
    let mut mid_creation = 0;
    let mut bricked = Vec::new();
    for n in 0..kills {
        let folder = tempfile::tempdir().expect("temp dir");
        let sync = if n % 2 == 0 { "normal" } else { "full" };
        let env = [("EXDAAS_SYNC", sync)];
        let mut first = ServerProcess::command(folder.path(), &env)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("exdaas starts");
        let after_ms = next_random(&mut rng) % 100;
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        first.start_kill().expect("kill");
        first.wait().await.expect("killed");
        let layout = std::fs::read(folder.path().join("exdaas-layout.json")).ok();
        let layout: Option<Value> = layout.and_then(|bytes| serde_json::from_slice(&bytes).ok());
        if layout.is_some_and(|layout| layout["shards_created"] == json!(false)) {
            mid_creation += 1;
        }
        match ServerProcess::try_start(folder.path(), &env).await {
            Ok(mut server) => {
                let resp = client
                    .post(server.url("/api"))
                    .json(&json!({"id": null, "data": n}))
                    .send()
                    .await
                    .expect("request sent");
                assert_eq!(resp.status(), 200, "try {n}: the second boot takes writes");
                server.signal("KILL");
                server.wait().await;
            }
            Err(said) => bricked.push(format!("try {n} ({sync}, killed after {after_ms} ms): {said}")),
        }
    }
    eprintln!("{kills} first boots killed, {mid_creation} while creating the shard files");
    assert!(
        bricked.is_empty(),
        "{} of {kills} first boots, killed, never boot again; the first:\n{}",
        bricked.len(),
        bricked[0]
    );
    assert!(
        mid_creation >= kills / 10,
        "only {mid_creation} of {kills} kills came while the shard files were being created"
    );
}

/// Sets the layout's `shards_created` of the folder `dir`.
fn set_shards_created(dir: &std::path::Path, created: bool) {
    let path = dir.join("exdaas-layout.json");
    let mut layout: Value = serde_json::from_slice(&std::fs::read(&path).expect("layout")).expect("JSON");
    layout["shards_created"] = json!(created);
    std::fs::write(&path, layout.to_string()).expect("write layout");
}

/// A first boot of an older version, killed after sqlx made its
/// `_sqlx_migrations` table but before the first migration committed, left
/// a shard file with that table alone, empty, and no application id: the
/// next boot takes it for a new file (it holds nothing) instead of refusing
/// it as another program's database forever, and `exdaas check` agrees.
/// Where the layout records every shard as created, though, an empty file
/// stands where a shard's data was: both refuse it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_made_shard_file_is_made_anew_and_an_empty_one_refused() {
    if skip_on_postgres("a data folder's shard files") {
        return;
    }
    use sqlx::{ConnectOptions, Connection};
    let folder = tempfile::tempdir().expect("temp dir");
    crate::helpers::spawn_app_on(folder.path(), &[]).await.stop().await;
    set_shards_created(folder.path(), false);
    let shard = folder.path().join("shard-0002.sqlite3");
    std::fs::remove_file(&shard).expect("remove the shard");
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&shard)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .connect()
        .await
        .expect("create the half-made file");
    // The table as sqlx 0.8 creates it, and nothing else.
    sqlx::query(
        "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
         installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL, \
         checksum BLOB NOT NULL, execution_time BIGINT NOT NULL)",
    )
    .execute(&mut conn)
    .await
    .expect("create table");
    conn.close().await.expect("close");

    let checked = crate::helpers::exdaas(folder.path(), &["check"], &[]).await;
    assert_eq!(
        checked.code,
        Some(0),
        "check passes a first boot cut short: {}",
        checked.said()
    );
    let mut server = ServerProcess::try_start(folder.path(), &[])
        .await
        .unwrap_or_else(|said| panic!("the server boots over it: {said}"));
    let resp = reqwest::Client::new()
        .post(server.url("/api"))
        .json(&json!({"id": null, "data": "after"}))
        .send()
        .await
        .expect("request sent");
    assert_eq!(resp.status(), 200);
    server.signal("TERM");
    assert_eq!(server.wait().await, Some(0));
    let layout: Value =
        serde_json::from_slice(&std::fs::read(folder.path().join("exdaas-layout.json")).expect("layout"))
            .expect("JSON");
    assert_eq!(layout["shards_created"], json!(true));
    let checked = crate::helpers::exdaas(folder.path(), &["check"], &[]).await;
    assert_eq!(checked.code, Some(0), "{}", checked.said());

    // The folder's first boot finished: an empty file is lost data.
    std::fs::write(folder.path().join("shard-0001.sqlite3"), b"").expect("empty the shard");
    let said = match ServerProcess::try_start(folder.path(), &[]).await {
        Ok(_) => panic!("a server booted over an empty shard file"),
        Err(said) => said,
    };
    let last = said.lines().last().unwrap_or_default();
    assert!(
        said.starts_with("exit Some(2)") && last.contains("shard-0001.sqlite3") && last.contains("empty"),
        "refused, naming the file: {said}"
    );
    let checked = crate::helpers::exdaas(folder.path(), &["check"], &[]).await;
    assert_eq!(checked.code, Some(1), "{}", checked.said());
    assert!(checked.stdout.contains("no exdaas schema"), "{}", checked.said());
}
