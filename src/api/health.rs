//! Liveness and readiness, for load balancers and Kubernetes probes, and
//! metrics for Prometheus.

use std::sync::Arc;

use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::ApiTags;
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
pub struct Readiness {
    /// `ready` or `not ready`.
    status: String,
    shards: Vec<ShardStatus>,
}

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// Every shard is open and every writer running.
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

    /// Every shard is open and every writer running
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
        if shards.iter().all(|s| s.ready) {
            ReadyResponse::Ready(Json(Readiness {
                status: "ready".into(),
                shards,
            }))
        } else {
            ReadyResponse::NotReady(Json(Readiness {
                status: "not ready".into(),
                shards,
            }))
        }
    }
}
