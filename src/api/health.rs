//! Liveness and readiness, for load balancers and Kubernetes probes.

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::ApiTags;
use crate::store::Store;

pub struct HealthApi {
    pub store: Store,
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
    /// What is wrong, while something is.
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
                problem: s.problem,
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
