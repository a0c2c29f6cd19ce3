//! The HTTP layer: the original API, the v1 API and health checks, documented
//! with OpenAPI (Swagger UI at `/docs`, the spec at `/openapi.json`). It knows
//! the store only through [`Store`]'s methods; no SQL up here.

mod brackets;
mod docs;
pub mod error;
mod health;
mod legacy;
mod payload;

use poem::http::Method;
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route};
use poem_openapi::{OpenApiService, Tags};

use crate::store::Store;
pub use docs::format_time;
use payload::BodyLimit;

#[derive(Tags)]
pub enum ApiTags {
    /// The original exdaas API: integer ids in the `default` collection.
    Original,
    /// v1: JSON documents in named collections.
    Documents,
    /// Liveness and readiness.
    Health,
}

/// The OpenAPI service: every route with its documentation.
pub fn openapi(store: &Store) -> OpenApiService<(legacy::LegacyApi, docs::DocsApi, health::HealthApi), ()> {
    OpenApiService::new(
        (
            legacy::LegacyApi { store: store.clone() },
            docs::DocsApi { store: store.clone() },
            health::HealthApi { store: store.clone() },
        ),
        "exdaas",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "A serialized, fault tolerant, self caching, self sharding JSON document database. \
         Every write to a shard goes through that shard's one writer and is acknowledged only \
         once committed; reads come from a cache that is never older than an acknowledged write.",
    )
}

/// Every route, with errors rendered as JSON and the body limit applied.
pub fn routes(store: &Store, max_body_bytes: usize) -> impl Endpoint {
    let api = openapi(store);
    let ui = api.swagger_ui();
    let spec = api.spec_endpoint();
    Route::new()
        .nest("/docs", ui)
        .at("/openapi.json", spec)
        .nest("/", api)
        .around(move |next, req| edge(next, req, max_body_bytes))
}

/// What every request passes through: the body limit for the methods that
/// carry a body (a GET skips the allocation), and errors rendered as JSON.
async fn edge<E: Endpoint>(next: E, mut req: Request, max_body_bytes: usize) -> poem::Result<Response> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        req.extensions_mut().insert(BodyLimit(max_body_bytes));
    }
    // A `Uri` clone shares its bytes: no copy on the success path.
    let uri = req.uri().clone();
    match next.call(req).await {
        Ok(resp) => Ok(resp.into_response()),
        Err(err) => Ok(error::ApiError::render(err, uri.path())),
    }
}
