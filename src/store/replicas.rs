//! Where several processes share one database (the PostgreSQL engine's
//! replicas): each learns of the others' writes from the shards' feeds,
//! polled every `EXDAAS_REPLICA_POLL_MS`. Changed keys leave this process's
//! cache (unless it holds exactly the state the entry names), and its feed
//! followers wake. So a change made through another replica is served
//! stale here for at most one interval plus one query.
//!
//! While following fails (the database out of reach), that bound cannot
//! hold: past [`Following::trust`] since the last round that read every
//! shard, reads go past the cache to the database, and readiness says so.

use std::time::{Duration, Instant};

use super::engine::FeedFilter;
use super::error::StoreError;
use super::following::Following;
use super::handle::Store;

/// Entries read per shard and query; more are read at once, in turns.
const RUN: usize = 1000;

/// Follows every shard's feed until the store shuts down.
pub async fn follow(store: Store, interval: Duration, following: std::sync::Arc<Following>) {
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
        let began = Instant::now();
        let mut problem = None;
        for (shard, known) in inner.shards.iter().zip(known.iter_mut()) {
            loop {
                let asked = Instant::now();
                let run = match shard
                    .reads()
                    .feed(*known, i64::MAX as u64, FeedFilter::default(), RUN)
                    .await
                {
                    Ok(run) => run,
                    Err(err) => {
                        tracing::debug!(shard = shard.index, error = %err, "following the other replicas' writes");
                        problem = Some(format!(
                            "cannot read shard {}'s feed: {}",
                            shard.index,
                            StoreError::from(err).public()
                        ));
                        break;
                    }
                };
                inner.events.database_round_trip(asked.elapsed().as_secs_f64());
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
        // Said once when it starts or changes, not every round: a damaged
        // feed entry stays until it is repaired or compacted away.
        if problem.is_some() && problem != following.problem() {
            tracing::warn!(
                problem = problem.as_deref().unwrap_or_default(),
                "following the other replicas' writes fails; reads go to the database"
            );
        }
        following.round_done(began, problem);
    }
}
