//! `POST /v1/collections/{c}/query`: filters, sorts, projections, pages and
//! counts, checked against an in-memory evaluation written apart from the
//! server's, with writes going on meanwhile.

use std::cmp::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::helpers::{ids, json, query, spawn_app, spawn_app_with, TestApp};

#[tokio::test]
async fn a_query_filters_sorts_projects_pages_and_counts() {
    let app = spawn_app().await;
    let people = [
        (
            "ann",
            json!({"name": "Ann", "age": 34, "city": "Oslo", "tags": ["admin"]}),
        ),
        ("bob", json!({"name": "Bob", "age": 19, "city": "Oslo"})),
        (
            "cy",
            json!({"name": "Cy", "age": 52, "city": "Bergen", "tags": ["admin", "ops"]}),
        ),
        ("dee", json!({"name": "Dee", "age": null, "city": "Oslo"})),
        (
            "eve",
            json!({"name": "Eve", "city": "Oslo", "address": {"zip": "0150"}}),
        ),
        ("fay", json!({"name": "Fay", "age": "41", "city": "Oslo"})),
    ];
    for (id, data) in &people {
        assert_eq!(app.put_doc("people", id, data).await.status(), 201);
    }

    let (status, page) = query(
        &app,
        "people",
        &json!({"filter": {"city": "Oslo", "age": {"$gte": 18}}, "sort": ["-age"], "fields": ["name"], "count": true}),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    // "41" is a string: it is not compared with 18. Dee's null and Eve's
    // missing age are neither.
    assert_eq!(ids(&page), vec!["ann", "bob"]);
    assert_eq!(page["items"][0]["data"], json!({"name": "Ann"}), "projected");
    assert_eq!(page["items"][0]["version"], 1);
    assert_eq!(page["count"], 2);
    assert_eq!(page["next_cursor"], Value::Null);

    let cases = [
        (json!({"age": null}), vec!["dee"]),
        (json!({"age": {"$exists": false}}), vec!["eve"]),
        (json!({"tags": {"$contains": "ops"}}), vec!["cy"]),
        (json!({"name": {"$prefix": "E"}}), vec!["eve"]),
        (json!({"address.zip": "0150"}), vec!["eve"]),
        (json!({"city": {"$nin": ["Oslo"]}}), vec!["cy"]),
        (
            json!({"$or": [{"age": {"$lt": 20}}, {"age": "41"}]}),
            vec!["bob", "fay"],
        ),
        (json!({"$not": {"city": "Oslo"}}), vec!["cy"]),
    ];
    for (filter, expected) in cases {
        let (status, page) = query(&app, "people", &json!({ "filter": filter })).await;
        assert_eq!(status, 200, "{filter}: {page}");
        assert_eq!(ids(&page), expected, "{filter}");
    }

    // Pages of two, sorted by age ascending: missing, null, numbers, strings.
    let mut seen = Vec::new();
    let mut body = json!({"sort": ["age"], "limit": 2, "explain": true});
    loop {
        let (status, page) = query(&app, "people", &body).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["explain"]["plan"], "scan");
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(cursor) => body["cursor"] = json!(cursor),
            None => break,
        }
    }
    assert_eq!(seen, vec!["eve", "dee", "bob", "ann", "cy", "fay"]);
    app.stop().await;
}

#[tokio::test]
async fn mistakes_are_refused_with_400_naming_the_part() {
    let app = spawn_app().await;
    for (body, part) in [
        (json!({"filter": {"age": {"$gt": [1]}}}), "filter.age.$gt"),
        (json!({"filter": {"age": {"$between": 1}}}), "filter.age.$between"),
        (json!({"filter": {"$or": {}}}), "filter.$or"),
        (json!({"filter": 3}), "filter"),
        (json!({"sort": ["-"]}), "sort[0]"),
        (json!({"fields": [1]}), "fields[0]"),
        (json!({"limit": 0}), "limit"),
        (json!({"cursor": "nothex"}), "cursor"),
        (json!({"select": ["a"]}), "select"),
    ] {
        let (status, problem) = query(&app, "c", &body).await;
        assert_eq!(status, 400, "{body}: {problem}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(part), "{body}: {detail}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_collection_larger_than_a_query_scans_is_refused() {
    let app = spawn_app_with(&[("EXDAAS_QUERY_MAX_SCAN", "20")]).await;
    for i in 0..20 {
        app.put_doc("small", &format!("d{i}"), &json!({"n": i})).await;
        app.put_doc("big", &format!("d{i}"), &json!({"n": i})).await;
    }
    app.put_doc("big", "d20", &json!({"n": 20})).await;
    let (status, page) = query(&app, "small", &json!({"filter": {"n": {"$gte": 10}}, "count": true})).await;
    assert_eq!((status, page["count"].clone()), (200, json!(10)), "{page}");
    let (status, problem) = query(&app, "big", &json!({"filter": {"n": 1}})).await;
    assert_eq!(status, 422, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("EXDAAS_QUERY_MAX_SCAN")),
        "{problem}"
    );
    app.stop().await;
}

// ---- the model ----

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A small value for field `a` (several types, so types meet).
fn random_scalar(rng: &mut Rng) -> Value {
    match rng.below(6) {
        0 => json!(rng.below(10)),
        1 => json!(rng.below(10) as f64 + 0.5),
        2 => json!(["x", "y", "z", "xy"][rng.below(4) as usize]),
        3 => json!(rng.below(2) == 0),
        4 => Value::Null,
        _ => json!(-(rng.below(5) as i64)),
    }
}

fn random_doc(rng: &mut Rng) -> Value {
    let mut doc = Map::new();
    if rng.below(5) != 0 {
        doc.insert("a".into(), random_scalar(rng));
    }
    if rng.below(3) != 0 {
        doc.insert("b".into(), json!(rng.below(4)));
    }
    if rng.below(2) == 0 {
        let tags: Vec<Value> = (0..rng.below(3))
            .map(|_| json!(["p", "q", "r"][rng.below(3) as usize]))
            .collect();
        doc.insert("tags".into(), Value::Array(tags));
    }
    if rng.below(2) == 0 {
        doc.insert("n".into(), json!({"x": random_scalar(rng)}));
    }
    Value::Object(doc)
}

fn random_filter(rng: &mut Rng, depth: u32) -> Value {
    let field = ["a", "b", "n.x", "tags"][rng.below(4) as usize];
    match rng.below(if depth < 2 { 12 } else { 9 }) {
        0 => json!({ field: random_scalar(rng) }),
        1 => json!({ field: {"$ne": random_scalar(rng)} }),
        2 => {
            let op = ["$gt", "$gte", "$lt", "$lte"][rng.below(4) as usize];
            json!({ field: { op: rng.below(10) } })
        }
        3 => {
            let bound = ["x", "y", "xz"][rng.below(3) as usize];
            json!({ field: {"$lt": bound} })
        }
        4 => json!({ field: {"$in": [random_scalar(rng), random_scalar(rng)]} }),
        5 => json!({ field: {"$nin": [random_scalar(rng)]} }),
        6 => json!({ field: {"$exists": rng.below(2) == 0} }),
        7 => json!({ field: {"$prefix": "x"} }),
        8 => {
            let tag = ["p", "q"][rng.below(2) as usize];
            json!({ "tags": {"$contains": tag} })
        }
        9 => json!({"$and": [random_filter(rng, depth + 1), random_filter(rng, depth + 1)]}),
        10 => json!({"$or": [random_filter(rng, depth + 1), random_filter(rng, depth + 1)]}),
        _ => json!({"$not": random_filter(rng, depth + 1)}),
    }
}

/// The model's reading of a path.
fn at<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(doc, |v, key| v.get(key))
}

fn rank(v: Option<&Value>) -> u8 {
    match v {
        None => 0,
        Some(Value::Null) => 1,
        Some(Value::Bool(_)) => 2,
        Some(Value::Number(_)) => 3,
        Some(Value::String(_)) => 4,
        Some(Value::Array(_)) => 5,
        Some(Value::Object(_)) => 6,
    }
}

/// Same-type order of scalars, `None` across types.
fn cmp_same(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        (Value::Array(_), Value::Array(_)) | (Value::Object(_), Value::Object(_)) => {
            Some(a.to_string().cmp(&b.to_string()))
        }
        _ => None,
    }
}

fn equal(a: Option<&Value>, b: &Value) -> bool {
    a.and_then(|a| cmp_same(a, b)) == Some(Ordering::Equal)
}

fn model_matches(filter: &Value, doc: &Value) -> bool {
    filter
        .as_object()
        .expect("object")
        .iter()
        .all(|(key, cond)| match key.as_str() {
            "$and" => cond.as_array().expect("list").iter().all(|f| model_matches(f, doc)),
            "$or" => cond.as_array().expect("list").iter().any(|f| model_matches(f, doc)),
            "$not" => !model_matches(cond, doc),
            path => {
                let value = at(doc, path);
                match cond.as_object().filter(|o| o.keys().all(|k| k.starts_with('$'))) {
                    None => equal(value, cond),
                    Some(ops) => ops.iter().all(|(op, operand)| match op.as_str() {
                        "$ne" => !equal(value, operand),
                        "$in" => operand.as_array().expect("list").iter().any(|o| equal(value, o)),
                        "$nin" => !operand.as_array().expect("list").iter().any(|o| equal(value, o)),
                        "$exists" => value.is_some() == operand.as_bool().expect("bool"),
                        "$prefix" => value
                            .and_then(Value::as_str)
                            .is_some_and(|s| s.starts_with(operand.as_str().expect("str"))),
                        "$contains" => value
                            .and_then(Value::as_array)
                            .is_some_and(|items| items.iter().any(|i| equal(Some(i), operand))),
                        cmp => {
                            let Some(order) = value.and_then(|v| match (v, operand) {
                                (Value::Number(_), Value::Number(_)) | (Value::String(_), Value::String(_)) => {
                                    cmp_same(v, operand)
                                }
                                _ => None,
                            }) else {
                                return false;
                            };
                            match cmp {
                                "$gt" => order == Ordering::Greater,
                                "$gte" => order != Ordering::Less,
                                "$lt" => order == Ordering::Less,
                                "$lte" => order != Ordering::Greater,
                                other => panic!("the model has no {other}"),
                            }
                        }
                    }),
                }
            }
        })
}

fn model_order(sort: &[(String, bool)], a: (&str, &Value), b: (&str, &Value)) -> Ordering {
    for (path, descending) in sort {
        let (x, y) = (at(a.1, path), at(b.1, path));
        let order = rank(x).cmp(&rank(y)).then_with(|| match (x, y) {
            (Some(x), Some(y)) => cmp_same(x, y).unwrap_or(Ordering::Equal),
            _ => Ordering::Equal,
        });
        let order = if *descending { order.reverse() } else { order };
        if order != Ordering::Equal {
            return order;
        }
    }
    a.0.cmp(b.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_queries_agree_with_an_in_memory_evaluation_while_writes_go_on() {
    let app = spawn_app().await;
    let used = random_queries_agree_with_the_model(&app, 0x9e37_79b9_7f4a_7c15, false).await;
    assert_eq!(used, 0, "no index, no index used");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_queries_through_indexes_agree_with_the_same_evaluation() {
    let app = spawn_app().await;
    // Declared before the documents (kept by the writes) and after some
    // of them (covered by the build): both ways meet in the answers.
    for (name, fields) in [("by_a", vec!["a"]), ("by_b_a", vec!["b", "a"])] {
        let resp = app.request(reqwest::Method::PUT, &format!("/v1/collections/m/indexes/{name}"));
        assert_eq!(
            crate::helpers::send(resp.json(&json!({ "fields": fields })))
                .await
                .status(),
            201
        );
    }
    let used = random_queries_agree_with_the_model(&app, 0x2545_f491_4f6c_dd1d, true).await;
    assert!(used >= 10, "only {used} of the queries ran on an index");
    app.stop().await;
}

/// Stores random documents in `m` (declaring two more indexes halfway,
/// if `indexed`), then checks random queries, page by page, against the
/// model while writes go on; answers how many of them ran on an index.
async fn random_queries_agree_with_the_model(app: &TestApp, seed: u64, indexed: bool) -> usize {
    let mut rng = Rng(seed);
    let mut docs: Vec<(String, Value)> = Vec::new();
    for i in 0..240 {
        let id = format!("k{:03}", (i * 7919) % 1000);
        let doc = random_doc(&mut rng);
        assert!(app.put_doc("m", &id, &doc).await.status().is_success());
        docs.retain(|(d, _)| d != &id);
        docs.push((id, doc));
        if indexed && i == 120 {
            for (name, fields) in [("by_nx", vec!["n.x"]), ("by_tags_b", vec!["tags", "b"])] {
                let resp = app.request(reqwest::Method::PUT, &format!("/v1/collections/m/indexes/{name}"));
                let _ = crate::helpers::send(resp.json(&json!({ "fields": fields }))).await;
            }
        }
    }
    for index in json(app.get("/v1/collections/m/indexes").await).await["indexes"]
        .as_array()
        .expect("indexes")
    {
        crate::indexes::wait_ready(app, "m", index["name"].as_str().expect("name")).await;
    }
    let mut used = 0;
    // Meanwhile: writes to another collection, and changes of a field no
    // query reads to this one's documents.
    let writer = {
        let app_url = app.url("");
        let ids: Vec<String> = docs.iter().map(|(id, _)| id.clone()).collect();
        let bodies: Vec<Value> = docs.iter().map(|(_, d)| d.clone()).collect();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for round in 0..40u64 {
                for (i, (id, body)) in ids.iter().zip(&bodies).enumerate().take(10) {
                    let mut body = body.clone();
                    body["z"] = json!(round);
                    let _ = client
                        .put(format!("{app_url}/v1/collections/m/docs/{id}"))
                        .json(&body)
                        .send()
                        .await;
                    let _ = client
                        .put(format!("{app_url}/v1/collections/other/docs/o{i}"))
                        .json(&json!({"a": round}))
                        .send()
                        .await;
                }
            }
        })
    };

    for case in 0..60 {
        let filter = random_filter(&mut rng, 0);
        let sort: Vec<(String, bool)> = (0..rng.below(3))
            .map(|_| {
                (
                    ["a", "b", "n.x", "tags"][rng.below(4) as usize].to_owned(),
                    rng.below(2) == 0,
                )
            })
            .collect();
        let mut expected: Vec<&(String, Value)> = docs.iter().filter(|(_, d)| model_matches(&filter, d)).collect();
        expected.sort_by(|x, y| model_order(&sort, (&x.0, &x.1), (&y.0, &y.1)));
        let expected: Vec<String> = expected.iter().map(|(id, _)| id.clone()).collect();

        let sort_spec: Vec<String> = sort
            .iter()
            .map(|(p, desc)| if *desc { format!("-{p}") } else { p.clone() })
            .collect();
        let limit = 1 + rng.below(40);
        let counted = rng.below(2) == 0;
        let mut body = json!({"filter": filter, "sort": sort_spec, "limit": limit, "count": counted, "fields": ["a"], "explain": true});
        let mut got = Vec::new();
        for page_number in 0..1000 {
            let (status, page) = query(app, "m", &body).await;
            assert_eq!(status, 200, "case {case}: {body}: {page}");
            if counted {
                assert_eq!(page["count"], expected.len(), "case {case}: {body}");
            }
            if page_number == 0 && page["explain"]["plan"] == "index" {
                used += 1;
            }
            for item in page["items"].as_array().expect("items") {
                let id = item["id"].as_str().expect("id");
                let doc = &docs.iter().find(|(d, _)| d == id).expect("a known id").1;
                let projected = match doc.get("a") {
                    Some(a) => json!({ "a": a }),
                    None => json!({}),
                };
                assert_eq!(item["data"], projected, "case {case}: {id}");
                got.push(id.to_owned());
            }
            match page["next_cursor"].as_str() {
                Some(cursor) => body["cursor"] = json!(cursor),
                None => break,
            }
        }
        assert_eq!(got, expected, "case {case}: {body}");
    }
    writer.await.expect("the writer ran");
    used
}

// ---- costly queries cannot freeze the server ----

const ADMIN: &str = "admin-key-0123456789";
/// A read key limited to `users`, as in the security review.
const USERS_READER: &str = "users-reader-0123456789";
const KEYS: &str = "admin:admin-key-0123456789;read:users-reader-0123456789:users";

/// The review's query (133 KB, inside every documented bound): 127
/// alternatives, each asking whether `profile` is one of 256 empty objects.
fn costly_query() -> Value {
    let alternatives = vec![json!({"profile": {"$in": vec![json!({}); 256]}}); 127];
    json!({"filter": {"$or": alternatives}, "limit": 1})
}

/// An object of about `bytes` bytes of JSON.
fn profile(bytes: usize, seed: usize) -> Value {
    let fields: Map<String, Value> = (0..bytes.div_ceil(100))
        .map(|i| (format!("f{i:05}"), json!(format!("{seed:08}{}", "x".repeat(80)))))
        .collect();
    Value::Object(fields)
}

/// Stores `docs` in `collection` through one import.
async fn import(app: &TestApp, collection: &str, docs: impl IntoIterator<Item = (String, Value)>) {
    let mut lines = String::new();
    let mut count = 0;
    for (id, data) in docs {
        lines.push_str(&json!({"id": id, "data": data}).to_string());
        lines.push('\n');
        count += 1;
    }
    let resp = crate::helpers::send(
        app.request(reqwest::Method::POST, &format!("/v1/collections/{collection}/import"))
            .bearer_auth(ADMIN)
            .header("content-type", "application/x-ndjson")
            .body(lines),
    )
    .await;
    assert_eq!(json(resp).await["imported"], count);
}

/// A query with `key`: its status, body and how long it took.
async fn timed_query(app: &TestApp, key: &str, collection: &str, body: &Value) -> (u16, Value, Duration) {
    let started = Instant::now();
    let resp = crate::helpers::send(
        app.request(reqwest::Method::POST, &format!("/v1/collections/{collection}/query"))
            .bearer_auth(key)
            .json(body),
    )
    .await;
    let status = resp.status().as_u16();
    let body = json(resp).await;
    (status, body, started.elapsed())
}

/// The review's documents: one profile of 480 KB, one empty (the only
/// match), and `small` more of about 700 bytes.
async fn review_documents(app: &TestApp, small: usize) {
    import(
        app,
        "users",
        [
            ("big".to_owned(), json!({"profile": profile(480_000, 0)})),
            ("empty".to_owned(), json!({"profile": {}})),
        ],
    )
    .await;
    import(
        app,
        "users",
        (0..small).map(|i| (format!("u{i:05}"), json!({"profile": profile(700, i)}))),
    )
    .await;
}

/// Generous for a debug build: the review measured 34 s (one large
/// document) and 98 s (5,000 small ones) on a release build.
const QUICK: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_costly_filter_over_one_large_document_answers_quickly() {
    let app = spawn_app_with(&[("EXDAAS_API_KEYS", KEYS)]).await;
    review_documents(&app, 0).await;
    let (status, page, took) = timed_query(&app, USERS_READER, "users", &costly_query()).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids(&page), vec!["empty"]);
    assert!(took < QUICK, "the query took {took:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_costly_filter_over_thousands_of_small_documents_answers_quickly() {
    let app = spawn_app_with(&[("EXDAAS_API_KEYS", KEYS)]).await;
    review_documents(&app, 5000).await;
    let mut body = costly_query();
    body["count"] = json!(true);
    let (status, page, took) = timed_query(&app, USERS_READER, "users", &body).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        (ids(&page), page["count"].clone()),
        (vec!["empty".to_owned()], json!(1))
    );
    assert!(took < QUICK, "the query took {took:?}");
    app.stop().await;
}

/// How long `path` took to answer 200 with `key`.
async fn time_get(app: &TestApp, key: &str, path: &str) -> Duration {
    let started = Instant::now();
    let resp = crate::helpers::send(app.request(reqwest::Method::GET, path).bearer_auth(key)).await;
    assert_eq!(resp.status(), 200, "{path}");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_and_other_reads_answer_while_costly_queries_run() {
    let app = spawn_app_with(&[("EXDAAS_API_KEYS", KEYS)]).await;
    review_documents(&app, 5000).await;
    import(&app, "orders", [("o1".to_owned(), json!({"total": 3}))]).await;
    // As many costly queries as the runtime has threads.
    let running: Vec<_> = (0..2)
        .map(|_| {
            let (client, url) = (app.client.clone(), app.url("/v1/collections/users/query"));
            tokio::spawn(async move {
                let mut body = costly_query();
                body["count"] = json!(true);
                let resp = client.post(url).bearer_auth(USERS_READER).json(&body).send().await;
                resp.expect("answered").status().as_u16()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut checks = 0;
    while checks == 0 || running.iter().any(|q| !q.is_finished()) {
        let health = time_get(&app, ADMIN, "/healthz").await;
        let other = time_get(&app, ADMIN, "/v1/collections/orders/docs/o1").await;
        assert!(
            health < Duration::from_secs(1) && other < Duration::from_secs(1),
            "/healthz took {health:?}, another collection's read {other:?}"
        );
        checks += 1;
    }
    for query in running {
        assert_eq!(query.await.expect("the query ran"), 200);
    }
    app.stop().await;
}

/// A counter of `/metrics`.
async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = crate::helpers::send(app.request(reqwest::Method::GET, "/metrics"))
        .await
        .text()
        .await
        .expect("metrics");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_whose_client_goes_away_stops_its_work() {
    // Pages large enough that one evaluation holds every document: only
    // the check between documents can stop it early.
    let app = spawn_app_with(&[("EXDAAS_API_KEYS", KEYS), ("EXDAAS_MAX_PAGE_BYTES", "268435456")]).await;
    const DOCS: usize = 60;
    const BYTES: usize = 900_000;
    // Written as text: building them as values is slow on a debug build.
    let field = format!("\"{}\"", "x".repeat(90));
    let mut lines = String::new();
    for i in 0..DOCS {
        let fields: Vec<String> = (0..BYTES / 100).map(|f| format!("\"f{f:05}\":{field}")).collect();
        lines.push_str(&format!(
            "{{\"id\":\"u{i:02}\",\"data\":{{\"profile\":{{{}}}}}}}\n",
            fields.join(",")
        ));
    }
    let resp = crate::helpers::send(
        app.request(reqwest::Method::POST, "/v1/collections/users/import")
            .bearer_auth(ADMIN)
            .header("content-type", "application/x-ndjson")
            .body(lines),
    )
    .await;
    assert_eq!(json(resp).await["imported"], DOCS);
    import(&app, "orders", [("o1".to_owned(), json!({"total": 3}))]).await;

    // Two costly queries, their clients gone once the work has begun.
    let before = metric(&app, "exdaas_query_work_units_total").await;
    // Over raw connections, so hanging up is a plain close.
    let body = costly_query().to_string();
    let request = format!(
        "POST /v1/collections/users/query HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {USERS_READER}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut queries = Vec::new();
    for _ in 0..2 {
        let mut socket = tokio::net::TcpStream::connect(&address).await.expect("connected");
        tokio::io::AsyncWriteExt::write_all(&mut socket, request.as_bytes())
            .await
            .expect("sent");
        queries.push(socket);
    }
    let started = Instant::now();
    while metric(&app, "exdaas_query_work_units_total").await == before {
        assert!(started.elapsed() < Duration::from_secs(30), "the queries never began");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(queries);

    // The server is free at once...
    for _ in 0..3 {
        let health = time_get(&app, ADMIN, "/healthz").await;
        let other = time_get(&app, ADMIN, "/v1/collections/orders/docs/o1").await;
        assert!(
            health < Duration::from_secs(1) && other < Duration::from_secs(1),
            "/healthz took {health:?}, another collection's read {other:?}"
        );
    }
    // ...and the work stops well short of reading every document twice.
    let mut done = metric(&app, "exdaas_query_work_units_total").await;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = metric(&app, "exdaas_query_work_units_total").await;
        if now == done {
            break;
        }
        done = now;
    }
    let whole = (2 * DOCS * BYTES) as f64;
    assert!(
        done - before < whole / 2.0,
        "{} units of work of about {whole}",
        done - before
    );
    assert_eq!(metric(&app, "exdaas_queries_abandoned_total").await, 2.0);
    app.stop().await;
}

#[tokio::test]
async fn a_query_past_its_work_budget_is_refused_naming_the_bound() {
    let app = spawn_app_with(&[("EXDAAS_QUERY_MAX_WORK", "200000")]).await;
    // 40 documents of about 10 KB: 400 KB to read, twice the budget.
    for i in 0..40 {
        let doc = json!({"n": i, "profile": profile(10_000, i)});
        assert_eq!(app.put_doc("big", &format!("d{i:02}"), &doc).await.status(), 201);
    }
    let (status, problem) = query(&app, "big", &json!({"filter": {"n": 3}})).await;
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert_eq!(status, 422, "{detail}");
    assert!(
        detail.contains("200000") && detail.contains("EXDAAS_QUERY_MAX_WORK") && detail.contains("\"n\""),
        "names the bound, the setting and the index that fits: {detail}"
    );
    // A smaller page does not make less work.
    let (status, _) = query(&app, "big", &json!({"filter": {"n": 3}, "limit": 1, "fields": ["n"]})).await;
    assert_eq!(status, 422);
    // A query within the budget answers.
    for i in 0..5 {
        app.put_doc("small", &format!("s{i}"), &json!({"n": i})).await;
    }
    let (status, page) = query(&app, "small", &json!({"filter": {"n": 3}})).await;
    assert_eq!((status, ids(&page)), (200, vec!["s3".to_owned()]), "{page}");
    app.stop().await;
}
