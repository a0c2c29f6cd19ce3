//! What a security review found, over HTTP or by running the real binary:
//! secrets never reach a log, the files a server writes are its user's
//! alone, error bodies speak the API's words, and the admin page's own
//! writes pass with CORS origins set.

use std::path::Path;
use std::time::Duration;

use crate::helpers::{database_for, exdaas, on_postgres};

/// Every secret the tests hide in URLs; none may show in any output.
const SECRETS: &[&str] = &[
    "userinfo-s3cret",
    "param-s3cret",
    "ssl-s3cret",
    "keyword-s3cret",
    "otel-s3cret",
    "otel-query-s3cret",
    "header-s3cret",
];

fn assert_no_secret(said: &str) {
    for secret in SECRETS {
        assert!(!said.contains(secret), "{secret} shows in:\n{said}");
    }
}

/// Runs the server binary over `dir` until it logs that it listens (or
/// exits), and answers every line it wrote meanwhile.
async fn boot_log(dir: &Path, env: &[(&str, &str)]) -> String {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_exdaas"));
    command
        .env("DETS_ROOT", dir)
        .env("PORT", "0")
        .env("EXDAAS_LISTEN_ADDR", "127.0.0.1")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("exdaas starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut log = String::new();
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            log.push_str(&line);
            log.push('\n');
            if line.contains("exdaas listening") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the server logs or exits within 60 s");
    let _ = child.kill().await;
    log
}

#[tokio::test]
async fn the_boot_log_never_shows_a_password_in_any_form() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A database that does not answer: the server says so and exits.
    let url = "postgres://exdaas:userinfo-s3cret@127.0.0.1:1/exdaas?password=param-s3cret&sslpassword=ssl-s3cret";
    let log = boot_log(dir.path(), &[("EXDAAS_DATABASE_URL", url)]).await;
    assert!(log.contains("cannot connect to the database"), "{log}");
    assert!(log.contains("sslpassword"), "the ignored parameter is named: {log}");
    assert_no_secret(&log);
    // URLs refused as settings are shown without their secrets too.
    for url in [
        "host=db user=exdaas password=keyword-s3cret",
        "mysql://root:userinfo-s3cret@db/x",
    ] {
        let log = boot_log(dir.path(), &[("EXDAAS_DATABASE_URL", url)]).await;
        assert!(log.contains("EXDAAS_DATABASE_URL"), "{log}");
        assert_no_secret(&log);
    }
    let endpoint = "https://otel:otel-s3cret@collector.example.com/?api_key=otel-query-s3cret";
    let log = boot_log(dir.path(), &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)]).await;
    assert!(log.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{log}");
    assert_no_secret(&log);

    // A server that exports traces to an endpoint with credentials, with
    // headers that carry a token: it says where it exports, not with what.
    let served = tempfile::tempdir().expect("temp dir");
    let log = boot_log(
        served.path(),
        &[
            ("EXDAAS_DATABASE_URL", ""),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://otel:otel-s3cret@127.0.0.1:1/?api_key=otel-query-s3cret",
            ),
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20header-s3cret"),
        ],
    )
    .await;
    assert!(log.contains("exporting traces"), "{log}");
    assert!(log.contains("exdaas listening"), "{log}");
    assert_no_secret(&log);

    // On a database that answers, the listening line names it, without the
    // password (the test cluster trusts its clients: any password does).
    if on_postgres() {
        let db = tempfile::tempdir().expect("temp dir");
        let url = database_for(db.path()).expect("a test database");
        let glue = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{glue}password=param-s3cret");
        let log = boot_log(db.path(), &[("EXDAAS_DATABASE_URL", &url)]).await;
        assert!(log.contains("exdaas listening"), "{log}");
        assert!(log.contains("password=***"), "{log}");
        assert_no_secret(&log);
    }
}

/// Every file and folder under `path` (itself included) whose mode lets
/// its group or others in, with the mode.
fn open_to_others(path: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    let mut pending = vec![path.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            found.push(format!("{} {mode:o}", path.display()));
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).expect("readable") {
                pending.push(entry.expect("entry").path());
            }
        }
    }
    found
}

#[tokio::test]
async fn what_the_server_writes_is_its_users_alone() {
    if crate::helpers::skip_on_postgres("the data folder's files") {
        return;
    }
    let folder = tempfile::tempdir().expect("temp dir");
    let data = folder.path().join("data");
    let backups = folder.path().join("backups");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
        .to_string();
    let env = [
        ("PORT", port.as_str()),
        ("EXDAAS_LISTEN_ADDR", "127.0.0.1"),
        ("EXDAAS_BACKUP_DIR", backups.to_str().expect("utf-8")),
    ];
    let started = exdaas(&data, &["start"], &env).await;
    assert_eq!(started.code, Some(0), "{}", started.said());
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let put = client
        .put(format!("{base}/v1/collections/things/docs/a"))
        .json(&serde_json::json!({"secret": true}))
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 201);
    let backup = client
        .post(format!("{base}/v1/admin/backup"))
        .send()
        .await
        .expect("backup");
    assert_eq!(backup.status(), 201);
    let cli_backup = folder.path().join("cli-backup");
    let run = exdaas(&data, &["backup", cli_backup.to_str().expect("utf-8")], &env).await;
    assert_eq!(run.code, Some(0), "{}", run.said());
    // While it runs: the pid file, the log, the shards and their WAL files.
    let mut open = Vec::new();
    for path in [
        &data,
        &data.with_extension("pid"),
        &data.with_extension("log"),
        &backups,
        &cli_backup,
    ] {
        assert!(path.exists(), "{}", path.display());
        open.extend(open_to_others(path));
    }
    let stopped = exdaas(&data, &["stop"], &env).await;
    assert_eq!(stopped.code, Some(0), "{}", stopped.said());
    assert!(open.is_empty(), "readable by others: {open:#?}");
}

#[tokio::test]
async fn a_parameter_the_server_cannot_read_is_named_as_the_api_documents_it_in_plain_words() {
    let app = crate::helpers::spawn_app().await;
    let legacy = app.post_api(serde_json::json!({"id": 1, "data": {}})).await;
    assert!(legacy.status().is_success());
    let many_keys = vec!["cmd%5Bkeys%5D%5B%5D=a"; 1001].join("&");
    let many_keys = format!("/api/cmd?id=1&cmd%5Bquery%5D=ONLY&{many_keys}");
    for (path, header, name, says) in [
        ("/v1/changes?limit=abc", None, "limit", "a whole number"),
        ("/v1/changes?limit=0", None, "limit", "at least 1"),
        ("/v1/changes?wait=999", None, "wait", "at most 300"),
        ("/v1/changes?include_docs=maybe", None, "include_docs", "true or false"),
        ("/v1/changes?since=zz", None, "since", "not in the form"),
        (
            "/v1/changes",
            Some(("Last-Event-ID", "zz")),
            "header Last-Event-ID",
            "not in the form",
        ),
        (
            "/v1/collections/x/docs?limit=99999999999999999999999",
            None,
            "limit",
            "a whole number",
        ),
        ("/v1/collections/x/docs?keys_only=2", None, "keys_only", "true or false"),
        (
            "/v1/collections/Bad%20Name/docs",
            None,
            "path parameter collection",
            "Bad Name",
        ),
        ("/v1/collections/x/docs/a%20b", None, "path parameter id", "a b"),
        (
            "/v1/collections/x/indexes/bad%20name",
            None,
            "path parameter name",
            "not in the form",
        ),
        (
            "/v1/collections/x/schema/mismatches?limit=0",
            None,
            "limit",
            "at least 1",
        ),
        ("/api?id=abc", None, "id", "a whole number"),
        ("/api/cmd?id=1", None, "cmd[query]", "is required"),
        (&many_keys, None, "cmd[keys][]", "at most 1000 times"),
    ] {
        let mut request = app.request(reqwest::Method::GET, path);
        if let Some((header, value)) = header {
            request = request.header(header, value);
        }
        let resp = crate::helpers::send(request).await;
        assert_eq!(resp.status(), 400, "{path}");
        let body: serde_json::Value = resp.json().await.expect("a JSON body");
        let detail = body["detail"].as_str().or(body["message"].as_str()).unwrap_or_default();
        assert!(detail.contains(name) && detail.contains(says), "{path}: {detail}");
        for internal in [
            "param0",
            "param1",
            "integer(",
            "\"boolean\"",
            "optional_",
            "verification failed",
            "exclusive",
            "failed to parse",
            "expects an input value",
        ] {
            assert!(!detail.contains(internal), "{path}: {internal} in {detail}");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn with_cors_origins_set_the_admin_pages_own_writes_pass() {
    let app = crate::helpers::spawn_app_with(&[
        ("EXDAAS_API_KEYS", "admin:0123456789abcdef-admin"),
        ("EXDAAS_CORS_ORIGINS", "https://app.example.com"),
    ])
    .await;
    let own = app.address.clone();
    let put = |id: &str, headers: &[(&str, &str)]| {
        let mut request = app
            .request(reqwest::Method::PUT, &format!("/v1/collections/things/docs/{id}"))
            .bearer_auth("0123456789abcdef-admin")
            .json(&serde_json::json!({}));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        crate::helpers::send(request)
    };
    // What a browser sends with the admin page's fetch: its own origin.
    let resp = put("a", &[("Origin", &own)]).await;
    assert_eq!(resp.status(), 201, "the page's own write");
    let resp = put(
        "b",
        &[("Origin", "https://db.example.com"), ("Sec-Fetch-Site", "same-origin")],
    )
    .await;
    assert_eq!(resp.status(), 201, "behind a proxy that sets its own Host");
    // Other origins are still CORS's to judge.
    let resp = put("c", &[("Origin", "https://app.example.com")]).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["access-control-allow-origin"], "https://app.example.com");
    let resp = put(
        "d",
        &[("Origin", "https://evil.example"), ("Sec-Fetch-Site", "cross-site")],
    )
    .await;
    assert_eq!(resp.status(), 403);
    let resp = put("e", &[("Origin", "https://evil.example")]).await;
    assert_eq!(resp.status(), 403);
    app.stop().await;
}
