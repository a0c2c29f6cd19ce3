//! The v1 document API: any JSON value under `/v1/collections/{c}/docs/{id}`,
//! answered in an envelope with the document's version, update time and
//! expiry; conditional writes and reads through `ETag`, `If-Match` and
//! `If-None-Match`; merge patches; pages of a collection in id order.

use poem::http::StatusCode;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::auth::{Access, Credentials};
use super::conditional::{etag, EntityTags};
use super::error::ProblemError;
use super::params::{asks_past_the_cache, AnyDocument, CollectionParam, DocIdParam, MergePatch};
use super::payload::{JsonBody, MergePatchBody, RawJson};
use super::tags::ApiTags;
use super::text::json_string;
use crate::domain::access::Scope;
use crate::domain::{CollectionName, DocId, DocKey};
use crate::store::{Action, Document, Expect, ListRequest, Store, StoreError, WriteOutcome};

/// Default and largest page of a listing.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = crate::store::MAX_PAGE;
/// Longest time to live, in seconds (ten years).
pub const MAX_TTL_SECS: u64 = 315_360_000;

pub struct DocsApi {
    pub store: Store,
    pub access: Access,
}

/// A stored document and its metadata.
#[derive(Object)]
#[oai(example)]
pub struct DocEnvelope {
    collection: String,
    id: String,
    /// Starts at 1 and rises by one with every change; also the `ETag`.
    version: u64,
    /// Time of the last change (RFC 3339, UTC).
    updated_at: String,
    /// When the document expires (RFC 3339, UTC), or `null`: never.
    #[oai(nullable)]
    expires_at: Option<String>,
    /// The document itself: any JSON value (left out by `keys_only`).
    data: Option<Value>,
}

impl Example for DocEnvelope {
    fn example() -> Self {
        Self {
            collection: "users".into(),
            id: "alice".into(),
            version: 3,
            updated_at: "2026-11-25T09:30:00.123Z".into(),
            expires_at: None,
            data: Some(json!({"name": "Alice", "roles": ["admin"]})),
        }
    }
}

/// A page of documents in id order.
#[derive(Object)]
#[oai(example)]
pub struct DocPage {
    items: Vec<DocEnvelope>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    #[oai(nullable)]
    next_cursor: Option<String>,
}

impl Example for DocPage {
    fn example() -> Self {
        Self {
            items: vec![DocEnvelope::example()],
            next_cursor: Some("616c696365".into()),
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
    /// `If-None-Match` names the current version: nothing changed.
    #[oai(status = 304)]
    NotModified(#[oai(header = "ETag")] String),
}

#[derive(ApiResponse)]
pub enum PatchResponse {
    /// The patch was applied (or changed nothing).
    #[oai(status = 200)]
    Patched(RawJson<DocEnvelope>, #[oai(header = "ETag")] String),
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

#[derive(ApiResponse)]
pub enum ListResponse {
    #[oai(status = 200)]
    Page(RawJson<DocPage>),
}

#[OpenApi(prefix_path = "/v1/collections", tag = "ApiTags::Documents")]
impl DocsApi {
    /// Store a document under an id
    ///
    /// Creates (201) or replaces (200) the document; the body is any JSON
    /// value. `If-Match: "3"` replaces only version 3 (else 412);
    /// `If-None-Match: *` only creates (412 if it exists). `ttl` makes the
    /// document expire that many seconds from now; without it, it never does.
    #[oai(path = "/:collection/docs/:id", method = "put")]
    #[allow(clippy::too_many_arguments)]
    async fn put(
        &self,
        auth: Credentials,
        collection: Path<CollectionParam>,
        id: Path<DocIdParam>,
        /// Seconds until the document expires (1 to 315360000)
        #[oai(validator(minimum(value = "1"), maximum(value = "315360000")))]
        ttl: Query<Option<u64>>,
        /// Replace only this version: `"3"`, or `*` for any existing one
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
        /// `*`: create only, never replace
        #[oai(name = "If-None-Match", validator(pattern = r"^\s*\*?\s*$"))]
        if_none_match: Header<Option<String>>,
        body: JsonBody<AnyDocument>,
    ) -> Result<PutResponse, ProblemError> {
        let key = self.authorized_key(&auth, Scope::Write, collection.0 .0, id.0 .0)?;
        let (if_match, if_none_match) = (present(if_match.0), present(if_none_match.0));
        // RFC 9110 13.2.2: If-Match is evaluated first; with both, a document
        // that passes If-Match exists, so If-None-Match: * fails.
        let expect = match (if_match, if_none_match) {
            (Some(_), Some(_)) => Expect::Never,
            (Some(tags), None) => expect_match(&tags),
            (None, Some(_)) => Expect::Absent,
            (None, None) => Expect::Any,
        };
        let expires_at_ms = expiry(ttl.0)?;
        let outcome = self
            .store
            .write(key.clone(), expect, Action::put(&body.0, expires_at_ms)?)
            .await?;
        match outcome {
            WriteOutcome::Written { doc, created: true } => {
                let (envelope, tag) = envelope(&key, &doc);
                Ok(PutResponse::Created(envelope, tag, location(&key)))
            }
            WriteOutcome::Written { doc, .. } | WriteOutcome::Unchanged(doc) => {
                let (envelope, tag) = envelope(&key, &doc);
                Ok(PutResponse::Replaced(envelope, tag))
            }
            _ => Err(unexpected()),
        }
    }

    /// Store a document under a fresh id
    ///
    /// The id comes from the server's counter: never reused, never one a
    /// client chose. `Location` names the new document.
    #[oai(path = "/:collection/docs", method = "post")]
    async fn create(
        &self,
        auth: Credentials,
        collection: Path<CollectionParam>,
        /// Seconds until the document expires (1 to 315360000)
        #[oai(validator(minimum(value = "1"), maximum(value = "315360000")))]
        ttl: Query<Option<u64>>,
        body: JsonBody<AnyDocument>,
    ) -> Result<CreateResponse, ProblemError> {
        let collection = self.authorized_collection(&auth, Scope::Write, collection.0 .0)?;
        let expires_at_ms = expiry(ttl.0)?;
        let (id, stored) = self.store.create(collection.clone(), &body.0, expires_at_ms).await?;
        let key = DocKey::new(collection, id);
        let (envelope, tag) = envelope(&key, &stored.doc);
        Ok(CreateResponse::Created(envelope, tag, location(&key)))
    }

    /// Read a document
    ///
    /// `If-None-Match: "3"` answers 304 without a body while the document is
    /// still at version 3.
    #[oai(path = "/:collection/docs/:id", method = "get")]
    async fn get(
        &self,
        auth: Credentials,
        collection: Path<CollectionParam>,
        id: Path<DocIdParam>,
        /// Versions the client holds: `"3"` (304 if still current)
        #[oai(name = "If-None-Match")]
        if_none_match: Header<Option<String>>,
        /// `no-cache`: read what is committed now, past the cache (which,
        /// with several replicas on one database, may be behind by up to
        /// `EXDAAS_REPLICA_POLL_MS`)
        #[oai(name = "Cache-Control")]
        cache_control: Header<Option<String>>,
    ) -> Result<GetResponse, ProblemError> {
        let key = self.authorized_key(&auth, Scope::Read, collection.0 .0, id.0 .0)?;
        let doc = if asks_past_the_cache(cache_control.0.as_deref()) {
            self.store.get_fresh(&key).await?
        } else {
            self.store.get(&key).await?
        };
        let doc = doc.ok_or_else(|| not_found(&key))?;
        if let Some(tags) = present(if_none_match.0) {
            if EntityTags::parse(&tags, true).matches(doc.version) {
                return Ok(GetResponse::NotModified(etag(doc.version)));
            }
        }
        let (envelope, tag) = envelope(&key, &doc);
        Ok(GetResponse::Found(envelope, tag))
    }

    /// Change some fields of a document (JSON Merge Patch)
    ///
    /// The body (`application/merge-patch+json`, RFC 7396) names fields to
    /// set and, with `null`, fields to remove. It is applied by the shard's
    /// writer to the committed document, so concurrent patches of different
    /// fields never lose each other's changes. `If-Match: "3"` applies it
    /// only to version 3. The expiry stays unless `ttl` is given.
    #[oai(path = "/:collection/docs/:id", method = "patch")]
    async fn patch(
        &self,
        auth: Credentials,
        collection: Path<CollectionParam>,
        id: Path<DocIdParam>,
        /// Seconds until the document expires, from now (1 to 315360000)
        #[oai(validator(minimum(value = "1"), maximum(value = "315360000")))]
        ttl: Query<Option<u64>>,
        /// Patch only this version: `"3"`
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
        body: MergePatchBody<MergePatch>,
    ) -> Result<PatchResponse, ProblemError> {
        let key = self.authorized_key(&auth, Scope::Write, collection.0 .0, id.0 .0)?;
        let expect = present(if_match.0).as_deref().map_or(Expect::Any, expect_match);
        let expires_at_ms = expiry(ttl.0)?.map(Some);
        match self
            .store
            .write(key.clone(), expect, Action::patch(body.0, expires_at_ms)?)
            .await?
        {
            WriteOutcome::Written { doc, .. } | WriteOutcome::Unchanged(doc) => {
                let (envelope, tag) = envelope(&key, &doc);
                Ok(PatchResponse::Patched(envelope, tag))
            }
            WriteOutcome::NotFound => Err(not_found(&key)),
            _ => Err(unexpected()),
        }
    }

    /// Delete a document
    ///
    /// `If-Match: "3"` deletes only version 3 (else 412).
    #[oai(path = "/:collection/docs/:id", method = "delete")]
    async fn delete(
        &self,
        auth: Credentials,
        collection: Path<CollectionParam>,
        id: Path<DocIdParam>,
        /// Delete only this version: `"3"`
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
    ) -> Result<DeleteResponse, ProblemError> {
        let key = self.authorized_key(&auth, Scope::Write, collection.0 .0, id.0 .0)?;
        let expect = present(if_match.0).as_deref().map_or(Expect::Any, expect_match);
        match self.store.write(key.clone(), expect, Action::Delete).await? {
            WriteOutcome::Deleted(_) => Ok(DeleteResponse::Deleted),
            WriteOutcome::NotFound => Err(not_found(&key)),
            _ => Err(unexpected()),
        }
    }

    /// List a collection's documents in id order
    ///
    /// Pages through every shard at once, in id order (byte order). Pass
    /// `next_cursor` back as `cursor` for the next page; documents added
    /// while paging appear if their id comes after the cursor. A page costs
    /// in proportion to its size, not to the collection's: it holds at most
    /// `limit` documents and at most `EXDAAS_MAX_PAGE_BYTES` (default 8 MiB)
    /// of their data, and always at least one document.
    #[oai(path = "/:collection/docs", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        auth: Credentials,
        collection: Path<CollectionParam>,
        /// Only ids that start with this
        #[oai(validator(pattern = r"^[A-Za-z0-9._~:@-]{0,256}$"))]
        prefix: Query<Option<String>>,
        /// Only ids after this one
        #[oai(validator(pattern = r"^[A-Za-z0-9._~:@-]{0,256}$"))]
        start_after: Query<Option<String>>,
        /// Page size: 1 to 1000, default 100
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<usize>>,
        /// The `next_cursor` of the previous page (with `start_after` too,
        /// the later of the two counts)
        #[oai(validator(pattern = r"^(2[dDeE]|3[0-9aA]|4[0-9a-fA-F]|5[0-9aAfF]|6[1-9a-fA-F]|7[0-9aAeE]){1,256}$"))]
        cursor: Query<Option<String>>,
        /// Leave each document's `data` out
        keys_only: Query<Option<bool>>,
    ) -> Result<ListResponse, ProblemError> {
        let collection = self.authorized_collection(&auth, Scope::Read, collection.0 .0)?;
        let limit = limit.0.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(bad_request(format!("limit must be from 1 to {MAX_PAGE}, not {limit}")));
        }
        let cursor = cursor.0.as_deref().map(decode_cursor).transpose()?;
        let start_after = match (start_after.0, cursor) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let keys_only = keys_only.0.unwrap_or(false);
        let request = ListRequest {
            prefix: prefix.0.filter(|p| !p.is_empty()),
            start_after,
            limit,
            keys_only,
        };
        let page = self.store.list(&collection, &request).await?;
        let data_bytes: usize = page.items.iter().map(|item| item.doc.data.len()).sum();
        let mut body = String::with_capacity(64 + data_bytes + 200 * page.items.len());
        body.push_str("{\"items\":[");
        for (i, item) in page.items.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            let key = DocKey::new(collection.clone(), item.id.clone());
            write_envelope(&mut body, &key, &item.doc, !keys_only);
        }
        body.push_str("],\"next_cursor\":");
        match &page.next_after {
            Some(last) => body.push_str(&json_string(&hex::encode(last.as_str()))),
            None => body.push_str("null"),
        }
        body.push('}');
        Ok(ListResponse::Page(RawJson::new(body)))
    }
}

impl DocsApi {
    /// Authenticates (401) and authorizes (403); names were parsed (400)
    /// at the edge.
    fn authorized_collection(
        &self,
        auth: &Credentials,
        need: Scope,
        collection: CollectionName,
    ) -> Result<CollectionName, ProblemError> {
        self.access.authorized(auth, need, collection)
    }

    fn authorized_key(
        &self,
        auth: &Credentials,
        need: Scope,
        collection: CollectionName,
        id: DocId,
    ) -> Result<DocKey, ProblemError> {
        let collection = self.authorized_collection(auth, need, collection)?;
        Ok(DocKey::new(collection, id))
    }
}

pub fn bad_request(detail: impl Into<String>) -> ProblemError {
    ProblemError::new(StatusCode::BAD_REQUEST, detail)
}

fn unexpected() -> ProblemError {
    ProblemError::from(StoreError::Internal(
        "the store answered with another operation's outcome",
    ))
}

/// A conditional header with something in it: an empty one (`If-Match:`)
/// counts as absent.
fn present(header: Option<String>) -> Option<String> {
    header.filter(|value| !value.trim().is_empty())
}

/// `If-Match` as a precondition: `*` any existing version, else one of the
/// tagged versions.
pub fn expect_match(tags: &str) -> Expect {
    match EntityTags::parse(tags, false) {
        EntityTags::Any => Expect::Present,
        EntityTags::Versions(versions) => Expect::Version(versions),
    }
}

/// The expiry a `ttl` (seconds from now) gives, checked against the limits.
pub fn expiry(ttl: Option<u64>) -> Result<Option<i64>, ProblemError> {
    let Some(ttl) = ttl else { return Ok(None) };
    if !(1..=MAX_TTL_SECS).contains(&ttl) {
        return Err(bad_request(format!(
            "ttl must be from 1 to {MAX_TTL_SECS} seconds, not {ttl}"
        )));
    }
    Ok(Some(crate::clock::now_millis() + ttl as i64 * 1000))
}

pub fn parse_id(raw: &str) -> Result<DocId, ProblemError> {
    DocId::parse(raw).map_err(|e| bad_request(e.to_string()))
}

/// A cursor: the hex of 1 to 256 id characters, a bound in the id order
/// (the last id of a page, as this server gives it).
fn decode_cursor(cursor: &str) -> Result<String, ProblemError> {
    hex::decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|id| (1..=crate::domain::MAX_ID_LEN).contains(&id.len()) && DocId::has_id_chars(id))
        .ok_or_else(|| bad_request("cursor is not one this server gave; pass next_cursor unchanged"))
}

pub fn not_found(key: &DocKey) -> ProblemError {
    ProblemError::new(
        StatusCode::NOT_FOUND,
        format!(
            "document {:?} not found in collection {:?}",
            key.id.as_str(),
            key.collection.as_str()
        ),
    )
}

pub fn location(key: &DocKey) -> String {
    format!("/v1/collections/{}/docs/{}", key.collection, key.id)
}

/// The envelope's JSON and the ETag.
fn envelope(key: &DocKey, doc: &Document) -> (RawJson<DocEnvelope>, String) {
    (RawJson::new(envelope_json(key, doc, true)), etag(doc.version))
}

/// The envelope as JSON text, with the stored text spliced in as `data`
/// (or without `data`).
pub fn envelope_json(key: &DocKey, doc: &Document, with_data: bool) -> String {
    let mut json = String::with_capacity(160 + if with_data { doc.data.len() } else { 0 });
    write_envelope(&mut json, key, doc, with_data);
    json
}

/// [`envelope_json`], appended to `json`: a page is written in one buffer,
/// each document's text copied once.
pub fn write_envelope(json: &mut String, key: &DocKey, doc: &Document, with_data: bool) {
    use std::fmt::Write as _;
    // Collection names and ids need no JSON escaping (see `domain`).
    let _ = write!(
        json,
        "{{\"collection\":\"{}\",\"id\":\"{}\",\"version\":{},\"updated_at\":\"{}\",\"expires_at\":",
        key.collection,
        key.id,
        doc.version,
        format_time(doc.updated_at_ms),
    );
    match doc.expires_at_ms {
        Some(at) => {
            json.push('"');
            json.push_str(&format_time(at));
            json.push('"');
        }
        None => json.push_str("null"),
    }
    if with_data {
        json.push_str(",\"data\":");
        json.push_str(&doc.data);
    }
    json.push('}');
}

/// Unix milliseconds as RFC 3339 UTC, always with three digits of
/// milliseconds, so that times sort as text too.
pub fn format_time(ms: i64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_default()
}

/// An RFC 3339 time as Unix milliseconds.
pub fn parse_time(text: &str) -> Option<i64> {
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
}
