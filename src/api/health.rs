//! Liveness and readiness, for load balancers and Kubernetes probes, and
//! metrics for Prometheus.

use std::sync::Arc;

use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::tags::ApiTags;
use crate::metrics::Metrics;
use crate::store::Store;

pub struct HealthApi {
    pub store: Store,
    pub metrics: Arc<Metrics>,
}

#[derive(ApiResponse)]
pub enum MetricsResponse {
    /// Prometheus text exposition format (version 0.0.4).
    #[oai(status = 200, content_type = "text/plain; version=0.0.4; charset=utf-8")]
    Text(PlainText<String>),
}

#[derive(Object)]
pub struct Alive {
    /// Always `ok`.
    status: String,
}

#[derive(Object)]
pub struct ShardStatus {
    shard: u32,
    /// The shard's file is open and its writer is running.
    ready: bool,
    /// What is wrong, while something is; `null` when ready.
    #[oai(nullable)]
    problem: Option<String>,
}

#[derive(Object)]
pub struct DatabaseStatus {
    /// This replica read every other replica's writes (the shards' feeds)
    /// within the last `trust_ms`; while not, its reads go past the cache.
    reachable: bool,
    /// Milliseconds since the last round that read them all began.
    behind_ms: u64,
    /// `max(1000, 10 x EXDAAS_REPLICA_POLL_MS)`.
    trust_ms: u64,
    /// Why the database cannot be read, while it cannot; `null` otherwise.
    #[oai(nullable)]
    problem: Option<String>,
}

#[derive(Object)]
pub struct Readiness {
    /// `ready` or `not ready`.
    status: String,
    shards: Vec<ShardStatus>,
    /// With EXDAAS_DATABASE_URL, the database as this replica reaches it;
    /// `null` on a data folder.
    #[oai(nullable)]
    database: Option<DatabaseStatus>,
}

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// Every shard is open and every writer running (and the database, if
    /// any, answers).
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// Some shard is not serving; `shards` says which.
    #[oai(status = 503)]
    NotReady(Json<Readiness>),
}

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// The process is alive
    #[oai(path = "/healthz", method = "get")]
    async fn healthz(&self) -> Json<Alive> {
        Json(Alive { status: "ok".into() })
    }

    /// Metrics in Prometheus text format
    ///
    /// Requests by route and status with latency histograms, cache hits,
    /// misses, entries and bytes, writer queue depths, batch sizes and commit
    /// times, and documents per shard. Open like the probes, keys or not: it
    /// holds routes, shard numbers and counts, never collection names or data.
    #[oai(path = "/metrics", method = "get")]
    async fn metrics(&self) -> MetricsResponse {
        let snapshot = self.store.snapshot(self.metrics.documents_due()).await;
        MetricsResponse::Text(PlainText(self.metrics.render(&snapshot)))
    }

    /// Every shard is open and every writer running, and the database answers
    #[oai(path = "/readyz", method = "get")]
    async fn readyz(&self) -> ReadyResponse {
        let shards: Vec<ShardStatus> = self
            .store
            .health()
            .into_iter()
            .map(|s| ShardStatus {
                shard: s.index as u32,
                ready: s.ready,
                problem: s.problem.map(str::to_owned),
            })
            .collect();
        let database = self.store.database_health().map(|db| DatabaseStatus {
            reachable: db.reachable,
            behind_ms: u64::try_from(db.behind.as_millis()).unwrap_or(u64::MAX),
            trust_ms: u64::try_from(db.trust.as_millis()).unwrap_or(u64::MAX),
            problem: db.problem,
        });
        let ready = shards.iter().all(|s| s.ready) && database.as_ref().is_none_or(|db| db.reachable);
        let status = if ready { "ready" } else { "not ready" }.to_owned();
        let readiness = Json(Readiness {
            status,
            shards,
            database,
        });
        if ready {
            ReadyResponse::Ready(readiness)
        } else {
            ReadyResponse::NotReady(readiness)
        }
    }
}
