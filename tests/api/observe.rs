//! What operators watch: `GET /metrics` in Prometheus text format, and
//! traces exported over OTLP/HTTP to a real receiver, continuing the
//! caller's W3C trace.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;

use crate::helpers::{send, spawn_app, spawn_app_with, ServerProcess};

/// The samples of a Prometheus text page: `name{labels}` -> value.
fn samples(page: &str) -> HashMap<String, f64> {
    page.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of every sample of `name` whose labels contain all of `labels`.
fn total(samples: &HashMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| {
            let (metric, rest) = series.split_once('{').unwrap_or((series.as_str(), ""));
            metric == name && labels.iter().all(|l| rest.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test]
async fn metrics_count_requests_cache_use_writes_and_documents() {
    let app = spawn_app().await;
    for id in ["a", "b", "c"] {
        assert_eq!(app.put_doc("things", id, &json!({"id": id})).await.status(), 201);
    }
    // The cache holds what was written: two hits, and one miss for a
    // document that is not there.
    assert_eq!(app.get_doc("things", "a").await.status(), 200);
    assert_eq!(app.get_doc("things", "a").await.status(), 200);
    assert_eq!(app.get_doc("things", "nope").await.status(), 404);
    assert_eq!(app.get("/no/such/route").await.status(), 404);

    let resp = app.get("/metrics").await;
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap_or_default().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let page = resp.text().await.expect("text");
    let s = samples(&page);
    let doc_route = "route=\"/v1/collections/{collection}/docs/{id}\"";
    assert_eq!(
        total(
            &s,
            "exdaas_http_requests_total",
            &["method=\"PUT\"", doc_route, "status=\"201\""]
        ),
        3.0,
        "{page}"
    );
    assert_eq!(
        total(
            &s,
            "exdaas_http_requests_total",
            &["method=\"GET\"", doc_route, "status=\"200\""]
        ),
        2.0
    );
    assert_eq!(
        total(
            &s,
            "exdaas_http_requests_total",
            &["method=\"GET\"", doc_route, "status=\"404\""]
        ),
        1.0
    );
    assert_eq!(
        total(&s, "exdaas_http_requests_total", &["route=\"other\"", "status=\"404\""]),
        1.0
    );
    assert_eq!(
        total(
            &s,
            "exdaas_http_request_duration_seconds_count",
            &["method=\"PUT\"", doc_route]
        ),
        3.0
    );
    assert_eq!(total(&s, "exdaas_cache_hits_total", &[]), 2.0, "{page}");
    assert_eq!(total(&s, "exdaas_cache_misses_total", &[]), 1.0, "{page}");
    assert_eq!(total(&s, "exdaas_cache_entries", &[]), 3.0, "{page}");
    assert!(total(&s, "exdaas_cache_bytes", &[]) > 0.0);
    // Three writes, each acknowledged after a commit of its shard's writer.
    assert_eq!(total(&s, "exdaas_writer_batch_size_sum", &[]), 3.0, "{page}");
    assert_eq!(
        total(&s, "exdaas_writer_commit_duration_seconds_count", &[]),
        total(&s, "exdaas_writer_batch_size_count", &[])
    );
    assert_eq!(total(&s, "exdaas_shard_documents", &[]), 3.0, "{page}");
    for shard in 0..4 {
        let label = format!("shard=\"{shard}\"");
        assert_eq!(s.get(&format!("exdaas_shard_up{{{label}}}")), Some(&1.0), "{page}");
        assert_eq!(
            s.get(&format!("exdaas_writer_queue_depth{{{label}}}")),
            Some(&0.0),
            "{page}"
        );
    }
    assert!(!page.contains("things"), "no collection names in the metrics");
    app.stop().await;
}

#[tokio::test]
async fn metrics_are_open_like_the_probes_when_keys_are_configured() {
    let app = spawn_app_with(&[("EXDAAS_API_KEYS", "read:reader-key-0123456789")]).await;
    assert_eq!(app.get("/v1/collections/things/docs/a").await.status(), 401);
    let resp = app.get("/metrics").await;
    assert_eq!(resp.status(), 200);
    let page = resp.text().await.expect("text");
    let s = samples(&page);
    assert_eq!(
        total(&s, "exdaas_http_requests_total", &["status=\"401\""]),
        1.0,
        "{page}"
    );
    app.stop().await;
}

/// A minimal OTLP/HTTP receiver: every `POST /v1/traces` body, decoded.
struct Receiver {
    endpoint: String,
    spans: tokio::sync::mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
    collected: Vec<Span>,
}

impl Receiver {
    async fn start() -> Self {
        use poem::listener::{Acceptor, Listener};
        use poem::{handler, post, web::Data, EndpointExt, Route};

        #[handler]
        async fn traces(
            body: poem::Body,
            sink: Data<&tokio::sync::mpsc::UnboundedSender<ExportTraceServiceRequest>>,
        ) -> poem::Response {
            let bytes = body.into_bytes().await.unwrap_or_default();
            match ExportTraceServiceRequest::decode(bytes) {
                Ok(request) => {
                    let _ = sink.send(request);
                    poem::Response::builder()
                        .content_type("application/x-protobuf")
                        .body(Vec::new())
                }
                Err(_) => poem::Response::builder()
                    .status(poem::http::StatusCode::BAD_REQUEST)
                    .finish(),
            }
        }

        let (sink, spans) = tokio::sync::mpsc::unbounded_channel();
        let acceptor = poem::listener::TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .expect("receiver binds");
        let port = acceptor.local_addr()[0]
            .as_socket_addr()
            .expect("a socket address")
            .port();
        let app = Route::new().at("/v1/traces", post(traces)).data(sink);
        tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
        Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            spans,
            collected: Vec::new(),
        }
    }

    /// Waits until a span satisfying `wanted` has arrived.
    async fn span(&mut self, what: &str, wanted: impl Fn(&Span) -> bool) -> Span {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(span) = self.collected.iter().find(|s| wanted(s)) {
                return span.clone();
            }
            let names: Vec<&str> = self.collected.iter().map(|s| s.name.as_str()).collect();
            let request = tokio::time::timeout_at(deadline, self.spans.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} span arrived; got {names:?}"))
                .expect("receiver runs");
            for resource in request.resource_spans {
                for scope in resource.scope_spans {
                    self.collected.extend(scope.spans);
                }
            }
        }
    }
}

fn attribute(span: &Span, key: &str) -> Option<AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.clone())
}

#[tokio::test]
async fn traces_reach_an_otlp_receiver_and_continue_the_callers_trace() {
    let mut receiver = Receiver::start().await;
    let data = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(
        data.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let resp = send(
        client
            .put(server.url("/v1/collections/things/docs/a"))
            .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
            .json(&json!({"traced": true})),
    )
    .await;
    assert_eq!(resp.status(), 201);
    for _ in 0..2 {
        let resp = send(client.get(server.url("/v1/collections/things/docs/a"))).await;
        assert_eq!(resp.status(), 200);
    }

    let put = receiver
        .span("PUT request", |s| {
            s.name == "PUT /v1/collections/{collection}/docs/{id}"
        })
        .await;
    assert_eq!(hex(&put.trace_id), trace_id, "the caller's trace goes on");
    assert_eq!(hex(&put.parent_span_id), caller_span);
    assert_eq!(put.kind, 2, "a server span");
    assert_eq!(
        attribute(&put, "http.request.method"),
        Some(AnyValue::StringValue("PUT".into()))
    );
    assert_eq!(
        attribute(&put, "http.route"),
        Some(AnyValue::StringValue("/v1/collections/{collection}/docs/{id}".into()))
    );
    assert_eq!(
        attribute(&put, "url.path"),
        Some(AnyValue::StringValue("/v1/collections/things/docs/a".into()))
    );
    assert_eq!(
        attribute(&put, "http.response.status_code"),
        Some(AnyValue::IntValue(201))
    );

    let write = receiver
        .span("shard write", |s| {
            s.name == "shard write" && s.parent_span_id == put.span_id
        })
        .await;
    assert_eq!(write.trace_id, put.trace_id);
    assert!(
        matches!(attribute(&write, "exdaas.batch.size"), Some(AnyValue::IntValue(n)) if n >= 1),
        "{:?}",
        write.attributes
    );
    assert!(matches!(
        attribute(&write, "exdaas.shard"),
        Some(AnyValue::IntValue(0..=3))
    ));

    // Two reads, each its own trace: the PUT left the document in the cache.
    let get = receiver
        .span("GET request", |s| {
            s.name == "GET /v1/collections/{collection}/docs/{id}"
        })
        .await;
    assert_ne!(get.trace_id, put.trace_id, "no traceparent: a new trace");
    assert_eq!(attribute(&get, "exdaas.cache.hit"), Some(AnyValue::BoolValue(true)));
    assert_eq!(
        attribute(&get, "http.response.status_code"),
        Some(AnyValue::IntValue(200))
    );
    drop(server);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
