//! The engine conformance suite: each test is written once against the
//! engine's contract (`exdaas::store::engine`: `ShardFile`, `ShardWrites`,
//! `ShardReads`), not HTTP, and runs on every engine the machine has: the
//! SQLite engine over a temporary data folder always, and the PostgreSQL
//! engine on a fresh database of its own when `EXDAAS_TEST_DATABASE_URL`
//! is set (scripts/test.sh runs the suite both ways). Every assertion names
//! the engine it failed on.
//!
//! Each module's doc states the part of the contract it pins down; where
//! the engines used to differ, the decision taken is written there.

/// A test written once, as `async fn name(engine) { .. }` over an
/// `&Engine`, run on each engine as `name::sqlite` and `name::postgresql`
/// (which passes without running where no PostgreSQL is set, saying so).
/// `#[ignore_on_sqlite = ".."]` or `#[ignore_on_postgresql = ".."]` mark a
/// known drift on one engine, with what must change to fix it.
macro_rules! conformance {
    (
        $(#[doc = $doc:literal])*
        $(#[ignore_on_sqlite = $sqlite_drift:literal])?
        $(#[ignore_on_postgresql = $postgresql_drift:literal])?
        async fn $name:ident($engine:ident) $body:block
    ) => {
        $(#[doc = $doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($engine: &crate::engines::Engine) $body

            #[tokio::test]
            $(#[ignore = $sqlite_drift])?
            async fn sqlite() {
                crate::engines::run_on("sqlite", run).await;
            }

            #[tokio::test]
            $(#[ignore = $postgresql_drift])?
            async fn postgresql() {
                crate::engines::run_on("postgresql", run).await;
            }
        }
    };
}

mod catalog;
mod engines;
mod feed;
mod ids;
mod lifecycle;
mod sweeps;
mod unparsable;
mod warm_up;
