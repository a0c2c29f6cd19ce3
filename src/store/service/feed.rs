//! The change feed as the store serves it: a page of changes across every
//! shard, from the recent entries in memory or the shards' feeds, waiting
//! for the next change when asked to.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::store::engine::{FeedEntry, FeedFilter};
use crate::store::error::StoreError;
use crate::store::feed::*;
use crate::store::handle::Store;

/// How long a waiting reader lets commits gather after one wakes it, so a
/// burst of commits costs one read, not one each.
const GATHER: Duration = Duration::from_millis(5);

impl Store {
    /// A page of the feed: up to `limit` entries after the start.
    pub async fn changes(&self, request: &FeedRequest) -> Result<FeedPage, StoreError> {
        let start = self.feed_start(&request.start)?;
        let shards = &self.inner.shards;
        // Reads of the files take at most a share of the read connections,
        // however many clients follow the feed.
        let mut permit = None;
        // Each shard's run past its position, up to what is published.
        let mut runs: Vec<(Vec<FeedEntry>, bool, u64)> = Vec::with_capacity(shards.len());
        for (index, shard) in shards.iter().enumerate() {
            let position = start.positions[index];
            let head = shard.published_seq();
            if position > head {
                return Err(StoreError::FeedGone {
                    reason: format!(
                        "the cursor is past the end of shard {index}'s feed ({position} > {head}): \
                         the data folder was restored or replaced"
                    ),
                });
            }
            if position == head {
                runs.push((Vec::new(), true, head));
                continue;
            }
            let filter = FeedFilter {
                collections: request.collections.as_deref(),
                prefix: request.prefix.as_deref(),
            };
            let mut entries = match shard.recent_feed().read(position, head, filter, request.limit + 1) {
                Some(entries) => entries,
                None => {
                    if permit.is_none() {
                        permit = Some(self.feed_read_permit().await?);
                    }
                    let run = shard.reads().feed(position, head, filter, request.limit + 1).await?;
                    if position < run.floor {
                        return Err(gone_behind(index, run.floor));
                    }
                    run.entries
                }
            };
            let exhausted = entries.len() <= request.limit;
            entries.truncate(request.limit);
            runs.push((entries, exhausted, head));
        }
        // Merge by commit time, each shard's run in its own order.
        let mut taken = vec![0usize; runs.len()];
        let mut items = Vec::new();
        while items.len() < request.limit {
            let next = runs
                .iter()
                .enumerate()
                .filter_map(|(shard, (entries, _, _))| entries.get(taken[shard]).map(|entry| (entry.at_ms, shard)))
                .min();
            let Some((_, shard)) = next else { break };
            let entry = runs[shard].0[taken[shard]].clone();
            taken[shard] += 1;
            items.push(FeedItem { shard, entry });
        }
        let mut cursor = start.clone();
        let mut more = false;
        for (shard, (entries, exhausted, head)) in runs.iter().enumerate() {
            let all_taken = taken[shard] == entries.len();
            cursor.positions[shard] = if all_taken && *exhausted {
                // Nothing else up to the head is this reader's.
                *head
            } else {
                more = true;
                match taken[shard] {
                    0 => start.positions[shard],
                    n => entries[n - 1].seq,
                }
            };
        }
        Ok(FeedPage {
            start,
            items,
            cursor,
            more,
        })
    }

    /// A turn to read the feed from the files.
    pub(in crate::store) async fn feed_read_permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, StoreError> {
        tokio::time::timeout(self.inner.queue_wait, self.inner.feed_reads.acquire())
            .await
            .map_err(|_| StoreError::Busy {
                shard: 0,
                waited_ms: self.inner.queue_wait.as_millis() as u64,
                reads: true,
            })?
            .map_err(|_| StoreError::Internal("the feed's read permits were closed"))
    }

    /// The next page of the feed with at least one entry, waiting for one
    /// until `deadline` or until `stop` turns true; then the (empty) page
    /// with the cursor moved past what the reader does not follow.
    pub async fn next_changes(
        &self,
        mut request: FeedRequest,
        deadline: Instant,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<FeedPage, StoreError> {
        let mut published = self.inner.feed_published.subscribe();
        loop {
            published.borrow_and_update();
            let page = self.changes(&request).await?;
            if !page.items.is_empty() || Instant::now() >= deadline || *stop.borrow() {
                return Ok(page);
            }
            request.start = FeedStart::After(page.cursor.clone());
            tokio::select! {
                changed = published.changed() => {
                    if changed.is_err() {
                        return Ok(page);
                    }
                    tokio::time::sleep(GATHER).await;
                }
                () = tokio::time::sleep_until(deadline) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// A cursor at the end of the feed: what `since=now` starts from.
    pub fn feed_now(&self) -> FeedCursor {
        FeedCursor {
            folder: self.inner.folder_id,
            generation: self.inner.generation,
            positions: self.inner.shards.iter().map(|shard| shard.published_seq()).collect(),
        }
    }

    pub(in crate::store) fn feed_start(&self, start: &FeedStart) -> Result<FeedCursor, StoreError> {
        match start {
            FeedStart::Now => Ok(self.feed_now()),
            FeedStart::Beginning => Ok(FeedCursor {
                folder: self.inner.folder_id,
                generation: self.inner.generation,
                positions: vec![0; self.inner.shards.len()],
            }),
            FeedStart::After(cursor) => {
                if cursor.folder != self.inner.folder_id
                    || cursor.generation != self.inner.generation
                    || cursor.positions.len() != self.inner.shards.len()
                {
                    return Err(StoreError::FeedGone {
                        reason: "the cursor is from another data folder or shard layout (restored from a backup \
                                 or resharded since): start over from since=now after reading the documents"
                            .into(),
                    });
                }
                Ok(cursor.clone())
            }
        }
    }
}

fn gone_behind(shard: usize, floor: u64) -> StoreError {
    StoreError::FeedGone {
        reason: format!(
            "the change feed no longer holds changes that old (shard {shard} keeps those after {floor}; \
             see EXDAAS_FEED_RETENTION_HOURS and EXDAAS_FEED_MAX_ENTRIES): start over from since=now \
             after reading the documents"
        ),
    }
}
