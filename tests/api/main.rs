//! Integration tests: the real server over HTTP, one module per area.

mod auth;
mod batch;
mod batching;
mod boot;
mod cache;
mod collections;
mod conditional;
mod crash;
mod docs_api;
mod expiry;
mod faults;
mod feed;
mod helpers;
mod hostile;
mod legacy_api;
mod listing;
mod maintenance;
mod memory;
mod migrate;
mod model;
mod observe;
mod patch;
mod replicas;
mod restart;
mod shutdown;
mod transfer;
