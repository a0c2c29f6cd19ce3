//! The console's side of HTTP: one blocking client with the server's URL
//! and key, and the server's problem documents turned into messages.

use std::time::Duration;

use reqwest::blocking::{Body, Client, RequestBuilder};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

/// Why a request got no useful answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered (refused, timed out, name not found).
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The server refused: its status and problem document's detail.
    #[error("{status}: {detail}")]
    Refused { status: StatusCode, detail: String },
    /// What the user typed cannot become a request.
    #[error("{0}")]
    Usage(String),
    /// The server's answer broke off midway (an export cut short).
    #[error("{detail}")]
    Broken { detail: String },
}

impl ClientError {
    /// A scripted command's exit code: 1 the server refused or failed, 2 a
    /// mistake in the command, 3 the server cannot be reached.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Refused { .. } | ClientError::Broken { .. } => 1,
            ClientError::Usage(_) => 2,
            ClientError::Unreachable { .. } => 3,
        }
    }
}

/// A successful answer.
pub struct Answer {
    pub status: StatusCode,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Result<Value, ClientError> {
        serde_json::from_str(&self.body).map_err(|e| ClientError::Refused {
            status: self.status,
            detail: format!("the answer is not JSON ({e})"),
        })
    }
}

pub struct Api {
    base: Url,
    key: Option<String>,
    http: Client,
}

impl Api {
    /// A client for the server at `url` (`http://host:port`), sending `key`
    /// as a bearer token when given.
    pub fn new(url: &str, key: Option<String>) -> Result<Self, ClientError> {
        let base = Url::parse(url).map_err(|e| ClientError::Usage(format!("{url}: not a URL ({e})")))?;
        if base.scheme() == "https" {
            return Err(ClientError::Usage(format!(
                "{url}: the console speaks plain HTTP; reach a server behind TLS through a tunnel \
                 (kubectl port-forward, ssh -L) and give its http:// address"
            )));
        }
        if base.scheme() != "http" || base.cannot_be_a_base() {
            return Err(ClientError::Usage(format!("{url}: expected an http:// URL")));
        }
        let http = Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // Long polls wait up to their `wait`; nothing else takes long.
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| ClientError::Usage(format!("cannot set up an HTTP client: {e}")))?;
        Ok(Self {
            base,
            key: key.filter(|k| !k.is_empty()),
            http,
        })
    }

    /// The server's URL, as the prompt shows it.
    pub fn shown(&self) -> String {
        match (self.base.host_str(), self.base.port_or_known_default()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            _ => self.base.to_string(),
        }
    }

    /// `segments` appended to the base URL, each percent-encoded as one
    /// path segment (an id cannot reach another route).
    pub fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    pub fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let builder = self.http.request(method, url);
        match &self.key {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }

    /// Sends `builder`; a 2xx or 304 is an answer, anything else the
    /// server's reason.
    pub fn send(&self, builder: RequestBuilder) -> Result<Answer, ClientError> {
        let response = builder.send().map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let body = response.text().map_err(|e| self.unreachable(&e))?;
        if status.is_success() || status == StatusCode::NOT_MODIFIED {
            return Ok(Answer { status, body });
        }
        Err(ClientError::Refused {
            status,
            detail: problem_detail(&body),
        })
    }

    /// A JSON request to `segments`.
    pub fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Answer, ClientError> {
        let mut builder = self.request(method, self.url(segments, query));
        if let Some(body) = body {
            builder = builder.json(body);
        }
        self.send(builder)
    }

    /// A request with a raw body of `content_type`.
    pub fn upload(&self, segments: &[&str], content_type: &str, body: impl Into<Body>) -> Result<Answer, ClientError> {
        let builder = self
            .request(Method::POST, self.url(segments, &[]))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        self.send(builder)
    }

    /// The response of a GET, unread, for streaming it to a file.
    pub fn download(&self, segments: &[&str]) -> Result<reqwest::blocking::Response, ClientError> {
        let response = self
            .request(Method::GET, self.url(segments, &[]))
            .send()
            .map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().unwrap_or_default();
        Err(ClientError::Refused {
            status,
            detail: problem_detail(&body),
        })
    }

    fn unreachable(&self, err: &reqwest::Error) -> ClientError {
        let mut cause: &dyn std::error::Error = err;
        while let Some(next) = cause.source() {
            cause = next;
        }
        ClientError::Unreachable {
            url: self.base.to_string(),
            reason: cause.to_string(),
        }
    }
}

/// What a problem document (v1) or `{"message": ...}` (the original API)
/// says, or the body itself.
fn problem_detail(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let said = parsed.as_ref().and_then(|v| {
        v.get("detail")
            .or_else(|| v.get("message"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    match said {
        Some(detail) => detail,
        None if body.trim().is_empty() => "no details".to_owned(),
        None => body.chars().take(500).collect(),
    }
}
