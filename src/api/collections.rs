//! Whole-collection routes of the v1 API: batches of operations, NDJSON
//! import and export, the list of collections, and dropping one.

use futures_util::StreamExt;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use super::auth::{Access, Credentials};
use super::docs::{bad_request, envelope_json, expiry, location, parse_id, parse_time};
use super::error::{ApiError, Flavor, ProblemError};
use super::params::{CollectionParam, Confirm};
use super::payload::{JsonBody, Ndjson, NdjsonBody, RawJson};
use super::tags::ApiTags;
use super::text::{excerpt, json_error, json_string};
use crate::domain::access::Scope;
use crate::domain::{CollectionName, DocId, DocKey};
use crate::store::{Action, Expect, Store, StoreError, WriteOutcome};

/// Most operations in one batch.
pub const MAX_BATCH: usize = 1000;
/// Lines an import writes together (one transaction per shard), at most:
/// fewer when their bytes reach the page budget.
const IMPORT_CHUNK: usize = 500;
/// Rejected lines an import report lists (it counts them all).
const MAX_REPORTED: usize = 100;

pub struct CollectionsApi {
    pub store: Store,
    pub access: Access,
    /// The longest import line: the body limit of other requests.
    pub max_line_bytes: usize,
    /// Bytes of documents one answer (a batch's results) or one import
    /// chunk holds (`EXDAAS_MAX_PAGE_BYTES`).
    pub page_bytes: usize,
    /// The count of every collection, one at a time for all who ask.
    pub every_count: super::counts::SharedCount<Vec<crate::store::CollectionInfo>>,
}

/// A batch operation's kind.
#[derive(Enum, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// Store `data` under `id`.
    Put,
    /// Merge `data` into the document (RFC 7396).
    Patch,
    Delete,
    /// Read the document, as the operations before it left it.
    Get,
}

/// One operation of a batch. Its shape is checked for the whole batch (a
/// 400 applies none of it); what its values mean (an id's characters, a
/// `ttl` from 1 to 315360000, `data` for put and patch only) is checked per
/// operation, in its own result.
#[derive(Object, Debug)]
pub struct BatchOp {
    op: OpKind,
    /// The document's id (checked per operation).
    id: String,
    /// The document (put) or the merge patch (patch): any JSON value, null
    /// included.
    #[oai(nullable)]
    data: Option<Value>,
    /// Apply only at this version; 0: only if the document does not exist.
    /// null: no condition.
    #[oai(nullable, validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
    expected_version: Option<u64>,
    /// put, patch: seconds until the document expires (1 to 315360000).
    /// null: never.
    #[oai(nullable, validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
    ttl: Option<u64>,
}

/// A batch operation as read from the body.
#[derive(Deserialize, Debug)]
struct RawOp {
    op: OpKind,
    id: String,
    /// `Some(Null)` for `"data": null` (a document), `None` when absent.
    #[serde(default, deserialize_with = "present")]
    data: Option<Value>,
    expected_version: Option<u64>,
    ttl: Option<u64>,
}

/// The largest number a batch operation takes (10^15): far past any
/// version or ttl, and a round number every JSON reader keeps exact, in the
/// document too.
const MAX_NUMBER: u64 = 1_000_000_000_000_000;

#[derive(Deserialize, Debug)]
struct RawBatch {
    ops: Vec<RawOp>,
}

/// A field that is there, whatever its value (null included).
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// A list of operations on one collection.
#[derive(Object, Debug)]
#[oai(example)]
pub struct BatchRequest {
    #[oai(validator(max_items = 1000))]
    ops: Vec<BatchOp>,
}

impl Example for BatchRequest {
    fn example() -> Self {
        Self {
            ops: vec![
                BatchOp {
                    op: OpKind::Put,
                    id: "alice".into(),
                    data: Some(json!({"name": "Alice"})),
                    expected_version: Some(0),
                    ttl: None,
                },
                BatchOp {
                    op: OpKind::Patch,
                    id: "bob".into(),
                    data: Some(json!({"team": "blue"})),
                    expected_version: Some(4),
                    ttl: None,
                },
                BatchOp {
                    op: OpKind::Delete,
                    id: "carol".into(),
                    data: None,
                    expected_version: None,
                    ttl: None,
                },
                BatchOp {
                    op: OpKind::Get,
                    id: "alice".into(),
                    data: None,
                    expected_version: None,
                    ttl: None,
                },
            ],
        }
    }
}

/// One operation's answer: its own status, the document where there is
/// one, or what went wrong.
#[derive(Object)]
pub struct BatchResult {
    /// 200, 201, 204, 400, 404, 412, 422 (the document would not match the
    /// collection's schema, or cannot take the patch), or 5xx when the store
    /// failed.
    status: u16,
    doc: Option<super::docs::DocEnvelope>,
    detail: Option<String>,
    /// With a 422 for the collection's schema: where and why.
    violations: Option<Vec<super::error::ViolationBody>>,
}

/// The answers, in the order of the operations.
#[derive(Object)]
pub struct BatchResponseBody {
    results: Vec<BatchResult>,
}

#[derive(ApiResponse)]
pub enum BatchResponse {
    /// Every operation was tried; each result has its own status.
    #[oai(status = 200)]
    Done(RawJson<BatchResponseBody>),
}

/// A line an import could not take.
#[derive(Object, Debug)]
pub struct RejectedLine {
    /// 1-based line number.
    line: u64,
    detail: String,
}

/// What an import did.
#[derive(Object, Debug)]
pub struct ImportReport {
    /// Lines read (blank lines included).
    lines: u64,
    /// Documents stored (created, replaced, or already equal).
    imported: u64,
    /// Lines refused, all of them counted.
    rejected_count: u64,
    /// The first refused lines and why.
    rejected: Vec<RejectedLine>,
}

/// A collection and its number of documents.
#[derive(Object)]
pub struct CollectionSummary {
    name: String,
    documents: u64,
}

#[derive(Object)]
pub struct CollectionList {
    collections: Vec<CollectionSummary>,
}

#[derive(Object)]
pub struct Dropped {
    collection: String,
    /// Documents deleted.
    deleted: u64,
}

#[OpenApi(prefix_path = "/v1/collections", tag = "ApiTags::Collections")]
impl CollectionsApi {
    /// Apply a list of operations
    ///
    /// Up to 1000 put / patch / delete / get operations, each with an
    /// optional `expected_version` (0: must not exist). Operations whose
    /// documents live on the same shard are applied in order and commit in
    /// one transaction: they become visible together, and a crash keeps all
    /// or none of them. Operations on different shards commit separately, so
    /// the batch as a whole is not atomic. A failed precondition or a bad
    /// operation fails that operation alone; the answer gives each its own
    /// status.
    #[oai(path = "/:collection/batch", method = "post")]
    async fn batch(
        &self,
        auth: Credentials,
        collection: Path<CollectionParam>,
        body: JsonBody<BatchRequest>,
    ) -> Result<BatchResponse, ProblemError> {
        let caller = self.access.caller(&auth, Flavor::V1).map_err(ProblemError)?;
        let collection = collection.0 .0;
        let request: RawBatch =
            serde_json::from_value(body.0).map_err(|e| bad_request(format!("the body is not a batch: {e}")))?;
        if let Some((index, name)) = request.ops.iter().enumerate().find_map(|(i, op)| {
            [("expected_version", op.expected_version), ("ttl", op.ttl)]
                .into_iter()
                .find(|(_, n)| n.is_some_and(|n| n > MAX_NUMBER))
                .map(|(name, _)| (i, name))
        }) {
            return Err(bad_request(format!(
                "the body is not a batch: operation {index}'s {name} is over {MAX_NUMBER}"
            )));
        }
        if request.ops.len() > MAX_BATCH {
            return Err(bad_request(format!(
                "a batch holds at most {MAX_BATCH} operations, not {}",
                request.ops.len()
            )));
        }
        let writes = request.ops.iter().any(|op| op.op != OpKind::Get);
        let need = if writes { Scope::Write } else { Scope::Read };
        caller.allow(need, Some(&collection)).map_err(ProblemError)?;

        // Operations that parse go to the store; the others keep their error.
        let mut results: Vec<Option<Result<(DocId, WriteOutcome), ApiError>>> = Vec::with_capacity(request.ops.len());
        let mut valid = Vec::new();
        let mut valid_at = Vec::new();
        for (index, op) in request.ops.into_iter().enumerate() {
            match batch_operation(op) {
                Ok(operation) => {
                    valid_at.push(index);
                    valid.push(operation);
                    results.push(None);
                }
                Err(err) => results.push(Some(Err(err.0))),
            }
        }
        let ids: Vec<DocId> = valid.iter().map(|(id, _, _)| id.clone()).collect();
        let answers = self.store.write_many(&collection, valid).await;
        for ((index, id), answer) in valid_at.into_iter().zip(ids).zip(answers) {
            results[index] = Some(
                answer
                    .map(|outcome| (id, outcome))
                    .map_err(|e| ApiError::from_store(Flavor::V1, e)),
            );
        }

        let mut body = String::from("{\"results\":[");
        let mut room = self.page_bytes;
        for (i, result) in results.into_iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            let result = result.unwrap_or_else(|| {
                Err(ApiError::from_store(
                    Flavor::V1,
                    StoreError::Internal("a batch operation got no answer"),
                ))
            });
            body.push_str(&batch_result_json(&collection, result, &mut room));
        }
        body.push_str("]}");
        Ok(BatchResponse::Done(RawJson::new(body)))
    }

    /// Import documents from NDJSON
    ///
    /// One JSON object per line: `{"id": "alice", "data": {...}}`, with
    /// optional `ttl` (seconds) or `expires_at` (RFC 3339); without `id`,
    /// the document gets a fresh one. The lines of an export import as they
    /// are. The body is streamed (any size; each line at most the body limit)
    /// and written in batches of 500 lines, each batch one transaction per
    /// shard. Bad lines are skipped and reported with their line numbers.
    #[oai(path = "/:collection/import", method = "post")]
    async fn import(
        &self,
        auth: Credentials,
        collection: Path<CollectionParam>,
        body: NdjsonBody,
    ) -> Result<Json<ImportReport>, ProblemError> {
        let caller = self.access.caller(&auth, Flavor::V1).map_err(ProblemError)?;
        let collection = collection.0 .0;
        caller.allow(Scope::Write, Some(&collection)).map_err(ProblemError)?;

        let mut reader = BufReader::new(body.0.into_async_read());
        let mut report = ImportReport {
            lines: 0,
            imported: 0,
            rejected_count: 0,
            rejected: Vec::new(),
        };
        let mut chunk: Vec<(u64, Option<DocId>, Action)> = Vec::with_capacity(IMPORT_CHUNK);
        let mut chunk_bytes = 0usize;
        let mut line = Vec::new();
        loop {
            let read = read_line(&mut reader, &mut line, self.max_line_bytes)
                .await
                .map_err(|e| bad_request(format!("cannot read the body after line {}: {e}", report.lines)))?;
            let Some(fits) = read else { break };
            report.lines += 1;
            let number = report.lines;
            if !fits {
                reject(
                    &mut report,
                    number,
                    format!("the line is longer than {} bytes", self.max_line_bytes),
                );
                continue;
            }
            if std::str::from_utf8(&line).is_err() {
                // NDJSON is UTF-8: bytes that are not are no stream of lines
                // to report on, so the import stops here.
                self.import_chunk(&collection, &mut chunk, &mut report).await?;
                return Err(bad_request(format!(
                    "line {number} is not UTF-8, as NDJSON must be; the import stopped there ({} documents stored before)",
                    report.imported
                )));
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match self.import_line(&line).await {
                Ok((id, action)) => {
                    chunk_bytes += action.bytes();
                    chunk.push((number, id, action));
                }
                Err(detail) => reject(&mut report, number, detail),
            }
            if chunk.len() >= IMPORT_CHUNK || chunk_bytes >= self.page_bytes {
                self.import_chunk(&collection, &mut chunk, &mut report).await?;
                chunk_bytes = 0;
            }
        }
        self.import_chunk(&collection, &mut chunk, &mut report).await?;
        tracing::info!(collection = %collection, lines = report.lines, imported = report.imported, rejected = report.rejected_count, "import finished");
        Ok(Json(report))
    }

    /// Export a collection as NDJSON
    ///
    /// Every document in id order, one envelope per line, streamed: memory
    /// stays bounded whatever the collection's size. Not a point-in-time
    /// snapshot: a document changed during the export may appear in either
    /// state. If the store fails midway the stream is cut off without its
    /// final chunk, so a client cannot mistake it for a complete export.
    #[oai(path = "/:collection/export", method = "get")]
    async fn export(
        &self,
        auth: Credentials,
        collection: Path<CollectionParam>,
    ) -> Result<ExportResponse, ProblemError> {
        let caller = self.access.caller(&auth, Flavor::V1).map_err(ProblemError)?;
        let collection = collection.0 .0;
        caller.allow(Scope::Read, Some(&collection)).map_err(ProblemError)?;
        let lines = self.store.export(&collection).map(move |item| match item {
            Ok(listed) => {
                let key = DocKey::new(collection.clone(), listed.id);
                let mut line = envelope_json(&key, &listed.doc, true);
                line.push('\n');
                Ok(bytes::Bytes::from(line))
            }
            Err(e) => {
                tracing::error!(error = %e, "export failed midway");
                Err(std::io::Error::other(e.to_string()))
            }
        });
        Ok(ExportResponse::Lines(Ndjson(poem::Body::from_bytes_stream(lines))))
    }

    /// List collections
    ///
    /// Every collection the caller may read, with its number of documents.
    /// A key limited to some collections counts those alone; counting every
    /// collection reads every shard's whole collection index, so requests
    /// that arrive while such a count runs share the next one.
    #[oai(path = "/", method = "get")]
    async fn collections(&self, auth: Credentials) -> Result<Json<CollectionList>, ProblemError> {
        let caller = self.access.caller(&auth, Flavor::V1).map_err(ProblemError)?;
        let summary = |c: &crate::store::CollectionInfo| CollectionSummary {
            name: c.name.as_str().to_owned(),
            documents: c.documents,
        };
        let collections = match caller.readable_collections() {
            // A key that reads nothing has nothing to list.
            None => Vec::new(),
            Some(Some(only)) => self.store.collections_of(&only).await?.iter().map(summary).collect(),
            Some(None) => self
                .every_count
                .get(|| self.store.collections())
                .await?
                .iter()
                .map(summary)
                .collect(),
        };
        Ok(Json(CollectionList { collections }))
    }

    /// Drop a collection
    ///
    /// Deletes every document of the collection; `confirm` must repeat its
    /// name. Needs an admin key. The documents are deleted in chunks, so
    /// other writes keep flowing; documents written to the collection while
    /// it is being dropped may survive.
    #[oai(path = "/:collection", method = "delete")]
    async fn drop_collection(
        &self,
        auth: Credentials,
        collection: Path<CollectionParam>,
        /// The collection's name again, to confirm (else 400)
        confirm: Query<Confirm>,
    ) -> Result<Json<Dropped>, ProblemError> {
        let caller = self.access.caller(&auth, Flavor::V1).map_err(ProblemError)?;
        let collection = collection.0 .0;
        caller.allow(Scope::Admin, Some(&collection)).map_err(ProblemError)?;
        if confirm.0 .0.as_deref() != Some(collection.as_str()) {
            return Err(bad_request(format!(
                "to drop collection {:?}, repeat its name: ?confirm={}",
                collection.as_str(),
                collection
            )));
        }
        let deleted = self.store.drop_collection(&collection).await?;
        tracing::warn!(collection = %collection, deleted, "collection dropped");
        Ok(Json(Dropped {
            collection: collection.as_str().to_owned(),
            deleted,
        }))
    }
}

#[derive(ApiResponse)]
pub enum ExportResponse {
    /// One document envelope per line, in id order.
    #[oai(status = 200)]
    Lines(Ndjson),
}

impl CollectionsApi {
    /// One import line as an id (`None`: a fresh one) and a put, or why it
    /// is refused.
    async fn import_line(&self, line: &[u8]) -> Result<(Option<DocId>, Action), String> {
        let mut fields: serde_json::Map<String, Value> = match serde_json::from_slice(line) {
            Ok(Value::Object(fields)) => fields,
            Ok(_) => return Err("not a JSON object with id and data".into()),
            Err(e) => return Err(format!("not a JSON object with id and data: {}", json_error(&e))),
        };
        // `"data": null` is a document (null); a missing `data` is not.
        let data = fields.remove("data").ok_or("missing \"data\"")?;
        let ttl = match fields.remove("ttl") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.is_u64() => n.as_u64(),
            Some(other) => return Err(format!("ttl must be a number of seconds, not {other}")),
        };
        let expires_at = match fields.remove("expires_at") {
            None | Some(Value::Null) => None,
            Some(Value::String(at)) => Some(at),
            Some(other) => return Err(format!("expires_at must be an RFC 3339 time, not {other}")),
        };
        let expires_at_ms = match (ttl, expires_at) {
            (Some(_), Some(_)) => return Err("give ttl or expires_at, not both".into()),
            (Some(ttl), None) => expiry(Some(ttl)).map_err(|e| e.0.detail)?,
            (None, Some(at)) => {
                let at_ms = parse_time(&at).ok_or(format!("expires_at {at:?} is not an RFC 3339 time"))?;
                if at_ms <= crate::clock::now_millis() {
                    return Err(format!("expires_at {at:?} is in the past"));
                }
                Some(at_ms)
            }
            (None, None) => None,
        };
        let parsed_id = fields.remove("id");
        let id = match parsed_id {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) => Some(parse_id(&id).map_err(|e| e.0.detail)?),
            Some(Value::Number(n)) if n.is_u64() => Some(parse_id(&n.to_string()).map_err(|e| e.0.detail)?),
            Some(other) => return Err(format!("id must be a string, not {other}")),
        };
        let put = Action::put(&data, expires_at_ms).map_err(|e| e.to_string())?;
        Ok((id, put))
    }

    /// Writes a chunk of import lines; a refused write is a rejected line,
    /// a failing store ends the import. Lines without an id take fresh ids,
    /// create-only, as every anonymous write does.
    async fn import_chunk(
        &self,
        collection: &CollectionName,
        chunk: &mut Vec<(u64, Option<DocId>, Action)>,
        report: &mut ImportReport,
    ) -> Result<(), ProblemError> {
        if chunk.is_empty() {
            return Ok(());
        }
        // Lines are applied in order, each a put. Named ids move the counter
        // first, so a line without id never gets an id a later line of the
        // same chunk names; and its fresh id is written create-only, so if
        // anyone else holds it, the line is written again under another.
        for (_, id, _) in chunk.iter() {
            if let Some(id) = id {
                self.store.note_id(id);
            }
        }
        let mut numbers = Vec::with_capacity(chunk.len());
        let mut ops = Vec::with_capacity(chunk.len());
        for (number, id, action) in chunk.drain(..) {
            let (id, expect) = match id {
                Some(id) => (id, Expect::Any),
                None => match self.store.allocate_id().await {
                    Ok(id) => (id, Expect::Absent),
                    Err(e) => return Err(e.into()),
                },
            };
            numbers.push(number);
            ops.push((id, expect, action));
        }
        let retries: Vec<Action> = ops.iter().map(|(_, _, action)| action.clone()).collect();
        let answers = self.store.write_many(collection, ops).await;
        for ((number, answer), action) in numbers.into_iter().zip(answers).zip(retries) {
            let answer = match answer {
                // A client took the fresh id first: store under another.
                Err(StoreError::PreconditionFailed { .. }) => {
                    self.store.create_with(collection, action).await.map(|_| ())
                }
                other => other.map(|_| ()),
            };
            match answer {
                Ok(()) => report.imported += 1,
                // A line the collection's schema refuses is refused alone,
                // as a line that is not JSON is.
                Err(e @ StoreError::SchemaViolation { .. }) => reject(report, number, e.to_string()),
                Err(e) => {
                    let mut failure = ApiError::from_store(Flavor::V1, e);
                    failure.detail = format!(
                        "the import stopped at line {number} ({} documents stored before): {}",
                        report.imported, failure.detail
                    );
                    return Err(ProblemError(failure));
                }
            }
        }
        Ok(())
    }
}

/// Counts a refused line and reports the first ones, each reason cut short:
/// it may quote the line, which can be as long as a body.
fn reject(report: &mut ImportReport, line: u64, detail: String) {
    report.rejected_count += 1;
    if report.rejected.len() < MAX_REPORTED {
        report.rejected.push(RejectedLine {
            line,
            detail: excerpt(&detail, 300),
        });
    }
}

/// Reads one line (without its `\n`) into `line`, keeping at most `limit`
/// bytes. `None` at the end of input; `Some(false)` if the line was longer
/// than `limit` (the rest of it is skipped).
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<Option<bool>> {
    line.clear();
    let mut fits = true;
    let mut read_any = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(read_any.then_some(fits));
        }
        read_any = true;
        let (part, done) = match available.iter().position(|&b| b == b'\n') {
            Some(end) => (&available[..end], Some(end + 1)),
            None => (available, None),
        };
        if fits && line.len() + part.len() <= limit {
            line.extend_from_slice(part);
        } else {
            fits = false;
            line.clear();
        }
        let consumed = done.unwrap_or(available.len());
        reader.consume(consumed);
        if done.is_some() {
            return Ok(Some(fits));
        }
    }
}

/// A batch operation as the store takes it, or its 400.
fn batch_operation(op: RawOp) -> Result<(DocId, Expect, Action), ProblemError> {
    let id = parse_id(&op.id)?;
    let expect = match op.expected_version {
        None => Expect::Any,
        Some(0) => Expect::Absent,
        Some(version) => Expect::Version(vec![version]),
    };
    let ttl = op.ttl;
    let action = match op.op {
        OpKind::Put => Action::put(
            &op.data.ok_or_else(|| bad_request("a put needs data: the document"))?,
            expiry(ttl)?,
        )?,
        OpKind::Patch => Action::patch(
            op.data
                .ok_or_else(|| bad_request("a patch needs data: the merge patch"))?,
            expiry(ttl)?.map(Some),
        )?,
        OpKind::Delete | OpKind::Get if ttl.is_some() || op.data.is_some() => {
            return Err(bad_request("delete and get take no data or ttl"))
        }
        OpKind::Delete => Action::Delete,
        OpKind::Get => Action::Read,
    };
    Ok((id, expect, action))
}

/// One operation's result as JSON. `room`: the bytes of documents the
/// answer may still hold; past it, a document comes without its data.
fn batch_result_json(
    collection: &CollectionName,
    result: Result<(DocId, WriteOutcome), ApiError>,
    room: &mut usize,
) -> String {
    let mut with_doc = |status: u16, id: DocId, doc: &crate::store::Document| {
        let key = DocKey::new(collection.clone(), id);
        if doc.data.len() <= *room {
            *room -= doc.data.len();
            return format!("{{\"status\":{status},\"doc\":{}}}", envelope_json(&key, doc, true));
        }
        *room = 0;
        format!(
            "{{\"status\":{status},\"doc\":{},\"detail\":{}}}",
            envelope_json(&key, doc, false),
            json_string(&format!(
                "the document's data is left out: this answer already holds the most document bytes one answer may \
                 (EXDAAS_MAX_PAGE_BYTES); read it with GET {}",
                location(&key)
            ))
        )
    };
    match result {
        Ok((id, WriteOutcome::Written { doc, created: true })) => with_doc(201, id, &doc),
        Ok((id, WriteOutcome::Written { doc, .. } | WriteOutcome::Unchanged(doc) | WriteOutcome::Read(Some(doc)))) => {
            with_doc(200, id, &doc)
        }
        Ok((_, WriteOutcome::Deleted(_))) => "{\"status\":204}".to_owned(),
        Ok((id, WriteOutcome::NotFound | WriteOutcome::Read(None))) => json!({
            "status": 404,
            "detail": format!("document {:?} not found in collection {:?}", id.as_str(), collection.as_str()),
        })
        .to_string(),
        Err(err) if !err.violations.is_empty() => json!({
            "status": err.status.as_u16(),
            "detail": err.detail,
            "violations": super::error::violations_json(&err.violations),
        })
        .to_string(),
        Err(err) => json!({"status": err.status.as_u16(), "detail": err.detail}).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], limit: usize) -> Vec<Option<(bool, String)>> {
        let mut reader = BufReader::with_capacity(4, input);
        let mut line = Vec::new();
        let mut out = Vec::new();
        while let Some(fits) = read_line(&mut reader, &mut line, limit).await.expect("reads") {
            out.push(Some((fits, String::from_utf8_lossy(&line).into_owned())));
        }
        out
    }

    #[tokio::test]
    async fn lines_are_split_and_bounded() {
        let got = lines(b"ab\n\nabcdefgh\nxyz", 5).await;
        assert_eq!(
            got,
            vec![
                Some((true, "ab".into())),
                Some((true, String::new())),
                Some((false, String::new())),
                Some((true, "xyz".into())),
            ]
        );
        assert!(lines(b"", 5).await.is_empty());
    }
}
