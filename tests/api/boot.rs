//! Bad settings stop the real binary before it listens: exit code 2 and one
//! line naming the setting and the value.

use std::process::Command;

use crate::helpers::skip_on_postgres;

/// Runs the binary over a fresh data folder until it exits.
fn run_exdaas(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let data = tempfile::tempdir().expect("temp dir");
    run_on(data.path(), env)
}

#[test]
fn bad_values_stop_the_start_with_exit_code_2() {
    for (name, value) in [
        ("SHARD_LIMIT", "0"),
        ("SHARD_LIMIT", "-3"),
        ("SHARD_LIMIT", "abc"),
        ("PORT", "http"),
        ("EXDAAS_SYNC", "always"),
        ("EXDAAS_CACHE_MIB", "lots"),
        ("EXDAAS_LISTEN_ADDR", "localhost:80"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otlp.example.com"),
    ] {
        let (code, stderr) = run_exdaas(&[(name, value)]);
        assert_eq!(code, Some(2), "{name}={value}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{name}={value}: one line, got {stderr}");
        assert!(
            lines[0].contains(name) && lines[0].contains(value),
            "{name}={value}: {stderr}"
        );
    }
}

#[test]
fn a_data_folder_that_cannot_be_created_stops_the_start() {
    let parent = tempfile::tempdir().expect("temp dir");
    let file = parent.path().join("a-file");
    std::fs::write(&file, b"not a folder").expect("write");
    let bad = file.join("data");
    let bad = bad.to_string_lossy();
    let (code, stderr) = run_exdaas(&[("DETS_ROOT", &bad)]);
    assert_eq!(code, Some(2), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("DETS_ROOT") && last.contains(&*bad), "{stderr}");
}

#[test]
fn help_says_how_to_configure_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_exdaas"))
        .arg("--help")
        .output()
        .expect("runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for setting in [
        "PORT",
        "DETS_ROOT",
        "SHARD_LIMIT",
        "EXDAAS_SYNC",
        "EXDAAS_CACHE_MIB",
        "EXDAAS_CONFIG",
    ] {
        assert!(help.contains(setting), "--help does not mention {setting}:\n{help}");
    }
}

/// Runs the binary over `dir` until it exits (it must not start serving).
pub(crate) fn run_on(dir: &std::path::Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_exdaas"));
    cmd.env("DETS_ROOT", dir)
        .env("PORT", "0")
        .env("EXDAAS_LISTEN_ADDR", "127.0.0.1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("exdaas runs");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A data folder written by a real server: 4 shards holding `docs` documents.
async fn written_folder(docs: usize) -> tempfile::TempDir {
    let folder = tempfile::tempdir().expect("temp dir");
    let app = crate::helpers::spawn_app_on(folder.path(), &[]).await;
    let pad = "z".repeat(1500);
    for n in 0..docs {
        app.put_doc("c", &format!("d{n}"), &serde_json::json!({"n": n, "pad": pad}))
            .await;
    }
    app.stop().await;
    folder
}

fn assert_refused_naming(code: Option<i32>, stderr: &str, file: &str, why: &str) {
    assert_eq!(code, Some(2), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains(file) && last.contains(why),
        "names {file} and says {why:?}: {stderr}"
    );
}

#[tokio::test]
async fn a_shard_file_that_is_not_a_database_stops_the_start() {
    let folder = written_folder(10).await;
    std::fs::write(
        folder.path().join("shard-0001.sqlite3"),
        b"hello, this is a text file\n",
    )
    .expect("write");
    let (code, stderr) = run_on(folder.path(), &[]);
    assert_refused_naming(code, &stderr, "shard-0001.sqlite3", "not an SQLite database");
}

#[tokio::test]
async fn a_foreign_database_in_place_of_a_shard_stops_the_start() {
    if skip_on_postgres("the data folder's shard files and their lock") {
        return;
    }
    use sqlx::{ConnectOptions, Connection};
    let folder = written_folder(10).await;
    let shard = folder.path().join("shard-0002.sqlite3");
    std::fs::remove_file(&shard).expect("remove the shard");
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&shard)
        .create_if_missing(true)
        .connect()
        .await
        .expect("create another program's database");
    sqlx::query("CREATE TABLE accounts (owner TEXT, balance INTEGER)")
        .execute(&mut conn)
        .await
        .expect("create table");
    conn.close().await.expect("close");
    let (code, stderr) = run_on(folder.path(), &[]);
    assert_refused_naming(code, &stderr, "shard-0002.sqlite3", "foreign");
    // Nothing was added to the foreign database.
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&shard)
        .read_only(true)
        .connect()
        .await
        .expect("open it again");
    let tables: Vec<String> = sqlx::query_scalar("SELECT name FROM sqlite_schema WHERE type = 'table'")
        .fetch_all(&mut conn)
        .await
        .expect("list tables");
    assert_eq!(tables, ["accounts"]);
}

#[tokio::test]
async fn a_damaged_shard_file_stops_the_start() {
    if skip_on_postgres("the data folder's shard files and their lock") {
        return;
    }
    let folder = written_folder(300).await;
    let shard = folder.path().join("shard-0003.sqlite3");
    let mut bytes = std::fs::read(&shard).expect("read");
    assert!(bytes.len() > 20 * 4096, "{} bytes", bytes.len());
    for byte in bytes.iter_mut().skip(4 * 4096).take(8 * 4096) {
        *byte = 0xff;
    }
    std::fs::write(&shard, &bytes).expect("write");
    let (code, stderr) = run_on(folder.path(), &[]);
    assert_refused_naming(code, &stderr, "shard-0003.sqlite3", "damaged");
}

#[tokio::test]
async fn a_shard_file_beyond_the_shard_count_stops_the_start() {
    if skip_on_postgres("the data folder's shard files and their lock") {
        return;
    }
    let folder = written_folder(4).await;
    std::fs::copy(
        folder.path().join("shard-0000.sqlite3"),
        folder.path().join("shard-0007.sqlite3"),
    )
    .expect("copy");
    let (code, stderr) = run_on(folder.path(), &[]);
    assert_refused_naming(code, &stderr, "shard-0007.sqlite3", "beyond the 4 shards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_folder_is_refused() {
    if skip_on_postgres("the data folder's shard files and their lock") {
        return;
    }
    let folder = tempfile::tempdir().expect("temp dir");
    let mut first = crate::helpers::ServerProcess::start(folder.path(), &[]).await;
    let (code, stderr) = run_on(folder.path(), &[]);
    assert_refused_naming(
        code,
        &stderr,
        &folder.path().display().to_string(),
        "another exdaas process",
    );
    first.signal("TERM");
    assert_eq!(first.wait().await, Some(0));
}

#[tokio::test]
async fn a_missing_shard_file_stops_the_start_instead_of_hiding_its_documents() {
    if skip_on_postgres("the data folder's shard files and their lock") {
        return;
    }
    let folder = written_folder(40).await;
    std::fs::remove_file(folder.path().join("shard-0002.sqlite3")).expect("remove the shard");
    let (code, stderr) = run_on(folder.path(), &[]);
    assert_refused_naming(code, &stderr, "shard-0002.sqlite3", "missing");
    assert!(
        !folder.path().join("shard-0002.sqlite3").exists(),
        "no empty file stands in for it"
    );
}

#[tokio::test]
async fn a_shard_file_of_another_folder_or_another_shard_stops_the_start() {
    if skip_on_postgres("the data folder's shard files and their lock") {
        return;
    }
    let folder = written_folder(10).await;
    let other = written_folder(10).await;
    let shard = folder.path().join("shard-0001.sqlite3");
    std::fs::copy(other.path().join("shard-0001.sqlite3"), &shard).expect("copy over");
    let (code, stderr) = run_on(folder.path(), &[]);
    assert_refused_naming(code, &stderr, "shard-0001.sqlite3", "another data folder");

    // Two of the folder's own files, swapped.
    let folder = written_folder(10).await;
    let (a, b) = (
        folder.path().join("shard-0000.sqlite3"),
        folder.path().join("shard-0003.sqlite3"),
    );
    let swap = folder.path().join("swap");
    std::fs::rename(&a, &swap).expect("rename");
    std::fs::rename(&b, &a).expect("rename");
    std::fs::rename(&swap, &b).expect("rename");
    let (code, stderr) = run_on(folder.path(), &[]);
    assert_refused_naming(code, &stderr, "shard-0000.sqlite3", "shard 3's file");
}

#[tokio::test]
async fn a_folder_from_before_identities_boots_and_takes_one() {
    if skip_on_postgres("the data folder's shard files and their lock") {
        return;
    }
    use sqlx::{ConnectOptions, Connection};
    let folder = written_folder(10).await;
    // What an older server left: no identity in the layout or the shards.
    let layout_path = folder.path().join("exdaas-layout.json");
    let mut layout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&layout_path).expect("layout")).expect("JSON");
    let fields = layout.as_object_mut().expect("an object");
    fields.remove("folder_id");
    fields.remove("shards_created");
    std::fs::write(&layout_path, layout.to_string()).expect("write layout");
    for shard in 0..4 {
        let path = folder.path().join(format!("shard-{shard:04}.sqlite3"));
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .connect()
            .await
            .expect("open");
        sqlx::query("DELETE FROM shard_meta WHERE key IN ('folder_id', 'shard_index')")
            .execute(&mut conn)
            .await
            .expect("forget the identity");
        conn.close().await.expect("close");
    }
    let app = crate::helpers::spawn_app_on(folder.path(), &[]).await;
    assert_eq!(app.list_all("c").await.len(), 10);
    app.stop().await;
    let layout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&layout_path).expect("layout")).expect("JSON");
    assert!(layout["folder_id"].as_u64().is_some(), "{layout}");
    // And from then on its files are checked like any other's.
    let other = written_folder(1).await;
    std::fs::copy(
        other.path().join("shard-0002.sqlite3"),
        folder.path().join("shard-0002.sqlite3"),
    )
    .expect("copy over");
    let (code, stderr) = run_on(folder.path(), &[]);
    assert_refused_naming(code, &stderr, "shard-0002.sqlite3", "another data folder");
}

#[tokio::test]
async fn a_first_boot_cut_short_before_every_shard_existed_boots_again() {
    if skip_on_postgres("the data folder's shard files and their lock") {
        return;
    }
    let folder = tempfile::tempdir().expect("temp dir");
    let app = crate::helpers::spawn_app_on(folder.path(), &[]).await;
    app.stop().await;
    let layout_path = folder.path().join("exdaas-layout.json");
    let mut layout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&layout_path).expect("layout")).expect("JSON");
    layout["shards_created"] = serde_json::json!(false);
    std::fs::write(&layout_path, layout.to_string()).expect("write layout");
    std::fs::remove_file(folder.path().join("shard-0003.sqlite3")).expect("remove");
    let app = crate::helpers::spawn_app_on(folder.path(), &[]).await;
    assert_eq!(
        app.post_api(serde_json::json!({"id": 3, "data": 1})).await.status(),
        200
    );
    app.stop().await;
    let layout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&layout_path).expect("layout")).expect("JSON");
    assert_eq!(layout["shards_created"], serde_json::json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let folder = tempfile::tempdir().expect("temp dir");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_exdaas"))
        .env("DETS_ROOT", folder.path())
        .env("PORT", "0")
        .env("EXDAAS_LISTEN_ADDR", "127.0.0.1")
        .env("EXDAAS_LOG_FORMAT", "text")
        .env_remove("NO_COLOR")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("exdaas starts");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let pid = child.id().expect("running").to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
    assert!(sent.success());
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("exits")
        .expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exdaas listening"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "ANSI escape codes in a pipe: {stderr:?}");
}

#[test]
fn the_data_folder_commands_refuse_to_run_on_a_database_and_say_what_to_use() {
    for args in [
        &["backup", "/tmp/exdaas-never-written"][..],
        &["check"],
        &["reshard", "--to", "8"],
    ] {
        let data = tempfile::tempdir().expect("temp dir");
        let out = Command::new(env!("CARGO_BIN_EXE_exdaas"))
            .args(args)
            .env("DETS_ROOT", data.path())
            .env("EXDAAS_DATABASE_URL", "postgres://exdaas@127.0.0.1:1/exdaas")
            .output()
            .expect("exdaas runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("EXDAAS_DATABASE_URL") && stderr.contains("pg_dump"),
            "{args:?}: {stderr}"
        );
        assert_eq!(
            std::fs::read_dir(data.path()).expect("folder").count(),
            0,
            "nothing written"
        );
    }
}

#[test]
fn a_database_that_does_not_answer_stops_the_start_naming_it_without_its_password() {
    let (code, stderr) = run_exdaas(&[("EXDAAS_DATABASE_URL", "postgres://exdaas:s3cret@127.0.0.1:1/exdaas")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot connect to the database"), "{stderr}");
    assert!(
        !stderr.contains("s3cret"),
        "the password stays out of the log: {stderr}"
    );
}
