//! The HTTP layer: the original API, the v1 API and health checks, documented
//! with OpenAPI (Swagger UI at `/docs`, the spec at `/openapi.json`). It knows
//! the store only through [`Store`]'s methods; no SQL up here.

mod admin;
pub use admin::Backups;
pub mod auth;
mod brackets;
mod collections;
mod conditional;
mod cors;
mod counts;
mod docs;
pub mod error;
mod feed;
mod followers;
mod grant;
mod health;
mod indexes;
mod legacy;
mod observe;
mod params;
mod payload;
mod query;
mod schemas;
mod spec;
mod swagger;
mod tags;
mod text;
mod ui;

use poem::error::ResponseError;
use poem::http::Method;
use poem::middleware::Cors;
use poem::PathPattern;
use poem::{Endpoint, EndpointExt, IntoEndpoint, IntoResponse, Request, Response, Route};
use poem_openapi::OpenApiService;

use crate::store::Store;
use auth::Access;
pub use docs::format_time;
use payload::BodyLimit;

/// What the HTTP layer needs besides the store.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    pub max_body_bytes: usize,
    /// Bytes of documents one answer holds (`EXDAAS_MAX_PAGE_BYTES`).
    pub max_page_bytes: usize,
    pub access: Access,
    /// Origins browsers may call from (CORS); empty: none.
    pub cors_origins: Vec<String>,
    /// Where backups taken over HTTP go, and their bounds.
    pub backups: Backups,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Clients that may wait on the change feed at once...
    pub feed_max_subscribers: usize,
    /// ...and at most for one key (or one address without keys).
    pub feed_max_subscribers_per_client: usize,
    /// Documents (or index entries) a query reads at most.
    pub query_max_scan: usize,
    /// Units of work a query does at most.
    pub query_max_work: u64,
    /// Queries' evaluations running at once.
    pub query_threads: usize,
    /// How often a quiet event stream sends a comment line.
    pub feed_heartbeat: std::time::Duration,
    /// Turns true when the server stops: feed waits end, streams close.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

type Apis = (
    legacy::LegacyApi,
    docs::DocsApi,
    collections::CollectionsApi,
    schemas::SchemasApi,
    query::QueryApi,
    indexes::IndexesApi,
    feed::FeedApi,
    admin::AdminApi,
    grant::GrantApi,
    health::HealthApi,
);

/// The OpenAPI service: every route with its documentation.
pub fn openapi(store: &Store, options: &ApiOptions) -> OpenApiService<Apis, ()> {
    let access = options.access.clone();
    OpenApiService::new(
        (
            legacy::LegacyApi {
                store: store.clone(),
                access: access.clone(),
                page_bytes: options.max_page_bytes,
            },
            docs::DocsApi {
                store: store.clone(),
                access: access.clone(),
            },
            collections::CollectionsApi {
                store: store.clone(),
                access: access.clone(),
                max_line_bytes: options.max_body_bytes,
                page_bytes: options.max_page_bytes,
                every_count: Default::default(),
            },
            schemas::SchemasApi {
                store: store.clone(),
                access: access.clone(),
            },
            query::QueryApi {
                store: store.clone(),
                access: access.clone(),
                limits: crate::store::query::QueryLimits::new(
                    options.query_max_scan,
                    options.query_max_work,
                    options.query_threads,
                ),
            },
            indexes::IndexesApi {
                store: store.clone(),
                access: access.clone(),
            },
            feed::FeedApi {
                store: store.clone(),
                access: access.clone(),
                page_bytes: options.max_page_bytes,
                places: followers::Places::new(options.feed_max_subscribers, options.feed_max_subscribers_per_client),
                heartbeat: options.feed_heartbeat,
                stopping: options.stopping.clone(),
                metrics: options.metrics.clone(),
            },
            admin::AdminApi {
                store: store.clone(),
                access: access.clone(),
                backups: options.backups.clone(),
                taking: tokio::sync::Mutex::new(()),
            },
            grant::GrantApi { access },
            health::HealthApi {
                store: store.clone(),
                metrics: options.metrics.clone(),
            },
        ),
        "exdaas",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "A serialized, fault tolerant, self caching, self sharding JSON document database. \
         Every write to a shard goes through that shard's one writer and is acknowledged only \
         once committed; reads come from a cache that is never older than an acknowledged write.\n\n\
         When the server has API keys configured, every data route needs one: click Authorize and \
         paste a key (`Authorization: Bearer <key>`). Keys have a scope: read, write (and read) or \
         admin (everything), optionally limited to some collections.",
    )
}

/// Every route, with errors rendered as JSON, the body limit applied and,
/// when origins are configured, CORS.
pub fn routes(store: &Store, options: &ApiOptions) -> impl Endpoint<Output = Response> {
    let api = openapi(store, options);
    let generated = api.spec();
    let spec = std::sync::Arc::new(spec::Spec::new(&generated, !options.access.is_open()));
    // Swagger UI embeds the document: the one this server serves.
    let ui = api.swagger_ui_html().replace(&generated, spec.text());
    let document = spec.text().to_owned();
    let max_body_bytes = options.max_body_bytes;
    let access = options.access.clone();
    let metrics = options.metrics.clone();
    let known_routes = std::sync::Arc::new(observe::Routes::from_spec(&spec, &metrics));
    let cors = (!options.cors_origins.is_empty()).then(|| {
        let cors = Cors::new()
            .allow_methods([Method::GET, Method::PUT, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([
                "authorization",
                "content-type",
                "if-match",
                "if-none-match",
                "last-event-id",
            ])
            .expose_headers(["etag", "location"])
            .max_age(3600);
        if options.cors_origins.iter().any(|o| o == "*") {
            cors
        } else {
            cors.allow_origins(options.cors_origins.iter().map(String::as_str))
        }
    });
    // Shared bytes: an answer is a reference to them, not a copy (the page
    // is 1.8 MB, and a client may ask for it many times over at once).
    let docs = swagger::DocsPage::new(ui);
    let document = bytes::Bytes::from(document);
    let pages = Route::new()
        .at("/docs", docs.endpoint())
        .at("/docs/", docs.endpoint())
        .at(
            "/openapi.json",
            poem::endpoint::make_sync(move |_| {
                Response::builder()
                    .content_type("application/json")
                    .body(document.clone())
            }),
        )
        .at(ui::PATHS[0], ui::page())
        .at(ui::PATHS[1], ui::page())
        .at(ui::PATHS[2], ui::script())
        .at(ui::PATHS[3], ui::styles());
    let site = Site {
        pages,
        quick: legacy::QuickRead::new(store.clone(), options.access.clone()),
        api: api.into_endpoint(),
    };
    let edge = Edge {
        next: site.with_if(cors.is_some(), cors::CrossOrigin::new(cors.unwrap_or_else(Cors::new))),
        max_body_bytes,
        access,
        spec,
    };
    observe::Observe::new(edge, metrics, known_routes)
}

/// Routes anyone may call, keys or not: probes, metrics, the API's
/// documentation and the admin page (which asks for a key itself).
fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics" | "/openapi.json" | "/docs")
        || path.starts_with("/docs/")
        || ui::PATHS.contains(&path)
}

/// The pages outside the OpenAPI document: Swagger UI, the document
/// itself, the admin page.
fn is_page(path: &str) -> bool {
    matches!(path, "/docs" | "/docs/" | "/openapi.json") || ui::PATHS.contains(&path)
}

/// Every request's first stop after the edge: the pages by their fixed
/// paths, the original API's cached reads by their quick path, and
/// everything else straight to the OpenAPI service. (Nesting the service
/// in a `Route` cost every request a second routing pass and a rewritten
/// URI: 15% of a cached read's rate.)
struct Site<P, A> {
    pages: P,
    quick: legacy::QuickRead,
    api: A,
}

impl<P: Endpoint, A: Endpoint> Endpoint for Site<P, A> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        if is_page(req.uri().path()) {
            return self.pages.call(req).await.map(IntoResponse::into_response);
        }
        if let Some(resp) = self.quick.answer(&req).await {
            return Ok(resp);
        }
        self.api.call(req).await.map(IntoResponse::into_response)
    }
}

/// What every request passes through: when keys are configured, a 401 for
/// a data route without a valid key, before anything else is read; the body
/// limit for the methods that carry a body (a GET skips the allocation); and
/// errors rendered as JSON. Scopes (403) are checked by each route.
struct Edge<E> {
    next: E,
    max_body_bytes: usize,
    access: Access,
    spec: std::sync::Arc<spec::Spec>,
}

impl<E: Endpoint> Endpoint for Edge<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let Self {
            next,
            max_body_bytes,
            access,
            spec,
        } = self;
        if !access.is_open() && !is_public(req.uri().path()) {
            let authorization = req
                .headers()
                .get(poem::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            if !access.admits(authorization) && req.method() != Method::OPTIONS {
                let flavor = error::Flavor::of_path(req.uri().path());
                return Ok(Access::unauthorized(flavor).as_response());
            }
        }
        // Conditional headers are ASCII (RFC 9110 8.8.3), as is an event
        // stream's last id; one that is not must not pass for an absent one,
        // which is what a route reading it as text would see.
        for name in [
            poem::http::header::IF_MATCH,
            poem::http::header::IF_NONE_MATCH,
            poem::http::HeaderName::from_static("last-event-id"),
        ] {
            if req.headers().get(&name).is_some_and(|v| v.to_str().is_err()) {
                let flavor = error::Flavor::of_path(req.uri().path());
                let detail = format!("the {name} header holds bytes that are not visible ASCII");
                return Ok(error::ApiError::new(flavor, poem::http::StatusCode::BAD_REQUEST, detail).as_response());
            }
        }
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            req.extensions_mut().insert(BodyLimit(*max_body_bytes));
        }
        // A `Uri` clone shares its bytes: no copy on the success path.
        let uri = req.uri().clone();
        match next.call(req).await {
            Ok(resp) => Ok(resp.into_response()),
            Err(err) => {
                // Keep the matched route for metrics and traces.
                let route = err.data::<PathPattern>().cloned();
                let mut resp = error::ApiError::render(err, &uri, spec);
                if resp.status() == poem::http::StatusCode::METHOD_NOT_ALLOWED {
                    // RFC 9110 15.5.6: a 405 says which methods the path takes.
                    let allow = match uri.path() {
                        "/docs" | "/docs/" | "/openapi.json" => Some("GET, HEAD"),
                        path if ui::PATHS.contains(&path) => Some("GET, HEAD"),
                        path => spec.allow(path),
                    };
                    if let Some(value) = allow.and_then(|a| poem::http::HeaderValue::from_str(a).ok()) {
                        resp.headers_mut().insert(poem::http::header::ALLOW, value);
                    }
                }
                if let Some(route) = route {
                    resp.set_data(route);
                }
                Ok(resp)
            }
        }
    }
}
