//! A shard's write connection: the SQL of the writer's loads and commits,
//! of expiry sweeps and collection drops, and of a clean close. One writer
//! task owns it (the store's core serializes every write to the shard).

use std::fmt::Write as _;
use std::sync::Arc;

use sqlx::{Connection, Row, SqliteConnection};

use super::super::{FeedEntry, IdBounds, IndexChanges, StorageError, StoredIndex, StoredRow, StoredSchema};
use super::engine_error;
use super::layout::FileIdentity;
use super::rows::{document_from_row, keys_param};
use crate::domain::{CollectionName, DocId, DocKey, SyncMode};
use crate::store::document::Document;
use crate::store::engine::contract::{FileCheck, Opened, WriteConnection};

/// The statement that records ?1's `feed` in the change feed.
macro_rules! feed_insert {
    () => {
        "INSERT INTO changes (seq, collection, id, version, kind, at) \
         SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5 FROM json_each(?1, '$.feed');"
    };
}

/// The shard's one write connection, and the file it opened.
pub struct SqliteWrites {
    shard: usize,
    /// `None` once the connection broke.
    conn: Option<SqliteConnection>,
    /// The file the connection opened, to notice it being deleted or
    /// replaced under the running server.
    file: FileIdentity,
    /// `index_changes` opened the transaction the next commit ends.
    open_tx: bool,
    /// Commits are not synced one by one (`EXDAAS_SYNC=normal`): a power
    /// cut may take the last ones back, so the id counter's reservation is
    /// synced on its own before ids it covers are written (`reserve_ids`).
    unsynced_commits: bool,
    /// The counter's reservation (`counter_high`) as it is on disk for good.
    durable_counter: u64,
}

/// How every write script starts, unless `index_changes` already did.
const BEGIN: &str = "BEGIN IMMEDIATE;";

impl WriteConnection for SqliteWrites {
    /// Only this process writes the file.
    fn shared(&self) -> bool {
        false
    }

    /// Nobody else writes: what the writer knows is what is committed.
    async fn begin(&mut self) -> Result<Option<Opened>, StorageError> {
        Ok(None)
    }

    async fn release(&mut self) {}

    /// The shard's file is still the one the connection opened (not deleted
    /// or replaced): a commit to it survives a restart.
    fn check_file(&self) -> FileCheck {
        let file = self.file.clone();
        FileCheck::started(move || file.still_there())
    }

    /// The file, as logs name it.
    fn file_name(&self) -> String {
        self.file.path.display().to_string()
    }

    /// The committed rows among `keys`, with the text of those up to
    /// `small` bytes (the size of the others is in SQLite's record header:
    /// their text is not read).
    async fn load(&mut self, keys: &[DocKey], small: usize) -> Result<Vec<StoredRow>, StorageError> {
        select_many(self.conn()?, keys, small).await.map_err(engine_error)
    }

    /// The text of the committed rows among `keys`, as (index in `keys`,
    /// text).
    async fn load_texts(&mut self, keys: &[DocKey]) -> Result<Vec<(usize, Arc<str>)>, StorageError> {
        select_texts(self.conn()?, keys).await.map_err(engine_error)
    }

    /// Makes the id counter's reservation `ceilings.counter` durable before
    /// any id it covers is written, where commits are not synced one by one:
    /// one synced transaction per reservation (a block of ids), so a power
    /// cut may take acknowledged writes back, as `EXDAAS_SYNC=normal` allows,
    /// but never the reservation that covers their ids, and the counter
    /// restarts past them. Where every commit is synced, the commit that
    /// raises the reservation makes it durable itself.
    async fn reserve_ids(&mut self, ceilings: IdBounds) -> Result<(), StorageError> {
        if !self.unsynced_commits || ceilings.counter <= self.durable_counter {
            return Ok(());
        }
        // The safety level may only change outside a transaction: this one
        // is synced, and the connection goes back to unsynced commits.
        let reserved = sqlx::query(
            "PRAGMA synchronous = FULL; BEGIN IMMEDIATE; \
             UPDATE shard_meta SET value = max(value, ?1) WHERE key = 'counter_high'; COMMIT;",
        )
        .bind(meta_value(ceilings.counter))
        .execute(self.conn()?)
        .await;
        if let Err(err) = reserved {
            self.rollback().await;
            let _ = sqlx::query("PRAGMA synchronous = NORMAL").execute(self.conn()?).await;
            return Err(engine_error(err));
        }
        sqlx::query("PRAGMA synchronous = NORMAL")
            .execute(self.conn()?)
            .await
            .map_err(engine_error)?;
        self.durable_counter = ceilings.counter;
        Ok(())
    }

    /// Writes every change's final state (`None`: deleted), its feed
    /// entries and, when given, raised id ceilings, in one transaction sent
    /// to SQLite as one script. If any part fails, the transaction is rolled
    /// back and nothing of it is visible.
    async fn commit<'a>(
        &mut self,
        changes: impl Iterator<Item = (&'a DocKey, u32, Option<&'a Document>)>,
        feed: &[FeedEntry],
        ceilings: Option<IdBounds>,
    ) -> Result<(), StorageError> {
        // Row fields go as one JSON array; the documents' text goes as one
        // blob that the rows slice by byte offset, so it is neither escaped
        // here nor parsed by SQLite. Collection names and ids are plain ASCII
        // without quotes or backslashes (see `domain`): no escaping either.
        let mut upserts = String::from("[");
        let mut texts: Vec<u8> = Vec::new();
        let mut deletes = String::from("[");
        for (key, bucket, doc) in changes {
            let list = if doc.is_some() { &mut upserts } else { &mut deletes };
            if list.len() > 1 {
                list.push(',');
            }
            let _ = write!(list, "[\"{}\",\"{}\"", key.collection, key.id);
            if let Some(doc) = doc {
                let _ = write!(
                    list,
                    ",{},{},{},{},{},",
                    bucket,
                    doc.version,
                    doc.updated_at_ms,
                    texts.len() + 1,
                    doc.data.len()
                );
                match doc.expires_at_ms {
                    Some(at) => {
                        let _ = write!(list, "{at}");
                    }
                    None => list.push_str("null"),
                }
                texts.extend_from_slice(doc.data.as_bytes());
            }
            list.push(']');
        }
        upserts.push(']');
        deletes.push(']');
        let script = write_script(upserts.len() > 2, deletes.len() > 2, ceilings.is_some());
        let bounds = ceilings.unwrap_or_default();
        let batch = format!(
            "{{\"upsert\":{upserts},\"delete\":{deletes},\"feed\":{},\"max_counter_id\":{},\"counter_high\":{}}}",
            feed_param(feed),
            meta_value(bounds.stored),
            meta_value(bounds.counter)
        );
        let script = self.begun(script);
        let written = sqlx::query(script).bind(batch).bind(texts).execute(self.conn()?).await;
        if let Err(err) = written {
            self.rollback().await;
            return Err(engine_error(err));
        }
        Ok(())
    }

    /// Up to `limit` documents expired at `now`: their keys and versions.
    async fn expired(&mut self, now: i64, limit: u32) -> Result<Vec<(DocKey, u64)>, StorageError> {
        let rows = sqlx::query("SELECT collection, id, version FROM documents WHERE expires_at <= ?1 LIMIT ?2")
            .bind(now)
            .bind(limit)
            .fetch_all(self.conn()?)
            .await
            .map_err(engine_error)?;
        Ok(keys_of(&rows, None))
    }

    /// Up to `limit` documents of `collection`: their keys and versions.
    async fn in_collection(
        &mut self,
        collection: &CollectionName,
        limit: u32,
    ) -> Result<Vec<(DocKey, u64)>, StorageError> {
        let rows = sqlx::query("SELECT id, version FROM documents WHERE collection = ?1 LIMIT ?2")
            .bind(collection.as_str())
            .bind(limit)
            .fetch_all(self.conn()?)
            .await
            .map_err(engine_error)?;
        Ok(keys_of(&rows, Some(collection)))
    }

    /// Deletes the documents of `feed` (as found by `expired` or
    /// `in_collection`: this writer changed nothing since) and records
    /// `feed`, in one transaction; answers how many were deleted.
    async fn delete_with_feed(&mut self, feed: &[FeedEntry]) -> Result<u64, StorageError> {
        if feed.is_empty() {
            return Ok(0);
        }
        let keys: Vec<DocKey> = feed.iter().map(|entry| entry.key.clone()).collect();
        let batch = format!("{{\"delete\":{},\"feed\":{}}}", keys_param(&keys), feed_param(feed));
        let script = concat!(
            "BEGIN IMMEDIATE;",
            "DELETE FROM documents WHERE (collection, id) IN \
             (SELECT value->>0, value->>1 FROM json_each(?1, '$.delete'));",
            feed_insert!(),
            "COMMIT;"
        );
        let script = self.begun(script);
        let done = sqlx::query(script).bind(batch).execute(self.conn()?).await;
        if let Err(err) = done {
            self.rollback().await;
            return Err(engine_error(err));
        }
        Ok(feed.len() as u64)
    }

    /// Every index the file holds.
    async fn indexes(&mut self) -> Result<Vec<StoredIndex>, StorageError> {
        let rows = sqlx::query(
            "SELECT collection, name, fields, built, indexed, oversized, created_at FROM collection_indexes",
        )
        .fetch_all(self.conn()?)
        .await
        .map_err(engine_error)?;
        rows.iter().map(stored_index).collect()
    }

    /// Opens the transaction and changes the index entries in it; the next
    /// commit ends it.
    async fn index_changes(&mut self, changes: &IndexChanges) -> Result<(), StorageError> {
        let param = index_changes_param(changes);
        let script = concat!(
            "BEGIN IMMEDIATE;",
            "DELETE FROM index_entries WHERE (collection, id) IN \
             (SELECT value->>0, value->>1 FROM json_each(?1, '$.removed'));",
            "INSERT OR REPLACE INTO index_entries (collection, name, key, id) \
             SELECT value->>0, value->>1, unhex(value->>2), value->>3 FROM json_each(?1, '$.added');"
        );
        let done = sqlx::query(script).bind(param).execute(self.conn()?).await;
        match done {
            Ok(_) => {
                self.open_tx = true;
                Ok(())
            }
            Err(err) => {
                self.rollback().await;
                Err(engine_error(err))
            }
        }
    }

    /// Declares `index` unless one of its name is there, with `feed`.
    async fn declare_index(&mut self, index: &StoredIndex, feed: &[FeedEntry]) -> Result<bool, StorageError> {
        let fields = serde_json::to_string(&index.fields)
            .map_err(|e| StorageError::new(super::super::ErrorKind::Other, e.to_string()))?;
        let conn = self.conn()?;
        let done = async {
            sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
            let stored = sqlx::query(
                "INSERT INTO collection_indexes (collection, name, fields, created_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (collection, name) DO NOTHING",
            )
            .bind(index.collection.as_str())
            .bind(&index.name)
            .bind(fields)
            .bind(index.created_at_ms)
            .execute(&mut *conn)
            .await?
            .rows_affected()
                > 0;
            if stored && !feed.is_empty() {
                let batch = format!("{{\"feed\":{}}}", feed_param(feed));
                sqlx::query(feed_insert!()).bind(batch).execute(&mut *conn).await?;
            }
            sqlx::query("COMMIT").execute(&mut *conn).await?;
            Ok::<_, sqlx::Error>(stored)
        }
        .await;
        self.ended(done).await
    }

    /// Drops an index and its entries, with `feed`.
    async fn drop_index(
        &mut self,
        collection: &CollectionName,
        name: &str,
        feed: &[FeedEntry],
    ) -> Result<bool, StorageError> {
        let conn = self.conn()?;
        let done = async {
            sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
            let dropped = sqlx::query("DELETE FROM collection_indexes WHERE collection = ?1 AND name = ?2")
                .bind(collection.as_str())
                .bind(name)
                .execute(&mut *conn)
                .await?
                .rows_affected()
                > 0;
            if dropped {
                sqlx::query("DELETE FROM index_entries WHERE collection = ?1 AND name = ?2")
                    .bind(collection.as_str())
                    .bind(name)
                    .execute(&mut *conn)
                    .await?;
                if !feed.is_empty() {
                    let batch = format!("{{\"feed\":{}}}", feed_param(feed));
                    sqlx::query(feed_insert!()).bind(batch).execute(&mut *conn).await?;
                }
            }
            sqlx::query("COMMIT").execute(&mut *conn).await?;
            Ok::<_, sqlx::Error>(dropped)
        }
        .await;
        self.ended(done).await
    }

    /// Where an index's build is.
    async fn build_progress(
        &mut self,
        collection: &CollectionName,
        name: &str,
    ) -> Result<Option<(Option<String>, bool)>, StorageError> {
        let row = sqlx::query("SELECT built_upto, built FROM collection_indexes WHERE collection = ?1 AND name = ?2")
            .bind(collection.as_str())
            .bind(name)
            .fetch_optional(self.conn()?)
            .await
            .map_err(engine_error)?;
        row.map(|row| {
            let upto: Option<String> = row.try_get("built_upto").map_err(engine_error)?;
            let built: i64 = row.try_get("built").map_err(engine_error)?;
            Ok((upto, built != 0))
        })
        .transpose()
    }

    /// Up to `limit` documents after `after`, in id order.
    async fn documents_after(
        &mut self,
        collection: &CollectionName,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Arc<str>)>, StorageError> {
        let rows = sqlx::query("SELECT id, data FROM documents WHERE collection = ?1 AND id > ?2 ORDER BY id LIMIT ?3")
            .bind(collection.as_str())
            .bind(after.unwrap_or(""))
            .bind(limit)
            .fetch_all(self.conn()?)
            .await
            .map_err(engine_error)?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id").map_err(engine_error)?;
                let data: String = row.try_get("data").map_err(engine_error)?;
                Ok((id, Arc::from(data)))
            })
            .collect()
    }

    /// Replaces the entries of `entries`' documents in the index and
    /// records the build's progress, in one transaction.
    async fn build_step(
        &mut self,
        collection: &CollectionName,
        name: &str,
        entries: &[(String, Vec<u8>)],
        oversized: u64,
        upto: Option<&str>,
        done: bool,
    ) -> Result<(), StorageError> {
        let mut param = String::from("[");
        for (i, (id, key)) in entries.iter().enumerate() {
            if i > 0 {
                param.push(',');
            }
            let _ = write!(param, "[\"{id}\",\"{}\"]", hex::encode(key));
        }
        param.push(']');
        let conn = self.conn()?;
        let result = async {
            sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
            sqlx::query(
                "DELETE FROM index_entries WHERE collection = ?1 AND name = ?2 AND id IN \
                 (SELECT value->>0 FROM json_each(?3))",
            )
            .bind(collection.as_str())
            .bind(name)
            .bind(&param)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "INSERT OR REPLACE INTO index_entries (collection, name, key, id) \
                 SELECT ?1, ?2, unhex(value->>1), value->>0 FROM json_each(?3)",
            )
            .bind(collection.as_str())
            .bind(name)
            .bind(&param)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "UPDATE collection_indexes SET built_upto = coalesce(?3, built_upto), indexed = indexed + ?4, \
                 built = ?5, oversized = oversized + ?6 WHERE collection = ?1 AND name = ?2",
            )
            .bind(collection.as_str())
            .bind(name)
            .bind(upto)
            .bind(entries.len() as i64)
            .bind(done)
            .bind(i64::try_from(oversized).unwrap_or(i64::MAX))
            .execute(&mut *conn)
            .await?;
            sqlx::query("COMMIT").execute(&mut *conn).await?;
            Ok::<_, sqlx::Error>(())
        }
        .await;
        self.ended(result).await
    }

    /// Every collection schema the file holds.
    async fn schemas(&mut self) -> Result<Vec<StoredSchema>, StorageError> {
        let rows = sqlx::query("SELECT collection, version, schema, updated_at FROM collection_schemas")
            .fetch_all(self.conn()?)
            .await
            .map_err(engine_error)?;
        rows.iter().map(stored_schema).collect()
    }

    /// Stores `change` unless a newer version is there, with `feed`, in one
    /// transaction; answers whether it was stored.
    async fn set_schema(&mut self, change: &StoredSchema, feed: &[FeedEntry]) -> Result<bool, StorageError> {
        let conn = self.conn()?;
        let done = async {
            sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
            let stored = sqlx::query(
                "INSERT INTO collection_schemas (collection, version, schema, updated_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (collection) DO UPDATE SET version = excluded.version, schema = excluded.schema, \
                 updated_at = excluded.updated_at WHERE excluded.version > collection_schemas.version",
            )
            .bind(change.collection.as_str())
            .bind(i64::try_from(change.version).unwrap_or(i64::MAX))
            .bind(change.schema.as_deref())
            .bind(change.updated_at_ms)
            .execute(&mut *conn)
            .await?
            .rows_affected()
                > 0;
            if stored && !feed.is_empty() {
                let batch = format!("{{\"feed\":{}}}", feed_param(feed));
                sqlx::query(feed_insert!()).bind(batch).execute(&mut *conn).await?;
            }
            sqlx::query("COMMIT").execute(&mut *conn).await?;
            Ok::<_, sqlx::Error>(stored)
        }
        .await;
        match done {
            Ok(stored) => Ok(stored),
            Err(err) => {
                self.rollback().await;
                Err(engine_error(err))
            }
        }
    }

    /// Removes the feed's entries older than `before_ms`, and beyond the
    /// last `keep` ones, at most `limit` of them, raising the floor with
    /// them (every entry up to it is gone) in one transaction; answers how
    /// many went. Entries are numbered without gaps, so the floor moving by
    /// `n` removes `n`; only the oldest `limit` are looked at for their age.
    async fn compact_feed(&mut self, before_ms: i64, keep: u64, limit: u64) -> Result<u64, StorageError> {
        const FLOOR: &str = "SELECT value FROM shard_meta WHERE key = 'feed_floor'";
        let old: i64 = sqlx::query_scalar(FLOOR)
            .fetch_one(self.conn()?)
            .await
            .map_err(engine_error)?;
        let script = "BEGIN IMMEDIATE;\
             UPDATE shard_meta SET value = max(value, min(value + ?3, max( \
               coalesce((SELECT max(seq) FROM (SELECT seq, at FROM changes ORDER BY seq LIMIT ?3) WHERE at < ?1), 0), \
               coalesce((SELECT max(seq) FROM changes), 0) - ?2))) \
             WHERE key = 'feed_floor';\
             DELETE FROM changes WHERE seq <= (SELECT value FROM shard_meta WHERE key = 'feed_floor') AND ?1 = ?1;\
             COMMIT;";
        let done = sqlx::query(script)
            .bind(before_ms)
            .bind(i64::try_from(keep).unwrap_or(i64::MAX))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(self.conn()?)
            .await;
        if let Err(err) = done {
            self.rollback().await;
            return Err(engine_error(err));
        }
        let new: i64 = sqlx::query_scalar(FLOOR)
            .fetch_one(self.conn()?)
            .await
            .map_err(engine_error)?;
        Ok(u64::try_from(new.saturating_sub(old)).unwrap_or(0))
    }

    /// Records the exact id bounds (replacing the reserve, so a clean restart
    /// continues the sequence without a gap), checkpoints the WAL and closes:
    /// as the last connection, this removes the WAL file.
    /// The exact bounds replace the `ceilings` only where the file still
    /// holds them, as on a shared database: with one writer per file they
    /// always do, and the engines keep one contract.
    async fn close(&mut self, ids: IdBounds, ceilings: IdBounds) {
        let shard = self.shard;
        let Some(mut conn) = self.conn.take() else { return };
        // Only in place of the ceilings this writer left: bounds another
        // writer raised since stay, or a restart would hand out their ids.
        if let Err(e) = sqlx::query(
            "UPDATE shard_meta SET value = CASE key WHEN 'max_counter_id' THEN ?1 ELSE ?2 END \
             WHERE key IN ('max_counter_id', 'counter_high') \
             AND (SELECT value FROM shard_meta WHERE key = 'max_counter_id') = ?3 \
             AND (SELECT value FROM shard_meta WHERE key = 'counter_high') = ?4",
        )
        .bind(meta_value(ids.stored))
        .bind(meta_value(ids.counter))
        .bind(meta_value(ceilings.stored))
        .bind(meta_value(ceilings.counter))
        .execute(&mut conn)
        .await
        {
            tracing::warn!(shard, error = %e, "recording the id ceiling failed");
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut conn).await {
            tracing::warn!(shard, error = %e, "final WAL checkpoint failed");
        }
        if let Err(e) = conn.close().await {
            tracing::warn!(shard, error = %e, "closing the write connection failed");
        }
    }

    /// Test hooks: the connection breaks, or SQLite is made to answer as on
    /// a full disk or a read-only file (and back).
    #[cfg(feature = "fault-injection")]
    async fn inject(&mut self, fault: crate::store::engine::EngineFault) -> Result<(), StorageError> {
        use crate::store::engine::EngineFault;
        let sql = match fault {
            EngineFault::BreakConnection => {
                if let Some(conn) = self.conn.take() {
                    let _ = conn.close().await;
                }
                return Ok(());
            }
            // A page count capped at the current one is how SQLite reports a
            // full disk: SQLITE_FULL on the next growth.
            EngineFault::DiskFull => {
                let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
                    .fetch_one(self.conn()?)
                    .await
                    .map_err(engine_error)?;
                format!("PRAGMA max_page_count = {pages}")
            }
            EngineFault::ReadOnly => "PRAGMA query_only = 1".to_owned(),
            EngineFault::Heal => "PRAGMA query_only = 0; PRAGMA max_page_count = 4294967294".to_owned(),
        };
        sqlx::query(&sql)
            .execute(self.conn()?)
            .await
            .map(|_| ())
            .map_err(engine_error)
    }
}

impl SqliteWrites {
    /// The writes of `shard` on `conn`, whose file records the counter's
    /// reservation `counter` (see `reserve_ids`).
    pub fn new(shard: usize, conn: SqliteConnection, file: FileIdentity, sync: SyncMode, counter: u64) -> Self {
        Self {
            shard,
            conn: Some(conn),
            file,
            open_tx: false,
            unsynced_commits: sync == SyncMode::Normal,
            durable_counter: counter,
        }
    }

    /// The connection, or the error a broken one gives.
    fn conn(&mut self) -> Result<&mut SqliteConnection, StorageError> {
        self.conn
            .as_mut()
            .ok_or_else(|| engine_error(sqlx::Error::WorkerCrashed))
    }

    /// `script` (which begins with [`BEGIN`]) without its BEGIN where
    /// `index_changes` opened the transaction already.
    fn begun(&mut self, script: &'static str) -> &'static str {
        if std::mem::take(&mut self.open_tx) {
            script.strip_prefix(BEGIN).unwrap_or(script)
        } else {
            script
        }
    }

    /// A transaction's outcome: rolled back on an error.
    async fn ended<T>(&mut self, done: Result<T, sqlx::Error>) -> Result<T, StorageError> {
        match done {
            Ok(value) => Ok(value),
            Err(err) => {
                self.rollback().await;
                Err(engine_error(err))
            }
        }
    }

    /// Ends the transaction a failed script left open, so the connection is
    /// clean for the next.
    async fn rollback(&mut self) {
        self.open_tx = false;
        if let Ok(conn) = self.conn() {
            if let Err(e) = sqlx::query("ROLLBACK").execute(conn).await {
                tracing::debug!(shard = self.shard, error = %e, "rollback after a failed commit");
            }
        }
    }
}

/// The keys and versions of rows with `id` and `version` (and
/// `collection`, unless it is given).
fn keys_of(rows: &[sqlx::sqlite::SqliteRow], collection: Option<&CollectionName>) -> Vec<(DocKey, u64)> {
    rows.iter()
        .filter_map(|row| {
            let collection = match collection {
                Some(c) => c.clone(),
                None => CollectionName::parse(row.try_get::<&str, _>("collection").ok()?).ok()?,
            };
            let id = DocId::parse(row.try_get::<&str, _>("id").ok()?).ok()?;
            let version = u64::try_from(row.try_get::<i64, _>("version").ok()?).ok()?;
            Some((DocKey::new(collection, id), version))
        })
        .collect()
}

/// `feed` as a JSON array of `[seq, collection, id, version, kind, at]`.
/// Collection names and ids need no escaping (see `domain`).
fn feed_param(feed: &[FeedEntry]) -> String {
    let mut param = String::from("[");
    for (i, entry) in feed.iter().enumerate() {
        if i > 0 {
            param.push(',');
        }
        let _ = write!(
            param,
            "[{},\"{}\",\"{}\",{},{},{}]",
            entry.seq,
            entry.key.collection,
            entry.key.id,
            entry.version,
            entry.kind.code(),
            entry.at_ms
        );
    }
    param.push(']');
    param
}

/// The commit script for the parts a batch needs. Parameters: ?1 the batch
/// as a JSON object: `upsert`, the rows to write as `[collection, id,
/// bucket, version, updated_at, offset, length, expires_at]`; `delete`, the
/// keys to delete as `[collection, id]`; `feed`, the feed's entries (see
/// `feed_param`); `max_counter_id` and `counter_high`, the new id ceilings.
/// ?2 the documents' text the rows slice.
///
/// Every statement names ?1 (and only the first names ?2): sqlx binds a
/// multi-statement query by counting the unnamed slots below each
/// statement's highest parameter across statements, so a statement naming
/// only, say, ?4 could leave it unbound (NULL).
fn write_script(upsert: bool, delete: bool, raise_ceiling: bool) -> &'static str {
    macro_rules! upsert {
        () => {
            "INSERT INTO documents (collection, id, bucket, version, updated_at, data, expires_at) \
             SELECT value->>0, value->>1, value->>2, value->>3, value->>4, \
             CAST(substr(?2, value->>5, value->>6) AS TEXT), value->>7 FROM json_each(?1, '$.upsert') WHERE true \
             ON CONFLICT (collection, id) DO UPDATE SET version = excluded.version, \
             updated_at = excluded.updated_at, data = excluded.data, expires_at = excluded.expires_at;"
        };
    }
    macro_rules! delete {
        () => {
            "DELETE FROM documents WHERE (collection, id) IN \
             (SELECT value->>0, value->>1 FROM json_each(?1, '$.delete'));"
        };
    }
    macro_rules! ceiling {
        () => {
            "UPDATE shard_meta SET value = max(value, ?1 ->> ('$.' || key)) \
             WHERE key IN ('max_counter_id', 'counter_high');"
        };
    }
    macro_rules! script {
        ($($part:expr),*) => { concat!("BEGIN IMMEDIATE;", $($part,)* feed_insert!(), "COMMIT;") };
    }
    match (upsert, delete, raise_ceiling) {
        (true, true, true) => script!(upsert!(), delete!(), ceiling!()),
        (true, true, false) => script!(upsert!(), delete!()),
        (true, false, true) => script!(upsert!(), ceiling!()),
        (true, false, false) => script!(upsert!()),
        (false, true, true) => script!(delete!(), ceiling!()),
        (false, true, false) => script!(delete!()),
        (false, false, true) => script!(ceiling!()),
        (false, false, false) => script!(),
    }
}

/// The committed rows among `keys`, with the text of those up to `small`
/// bytes (the size of the others is in SQLite's record header: their text
/// is not read).
pub async fn select_many(
    conn: &mut SqliteConnection,
    keys: &[DocKey],
    small: usize,
) -> Result<Vec<StoredRow>, sqlx::Error> {
    let param = keys_param(keys);
    let rows = sqlx::query(
        "SELECT k.key AS idx, d.version, d.updated_at, d.expires_at, octet_length(d.data) AS bytes, \
         CASE WHEN octet_length(d.data) <= ?2 THEN d.data ELSE '' END AS data FROM json_each(?1) AS k \
         JOIN documents AS d ON d.collection = k.value->>0 AND d.id = k.value->>1",
    )
    .bind(param)
    .bind(i64::try_from(small).unwrap_or(i64::MAX))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            let bytes = usize::try_from(row.try_get::<i64, _>("bytes")?).unwrap_or(usize::MAX);
            Ok(StoredRow {
                index: row.try_get::<i64, _>("idx")? as usize,
                doc: document_from_row(row)?,
                bytes,
                whole: bytes <= small,
            })
        })
        .collect()
}

/// The text of the committed rows among `keys`, as (index in `keys`, text).
pub async fn select_texts(conn: &mut SqliteConnection, keys: &[DocKey]) -> Result<Vec<(usize, Arc<str>)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT k.key AS idx, d.data FROM json_each(?1) AS k \
         JOIN documents AS d ON d.collection = k.value->>0 AND d.id = k.value->>1",
    )
    .bind(keys_param(keys))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get::<i64, _>("idx")? as usize,
                Arc::from(row.try_get::<&str, _>("data")?),
            ))
        })
        .collect()
}

/// A bound as `shard_meta` stores it. Ids stay below 2^53 + the reserve
/// (see `MAX_COUNTER_ID`), far inside SQLite's integers.
fn meta_value(bound: u64) -> i64 {
    i64::try_from(bound).unwrap_or(i64::MAX)
}

/// A `collection_schemas` row (or `exdaas_schemas`: the same columns).
fn stored_schema(row: &sqlx::sqlite::SqliteRow) -> Result<StoredSchema, StorageError> {
    let bad = |e: sqlx::Error| StorageError::new(super::super::ErrorKind::Damaged, format!("a stored schema: {e}"));
    let collection: String = row.try_get("collection").map_err(bad)?;
    Ok(StoredSchema {
        collection: CollectionName::parse(&collection).map_err(|e| {
            StorageError::new(
                super::super::ErrorKind::Damaged,
                format!("a stored schema's collection: {e}"),
            )
        })?,
        version: u64::try_from(row.try_get::<i64, _>("version").map_err(bad)?).unwrap_or(0),
        schema: row.try_get("schema").map_err(bad)?,
        updated_at_ms: row.try_get("updated_at").map_err(bad)?,
    })
}

/// `collection_indexes` rows.
pub(super) fn stored_index(row: &sqlx::sqlite::SqliteRow) -> Result<StoredIndex, StorageError> {
    let bad = |e: String| StorageError::new(super::super::ErrorKind::Damaged, format!("a stored index: {e}"));
    let collection: String = row.try_get("collection").map_err(|e| bad(e.to_string()))?;
    let fields: String = row.try_get("fields").map_err(|e| bad(e.to_string()))?;
    Ok(StoredIndex {
        collection: CollectionName::parse(&collection).map_err(|e| bad(e.to_string()))?,
        name: row.try_get("name").map_err(|e| bad(e.to_string()))?,
        fields: serde_json::from_str(&fields).map_err(|e| bad(e.to_string()))?,
        built: row.try_get::<i64, _>("built").map_err(|e| bad(e.to_string()))? != 0,
        indexed: u64::try_from(row.try_get::<i64, _>("indexed").map_err(|e| bad(e.to_string()))?).unwrap_or(0),
        oversized: u64::try_from(row.try_get::<i64, _>("oversized").map_err(|e| bad(e.to_string()))?).unwrap_or(0),
        created_at_ms: row.try_get("created_at").map_err(|e| bad(e.to_string()))?,
    })
}

/// Index changes as the script's JSON parameter (keys in hex).
fn index_changes_param(changes: &IndexChanges) -> String {
    let mut param = String::from("{\"removed\":[");
    for (i, key) in changes.removed.iter().enumerate() {
        if i > 0 {
            param.push(',');
        }
        let _ = write!(param, "[\"{}\",\"{}\"]", key.collection, key.id);
    }
    param.push_str("],\"added\":[");
    for (i, (key, name, entry)) in changes.added.iter().enumerate() {
        if i > 0 {
            param.push(',');
        }
        let _ = write!(
            param,
            "[\"{}\",\"{name}\",\"{}\",\"{}\"]",
            key.collection,
            hex::encode(entry),
            key.id
        );
    }
    param.push_str("]}");
    param
}
