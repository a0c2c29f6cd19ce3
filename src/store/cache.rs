//! The document cache: a moka cache of committed documents, bounded in bytes.
//!
//! It must never answer with a value older than an acknowledged write. The
//! danger is the fill race: a reader misses, reads the old row, the writer
//! commits and updates the cache, then the reader stores the old row. Both
//! sides therefore change an entry only through moka's `and_compute_with`,
//! which holds a per-key lock: a reader's miss does its database read *inside*
//! that lock, and the writer's post-commit update takes the same lock before
//! it acknowledges. Either the reader's read starts after the commit (and sees
//! it), or the writer's update lands after the reader's fill (and replaces it).
//! The reader takes its database connection *before* the lock, so a wait for
//! a free connection never holds up a writer.

use std::future::Future;

use moka::future::Cache;
use moka::ops::compute::Op;

use super::{Document, StoreError};
use crate::domain::DocKey;

/// Bytes counted for an entry beyond its key and JSON text: what one
/// entry really costs the process besides those (moka's entry, its hash
/// table slot and access-order node, the key's and the text's allocations,
/// the `Document`). Measured with `scripts/restart.bench.sh`: a million
/// small documents (53 bytes of key and text each) grew the resident memory
/// by 447 MiB, 469 bytes an entry; counted at 96 as before, the cache held
/// three times its setting. 512 leaves a margin for what varies from run to
/// run (allocator pages, moka's evictions that wait for its housekeeping):
/// at 480, the resident memory after the original's load over 1,000,000
/// documents ranged from 297 to 321 MiB against the promise of 320.
pub const ENTRY_OVERHEAD: usize = 512;

/// The largest document the warm-up loads: a larger one is read when first
/// asked for.
pub const WARM_DOC_BYTES: u64 = 64 << 10;

/// The most entries the cache's table is sized for at boot: 16 MiB of
/// table (moka makes it a power of two of twice as many 8-byte slots),
/// reached at 256 MiB of documents. The default's 224 MiB share presizes
/// 458,752 entries, 8 MiB of table.
const PRESIZED_ENTRIES: u64 = 1 << 19;

#[derive(Clone)]
pub struct DocCache {
    /// `None` when the configured capacity is zero.
    inner: Option<Cache<DocKey, Document>>,
    capacity_bytes: u64,
}

impl DocCache {
    pub fn new(capacity_bytes: u64) -> Self {
        let inner = (capacity_bytes > 0).then(|| {
            // Its table sized at once for as many entries as the setting can
            // hold (none weighs less than ENTRY_OVERHEAD, which counts its
            // slot), up to PRESIZED_ENTRIES: filling it then never rehashes.
            // Growing it by rehashing was a fifth of the boot's warm-up on the
            // thread doing the inserts. Past the cap, a large setting must not
            // cost its table's memory before there is anything to cache.
            let presized = (capacity_bytes / ENTRY_OVERHEAD as u64).min(PRESIZED_ENTRIES);
            Cache::builder()
                .max_capacity(capacity_bytes)
                .initial_capacity(usize::try_from(presized).unwrap_or(0))
                .weigher(|key: &DocKey, doc: &Document| u32::try_from(weight(key, doc)).unwrap_or(u32::MAX))
                .build()
        });
        Self { inner, capacity_bytes }
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// The cached document, if any. A hit is never older than the last
    /// acknowledged write of its key.
    pub async fn get(&self, key: &DocKey) -> Option<Document> {
        self.inner.as_ref()?.get(key).await
    }

    /// After a miss: runs `load` under the key's lock and caches what it
    /// found, unless a commit cached the key meanwhile (then that is the
    /// answer). `load` should not wait for anything but its read: a writer
    /// waits on this lock before it acknowledges.
    pub async fn fill<F, Fut>(&self, key: &DocKey, load: F) -> Result<Option<Document>, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Document>, StoreError>>,
    {
        let Some(cache) = &self.inner else {
            return load().await;
        };
        let mut found: Result<Option<Document>, StoreError> = Ok(None);
        let slot = &mut found;
        cache
            .entry_by_ref(key)
            .and_compute_with(|existing| async move {
                if let Some(entry) = existing {
                    *slot = Ok(Some(entry.into_value()));
                    return Op::Nop;
                }
                match load().await {
                    Ok(Some(doc)) => {
                        *slot = Ok(Some(doc.clone()));
                        Op::Put(doc)
                    }
                    other => {
                        *slot = other;
                        Op::Nop
                    }
                }
            })
            .await;
        found
    }

    /// Records a committed change (`None`: deleted). The writer calls this
    /// after COMMIT and before it acknowledges. `row_existed` says whether
    /// the key had a row on disk before this change (even an expired one).
    pub async fn committed(&self, key: &DocKey, doc: Option<Document>, row_existed: bool) {
        let Some(cache) = &self.inner else { return };
        match doc {
            // A reader racing with the first row of a key can only have found
            // nothing on disk, and nothing is never cached: no stale fill to
            // fence off, so the cheaper unlocked insert is enough.
            Some(doc) if !row_existed => cache.insert(key.clone(), doc).await,
            doc => {
                cache
                    .entry_by_ref(key)
                    .and_compute_with(|_| async move {
                        match doc {
                            Some(doc) => Op::Put(doc),
                            None => Op::Remove,
                        }
                    })
                    .await;
            }
        }
    }

    /// Another process changed the document of `entry` (or this one did:
    /// its own entries come by too): the entry leaves the cache unless it
    /// holds exactly the state `entry` names (same version and time).
    pub async fn changed_elsewhere(&self, entry: &crate::store::FeedEntry) {
        let Some(cache) = &self.inner else { return };
        let written = entry.kind == crate::store::ChangeKind::Written;
        cache
            .entry_by_ref(&entry.key)
            .and_compute_with(|existing| async move {
                match existing {
                    Some(cached)
                        if written
                            && cached.value().version == entry.version
                            && cached.value().updated_at_ms == entry.at_ms =>
                    {
                        Op::Nop
                    }
                    Some(_) => Op::Remove,
                    None => Op::Nop,
                }
            })
            .await;
    }

    /// Forgets everything.
    pub fn clear(&self) {
        if let Some(cache) = &self.inner {
            cache.invalidate_all();
        }
    }

    /// Fills the cache at boot, before any request or write can race with it.
    pub async fn warm(&self, key: DocKey, doc: Document) {
        if let Some(cache) = &self.inner {
            cache.insert(key, doc).await;
        }
    }

    /// Number of entries and weighted bytes (approximate, for logs and metrics).
    pub async fn usage(&self) -> (u64, u64) {
        match &self.inner {
            Some(cache) => {
                cache.run_pending_tasks().await;
                (cache.entry_count(), cache.weighted_size())
            }
            None => (0, 0),
        }
    }
}

/// Cache bytes one document is counted for.
pub fn weight(key: &DocKey, doc: &Document) -> usize {
    key.collection.as_str().len() + key.id.as_str().len() + doc.data.len() + ENTRY_OVERHEAD
}
