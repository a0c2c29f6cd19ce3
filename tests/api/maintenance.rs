//! Operating on the data: `exdaas backup`, `restore`, `check`, `reshard`,
//! the admin backup route and the archive scripts, run as a user would run
//! them (the real binary) against folders a real server wrote.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{exdaas, json, send, skip_on_postgres, spawn_app, spawn_app_on, spawn_app_with, TestApp};

/// Imports `n` documents `{"n": i, "name": "doc-i"}` with ids `d000000..`
/// into `collection`, in one NDJSON request.
async fn import_docs(app: &TestApp, collection: &str, n: usize) {
    let mut body = String::new();
    for i in 0..n {
        body.push_str(&format!(
            "{{\"id\":\"d{i:06}\",\"data\":{{\"n\":{i},\"name\":\"doc-{i}\"}}}}\n"
        ));
    }
    let resp = send(
        app.client
            .post(app.url(&format!("/v1/collections/{collection}/import")))
            .header("content-type", "application/x-ndjson")
            .body(body),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let report = json(resp).await;
    assert_eq!(report["imported"], n, "{report}");
}

/// Asserts that `app` serves every document `import_docs` wrote.
async fn assert_all_docs(app: &TestApp, collection: &str, n: usize) {
    let docs = app.list_all(collection).await;
    assert_eq!(docs.len(), n, "documents in {collection}");
    for (i, doc) in docs.iter().enumerate() {
        assert_eq!(doc["id"], format!("d{i:06}"));
        assert_eq!(doc["data"], json!({"n": i, "name": format!("doc-{i}")}));
    }
}

/// The shard count a data folder's layout records.
fn layout_shards(root: &Path) -> u64 {
    let text = std::fs::read_to_string(root.join("exdaas-layout.json")).expect("layout readable");
    let layout: Value = serde_json::from_str(&text).expect("layout is JSON");
    layout["shards"].as_u64().expect("shards in the layout")
}

/// Every shard file of a data folder, wherever its generation keeps them.
fn shard_files(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("folder readable") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if path.is_dir() && name.starts_with("gen-") {
                folders.push(path);
            } else if name.starts_with("shard-") && name.ends_with(".sqlite3") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[tokio::test]
async fn a_backup_taken_under_load_restores_every_acknowledged_document() {
    if skip_on_postgres("backup, restore, check and reshard are the data folder's commands") {
        return;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(data.path(), &[]).await;
    import_docs(&app, "things", 500).await;
    let ack = json(app.post_api(json!({"id": 7, "data": {"color": "blue"}})).await).await;
    assert_eq!(ack["id"], 7, "{ack}");

    // Writers keep going while the backup runs; each counts what was
    // acknowledged to it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked: Vec<_> = (0..4)
        .map(|_| std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)))
        .collect();
    let mut writers = Vec::new();
    for (w, acked) in acked.iter().enumerate() {
        let (client, url, stop, acked) = (app.client.clone(), app.url(""), stop.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let resp = client
                    .put(format!("{url}/v1/collections/busy/docs/w{w}-{i}"))
                    .json(&json!({"i": i}))
                    .send()
                    .await
                    .expect("write answered");
                assert_eq!(resp.status(), 201);
                i += 1;
                acked.store(i, std::sync::atomic::Ordering::SeqCst);
            }
            i
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let acked_before: Vec<u64> = acked
        .iter()
        .map(|a| a.load(std::sync::atomic::Ordering::SeqCst))
        .collect();
    let backup = tempfile::tempdir().expect("temp dir");
    let dest = backup.path().join("snapshot");
    let run = exdaas(data.path(), &["backup", dest.to_str().expect("utf-8")], &[]).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut written = 0;
    for writer in writers {
        written += writer.await.expect("writer");
    }
    assert_eq!(run.code, Some(0), "{}", run.said());
    assert!(written > 0, "the writers wrote during the backup");
    assert!(run.stdout.contains("backup complete"), "{}", run.said());

    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dest.join("manifest.json")).expect("a manifest"))
            .expect("manifest is JSON");
    assert_eq!(manifest["shards"], 4);
    assert!(
        manifest["placement"].as_str().is_some_and(|p| p.starts_with("fnv1a64")),
        "{manifest}"
    );
    let files = manifest["files"].as_array().expect("files");
    assert_eq!(files.len(), 4);
    let in_manifest: u64 = files.iter().map(|f| f["documents"].as_u64().unwrap_or(0)).sum();
    assert!(in_manifest >= 501, "{manifest}");
    for file in files {
        assert_eq!(file["sha256"].as_str().map(str::len), Some(64), "{file}");
    }
    app.stop().await;

    let restored = tempfile::tempdir().expect("temp dir");
    let target = restored.path().join("data");
    let run = exdaas(&target, &["restore", dest.to_str().expect("utf-8")], &[]).await;
    assert_eq!(run.code, Some(0), "{}", run.said());
    let run = exdaas(&target, &["check"], &[]).await;
    assert_eq!(run.code, Some(0), "{}", run.said());
    assert!(run.stdout.contains("check passed"), "{}", run.said());

    let app = spawn_app_on(&target, &[]).await;
    assert_all_docs(&app, "things", 500).await;
    let doc = json(app.get_api("7").await).await;
    assert_eq!(doc, json!({"id": 7, "data": {"color": "blue"}}));
    // Every write acknowledged before the backup began is in it, with its
    // data; nothing in it was never written.
    let busy = app.list_all("busy").await;
    assert_eq!(busy.len() as u64, in_manifest - 501);
    for (w, before) in acked_before.iter().enumerate() {
        let seen: std::collections::BTreeMap<u64, Value> = busy
            .iter()
            .filter_map(|d| {
                let i = d["id"].as_str()?.strip_prefix(&format!("w{w}-"))?.parse().ok()?;
                Some((i, d["data"].clone()))
            })
            .collect();
        for i in 0..*before {
            assert_eq!(seen.get(&i), Some(&json!({"i": i})), "writer {w}, write {i}");
        }
        assert!(seen.keys().all(|i| *i < written), "writer {w}: {seen:?}");
    }
    // Counter ids never go back to one the backup holds (a running server's
    // backup carries its reserved range, so the counter may jump past it).
    let ack = json(app.post_api(json!({"id": null, "data": {"new": true}})).await).await;
    assert!(ack["id"].as_u64().is_some_and(|id| id > 7), "{ack}");
    app.stop().await;
}

#[tokio::test]
async fn restore_refuses_a_folder_in_use_a_damaged_backup_and_a_partial_one() {
    if skip_on_postgres("backup, restore, check and reshard are the data folder's commands") {
        return;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(data.path(), &[]).await;
    import_docs(&app, "things", 50).await;
    app.stop().await;
    let backups = tempfile::tempdir().expect("temp dir");
    let good = backups.path().join("good");
    let run = exdaas(data.path(), &["backup", good.to_str().expect("utf-8")], &[]).await;
    assert_eq!(run.code, Some(0), "{}", run.said());

    // Into a folder that holds data.
    let run = exdaas(data.path(), &["restore", good.to_str().expect("utf-8")], &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.said());
    assert!(run.stderr.contains("not empty"), "{}", run.said());

    // A backup into a folder that is not empty.
    let run = exdaas(data.path(), &["backup", data.path().to_str().expect("utf-8")], &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.said());
    assert!(run.stderr.contains("not empty"), "{}", run.said());

    // A shard file changed after the backup: its checksum no longer matches.
    let damaged = backups.path().join("damaged");
    copy_folder(&good, &damaged);
    let victim = damaged.join("shard-0002.sqlite3");
    let mut bytes = std::fs::read(&victim).expect("read shard");
    let last = bytes.len() - 100;
    bytes[last] ^= 0xff;
    std::fs::write(&victim, bytes).expect("write shard");
    let target = backups.path().join("target-1");
    let run = exdaas(&target, &["restore", damaged.to_str().expect("utf-8")], &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.said());
    assert!(run.stderr.contains("shard-0002.sqlite3"), "{}", run.said());
    assert!(
        !target.join("exdaas-layout.json").exists(),
        "a refused restore leaves no data folder behind"
    );

    // A backup cut off before its manifest was written.
    let partial = backups.path().join("partial");
    copy_folder(&good, &partial);
    std::fs::remove_file(partial.join("manifest.json")).expect("remove manifest");
    let target = backups.path().join("target-2");
    let run = exdaas(&target, &["restore", partial.to_str().expect("utf-8")], &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.said());
    assert!(run.stderr.contains("manifest.json"), "{}", run.said());

    // The good one still restores.
    let target = backups.path().join("target-3");
    let run = exdaas(&target, &["restore", good.to_str().expect("utf-8")], &[]).await;
    assert_eq!(run.code, Some(0), "{}", run.said());
    let app = spawn_app_on(&target, &[]).await;
    assert_all_docs(&app, "things", 50).await;
    app.stop().await;
}

fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create");
    for entry in std::fs::read_dir(from).expect("read") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, to.join(path.file_name().expect("name"))).expect("copy");
    }
}

/// A shard file numbered past the layout's count stops the boot (it may
/// hold documents no id reaches), so the check, which says what a boot
/// would find, refuses it too instead of passing the folder.
#[tokio::test]
async fn check_refuses_a_shard_file_beyond_the_shard_count() {
    if skip_on_postgres("backup, restore, check and reshard are the data folder's commands") {
        return;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(data.path(), &[]).await;
    import_docs(&app, "things", 10).await;
    app.stop().await;
    let files = shard_files(data.path());
    std::fs::copy(&files[3], data.path().join("shard-0009.sqlite3")).expect("copy a shard file");

    let run = exdaas(data.path(), &["check"], &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.said());
    assert!(
        run.stderr.contains("shard-0009.sqlite3") && run.stderr.contains("beyond the 4 shards"),
        "the check names the stray file: {}",
        run.said()
    );
}

#[tokio::test]
async fn check_finds_a_document_in_the_wrong_shard() {
    if skip_on_postgres("backup, restore, check and reshard are the data folder's commands") {
        return;
    }
    use sqlx::{ConnectOptions, Connection};
    let data = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(data.path(), &[]).await;
    import_docs(&app, "things", 100).await;
    app.stop().await;
    let run = exdaas(data.path(), &["check"], &[]).await;
    assert_eq!(run.code, Some(0), "{}", run.said());
    assert!(run.stdout.contains("100 documents"), "{}", run.said());

    // Copy one of shard 0's rows into shard 1, where its id does not hash.
    let files = shard_files(data.path());
    let mut from = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&files[0])
        .connect()
        .await
        .expect("open shard 0");
    let (id, bucket): (String, i64) =
        sqlx::query_as("SELECT id, bucket FROM documents WHERE collection = 'things' LIMIT 1")
            .fetch_one(&mut from)
            .await
            .expect("a row in shard 0");
    from.close().await.expect("close");
    let mut to = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&files[1])
        .connect()
        .await
        .expect("open shard 1");
    sqlx::query(
        "INSERT INTO documents (collection, id, bucket, version, updated_at, data) \
         VALUES ('things', ?1, ?2, 1, 0, '{}')",
    )
    .bind(&id)
    .bind(bucket)
    .execute(&mut to)
    .await
    .expect("insert the stray row");
    to.close().await.expect("close");

    let run = exdaas(data.path(), &["check"], &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.said());
    assert!(run.stdout.contains("check FAILED"), "{}", run.said());
    assert!(
        run.stdout.contains(&id),
        "the report names the document: {}",
        run.said()
    );
}

#[tokio::test]
async fn reshard_moves_every_document_and_the_server_boots_with_the_new_count() {
    if skip_on_postgres("backup, restore, check and reshard are the data folder's commands") {
        return;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(data.path(), &[]).await;
    import_docs(&app, "things", 2000).await;
    for _ in 0..3 {
        app.post_api(json!({"id": null, "data": {"anonymous": true}})).await;
    }
    let schema = json!({"type": "object", "required": ["n"]});
    let resp = send(app.request(Method::PUT, "/v1/collections/things/schema").json(&schema)).await;
    assert_eq!(resp.status(), 200);
    let resp = send(
        app.request(Method::PUT, "/v1/collections/things/indexes/by_n")
            .json(&json!({"fields": ["n"]})),
    )
    .await;
    assert_eq!(resp.status(), 201);
    crate::indexes::wait_ready(&app, "things", "by_n").await;
    app.stop().await;

    let run = exdaas(data.path(), &["reshard", "--to", "7"], &[]).await;
    assert_eq!(run.code, Some(0), "{}", run.said());
    assert!(run.stdout.contains("4 -> 7 shards"), "{}", run.said());
    assert_eq!(layout_shards(data.path()), 7);
    assert_eq!(shard_files(data.path()).len(), 7, "the old shards are gone");
    let run = exdaas(data.path(), &["check"], &[]).await;
    assert_eq!(run.code, Some(0), "{}", run.said());

    // The old count is now the wrong one.
    let refused = exdaas(data.path(), &[], &[("PORT", "0"), ("SHARD_LIMIT", "4")]).await;
    assert_eq!(refused.code, Some(2), "{}", refused.said());
    assert!(
        refused.stderr.contains('7') && refused.stderr.contains('4'),
        "{}",
        refused.said()
    );

    let app = spawn_app_on(data.path(), &[("SHARD_LIMIT", "7")]).await;
    assert_all_docs(&app, "things", 2000).await;
    // The schema went along to every new shard, and the index, rebuilt.
    assert_eq!(
        json(app.get("/v1/collections/things/schema").await).await["schema"],
        schema
    );
    let index = crate::indexes::wait_ready(&app, "things", "by_n").await;
    assert_eq!(index["indexed"], 2000, "{index}");
    let page = json(
        app.post_json(
            "/v1/collections/things/query",
            &json!({"filter": {"n": {"$lt": 3}}, "explain": true}),
        )
        .await,
    )
    .await;
    assert_eq!(page["explain"]["plan"], "index", "{page}");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(3), "{page}");
    for i in 0..21 {
        let resp = app.put_doc("things", &format!("bad{i}"), &json!({"m": 1})).await;
        assert_eq!(resp.status(), 422, "bad{i}");
    }
    let ack = json(app.post_api(json!({"id": null, "data": {"anonymous": true}})).await).await;
    assert_eq!(ack["id"], 4, "the counter survives a reshard: {ack}");
    app.stop().await;

    // And back down to one shard.
    let run = exdaas(data.path(), &["reshard", "--to", "1"], &[]).await;
    assert_eq!(run.code, Some(0), "{}", run.said());
    let app = spawn_app_on(data.path(), &[("SHARD_LIMIT", "1")]).await;
    assert_all_docs(&app, "things", 2000).await;
    app.stop().await;
}

#[tokio::test]
async fn reshard_refuses_while_the_server_runs_and_bad_counts() {
    if skip_on_postgres("backup, restore, check and reshard are the data folder's commands") {
        return;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(data.path(), &[]).await;
    import_docs(&app, "things", 10).await;
    let run = exdaas(data.path(), &["reshard", "--to", "8"], &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.said());
    assert!(run.stderr.contains("another exdaas process"), "{}", run.said());
    assert_all_docs(&app, "things", 10).await;
    app.stop().await;
    assert_eq!(layout_shards(data.path()), 4);

    let run = exdaas(data.path(), &["reshard", "--to", "0"], &[]).await;
    assert_eq!(run.code, Some(2), "{}", run.said());
    assert!(run.stderr.contains("--to 0"), "{}", run.said());
}

#[tokio::test]
async fn a_reshard_killed_midway_leaves_a_folder_that_serves_everything() {
    if skip_on_postgres("backup, restore, check and reshard are the data folder's commands") {
        return;
    }
    const DOCS: usize = 20_000;
    let data = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(data.path(), &[]).await;
    import_docs(&app, "things", DOCS).await;
    app.stop().await;

    // Kill it at growing moments; each time the folder must serve every
    // document with the count its layout records.
    for delay_ms in [5u64, 40, 120, 300] {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_exdaas"))
            .args(["reshard", "--to", "9"])
            .env("DETS_ROOT", data.path())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("reshard starts");
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let _ = child.start_kill();
        let status = child.wait().await.expect("reshard ends");
        let shards = layout_shards(data.path());
        assert!(shards == 4 || shards == 9, "layout says {shards}");
        eprintln!("reshard killed after {delay_ms} ms ({status}): the layout says {shards} shards");
        let limit = shards.to_string();
        let app = spawn_app_on(data.path(), &[("SHARD_LIMIT", &limit)]).await;
        let docs = app.list_all("things").await;
        assert_eq!(
            docs.len(),
            DOCS,
            "after a kill at {delay_ms} ms ({status}), {shards} shards"
        );
        app.stop().await;
        if shards == 9 {
            break;
        }
    }

    // Run to the end: it cleans up what the killed runs left.
    let run = exdaas(data.path(), &["reshard", "--to", "9"], &[]).await;
    assert_eq!(run.code, Some(0), "{}", run.said());
    assert_eq!(layout_shards(data.path()), 9);
    assert_eq!(shard_files(data.path()).len(), 9);
    let leftovers: Vec<String> = std::fs::read_dir(data.path())
        .expect("read")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.contains("building"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let app = spawn_app_on(data.path(), &[("SHARD_LIMIT", "9")]).await;
    assert_all_docs(&app, "things", DOCS).await;
    app.stop().await;
}

const KEYS: &str = "admin:admin-key-0123456789;write:writer-key-0123456789;\
                    admin:users-admin-0123456789:users";

#[tokio::test]
async fn admins_take_backups_over_http() {
    if skip_on_postgres("backup, restore, check and reshard are the data folder's commands") {
        return;
    }
    let backups = tempfile::tempdir().expect("temp dir");
    let backup_dir = backups.path().to_str().expect("utf-8").to_string();
    let app = spawn_app_with(&[("EXDAAS_API_KEYS", KEYS), ("EXDAAS_BACKUP_DIR", &backup_dir)]).await;
    let resp = send(
        app.client
            .put(app.url("/v1/collections/things/docs/a"))
            .bearer_auth("writer-key-0123456789")
            .json(&json!({"kept": true})),
    )
    .await;
    assert_eq!(resp.status(), 201);

    let take = |key: Option<&str>| {
        let request = app.client.post(app.url("/v1/admin/backup"));
        match key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    };
    assert_eq!(send(take(None)).await.status(), 401);
    assert_eq!(send(take(Some("writer-key-0123456789"))).await.status(), 403);
    let limited = send(take(Some("users-admin-0123456789"))).await;
    assert_eq!(
        limited.status(),
        403,
        "an admin of some collections cannot copy them all"
    );
    assert_eq!(std::fs::read_dir(backups.path()).expect("read").count(), 0);

    let resp = send(take(Some("admin-key-0123456789"))).await;
    assert_eq!(resp.status(), 201);
    let taken = json(resp).await;
    assert_eq!(taken["documents"], 1, "{taken}");
    assert_eq!(taken["shards"], 4, "{taken}");
    // Named within the backup folder: the server's paths stay its own.
    assert!(
        !taken.to_string().contains(backups.path().to_str().expect("utf-8")),
        "{taken}"
    );
    let name = taken["name"].as_str().expect("name");
    assert!(name.starts_with("exdaas-backup-") && !name.contains('/'), "{taken}");
    let path = backups.path().join(name);
    assert!(path.join("manifest.json").exists());
    app.stop().await;

    let target = backups.path().join("restored");
    let run = exdaas(&target, &["restore", path.to_str().expect("utf-8")], &[]).await;
    assert_eq!(run.code, Some(0), "{}", run.said());
    let app = spawn_app_on(&target, &[]).await;
    assert_eq!(
        json(app.get_doc("things", "a").await).await["data"],
        json!({"kept": true})
    );
    app.stop().await;
}

#[tokio::test]
async fn archive_scripts_pack_a_backup_of_dets_root_while_it_serves() {
    if skip_on_postgres("backup, restore, check and reshard are the data folder's commands") {
        return;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(data.path(), &[]).await;
    import_docs(&app, "things", 20).await;
    let mut unpacked_folders = Vec::new();
    for (script, suffix) in [("archive.tar.sh", ".tar.gz"), ("archive.zip.sh", ".zip")] {
        let out_dir = tempfile::tempdir().expect("temp dir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts").join(script);
        // Taken while the server runs.
        let out = tokio::process::Command::new("bash")
            .arg(&script)
            .current_dir(out_dir.path())
            .env("DETS_ROOT", data.path())
            .env("EXDAAS_BIN", env!("CARGO_BIN_EXE_exdaas"))
            .output()
            .await
            .expect("the archive script runs");
        let said = format!(
            "{}: {}\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{said}");
        let archives: Vec<PathBuf> = std::fs::read_dir(out_dir.path())
            .expect("read")
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.to_string_lossy().ends_with(suffix))
            .collect();
        assert_eq!(archives.len(), 1, "{said}");
        let unpacked = tempfile::tempdir().expect("temp dir");
        let archive = &archives[0];
        let mut unpack = if suffix == ".zip" {
            let mut python = std::process::Command::new("python3");
            python.args(["-m", "zipfile", "-e"]).arg(archive).arg(unpacked.path());
            python
        } else {
            let mut tar = std::process::Command::new("tar");
            tar.arg("-xzf").arg(archive).arg("-C").arg(unpacked.path());
            tar
        };
        let status = unpack.status().expect("the unpacker runs");
        assert!(status.success(), "{said}");
        unpacked_folders.push(unpacked);
    }
    app.stop().await;

    for unpacked in &unpacked_folders {
        let folder = std::fs::read_dir(unpacked.path())
            .expect("read")
            .next()
            .expect("one folder")
            .expect("entry")
            .path();
        assert!(folder.join("manifest.json").exists(), "{}", folder.display());
        let target = unpacked.path().join("restored");
        let run = exdaas(&target, &["restore", folder.to_str().expect("utf-8")], &[]).await;
        assert_eq!(run.code, Some(0), "{}", run.said());
        let app = spawn_app_on(&target, &[]).await;
        assert_all_docs(&app, "things", 20).await;
        app.stop().await;
    }
}

/// The admin backup hashes and syncs files on blocking threads: the server
/// (here on one runtime thread) keeps answering while it runs.
#[tokio::test]
async fn a_backup_over_http_does_not_stall_other_requests() {
    if skip_on_postgres("backup, restore, check and reshard are the data folder's commands") {
        return;
    }
    let backups = tempfile::tempdir().expect("temp dir");
    let backup_dir = backups.path().to_string_lossy().into_owned();
    let app = crate::helpers::spawn_app_with(&[
        ("EXDAAS_BACKUP_DIR", &backup_dir),
        ("EXDAAS_MAX_BODY_BYTES", "2097152"),
        ("EXDAAS_SYNC", "full"),
    ])
    .await;
    let large = json!("b".repeat((1 << 20) - 64));
    for n in 0..64 {
        assert_eq!(app.put_doc("big", &format!("d{n}"), &large).await.status(), 201);
    }
    assert_eq!(app.post_api(json!({"id": 1, "data": "small"})).await.status(), 200);
    // Reads from another thread, timed there: the server's one thread
    // cannot time what blocks it.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let (done, url) = (done.clone(), app.url("/api?id=1"));
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let client = reqwest::Client::new();
                let (mut slowest, mut reads) = (Duration::ZERO, 0u32);
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    let started = std::time::Instant::now();
                    let resp = client.get(&url).send().await.expect("answered");
                    assert_eq!(resp.status(), 200);
                    slowest = slowest.max(started.elapsed());
                    reads += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (slowest, reads)
            })
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let backup = app
        .client
        .post(app.url("/v1/admin/backup"))
        .send()
        .await
        .expect("answered");
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    // Joined off this thread: the server runs on it, and the prober's last
    // read may still be waiting for its answer.
    let (slowest, reads) = tokio::task::spawn_blocking(move || prober.join().expect("prober"))
        .await
        .expect("joined");
    assert_eq!(backup.status(), 201);
    eprintln!("{reads} reads during the backup, the slowest took {slowest:?}");
    assert!(reads >= 3, "the backup was too quick to tell ({reads} reads)");
    assert!(
        slowest < Duration::from_millis(100),
        "a read waited {slowest:?} behind the backup"
    );
    app.stop().await;
}

#[tokio::test]
async fn backups_over_http_are_off_unless_the_server_names_a_folder_for_them() {
    if skip_on_postgres("backups over HTTP are the data folder's") {
        return;
    }
    let app = spawn_app().await;
    let resp = send(app.client.post(app.url("/v1/admin/backup"))).await;
    assert_eq!(resp.status(), 403);
    let problem = json(resp).await;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("EXDAAS_BACKUP_DIR")),
        "{problem}"
    );
    assert!(
        !Path::new("backups").exists(),
        "nothing was written in the working directory"
    );
    app.stop().await;
}

#[tokio::test]
async fn backups_over_http_are_bounded_in_number_and_by_the_free_space_they_leave() {
    if skip_on_postgres("backups over HTTP are the data folder's") {
        return;
    }
    let backups = tempfile::tempdir().expect("temp dir");
    let backup_dir = backups.path().to_string_lossy().into_owned();
    let app = spawn_app_with(&[("EXDAAS_BACKUP_DIR", &backup_dir), ("EXDAAS_BACKUP_MAX_COUNT", "2")]).await;
    assert_eq!(app.put_doc("things", "a", &json!({})).await.status(), 201);
    let take = || send(app.client.post(app.url("/v1/admin/backup")));
    for _ in 0..2 {
        assert_eq!(take().await.status(), 201);
    }
    let refused = take().await;
    assert_eq!(refused.status(), 507);
    let problem = json(refused).await;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("EXDAAS_BACKUP_MAX_COUNT=2")),
        "{problem}"
    );
    let held = || std::fs::read_dir(backups.path()).expect("read").count();
    assert_eq!(held(), 2);
    // Once an old one goes, there is room again.
    let oldest = std::fs::read_dir(backups.path())
        .expect("read")
        .map(|e| e.expect("entry").path())
        .min()
        .expect("a backup");
    std::fs::remove_dir_all(oldest).expect("removed");
    assert_eq!(take().await.status(), 201);
    app.stop().await;

    // A disk that would keep less free than asked: refused, nothing written.
    let small = tempfile::tempdir().expect("temp dir");
    let small_dir = small.path().to_string_lossy().into_owned();
    let app = spawn_app_with(&[
        ("EXDAAS_BACKUP_DIR", &small_dir),
        ("EXDAAS_BACKUP_MIN_FREE_MIB", "1073741824"),
    ])
    .await;
    let refused = send(app.client.post(app.url("/v1/admin/backup"))).await;
    assert_eq!(refused.status(), 507);
    let problem = json(refused).await;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("EXDAAS_BACKUP_MIN_FREE_MIB=1073741824")),
        "{problem}"
    );
    assert_eq!(std::fs::read_dir(small.path()).expect("read").count(), 0);
    app.stop().await;
}
