//! The original API, row by row of docs/original-api.md, and its fixes.

use serde_json::json;

use crate::helpers::{json, spawn_app, spawn_app_with};

#[tokio::test]
async fn two_anonymous_posts_then_get_the_second() {
    let app = spawn_app().await;
    let first = json(app.post_api(json!({"id": null, "data": {"color": "blue"}})).await).await;
    let second = json(app.post_api(json!({"id": null, "data": {"color": "red"}})).await).await;
    assert_eq!(first, json!({"id": 1, "data": {"color": "blue"}}));
    assert_eq!(second, json!({"id": 2, "data": {"color": "red"}}));

    let resp = app.get_api("2").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await, json!({"id": 2, "data": {"color": "red"}}));
}

#[tokio::test]
async fn posting_the_same_id_twice_upserts() {
    let app = spawn_app().await;
    for color in ["blue", "green"] {
        let resp = app.post_api(json!({"id": 7, "data": {"color": color}})).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(json(resp).await, json!({"id": 7, "data": {"color": color}}));
    }
    assert_eq!(
        json(app.get_api("7").await).await,
        json!({"id": 7, "data": {"color": "green"}})
    );
}

#[tokio::test]
async fn posting_equal_data_changes_nothing_and_answers_the_same() {
    let app = spawn_app().await;
    let body = json!({"id": 1, "data": {"color": "blue", "n": 1}});
    for _ in 0..3 {
        assert_eq!(json(app.post_api(body.clone()).await).await, body);
    }
    let doc = json(app.get_doc("default", "1").await).await;
    assert_eq!(doc["version"], 1, "equal writes must not create versions: {doc}");
}

#[tokio::test]
async fn ids_may_be_numeric_strings_and_form_encoded() {
    let app = spawn_app().await;
    let resp = app.post_api(json!({"id": "12", "data": {"a": 1}})).await;
    assert_eq!(json(resp).await, json!({"id": 12, "data": {"a": 1}}));

    let resp = app
        .client
        .post(app.url("/api"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("id=13&data%5Bcolor%5D=blue&data[tags][]=x&data[tags][]=y")
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        json(resp).await,
        json!({"id": 13, "data": {"color": "blue", "tags": ["x", "y"]}})
    );
    assert_eq!(json(app.get_api("13").await).await["data"]["color"], "blue");
}

#[tokio::test]
async fn reading_a_missing_document_gives_null_data() {
    let app = spawn_app().await;
    let resp = app.get_api("404").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await, json!({"id": 404, "data": null}));
}

/// `GET /api?id=N`, the original's clients' most frequent request, has a
/// quick path before the OpenAPI layer. However the request is spelled, the
/// answer is the documented route's, and metrics count it under that route.
#[tokio::test]
async fn every_spelling_of_a_read_answers_alike_and_counts_under_its_route() {
    let app = spawn_app().await;
    app.post_api(json!({"id": 1, "data": {"color": "blue"}})).await;
    let spellings = [
        "/api?id=1",
        "/api?id=%31",
        "/api?id=01",
        "/api?id=1&unused=x",
        "/api?unused=x&id=1",
    ];
    for path in spellings {
        let resp = app.get(path).await;
        assert_eq!(resp.status(), 200, "{path}");
        let content_type = resp.headers()["content-type"].to_str().ok().map(str::to_owned);
        assert_eq!(
            content_type.as_deref(),
            Some("application/json; charset=utf-8"),
            "{path}"
        );
        assert_eq!(
            resp.text().await.ok().as_deref(),
            Some(r#"{"id":1,"data":{"color":"blue"}}"#),
            "{path}"
        );
    }
    assert_eq!(json(app.get("/api?id=-7").await).await, json!({"id": -7, "data": null}));
    for (path, status) in [
        ("/api?id=9223372036854775808", 400),
        ("/api?id=", 400),
        ("/api?id=1x", 400),
    ] {
        let resp = app.get(path).await;
        assert_eq!(resp.status(), status, "{path}");
        assert!(json(resp).await["message"].as_str().is_some(), "{path}");
    }

    let page = app.get("/metrics").await.text().await.unwrap_or_default();
    let series = r#"exdaas_http_requests_total{method="GET",route="/api",status="200"} "#;
    let count = page.lines().find_map(|line| line.strip_prefix(series));
    assert_eq!(count, Some("6"), "{page}");
}

/// The quick path judges keys as the documented route does.
#[tokio::test]
async fn reads_of_the_original_api_follow_the_keys() {
    const KEYS: &str = "write:writer-key-0123456789;read:reader-key-0123456789;\
                        write:users-key-0123456789:users";
    let app = spawn_app_with(&[("EXDAAS_API_KEYS", KEYS)]).await;
    let write = app
        .client
        .post(app.url("/api"))
        .bearer_auth("writer-key-0123456789")
        .json(&json!({"id": 3, "data": "three"}))
        .send()
        .await
        .expect("request sent");
    assert_eq!(write.status(), 200);
    let cases = [
        (None, 401),
        (Some("Bearer reader-key-0123456789"), 200),
        (Some("bearer reader-key-0123456789"), 200),
        (Some("Bearer writer-key-0123456789"), 200),
        (Some("Bearer users-key-0123456789"), 403),
        (Some("Bearer reader-key-0123456789x"), 401),
        (Some("Basic cmVhZGVyLWtleQ=="), 401),
    ];
    for (authorization, status) in cases {
        let mut request = app.client.get(app.url("/api?id=3"));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let resp = request.send().await.expect("request sent");
        assert_eq!(resp.status(), status, "{authorization:?}");
        let body = json(resp).await;
        if status == 200 {
            assert_eq!(body, json!({"id": 3, "data": "three"}));
        } else {
            assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
        }
    }
}

#[tokio::test]
async fn only_projects_keys_with_null_for_missing_ones() {
    let app = spawn_app().await;
    app.post_api(json!({"id": 1, "data": {"color": "blue", "size": "L", "x": 1}}))
        .await;
    let resp = app
        .get("/api/cmd?id=1&cmd[query]=ONLY&cmd[keys][]=color&cmd[keys][]=weight")
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await, json!({"values": ["blue", null]}));

    // The same, percent-encoded as many clients send it.
    let resp = app
        .get("/api/cmd?id=1&cmd%5Bquery%5D=ONLY&cmd%5Bkeys%5D%5B%5D=size&cmd%5Bkeys%5D%5B%5D=color")
        .await;
    assert_eq!(json(resp).await, json!({"values": ["L", "blue"]}));
}

#[tokio::test]
async fn filter_bool_keeps_elements_whose_field_is_truthy() {
    let app = spawn_app().await;
    let colors = json!([
        {"name": "sky", "is_blue": true},
        {"name": "grass", "is_blue": false},
        {"name": "sea", "is_blue": true},
        {"name": "sun"}
    ]);
    app.post_api(json!({"id": 3, "data": {"colors": colors}})).await;
    let resp = app
        .get("/api/cmd?id=3&cmd[query]=FILTER_BOOL&cmd[keys][key]=colors&cmd[keys][by]=is_blue")
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        json(resp).await,
        json!([{"name": "sky", "is_blue": true}, {"name": "sea", "is_blue": true}])
    );
}

#[tokio::test]
async fn an_unknown_query_is_not_supported() {
    let app = spawn_app().await;
    app.post_api(json!({"id": 1, "data": {}})).await;
    let resp = app.get("/api/cmd?id=1&cmd[query]=NOPE").await;
    assert_eq!(resp.status(), 400);
    assert_eq!(json(resp).await, json!({"message": "NOPE not supported"}));
}

#[tokio::test]
async fn client_mistakes_get_a_4xx_with_a_message() {
    let app = spawn_app().await;
    app.post_api(json!({"id": 1, "data": {"colors": 5, "name": "x"}})).await;
    let cases = [
        ("/api", 400),
        ("/api?id=abc", 400),
        ("/api?id=1.5", 400),
        ("/api/cmd?cmd[query]=ONLY", 400),
        ("/api/cmd?id=x&cmd[query]=ONLY", 400),
        ("/api/cmd?id=1", 400),
        ("/api/cmd?id=99&cmd[query]=ONLY&cmd[keys][]=a", 404),
        ("/api/cmd?id=1&cmd[query]=FILTER_BOOL&cmd[keys][key]=colors", 400),
        (
            "/api/cmd?id=1&cmd[query]=FILTER_BOOL&cmd[keys][key]=colors&cmd[keys][by]=b",
            422,
        ),
        (
            "/api/cmd?id=1&cmd[query]=FILTER_BOOL&cmd[keys][key]=absent&cmd[keys][by]=b",
            422,
        ),
    ];
    for (path, status) in cases {
        let resp = app.get(path).await;
        assert_eq!(resp.status(), status, "{path}");
        let body = json(resp).await;
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{path}: {body}"
        );
    }
}

#[tokio::test]
async fn bad_write_bodies_get_a_4xx_with_a_message() {
    let app = spawn_app().await;
    let send = |body: &'static str, content_type: &'static str| {
        app.client
            .post(app.url("/api"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let cases = [
        (
            send(r#"{"id": 1, "data": "#, "application/json").await.expect("sent"),
            400,
        ),
        (send(r#"{"data": {}}"#, "application/json").await.expect("sent"), 400),
        (send(r#"{"id": 1}"#, "application/json").await.expect("sent"), 400),
        (
            send(r#"{"id": "x", "data": {}}"#, "application/json")
                .await
                .expect("sent"),
            400,
        ),
        (send(r#"[1, 2]"#, "application/json").await.expect("sent"), 400),
        (send(r#"{"id": 1, "data": {}}"#, "text/plain").await.expect("sent"), 415),
    ];
    for (i, (resp, status)) in cases.into_iter().enumerate() {
        assert_eq!(resp.status(), status, "case {i}");
        assert!(json(resp).await["message"].is_string(), "case {i}");
    }
    // Nothing was stored by any of them.
    assert_eq!(json(app.get_api("1").await).await["data"], json!(null));
}

#[tokio::test]
async fn anonymous_ids_never_overwrite_a_client_chosen_id() {
    let app = spawn_app().await;
    app.post_api(json!({"id": 5, "data": {"owner": "client"}})).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(json(app.post_api(json!({"id": null, "data": {"owner": "anon"}})).await).await["id"].clone());
    }
    assert!(!ids.contains(&json!(5)), "{ids:?}");
    assert_eq!(json(app.get_api("5").await).await["data"], json!({"owner": "client"}));
}
