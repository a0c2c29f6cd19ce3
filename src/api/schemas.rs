//! `/v1/collections/{collection}/schema`: a collection's JSON Schema, which
//! every write path checks its documents against (before the shard writers
//! take them), and the existing documents that do not match it.

use poem::http::StatusCode;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde_json::Value;

use super::auth::{Access, Credentials};
use super::docs::{bad_request, format_time};
use super::error::{Flavor, ProblemError, ViolationBody};
use super::params::CollectionParam;
use super::payload::JsonBody;
use super::tags::ApiTags;
use crate::domain::access::Scope;
use crate::domain::CollectionName;
use crate::store::schema::{CollectionSchema, MismatchPass, Mismatches, SchemaState, Violation, MAX_DOCUMENT_CHECKS};
use crate::store::Store;

/// Mismatching documents a schema's answer lists (it counts them all).
const LISTED_MISMATCHES: usize = 100;

/// Documents one page of mismatches reads at most, so a page costs the
/// same whether mismatches are many or few.
const MISMATCH_PAGE_READS: u64 = 10_000;

/// Checks one page of mismatches makes at most (see
/// `CollectionSchema::work`): two documents at the most costly a document
/// may be, a fraction of a second of one core.
const MISMATCH_PAGE_CHECKS: u64 = 2 * MAX_DOCUMENT_CHECKS;

pub struct SchemasApi {
    pub store: Store,
    pub access: Access,
}

/// A collection's JSON Schema (draft 2020-12).
#[derive(Object)]
pub struct SchemaBody {
    collection: String,
    /// Rises by one with every change of the collection's schema, its
    /// removal included.
    version: u64,
    /// The schema, as canonical JSON (keys sorted).
    schema: Value,
    /// When it was set (RFC 3339, UTC).
    updated_at: String,
    /// The most subschemas it applies to one value of a document, each
    /// `$ref` counted as written out in full (at most 10,000). `null`: a
    /// schema stored before that bound and over it, which refuses every
    /// write until it is set again.
    #[oai(nullable)]
    cost: Option<u64>,
}

/// A document that does not match the schema, and why.
#[derive(Object)]
pub struct Mismatch {
    id: String,
    /// At most 16.
    violations: Vec<ViolationBody>,
}

/// Existing documents checked against the schema.
#[derive(Object)]
pub struct MismatchReport {
    /// Documents read.
    checked: u64,
    /// Of those, how many do not match.
    count: u64,
    /// The first of them in id order, with why.
    mismatches: Vec<Mismatch>,
    /// Where to go on from: pass it as `start_after` to
    /// `GET .../schema/mismatches` (`null`: nothing left to read).
    #[oai(nullable)]
    next_start_after: Option<String>,
}

/// A schema just set, and how the documents already stored fare against it.
#[derive(Object)]
pub struct SchemaSet {
    #[oai(flatten)]
    schema: SchemaBody,
    /// Every document of the collection, checked; none is deleted or
    /// changed. The first 100 are listed; page through them all with
    /// `GET .../schema/mismatches`.
    existing: MismatchReport,
}

/// A removed schema.
#[derive(Object)]
pub struct SchemaRemoved {
    collection: String,
    /// The removal's version: one past the removed schema's.
    version: u64,
}

#[derive(ApiResponse)]
pub enum SchemaResponse {
    /// The collection's schema.
    #[oai(status = 200)]
    Found(Json<SchemaBody>),
}

#[derive(ApiResponse)]
pub enum SetResponse {
    /// The schema is set: every write from now on is checked against it.
    #[oai(status = 200)]
    Set(Json<SchemaSet>),
}

#[derive(ApiResponse)]
pub enum RemovedResponse {
    /// The schema is removed: the collection takes any document again.
    #[oai(status = 200)]
    Removed(Json<SchemaRemoved>),
}

#[derive(ApiResponse)]
pub enum MismatchResponse {
    /// A page of the documents that do not match the schema.
    #[oai(status = 200)]
    Page(Json<MismatchReport>),
}

#[OpenApi(prefix_path = "/v1/collections", tag = "ApiTags::Collections")]
impl SchemasApi {
    /// Set a collection's schema
    ///
    /// A JSON Schema (draft 2020-12, whatever its `$schema` says) that every
    /// document of the collection must match from now on, on every write
    /// path: PUT, POST, the result of a PATCH, each batch operation, each
    /// import line, the original API. A write that does not match is
    /// refused with 422 and `violations`: the JSON Pointer of each failing
    /// value and the keyword that failed (at most 16; only the first for a
    /// document costly to check). Documents already stored are not
    /// touched: the answer counts those that do not match and lists the
    /// first 100. Needs an admin key. At most 64 KiB and 100 levels deep;
    /// `$ref` only within the schema (nothing is fetched); `format` is an
    /// annotation, as the draft has it; `pattern` uses linear-time regular
    /// expressions (no look-around or backreferences). Refused with 400:
    /// a schema that applies more than 10,000 subschemas to one value of a
    /// document once its `$ref`s are written out, and `$ref`s that go round
    /// a cycle without reaching into the document (recursion through
    /// `properties`, `items` and the like is fine). A document whose check
    /// would take more than 50,000,000 subschema checks is refused with 422
    /// and the keyword `cost`.
    #[oai(path = "/:collection/schema", method = "put")]
    async fn set_schema(
        &self,
        auth: Credentials,
        collection: Path<CollectionParam>,
        /// The JSON Schema
        body: JsonBody<Value>,
    ) -> Result<SetResponse, ProblemError> {
        let collection = self.access.authorized(&auth, Scope::Admin, collection.0 .0)?;
        // Compiling and bounding a large schema takes a while: not on a
        // runtime worker.
        let schema = tokio::task::spawn_blocking(move || CollectionSchema::compile(&body.0))
            .await
            .map_err(|_| ProblemError::from(crate::store::StoreError::Internal("compiling a schema panicked")))?
            .map_err(|e| bad_request(e.0))?;
        let state = self.store.set_schema(&collection, Some(schema)).await?;
        let schema = state
            .schema
            .clone()
            .ok_or_else(|| ProblemError::new(StatusCode::CONFLICT, "the schema was removed while it was being set"))?;
        tracing::info!(collection = %collection, version = state.version, "collection schema set");
        // Every document, however long it takes (an admin asked): checked
        // on the checker threads, chunk by chunk.
        let every = MismatchPass {
            after: None,
            keep: LISTED_MISMATCHES,
            stop_when_kept: false,
            read_at_most: u64::MAX,
            checks_at_most: u64::MAX,
        };
        let existing = self.store.mismatches(&collection, &schema, &every).await?;
        Ok(SetResponse::Set(Json(SchemaSet {
            schema: schema_body(&collection, &state)?,
            existing: report(existing),
        })))
    }

    /// Read a collection's schema
    ///
    /// 404 if the collection has none.
    #[oai(path = "/:collection/schema", method = "get")]
    async fn get_schema(
        &self,
        auth: Credentials,
        collection: Path<CollectionParam>,
    ) -> Result<SchemaResponse, ProblemError> {
        let collection = self.access.authorized(&auth, Scope::Read, collection.0 .0)?;
        let state = self.current(&collection).await?;
        Ok(SchemaResponse::Found(Json(schema_body(&collection, &state)?)))
    }

    /// Remove a collection's schema
    ///
    /// The collection takes any document again. Needs an admin key; 404 if
    /// it has no schema.
    #[oai(path = "/:collection/schema", method = "delete")]
    async fn remove_schema(
        &self,
        auth: Credentials,
        collection: Path<CollectionParam>,
    ) -> Result<RemovedResponse, ProblemError> {
        let collection = self.access.authorized(&auth, Scope::Admin, collection.0 .0)?;
        self.current(&collection).await?;
        let state = self.store.set_schema(&collection, None).await?;
        tracing::info!(collection = %collection, version = state.version, "collection schema removed");
        Ok(RemovedResponse::Removed(Json(SchemaRemoved {
            collection: collection.as_str().to_owned(),
            version: state.version,
        })))
    }

    /// List the documents that do not match the schema
    ///
    /// Pages through the collection in id order, checking each document
    /// against the current schema. A page lists at most `limit` documents,
    /// reads at most 10,000 and checks at most 100,000,000 subschemas (at
    /// least one document); `next_start_after` says where the next page
    /// starts (`null` at the end). `count` counts the mismatches among the
    /// documents this page read. 404 if the collection has no schema.
    #[oai(path = "/:collection/schema/mismatches", method = "get")]
    async fn mismatches(
        &self,
        auth: Credentials,
        collection: Path<CollectionParam>,
        /// Only ids after this one
        #[oai(validator(pattern = r"^[A-Za-z0-9._~:@-]{0,256}$"))]
        start_after: Query<Option<String>>,
        /// Mismatches listed: 1 to 1000, default 100
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<usize>>,
    ) -> Result<MismatchResponse, ProblemError> {
        let collection = self.access.authorized(&auth, Scope::Read, collection.0 .0)?;
        let limit = limit.0.unwrap_or(LISTED_MISMATCHES);
        if !(1..=1000).contains(&limit) {
            return Err(bad_request(format!("limit must be from 1 to 1000, not {limit}")));
        }
        // A bound in the id order, as the listing's: not itself an id.
        let after = start_after.0.filter(|a| !a.is_empty());
        let state = self.current(&collection).await?;
        let schema = state.schema.ok_or_else(|| not_found(&collection))?;
        let pass = MismatchPass {
            after: after.as_deref(),
            keep: limit,
            stop_when_kept: true,
            read_at_most: MISMATCH_PAGE_READS,
            checks_at_most: MISMATCH_PAGE_CHECKS,
        };
        let page = self.store.mismatches(&collection, &schema, &pass).await?;
        Ok(MismatchResponse::Page(Json(report(page))))
    }
}

impl SchemasApi {
    /// The collection's schema, or a 404.
    async fn current(&self, collection: &CollectionName) -> Result<SchemaState, ProblemError> {
        match self.store.schema(collection).await? {
            Some(state) if state.schema.is_some() => Ok(state),
            _ => Err(not_found(collection)),
        }
    }
}

fn not_found(collection: &CollectionName) -> ProblemError {
    ProblemError::new(
        StatusCode::NOT_FOUND,
        format!("collection {:?} has no schema", collection.as_str()),
    )
}

fn schema_body(collection: &CollectionName, state: &SchemaState) -> Result<SchemaBody, ProblemError> {
    let text = state.schema.as_ref().map_or("true", |schema| &schema.text);
    let schema = serde_json::from_str(text).map_err(|e| {
        ProblemError(super::error::ApiError::server(
            Flavor::V1,
            StatusCode::INTERNAL_SERVER_ERROR,
            "a stored schema could not be read".into(),
            &e,
        ))
    })?;
    Ok(SchemaBody {
        collection: collection.as_str().to_owned(),
        version: state.version,
        schema,
        updated_at: format_time(state.updated_at_ms),
        cost: state
            .schema
            .as_ref()
            .filter(|schema| schema.refusal().is_none())
            .map(|schema| schema.cost()),
    })
}

fn report(found: Mismatches) -> MismatchReport {
    MismatchReport {
        checked: found.checked,
        count: found.count,
        mismatches: found
            .found
            .into_iter()
            .map(|(id, violations)| Mismatch {
                id: id.as_str().to_owned(),
                violations: violations.into_iter().map(violation_body).collect(),
            })
            .collect(),
        next_start_after: found.next_after.map(|id| id.as_str().to_owned()),
    }
}

fn violation_body(v: Violation) -> ViolationBody {
    ViolationBody {
        pointer: v.pointer,
        keyword: v.keyword,
        message: v.message,
    }
}
