//! `exdaas migrate`: a data folder a real server wrote, copied into a
//! database the server then serves from, and back into a new folder, each
//! copy verified; and what it refuses. Only where the suite has a
//! PostgreSQL (scripts/test.sh's second run).

use std::collections::{BTreeMap, BTreeSet};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{database_for, exdaas, json, on_postgres, send, spawn_app_on, test_settings, TestApp};

/// On a data folder even in the PostgreSQL run.
const ON_FILES: [(&str, &str); 1] = [("EXDAAS_DATABASE_URL", "")];

/// Some documents the ways clients write them: chosen ids, anonymous
/// (counter) ids, patched ones (a higher version), one that expires in a
/// day, in three collections. Answers every document, by collection.
async fn write_documents(app: &TestApp) -> BTreeMap<String, Vec<Value>> {
    for i in 0..300 {
        let resp = app
            .put_doc(
                "users",
                &format!("u{i:04}"),
                &json!({ "n": i, "name": format!("user {i}") }),
            )
            .await;
        assert_eq!(resp.status(), 201);
    }
    for i in 0..40 {
        let resp = app
            .post_json("/v1/collections/orders/docs", &json!({ "total": i }))
            .await;
        assert_eq!(resp.status(), 201);
    }
    for _ in 0..2 {
        let resp = send(
            app.request(Method::PATCH, "/v1/collections/users/docs/u0007")
                .header("content-type", "application/merge-patch+json")
                .body(r#"{"vip": true}"#),
        )
        .await;
        assert_eq!(resp.status(), 200);
    }
    let resp = send(
        app.request(Method::PUT, "/v1/collections/sessions/docs/s1?ttl=86400")
            .json(&json!({ "token": "t" })),
    )
    .await;
    assert!(resp.status().is_success(), "{}", resp.status());
    everything(app).await
}

async fn everything(app: &TestApp) -> BTreeMap<String, Vec<Value>> {
    let mut all = BTreeMap::new();
    for collection in ["users", "orders", "sessions", "later"] {
        all.insert(collection.to_owned(), app.list_all(collection).await);
    }
    all
}

/// The numeric ids among every document.
fn numeric_ids(all: &BTreeMap<String, Vec<Value>>) -> BTreeSet<u64> {
    all.values()
        .flatten()
        .filter_map(|doc| doc["id"].as_str()?.parse().ok())
        .collect()
}

async fn anonymous_id(app: &TestApp) -> u64 {
    let resp = app
        .post_json("/v1/collections/orders/docs", &json!({ "total": -1 }))
        .await;
    assert_eq!(resp.status(), 201);
    let created = json(resp).await;
    created["id"].as_str().expect("an id").parse().expect("a counter id")
}

fn said_ok(run: &crate::helpers::Run) {
    assert_eq!(run.code, Some(0), "{}", run.said());
}

/// The schema of `users` holds on every shard, and its index is rebuilt
/// and used.
async fn catalog_came_along(app: &TestApp, schema: &Value) {
    assert_eq!(
        json(app.get("/v1/collections/users/schema").await).await["schema"],
        *schema
    );
    for i in 0..8 {
        assert_eq!(
            app.put_doc("users", &format!("bad{i}"), &json!({"m": 1}))
                .await
                .status(),
            422
        );
    }
    let index = crate::indexes::wait_ready(app, "users", "by_n").await;
    assert_eq!(index["indexed"], 300, "{index}");
    let page = json(
        app.post_json(
            "/v1/collections/users/query",
            &json!({"filter": {"n": {"$lt": 5}}, "explain": true}),
        )
        .await,
    )
    .await;
    assert_eq!(page["explain"]["plan"], "index", "{page}");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(5), "{page}");
}

#[tokio::test]
async fn a_folder_moves_into_a_database_and_back_with_every_document_and_version() {
    if !on_postgres() {
        eprintln!("only with a PostgreSQL to migrate to");
        return;
    }
    let folder = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(folder.path(), &ON_FILES).await;
    let before = write_documents(&app).await;
    let etag = app.get_doc("users", "u0007").await.headers()["etag"].clone();
    let schema = json!({"type": "object", "required": ["n"]});
    let resp = send(app.request(Method::PUT, "/v1/collections/users/schema").json(&schema)).await;
    assert_eq!(resp.status(), 200);
    let resp = send(
        app.request(Method::PUT, "/v1/collections/users/indexes/by_n")
            .json(&json!({"fields": ["n"]})),
    )
    .await;
    assert_eq!(resp.status(), 201);
    app.stop().await;

    let database = tempfile::tempdir().expect("temp dir");
    let url = database_for(database.path()).expect("a database");
    let run = exdaas(folder.path(), &["migrate", "--to", &url], &[]).await;
    said_ok(&run);
    assert!(
        run.stdout
            .contains("migrate complete: 341 documents in 3 collections copied and verified"),
        "{}",
        run.said()
    );
    assert!(
        run.stdout.contains("users") && run.stdout.contains("checksum"),
        "{}",
        run.said()
    );

    // The server on the database serves the same documents, versions and
    // ETags; the counter goes on past every id the folder handed out; the
    // feed starts after the copy.
    let replica = spawn_app_on(database.path(), &[]).await;
    assert_eq!(everything(&replica).await, before);
    catalog_came_along(&replica, &schema).await;
    assert_eq!(replica.get_doc("users", "u0007").await.headers()["etag"], etag);
    let fresh = anonymous_id(&replica).await;
    assert!(
        numeric_ids(&before).iter().all(|&id| id < fresh),
        "fresh id {fresh} after {:?}",
        numeric_ids(&before)
    );
    assert_eq!(replica.get("/v1/changes?since=0").await.status(), 410);
    assert_eq!(
        replica
            .put_doc("later", "x", &json!({ "after": "migrate" }))
            .await
            .status(),
        201
    );
    let on_database = everything(&replica).await;
    replica.stop().await;

    // And back, into a new folder a server opens with every document.
    let back = tempfile::tempdir().expect("temp dir");
    let root = back.path().join("data");
    let run = exdaas(&root, &["migrate", "--from", &url], &[]).await;
    said_ok(&run);
    assert!(
        run.stdout
            .contains("migrate complete: 343 documents in 4 collections copied and verified"),
        "{}",
        run.said()
    );
    let app = spawn_app_on(&root, &ON_FILES).await;
    assert_eq!(everything(&app).await, on_database);
    catalog_came_along(&app, &schema).await;
    let again = anonymous_id(&app).await;
    assert!(again > fresh, "{again} after {fresh}");
    assert_eq!(app.get("/v1/changes?since=0").await.status(), 410);
    app.stop().await;
}

#[tokio::test]
async fn migrate_refuses_what_would_lose_or_mix_data() {
    if !on_postgres() {
        eprintln!("only with a PostgreSQL to migrate to");
        return;
    }
    let folder = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(folder.path(), &ON_FILES).await;
    assert_eq!(app.put_doc("users", "alice", &json!({ "n": 1 })).await.status(), 201);
    let database = tempfile::tempdir().expect("temp dir");
    let url = database_for(database.path()).expect("a database");

    // Not while a server writes to the folder.
    let run = exdaas(folder.path(), &["migrate", "--to", &url], &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.said());
    assert!(run.stderr.contains("another exdaas process"), "{}", run.said());
    app.stop().await;

    // Usage mistakes: exit 2, nothing touched.
    let run = exdaas(folder.path(), &["migrate"], &[]).await;
    assert_eq!(run.code, Some(2), "{}", run.said());
    let run = exdaas(folder.path(), &["migrate", "--to", &url, "--from", &url], &[]).await;
    assert_eq!(run.code, Some(2), "{}", run.said());
    let run = exdaas(folder.path(), &["migrate", "--to", "mysql://user:secret@db/x"], &[]).await;
    assert_eq!(run.code, Some(2), "{}", run.said());
    assert!(
        run.stderr.contains("postgres://") && !run.stderr.contains("secret"),
        "{}",
        run.said()
    );

    said_ok(&exdaas(folder.path(), &["migrate", "--to", &url], &[]).await);
    // Not into a database that holds documents.
    let run = exdaas(folder.path(), &["migrate", "--to", &url], &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.said());
    assert!(run.stderr.contains("already holds documents"), "{}", run.said());
    // Not into a folder that holds anything.
    let run = exdaas(folder.path(), &["migrate", "--from", &url], &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.said());
    assert!(run.stderr.contains("not empty"), "{}", run.said());

    // A migration that did not finish leaves its mark: no server starts on
    // the partial copy, nothing copies it out, and running it again
    // replaces it.
    mark_unfinished(&url).await;
    let refused = exdaas::Application::build(test_settings(database.path(), &[])).await;
    let reason = refused.err().expect("refused").to_string();
    assert!(reason.contains("did not finish"), "{reason}");
    let empty = tempfile::tempdir().expect("temp dir");
    let run = exdaas(empty.path(), &["migrate", "--from", &url], &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.said());
    assert!(run.stderr.contains("did not finish"), "{}", run.said());
    said_ok(&exdaas(folder.path(), &["migrate", "--to", &url], &[]).await);
    let replica = spawn_app_on(database.path(), &[]).await;
    assert_eq!(
        json(replica.get_doc("users", "alice").await).await["data"],
        json!({ "n": 1 })
    );
    replica.stop().await;
}

/// What a migration killed midway leaves: its mark in exdaas_meta.
async fn mark_unfinished(url: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.expect("the database answers");
    sqlx::query("INSERT INTO exdaas_meta (key, value) VALUES ('migrating', 1)")
        .execute(&mut conn)
        .await
        .expect("marked");
}

/// A URL with a password in each place a URL can hold one, to a port where
/// no database answers.
const SECRET_URL: &str =
    "postgres://exdaas:userinfo-s3cret@127.0.0.1:1/exdaas?password=param-s3cret&sslpassword=ssl-s3cret";

fn assert_no_password(run: &crate::helpers::Run) {
    for secret in ["userinfo-s3cret", "param-s3cret", "ssl-s3cret"] {
        assert!(!run.said().contains(secret), "{secret} shows: {}", run.said());
    }
}

#[tokio::test]
async fn migrate_never_prints_a_password_and_takes_its_url_from_the_environment() {
    let folder = tempfile::tempdir().expect("temp dir");
    let info = [("RUST_LOG", "info")];
    for direction in ["--to", "--from"] {
        let run = exdaas(folder.path(), &["migrate", direction, SECRET_URL], &info).await;
        assert_ne!(run.code, Some(0), "{}", run.said());
        assert!(run.stdout.contains("exdaas:***@127.0.0.1:1"), "{}", run.said());
        // Said on the command line, the password is in every user's `ps`.
        assert!(run.stderr.contains("--to-env or --from-env"), "{}", run.said());
        assert_no_password(&run);
    }
    // From the environment: the same copy, nothing on the command line.
    let env = [("RUST_LOG", "info"), ("SOURCE_DATABASE_URL", SECRET_URL)];
    let run = exdaas(folder.path(), &["migrate", "--from-env", "SOURCE_DATABASE_URL"], &env).await;
    assert_eq!(run.code, Some(1), "{}", run.said());
    assert!(
        run.stdout.contains("migrating postgres://exdaas:***@127.0.0.1:1"),
        "{}",
        run.said()
    );
    assert!(run.stderr.contains("cannot connect to the database"), "{}", run.said());
    assert!(!run.stderr.contains("--to-env or --from-env"), "{}", run.said());
    assert_no_password(&run);
    let run = exdaas(folder.path(), &["migrate", "--to-env", "NO_SUCH_VARIABLE"], &info).await;
    assert_eq!(run.code, Some(2), "{}", run.said());
    assert!(run.stderr.contains("NO_SUCH_VARIABLE"), "{}", run.said());
}
