//! Request and response bodies that poem-openapi's `Json` does not cover:
//! a JSON body read with the configured size limit (so 413 and clear 400s
//! come from one place), a form body in bracket encoding, and a response whose
//! JSON is assembled from already-serialized document text instead of being
//! parsed and serialized again.

use std::marker::PhantomData;

use bytes::Bytes;
use poem::http::StatusCode;
use poem::{IntoResponse, Request, RequestBody, Response};
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use poem_openapi::{impl_apirequest_for_payload, ApiResponse};
use serde_json::{Map, Value};
use tokio::io::AsyncReadExt;

use super::brackets::{self, FormFields};
use super::text::json_error;

/// The largest body accepted, put in the request's data by `api::edge`.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Reads the whole body, refusing more than the configured limit with 413.
async fn read_limited(request: &Request, body: &mut RequestBody) -> poem::Result<Vec<u8>> {
    let limit = request.data::<BodyLimit>().map_or(1 << 20, |l| l.0);
    let too_large = || {
        poem::Error::from_string(
            format!("request body is larger than the limit of {limit} bytes"),
            StatusCode::PAYLOAD_TOO_LARGE,
        )
    };
    let declared = request
        .headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let read_error = |e: std::io::Error| {
        poem::Error::from_string(format!("cannot read the request body: {e}"), StatusCode::BAD_REQUEST)
    };
    if declared.is_some() {
        // hyper enforces a declared length, which is within the limit.
        return body
            .take()?
            .into_vec()
            .await
            .map_err(|e| read_error(std::io::Error::other(e)));
    }
    let mut bytes = Vec::new();
    body.take()?
        .into_async_read()
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(read_error)?;
    if bytes.len() > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

fn is_json(content_type: &str) -> bool {
    content_type
        .parse::<mime::Mime>()
        .is_ok_and(|m| m.type_() == "application" && (m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json")))
}

/// A JSON request body (`application/json` or any `+json` type). `T` only
/// documents its schema; the value is kept as parsed JSON.
pub struct JsonBody<T>(pub Value, pub PhantomData<T>);

impl<T: Type> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = "application/json";

    fn check_content_type(content_type: &str) -> bool {
        is_json(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type> ParsePayload for JsonBody<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        read_json(request, body).await.map(|value| Self(value, PhantomData))
    }
}

/// Reads the whole body (within the limit) and parses it as JSON.
async fn read_json(request: &Request, body: &mut RequestBody) -> poem::Result<Value> {
    let bytes = read_limited(request, body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(poem::Error::from_string(
            "the request body is empty; send a JSON document",
            StatusCode::BAD_REQUEST,
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        poem::Error::from_string(
            format!("the request body is not valid JSON: {}", json_error(&e)),
            StatusCode::BAD_REQUEST,
        )
    })
}

impl_apirequest_for_payload!(JsonBody<T>, T: Type);

/// An `application/merge-patch+json` body (RFC 7396). Only that type: a
/// JSON Patch (`application/json-patch+json`) means something else and gets
/// 415. `T` only documents the schema.
pub struct MergePatchBody<T>(pub Value, pub PhantomData<T>);

impl<T: Type> Payload for MergePatchBody<T> {
    const CONTENT_TYPE: &'static str = "application/merge-patch+json";

    fn check_content_type(content_type: &str) -> bool {
        content_type
            .parse::<mime::Mime>()
            .is_ok_and(|m| m.essence_str() == Self::CONTENT_TYPE)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type> ParsePayload for MergePatchBody<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        read_json(request, body).await.map(|value| Self(value, PhantomData))
    }
}

impl_apirequest_for_payload!(MergePatchBody<T>, T: Type);

/// A request body of newline-delimited JSON (`application/x-ndjson`, or
/// `application/jsonl`), handed over unread so it can be streamed: the
/// body limit applies to each line, not to the whole.
pub struct NdjsonBody(pub poem::Body);

impl Payload for NdjsonBody {
    const CONTENT_TYPE: &'static str = "application/x-ndjson";

    fn check_content_type(content_type: &str) -> bool {
        content_type
            .parse::<mime::Mime>()
            .is_ok_and(|m| matches!(m.essence_str(), "application/x-ndjson" | "application/jsonl"))
    }

    fn schema_ref() -> MetaSchemaRef {
        super::params::ImportLines::schema_ref()
    }
}

impl ParsePayload for NdjsonBody {
    const IS_REQUIRED: bool = true;

    async fn from_request(_request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        Ok(Self(body.take()?))
    }
}

impl_apirequest_for_payload!(NdjsonBody);

/// A streamed response of newline-delimited JSON.
pub struct Ndjson(pub poem::Body);

impl Payload for Ndjson {
    const CONTENT_TYPE: &'static str = "application/x-ndjson";

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(poem_openapi::registry::MetaSchema::new_with_format(
            "string", "binary",
        )))
    }
}

impl IntoResponse for Ndjson {
    fn into_response(self) -> Response {
        Response::builder().content_type(Self::CONTENT_TYPE).body(self.0)
    }
}

/// An `application/x-www-form-urlencoded` body in Rack/Plug bracket encoding
/// (`id=7&data[color]=blue`), as the original accepted. `T` documents the
/// schema and names the fields read.
pub struct FormBody<T>(pub Map<String, Value>, pub PhantomData<T>);

impl<T: Type + FormFields> Payload for FormBody<T> {
    const CONTENT_TYPE: &'static str = "application/x-www-form-urlencoded";

    fn check_content_type(content_type: &str) -> bool {
        content_type
            .parse::<mime::Mime>()
            .is_ok_and(|m| m.essence_str() == Self::CONTENT_TYPE)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type + FormFields> ParsePayload for FormBody<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let bytes = read_limited(request, body).await?;
        brackets::parse(&bytes, T::FIELDS)
            .map(|map| Self(map, PhantomData))
            .map_err(|e| poem::Error::from_string(format!("the form body is malformed: {e}"), StatusCode::BAD_REQUEST))
    }
}

impl_apirequest_for_payload!(FormBody<T>, T: Type + FormFields);

/// A JSON response whose bytes are already assembled. `T` documents the schema.
pub struct RawJson<T>(pub Bytes, pub PhantomData<T>);

impl<T> RawJson<T> {
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Self(bytes.into(), PhantomData)
    }
}

impl<T: Type> Payload for RawJson<T> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Send> IntoResponse for RawJson<T> {
    fn into_response(self) -> Response {
        Response::builder()
            .content_type("application/json; charset=utf-8")
            .body(self.0)
    }
}

impl<T: Type> ApiResponse for RawJson<T> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: Self::CONTENT_TYPE,
                    schema: Self::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}
