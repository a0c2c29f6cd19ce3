//! Integration tests: the real server over HTTP, one module per area.

mod batching;
mod boot;
mod cache;
mod docs_api;
mod helpers;
mod legacy_api;
mod restart;
mod shutdown;
