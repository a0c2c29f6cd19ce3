//! API keys (`EXDAAS_API_KEYS`): 401 without a valid key on every data
//! route of both APIs, 403 outside the key's scope or collections, open
//! health checks and documentation, CORS, and bad keys stopping the boot.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, Response};
use serde_json::{json, Value};

use crate::helpers::{json, send, spawn_app_with, TestApp};

const ADMIN: &str = "admin-key-0123456789";
const WRITER: &str = "writer-key-0123456789";
const READER: &str = "reader-key-0123456789";
/// A write key limited to the `users` collection.
const USERS: &str = "users-key-0123456789";
const KEYS: &str = "admin:admin-key-0123456789;write:writer-key-0123456789;\
                    read:reader-key-0123456789;write:users-key-0123456789:users";

async fn spawn_secured() -> TestApp {
    spawn_app_with(&[("EXDAAS_API_KEYS", KEYS)]).await
}

/// Which error body a route answers with.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Flavor {
    /// `application/problem+json` with `status`.
    V1,
    /// The original API's `{"message": ...}`.
    Legacy,
}

/// One request to a data route, with a body it would accept.
#[derive(Debug, Clone, Copy)]
struct Call {
    method: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: &'static str,
}

impl Call {
    const fn new(method: &'static str, path: &'static str) -> Self {
        Self {
            method,
            path,
            content_type: None,
            body: "",
        }
    }

    const fn with(self, content_type: &'static str, body: &'static str) -> Self {
        Self {
            content_type: Some(content_type),
            body,
            ..self
        }
    }

    fn flavor(&self) -> Flavor {
        if self.path.starts_with("/v1/") {
            Flavor::V1
        } else {
            Flavor::Legacy
        }
    }

    fn build(&self, app: &TestApp) -> RequestBuilder {
        let method = Method::from_bytes(self.method.as_bytes()).expect("method");
        let mut request = app.request(method, self.path);
        if let Some(content_type) = self.content_type {
            request = request.header("content-type", content_type).body(self.body);
        }
        request
    }

    async fn send_with(&self, app: &TestApp, key: Option<&str>) -> Response {
        let request = self.build(app);
        send(match key {
            Some(key) => request.bearer_auth(key),
            None => request,
        })
        .await
    }
}

const JSON: &str = "application/json";
const MERGE: &str = "application/merge-patch+json";
const NDJSON: &str = "application/x-ndjson";

/// Every data route of both APIs, each with a request it would accept.
const DATA_ROUTES: &[Call] = &[
    Call::new("POST", "/api").with(JSON, r#"{"id": 1, "data": {"a": 1}}"#),
    Call::new("GET", "/api?id=1"),
    Call::new("GET", "/api/cmd?id=1&cmd[query]=ONLY&cmd[keys][]=a"),
    Call::new("PUT", "/v1/collections/c/docs/a").with(JSON, r#"{"a": 1}"#),
    Call::new("GET", "/v1/collections/c/docs/a"),
    Call::new("PATCH", "/v1/collections/c/docs/a").with(MERGE, r#"{"b": 2}"#),
    Call::new("DELETE", "/v1/collections/c/docs/a"),
    Call::new("POST", "/v1/collections/c/docs").with(JSON, r#"{"a": 1}"#),
    Call::new("GET", "/v1/collections/c/docs"),
    Call::new("POST", "/v1/collections/c/batch").with(JSON, r#"{"ops": [{"op": "get", "id": "a"}]}"#),
    Call::new("POST", "/v1/collections/c/import").with(NDJSON, "{\"id\": \"b\", \"data\": 1}\n"),
    Call::new("GET", "/v1/collections/c/export"),
    Call::new("GET", "/v1/collections"),
    Call::new("PUT", "/v1/collections/c/schema").with(JSON, r#"{"type": "object"}"#),
    Call::new("GET", "/v1/collections/c/schema"),
    Call::new("GET", "/v1/collections/c/schema/mismatches"),
    Call::new("DELETE", "/v1/collections/c/schema"),
    Call::new("DELETE", "/v1/collections/c?confirm=c"),
];

/// A 401 that asks for a bearer key, in the route's error format.
async fn assert_unauthorized(resp: Response, flavor: Flavor, what: &str) {
    assert_eq!(resp.status(), 401, "{what}");
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .unwrap_or_else(|| panic!("{what}: no www-authenticate header"))
        .to_str()
        .expect("ascii");
    assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
    assert_refusal_body(resp, flavor, 401, what).await;
}

/// A 403 in the route's error format.
async fn assert_forbidden(resp: Response, flavor: Flavor, what: &str) {
    assert_eq!(resp.status(), 403, "{what}");
    assert_refusal_body(resp, flavor, 403, what).await;
}

async fn assert_refusal_body(resp: Response, flavor: Flavor, status: u16, what: &str) {
    let content_type = resp.headers()["content-type"].to_str().expect("ascii").to_owned();
    let body = json(resp).await;
    match flavor {
        Flavor::V1 => {
            assert_eq!(content_type, "application/problem+json", "{what}");
            assert_eq!(body["status"], status, "{what}: {body}");
            assert!(body["detail"].is_string(), "{what}: {body}");
        }
        Flavor::Legacy => {
            assert!(content_type.starts_with("application/json"), "{what}: {content_type}");
            assert!(
                body["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{what}: {body}"
            );
        }
    }
}

/// Stores a document with the admin key.
async fn seed(app: &TestApp, collection: &str, id: &str, data: Value) {
    let resp = send(
        app.request(Method::PUT, &format!("/v1/collections/{collection}/docs/{id}"))
            .bearer_auth(ADMIN)
            .json(&data),
    )
    .await;
    assert!(
        resp.status().is_success(),
        "seeding {collection}/{id}: {}",
        resp.status()
    );
}

async fn get_as(app: &TestApp, key: &str, path: &str) -> Response {
    send(app.request(Method::GET, path).bearer_auth(key)).await
}

#[tokio::test]
async fn every_data_route_refuses_a_request_without_a_valid_key() {
    let app = spawn_secured().await;
    seed(&app, "c", "a", json!({"a": 1})).await;
    for call in DATA_ROUTES {
        let what = format!("{} {} without a key", call.method, call.path);
        assert_unauthorized(call.send_with(&app, None).await, call.flavor(), &what).await;
    }
    let wrong = [
        "wrong-key-0123456789",
        "admin-key-01234567890",
        "admin-key-012345678",
        "ADMIN-KEY-0123456789",
    ];
    for call in DATA_ROUTES {
        for key in wrong {
            let what = format!("{} {} with key {key}", call.method, call.path);
            assert_unauthorized(call.send_with(&app, Some(key)).await, call.flavor(), &what).await;
        }
        // The right key in the wrong scheme is no key at all.
        let resp = send(call.build(&app).basic_auth("admin", Some(ADMIN))).await;
        assert_unauthorized(
            resp,
            call.flavor(),
            &format!("{} {} with Basic auth", call.method, call.path),
        )
        .await;
        let resp = send(call.build(&app).header("authorization", ADMIN)).await;
        assert_unauthorized(
            resp,
            call.flavor(),
            &format!("{} {} with a bare key", call.method, call.path),
        )
        .await;
    }
    // Nothing the refused requests carried was stored.
    let resp = get_as(&app, ADMIN, "/v1/collections/c/docs").await;
    let ids: Vec<Value> = json(resp).await["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|d| d["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("a")]);
    assert_eq!(
        json(get_as(&app, ADMIN, "/v1/collections/c/docs/a").await).await["version"],
        1
    );
}

#[tokio::test]
async fn every_route_in_the_openapi_document_checks_the_key() {
    let app = spawn_secured().await;
    let spec = json(app.get("/openapi.json").await).await;
    let paths = spec["paths"].as_object().expect("paths");
    let mut checked = 0;
    for (path, operations) in paths {
        if matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics") {
            continue;
        }
        for (method, operation) in operations.as_object().expect("operations") {
            let concrete = path.replace("{collection}", "c").replace("{id}", "1");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let mut request = app.request(method.clone(), &concrete);
            // A body the route can parse, so only the key can be missing.
            if let Some(content) = operation["requestBody"]["content"].as_object() {
                let content_type = content.keys().next().expect("a content type");
                let body = match content_type.as_str() {
                    "application/x-ndjson" => "",
                    "application/x-www-form-urlencoded" => "id=1&data[a]=1",
                    _ => "{}",
                };
                request = request.header("content-type", content_type).body(body);
            }
            let what = format!("{method} {concrete}");
            let flavor = if concrete.starts_with("/v1/") {
                Flavor::V1
            } else {
                Flavor::Legacy
            };
            assert_unauthorized(send(request).await, flavor, &what).await;
            let schemes: Vec<&str> = operation["security"]
                .as_array()
                .unwrap_or_else(|| panic!("{what}: no security in the spec"))
                .iter()
                .filter_map(|s| s.as_object())
                .flat_map(|s| s.keys().map(String::as_str))
                .collect();
            assert!(schemes.contains(&"BearerKey"), "{what}: security {schemes:?}");
            checked += 1;
        }
    }
    assert!(checked >= DATA_ROUTES.len(), "only {checked} routes in the spec");
}

#[tokio::test]
async fn the_openapi_document_declares_the_bearer_scheme() {
    let app = spawn_secured().await;
    let spec = json(app.get("/openapi.json").await).await;
    let schemes = spec["components"]["securitySchemes"]
        .as_object()
        .expect("components.securitySchemes");
    assert!(
        schemes.values().any(|s| s["type"] == "http" && s["scheme"] == "bearer"),
        "{schemes:?}"
    );
}

#[tokio::test]
async fn health_checks_and_documentation_stay_open() {
    let app = spawn_secured().await;
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs/"] {
        let resp = app.get(path).await;
        assert_eq!(resp.status(), 200, "{path}");
    }
    assert_eq!(json(app.get("/healthz").await).await["status"], "ok");
}

#[tokio::test]
async fn a_read_key_reads_but_cannot_change_anything() {
    let app = spawn_secured().await;
    seed(&app, "c", "a", json!({"a": 1})).await;
    seed(&app, "default", "1", json!({"a": 1})).await;

    for call in [
        DATA_ROUTES[1],
        DATA_ROUTES[2],
        DATA_ROUTES[4],
        DATA_ROUTES[8],
        DATA_ROUTES[9],
        DATA_ROUTES[11],
        DATA_ROUTES[12],
    ] {
        let resp = call.send_with(&app, Some(READER)).await;
        assert_eq!(resp.status(), 200, "{} {} with the read key", call.method, call.path);
    }
    for call in [
        DATA_ROUTES[0],
        DATA_ROUTES[3],
        DATA_ROUTES[5],
        DATA_ROUTES[6],
        DATA_ROUTES[7],
        DATA_ROUTES[10],
        DATA_ROUTES[13],
        DATA_ROUTES[16],
        DATA_ROUTES[DATA_ROUTES.len() - 1],
        Call::new("POST", "/v1/collections/c/batch").with(JSON, r#"{"ops": [{"op": "delete", "id": "a"}]}"#),
    ] {
        let what = format!("{} {} with the read key", call.method, call.path);
        assert_forbidden(call.send_with(&app, Some(READER)).await, call.flavor(), &what).await;
    }
    let doc = json(get_as(&app, READER, "/v1/collections/c/docs/a").await).await;
    assert_eq!(
        (doc["version"].clone(), doc["data"].clone()),
        (json!(1), json!({"a": 1}))
    );
    let page = json(get_as(&app, READER, "/v1/collections/c/docs").await).await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        json(get_as(&app, READER, "/api?id=1").await).await["data"],
        json!({"a": 1})
    );
}

#[tokio::test]
async fn a_write_key_writes_but_cannot_drop_a_collection() {
    let app = spawn_secured().await;
    for call in [
        DATA_ROUTES[3],
        DATA_ROUTES[5],
        DATA_ROUTES[6],
        DATA_ROUTES[7],
        DATA_ROUTES[10],
        DATA_ROUTES[0],
        Call::new("POST", "/v1/collections/c/batch").with(JSON, r#"{"ops": [{"op": "put", "id": "z", "data": 1}]}"#),
    ] {
        let resp = call.send_with(&app, Some(WRITER)).await;
        assert!(
            resp.status().is_success(),
            "{} {} with the write key: {}",
            call.method,
            call.path,
            resp.status()
        );
    }
    let resp = DATA_ROUTES[DATA_ROUTES.len() - 1].send_with(&app, Some(WRITER)).await;
    assert_eq!(resp.status(), 403, "drop with the write key");
    // The collection as a client wrote it, not as Rust debug-prints its type.
    assert_eq!(
        json(resp).await["detail"],
        "this API key does not grant admin access to collection \"c\""
    );
    let page = json(get_as(&app, WRITER, "/v1/collections/c/docs").await).await;
    let ids: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 3, "the write key's documents are all still there: {ids:?}");
    assert_eq!(
        json(get_as(&app, WRITER, "/api?id=1").await).await["data"],
        json!({"a": 1})
    );
}

#[tokio::test]
async fn an_admin_key_drops_a_collection() {
    let app = spawn_secured().await;
    seed(&app, "c", "a", json!(1)).await;
    let resp = DATA_ROUTES[DATA_ROUTES.len() - 1].send_with(&app, Some(ADMIN)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await, json!({"collection": "c", "deleted": 1}));
    assert_eq!(get_as(&app, ADMIN, "/v1/collections/c/docs/a").await.status(), 404);
}

#[tokio::test]
async fn a_key_limited_to_collections_sees_only_them() {
    let app = spawn_secured().await;
    seed(&app, "users", "u1", json!({"name": "Ann"})).await;
    seed(&app, "orders", "o1", json!({"total": 3})).await;
    seed(&app, "default", "1", json!("legacy")).await;

    let put_users = send(
        app.request(Method::PUT, "/v1/collections/users/docs/u2")
            .bearer_auth(USERS)
            .json(&json!({"name": "Bo"})),
    )
    .await;
    assert_eq!(put_users.status(), 201);
    assert_eq!(get_as(&app, USERS, "/v1/collections/users/docs/u1").await.status(), 200);
    assert_eq!(get_as(&app, USERS, "/v1/collections/users/docs").await.status(), 200);
    assert_eq!(get_as(&app, USERS, "/v1/collections/users/export").await.status(), 200);

    for call in [
        Call::new("GET", "/v1/collections/orders/docs/o1"),
        Call::new("PUT", "/v1/collections/orders/docs/o2").with(JSON, "{}"),
        Call::new("DELETE", "/v1/collections/orders/docs/o1"),
        Call::new("GET", "/v1/collections/orders/docs"),
        Call::new("GET", "/v1/collections/orders/export"),
        Call::new("POST", "/v1/collections/orders/batch").with(JSON, r#"{"ops": [{"op": "get", "id": "o1"}]}"#),
        Call::new("POST", "/v1/collections/orders/import").with(NDJSON, "{\"id\": \"o3\", \"data\": 1}\n"),
        Call::new("DELETE", "/v1/collections/users?confirm=users"),
        Call::new("GET", "/api?id=1"),
        Call::new("POST", "/api").with(JSON, r#"{"id": 2, "data": 1}"#),
    ] {
        let what = format!("{} {} with the users key", call.method, call.path);
        assert_forbidden(call.send_with(&app, Some(USERS)).await, call.flavor(), &what).await;
    }

    let listed = json(get_as(&app, USERS, "/v1/collections").await).await;
    assert_eq!(listed, json!({"collections": [{"name": "users", "documents": 2}]}));
    let all = json(get_as(&app, ADMIN, "/v1/collections").await).await;
    assert_eq!(all["collections"].as_array().map(Vec::len), Some(3), "{all}");
    assert_eq!(
        json(get_as(&app, ADMIN, "/v1/collections/orders/docs/o1").await).await["version"],
        1
    );
}

#[tokio::test]
async fn cors_allows_the_configured_origin_only() {
    let app = spawn_app_with(&[
        ("EXDAAS_API_KEYS", KEYS),
        ("EXDAAS_CORS_ORIGINS", "https://app.example.com"),
    ])
    .await;
    let preflight = |origin: &'static str| {
        send(
            app.request(Method::OPTIONS, "/v1/collections/c/docs/a")
                .header("origin", origin)
                .header("access-control-request-method", "PUT")
                .header(
                    "access-control-request-headers",
                    "authorization, content-type, if-match",
                ),
        )
    };
    let resp = preflight("https://app.example.com").await;
    assert!(resp.status().is_success(), "preflight: {}", resp.status());
    let headers = resp.headers();
    assert_eq!(headers["access-control-allow-origin"], "https://app.example.com");
    let methods = headers["access-control-allow-methods"].to_str().expect("ascii");
    assert!(methods.contains("PUT"), "{methods}");
    let allowed = headers["access-control-allow-headers"].to_str().expect("ascii");
    assert!(
        allowed.contains("if-match") && allowed.contains("authorization"),
        "{allowed}"
    );

    let resp = send(
        app.request(Method::GET, "/healthz")
            .header("origin", "https://app.example.com"),
    )
    .await;
    assert_eq!(resp.headers()["access-control-allow-origin"], "https://app.example.com");

    for resp in [
        preflight("https://evil.example.com").await,
        send(
            app.request(Method::GET, "/v1/collections")
                .header("origin", "https://evil.example.com")
                .bearer_auth(ADMIN),
        )
        .await,
    ] {
        let allow = resp.headers().get("access-control-allow-origin");
        assert!(
            allow.is_none_or(|v| v != "https://evil.example.com" && v != "*"),
            "another origin is not allowed: {allow:?}"
        );
    }
}

/// Runs the binary with `EXDAAS_API_KEYS` set until it exits: exit code and
/// stderr. A binary that accepts the keys and serves is stopped and fails
/// the test.
fn boot_with_keys(keys: &str) -> (Option<i32>, String) {
    use std::io::Read;
    let data = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_exdaas"))
        .env("DETS_ROOT", data.path())
        .env("PORT", "0")
        .env("EXDAAS_LISTEN_ADDR", "127.0.0.1")
        .env("EXDAAS_API_KEYS", keys)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("exdaas runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{keys}: exdaas accepted these keys and kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr readable");
    (status.code(), stderr)
}

fn assert_refused_without_the_key(keys: &str, secret: &str) {
    let (code, stderr) = boot_with_keys(keys);
    assert_eq!(code, Some(2), "{keys}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{keys}: one line, got {stderr}");
    assert!(lines[0].contains("EXDAAS_API_KEYS"), "{keys}: {stderr}");
    assert!(!stderr.contains(secret), "{keys}: the key is shown: {stderr}");
}

#[test]
fn bad_api_keys_stop_the_boot_without_showing_the_key() {
    for (keys, secret) in [
        ("root:0123456789abcdef0", "0123456789abcdef0"),
        ("read:0123456789abcdef0!", "0123456789abcdef0"),
        ("read:short-key", "short-key"),
        ("read:0123456789abcdef0:bad/name", "0123456789abcdef0"),
        (
            "admin:admin-key-0123456789;wirte:0123456789abcdef0",
            "0123456789abcdef0",
        ),
    ] {
        assert_refused_without_the_key(keys, secret);
    }
}

#[test]
fn a_key_given_without_its_scope_is_not_shown() {
    assert_refused_without_the_key("0123456789abcdefghij", "0123456789abcdefghij");
    assert_refused_without_the_key("0123456789abcdefghij:users", "0123456789abcdefghij");
}

#[tokio::test]
async fn a_request_without_a_key_is_refused_before_its_body_is_read() {
    let app = spawn_secured().await;
    for call in DATA_ROUTES.iter().filter(|c| c.content_type.is_some()) {
        let method = Method::from_bytes(call.method.as_bytes()).expect("method");
        let resp = send(app.request(method, call.path)).await;
        assert_unauthorized(
            resp,
            call.flavor(),
            &format!("{} {} without key nor body", call.method, call.path),
        )
        .await;
    }
}

#[tokio::test]
async fn a_key_learns_what_it_may_do() {
    let app = spawn_secured().await;
    let grant = |key: &'static str| {
        let app = &app;
        async move { json(get_as(app, key, "/v1/access").await).await }
    };
    assert_eq!(
        grant(ADMIN).await,
        json!({"keys_required": true, "scope": "admin", "collections": null})
    );
    assert_eq!(grant(READER).await["scope"], "read");
    assert_eq!(
        grant(USERS).await,
        json!({"keys_required": true, "scope": "write", "collections": ["users"]})
    );
    assert_unauthorized(app.get("/v1/access").await, Flavor::V1, "GET /v1/access without a key").await;

    let open = crate::helpers::spawn_app().await;
    assert_eq!(
        json(open.get("/v1/access").await).await,
        json!({"keys_required": false, "scope": "admin", "collections": null})
    );
}

#[tokio::test]
async fn the_admin_page_is_served_without_a_key_and_runs_only_its_own_script() {
    let app = spawn_secured().await;
    let page = app.get("/admin").await;
    assert_eq!(page.status(), 200);
    let policy = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"),
        "{policy}"
    );
    let html = page.text().await.expect("html");
    assert!(html.contains(r#"<script src="/admin/admin.js""#), "{html}");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing fetched from elsewhere"
    );
    for (path, kind) in [("/admin/admin.js", "text/javascript"), ("/admin/admin.css", "text/css")] {
        let asset = app.get(path).await;
        assert_eq!(asset.status(), 200, "{path}");
        let content_type = asset.headers()["content-type"].to_str().expect("ascii").to_owned();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
    }
    let post = send(app.request(Method::POST, "/admin")).await;
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD");
}
