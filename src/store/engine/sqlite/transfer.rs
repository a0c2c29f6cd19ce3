//! A data folder as the source or the target of `exdaas migrate` (see
//! `engine::transfer`).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sqlx::{Connection, Row, SqliteConnection};

use super::files::stamp_identity;
use super::layout::{self, FolderLock, Layout};
use super::maintenance::{
    create_shard_file, empty_folder, existing_layout, file_error, folder_error, open_read_only, seal_shard_file,
    shard_bounds, sql_error,
};
use crate::domain::ShardCount;
use crate::store::engine::transfer::{Catalog, DocumentRow, RowPages, BATCH_ROWS};
use crate::store::engine::EngineError;
use crate::store::engine::IdBounds;
use crate::store::placement::Placement;

/// A data folder's shards, read one at a time.
pub struct FolderSource {
    root: PathBuf,
    layout: Layout,
    shards: ShardCount,
    /// Held while the folder is the source: no server writes meanwhile.
    _lock: Option<FolderLock>,
}

impl FolderSource {
    /// Takes the folder's lock (refused while a server runs on it) and reads
    /// its layout.
    pub async fn open(root: &Path) -> Result<Self, EngineError> {
        // Read once before the lock, whose file a folder that is not one
        // would not have.
        existing_layout(root)?;
        let lock = layout::lock(root)?;
        let layout = existing_layout(root)?;
        let shards = ShardCount::new(layout.shards)
            .ok_or_else(|| folder_error(root, format!("its layout names {} shards", layout.shards)))?;
        Ok(Self {
            root: root.to_path_buf(),
            layout,
            shards,
            _lock: Some(lock),
        })
    }

    pub fn shards(&self) -> ShardCount {
        self.shards
    }

    /// Documents in every shard.
    pub async fn count(&self) -> Result<u64, EngineError> {
        let mut total = 0;
        for shard in 0..self.layout.shards as usize {
            let path = self.layout.shard_path(&self.root, shard);
            let mut conn = open_read_only(&path).await?;
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM documents")
                .fetch_one(&mut conn)
                .await
                .map_err(|e| sql_error(&path, e))?;
            conn.close().await.map_err(|e| sql_error(&path, e))?;
            total += u64::try_from(n).unwrap_or(0);
        }
        Ok(total)
    }

    /// The id counter's bounds in shard `shard`.
    pub async fn bounds(&self, shard: usize) -> Result<IdBounds, EngineError> {
        let path = self.layout.shard_path(&self.root, shard);
        let mut conn = open_read_only(&path).await?;
        let bounds = shard_bounds(&mut conn, &path).await?;
        conn.close().await.map_err(|e| sql_error(&path, e))?;
        Ok(bounds)
    }

    /// Shard `shard`'s schemas and index declarations.
    pub async fn catalog(&self, shard: usize) -> Result<Catalog, EngineError> {
        let path = self.layout.shard_path(&self.root, shard);
        let mut conn = open_read_only(&path).await?;
        let schemas = sqlx::query_as("SELECT collection, version, schema, updated_at FROM collection_schemas")
            .fetch_all(&mut conn)
            .await
            .map_err(|e| sql_error(&path, e))?;
        let indexes = sqlx::query_as("SELECT collection, name, fields, created_at FROM collection_indexes")
            .fetch_all(&mut conn)
            .await
            .map_err(|e| sql_error(&path, e))?;
        conn.close().await.map_err(|e| sql_error(&path, e))?;
        Ok(Catalog { schemas, indexes })
    }

    /// Every document of shard `shard`, in pages, in key order.
    pub async fn reader(&self, shard: usize) -> Result<FolderReader, EngineError> {
        let path = self.layout.shard_path(&self.root, shard);
        let conn = open_read_only(&path).await?;
        Ok(FolderReader {
            path,
            conn,
            after: None,
        })
    }
}

/// One shard's documents, a page at a time (keyset paging on the primary
/// key, so each page is an index seek).
pub struct FolderReader {
    path: PathBuf,
    conn: SqliteConnection,
    after: Option<(String, String)>,
}

impl RowPages for FolderReader {
    async fn next_batch(&mut self) -> Result<Option<Vec<DocumentRow>>, EngineError> {
        let query = match &self.after {
            None => sqlx::query(
                "SELECT collection, id, bucket, version, updated_at, expires_at, data FROM documents \
                 ORDER BY collection, id LIMIT ?1",
            )
            .bind(BATCH_ROWS as i64),
            Some((collection, id)) => sqlx::query(
                "SELECT collection, id, bucket, version, updated_at, expires_at, data FROM documents \
                 WHERE (collection, id) > (?2, ?3) ORDER BY collection, id LIMIT ?1",
            )
            .bind(BATCH_ROWS as i64)
            .bind(collection.clone())
            .bind(id.clone()),
        };
        let rows = query
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| sql_error(&self.path, e))?;
        let batch = rows
            .iter()
            .map(|row| {
                Ok(DocumentRow {
                    collection: row.try_get("collection")?,
                    id: row.try_get("id")?,
                    bucket: row.try_get("bucket")?,
                    version: row.try_get("version")?,
                    updated_at: row.try_get("updated_at")?,
                    expires_at: row.try_get("expires_at")?,
                    data: row.try_get("data")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(|e| sql_error(&self.path, e))?;
        let Some(last) = batch.last() else {
            return Ok(None);
        };
        self.after = Some((last.collection.clone(), last.id.clone()));
        Ok(Some(batch))
    }
}

impl FolderReader {
    pub async fn close(self) -> Result<(), EngineError> {
        self.conn.close().await.map_err(|e| sql_error(&self.path, e))
    }
}

/// A new data folder being filled: its shard files exist, its layout file
/// (what makes it a data folder a server opens) is written last, by
/// [`FolderTarget::commit`], once the copy is verified.
pub struct FolderTarget {
    root: PathBuf,
    shards: ShardCount,
    folder_id: u64,
    files: Vec<(PathBuf, SqliteConnection)>,
    _lock: FolderLock,
}

impl FolderTarget {
    /// Creates the shard files in `root`, which must be empty or not exist.
    pub async fn create(root: &Path, shards: ShardCount) -> Result<Self, EngineError> {
        empty_folder(root)?;
        let lock = layout::lock(root)?;
        let folder_id = layout::new_folder_id()?;
        let mut files = Vec::with_capacity(shards.get() as usize);
        for shard in 0..shards.get() as usize {
            let path = layout::shard_file(root, shard);
            let mut conn = create_shard_file(&path).await?;
            stamp_identity(&mut conn, folder_id, shard)
                .await
                .map_err(|e| sql_error(&path, e))?;
            files.push((path, conn));
        }
        Ok(Self {
            root: root.to_path_buf(),
            shards,
            folder_id,
            files,
            _lock: lock,
        })
    }

    /// Writes `rows` into the shards their buckets belong to.
    pub async fn insert(&mut self, rows: &[DocumentRow], placement: &Placement) -> Result<(), EngineError> {
        for (shard, (path, conn)) in self.files.iter_mut().enumerate() {
            let mut mine = rows
                .iter()
                .filter(|row| placement.shard_of_bucket(row.bucket) == shard)
                .peekable();
            if mine.peek().is_none() {
                continue;
            }
            // One statement per shard and batch: a statement per row would
            // cost a hop to sqlx's connection thread each.
            let rows: Vec<Value> = mine
                .map(|row| {
                    json!([
                        row.collection,
                        row.id,
                        row.bucket,
                        row.version,
                        row.updated_at,
                        row.expires_at,
                        row.data
                    ])
                })
                .collect();
            sqlx::query(
                "INSERT INTO documents (collection, id, bucket, version, updated_at, expires_at, data) \
                 SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6 \
                 FROM json_each(?1)",
            )
            .bind(Value::Array(rows).to_string())
            .execute(&mut *conn)
            .await
            .map_err(|e| sql_error(path, e))?;
        }
        Ok(())
    }

    /// Stores a shard's schemas and index declarations (unbuilt) in shard
    /// file `shard`: the counts are the same on both sides.
    pub async fn insert_catalog(&mut self, shard: usize, catalog: &Catalog) -> Result<(), EngineError> {
        let Some((path, conn)) = self.files.get_mut(shard) else {
            return Err(EngineError::Internal("a shard the target does not have"));
        };
        for (collection, version, schema, updated_at) in &catalog.schemas {
            sqlx::query(
                "INSERT INTO collection_schemas (collection, version, schema, updated_at) VALUES (?1, ?2, ?3, ?4)",
            )
            .bind(collection)
            .bind(version)
            .bind(schema)
            .bind(updated_at)
            .execute(&mut *conn)
            .await
            .map_err(|e| sql_error(path, e))?;
        }
        for (collection, name, fields, created_at) in &catalog.indexes {
            sqlx::query(
                "INSERT INTO collection_indexes (collection, name, fields, created_at) VALUES (?1, ?2, ?3, ?4)",
            )
            .bind(collection)
            .bind(name)
            .bind(fields)
            .bind(created_at)
            .execute(&mut *conn)
            .await
            .map_err(|e| sql_error(path, e))?;
        }
        Ok(())
    }

    /// Records the id bounds (every shard gets the highest of the source's,
    /// since shard counts and bounds need not line up) and a feed floor
    /// (the copy's documents have no history: `since=0` answers 410), then
    /// checkpoints, closes and syncs every file. Answers a reader of the
    /// copy, for verification.
    pub async fn finish(&mut self, bounds: &[IdBounds]) -> Result<FolderSource, EngineError> {
        let high = crate::store::engine::transfer::highest(bounds);
        for (path, mut conn) in self.files.drain(..) {
            let meta = [
                ("max_counter_id", high.stored),
                ("counter_high", high.counter),
                ("feed_floor", 1),
            ];
            for (key, value) in meta {
                sqlx::query("UPDATE shard_meta SET value = ?1 WHERE key = ?2")
                    .bind(i64::try_from(value).unwrap_or(i64::MAX))
                    .bind(key)
                    .execute(&mut conn)
                    .await
                    .map_err(|e| sql_error(&path, e))?;
            }
            seal_shard_file(conn, &path).await?;
        }
        crate::durable::sync_dir(&self.root).map_err(|e| folder_error(&self.root, format!("cannot sync it: {e}")))?;
        Ok(FolderSource {
            root: self.root.clone(),
            layout: Layout::new(self.shards, 0, self.folder_id),
            shards: self.shards,
            _lock: None,
        })
    }

    /// Makes the folder a data folder: writes its layout file.
    pub async fn commit(self, copy: FolderSource) -> Result<(), EngineError> {
        if copy.root != self.root {
            return Err(file_error(&copy.root, "not the folder being migrated into"));
        }
        layout::write(&self.root, &copy.layout)
    }
}
