//! A model-based test of the v1 document API: random sequences of puts,
//! patches, deletes, reads and listings, with and without preconditions,
//! over a few ids, each step checked against an in-memory model (id ->
//! version and data). The generator is seeded, so a failure names its seed
//! and step and replays with `EXDAAS_MODEL_SEED=<seed>`.

use std::collections::BTreeMap;

use reqwest::{Method, Response};
use serde_json::{json, Map, Value};

use crate::helpers::{doc_path, json, merge_patch, send, spawn_app, TestApp};

const IDS: [&str; 6] = ["a", "b", "k:1", "k:10", "k:2", "Z"];
const SEQUENCES: u64 = 30;
const STEPS: usize = 80;

/// Small deterministic generator (xorshift64), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

#[derive(Debug, Clone)]
enum Cond {
    None,
    /// `If-Match` with this value.
    IfMatch(String),
    /// `If-None-Match: *`.
    IfNoneMatch,
}

#[derive(Debug, Clone)]
enum Op {
    Put {
        id: &'static str,
        data: Value,
        cond: Cond,
    },
    Patch {
        id: &'static str,
        patch: Value,
        if_match: Option<String>,
    },
    Delete {
        id: &'static str,
        if_match: Option<String>,
    },
    Get {
        id: &'static str,
    },
    List {
        limit: usize,
    },
}

/// The model: every live document's version and data.
type Model = BTreeMap<String, (u64, Value)>;

/// What an operation must answer: its status and, for 200 and 201, the
/// document's version and data.
#[derive(Debug, PartialEq)]
struct Expected {
    status: u16,
    doc: Option<(u64, Value)>,
}

fn small_document(rng: &mut Rng) -> Value {
    match rng.below(6) {
        0 => json!({"a": rng.below(3)}),
        1 => json!({"a": rng.below(3), "b": {"c": rng.below(2)}}),
        2 => json!({"b": {"c": rng.below(2), "d": [rng.below(2)]}}),
        3 => json!([rng.below(2)]),
        4 => json!("text"),
        _ => json!(null),
    }
}

fn small_patch(rng: &mut Rng) -> Value {
    match rng.below(8) {
        0 => json!({"a": rng.below(3)}),
        1 => json!({"a": null}),
        2 => json!({"b": {"c": rng.below(2)}}),
        3 => json!({"b": null}),
        4 => json!({"b": {"c": null, "d": [rng.below(2)]}}),
        5 => json!({"e": {"f": {"g": rng.below(2)}}}),
        6 => json!({"a": rng.below(3), "e": null}),
        // Not an object: replaces the document whole.
        _ => json!(rng.below(2)),
    }
}

/// An `If-Match` value: usually the current version, sometimes a stale or
/// future one, sometimes `*`.
fn some_tag(rng: &mut Rng, model: &Model, id: &str) -> String {
    let current = model.get(id).map(|(v, _)| *v);
    match (rng.below(8), current) {
        (0, _) => "*".into(),
        (1..=4, Some(v)) => format!("\"{v}\""),
        _ => format!("\"{}\"", 1 + rng.below(4)),
    }
}

fn random_op(rng: &mut Rng, model: &Model) -> Op {
    let id = rng.pick(&IDS);
    match rng.below(16) {
        0..=2 => Op::Put {
            id,
            data: small_document(rng),
            cond: Cond::None,
        },
        3..=4 => Op::Put {
            id,
            data: small_document(rng),
            cond: Cond::IfMatch(some_tag(rng, model, id)),
        },
        5 => Op::Put {
            id,
            data: small_document(rng),
            cond: Cond::IfNoneMatch,
        },
        6..=7 => Op::Patch {
            id,
            patch: small_patch(rng),
            if_match: None,
        },
        8..=9 => Op::Patch {
            id,
            patch: small_patch(rng),
            if_match: Some(some_tag(rng, model, id)),
        },
        10 => Op::Delete { id, if_match: None },
        11 => Op::Delete {
            id,
            if_match: Some(some_tag(rng, model, id)),
        },
        12..=13 => Op::Get { id },
        _ => Op::List {
            limit: 1 + rng.below(7) as usize,
        },
    }
}

/// RFC 7396, written out again for the model.
fn merge(target: Value, patch: &Value) -> Value {
    let Value::Object(changes) = patch else {
        return patch.clone();
    };
    let mut fields = match target {
        Value::Object(fields) => fields,
        _ => Map::new(),
    };
    for (name, change) in changes {
        if change.is_null() {
            fields.remove(name);
        } else {
            let current = fields.remove(name).unwrap_or(Value::Null);
            fields.insert(name.clone(), merge(current, change));
        }
    }
    Value::Object(fields)
}

fn tag_matches(tag: &str, current: Option<u64>) -> bool {
    match tag {
        "*" => current.is_some(),
        quoted => current.is_some_and(|v| quoted == format!("\"{v}\"")),
    }
}

/// Applies `op` to the model and says what the server must answer.
/// Listings are checked separately.
fn apply(model: &mut Model, op: &Op) -> Expected {
    let refused = Expected { status: 412, doc: None };
    let missing = Expected { status: 404, doc: None };
    match op {
        Op::Put { id, data, cond } => {
            let current = model.get(*id).cloned();
            let allowed = match cond {
                Cond::None => true,
                Cond::IfMatch(tag) => tag_matches(tag, current.as_ref().map(|(v, _)| *v)),
                Cond::IfNoneMatch => current.is_none(),
            };
            if !allowed {
                return refused;
            }
            let (status, version) = match current {
                None => (201, 1),
                Some((v, old)) if old == *data => (200, v),
                Some((v, _)) => (200, v + 1),
            };
            model.insert(id.to_string(), (version, data.clone()));
            Expected {
                status,
                doc: Some((version, data.clone())),
            }
        }
        Op::Patch { id, patch, if_match } => {
            let current = model.get(*id).cloned();
            if if_match
                .as_deref()
                .is_some_and(|tag| !tag_matches(tag, current.as_ref().map(|(v, _)| *v)))
            {
                return refused;
            }
            let Some((v, old)) = current else { return missing };
            let merged = merge(old.clone(), patch);
            let version = if merged == old { v } else { v + 1 };
            model.insert(id.to_string(), (version, merged.clone()));
            Expected {
                status: 200,
                doc: Some((version, merged)),
            }
        }
        Op::Delete { id, if_match } => {
            let current = model.get(*id).map(|(v, _)| *v);
            if if_match.as_deref().is_some_and(|tag| !tag_matches(tag, current)) {
                return refused;
            }
            match model.remove(*id) {
                Some(_) => Expected { status: 204, doc: None },
                None => missing,
            }
        }
        Op::Get { id } => match model.get(*id) {
            Some(doc) => Expected {
                status: 200,
                doc: Some(doc.clone()),
            },
            None => missing,
        },
        Op::List { .. } => Expected { status: 200, doc: None },
    }
}

async fn perform(app: &TestApp, collection: &str, op: &Op) -> Response {
    let with_if_match = |request: reqwest::RequestBuilder, tag: &Option<String>| match tag {
        Some(tag) => request.header("if-match", tag.as_str()),
        None => request,
    };
    match op {
        Op::Put { id, data, cond } => {
            let request = app.request(Method::PUT, &doc_path(collection, id)).json(data);
            send(match cond {
                Cond::None => request,
                Cond::IfMatch(tag) => request.header("if-match", tag.as_str()),
                Cond::IfNoneMatch => request.header("if-none-match", "*"),
            })
            .await
        }
        Op::Patch { id, patch, if_match } => {
            let request = app.request(Method::PATCH, &doc_path(collection, id));
            send(merge_patch(with_if_match(request, if_match), patch)).await
        }
        Op::Delete { id, if_match } => {
            send(with_if_match(
                app.request(Method::DELETE, &doc_path(collection, id)),
                if_match,
            ))
            .await
        }
        Op::Get { id } => app.get_doc(collection, id).await,
        Op::List { limit } => {
            app.get(&format!("/v1/collections/{collection}/docs?limit={limit}"))
                .await
        }
    }
}

/// The model as the listing shows it: (id, version, data) in id order.
fn model_listing(model: &Model) -> Vec<(String, u64, Value)> {
    model
        .iter()
        .map(|(id, (v, data))| (id.clone(), *v, data.clone()))
        .collect()
}

fn listed(items: &Value) -> Vec<(String, u64, Value)> {
    items
        .as_array()
        .expect("items")
        .iter()
        .map(|item| {
            (
                item["id"].as_str().expect("id").to_owned(),
                item["version"].as_u64().expect("version"),
                item["data"].clone(),
            )
        })
        .collect()
}

/// Every page of the collection with `limit`, checked page by page.
async fn check_listing(app: &TestApp, collection: &str, limit: usize, model: &Model, ctx: &str) {
    let expected = model_listing(model);
    let mut got = Vec::new();
    let mut path = format!("/v1/collections/{collection}/docs?limit={limit}");
    loop {
        let resp = app.get(&path).await;
        assert_eq!(resp.status(), 200, "{ctx}: {path}");
        let page = json(resp).await;
        let items = listed(&page["items"]);
        assert!(items.len() <= limit, "{ctx}: page larger than {limit}");
        got.extend(items);
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                assert!(got.len() < expected.len(), "{ctx}: a cursor after the last document");
                path = format!("/v1/collections/{collection}/docs?limit={limit}&cursor={cursor}");
            }
            None => break,
        }
    }
    assert_eq!(got, expected, "{ctx}: listing with limit {limit}");
}

async fn run_sequence(app: &TestApp, seed: u64, collection: &str) {
    let mut rng = Rng::new(seed);
    let mut model = Model::new();
    for step in 0..STEPS {
        let op = random_op(&mut rng, &model);
        let ctx = format!("seed {seed:#x} (EXDAAS_MODEL_SEED={seed}), step {step}: {op:?}");
        let expected = apply(&mut model, &op);
        let resp = perform(app, collection, &op).await;
        let status = resp.status().as_u16();
        let etag = resp
            .headers()
            .get("etag")
            .map(|v| v.to_str().expect("ascii").to_owned());
        let body = resp.bytes().await.expect("body");
        let doc = if matches!(status, 200 | 201) && !matches!(op, Op::List { .. }) {
            let envelope: Value = serde_json::from_slice(&body).expect("JSON envelope");
            let version = envelope["version"].as_u64().expect("version");
            assert_eq!(etag, Some(format!("\"{version}\"")), "{ctx}: ETag");
            assert_eq!(envelope["id"], json!(op_id(&op)), "{ctx}");
            Some((version, envelope["data"].clone()))
        } else {
            None
        };
        let got = Expected { status, doc };
        assert_eq!(got, expected, "{ctx}: answer ({})", String::from_utf8_lossy(&body));

        match op {
            Op::List { limit } => {
                // The answer is the first page; then page through the rest.
                let page: Value = serde_json::from_slice(&body).expect("JSON page");
                let all = model_listing(&model);
                assert_eq!(
                    listed(&page["items"]),
                    all[..limit.min(all.len())].to_vec(),
                    "{ctx}: first page"
                );
                assert_eq!(page["next_cursor"].is_string(), all.len() > limit, "{ctx}: next_cursor");
                check_listing(app, collection, limit, &model, &ctx).await;
            }
            _ => check_listing(app, collection, 100, &model, &ctx).await,
        }
    }
}

fn op_id(op: &Op) -> &'static str {
    match op {
        Op::Put { id, .. } | Op::Patch { id, .. } | Op::Delete { id, .. } | Op::Get { id } => id,
        Op::List { .. } => "",
    }
}

#[tokio::test]
async fn random_operation_sequences_agree_with_a_model() {
    let app = spawn_app().await;
    let seeds: Vec<u64> = match std::env::var("EXDAAS_MODEL_SEED") {
        Ok(seed) => vec![seed.parse().expect("EXDAAS_MODEL_SEED is a number")],
        Err(_) => (0..SEQUENCES)
            .map(|n| 0x9E37_79B9_7F4A_7C15_u64.wrapping_mul(n + 1))
            .collect(),
    };
    for (n, seed) in seeds.into_iter().enumerate() {
        run_sequence(&app, seed, &format!("model{n}")).await;
    }
}
