//! exdaas: a serialized, fault tolerant, self caching, self sharding JSON
//! document database behind a REST API.
//!
//! `config` reads settings, `store` owns shards, writers and the cache, `api`
//! speaks HTTP, and `app` ties them together for `main` and the tests.

pub mod api;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connections;
pub mod domain;
pub mod durable;
pub mod metrics;
pub mod stats;
pub mod store;
pub mod telemetry;

pub use app::Application;
pub use config::Settings;
pub use store::Store;
