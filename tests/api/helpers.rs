//! Starts the real server, in process, on an ephemeral port over a data
//! folder, and speaks HTTP to it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use exdaas::{Application, Settings, Store};
use reqwest::{Client, Method, RequestBuilder, Response};
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestApp {
    pub address: String,
    pub client: Client,
    /// The server's store handle, for what HTTP cannot show (cache contents).
    pub store: Store,
    /// The data folder the server runs over.
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    /// Keeps a fresh folder alive for the app's lifetime.
    _folder: Option<TempDir>,
}

/// The engine the suite runs against: a PostgreSQL-protocol database when
/// `EXDAAS_TEST_DATABASE_URL` is set (scripts/test.sh starts one), else
/// SQLite files.
pub fn on_postgres() -> bool {
    std::env::var("EXDAAS_TEST_DATABASE_URL").is_ok_and(|url| !url.is_empty())
}

/// On PostgreSQL, the database standing for data folder `dir`: one per
/// folder, created on first use, so a restart over the same folder finds
/// the same data.
pub fn database_for(dir: &Path) -> Option<String> {
    use std::hash::{Hash, Hasher};
    static CREATED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let admin = std::env::var("EXDAAS_TEST_DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut hasher);
    let name = format!("exdaas_test_{:016x}", hasher.finish());
    // Another database on the same server, with the same parameters (TLS).
    let (path, query) = admin.split_once('?').unwrap_or((&admin, ""));
    let (base, _) = path.rsplit_once('/').expect("a database URL ends with /name");
    let url = match query {
        "" => format!("{base}/{name}"),
        query => format!("{base}/{name}?{query}"),
    };
    let mut created = CREATED.lock().expect("created databases");
    if !created.contains(&name) {
        let statement = format!("CREATE DATABASE {name}");
        // A thread of its own: callers may be inside a runtime or not.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .expect("the test database answers");
                match sqlx::query(&statement).execute(&mut conn).await {
                    Ok(_) => {}
                    // Made by an earlier run over the same path.
                    Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
                    Err(e) => panic!("{statement}: {e}"),
                }
            })
        })
        .join()
        .expect("database created");
        created.push(name);
    }
    Some(url)
}

/// Settings for a test server over `dir`, plus `extra` environment.
pub fn test_settings(dir: &Path, extra: &[(&str, &str)]) -> Settings {
    let mut env: HashMap<String, String> = [
        ("PORT", "0"),
        ("EXDAAS_LISTEN_ADDR", "127.0.0.1"),
        ("EXDAAS_SYNC", "normal"),
        ("EXDAAS_SHUTDOWN_TIMEOUT_SECS", "5"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.insert("DETS_ROOT".into(), dir.to_string_lossy().into_owned());
    if let Some(url) = database_for(dir) {
        env.insert("EXDAAS_DATABASE_URL".into(), url);
    }
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    Settings::from_env(env).expect("test settings are valid")
}

/// A server over a fresh, empty data folder.
pub async fn spawn_app() -> TestApp {
    let folder = tempfile::tempdir().expect("temp dir");
    let mut app = spawn_app_on(folder.path(), &[]).await;
    app._folder = Some(folder);
    app
}

/// A server over a fresh, empty data folder, with `extra` environment.
pub async fn spawn_app_with(extra: &[(&str, &str)]) -> TestApp {
    let folder = tempfile::tempdir().expect("temp dir");
    let mut app = spawn_app_on(folder.path(), extra).await;
    app._folder = Some(folder);
    app
}

/// A server over `dir` (which may hold data from an earlier server).
pub async fn spawn_app_on(dir: &Path, extra: &[(&str, &str)]) -> TestApp {
    let app = Application::build(test_settings(dir, extra))
        .await
        .expect("server starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let store = app.store().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        client: Client::new(),
        store,
        data_dir: dir.to_path_buf(),
        stop: Some(stop),
        server: Some(server),
        _folder: None,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// `POST /api` with a JSON body.
    pub async fn post_api(&self, body: Value) -> Response {
        self.client
            .post(self.url("/api"))
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }

    /// `GET /api?id=...` (raw query value, so tests can send bad ids).
    pub async fn get_api(&self, id: &str) -> Response {
        self.client
            .get(self.url(&format!("/api?id={id}")))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.expect("request sent")
    }

    pub async fn put_doc(&self, collection: &str, id: &str, body: &Value) -> Response {
        self.client
            .put(self.url(&format!("/v1/collections/{collection}/docs/{id}")))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get_doc(&self, collection: &str, id: &str) -> Response {
        self.get(&doc_path(collection, id)).await
    }

    /// A request to `path`, for tests that set their own headers and body.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// `PATCH` with a JSON merge patch (`application/merge-patch+json`).
    pub async fn patch_doc(&self, collection: &str, id: &str, patch: &Value) -> Response {
        send(merge_patch(
            self.request(Method::PATCH, &doc_path(collection, id)),
            patch,
        ))
        .await
    }

    pub async fn delete_doc(&self, collection: &str, id: &str) -> Response {
        send(self.request(Method::DELETE, &doc_path(collection, id))).await
    }

    /// `POST` of a JSON body to `path`.
    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        send(self.request(Method::POST, path).json(body)).await
    }

    /// `POST /v1/collections/{collection}/batch` with these operations.
    pub async fn batch(&self, collection: &str, ops: Value) -> Response {
        self.post_json(
            &format!("/v1/collections/{collection}/batch"),
            &serde_json::json!({ "ops": ops }),
        )
        .await
    }

    /// Every document of a collection, paging through the listing.
    pub async fn list_all(&self, collection: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/collections/{collection}/docs?limit=1000");
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let resp = self.get(&path).await;
            assert_eq!(resp.status(), 200, "{path}");
            let page = json(resp).await;
            items.extend(page["items"].as_array().expect("items").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return items,
            }
        }
    }

    /// Ties a temporary folder's lifetime to this app.
    pub fn keep_folder(&mut self, folder: TempDir) {
        self._folder = Some(folder);
    }

    /// Graceful stop: stop accepting, drain writers, close the files.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server stopped cleanly");
        }
    }
}

/// The JSON body of a response.
pub async fn json(resp: Response) -> Value {
    resp.json().await.expect("JSON body")
}

/// Sends a request built by the test.
pub async fn send(request: RequestBuilder) -> Response {
    request.send().await.expect("request sent")
}

/// The content type of a JSON merge patch (RFC 7396).
pub const MERGE_PATCH: &str = "application/merge-patch+json";

/// `request` with `patch` as its merge-patch body.
pub fn merge_patch(request: RequestBuilder, patch: &Value) -> RequestBuilder {
    request.header("content-type", MERGE_PATCH).body(patch.to_string())
}

/// The v1 path of a document.
pub fn doc_path(collection: &str, id: &str) -> String {
    format!("/v1/collections/{collection}/docs/{id}")
}

/// True, after saying so, when the suite runs on PostgreSQL and the test is
/// about what only the data folder's files have (`why`): the test ends there.
pub fn skip_on_postgres(why: &str) -> bool {
    let skip = on_postgres();
    if skip {
        eprintln!("not on PostgreSQL: {why}");
    }
    skip
}

/// Rows of `collection` in each shard of `dir` (a shard file, or on
/// PostgreSQL a shard of the database standing for `dir`), read beside the
/// server (expired rows included): what the server really keeps.
pub async fn rows_on_disk(dir: &Path, collection: &str) -> Vec<i64> {
    if let Some(url) = database_for(dir) {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("the database answers");
        let shards: i64 = sqlx::query_scalar("SELECT value FROM exdaas_meta WHERE key = 'shards'")
            .fetch_one(&mut conn)
            .await
            .expect("shard count");
        let mut counts = vec![0; usize::try_from(shards).expect("a count")];
        let rows: Vec<(i32, i64)> =
            sqlx::query_as("SELECT shard, count(*) FROM exdaas_documents WHERE collection = $1 GROUP BY shard")
                .bind(collection)
                .fetch_all(&mut conn)
                .await
                .expect("count rows");
        for (shard, n) in rows {
            counts[usize::try_from(shard).expect("a shard")] = n;
        }
        return counts;
    }
    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::{ConnectOptions, Connection};
    let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("data folder readable")
        .map(|entry| entry.expect("folder entry").path())
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.starts_with("shard-") && name.ends_with(".sqlite3")
        })
        .collect();
    shards.sort();
    assert!(!shards.is_empty(), "no shard files in {}", dir.display());
    let mut counts = Vec::with_capacity(shards.len());
    for path in shards {
        let mut conn = SqliteConnectOptions::new()
            .filename(&path)
            .read_only(true)
            .connect()
            .await
            .expect("shard file opens read-only");
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM documents WHERE collection = ?1")
            .bind(collection)
            .fetch_one(&mut conn)
            .await
            .expect("count rows");
        conn.close().await.expect("close");
        counts.push(n);
    }
    counts
}

/// What one run of the `exdaas` binary said.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn said(&self) -> String {
        format!(
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `exdaas <args>` over the data folder `root` until it exits.
pub async fn exdaas(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_exdaas"));
    command.args(args).env("DETS_ROOT", root).env("RUST_LOG", "warn");
    for (k, v) in env {
        command.env(k, v);
    }
    run(command).await
}

/// Runs `command` until it exits, collecting what it said.
pub async fn run(mut command: tokio::process::Command) -> Run {
    let out = command.output().await.expect("exdaas runs");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The real `exdaas` binary, started as a child process over a data folder,
/// for tests that signal or kill it.
pub struct ServerProcess {
    pub child: tokio::process::Child,
    pub port: u16,
    /// Log lines (JSON) printed after "exdaas listening", collected as they come.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// The command that runs the binary over `dir` on an ephemeral port,
    /// logging JSON to a piped stderr.
    pub fn command(dir: &Path, extra: &[(&str, &str)]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_exdaas"));
        command
            .env("DETS_ROOT", dir)
            .env("PORT", "0")
            .env("EXDAAS_LISTEN_ADDR", "127.0.0.1")
            .env("EXDAAS_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(url) = database_for(dir) {
            command.env("EXDAAS_DATABASE_URL", url);
        }
        for (k, v) in extra {
            command.env(k, v);
        }
        command
    }

    /// Starts the binary on an ephemeral port and waits until it listens.
    pub async fn start(dir: &Path, extra: &[(&str, &str)]) -> Self {
        Self::try_start(dir, extra)
            .await
            .unwrap_or_else(|said| panic!("the server did not start: {said}"))
    }

    /// [`ServerProcess::start`], or what the binary said (its last log
    /// lines) if it exited before listening.
    pub async fn try_start(dir: &Path, extra: &[(&str, &str)]) -> Result<Self, String> {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let mut child = Self::command(dir, extra).spawn().expect("exdaas starts");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut said = Vec::new();
        let port = loop {
            let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
                .await
                .expect("server logs within 30 s")
                .expect("stderr readable");
            let Some(line) = line else {
                let code = child.wait().await.ok().and_then(|status| status.code());
                return Err(format!("exit {code:?}: {}", said.join("\n")));
            };
            let event: Value = serde_json::from_str(&line).unwrap_or_default();
            if event["fields"]["message"] == "exdaas listening" {
                let port = event["fields"]["port"].as_u64().expect("port logged");
                break u16::try_from(port).expect("a port");
            }
            said.push(line);
        };
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().expect("log").push(line);
            }
        });
        Ok(Self { child, port, log })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Sends a signal (`TERM`, `KILL`, ...) with kill(1).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let sent = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{name} {pid}");
    }

    /// Waits for the process to exit (at most 30 s) and returns its exit code.
    pub async fn wait(&mut self) -> Option<i32> {
        tokio::time::timeout(std::time::Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits within 30 s")
            .expect("wait")
            .code()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }
}

/// `POST /v1/collections/{collection}/query`: its status and body.
pub async fn query(app: &TestApp, collection: &str, body: &Value) -> (u16, Value) {
    let resp = app
        .post_json(&format!("/v1/collections/{collection}/query"), body)
        .await;
    let status = resp.status().as_u16();
    (status, json(resp).await)
}

/// The ids of a page's items, in order.
pub fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {page}"))
        .iter()
        .map(|d| d["id"].as_str().expect("id").to_owned())
        .collect()
}
