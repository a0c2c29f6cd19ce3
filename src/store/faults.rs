//! Test-only fault injection, compiled only with the `fault-injection`
//! feature (which the integration tests turn on): the hooks that make a
//! shard meet a failure the way a real one would, so the tests can check
//! what the service does then. A release binary has no way in.

use std::time::Duration;

use sqlx::Connection;

use super::writer::Writer;
use super::{Store, StoreError};

/// Faults that only tests inject, through [`Store::inject_fault`]: nothing
/// outside the process can reach them. Each makes the writer take the path
/// a real failure of that kind takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The writer panics.
    Panic,
    /// The writer panics right after its next commit, before it updates the
    /// cache and acknowledges.
    PanicAfterCommit,
    /// The writer's connection closes under it.
    BreakConnection,
    /// The writer sleeps this long before its next job (its queue fills).
    Stall(Duration),
    /// The file may not grow: SQLite answers as on a full disk.
    DiskFull,
    /// The file may not be written: SQLite answers as on a read-only one.
    ReadOnly,
    /// Undoes `DiskFull` and `ReadOnly`.
    Heal,
    /// Every read connection of the shard is taken for this long, as by
    /// slow scans (handled by the shard, not the writer).
    HoldReads(Duration),
}

impl Store {
    /// Makes shard `shard` meet `fault`, as a real failure of that kind
    /// would.
    pub async fn inject_fault(&self, shard: usize, fault: Fault) -> Result<(), StoreError> {
        let shard = self.shards().get(shard).ok_or(StoreError::Internal("no such shard"))?;
        shard.inject(fault).await
    }
}

impl Writer {
    /// Applies a test's fault; an error if it broke the writer.
    pub(super) async fn inject(&mut self, fault: Fault) -> Option<StoreError> {
        tracing::warn!(shard = self.shard, ?fault, "injecting a fault");
        let shard = self.shard;
        let sql = match fault {
            Fault::Panic => panic!("injected fault: shard {shard}'s writer panics"),
            Fault::PanicAfterCommit => {
                self.panic_after_commit = true;
                return None;
            }
            Fault::BreakConnection => {
                if let Some(conn) = self.conn.take() {
                    let _ = conn.close().await;
                }
                return None;
            }
            Fault::Stall(duration) => {
                tokio::time::sleep(duration).await;
                return None;
            }
            // A page count capped at the current one is how SQLite reports a
            // full disk: SQLITE_FULL on the next growth.
            Fault::DiskFull => {
                let pages = match self.conn() {
                    Ok(conn) => sqlx::query_scalar::<_, i64>("PRAGMA page_count").fetch_one(conn).await,
                    Err(e) => Err(e),
                };
                match pages {
                    Ok(pages) => format!("PRAGMA max_page_count = {pages}"),
                    Err(e) => {
                        return Some(super::engine::sqlite::store_error(shard, e)).filter(StoreError::breaks_the_writer)
                    }
                }
            }
            Fault::ReadOnly => "PRAGMA query_only = 1".to_owned(),
            Fault::Heal => "PRAGMA query_only = 0; PRAGMA max_page_count = 4294967294".to_owned(),
            Fault::HoldReads(_) => return None,
        };
        let applied = match self.conn() {
            Ok(conn) => sqlx::query(&sql).execute(conn).await.map(|_| ()),
            Err(e) => Err(e),
        };
        applied
            .err()
            .map(|e| super::engine::sqlite::store_error(shard, e))
            .filter(StoreError::breaks_the_writer)
    }
}
