//! The original service's API, kept wire-compatible: `POST /api`,
//! `GET /api?id=N` and `GET /api/cmd`. Documents are integer-keyed and live in
//! the `default` collection. Client mistakes that crashed the original (a
//! missing or non-numeric id, a missing document, a non-array under
//! FILTER_BOOL) are answered with a 4xx and `{"message": ...}`.

use poem::http::StatusCode;
use poem_openapi::param::{Header, Query};
use poem_openapi::types::Example;
use poem_openapi::{ApiRequest, Object, OpenApi};
use serde_json::{json, Value};

use super::auth::{Access, Credentials};
use super::error::{Flavor, LegacyError};
use super::params::{asks_past_the_cache, CmdQuery, LegacyForm, LegacyId, LegacyWrite};
use super::payload::{FormBody, JsonBody, RawJson};
use super::tags::ApiTags;
use crate::domain::access::Scope;
use crate::domain::{CollectionName, DocId, DocKey};
use crate::store::Store;

pub struct LegacyApi {
    pub store: Store,
    pub access: Access,
    /// The largest answer a command may make (`EXDAAS_MAX_PAGE_BYTES`).
    pub page_bytes: usize,
}

/// A document of the original API; `data` is `null` when there is none.
#[derive(Object)]
#[oai(example)]
pub struct LegacyDoc {
    id: i64,
    data: Value,
}

impl Example for LegacyDoc {
    fn example() -> Self {
        Self {
            id: 7,
            data: json!({"color": "blue"}),
        }
    }
}

/// `POST /api` takes JSON or, as Phoenix did, a bracket-encoded form.
#[derive(ApiRequest)]
pub enum LegacyWriteBody {
    Json(JsonBody<LegacyWrite>),
    Form(FormBody<LegacyForm>),
}

#[OpenApi(tag = "ApiTags::Original")]
impl LegacyApi {
    /// Store a document
    ///
    /// Upserts document `id` with `data`, or with `"id": null` stores it under
    /// the next id from the counter. A write equal to the stored document
    /// changes nothing and answers the same. `id` may come in the query
    /// instead of the body, as Phoenix merged the two (400 without either).
    #[oai(path = "/api", method = "post")]
    async fn write(
        &self,
        auth: Credentials,
        body: LegacyWriteBody,
        /// The document's id, when the body has none
        #[oai(deprecated)]
        id: Query<Option<LegacyId>>,
    ) -> Result<RawJson<LegacyDoc>, LegacyError> {
        self.allow(&auth, Scope::Write)?;
        let mut fields = match body {
            LegacyWriteBody::Json(JsonBody(Value::Object(map), _)) => map,
            LegacyWriteBody::Json(JsonBody(other, _)) => {
                return Err(bad_request(format!(
                    "the body must be a JSON object with \"id\" and \"data\", not {}",
                    kind_of(&other)
                )))
            }
            LegacyWriteBody::Form(FormBody(map, _)) => map,
        };
        let id = match (fields.remove("id"), id.0) {
            (Some(id), _) => parse_id_value(&id)?,
            (None, Some(LegacyId(id))) => Some(id),
            (None, None) => {
                return Err(bad_request(
                    "missing \"id\": send an integer, or null to get a fresh one",
                ))
            }
        };
        let data = fields
            .remove("data")
            .ok_or_else(|| bad_request("missing \"data\": send the document to store"))?;
        let (id, stored) = match id {
            Some(id) => (id, self.store.put(legacy_key(id), &data).await?),
            None => {
                let (id, stored) = self.store.create(CollectionName::legacy(), &data, None).await?;
                let id = id
                    .as_str()
                    .parse()
                    .map_err(|_| LegacyError::new(StatusCode::INTERNAL_SERVER_ERROR, "allocated a non-integer id"))?;
                (id, stored)
            }
        };
        Ok(legacy_doc(id, Some(&stored.doc.data)))
    }

    /// Read a document
    ///
    /// Answers `{"id": N, "data": ...}`, with `"data": null` when document N
    /// does not exist.
    #[oai(path = "/api", method = "get")]
    async fn read(
        &self,
        auth: Credentials,
        id: Query<LegacyId>,
        /// `no-cache`: read what is committed now, past the cache (which,
        /// with several replicas on one database, may be behind by up to
        /// `EXDAAS_REPLICA_POLL_MS`)
        #[oai(name = "Cache-Control")]
        cache_control: Header<Option<String>>,
    ) -> Result<RawJson<LegacyDoc>, LegacyError> {
        self.allow(&auth, Scope::Read)?;
        let id = id.0 .0;
        let key = legacy_key(id);
        let doc = if asks_past_the_cache(cache_control.0.as_deref()) {
            self.store.get_fresh(&key).await?
        } else {
            self.store.get(&key).await?
        };
        Ok(legacy_doc(id, doc.as_ref().map(|d| &d.data)))
    }

    /// Run a command on a document
    ///
    /// `cmd[query]=ONLY&cmd[keys][]=a&cmd[keys][]=b` answers `{"values": [...]}`,
    /// one value per key (`null` when missing). `cmd[query]=FILTER_BOOL&
    /// cmd[keys][key]=colors&cmd[keys][by]=is_blue` answers the elements of the
    /// array `colors` whose field `is_blue` is truthy. Brackets may be
    /// percent-encoded.
    #[oai(path = "/api/cmd", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn cmd(
        &self,
        auth: Credentials,
        id: Query<LegacyId>,
        /// `ONLY` or `FILTER_BOOL`
        #[oai(name = "cmd[query]")]
        query: Query<CmdQuery>,
        /// ONLY: the fields to project, in order (at most 1000)
        #[oai(name = "cmd[keys][]", validator(max_items = 1000))]
        keys: Query<Option<Vec<String>>>,
        /// FILTER_BOOL: the field holding the array
        #[oai(name = "cmd[keys][key]")]
        key: Query<Option<String>>,
        /// FILTER_BOOL: the field of each element that must be truthy
        #[oai(name = "cmd[keys][by]")]
        by: Query<Option<String>>,
    ) -> Result<RawJson<Value>, LegacyError> {
        self.allow(&auth, Scope::Read)?;
        let id = id.0 .0;
        let command = Command::parse(Some(query.0 .0), keys.0.unwrap_or_default(), key.0, by.0)?;
        let doc = self
            .store
            .get(&legacy_key(id))
            .await?
            .ok_or_else(|| LegacyError::new(StatusCode::NOT_FOUND, format!("document {id} not found")))?;
        // Stored text nests at most as deep as serde_json reads, except
        // forms an older server took: those are refused, not a failure.
        let data: Value = serde_json::from_str(&doc.data).map_err(|e| {
            LegacyError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("document {id} cannot be read as a command's input: {e}; replace it with POST /api"),
            )
        })?;
        command.run(id, &data, self.page_bytes).map(RawJson::new)
    }
}

impl LegacyApi {
    /// The original API's documents are the `default` collection's.
    fn allow(&self, auth: &Credentials, need: Scope) -> Result<(), LegacyError> {
        let caller = self.access.caller(auth, Flavor::Legacy).map_err(LegacyError)?;
        caller.allow(need, Some(&CollectionName::legacy())).map_err(LegacyError)
    }
}

/// `GET /api?id=N` from a caller allowed to read, answered before the
/// OpenAPI layer: the original's clients' most frequent request, and the
/// one its "self caching" promise is about. poem-openapi's routing and
/// extraction cost a cached read more than the read itself (measured: 0.75
/// of the bare handler's rate through them, 0.9 without).
///
/// It answers only what the documented route would answer the same way: a
/// query of exactly `id=<integer>`, a caller whose key grants the read, a
/// store that answers. Anything else goes to that route, which answers or
/// refuses it in full, so errors are rendered in one place.
#[derive(Clone)]
pub struct QuickRead {
    store: Store,
    access: Access,
    /// The route as poem's router names it, for metrics and traces.
    route: poem::PathPattern,
}

impl QuickRead {
    pub fn new(store: Store, access: Access) -> Self {
        Self {
            store,
            access,
            route: poem::PathPattern("/api".into()),
        }
    }

    /// The answer, or `None` when the documented route must give it.
    pub async fn answer(&self, req: &poem::Request) -> Option<poem::Response> {
        if req.method() != poem::http::Method::GET || req.uri().path() != "/api" {
            return None;
        }
        // Past the cache is the route's to answer.
        let cache_control = req.headers().get(poem::http::header::CACHE_CONTROL);
        if asks_past_the_cache(cache_control.and_then(|v| v.to_str().ok())) {
            return None;
        }
        let raw = req.uri().query()?.strip_prefix("id=")?;
        let LegacyId(id) = poem_openapi::types::ParseFromParameter::parse_from_parameter(raw).ok()?;
        let authorization = req
            .headers()
            .get(poem::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !self
            .access
            .grants(authorization, Scope::Read, &CollectionName::legacy())
        {
            return None;
        }
        let doc = self.store.get(&legacy_key(id)).await.ok()?;
        let mut resp = poem::IntoResponse::into_response(legacy_doc(id, doc.as_ref().map(|d| &d.data)));
        resp.set_data(self.route.clone());
        Some(resp)
    }
}

/// A parsed `cmd`.
#[derive(Debug, PartialEq)]
enum Command {
    Only { keys: Vec<String> },
    FilterBool { key: String, by: String },
}

impl Command {
    fn parse(
        query: Option<String>,
        keys: Vec<String>,
        key: Option<String>,
        by: Option<String>,
    ) -> Result<Self, LegacyError> {
        match query.as_deref() {
            None => Err(bad_request("missing cmd[query]: send ONLY or FILTER_BOOL")),
            Some("ONLY") => Ok(Command::Only { keys }),
            Some("FILTER_BOOL") => Ok(Command::FilterBool {
                key: key.ok_or_else(|| bad_request("FILTER_BOOL needs cmd[keys][key], the field holding the array"))?,
                by: by
                    .ok_or_else(|| bad_request("FILTER_BOOL needs cmd[keys][by], the field to test in each element"))?,
            }),
            Some(other) => Err(bad_request(format!("{other} not supported"))),
        }
    }

    /// The answer's JSON text, at most `budget` bytes (one key may name a
    /// large field many times over).
    fn run(&self, id: i64, data: &Value, budget: usize) -> Result<String, LegacyError> {
        let unprocessable = |detail: String| LegacyError::new(StatusCode::UNPROCESSABLE_ENTITY, detail);
        let fields = data
            .as_object()
            .ok_or_else(|| unprocessable(format!("document {id} is {}, not an object", kind_of(data))))?;
        let too_large = || {
            unprocessable(format!(
                "the answer would be larger than {budget} bytes (EXDAAS_MAX_PAGE_BYTES); ask for fewer keys"
            ))
        };
        let (open, close, values): (&str, &str, Vec<&Value>) = match self {
            Command::Only { keys } => (
                "{\"values\":[",
                "]}",
                keys.iter().map(|k| fields.get(k).unwrap_or(&Value::Null)).collect(),
            ),
            Command::FilterBool { key, by } => {
                let items = match fields.get(key) {
                    None => return Err(unprocessable(format!("document {id} has no field {key:?}"))),
                    Some(Value::Array(items)) => items,
                    Some(other) => {
                        return Err(unprocessable(format!(
                            "field {key:?} of document {id} is {}, not an array",
                            kind_of(other)
                        )))
                    }
                };
                // Elixir truthiness: everything but nil and false.
                let truthy = |item: &&Value| {
                    item.get(by)
                        .is_some_and(|v| !matches!(v, Value::Null | Value::Bool(false)))
                };
                ("[", "]", items.iter().filter(truthy).collect())
            }
        };
        // Written value by value, never cloned, and stopped at the budget.
        let mut answer = String::from(open);
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                answer.push(',');
            }
            answer.push_str(&value.to_string());
            if answer.len() > budget {
                return Err(too_large());
            }
        }
        answer.push_str(close);
        Ok(answer)
    }
}

fn legacy_key(id: i64) -> DocKey {
    DocKey::new(CollectionName::legacy(), DocId::from_integer(id))
}

/// The original's envelope, `{"id":…,"data":…}`, assembled in one buffer
/// of its final size: every cached GET answers with one.
fn legacy_doc(id: i64, data: Option<&std::sync::Arc<str>>) -> RawJson<LegacyDoc> {
    let data: &str = data.map_or("null", |d| d);
    let mut digits = itoa::Buffer::new();
    let id = digits.format(id);
    let mut body = Vec::with_capacity(id.len() + data.len() + 16);
    body.extend_from_slice(b"{\"id\":");
    body.extend_from_slice(id.as_bytes());
    body.extend_from_slice(b",\"data\":");
    body.extend_from_slice(data.as_bytes());
    body.push(b'}');
    RawJson::new(body)
}

fn bad_request(detail: impl Into<String>) -> LegacyError {
    LegacyError::new(StatusCode::BAD_REQUEST, detail)
}

/// An id sent as a string: an optional `-` and 1 to 18 digits, as the
/// OpenAPI document says (so every such string is a 64-bit integer).
fn parse_id(raw: &str) -> Result<i64, LegacyError> {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    let wrong = || {
        bad_request(format!(
            "id must be an integer, not {:?}",
            super::text::excerpt(raw, 64)
        ))
    };
    if !(1..=18).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(wrong());
    }
    raw.parse().map_err(|_| wrong())
}

/// `Some(id)` for an integer or numeric string, `None` for null.
fn parse_id_value(value: &Value) -> Result<Option<i64>, LegacyError> {
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| bad_request(format!("id must be an integer, not {n}"))),
        Value::String(s) => parse_id(s).map(Some),
        other => Err(bad_request(format!(
            "id must be an integer or null, not {}",
            kind_of(other)
        ))),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `cmd` on document 1 and reads its answer back.
    fn run(cmd: &Command, data: &Value) -> Result<Value, LegacyError> {
        cmd.run(1, data, 1 << 20)
            .map(|text| serde_json::from_str(&text).expect("the answer is JSON"))
    }

    #[test]
    fn an_answer_past_the_budget_is_refused() {
        let cmd = Command::Only {
            keys: vec!["big".into(); 100],
        };
        let data = json!({"big": "x".repeat(1000)});
        assert!(cmd.run(1, &data, 200_000).is_ok());
        let err = cmd.run(1, &data, 50_000).map_err(status).err();
        assert_eq!(err.map(|e| e.0), Some(422));
    }

    #[test]
    fn the_envelope_is_the_originals_for_any_id_and_for_a_missing_document() {
        let text = |doc: RawJson<LegacyDoc>| String::from_utf8(doc.0.to_vec()).expect("UTF-8");
        let data: std::sync::Arc<str> = r#"{"color":"blue"}"#.into();
        assert_eq!(text(legacy_doc(1, Some(&data))), r#"{"id":1,"data":{"color":"blue"}}"#);
        assert_eq!(text(legacy_doc(-42, None)), r#"{"id":-42,"data":null}"#);
        assert_eq!(
            text(legacy_doc(i64::MIN, Some(&data))),
            r#"{"id":-9223372036854775808,"data":{"color":"blue"}}"#
        );
    }

    fn status(err: LegacyError) -> (u16, String) {
        (err.0.status.as_u16(), err.0.detail)
    }

    #[test]
    fn only_projects_fields_with_null_for_missing() {
        let cmd = Command::Only {
            keys: vec!["color".into(), "size".into()],
        };
        assert_eq!(
            run(&cmd, &json!({"color": "blue"})).ok(),
            Some(json!({"values": ["blue", null]}))
        );
    }

    #[test]
    fn filter_bool_keeps_truthy_elements() {
        let cmd = Command::FilterBool {
            key: "colors".into(),
            by: "is_blue".into(),
        };
        let data = json!({"colors": [
            {"name": "sky", "is_blue": true}, {"name": "grass", "is_blue": false},
            {"name": "sea", "is_blue": "very"}, {"name": "rose"}, {"name": "ink", "is_blue": null}, 3
        ]});
        assert_eq!(
            run(&cmd, &data).ok(),
            Some(json!([{"name": "sky", "is_blue": true}, {"name": "sea", "is_blue": "very"}]))
        );
    }

    #[test]
    fn filter_bool_refuses_missing_or_non_array_fields() {
        let cmd = Command::FilterBool {
            key: "colors".into(),
            by: "is_blue".into(),
        };
        assert_eq!(run(&cmd, &json!({})).map_err(status).err().map(|e| e.0), Some(422));
        assert_eq!(
            run(&cmd, &json!({"colors": 5})).map_err(status).err().map(|e| e.0),
            Some(422)
        );
    }

    #[test]
    fn unknown_queries_are_not_supported() {
        let err = Command::parse(Some("NOPE".into()), vec![], None, None)
            .map_err(status)
            .err();
        assert_eq!(err, Some((400, "NOPE not supported".to_string())));
    }

    #[test]
    fn ids_are_integers_numeric_strings_or_null() {
        assert_eq!(parse_id_value(&json!(7)).ok(), Some(Some(7)));
        assert_eq!(parse_id_value(&json!("8")).ok(), Some(Some(8)));
        assert_eq!(parse_id_value(&json!(null)).ok(), Some(None));
        assert!(parse_id_value(&json!(1.5)).is_err());
        assert!(parse_id_value(&json!("abc")).is_err());
        assert!(parse_id_value(&json!([1])).is_err());
    }
}
