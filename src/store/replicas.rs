//! Where several processes share one database (the PostgreSQL engine's
//! replicas): each learns of the others' writes from the shards' feeds,
//! polled every `EXDAAS_REPLICA_POLL_MS`. Changed keys leave this process's
//! cache (unless it holds exactly the state the entry names), and its feed
//! followers wake. So a change made through another replica is served
//! stale here for at most one interval plus one query.

use std::time::Duration;

use super::engine::FeedFilter;
use super::Store;

/// Entries read per shard and query; more are read at once, in turns.
const RUN: usize = 1000;

/// Follows every shard's feed until the store shuts down.
pub async fn follow(store: Store, interval: Duration) {
    let inner = &store.inner;
    let mut shutdown = inner.shutdown.subscribe();
    let mut known: Vec<u64> = inner.shards.iter().map(|shard| shard.published_seq()).collect();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        for (shard, known) in inner.shards.iter().zip(known.iter_mut()) {
            loop {
                let run = match shard
                    .reads()
                    .feed(*known, i64::MAX as u64, FeedFilter::default(), RUN)
                    .await
                {
                    Ok(run) => run,
                    Err(err) => {
                        tracing::debug!(shard = shard.index, error = %err, "following the other replicas' writes");
                        break;
                    }
                };
                if run.floor > *known {
                    // Entries this process never saw were compacted away:
                    // which keys they changed is lost, so nothing cached
                    // can be trusted.
                    tracing::warn!(
                        shard = shard.index,
                        "fell behind the feed's retention; the cache starts over"
                    );
                    inner.cache.clear();
                    *known = run.floor;
                }
                for entry in &run.entries {
                    inner.cache.changed_elsewhere(entry).await;
                }
                let Some(last) = run.entries.last() else { break };
                *known = last.seq;
                shard.advance_head(last.seq);
                inner.feed_published.send_modify(|count| *count = count.wrapping_add(1));
                if run.entries.len() < RUN {
                    break;
                }
            }
        }
    }
}
