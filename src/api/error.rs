//! Errors as the client sees them: one mapping from every failure (a store
//! error, a refused request, a body poem-openapi could not parse) to a status
//! and a JSON body. The original API answers `{"message": ...}`; v1 answers
//! `application/problem+json` (RFC 9457).

use poem::error::ResponseError;
use poem::http::StatusCode;
use poem::Response;
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiResponse, Object};
use serde_json::json;

use crate::store::schema::Violation;
use crate::store::{ErrorKind, StoreError};

/// Which API's error format to answer in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Legacy,
    V1,
}

impl Flavor {
    pub fn of_path(path: &str) -> Self {
        if path.starts_with("/v1/") {
            Flavor::V1
        } else {
            Flavor::Legacy
        }
    }
}

/// A failed request: its status and a sentence saying what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct ApiError {
    pub flavor: Flavor,
    pub status: StatusCode,
    pub detail: String,
    /// Answer with `WWW-Authenticate: Bearer` (a 401).
    pub challenge: bool,
    /// Answer with `Retry-After` (seconds): the failure is temporary.
    pub retry_after: Option<u32>,
    /// A server error's reference: the log line with the whole story
    /// carries it; the client gets it and a stable message.
    pub error_id: Option<String>,
    /// Where and why a document fails its collection's schema (a 422).
    pub violations: Vec<Violation>,
}

impl ApiError {
    pub fn new(flavor: Flavor, status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            flavor,
            status,
            detail: detail.into(),
            challenge: false,
            retry_after: None,
            error_id: None,
            violations: Vec::new(),
        }
    }

    /// A server error: the client gets `public` and an error id; the log
    /// gets the id and `detail`, which may name files or quote the engine.
    pub fn server(flavor: Flavor, status: StatusCode, public: String, detail: &dyn std::fmt::Display) -> Self {
        let error_id = new_error_id();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(error_id = %error_id, error = %detail, status = status.as_u16(), "request refused");
        } else {
            tracing::error!(error_id = %error_id, error = %detail, status = status.as_u16(), "request failed");
        }
        Self {
            detail: format!("{public} (error id {error_id})"),
            error_id: Some(error_id),
            ..Self::new(flavor, status, String::new())
        }
    }

    /// Asks the client for a bearer key.
    pub fn with_challenge(mut self) -> Self {
        self.challenge = true;
        self
    }

    pub fn from_store(flavor: Flavor, err: StoreError) -> Self {
        let status = match &err {
            StoreError::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            StoreError::InvalidDocument { .. } => StatusCode::BAD_REQUEST,
            StoreError::TooMuchToRead { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            StoreError::Unprocessable { .. }
            | StoreError::DocumentTooLarge { .. }
            | StoreError::SchemaViolation { .. }
            | StoreError::QueryTooBroad { .. }
            | StoreError::QueryTooCostly { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            StoreError::InvalidSchema(_) => StatusCode::BAD_REQUEST,
            StoreError::Conflict { .. } | StoreError::SchemaRace { .. } => StatusCode::CONFLICT,
            StoreError::FeedGone { .. } => StatusCode::GONE,
            StoreError::Unavailable { .. } | StoreError::Busy { .. } | StoreError::IdsExhausted { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            StoreError::Engine { error, .. } => match error.kind {
                ErrorKind::Full => StatusCode::INSUFFICIENT_STORAGE,
                ErrorKind::ReadOnly
                | ErrorKind::Damaged
                | ErrorKind::Unavailable
                | ErrorKind::Away
                | ErrorKind::Conflict => StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::Other => StatusCode::INTERNAL_SERVER_ERROR,
            },
            StoreError::DataFolder { .. }
            | StoreError::Database { .. }
            | StoreError::CorruptFile { .. }
            | StoreError::ShardCountMismatch { .. }
            | StoreError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut api_error = if status.is_server_error() {
            Self::server(flavor, status, err.public(), &err)
        } else {
            Self::new(flavor, status, err.to_string())
        };
        if let StoreError::SchemaViolation { violations, .. } = &err {
            api_error.violations = violations.clone();
        }
        // A restarting writer or a full queue clears up by itself.
        let retry = match &err {
            StoreError::Unavailable { .. } | StoreError::Busy { .. } => true,
            StoreError::Engine { error, .. } => {
                matches!(
                    error.kind,
                    ErrorKind::Unavailable | ErrorKind::Away | ErrorKind::Conflict
                )
            }
            _ => false,
        };
        if retry {
            api_error.retry_after = Some(1);
        }
        api_error
    }

    /// Renders any error that left an endpoint, in the flavor of its path;
    /// a parameter poem-openapi could not read in the document's words.
    pub fn render(err: poem::Error, uri: &poem::http::Uri, spec: &super::spec::Spec) -> Response {
        if let Some(api_error) = err.downcast_ref::<ApiError>() {
            return api_error.as_response();
        }
        let path = uri.path();
        let status = err.status();
        let flavor = Flavor::of_path(path);
        if status.is_server_error() {
            return ApiError::server(flavor, status, "the server failed".into(), &err).as_response();
        }
        let detail = match status {
            StatusCode::NOT_FOUND => format!("no route for {path}"),
            StatusCode::METHOD_NOT_ALLOWED => format!("method not allowed on {path}"),
            _ => parameter_problem(&err, uri, spec).unwrap_or_else(|| err.to_string()),
        };
        ApiError::new(flavor, status, detail).as_response()
    }
}

/// What poem-openapi says of a parameter it could not read, in the API's
/// words: a path parameter by the name the document gives it (poem's router
/// calls it `param0`), and what the parameter takes said plainly instead of
/// by type names (`integer(uint64)`) and validator calls
/// (`minimum(1, exclusive: false)`). `None`: not a parameter's error.
fn parameter_problem(err: &poem::Error, uri: &poem::http::Uri, spec: &super::spec::Spec) -> Option<String> {
    use poem_openapi::error::{ParseParamError, ParsePathError};
    let (place, name, reason) = if let Some(e) = err.downcast_ref::<ParsePathError>() {
        let documented = e
            .name
            .strip_prefix("param")
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| spec.path_parameter(uri.path(), n))
            .unwrap_or(e.name);
        ("the path parameter", documented, e.reason.as_str())
    } else if let Some(e) = err.downcast_ref::<ParseParamError>() {
        let in_query = uri
            .query()
            .is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == e.name));
        let place = if spec.path_parameters(uri.path()).any(|p| p == e.name) {
            "the path parameter"
        } else if in_query || e.name.chars().all(|c| !c.is_ascii_uppercase()) {
            "the query parameter"
        } else {
            "the header"
        };
        (place, e.name, e.reason.as_str())
    } else {
        return None;
    };
    // `(occurred while parsing "optional_integer(uint64)")` says nothing a
    // client can act on.
    let reason = reason
        .find(" (occurred while parsing \"")
        .map_or(reason, |at| &reason[..at]);
    let given = uri.query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.chars().take(64).collect::<String>())
    });
    let not = given.map(|v| format!(", not {v:?}")).unwrap_or_default();
    if let Some(check) = reason.strip_prefix("verification failed. ") {
        // A list's length is not about the one value shown.
        let not = if check.contains("Items(") { "" } else { not.as_str() };
        return Some(format!("{place} {name} {}{not}", plain_check(check)));
    }
    if reason.starts_with("Type \"") && reason.ends_with("expects an input value.") {
        return Some(format!("{place} {name} is required"));
    }
    if let Some((kind, why)) = reason
        .strip_prefix("failed to parse \"")
        .and_then(|rest| rest.split_once("\": "))
    {
        return Some(match plain_type(kind) {
            Some(takes) => format!("{place} {name} must be {takes}{not}"),
            // One of exdaas's own types (a collection name, a document id,
            // the original's integer id): its message says it already.
            None => format!("{place} {name}: {why}"),
        });
    }
    Some(format!("{place} {name}: {reason}"))
}

/// A validator's failure (`minimum(1, exclusive: false)`) in words.
fn plain_check(check: &str) -> String {
    let (validator, argument) = check
        .strip_suffix(')')
        .and_then(|c| c.split_once('('))
        .unwrap_or((check, ""));
    let (bound, exclusive) = match argument.split_once(", exclusive: ") {
        Some((bound, exclusive)) => (bound, exclusive == "true"),
        None => (argument, false),
    };
    match (validator, exclusive) {
        ("minimum", false) => format!("must be at least {bound}"),
        ("minimum", true) => format!("must be more than {bound}"),
        ("maximum", false) => format!("must be at most {bound}"),
        ("maximum", true) => format!("must be less than {bound}"),
        ("maxLength", _) => format!("must be at most {bound} characters long"),
        ("minLength", _) => format!("must be at least {bound} characters long"),
        ("maxItems", _) => format!("may be given at most {bound} times"),
        ("minItems", _) => format!("must be given at least {bound} times"),
        ("pattern", _) => format!("is not in the form it takes (it must match {bound})"),
        _ => format!("is not valid ({check})"),
    }
}

/// What a value of poem-openapi's type `kind` is, in words; `None` for a
/// type of exdaas's own.
fn plain_type(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "boolean" => "true or false",
        "string" => "text",
        k if k.starts_with("integer(u") => "a whole number, 0 or more",
        k if k.starts_with("integer(") => "a whole number",
        k if k.starts_with("number(") => "a number",
        _ => return None,
    })
}

impl ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn as_response(&self) -> Response {
        let mut builder = Response::builder().status(self.status);
        if self.challenge {
            builder = builder.header(poem::http::header::WWW_AUTHENTICATE, "Bearer realm=\"exdaas\"");
        }
        if let Some(seconds) = self.retry_after {
            builder = builder.header(poem::http::header::RETRY_AFTER, seconds.to_string());
        }
        let mut body = match self.flavor {
            Flavor::Legacy => json!({ "message": self.detail }),
            Flavor::V1 => json!({
                "type": "about:blank",
                "title": self.status.canonical_reason().unwrap_or("Error"),
                "status": self.status.as_u16(),
                "detail": self.detail,
            }),
        };
        if let (Some(id), Some(fields)) = (&self.error_id, body.as_object_mut()) {
            fields.insert("error_id".into(), id.as_str().into());
        }
        if let (false, Some(fields)) = (self.violations.is_empty(), body.as_object_mut()) {
            fields.insert("violations".into(), violations_json(&self.violations));
        }
        let content_type = match self.flavor {
            Flavor::Legacy => "application/json; charset=utf-8",
            Flavor::V1 => "application/problem+json",
        };
        builder.content_type(content_type).body(body.to_string())
    }
}

/// Schema violations as the error bodies list them.
pub fn violations_json(violations: &[Violation]) -> serde_json::Value {
    violations
        .iter()
        .map(|v| json!({"pointer": v.pointer, "keyword": v.keyword, "message": v.message}))
        .collect()
}

/// One way a document fails its collection's schema.
#[derive(Object)]
pub struct ViolationBody {
    /// JSON Pointer (RFC 6901) to the failing value in the document (`""`:
    /// the document itself).
    pub pointer: String,
    /// The JSON Schema keyword that failed, e.g. `type`, `required`.
    pub keyword: String,
    pub message: String,
}

/// A fresh reference for a server error: 16 hex digits, random, so ids
/// from several processes do not collide in one log store.
fn new_error_id() -> String {
    static FALLBACK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = getrandom::u64().unwrap_or_else(|_| FALLBACK.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    format!("{n:016x}")
}

/// The original API's error body.
#[derive(Object)]
pub struct LegacyErrorBody {
    /// What is wrong, e.g. `NOPE not supported`.
    pub message: String,
    /// On a server error (5xx): the reference the server's log line carries.
    #[oai(skip_serializing_if_is_none)]
    pub error_id: Option<String>,
    /// On a 422 for a document that does not match its collection's schema:
    /// where and why (at most 16).
    #[oai(skip_serializing_if_is_none)]
    pub violations: Option<Vec<ViolationBody>>,
}

/// An RFC 9457 problem document.
#[derive(Object)]
pub struct Problem {
    /// A URI naming the problem type (`about:blank`: the status says it).
    #[oai(rename = "type")]
    pub kind: String,
    /// The status's reason phrase.
    pub title: String,
    pub status: u16,
    /// What is wrong with this request.
    pub detail: String,
    /// On a server error (5xx): the reference the server's log line carries.
    #[oai(skip_serializing_if_is_none)]
    pub error_id: Option<String>,
    /// On a 422 for a document that does not match its collection's schema:
    /// where and why (at most 16).
    #[oai(skip_serializing_if_is_none)]
    pub violations: Option<Vec<ViolationBody>>,
}

/// Statuses an endpoint of the given API may answer besides success.
fn error_meta<T: Type>(content_type: &'static str, statuses: &[(u16, &'static str)]) -> MetaResponses {
    MetaResponses {
        responses: statuses
            .iter()
            .map(|&(status, description)| MetaResponse {
                description,
                status: Some(status),
                status_range: None,
                // The HTTP layer answers a URI or headers it cannot read
                // before any route runs, with no body.
                content: if status == 414 || status == 431 {
                    vec![]
                } else {
                    vec![MetaMediaType {
                        content_type,
                        schema: T::schema_ref(),
                    }]
                },
                headers: vec![],
            })
            .collect(),
    }
}

const ERROR_STATUSES: &[(u16, &str)] = &[
    (
        400,
        "The request is malformed: a missing or invalid parameter, or a body that is not the JSON expected",
    ),
    (401, "An API key is configured and the request has none, or an unknown one"),
    (403, "The API key does not grant this on this collection"),
    (404, "No such document"),
    (413, "The body is larger than the configured limit"),
    (414, "The URI is longer than the server reads (64 KiB); no body"),
    (431, "The request's headers are larger than the server reads; no body"),
    (415, "The body's content type is not one this endpoint reads"),
    (
        422,
        "The document does not have the shape the command needs, or would not match its collection's schema \
         (`violations` says where and why)",
    ),
    (412, "A precondition (If-Match, If-None-Match, expected_version) failed"),
    (
        409,
        "An index of that name exists with other fields, or a document changed while it was checked against its \
         collection's schema (send the write again)",
    ),
    (
        500,
        "The store failed: a stable message and an `error_id`, which the server's log line carries with the details",
    ),
    (
        503,
        "The shard cannot serve now: its writer is restarting, its queue is full, or its file is damaged or read-only (Retry-After when it is temporary)",
    ),
    (507, "The disk holding the shard is full"),
];

/// Error of an original-API endpoint: `{"message": ...}`.
#[derive(Debug)]
pub struct LegacyError(pub ApiError);

impl LegacyError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self(ApiError::new(Flavor::Legacy, status, detail))
    }
}

impl From<StoreError> for LegacyError {
    fn from(err: StoreError) -> Self {
        Self(ApiError::from_store(Flavor::Legacy, err))
    }
}

impl From<LegacyError> for poem::Error {
    fn from(err: LegacyError) -> Self {
        poem::Error::from(err.0)
    }
}

impl ApiResponse for LegacyError {
    fn meta() -> MetaResponses {
        error_meta::<LegacyErrorBody>("application/json; charset=utf-8", ERROR_STATUSES)
    }

    fn register(registry: &mut Registry) {
        LegacyErrorBody::register(registry);
    }
}

/// What a change-feed route may answer besides success.
const FEED_STATUSES: &[(u16, &str)] = &[
    (400, "A parameter is invalid, or the cursor is not one this server gave"),
    (
        401,
        "An API key is configured and the request has none, or an unknown one",
    ),
    (
        403,
        "The API key does not grant reading this collection (or, for the whole feed, every collection)",
    ),
    (
        410,
        "The cursor can no longer be followed: the feed no longer holds changes that old, or the data folder \
         was restored or resharded since. Read the documents again and follow from since=now",
    ),
    (414, "The URI is longer than the server reads (64 KiB); no body"),
    (431, "The request's headers are larger than the server reads; no body"),
    (
        500,
        "The store failed: a stable message and an `error_id`, which the server's log line carries with the details",
    ),
    (
        429,
        "This key (or, without keys, this client address) already has its share of the clients waiting on the feed \
         (EXDAAS_FEED_MAX_SUBSCRIBERS_PER_CLIENT); Retry-After",
    ),
    (
        503,
        "Too many clients wait on the feed (EXDAAS_FEED_MAX_SUBSCRIBERS), or a shard cannot be read now (Retry-After)",
    ),
];

/// Error of a change-feed route: `application/problem+json`, with the
/// statuses a feed answers.
#[derive(Debug)]
pub struct FeedProblem(pub ApiError);

impl From<ProblemError> for FeedProblem {
    fn from(err: ProblemError) -> Self {
        Self(err.0)
    }
}

impl From<StoreError> for FeedProblem {
    fn from(err: StoreError) -> Self {
        Self(ApiError::from_store(Flavor::V1, err))
    }
}

impl From<FeedProblem> for poem::Error {
    fn from(err: FeedProblem) -> Self {
        poem::Error::from(err.0)
    }
}

impl ApiResponse for FeedProblem {
    fn meta() -> MetaResponses {
        error_meta::<Problem>("application/problem+json", FEED_STATUSES)
    }

    fn register(registry: &mut Registry) {
        Problem::register(registry);
    }
}

/// Error of a v1 endpoint: `application/problem+json`.
#[derive(Debug)]
pub struct ProblemError(pub ApiError);

impl ProblemError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self(ApiError::new(Flavor::V1, status, detail))
    }
}

impl From<StoreError> for ProblemError {
    fn from(err: StoreError) -> Self {
        Self(ApiError::from_store(Flavor::V1, err))
    }
}

impl From<ProblemError> for poem::Error {
    fn from(err: ProblemError) -> Self {
        poem::Error::from(err.0)
    }
}

impl ApiResponse for ProblemError {
    fn meta() -> MetaResponses {
        error_meta::<Problem>("application/problem+json", ERROR_STATUSES)
    }

    fn register(registry: &mut Registry) {
        Problem::register(registry);
    }
}
