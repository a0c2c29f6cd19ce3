//! The writer's chores between batches: removing expired documents,
//! purging a dropped collection, compacting the change feed.

use std::time::Duration;

use tokio::time::Instant;

use super::{Chores, Exit, Writer, COMPACT_INTERVAL, COMPACT_LIMIT, SWEEP_INTERVAL, SWEEP_LIMIT};
use crate::clock::now_millis;
use crate::domain::{CollectionName, DocKey};
use crate::store::engine::ChangeKind;
use crate::store::engine::IndexChanges;
use crate::store::StoreError;

impl Writer {
    /// Runs the chores that are due: removing expired documents, compacting
    /// the feed. An `Err` when the writer broke and must end.
    pub(super) async fn chores(&mut self, chores: &mut Chores) -> Result<(), Exit> {
        let now = Instant::now();
        if self.may_expire && now >= chores.next_sweep {
            let removed = match self.sweep().await {
                Ok(removed) => removed,
                Err(err) if err.breaks_the_writer() => return Err(self.failed(err).await),
                Err(err) => {
                    tracing::warn!(shard = self.shard, error = %err, "removing expired documents failed");
                    0
                }
            };
            // A full sweep may have left more: come back as soon as the
            // queue is served.
            chores.next_sweep = Instant::now()
                + if removed < SWEEP_LIMIT {
                    SWEEP_INTERVAL
                } else {
                    Duration::ZERO
                };
        }
        if now >= chores.next_compaction {
            let removed = match self.compact().await {
                Ok(removed) => removed,
                Err(err) if err.breaks_the_writer() => return Err(self.failed(err).await),
                Err(err) => {
                    tracing::warn!(shard = self.shard, error = %err, "compacting the change feed failed");
                    0
                }
            };
            chores.next_compaction = Instant::now()
                + if removed < COMPACT_LIMIT {
                    COMPACT_INTERVAL
                } else {
                    Duration::ZERO
                };
        }
        Ok(())
    }

    /// Removes up to `SWEEP_LIMIT` expired documents and drops them from the
    /// cache. Readers already treat them as gone; this reclaims the space
    /// and tells the feed.
    pub(super) async fn sweep(&mut self) -> Result<u32, StoreError> {
        self.begin().await?;
        let found = self
            .writes
            .expired(now_millis(), SWEEP_LIMIT)
            .await
            .map_err(|e| self.engine_error(e))?;
        let removed = self.delete_and_evict(found, ChangeKind::Expired).await?;
        if removed > 0 {
            tracing::debug!(shard = self.shard, removed, "removed expired documents");
        }
        Ok(removed as u32)
    }

    /// Deletes up to `limit` documents of `collection` in one transaction.
    pub(super) async fn purge(&mut self, collection: &CollectionName, limit: u32) -> Result<u64, StoreError> {
        self.begin().await?;
        let found = self
            .writes
            .in_collection(collection, limit)
            .await
            .map_err(|e| self.engine_error(e))?;
        self.delete_and_evict(found, ChangeKind::Dropped).await
    }

    /// Deletes the `found` documents with a feed entry of `kind` for each,
    /// then evicts them from the cache. The keys are marked unpublished
    /// first, so a writer dying in between still gets them evicted.
    pub(super) async fn delete_and_evict(
        &mut self,
        found: Vec<(DocKey, u64)>,
        kind: ChangeKind,
    ) -> Result<u64, StoreError> {
        if found.is_empty() {
            self.writes.release().await;
            return Ok(0);
        }
        let feed = self.feed.number(
            found.into_iter().map(|(key, version)| (key, version, kind)),
            now_millis(),
        );
        self.set_unpublished(feed.iter().map(|entry| entry.key.clone()).collect());
        let removed: Vec<DocKey> = feed
            .iter()
            .filter(|entry| {
                self.indexes
                    .get(&entry.key.collection)
                    .is_some_and(|list| !list.is_empty())
            })
            .map(|entry| entry.key.clone())
            .collect();
        let entries = IndexChanges {
            removed,
            added: Vec::new(),
        };
        if !entries.is_empty() {
            self.writes
                .index_changes(&entries)
                .await
                .map_err(|e| self.engine_error(e))?;
        }
        let done = self
            .writes
            .delete_with_feed(&feed)
            .await
            .map_err(|e| self.engine_error(e))?;
        for entry in &feed {
            self.cache.committed(&entry.key, None, true).await;
        }
        self.set_unpublished(Vec::new());
        self.feed.published(&feed);
        Ok(done)
    }

    /// Compacts the feed before the shard serves, so a cursor the settings
    /// no longer keep is refused from the first request on. A long backlog
    /// (a lowered setting) is left, after a few passes, to the chores.
    pub(in crate::store) async fn compact_at_open(&mut self) -> Result<(), StoreError> {
        for _ in 0..8 {
            if self.compact().await? < COMPACT_LIMIT {
                break;
            }
        }
        Ok(())
    }

    /// Removes feed entries past their retention, or beyond the count to
    /// keep, at most `COMPACT_LIMIT` of them; answers how many.
    pub(super) async fn compact(&mut self) -> Result<u64, StoreError> {
        let retention_ms = i64::try_from(self.feed.retention.as_millis()).unwrap_or(i64::MAX);
        let before = now_millis().saturating_sub(retention_ms);
        let removed = self
            .writes
            .compact_feed(before, self.feed.keep, COMPACT_LIMIT)
            .await
            .map_err(|e| self.engine_error(e))?;
        if removed > 0 {
            tracing::debug!(shard = self.shard, removed, "compacted the change feed");
        }
        Ok(removed)
    }
}
