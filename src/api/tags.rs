//! The OpenAPI tags that group the routes in the document and Swagger UI.
//! A leaf of its own, not in `api/mod.rs`: every route file names its tag,
//! and `mod.rs` builds the service from the route files, so the tags must
//! sit below both.

use poem_openapi::Tags;

#[derive(Tags)]
pub enum ApiTags {
    /// The original exdaas API: integer ids in the `default` collection.
    Original,
    /// v1: JSON documents in named collections.
    Documents,
    /// v1: whole collections: batches, import and export, listing, dropping.
    Collections,
    /// v1: the change feed: every committed change, as pages, long polls or
    /// server-sent events.
    Changes,
    /// Administration: backups, and what a key may do.
    Admin,
    /// Liveness and readiness.
    Health,
}
