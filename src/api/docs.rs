//! The v1 document API: any JSON value under `/v1/collections/{c}/docs/{id}`,
//! answered in an envelope with the document's version and update time.

use poem::http::StatusCode;
use poem_openapi::param::Path;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::error::ProblemError;
use super::payload::{json_string, JsonBody, RawJson};
use super::ApiTags;
use crate::domain::{CollectionName, DocId, DocKey};
use crate::store::{Document, Store};

pub struct DocsApi {
    pub store: Store,
}

/// A stored document and its metadata.
#[derive(Object)]
#[oai(example)]
pub struct DocEnvelope {
    collection: String,
    id: String,
    /// Starts at 1 and rises by one with every change.
    version: u64,
    /// Time of the last change (RFC 3339, UTC).
    updated_at: String,
    /// The document itself: any JSON value.
    data: Value,
}

impl Example for DocEnvelope {
    fn example() -> Self {
        Self {
            collection: "users".into(),
            id: "alice".into(),
            version: 3,
            updated_at: "2026-11-25T09:30:00.123Z".into(),
            data: json!({"name": "Alice", "roles": ["admin"]}),
        }
    }
}

/// Any JSON value to store.
#[derive(Object)]
#[oai(example)]
pub struct AnyDocument {
    #[oai(flatten)]
    _doc: Option<Value>,
}

impl Example for AnyDocument {
    fn example() -> Self {
        Self {
            _doc: Some(json!({"name": "Alice", "roles": ["admin"]})),
        }
    }
}

#[derive(ApiResponse)]
pub enum PutResponse {
    /// The document was replaced (or was already equal to the body).
    #[oai(status = 200)]
    Replaced(RawJson<DocEnvelope>, #[oai(header = "ETag")] String),
    /// The document was created.
    #[oai(status = 201)]
    Created(
        RawJson<DocEnvelope>,
        #[oai(header = "ETag")] String,
        #[oai(header = "Location")] String,
    ),
}

#[derive(ApiResponse)]
pub enum GetResponse {
    #[oai(status = 200)]
    Found(RawJson<DocEnvelope>, #[oai(header = "ETag")] String),
}

#[derive(ApiResponse)]
pub enum CreateResponse {
    /// Stored under a fresh id; `Location` names it.
    #[oai(status = 201)]
    Created(
        RawJson<DocEnvelope>,
        #[oai(header = "ETag")] String,
        #[oai(header = "Location")] String,
    ),
}

#[derive(ApiResponse)]
pub enum DeleteResponse {
    /// Deleted.
    #[oai(status = 204)]
    Deleted,
}

#[OpenApi(prefix_path = "/v1/collections", tag = "ApiTags::Documents")]
impl DocsApi {
    /// Store a document under an id
    ///
    /// Creates (201) or replaces (200) the document. The body is any JSON value.
    #[oai(path = "/:collection/docs/:id", method = "put")]
    async fn put(
        &self,
        collection: Path<String>,
        id: Path<String>,
        body: JsonBody<AnyDocument>,
    ) -> Result<PutResponse, ProblemError> {
        let key = parse_key(&collection, &id)?;
        let stored = self.store.put(key.clone(), &body.0).await?;
        let (envelope, etag) = envelope(&key, &stored.doc);
        Ok(if stored.created {
            PutResponse::Created(envelope, etag, location(&key))
        } else {
            PutResponse::Replaced(envelope, etag)
        })
    }

    /// Store a document under a fresh id
    #[oai(path = "/:collection/docs", method = "post")]
    async fn create(
        &self,
        collection: Path<String>,
        body: JsonBody<AnyDocument>,
    ) -> Result<CreateResponse, ProblemError> {
        let collection = parse_collection(&collection)?;
        let (id, stored) = self.store.create(collection.clone(), &body.0, None).await?;
        let key = DocKey::new(collection, id);
        let (envelope, etag) = envelope(&key, &stored.doc);
        Ok(CreateResponse::Created(envelope, etag, location(&key)))
    }

    /// Read a document
    #[oai(path = "/:collection/docs/:id", method = "get")]
    async fn get(&self, collection: Path<String>, id: Path<String>) -> Result<GetResponse, ProblemError> {
        let key = parse_key(&collection, &id)?;
        let doc = self.store.get(&key).await?.ok_or_else(|| not_found(&key))?;
        let (envelope, etag) = envelope(&key, &doc);
        Ok(GetResponse::Found(envelope, etag))
    }

    /// Delete a document
    #[oai(path = "/:collection/docs/:id", method = "delete")]
    async fn delete(&self, collection: Path<String>, id: Path<String>) -> Result<DeleteResponse, ProblemError> {
        let key = parse_key(&collection, &id)?;
        if self.store.delete(key.clone()).await? {
            Ok(DeleteResponse::Deleted)
        } else {
            Err(not_found(&key))
        }
    }
}

fn parse_collection(raw: &str) -> Result<CollectionName, ProblemError> {
    CollectionName::parse(raw).map_err(|e| ProblemError::new(StatusCode::BAD_REQUEST, e.to_string()))
}

fn parse_key(collection: &str, id: &str) -> Result<DocKey, ProblemError> {
    let collection = parse_collection(collection)?;
    let id = DocId::parse(id).map_err(|e| ProblemError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(DocKey::new(collection, id))
}

fn not_found(key: &DocKey) -> ProblemError {
    ProblemError::new(
        StatusCode::NOT_FOUND,
        format!(
            "document {:?} not found in collection {:?}",
            key.id.as_str(),
            key.collection.as_str()
        ),
    )
}

fn location(key: &DocKey) -> String {
    format!("/v1/collections/{}/docs/{}", key.collection, key.id)
}

/// The envelope's JSON, with the stored text spliced in, and the ETag.
fn envelope(key: &DocKey, doc: &Document) -> (RawJson<DocEnvelope>, String) {
    let body = format!(
        "{{\"collection\":{},\"id\":{},\"version\":{},\"updated_at\":{},\"data\":{}}}",
        json_string(key.collection.as_str()),
        json_string(key.id.as_str()),
        doc.version,
        json_string(&format_time(doc.updated_at_ms)),
        doc.data
    );
    (RawJson::new(body), format!("\"{}\"", doc.version))
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn format_time(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}
