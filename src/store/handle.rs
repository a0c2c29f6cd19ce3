//! The store's handle and the state every part of it shares. Defined below
//! the parts that serve (documents, listings, the feed, queries, schemas,
//! indexes), which each add their calls to [`Store`] from their own file
//! and import it from here, never from the facade above them.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use super::cache::DocCache;
use super::engine::sqlite::layout;
use super::following::Following;
use super::ids::{self, IdCounter};
use super::placement::Placement;
use super::shard::Shard;
use crate::domain::DocKey;
use crate::stats::StoreEvents;

/// A cheap-to-clone handle to the open store.
#[derive(Clone)]
pub struct Store {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) placement: Placement,
    pub(super) shards: Vec<Shard>,
    pub(super) cache: DocCache,
    pub(super) ids: IdCounter,
    /// Where the counter is shared (a shared database): blocks of it.
    pub(super) id_blocks: Option<ids::IdBlocks>,
    pub(super) shutdown: watch::Sender<bool>,
    /// This process's hold of the data folder, released at shutdown.
    pub(super) lock: parking_lot::Mutex<Option<layout::FolderLock>>,
    pub(super) data_dir: PathBuf,
    pub(super) events: Arc<dyn StoreEvents>,
    /// Bytes of documents a listing page or an export chunk holds.
    pub(super) page_bytes: usize,
    /// How long a read waits for a connection before 503.
    pub(super) queue_wait: std::time::Duration,
    /// The folder's identity and layout generation: a feed cursor from
    /// another is void.
    pub(super) folder_id: u64,
    pub(super) generation: u32,
    /// Feed reads running at once, at most: a share of the read pool.
    pub(super) feed_reads: tokio::sync::Semaphore,
    /// Catalog changes (schemas, indexes) go to the shards one at a time.
    pub(super) catalog_changes: tokio::sync::Mutex<()>,
    /// Told whenever any shard publishes feed entries.
    pub(super) feed_published: Arc<watch::Sender<u64>>,
    /// Where other processes write too (a shared database): how current
    /// this one's knowledge of their writes is.
    pub(super) following: Option<Arc<Following>>,
}

impl Store {
    pub(super) fn shards(&self) -> &[Shard] {
        &self.inner.shards
    }

    pub(super) fn shard_for(&self, key: &DocKey) -> &Shard {
        &self.inner.shards[self.inner.placement.shard_of(key)]
    }
}
