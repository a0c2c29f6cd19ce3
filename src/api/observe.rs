//! What every request leaves behind for operators: a count and a latency in
//! the metrics, by route and status, and, when traces are exported, a span
//! with HTTP semantic-convention attributes, continuing the caller's trace.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use poem::PathPattern;
use poem::{Endpoint, IntoResponse, Request, Response};
use tracing::field::Empty;
use tracing::Instrument;

use crate::metrics::{Metrics, RouteMetrics};

/// The route label of a request no route took (an unknown path, or a 401
/// answered before routing).
const UNROUTED: &str = "other";

/// Every route of the OpenAPI document, by the pattern poem's router
/// reports for it (`/v1/collections/:param0`), with its name as the document
/// writes it (`/v1/collections/{collection}`) and its request metrics.
#[derive(Debug)]
pub struct Routes {
    known: HashMap<String, RouteMetrics>,
    unrouted: RouteMetrics,
}

impl Routes {
    /// Every path of the OpenAPI document.
    pub fn from_spec(spec: &super::spec::Spec, metrics: &Metrics) -> Self {
        let known = spec
            .templates()
            .map(|template| {
                let mut next = 0;
                let pattern: Vec<String> = template
                    .split('/')
                    .map(|part| {
                        if part.starts_with('{') && part.ends_with('}') {
                            next += 1;
                            format!(":param{}", next - 1)
                        } else {
                            part.to_owned()
                        }
                    })
                    .collect();
                (pattern.join("/"), metrics.route(template))
            })
            .collect();
        Self {
            known,
            unrouted: metrics.route(UNROUTED),
        }
    }

    /// The route poem matched as `pattern` (`None`: no route), if the
    /// document lists it.
    fn find(&self, pattern: Option<&str>) -> Option<&RouteMetrics> {
        match pattern {
            None | Some("") => Some(&self.unrouted),
            Some(pattern) => self.known.get(pattern),
        }
    }
}

/// The outermost layer: times and counts every request, and opens its span.
pub struct Observe<E> {
    next: E,
    metrics: Arc<Metrics>,
    routes: Arc<Routes>,
}

impl<E> Observe<E> {
    pub fn new(next: E, metrics: Arc<Metrics>, routes: Arc<Routes>) -> Self {
        Self { next, metrics, routes }
    }
}

impl<E: Endpoint> Endpoint for Observe<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        observe(&self.next, req, &self.metrics, &self.routes).await
    }
}

async fn observe<E: Endpoint>(next: &E, req: Request, metrics: &Metrics, routes: &Routes) -> poem::Result<Response> {
    let started = Instant::now();
    let method = req.method().clone();
    // Disabled (and nearly free) unless a trace exporter is installed.
    let span = tracing::debug_span!(
        target: "exdaas::trace::http",
        "HTTP request",
        otel.name = method.as_str(),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method.as_str(),
        url.path = req.uri().path(),
        url.query = req.uri().query(),
        http.route = Empty,
        http.response.status_code = Empty,
        user_agent.original = req.headers().get("user-agent").and_then(|v| v.to_str().ok()),
        client.address = req.remote_addr().as_socket_addr().map(|a| a.ip().to_string()),
        exdaas.cache.hit = Empty,
    );
    if !span.is_disabled() {
        crate::telemetry::continue_trace(&span, &HeaderExtractor(req.headers()));
    }
    let resp = match next.call(req).instrument(span.clone()).await {
        Ok(resp) => resp.into_response(),
        Err(err) => err.into_response(),
    };
    let pattern = resp.data::<PathPattern>().map(|p| &*p.0);
    let status = resp.status();
    let route = match routes.find(pattern) {
        Some(route) => {
            route.observe(method.as_str(), status.as_u16(), started.elapsed());
            route.name()
        }
        // Routes outside the document: Swagger UI and the spec itself.
        None => {
            let route = pattern.unwrap_or(UNROUTED);
            metrics.observe_request(method.as_str(), route, status.as_str(), started.elapsed());
            route
        }
    };
    if !span.is_disabled() {
        crate::telemetry::rename(&span, format!("{method} {route}"));
        span.record("http.route", route);
        span.record("http.response.status_code", i64::from(status.as_u16()));
        if status.is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
    }
    Ok(resp)
}

/// Reads W3C trace context (`traceparent`, `tracestate`) from request
/// headers, for [`crate::telemetry::continue_trace`].
struct HeaderExtractor<'a>(&'a poem::http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
