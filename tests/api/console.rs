//! `exdaas console`: commands from the command line for scripts, with
//! their exit codes; the shell fed from its input; a live watch. The
//! console speaks the v1 API, the same on every engine: these run on a
//! data folder only.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::helpers::{json, run, skip_on_postgres, spawn_app, spawn_app_with, Run, TestApp};

/// `exdaas console <args>` against `app`.
async fn console(app: &TestApp, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_exdaas"));
    command
        .arg("console")
        .args(args)
        .env("EXDAAS_URL", &app.address)
        .env("EXDAAS_CONSOLE_HISTORY", "")
        .env_remove("EXDAAS_API_KEY");
    for (k, v) in env {
        command.env(k, v);
    }
    run(command).await
}

#[tokio::test]
async fn scripted_commands_read_and_write_with_exit_codes() {
    if skip_on_postgres("the console speaks HTTP, the same on every engine") {
        return;
    }
    let app = spawn_app().await;

    let put = console(
        &app,
        &["put", "users", "alice", r#"{"name": "Alice", "roles": ["admin"]}"#],
        &[],
    )
    .await;
    assert_eq!(put.code, Some(0), "{}", put.said());
    assert!(put.stdout.contains("users/alice  version 1"), "{}", put.said());
    let stored = json(app.get("/v1/collections/users/docs/alice").await).await;
    assert_eq!(stored["data"], json!({"name": "Alice", "roles": ["admin"]}));

    let patched = console(
        &app,
        &["patch", "users", "alice", r#"{"team": "blue", "roles": null}"#],
        &[],
    )
    .await;
    assert_eq!(patched.code, Some(0), "{}", patched.said());
    assert!(patched.stdout.contains("version 2"), "{}", patched.said());

    let got = console(&app, &["get", "users", "alice"], &[]).await;
    assert_eq!(got.code, Some(0), "{}", got.said());
    let data_part = &got.stdout[got.stdout.find('{').expect("the data, as JSON")..];
    let data: Value = serde_json::from_str(data_part).expect("pretty JSON");
    assert_eq!(data, json!({"name": "Alice", "team": "blue"}));

    let created = console(&app, &["create", "users", r#"{"name": "Bob"}"#], &[]).await;
    assert_eq!(created.code, Some(0), "{}", created.said());
    console(&app, &["put", "users", "team-a:carol", "{}"], &[]).await;
    console(&app, &["put", "users", "team-a:dave", "{}"], &[]).await;

    let listed = console(&app, &["list", "users", "team-a:"], &[]).await;
    assert_eq!(listed.code, Some(0), "{}", listed.said());
    let ids: Vec<&str> = listed
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(ids, ["team-a:carol", "team-a:dave"]);
    let paged = console(&app, &["list", "users", "--limit", "2"], &[]).await;
    assert!(paged.stdout.contains("more: list users --cursor "), "{}", paged.said());

    let collections = console(&app, &["collections"], &[]).await;
    let users_line = collections
        .stdout
        .lines()
        .find(|l| l.starts_with("users"))
        .expect("users listed");
    assert_eq!(
        users_line.split_whitespace().nth(1),
        Some("4"),
        "{}",
        collections.said()
    );

    let batch = console(
        &app,
        &[
            "batch",
            "users",
            r#"[{"op": "delete", "id": "team-a:carol"}, {"op": "get", "id": "nobody"}]"#,
        ],
        &[],
    )
    .await;
    assert_eq!(batch.code, Some(0), "{}", batch.said());
    assert!(
        batch.stdout.contains("204") && batch.stdout.contains("404"),
        "{}",
        batch.said()
    );

    let deleted = console(&app, &["delete", "users", "alice"], &[]).await;
    assert_eq!(deleted.code, Some(0), "{}", deleted.said());
    let missing = console(&app, &["get", "users", "alice"], &[]).await;
    assert_eq!(missing.code, Some(1), "a refusal exits 1: {}", missing.said());
    assert!(
        missing.stderr.contains("404") && missing.stderr.contains("not found"),
        "{}",
        missing.said()
    );

    let bad_json = console(&app, &["put", "users", "x", "{not json"], &[]).await;
    assert_eq!(bad_json.code, Some(2), "{}", bad_json.said());
    assert!(bad_json.stderr.contains("not valid JSON"), "{}", bad_json.said());
    let unknown = console(&app, &["fetch", "users", "x"], &[]).await;
    assert_eq!(unknown.code, Some(2), "{}", unknown.said());
    let bad_name = console(&app, &["get", "users", "a b c"], &[]).await;
    assert_eq!(bad_name.code, Some(2), "{}", bad_name.said());

    let health = console(&app, &["health"], &[]).await;
    assert_eq!(health.code, Some(0), "{}", health.said());
    assert!(health.stdout.contains("\"status\": \"ready\""), "{}", health.said());

    let nowhere = console(&app, &["get", "users", "x"], &[("EXDAAS_URL", "http://127.0.0.1:9")]).await;
    assert_eq!(nowhere.code, Some(3), "{}", nowhere.said());
    assert!(nowhere.stderr.contains("cannot reach"), "{}", nowhere.said());
    let tls = console(&app, &["get", "users", "x"], &[("EXDAAS_URL", "https://127.0.0.1:9")]).await;
    assert_eq!(tls.code, Some(2), "{}", tls.said());
    assert!(tls.stderr.contains("plain HTTP"), "{}", tls.said());
}

#[tokio::test]
async fn keys_come_from_the_environment_and_scopes_hold() {
    if skip_on_postgres("the console speaks HTTP, the same on every engine") {
        return;
    }
    let app = spawn_app_with(&[(
        "EXDAAS_API_KEYS",
        "write:writer-key-0123456789;read:reader-key-0123456789",
    )])
    .await;
    let writer = [("EXDAAS_API_KEY", "writer-key-0123456789")];
    let reader = [("EXDAAS_API_KEY", "reader-key-0123456789")];

    let without = console(&app, &["get", "users", "a"], &[]).await;
    assert_eq!(without.code, Some(1), "{}", without.said());
    assert!(without.stderr.contains("401"), "{}", without.said());
    let put = console(&app, &["put", "users", "a", "[1, 2]"], &writer).await;
    assert_eq!(put.code, Some(0), "{}", put.said());
    let read = console(&app, &["get", "users", "a"], &reader).await;
    assert_eq!(read.code, Some(0), "{}", read.said());
    let refused = console(&app, &["put", "users", "a", "[3]"], &reader).await;
    assert_eq!(refused.code, Some(1), "{}", refused.said());
    assert!(refused.stderr.contains("403"), "{}", refused.said());
    let flag = console(&app, &["--key", "writer-key-0123456789", "delete", "users", "a"], &[]).await;
    assert_eq!(flag.code, Some(0), "{}", flag.said());
}

#[tokio::test]
async fn export_and_import_go_through_files() {
    if skip_on_postgres("the console speaks HTTP, the same on every engine") {
        return;
    }
    let app = spawn_app().await;
    for n in 0..30 {
        let put = console(
            &app,
            &["put", "things", &format!("t{n:02}"), &format!(r#"{{"n": {n}}}"#)],
            &[],
        )
        .await;
        assert_eq!(put.code, Some(0), "{}", put.said());
    }
    let folder = tempfile::tempdir().expect("temp dir");
    let file = folder.path().join("things.ndjson");
    let file = file.to_str().expect("a path");
    let exported = console(&app, &["export", "things", file], &[]).await;
    assert_eq!(exported.code, Some(0), "{}", exported.said());
    assert!(exported.stdout.contains("exported 30 documents"), "{}", exported.said());

    let imported = console(&app, &["import", "copies", file], &[]).await;
    assert_eq!(imported.code, Some(0), "{}", imported.said());
    assert!(imported.stdout.contains("\"imported\": 30"), "{}", imported.said());
    let copy = json(app.get("/v1/collections/copies/docs/t17").await).await;
    assert_eq!(copy["data"], json!({"n": 17}));

    let missing = console(&app, &["import", "copies", "/nonexistent/file.ndjson"], &[]).await;
    assert_eq!(missing.code, Some(2), "{}", missing.said());
}

#[tokio::test]
async fn watch_shows_changes_as_they_commit() {
    if skip_on_postgres("the console speaks HTTP, the same on every engine") {
        return;
    }
    let app = spawn_app().await;
    let mut watcher = tokio::process::Command::new(env!("CARGO_BIN_EXE_exdaas"))
        .args(["console", "watch", "orders", "--count", "3", "--docs"])
        .env("EXDAAS_URL", &app.address)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("console runs");
    let mut lines = BufReader::new(watcher.stdout.take().expect("stdout")).lines();
    let first = lines.next_line().await.expect("readable").expect("a line");
    assert!(first.starts_with("watching orders"), "{first}");

    // Another collection's change is not shown; these three are, in order.
    app.put_doc("other", "x", &json!({})).await;
    app.put_doc("orders", "o-1", &json!({"total": 5})).await;
    app.put_doc("orders", "o-2", &json!({"total": 9})).await;
    app.delete_doc("orders", "o-1").await;

    let mut seen = Vec::new();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await {
        seen.push(line);
    }
    let status = tokio::time::timeout(Duration::from_secs(10), watcher.wait())
        .await
        .expect("watch --count 3 ends")
        .expect("status");
    assert!(status.success());
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen[0].contains("written  orders/o-1  v1"), "{seen:?}");
    // With --docs, each change shows the document as it is when read.
    assert!(seen[1].ends_with(r#"written  orders/o-2  v1  {"total":9}"#), "{seen:?}");
    assert!(seen[2].contains("deleted  orders/o-1  v1"), "{seen:?}");
}

#[tokio::test]
async fn the_shell_reads_commands_keeps_history_and_survives_mistakes() {
    if skip_on_postgres("the console speaks HTTP, the same on every engine") {
        return;
    }
    let app = spawn_app().await;
    let folder = tempfile::tempdir().expect("temp dir");
    let history = folder.path().join("history");
    let mut shell = tokio::process::Command::new(env!("CARGO_BIN_EXE_exdaas"))
        .arg("console")
        .env("EXDAAS_URL", &app.address)
        .env("EXDAAS_CONSOLE_HISTORY", &history)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("console runs");
    let mut input = shell.stdin.take().expect("stdin");
    input
        .write_all(
            b"put notes n1 {\"text\": \"hello world\"}\nget notes nope\nbogus\nget notes n1\nexit\nget notes n1\n",
        )
        .await
        .expect("typed");
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(20), shell.wait_with_output())
        .await
        .expect("the shell ends at exit")
        .expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the last command succeeded: {stdout}\n{stderr}");
    // The put and the get each show the document; nothing after `exit` ran.
    assert_eq!(stdout.matches("hello world").count(), 2, "{stdout}");
    assert!(stderr.contains("404") && stderr.contains("unknown command"), "{stderr}");
    let kept = std::fs::read_to_string(&history).expect("history saved");
    assert!(kept.contains("get notes n1") && kept.contains("bogus"), "{kept}");
}
