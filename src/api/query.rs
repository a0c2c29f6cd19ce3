//! `POST /v1/collections/{collection}/query`: documents found by what is
//! in them. The language and its meaning live in `store::query`; this is
//! its HTTP face: the body read part by part, each mistake a 400 naming
//! the part, the page written as JSON.

use poem_openapi::param::Path;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde_json::{json, Value};

use super::auth::{Access, Credentials};
use super::docs::{bad_request, write_envelope, DocEnvelope};
use super::error::ProblemError;
use super::params::CollectionParam;
use super::payload::{JsonBody, RawJson};
use super::tags::ApiTags;
use super::text::json_string;
use crate::domain::access::Scope;
use crate::domain::DocKey;
use crate::store::query::{parse_fields, parse_sort, Cursor, Filter, Query, QueryLimits, QueryPage};
use crate::store::{Store, MAX_PAGE};

const DEFAULT_LIMIT: usize = 100;

pub struct QueryApi {
    pub store: Store,
    pub access: Access,
    /// What a query may read and do, and the threads queries share.
    pub limits: QueryLimits,
}

/// A query. Every part is optional: `{}` pages through the whole
/// collection in id order.
#[derive(Object)]
#[oai(deny_unknown_fields)]
pub struct QueryRequest {
    /// Conditions on field paths (dot-separated): `{"age": {"$gte": 18},
    /// "city": "Oslo"}`; operators `$eq $ne $gt $gte $lt $lte $in $nin
    /// $exists $prefix $contains`, and `$and $or $not` around filters.
    filter: Option<Value>,
    /// Field paths to sort by, each with a leading `-` for descending; ties
    /// go by id. At most 4.
    sort: Option<Vec<String>>,
    /// Field paths to keep in each document's `data` (all without it).
    fields: Option<Vec<String>>,
    /// Page size: 1 to 1000, default 100.
    #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
    limit: Option<u64>,
    /// The `next_cursor` of the previous page, with the same filter and
    /// sort.
    cursor: Option<String>,
    /// Also count every matching document (not only this page's).
    count: Option<bool>,
    /// Also say how the query ran: which index (or a scan) and how many
    /// documents each shard read.
    explain: Option<bool>,
}

/// How a query ran.
#[derive(Object)]
pub struct Explain {
    /// `index`: through the index named in `index`; `scan`: every document
    /// of the collection was read.
    plan: String,
    #[oai(nullable)]
    index: Option<String>,
    /// Index entries (or, for a scan, documents) read, per shard.
    read_per_shard: Vec<u64>,
}

/// A page of a query's answer.
#[derive(Object)]
pub struct QueryResult {
    items: Vec<DocEnvelope>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    #[oai(nullable)]
    next_cursor: Option<String>,
    /// With `count`: every document that matches.
    #[oai(nullable)]
    count: Option<u64>,
    /// With `explain`.
    #[oai(nullable)]
    explain: Option<Explain>,
}

#[derive(ApiResponse)]
pub enum QueryResponse {
    /// A page of the matching documents, in the query's order.
    #[oai(status = 200)]
    Page(RawJson<QueryResult>),
}

#[OpenApi(prefix_path = "/v1/collections", tag = "ApiTags::Collections")]
impl QueryApi {
    /// Find documents by their fields
    ///
    /// Filters on field paths, sorts, projects and pages. What it means:
    ///
    /// - A field path is dot-separated object keys (`address.city`); a
    ///   segment of digits also indexes an array (`tags.0`).
    /// - `{"f": v}` or `$eq`: equal; `$ne`; `$gt` `$gte` `$lt` `$lte` with a
    ///   number or a string; `$in` / `$nin` (up to 256 values); `$exists`;
    ///   `$prefix` (a string starting with it); `$contains` (an array with
    ///   an equal element). Conditions on several fields, and several
    ///   operators on one, must all hold; `$and` / `$or` take lists of
    ///   filters, `$not` one.
    /// - A missing field is not `null`: `{"f": null}` matches a present
    ///   `null` only, `{"f": {"$exists": false}}` a missing field; `$ne` and
    ///   `$nin` match a missing field.
    /// - Values compare only with values of their own type: numbers as
    ///   numbers (`1` equals `1.0`), strings byte by byte (UTF-8), `false`
    ///   before `true`; `$gt` and the other comparisons never match another
    ///   type. Arrays and objects are equal when their canonical JSON is.
    /// - Sorting orders types (missing, null, booleans, numbers, strings,
    ///   arrays, objects), then values; ties go by id.
    ///
    /// A mistake is a 400 whose `detail` names the part (`filter.age.$gt`).
    /// A page holds at most `limit` documents and `EXDAAS_MAX_PAGE_BYTES` of them;
    /// `next_cursor` goes on from its last one. A query runs on the built
    /// index that fits it best (`explain` says which), else it reads the
    /// whole collection; one that would read more than
    /// `EXDAAS_QUERY_MAX_SCAN` documents or entries is refused with 422
    /// naming the index to declare, and so is one whose filter would do
    /// more than `EXDAAS_QUERY_MAX_WORK` units of work (bytes of documents
    /// read and of values compared, conditions checked).
    #[oai(path = "/:collection/query", method = "post")]
    async fn query(
        &self,
        auth: Credentials,
        collection: Path<CollectionParam>,
        body: JsonBody<QueryRequest>,
    ) -> Result<QueryResponse, ProblemError> {
        let collection = self.access.authorized(&auth, Scope::Read, collection.0 .0)?;
        let request = Request::parse(&body.0).map_err(bad_request)?;
        let page = QueryPage {
            limit: request.limit,
            after: request.cursor,
            count: request.count,
        };
        // A client that hangs up ends its connection, which drops this
        // future (src/connections.rs): the query's work stops with it.
        let answer = self.store.query(&collection, request.query, page, &self.limits).await?;

        let mut out = String::with_capacity(64 + answer.items.iter().map(|(_, d)| d.data.len() + 200).sum::<usize>());
        out.push_str("{\"items\":[");
        for (i, (id, doc)) in answer.items.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_envelope(&mut out, &DocKey::new(collection.clone(), id.clone()), doc, true);
        }
        out.push_str("],\"next_cursor\":");
        match &answer.next {
            Some(cursor) => out.push_str(&json_string(&cursor.encode())),
            None => out.push_str("null"),
        }
        out.push_str(",\"count\":");
        match answer.count {
            Some(n) => out.push_str(&n.to_string()),
            None => out.push_str("null"),
        }
        out.push_str(",\"explain\":");
        if request.explain {
            let explained = match &answer.index {
                Some(index) => json!({"plan": "index", "index": index, "read_per_shard": answer.read_per_shard}),
                None => json!({"plan": "scan", "index": null, "read_per_shard": answer.read_per_shard}),
            };
            out.push_str(&explained.to_string());
        } else {
            out.push_str("null");
        }
        out.push('}');
        Ok(QueryResponse::Page(RawJson::new(out)))
    }
}

/// A query body, read part by part.
struct Request {
    query: Query,
    limit: usize,
    cursor: Option<Cursor>,
    count: bool,
    explain: bool,
}

impl Request {
    fn parse(body: &Value) -> Result<Self, String> {
        let Value::Object(parts) = body else {
            return Err("the query is a JSON object".into());
        };
        if let Some(unknown) = parts.keys().find(|k| {
            !matches!(
                k.as_str(),
                "filter" | "sort" | "fields" | "limit" | "cursor" | "count" | "explain"
            )
        }) {
            return Err(format!(
                "{unknown}: not a part of a query (filter, sort, fields, limit, cursor, count, explain)"
            ));
        }
        let filter = parts.get("filter").map(Filter::parse).transpose()?;
        let sort = parts.get("sort").map(parse_sort).transpose()?.unwrap_or_default();
        let fields = parts.get("fields").map(parse_fields).transpose()?;
        let limit = match parts.get("limit") {
            None => DEFAULT_LIMIT,
            Some(v) => v
                .as_u64()
                .filter(|n| (1..=MAX_PAGE as u64).contains(n))
                .map(|n| n as usize)
                .ok_or_else(|| format!("limit: from 1 to {MAX_PAGE}, not {v}"))?,
        };
        let flag = |name: &str| match parts.get(name) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(format!("{name}: true or false, not {other}")),
        };
        let cursor = match parts.get("cursor") {
            None => None,
            Some(Value::String(raw)) => Some(Cursor::decode(raw, sort.len())?),
            Some(other) => return Err(format!("cursor: a string, not {other}")),
        };
        Ok(Self {
            query: Query { filter, sort, fields },
            limit,
            cursor,
            count: flag("count")?,
            explain: flag("explain")?,
        })
    }
}
