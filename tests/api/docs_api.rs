//! The first slice of the v1 API, its limits and its documentation.

use serde_json::json;

use crate::helpers::{json, send, spawn_app};

#[tokio::test]
async fn put_creates_then_replaces_with_rising_versions() {
    let app = spawn_app().await;
    let resp = app.put_doc("users", "alice", &json!({"name": "Alice"})).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["location"], "/v1/collections/users/docs/alice");
    assert_eq!(resp.headers()["etag"], "\"1\"");
    let created = json(resp).await;
    assert_eq!(created["collection"], "users");
    assert_eq!(created["id"], "alice");
    assert_eq!(created["version"], 1);
    assert_eq!(created["data"], json!({"name": "Alice"}));
    assert!(
        created["updated_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{created}"
    );

    let resp = app
        .put_doc("users", "alice", &json!({"name": "Alice", "admin": true}))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["version"], 2);

    let resp = app.get_doc("users", "alice").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["etag"], "\"2\"");
    assert_eq!(json(resp).await["data"], json!({"name": "Alice", "admin": true}));
}

#[tokio::test]
async fn any_json_value_is_a_document() {
    let app = spawn_app().await;
    for (id, value) in [
        ("a", json!([1, 2])),
        ("b", json!("text")),
        ("c", json!(3.5)),
        ("d", json!(null)),
    ] {
        assert_eq!(app.put_doc("values", id, &value).await.status(), 201, "{value}");
        assert_eq!(json(app.get_doc("values", id).await).await["data"], value);
    }
}

#[tokio::test]
async fn post_allocates_an_id_and_says_where() {
    let app = spawn_app().await;
    let resp = app
        .client
        .post(app.url("/v1/collections/notes/docs"))
        .json(&json!({"text": "hi"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 201);
    let location = resp.headers()["location"].to_str().expect("ascii").to_owned();
    let body = json(resp).await;
    assert_eq!(
        location,
        format!("/v1/collections/notes/docs/{}", body["id"].as_str().expect("id"))
    );
    assert_eq!(json(app.get(&location).await).await["data"], json!({"text": "hi"}));
}

#[tokio::test]
async fn delete_removes_and_missing_documents_are_404() {
    let app = spawn_app().await;
    app.put_doc("c", "x", &json!(1)).await;
    let url = app.url("/v1/collections/c/docs/x");
    assert_eq!(app.client.delete(&url).send().await.expect("sent").status(), 204);
    let resp = app.get_doc("c", "x").await;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let problem = json(resp).await;
    assert_eq!(problem["status"], 404);
    assert!(
        problem["detail"].as_str().is_some_and(|d| d.contains("\"x\"")),
        "{problem}"
    );
    assert_eq!(app.client.delete(&url).send().await.expect("sent").status(), 404);
}

#[tokio::test]
async fn legacy_and_v1_share_the_default_collection() {
    let app = spawn_app().await;
    app.post_api(json!({"id": 42, "data": {"from": "legacy"}})).await;
    let doc = json(app.get_doc("default", "42").await).await;
    assert_eq!(doc["data"], json!({"from": "legacy"}));
    app.put_doc("default", "43", &json!({"from": "v1"})).await;
    assert_eq!(json(app.get_api("43").await).await["data"], json!({"from": "v1"}));
}

#[tokio::test]
async fn names_outside_the_limits_are_refused() {
    let app = spawn_app().await;
    let long_id = "i".repeat(257);
    let long_collection = "c".repeat(65);
    for path in [
        format!("/v1/collections/c/docs/{long_id}"),
        format!("/v1/collections/{long_collection}/docs/x"),
        "/v1/collections/c/docs/a%20b".to_string(),
        "/v1/collections/b%C3%A4d/docs/x".to_string(),
    ] {
        let resp = app
            .client
            .put(app.url(&path))
            .json(&json!(1))
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status(), 400, "{path}");
        assert!(json(resp).await["detail"].is_string(), "{path}");
    }
}

#[tokio::test]
async fn oversized_bodies_get_413_and_wrong_types_415() {
    let app = spawn_app().await;
    let big = json!({"blob": "x".repeat(1_100_000)});
    let resp = app.put_doc("c", "big", &big).await;
    assert_eq!(resp.status(), 413);
    assert_eq!(json(resp).await["status"], 413);

    let resp = app
        .client
        .put(app.url("/v1/collections/c/docs/t"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 415);
    let resp = app
        .client
        .put(app.url("/v1/collections/c/docs/t"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 400);
    assert_eq!(app.get_doc("c", "big").await.status(), 404);
    assert_eq!(app.get_doc("c", "t").await.status(), 404);
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let resp = app.get("/healthz").await;
    assert_eq!(resp.status(), 200);
    let resp = app.get("/readyz").await;
    assert_eq!(resp.status(), 200);
    let body = json(resp).await;
    assert_eq!(body["status"], "ready");
    assert_eq!(body["shards"].as_array().map(Vec::len), Some(4));
}

#[tokio::test]
async fn every_route_is_in_the_openapi_document_and_swagger_ui_serves() {
    let app = spawn_app().await;
    let spec = json(app.get("/openapi.json").await).await;
    let paths = spec["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/api", "post"),
        ("/api", "get"),
        ("/api/cmd", "get"),
        ("/v1/collections/{collection}/docs/{id}", "put"),
        ("/v1/collections/{collection}/docs/{id}", "get"),
        ("/v1/collections/{collection}/docs/{id}", "delete"),
        ("/v1/collections/{collection}/docs", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from the spec"
        );
    }
    let resp = app.get("/docs/").await;
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.expect("html").contains("swagger"), "Swagger UI page");
}

#[tokio::test]
async fn unknown_routes_answer_json() {
    let app = spawn_app().await;
    let resp = app.get("/nope").await;
    assert_eq!(resp.status(), 404);
    assert!(json(resp).await["message"].is_string());
    let resp = app.get("/v1/nope").await;
    assert_eq!(resp.status(), 404);
    assert_eq!(json(resp).await["status"], 404);
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_gets_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let addr = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let chunk = format!("{{\"blob\": \"{}\"}}", "x".repeat(1_200_000));
    let request = format!(
        "PUT /v1/collections/c/docs/chunked HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    // The server may answer and close before reading everything: ignore write errors.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "{}",
        answer.lines().next().unwrap_or_default()
    );
    assert_eq!(app.get_doc("c", "chunked").await.status(), 404);
}

#[tokio::test]
async fn the_openapi_document_says_what_the_server_does() {
    let app = crate::helpers::spawn_app_with(&[("EXDAAS_API_KEYS", "admin:admin-key-0123456789")]).await;
    let spec = json(app.get("/openapi.json").await).await;
    let put = &spec["paths"]["/v1/collections/{collection}/docs/{id}"]["put"];
    // With keys configured, a key is required: no anonymous alternative.
    assert_eq!(put["security"], json!([{"BearerKey": []}]), "{put}");
    let param = |name: &str| {
        put["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .cloned()
            .unwrap_or_default()
    };
    assert!(param("collection")["schema"]["pattern"].is_string(), "{put}");
    assert_eq!(param("id")["schema"]["maxLength"], 256, "{put}");
    assert_eq!(param("ttl")["schema"]["minimum"], 1.0, "{put}");
    // A document is any JSON value, not only an object.
    let body = &put["requestBody"]["content"]["application/json"]["schema"];
    assert!(body.get("type").is_none(), "{body}");
    // Fields answered as null say so.
    let envelope = &spec["components"]["schemas"]["DocEnvelope"]["properties"];
    assert_eq!(envelope["expires_at"]["nullable"], true, "{envelope}");
    // Probes stay open.
    assert!(spec["paths"]["/healthz"]["get"].get("security").is_none());

    // A method a path does not take: 405, and the methods it does.
    let resp = send(
        app.request(
            reqwest::Method::from_bytes(b"TRACE").expect("method"),
            "/v1/collections/c/docs/a",
        )
        .header("authorization", "Bearer admin-key-0123456789"),
    )
    .await;
    assert_eq!(resp.status(), 405);
    let allow = resp
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    for method in ["GET", "PUT", "PATCH", "DELETE", "HEAD"] {
        assert!(allow.contains(method), "Allow: {allow}");
    }
    let resp = send(app.request(reqwest::Method::DELETE, "/healthz")).await;
    assert_eq!(
        resp.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("GET, HEAD")
    );
}
