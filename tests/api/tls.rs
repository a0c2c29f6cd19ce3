//! The database link over TLS, against the private PostgreSQL that
//! scripts/postgres.sh starts TLS-only (`hostssl` in pg_hba.conf, a
//! throwaway CA), as managed databases are. The rest of the suite already
//! runs over `sslmode=verify-full`; these pin what each mode does there.

use serde_json::json;

use crate::boot::run_on;
use crate::helpers::{database_for, on_postgres, spawn_app_on};

/// The test database's URL for a fresh folder, its TLS parameters replaced
/// by `tls` (e.g. `sslmode=require`).
fn database_url_with(dir: &std::path::Path, tls: &str) -> Option<String> {
    let url = database_for(dir)?;
    let base = url.split_once('?').map_or(url.as_str(), |(base, _)| base);
    Some(format!("{base}?{tls}"))
}

/// The server's exit code and what it printed, for a boot that must fail.
fn boot_with(database_url: &str) -> (Option<i32>, String) {
    let data = tempfile::tempdir().expect("temp dir");
    run_on(data.path(), &[("EXDAAS_DATABASE_URL", database_url)])
}

#[tokio::test]
async fn require_encrypts_without_a_ca_and_serves() {
    if !on_postgres() {
        eprintln!("not run: needs the private PostgreSQL (EXDAAS_TEST_DATABASE_URL)");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let url = database_url_with(dir.path(), "sslmode=require").expect("a database");
    let app = spawn_app_on(dir.path(), &[("EXDAAS_DATABASE_URL", &url)]).await;
    assert_eq!(app.put_doc("tls", "a", &json!({"over": "tls"})).await.status(), 201);
    let doc: serde_json::Value = app.get_doc("tls", "a").await.json().await.expect("json");
    assert_eq!(doc["data"], json!({"over": "tls"}));
    app.stop().await;
}

#[test]
fn disable_on_a_database_that_takes_only_tls_stops_the_boot_saying_why() {
    if !on_postgres() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let url = database_url_with(dir.path(), "sslmode=disable").expect("a database");
    let (code, stderr) = boot_with(&url);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot connect to the database") && stderr.contains("no encryption"),
        "the database's refusal is named: {stderr}"
    );
}

#[test]
fn a_server_certificate_from_another_ca_stops_the_boot_saying_why() {
    if !on_postgres() {
        return;
    }
    let other_ca = std::env::var("EXDAAS_TEST_PG_OTHER_CA").expect("scripts/postgres.sh names another CA");
    let dir = tempfile::tempdir().expect("temp dir");
    let url =
        database_url_with(dir.path(), &format!("sslmode=verify-full&sslrootcert={other_ca}")).expect("a database");
    let (code, stderr) = boot_with(&url);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot connect to the database") && stderr.contains("certificate"),
        "the certificate is named as the cause: {stderr}"
    );
}

#[test]
fn a_ca_file_that_does_not_exist_stops_the_boot_naming_it() {
    if !on_postgres() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let url = database_url_with(dir.path(), "sslmode=verify-full&sslrootcert=/nonexistent/ca.crt").expect("a database");
    let (code, stderr) = boot_with(&url);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/ca.crt"), "the file is named: {stderr}");
}
