//! The change feed over HTTP: a page at a time, a long poll, or a stream of
//! server-sent events. Every change a client makes is in it, in the order
//! each document's changes were committed, each with the cursor to resume
//! after it (see `store::feed`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use poem::http::StatusCode;
use poem::web::sse::Event;
use poem::{IntoResponse, Request, Response};
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use tokio::sync::watch;
use tokio::time::Instant;

use super::auth::{Access, Credentials, Principal};
use super::docs::{format_time, write_envelope, DocEnvelope};
use super::error::{ApiError, FeedProblem, Flavor};
use super::followers::{Full, Place, Places};
use super::params::CollectionParam;
use super::tags::ApiTags;
use crate::domain::access::Scope;
use crate::domain::CollectionName;
use crate::metrics::{Metrics, StreamLag};
use crate::store::{ChangeKind, Document, FeedCursor, FeedPage, FeedRequest, FeedStart, Store, StoreError, MAX_PAGE};

/// Entries a page holds when the client does not say.
const DEFAULT_LIMIT: usize = 100;
/// The longest a long poll waits. Behind a proxy that gives up on a quiet
/// request (Heroku's router after 30 seconds), ask for less.
const MAX_WAIT_SECS: u64 = 300;
/// How long a stream pauses when the feed's reads are all taken.
const BUSY_PAUSE: Duration = Duration::from_millis(50);

pub struct FeedApi {
    pub store: Store,
    pub access: Access,
    /// Bytes of documents one page (or one read of a stream) holds with
    /// `include_docs` (`EXDAAS_MAX_PAGE_BYTES`).
    pub page_bytes: usize,
    /// The places of the clients waiting on the feed
    /// (`EXDAAS_FEED_MAX_SUBSCRIBERS`, `..._PER_CLIENT`). A wait whose
    /// client hangs up gives its place back at once: the connection's loop
    /// drops the request with the connection (see `connections`).
    pub places: Places,
    /// A comment line this often keeps a quiet event stream open through
    /// proxies, and shows a gone client (the write fails) within as long
    /// (`EXDAAS_FEED_HEARTBEAT_SECS`).
    pub heartbeat: Duration,
    /// Turns true when the server stops: waits end, streams close.
    pub stopping: watch::Receiver<bool>,
    pub metrics: Arc<Metrics>,
}

/// Why a document changed.
#[derive(Enum, Debug, Clone, Copy)]
#[oai(rename_all = "lowercase")]
pub enum ChangeKindName {
    /// Created or changed: `version` is its new version.
    Written,
    /// Deleted by a client: `version` is the version deleted.
    Deleted,
    /// Removed at its expiry.
    Expired,
    /// Deleted with its whole collection.
    Dropped,
    /// The collection's schema was set: `id` is empty and `version` is the
    /// schema's.
    #[oai(rename = "schema_set")]
    SchemaSet,
    /// The collection's schema was removed: `id` is empty and `version` is
    /// the removal's.
    #[oai(rename = "schema_removed")]
    SchemaRemoved,
    /// An index of the collection was declared: `id` is its name.
    #[oai(rename = "index_declared")]
    IndexDeclared,
    /// An index of the collection was dropped: `id` is its name.
    #[oai(rename = "index_dropped")]
    IndexDropped,
}

/// One change of one document. A commit that changed a document several
/// times (one batch) is one change, with its final state.
#[derive(Object)]
#[allow(dead_code)]
pub struct Change {
    collection: String,
    id: String,
    /// The document's new version or, for a removal, the version removed.
    version: u64,
    kind: ChangeKindName,
    /// When it was committed (RFC 3339, UTC): for a write, the document's
    /// `updated_at`.
    updated_at: String,
    /// With `include_docs`: the document as it is when the page is read
    /// (its version may be newer than the change's), or `null` if it is
    /// gone by then.
    #[oai(nullable)]
    doc: Option<DocEnvelope>,
}

/// A page of the feed.
#[derive(Object)]
#[allow(dead_code)]
pub struct ChangesPage {
    changes: Vec<Change>,
    /// Pass back as `since` for what comes next.
    cursor: String,
    /// More changes are there already: ask again at once.
    more: bool,
}

/// A page as JSON, or an event stream.
pub enum ChangesResponse {
    Page(Bytes),
    Stream(Response),
}

impl IntoResponse for ChangesResponse {
    fn into_response(self) -> Response {
        match self {
            ChangesResponse::Page(body) => Response::builder()
                .content_type("application/json; charset=utf-8")
                .body(body),
            ChangesResponse::Stream(response) => response,
        }
    }
}

impl ApiResponse for ChangesResponse {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "A page of changes or, with `Accept: text/event-stream`, an endless stream of \
                              `change` events, each with its cursor as `id` and a `Change` as `data`, and a \
                              comment line every 15 seconds. A stream the server ends (it stops, or the feed \
                              cannot be read) ends with an `end` event whose `data` is a Problem and whose `id`, \
                              when there is one, is where to resume",
                status: Some(200),
                status_range: None,
                content: vec![
                    MetaMediaType {
                        content_type: "application/json; charset=utf-8",
                        schema: ChangesPage::schema_ref(),
                    },
                    MetaMediaType {
                        content_type: "text/event-stream",
                        schema: MetaSchemaRef::Inline(Box::new(MetaSchema {
                            items: Some(Box::new(Change::schema_ref())),
                            ..MetaSchema::new_with_format("array", "event-stream")
                        })),
                    },
                ],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        ChangesPage::register(registry);
        Change::register(registry);
    }
}

/// What every feed route takes.
struct Follow {
    /// `None`: every collection.
    collections: Option<Vec<CollectionName>>,
    prefix: Option<String>,
    since: Option<String>,
    last_event_id: Option<String>,
    limit: Option<usize>,
    wait: Option<u64>,
    include_docs: Option<bool>,
    /// The client asked for `text/event-stream`.
    stream: bool,
    /// Who holds the place a wait takes.
    who: Principal,
}

/// Whether the request's `Accept` asks for an event stream.
fn wants_stream(request: &Request) -> bool {
    request
        .headers()
        .get_all(poem::http::header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|media| {
            media
                .split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Changes")]
impl FeedApi {
    /// Follow every collection's changes
    ///
    /// Every committed change (create, replace, patch, delete, expiry,
    /// collection drop) of every collection the key may read, one entry per
    /// document per commit, in the order each document's changes were
    /// committed (across documents, by commit time). Three ways to read it:
    /// a page (the default); a long poll (`wait`: answers as soon as there
    /// is a change); or, with `Accept: text/event-stream`, server-sent
    /// events, each with its cursor as `id` (a reconnecting EventSource
    /// resumes with `Last-Event-ID`). Start with `since=now` (the default)
    /// or `since=0` (all the feed holds) and pass each `cursor` back as
    /// `since`. The feed keeps changes for `EXDAAS_FEED_RETENTION_HOURS`
    /// (default a week) and at most `EXDAAS_FEED_MAX_ENTRIES` per shard; a
    /// cursor older than that, or from before a restore or a reshard,
    /// answers 410: read the documents again, then follow from `since=now`.
    #[oai(path = "/changes", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn all_changes(
        &self,
        request: &Request,
        auth: Credentials,
        /// Where to start: `now`, `0` (everything the feed holds), or a
        /// `cursor` from an earlier answer
        #[oai(validator(
            max_length = 100000,
            pattern = r"^(now|0|[0-9a-f]{16}-[0-9]{1,9}-[0-9]{1,19}(\.[0-9]{1,19})*)$"
        ))]
        since: Query<Option<String>>,
        /// Page size: 1 to 1000, default 100 (an event stream reads up to
        /// 1000 at a time)
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<usize>>,
        /// Only changes of ids that start with this
        #[oai(validator(pattern = r"^[A-Za-z0-9._~:@-]{0,256}$"))]
        prefix: Query<Option<String>>,
        /// Long poll: wait up to this many seconds (0 to 300) for a change
        /// when there is none yet
        #[oai(validator(minimum(value = "0"), maximum(value = "300")))]
        wait: Query<Option<u64>>,
        /// Each change with its document as it is now
        include_docs: Query<Option<bool>>,
        /// Event stream: the last event's id, which a reconnecting
        /// EventSource sends (it takes the place of `since`)
        #[oai(
            name = "Last-Event-ID",
            validator(
                max_length = 100000,
                pattern = r"^([0-9a-f]{16}-[0-9]{1,9}-[0-9]{1,19}(\.[0-9]{1,19})*)?$"
            )
        )]
        last_event_id: Header<Option<String>>,
    ) -> Result<ChangesResponse, FeedProblem> {
        let caller = self.access.caller(&auth, Flavor::V1).map_err(FeedProblem)?;
        let Some(collections) = caller.readable_collections() else {
            // Not even reading: the same refusal as for any read.
            return Err(FeedProblem(caller.allow(Scope::Read, None).err().unwrap_or_else(
                || ApiError::new(Flavor::V1, StatusCode::FORBIDDEN, "this API key does not grant reading"),
            )));
        };
        self.follow(Follow {
            collections,
            prefix: prefix.0,
            since: since.0,
            last_event_id: last_event_id.0,
            limit: limit.0,
            wait: wait.0,
            include_docs: include_docs.0,
            stream: wants_stream(request),
            who: caller.principal(request.remote_addr()),
        })
        .await
    }

    /// Follow a collection's changes
    ///
    /// The collection's part of the feed (see `GET /v1/changes`): every
    /// committed change of its documents, their expiry and the
    /// collection's drop included.
    #[oai(path = "/collections/:collection/changes", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn collection_changes(
        &self,
        request: &Request,
        auth: Credentials,
        collection: Path<CollectionParam>,
        /// Where to start: `now`, `0` (everything the feed holds), or a
        /// `cursor` from an earlier answer
        #[oai(validator(
            max_length = 100000,
            pattern = r"^(now|0|[0-9a-f]{16}-[0-9]{1,9}-[0-9]{1,19}(\.[0-9]{1,19})*)$"
        ))]
        since: Query<Option<String>>,
        /// Page size: 1 to 1000, default 100 (an event stream reads up to
        /// 1000 at a time)
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<usize>>,
        /// Only changes of ids that start with this
        #[oai(validator(pattern = r"^[A-Za-z0-9._~:@-]{0,256}$"))]
        prefix: Query<Option<String>>,
        /// Long poll: wait up to this many seconds (0 to 300) for a change
        /// when there is none yet
        #[oai(validator(minimum(value = "0"), maximum(value = "300")))]
        wait: Query<Option<u64>>,
        /// Each change with its document as it is now
        include_docs: Query<Option<bool>>,
        /// Event stream: the last event's id, which a reconnecting
        /// EventSource sends (it takes the place of `since`)
        #[oai(
            name = "Last-Event-ID",
            validator(
                max_length = 100000,
                pattern = r"^([0-9a-f]{16}-[0-9]{1,9}-[0-9]{1,19}(\.[0-9]{1,19})*)?$"
            )
        )]
        last_event_id: Header<Option<String>>,
    ) -> Result<ChangesResponse, FeedProblem> {
        let collection = collection.0 .0;
        let caller = self.access.caller(&auth, Flavor::V1).map_err(FeedProblem)?;
        caller.allow(Scope::Read, Some(&collection)).map_err(FeedProblem)?;
        self.follow(Follow {
            collections: Some(vec![collection]),
            prefix: prefix.0,
            since: since.0,
            last_event_id: last_event_id.0,
            limit: limit.0,
            wait: wait.0,
            include_docs: include_docs.0,
            stream: wants_stream(request),
            who: caller.principal(request.remote_addr()),
        })
        .await
    }
}

impl FeedApi {
    async fn follow(&self, follow: Follow) -> Result<ChangesResponse, FeedProblem> {
        // A stream reads as much as a page may hold at once: its client
        // takes events one by one anyway.
        let limit = follow
            .limit
            .unwrap_or(if follow.stream { MAX_PAGE } else { DEFAULT_LIMIT });
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(bad_request(format!("limit must be from 1 to {MAX_PAGE}, not {limit}")));
        }
        let wait = follow.wait.unwrap_or(0);
        if wait > MAX_WAIT_SECS {
            return Err(bad_request(format!(
                "wait must be from 0 to {MAX_WAIT_SECS} seconds, not {wait}"
            )));
        }
        // A reconnecting EventSource says where it was in Last-Event-ID.
        let resume = follow.last_event_id.filter(|id| !id.trim().is_empty() && follow.stream);
        let start = match resume.or(follow.since).as_deref().map(str::trim) {
            None | Some("now") => FeedStart::Now,
            Some("0") => FeedStart::Beginning,
            Some(cursor) => FeedStart::After(cursor.parse::<FeedCursor>().map_err(|e| bad_request(e.to_string()))?),
        };
        let request = FeedRequest {
            collections: follow.collections,
            prefix: follow.prefix.filter(|p| !p.is_empty()),
            start,
            limit,
        };
        let include_docs = follow.include_docs.unwrap_or(false);
        if follow.stream {
            let following = self.following(follow.who)?;
            // The start is read now, so a bad or stale cursor is an HTTP
            // error (410), not a stream that ends at once.
            let first = self.store.changes(&request).await?;
            let stream = EventStream {
                store: self.store.clone(),
                request,
                include_docs,
                page_bytes: self.page_bytes,
                heartbeat: self.heartbeat,
                stopping: self.stopping.clone(),
                first: Some(first),
                sent: None,
                ended: false,
                lag: self.metrics.feed_lags.join(),
                metrics: self.metrics.clone(),
                _following: following,
            };
            let chunks = stream::unfold(stream, EventStream::next).map(Ok::<_, std::io::Error>);
            return Ok(ChangesResponse::Stream(
                Response::builder()
                    .content_type("text/event-stream")
                    .header("Cache-Control", "no-cache")
                    // nginx and its kin: pass each event on at once.
                    .header("X-Accel-Buffering", "no")
                    .body(poem::Body::from_bytes_stream(chunks)),
            ));
        }
        let page = if wait > 0 {
            let _following = self.following(follow.who)?;
            let deadline = Instant::now() + Duration::from_secs(wait);
            let mut stopping = self.stopping.clone();
            self.store.next_changes(request, deadline, &mut stopping).await?
        } else {
            self.store.changes(&request).await?
        };
        self.page_response(page, include_docs).await
    }

    /// A place among the clients waiting on the feed; a 503 when every
    /// place is taken, a 429 when `who` has its whole share.
    fn following(&self, who: Principal) -> Result<Following, FeedProblem> {
        let holder = match &who {
            Principal::Key(_) => "this API key",
            Principal::Address(_) | Principal::Unknown => "this client address",
        };
        let place = self.places.take(who).map_err(|full| {
            let (status, detail) = match full {
                Full::All(total) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "{total} clients already wait on the change feed (EXDAAS_FEED_MAX_SUBSCRIBERS); \
                         retry later, or read it without waiting (no wait, no event stream)"
                    ),
                ),
                Full::Share(share) => (
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "{holder} already has {share} clients waiting on the change feed, its whole share \
                         (EXDAAS_FEED_MAX_SUBSCRIBERS_PER_CLIENT); end one of them, or read the feed without \
                         waiting (no wait, no event stream)"
                    ),
                ),
            };
            let mut err = ApiError::new(Flavor::V1, status, detail);
            err.retry_after = Some(1);
            FeedProblem(err)
        })?;
        self.metrics.feed_followers.inc();
        Ok(Following {
            _place: place,
            metrics: self.metrics.clone(),
        })
    }

    async fn page_response(&self, mut page: FeedPage, include_docs: bool) -> Result<ChangesResponse, FeedProblem> {
        let changes = render_changes(&self.store, &mut page, include_docs, self.page_bytes).await?;
        self.metrics.feed_changes_sent.inc_by(changes.len() as u64);
        let mut body = String::with_capacity(64 + changes.iter().map(|c| c.len() + 1).sum::<usize>());
        body.push_str("{\"changes\":[");
        for (i, change) in changes.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(change);
        }
        body.push_str("],\"cursor\":\"");
        body.push_str(&page.cursor.to_string());
        body.push_str("\",\"more\":");
        body.push_str(if page.more { "true" } else { "false" });
        body.push('}');
        Ok(ChangesResponse::Page(Bytes::from(body)))
    }
}

/// A client's place among those waiting on the feed, given back when it
/// goes (the answer sent, or the stream dropped).
struct Following {
    _place: Place,
    metrics: Arc<Metrics>,
}

impl Drop for Following {
    fn drop(&mut self) {
        self.metrics.feed_followers.dec();
    }
}

/// An event stream's state between pages. Each page of the feed goes out
/// as one chunk of events (framed by poem's `Event`), read when the client
/// has taken the last one: a slow client holds no more than a page of the
/// server's memory.
struct EventStream {
    store: Store,
    request: FeedRequest,
    include_docs: bool,
    page_bytes: usize,
    heartbeat: Duration,
    stopping: watch::Receiver<bool>,
    /// The page read before the stream began.
    first: Option<FeedPage>,
    /// A page chunk was handed out; once the client takes it, the stream
    /// is behind since this commit time (`None`: caught up).
    sent: Option<Option<i64>>,
    /// The final event was sent.
    ended: bool,
    lag: StreamLag,
    metrics: Arc<Metrics>,
    _following: Following,
}

/// A comment line: keeps a quiet stream open through proxies, and shows a
/// gone client (the write fails).
const HEARTBEAT_LINE: &[u8] = b":\n\n";

impl EventStream {
    /// The next chunk: a page of `change` events, a heartbeat after
    /// the heartbeat's time without one, or a final `end` event saying why the
    /// stream ends and, when the client can, where to resume; `None` after
    /// that.
    async fn next(mut self) -> Option<(Bytes, Self)> {
        if let Some(behind) = self.sent.take() {
            self.lag.behind_since(behind);
        }
        loop {
            if self.ended {
                return None;
            }
            if *self.stopping.borrow() {
                let end = self.end(
                    &StatusCode::SERVICE_UNAVAILABLE,
                    "the server is stopping: reconnect to resume",
                );
                return Some((end, self));
            }
            let page = match self.first.take() {
                Some(page) => Ok(page),
                None => {
                    let deadline = Instant::now() + self.heartbeat;
                    let mut stopping = self.stopping.clone();
                    self.store
                        .next_changes(self.request.clone(), deadline, &mut stopping)
                        .await
                }
            };
            let read = match page {
                Ok(mut page) => render_changes(&self.store, &mut page, self.include_docs, self.page_bytes)
                    .await
                    .map(|changes| (page, changes)),
                Err(err) => Err(err),
            };
            let (page, changes) = match read {
                Ok(read) => read,
                // Feed reads are busy (many followers at once): a stream has
                // no answer to keep waiting, so it waits its turn.
                Err(StoreError::Busy { .. }) => {
                    tokio::time::sleep(BUSY_PAUSE).await;
                    continue;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "an event stream of the change feed ended");
                    let error = ApiError::from_store(Flavor::V1, err);
                    let end = self.end(&error.status, &error.detail);
                    return Some((end, self));
                }
            };
            self.request.start = FeedStart::After(page.cursor.clone());
            let (Some(first), Some(last)) = (page.items.first(), page.items.last()) else {
                if *self.stopping.borrow() {
                    continue;
                }
                return Some((Bytes::from_static(HEARTBEAT_LINE), self));
            };
            self.lag.behind_since(Some(first.entry.at_ms));
            self.sent = Some(page.more.then_some(last.entry.at_ms));
            let mut chunk = String::with_capacity(changes.iter().map(|c| c.len() + 96).sum());
            let mut at = page.start.clone();
            for (item, change) in page.items.iter().zip(changes) {
                at.after(item);
                let event = Event::message(change).event_type("change").id(at.to_string());
                chunk.push_str(&event.to_string());
            }
            self.metrics.feed_changes_sent.inc_by(page.items.len() as u64);
            return Some((Bytes::from(chunk), self));
        }
    }

    /// The stream's last event: a Problem as its data and, unless the feed
    /// can no longer be followed from here (410), the cursor to resume from.
    fn end(&mut self, status: &StatusCode, detail: &str) -> Bytes {
        self.ended = true;
        let problem = serde_json::json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": detail,
        });
        let event = Event::message(problem.to_string()).event_type("end");
        let event = match &self.request.start {
            FeedStart::After(cursor) if *status != StatusCode::GONE => event.id(cursor.to_string()),
            _ => event,
        };
        Bytes::from(event.to_string())
    }
}

/// Each change of `page` as JSON text, with its document when asked: as
/// many as fit in `page_bytes` of documents (at least one), the page
/// truncated to those.
async fn render_changes(
    store: &Store,
    page: &mut FeedPage,
    include_docs: bool,
    page_bytes: usize,
) -> Result<Vec<String>, StoreError> {
    let mut changes = Vec::with_capacity(page.items.len());
    let mut bytes = 0usize;
    for item in &page.items {
        let doc = if include_docs {
            let doc = match item.entry.kind {
                ChangeKind::Written => store.get(&item.entry.key).await?,
                _ => None,
            };
            bytes += doc.as_ref().map_or(0, |doc| doc.data.len());
            if bytes > page_bytes && !changes.is_empty() {
                break;
            }
            Some(doc)
        } else {
            None
        };
        changes.push(change_json(item, doc.as_ref().map(Option::as_ref)));
    }
    page.truncate(changes.len());
    Ok(changes)
}

/// One change as JSON text; `doc`: `None` leaves it out, `Some(None)` is
/// `null`.
fn change_json(item: &crate::store::FeedItem, doc: Option<Option<&Document>>) -> String {
    use std::fmt::Write as _;
    let entry = &item.entry;
    let kind = match entry.kind {
        ChangeKind::Written => "written",
        ChangeKind::Deleted => "deleted",
        ChangeKind::Expired => "expired",
        ChangeKind::Dropped => "dropped",
        ChangeKind::SchemaSet => "schema_set",
        ChangeKind::SchemaRemoved => "schema_removed",
        ChangeKind::IndexDeclared => "index_declared",
        ChangeKind::IndexDropped => "index_dropped",
    };
    let mut json = String::with_capacity(128 + doc.flatten().map_or(0, |d| d.data.len() + 160));
    // Collection names and ids need no JSON escaping (see `domain`).
    let _ = write!(
        json,
        "{{\"collection\":\"{}\",\"id\":\"{}\",\"version\":{},\"kind\":\"{kind}\",\"updated_at\":\"{}\"",
        entry.key.collection,
        entry.key.id,
        entry.version,
        format_time(entry.at_ms),
    );
    match doc {
        None => {}
        Some(None) => json.push_str(",\"doc\":null"),
        Some(Some(doc)) => {
            json.push_str(",\"doc\":");
            write_envelope(&mut json, &entry.key, doc, true);
        }
    }
    json.push('}');
    json
}

fn bad_request(detail: String) -> FeedProblem {
    FeedProblem(ApiError::new(Flavor::V1, StatusCode::BAD_REQUEST, detail))
}
