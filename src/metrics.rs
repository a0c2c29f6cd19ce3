//! Prometheus metrics, served at `GET /metrics` in the text format.
//!
//! Counters and histograms are updated where things happen: the HTTP edge
//! calls [`RouteMetrics`], the store reports through [`StoreEvents`], which
//! [`Metrics`] implements. Gauges that describe state (cache size, queue
//! depths, documents per shard) come from a [`StoreSnapshot`] taken at
//! scrape time, so they cost nothing between scrapes. Labels are routes and
//! shard numbers only: no collection names, ids or keys leave through here.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::stats::{StoreEvents, StoreSnapshot};

/// How long a scrape may reuse the documents-per-shard counts (each is a
/// `count(*)` over a shard).
const DOCUMENT_COUNTS_MAX_AGE: Duration = Duration::from_secs(10);

/// Buckets for things that take from a tenth of a millisecond to a second:
/// commits, database round trips.
const SHORT_SECONDS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Every metric of one server.
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    cache_hits: IntCounter,
    cache_misses: IntCounter,
    batch_size: HistogramVec,
    commit_seconds: HistogramVec,
    /// Each shard's two histograms, resolved once so a commit does no label
    /// lookup.
    shard_handles: Vec<OnceLock<(Histogram, Histogram)>>,
    cache_entries: IntGauge,
    cache_bytes: IntGauge,
    queue_depth: IntGaugeVec,
    shard_up: IntGaugeVec,
    shard_documents: IntGaugeVec,
    counted_at: Mutex<Option<Instant>>,
    /// Clients waiting on the change feed (long polls and streams).
    pub feed_followers: IntGauge,
    /// Change-feed entries sent, in pages and streams.
    pub feed_changes_sent: IntCounter,
    /// Where each event stream stands, for the slowest one's lag.
    pub feed_lags: Arc<FeedLags>,
    feed_slowest_lag: prometheus::Gauge,
    /// Transactions run again after the engine refused them for a
    /// concurrent one (a shared database).
    conflict_retries: IntCounter,
    /// Documents index builds covered, and builds running.
    index_build_documents: IntCounter,
    index_builds: IntGauge,
    /// Queries' work (EXDAAS_QUERY_MAX_WORK's units), and queries whose
    /// client went away before the answer.
    query_work: IntCounter,
    queries_abandoned: IntCounter,
    /// The shared database's pool: connections open, idle and at most.
    database_connections: IntGaugeVec,
    database_round_trip: Histogram,
    /// Connections closed by the server's bounds, by why.
    connections_closed: IntCounterVec,
}

/// How far behind the live event streams of the change feed are: for
/// each, when the oldest change it has not been sent yet was committed.
/// Each stream updates its own atomic; the list is locked only when a
/// stream comes or goes and at scrape time.
#[derive(Default)]
pub struct FeedLags {
    streams: Mutex<Vec<Arc<AtomicI64>>>,
}

/// A stream's place in [`FeedLags`], removed when it is dropped.
pub struct StreamLag {
    /// Unix milliseconds of the oldest change not yet sent; 0: none.
    behind_since: Arc<AtomicI64>,
    lags: Arc<FeedLags>,
}

impl FeedLags {
    pub fn join(self: &Arc<Self>) -> StreamLag {
        let behind_since = Arc::new(AtomicI64::new(0));
        self.streams.lock().push(behind_since.clone());
        StreamLag {
            behind_since,
            lags: self.clone(),
        }
    }

    /// Seconds since the oldest change some stream has not been sent was
    /// committed (0: every stream is caught up).
    fn slowest_seconds(&self, now_ms: i64) -> f64 {
        let oldest = self
            .streams
            .lock()
            .iter()
            .map(|since| since.load(Ordering::Relaxed))
            .filter(|&since| since > 0)
            .min();
        oldest.map_or(0.0, |since| (now_ms - since).max(0) as f64 / 1000.0)
    }
}

impl StreamLag {
    /// The stream's oldest change not yet sent was committed at `at_ms`
    /// (`None`: it has been sent everything).
    pub fn behind_since(&self, at_ms: Option<i64>) {
        self.behind_since.store(at_ms.unwrap_or(0).max(0), Ordering::Relaxed);
    }
}

impl Drop for StreamLag {
    fn drop(&mut self) {
        self.lags
            .streams
            .lock()
            .retain(|since| !Arc::ptr_eq(since, &self.behind_since));
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Only fails for a malformed name or label set, which are constants here.
fn built<T>(metric: prometheus::Result<T>) -> T {
    match metric {
        Ok(metric) => metric,
        Err(e) => panic!("a metric definition is invalid: {e}"),
    }
}

impl StoreEvents for Metrics {
    fn cache_read(&self, hit: bool) {
        if hit {
            self.cache_hits.inc();
        } else {
            self.cache_misses.inc();
        }
    }

    fn batch(&self, shard: usize, requests: usize) {
        if let Some((batch_size, _)) = self.shard(shard) {
            batch_size.observe(requests as f64);
        }
    }

    fn commit(&self, shard: usize, seconds: f64) {
        if let Some((_, commit_seconds)) = self.shard(shard) {
            commit_seconds.observe(seconds);
        }
    }

    fn conflict_retried(&self, _shard: usize) {
        self.conflict_retries.inc();
    }

    fn database_round_trip(&self, seconds: f64) {
        self.database_round_trip.observe(seconds);
    }

    fn index_built(&self, documents: u64) {
        self.index_build_documents.inc_by(documents);
    }

    fn index_builds_running(&self, change: i64) {
        self.index_builds.add(change);
    }

    fn query_work(&self, units: u64) {
        self.query_work.inc_by(units);
    }

    fn query_abandoned(&self) {
        self.queries_abandoned.inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let metrics = Self {
            http_requests: built(IntCounterVec::new(
                Opts::new(
                    "exdaas_http_requests_total",
                    "HTTP requests answered, by route and status.",
                ),
                &["method", "route", "status"],
            )),
            http_duration: built(HistogramVec::new(
                HistogramOpts::new(
                    "exdaas_http_request_duration_seconds",
                    "Time from a request's arrival to its answer's head.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
                &["method", "route"],
            )),
            cache_entries: built(IntGauge::new("exdaas_cache_entries", "Documents in the cache.")),
            cache_bytes: built(IntGauge::new(
                "exdaas_cache_bytes",
                "Weighted bytes of the cached documents (bounded by EXDAAS_CACHE_MIB).",
            )),
            queue_depth: built(IntGaugeVec::new(
                Opts::new(
                    "exdaas_writer_queue_depth",
                    "Requests waiting in a shard writer's queue.",
                ),
                &["shard"],
            )),
            shard_up: built(IntGaugeVec::new(
                Opts::new(
                    "exdaas_shard_up",
                    "1 while the shard's file is open and its writer runs.",
                ),
                &["shard"],
            )),
            shard_documents: built(IntGaugeVec::new(
                Opts::new(
                    "exdaas_shard_documents",
                    "Live documents in the shard file (refreshed at most every 10 s).",
                ),
                &["shard"],
            )),
            cache_hits: built(IntCounter::new(
                "exdaas_cache_hits_total",
                "Reads of one document answered from the cache.",
            )),
            cache_misses: built(IntCounter::new(
                "exdaas_cache_misses_total",
                "Reads of one document that went to the shard file.",
            )),
            batch_size: built(HistogramVec::new(
                HistogramOpts::new(
                    "exdaas_writer_batch_size",
                    "Requests a shard writer committed together in one transaction.",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]),
                &["shard"],
            )),
            commit_seconds: built(HistogramVec::new(
                HistogramOpts::new(
                    "exdaas_writer_commit_duration_seconds",
                    "Time a shard writer spent writing and committing one batch.",
                )
                .buckets(SHORT_SECONDS.to_vec()),
                &["shard"],
            )),
            feed_followers: built(IntGauge::new(
                "exdaas_feed_followers",
                "Clients waiting on the change feed: long polls and event streams (bounded by EXDAAS_FEED_MAX_SUBSCRIBERS).",
            )),
            feed_changes_sent: built(IntCounter::new(
                "exdaas_feed_changes_sent_total",
                "Change-feed entries sent to clients, in pages and event streams.",
            )),
            conflict_retries: built(IntCounter::new(
                "exdaas_transaction_retries_total",
                "Write transactions run again because the database refused them for a concurrent one (40001, 40P01).",
            )),
            index_build_documents: built(IntCounter::new(
                "exdaas_index_build_documents_total",
                "Documents the background builds of declared indexes have covered.",
            )),
            index_builds: built(IntGauge::new(
                "exdaas_index_builds_running",
                "Background builds of declared indexes running now.",
            )),
            query_work: built(IntCounter::new(
                "exdaas_query_work_units_total",
                "Work of queries, in EXDAAS_QUERY_MAX_WORK's units: bytes of documents read and of values compared, conditions checked.",
            )),
            queries_abandoned: built(IntCounter::new(
                "exdaas_queries_abandoned_total",
                "Queries whose client went away before the answer: their work stopped at the next document.",
            )),
            database_connections: built(IntGaugeVec::new(
                Opts::new(
                    "exdaas_database_connections",
                    "With EXDAAS_DATABASE_URL: the pool's connections open, idle, and its most (state).",
                ),
                &["state"],
            )),
            database_round_trip: built(Histogram::with_opts(
                HistogramOpts::new(
                    "exdaas_database_round_trip_seconds",
                    "With EXDAAS_DATABASE_URL: time of each query that follows the other replicas' writes, there and back.",
                )
                .buckets(SHORT_SECONDS.to_vec()),
            )),
            connections_closed: built(IntCounterVec::new(
                Opts::new(
                    "exdaas_connections_closed_total",
                    "Connections the server closed or refused: refused (over EXDAAS_MAX_CONNECTIONS), head_timeout, idle, stalled (an answer not taken for EXDAAS_SEND_TIMEOUT_SECS).",
                ),
                &["reason"],
            )),
            feed_lags: Arc::new(FeedLags::default()),
            feed_slowest_lag: built(prometheus::Gauge::new(
                "exdaas_feed_slowest_lag_seconds",
                "How long ago the oldest change some event stream has not been sent yet was committed (0: all caught up).",
            )),
            shard_handles: (0..crate::domain::ShardCount::MAX).map(|_| OnceLock::new()).collect(),
            counted_at: Mutex::new(None),
            registry,
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 22] = [
            Box::new(metrics.connections_closed.clone()),
            Box::new(metrics.query_work.clone()),
            Box::new(metrics.queries_abandoned.clone()),
            Box::new(metrics.index_build_documents.clone()),
            Box::new(metrics.index_builds.clone()),
            Box::new(metrics.database_round_trip.clone()),
            Box::new(metrics.database_connections.clone()),
            Box::new(metrics.conflict_retries.clone()),
            Box::new(metrics.feed_slowest_lag.clone()),
            Box::new(metrics.feed_followers.clone()),
            Box::new(metrics.feed_changes_sent.clone()),
            Box::new(metrics.http_requests.clone()),
            Box::new(metrics.http_duration.clone()),
            Box::new(metrics.cache_hits.clone()),
            Box::new(metrics.cache_misses.clone()),
            Box::new(metrics.batch_size.clone()),
            Box::new(metrics.commit_seconds.clone()),
            Box::new(metrics.cache_entries.clone()),
            Box::new(metrics.cache_bytes.clone()),
            Box::new(metrics.queue_depth.clone()),
            Box::new(metrics.shard_up.clone()),
            Box::new(metrics.shard_documents.clone()),
        ];
        for collector in collectors {
            built(metrics.registry.register(collector));
        }
        metrics
    }

    /// Counts a connection the server closed or refused; `reason` is one
    /// of a fixed few.
    pub fn connection_closed(&self, reason: &'static str) {
        self.connections_closed.with_label_values(&[reason]).inc();
    }

    /// Counts one answered request. `route` is the route's name, or
    /// `other` for a request no route took. [`RouteMetrics`] does the same
    /// without hashing labels, for routes known in advance.
    pub fn observe_request(&self, method: &str, route: &str, status: &str, elapsed: Duration) {
        let method = method_label(method);
        self.http_requests.with_label_values(&[method, route, status]).inc();
        self.http_duration
            .with_label_values(&[method, route])
            .observe(elapsed.as_secs_f64());
    }

    /// The request metrics of one route, resolved lazily and kept.
    pub fn route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            route: route.into(),
            requests: self.http_requests.clone(),
            duration: self.http_duration.clone(),
            counters: (0..METHODS.len() * STATUSES.len()).map(|_| OnceLock::new()).collect(),
            histograms: (0..METHODS.len()).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Shard `index`'s histograms (batch size, commit time).
    fn shard(&self, index: usize) -> Option<&(Histogram, Histogram)> {
        let handles = self.shard_handles.get(index)?;
        Some(handles.get_or_init(|| {
            let label = index.to_string();
            (
                self.batch_size.with_label_values(&[label.as_str()]),
                self.commit_seconds.with_label_values(&[label.as_str()]),
            )
        }))
    }

    /// Whether the next scrape should count the documents of every shard
    /// (a `count(*)` over each): at most every 10 s.
    pub fn documents_due(&self) -> bool {
        self.counted_at
            .lock()
            .is_none_or(|at| at.elapsed() >= DOCUMENT_COUNTS_MAX_AGE)
    }

    /// The text a scrape gets: the state of `snapshot`, and everything
    /// counted so far.
    pub fn render(&self, snapshot: &StoreSnapshot) -> String {
        self.cache_entries.set(gauge(snapshot.cache_entries));
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.feed_slowest_lag.set(self.feed_lags.slowest_seconds(now_ms));
        self.cache_bytes.set(gauge(snapshot.cache_bytes));
        if let Some(pool) = snapshot.database_pool {
            for (state, n) in [("open", pool.open), ("idle", pool.idle), ("max", pool.max)] {
                self.database_connections.with_label_values(&[state]).set(i64::from(n));
            }
        }
        for shard in &snapshot.shards {
            let label = shard.index.to_string();
            self.queue_depth
                .with_label_values(&[label.as_str()])
                .set(gauge(shard.queued as u64));
            self.shard_up
                .with_label_values(&[label.as_str()])
                .set(i64::from(shard.ready));
        }
        if let Some(documents) = &snapshot.documents {
            // A shard that could not be counted now keeps its last count.
            for (index, count) in documents.iter().enumerate() {
                if let Some(count) = count {
                    let label = index.to_string();
                    self.shard_documents
                        .with_label_values(&[label.as_str()])
                        .set(gauge(*count));
                }
            }
            *self.counted_at.lock() = Some(Instant::now());
        }
        let mut text = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut text) {
            tracing::warn!(error = %e, "encoding the metrics failed");
        }
        String::from_utf8(text).unwrap_or_default()
    }
}

/// Methods and statuses whose series a route keeps at hand; others take the
/// labelled lookup.
const METHODS: [&str; 7] = ["GET", "PUT", "POST", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// The `method` label of a request. Clients invent methods (`M0X`, `M1X`,
/// ...): each would be a new series kept forever, so every method outside
/// RFC 9110's is counted as `OTHER`.
fn method_label(method: &str) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "PUT", "POST", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "CONNECT",
    ];
    STANDARD.into_iter().find(|known| *known == method).unwrap_or("OTHER")
}
const STATUSES: [u16; 19] = [
    200, 201, 204, 304, 400, 401, 403, 404, 405, 409, 410, 412, 413, 415, 422, 500, 503, 504, 507,
];

/// One route's request series, resolved on first use: counting a request
/// then costs two atomic additions, no hashing of label values.
pub struct RouteMetrics {
    route: Box<str>,
    requests: IntCounterVec,
    duration: HistogramVec,
    counters: Vec<OnceLock<IntCounter>>,
    histograms: Vec<OnceLock<Histogram>>,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RouteMetrics({})", self.route)
    }
}

impl RouteMetrics {
    pub fn name(&self) -> &str {
        &self.route
    }

    /// Counts one answered request: `method` as the request line has it,
    /// `status` the answer's code.
    pub fn observe(&self, method: &str, status: u16, elapsed: Duration) {
        let Some(m) = METHODS.iter().position(|known| *known == method) else {
            let method = method_label(method);
            let status = status.to_string();
            self.requests
                .with_label_values(&[method, &self.route, status.as_str()])
                .inc();
            self.duration
                .with_label_values(&[method, &self.route])
                .observe(elapsed.as_secs_f64());
            return;
        };
        let histogram = self.histograms[m].get_or_init(|| self.duration.with_label_values(&[method, &self.route]));
        histogram.observe(elapsed.as_secs_f64());
        match STATUSES.iter().position(|known| *known == status) {
            Some(s) => self.counters[m * STATUSES.len() + s]
                .get_or_init(|| {
                    self.requests
                        .with_label_values(&[method, &self.route, status.to_string().as_str()])
                })
                .inc(),
            None => self
                .requests
                .with_label_values(&[method, &self.route, status.to_string().as_str()])
                .inc(),
        }
    }
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
