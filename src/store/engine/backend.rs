//! Opening an engine: which one serves, its paths and its pool sizes, in one
//! place. The store says what it needs ([`EngineOptions`]) and gets its
//! shards back ([`Backend`]), whichever engine holds them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::sqlite::layout::{self, FolderLock, Layout};
use super::{postgres, sqlite, EngineError, ShardFile, SharedDatabase};
use crate::domain::{ShardCount, SyncMode};

/// What the store asks of its engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The data folder (`DETS_ROOT`), used unless `database_url` is set.
    pub data_dir: PathBuf,
    /// A PostgreSQL-protocol database to keep the documents in.
    pub database_url: Option<String>,
    pub shards: ShardCount,
    pub sync: SyncMode,
    /// The whole cache budget (`EXDAAS_CACHE_MIB`): an engine with page
    /// caches of its own takes their share of it.
    pub cache_bytes: u64,
    /// Read connections per shard.
    pub read_connections: u32,
    /// How long a request waits for a connection.
    pub queue_wait: Duration,
}

/// An open engine: its shards, not yet opened for reading or writing.
pub struct Backend {
    pub shards: Vec<ShardFile>,
    /// The identity of the folder or database, and its layout's generation:
    /// a feed cursor from another is void.
    pub folder_id: u64,
    pub generation: u32,
    /// Bytes of the cache budget the engine's own page caches take; the
    /// document cache gets the rest.
    pub engine_cache_bytes: u64,
    /// On files: this process's hold of the folder.
    pub folder: Option<FolderHold>,
    /// Where other processes write too.
    pub shared: Option<SharedDatabase>,
}

/// A data folder held by this process (its lock), with its layout.
pub struct FolderHold {
    root: PathBuf,
    layout: Layout,
    lock: FolderLock,
}

impl FolderHold {
    /// Records that every shard file exists, once every shard opened (a
    /// first boot created them): from then on a missing one stops the boot.
    pub async fn shards_created(self) -> Result<FolderLock, EngineError> {
        blocking(move || {
            layout::shards_created(&self.root, &self.layout)?;
            Ok(self.lock)
        })
        .await
    }
}

/// Opens the engine `options` name: checks and locks the data folder (off
/// the runtime's threads), or connects to and migrates the database.
pub async fn open(options: &EngineOptions) -> Result<Backend, EngineError> {
    let count = options.shards.get();
    match &options.database_url {
        None => {
            let root = options.data_dir.clone();
            let shards = options.shards;
            let (layout, lock) = blocking(move || layout::prepare(&root, shards)).await?;
            let writer_cache_kib = sqlite::files::writer_page_cache_kib(options.cache_bytes, count);
            let files = (0..count as usize)
                .map(|index| {
                    ShardFile::Sqlite(sqlite::ShardFile {
                        index,
                        path: layout.shard_path(&options.data_dir, index),
                        folder_id: layout.id(),
                        sync: options.sync,
                        shards: count,
                        writer_cache_kib,
                        created: layout.shards_created,
                    })
                })
                .collect();
            Ok(Backend {
                shards: files,
                folder_id: layout.id(),
                generation: layout.generation,
                // The writers' page caches take an eighth (see
                // `writer_page_cache_kib`).
                engine_cache_bytes: options.cache_bytes / 8,
                folder: Some(FolderHold {
                    root: options.data_dir.clone(),
                    layout,
                    lock,
                }),
                shared: None,
            })
        }
        Some(url) => {
            // Each shard's reads, its writer, and room for the feed's and
            // the migrations' own.
            let connections = count * (options.read_connections + 1) + 2;
            let database = Arc::new(postgres::PgDatabase::open(url, count, connections, options.queue_wait).await?);
            let files = (0..count as usize)
                .map(|index| {
                    ShardFile::Postgres(postgres::PgShard {
                        index,
                        database: database.clone(),
                    })
                })
                .collect();
            Ok(Backend {
                shards: files,
                folder_id: database.id,
                generation: 1,
                engine_cache_bytes: 0,
                folder: None,
                shared: Some(SharedDatabase::Postgres(database)),
            })
        }
    }
}

/// Runs file work on tokio's blocking threads: a slow disk must not hold a
/// runtime thread that serves requests.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| EngineError::Internal("a file task of the engine failed"))?
}
