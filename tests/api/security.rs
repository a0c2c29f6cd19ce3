//! What a security review found, over HTTP or by running the real binary:
//! secrets never reach a log, the files a server writes are its user's
//! alone, error bodies speak the API's words, and the admin page's own
//! writes pass with CORS origins set.

use std::path::Path;
use std::time::Duration;

use crate::helpers::{database_for, on_postgres};

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
        let url = format!("{url}?password=param-s3cret");
        let log = boot_log(db.path(), &[("EXDAAS_DATABASE_URL", &url)]).await;
        assert!(log.contains("exdaas listening"), "{log}");
        assert!(log.contains("password=***"), "{log}");
        assert_no_secret(&log);
    }
}
