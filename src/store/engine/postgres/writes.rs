//! A shard's writes on the database: every transaction first locks the
//! shard's row, so writers of the shard on every replica take turns, and
//! what they read in the transaction is what they commit over.

use std::sync::Arc;

use sqlx::{Connection, PgConnection, Row};

use super::super::{
    ErrorKind, FeedEntry, IdBounds, IndexChanges, Opened, StorageError, StoredIndex, StoredRow, StoredSchema,
};
use super::engine_error;
use crate::domain::{CollectionName, DocId, DocKey};
use crate::store::document::Document;
use crate::store::engine::contract::{FileCheck, WriteConnection};

/// The shard's write connection.
pub struct PgWrites {
    shard: usize,
    /// `None` once the connection broke.
    conn: Option<PgConnection>,
    /// A transaction is open (and holds the shard's row).
    in_transaction: bool,
}

/// Joins of a batch's keys (`unnest` of arrays) with the documents are not
/// kept as prepared statements: a plan cached while the table was small (a
/// hash join over a scan of the whole table) stayed in use as it grew,
/// until the next ANALYZE, costing milliseconds a batch. Planned each time,
/// with the batch's arrays in hand, they are index lookups.
const PLANNED_EACH_TIME: bool = false;

const LOCK_SHARD: &str =
    "SELECT last_seq, max_counter_id, counter_high, schema_seq FROM exdaas_shards WHERE shard = $1 FOR UPDATE";

impl WriteConnection for PgWrites {
    /// Every replica of the database writes its shards.
    fn shared(&self) -> bool {
        true
    }

    /// Begins a transaction holding the shard's row, and answers what it
    /// holds now: other replicas may have written since.
    async fn begin(&mut self) -> Result<Option<Opened>, StorageError> {
        if self.in_transaction {
            self.rollback().await;
        }
        let shard = self.shard_param();
        let conn = self.conn()?;
        sqlx::query("BEGIN").execute(&mut *conn).await.map_err(engine_error)?;
        self.in_transaction = true;
        let row = sqlx::query(LOCK_SHARD).bind(shard).fetch_one(self.conn()?).await;
        match row {
            Ok(row) => opened_from(&row).map(Some),
            Err(err) => Err(self.failed(err).await),
        }
    }

    /// The database's commits are all durable: the commit that writes the
    /// ids makes their reservation durable too.
    async fn reserve_ids(&mut self, _ceilings: IdBounds) -> Result<(), StorageError> {
        Ok(())
    }

    /// Ends an open transaction without a change.
    async fn release(&mut self) {
        if self.in_transaction {
            self.rollback().await;
        }
    }

    fn check_file(&self) -> FileCheck {
        FileCheck::nothing_to_check()
    }

    fn file_name(&self) -> String {
        format!("the database's shard {}", self.shard)
    }

    /// The committed rows among `keys`, with the text of those up to
    /// `small` bytes.
    async fn load(&mut self, keys: &[DocKey], small: usize) -> Result<Vec<StoredRow>, StorageError> {
        let (collections, ids) = key_arrays(keys);
        let rows = sqlx::query(
            "SELECT k.idx, d.version, d.updated_at, d.expires_at, octet_length(d.data) AS bytes, \
             CASE WHEN octet_length(d.data) <= $3 THEN d.data ELSE '' END AS data \
             FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(collection, id, idx) \
             JOIN exdaas_documents AS d ON d.collection = k.collection AND d.id = k.id",
        )
        // Planned for each batch's keys (see `PLANNED_EACH_TIME`).
        .persistent(PLANNED_EACH_TIME)
        .bind(collections)
        .bind(ids)
        .bind(i64::try_from(small).unwrap_or(i64::MAX))
        .fetch_all(self.conn()?)
        .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(err) => return Err(self.failed(err).await),
        };
        rows.iter()
            .map(|row| {
                let bytes =
                    usize::try_from(row.try_get::<i32, _>("bytes").map_err(engine_error)?).unwrap_or(usize::MAX);
                Ok(StoredRow {
                    index: usize::try_from(row.try_get::<i64, _>("idx").map_err(engine_error)? - 1).unwrap_or(0),
                    doc: super::reads::document_from_row(row).map_err(engine_error)?,
                    bytes,
                    whole: bytes <= small,
                })
            })
            .collect()
    }

    /// The text of the committed rows among `keys`, as (index in `keys`, text).
    async fn load_texts(&mut self, keys: &[DocKey]) -> Result<Vec<(usize, Arc<str>)>, StorageError> {
        let (collections, ids) = key_arrays(keys);
        let rows = sqlx::query(
            "SELECT k.idx, d.data FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(collection, id, idx) \
             JOIN exdaas_documents AS d ON d.collection = k.collection AND d.id = k.id",
        )
        .persistent(PLANNED_EACH_TIME)
        .bind(collections)
        .bind(ids)
        .fetch_all(self.conn()?)
        .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(err) => return Err(self.failed(err).await),
        };
        rows.iter()
            .map(|row| {
                Ok((
                    usize::try_from(row.try_get::<i64, _>("idx").map_err(engine_error)? - 1).unwrap_or(0),
                    Arc::from(row.try_get::<&str, _>("data").map_err(engine_error)?),
                ))
            })
            .collect()
    }

    /// Writes every change's final state (`None`: deleted), its feed
    /// entries and, when given, raised id ceilings, and commits the
    /// transaction `begin` opened (one is opened if none is).
    async fn commit<'a>(
        &mut self,
        changes: impl Iterator<Item = (&'a DocKey, u32, Option<&'a Document>)>,
        feed: &[FeedEntry],
        ceilings: Option<IdBounds>,
    ) -> Result<(), StorageError> {
        let mut up = Upserts::default();
        let (mut del_collections, mut del_ids) = (Vec::new(), Vec::new());
        for (key, bucket, doc) in changes {
            match doc {
                Some(doc) => up.push(key, bucket, doc),
                None => {
                    del_collections.push(key.collection.as_str().to_owned());
                    del_ids.push(key.id.as_str().to_owned());
                }
            }
        }
        if !self.in_transaction {
            self.begin().await?;
        }
        let shard = self.shard_param();
        let done = self.write(shard, up, del_collections, del_ids, feed, ceilings).await;
        if let Err(err) = done {
            return Err(self.failed(err).await);
        }
        self.in_transaction = false;
        Ok(())
    }

    /// Up to `limit` documents of the shard expired at `now`.
    async fn expired(&mut self, now: i64, limit: u32) -> Result<Vec<(DocKey, u64)>, StorageError> {
        let shard = self.shard_param();
        let rows = sqlx::query(
            "SELECT collection, id, version FROM exdaas_documents WHERE shard = $1 AND expires_at <= $2 LIMIT $3",
        )
        .bind(shard)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(self.conn()?)
        .await;
        match rows {
            Ok(rows) => Ok(keys_of(&rows, None)),
            Err(err) => Err(self.failed(err).await),
        }
    }

    /// Up to `limit` documents of `collection` in the shard.
    async fn in_collection(
        &mut self,
        collection: &CollectionName,
        limit: u32,
    ) -> Result<Vec<(DocKey, u64)>, StorageError> {
        let shard = self.shard_param();
        let rows =
            sqlx::query("SELECT id, version FROM exdaas_documents WHERE shard = $1 AND collection = $2 LIMIT $3")
                .bind(shard)
                .bind(collection.as_str())
                .bind(i64::from(limit))
                .fetch_all(self.conn()?)
                .await;
        match rows {
            Ok(rows) => Ok(keys_of(&rows, Some(collection))),
            Err(err) => Err(self.failed(err).await),
        }
    }

    /// Deletes the documents of `feed` and records `feed`, committing the
    /// transaction `begin` opened.
    async fn delete_with_feed(&mut self, feed: &[FeedEntry]) -> Result<u64, StorageError> {
        if feed.is_empty() {
            self.release().await;
            return Ok(0);
        }
        if !self.in_transaction {
            self.begin().await?;
        }
        let shard = self.shard_param();
        let collections: Vec<String> = feed.iter().map(|e| e.key.collection.as_str().to_owned()).collect();
        let ids: Vec<String> = feed.iter().map(|e| e.key.id.as_str().to_owned()).collect();
        let last = feed.last().map_or(0, |e| bound(e.seq));
        let done = async {
            let conn = self.conn.as_mut().ok_or(sqlx::Error::WorkerCrashed)?;
            delete_keys(conn, &collections, &ids).await?;
            insert_feed(conn, shard, feed).await?;
            sqlx::query("UPDATE exdaas_shards SET last_seq = greatest(last_seq, $2) WHERE shard = $1")
                .bind(shard)
                .bind(last)
                .execute(&mut *conn)
                .await?;
            sqlx::query("COMMIT").execute(&mut *conn).await?;
            Ok::<_, sqlx::Error>(())
        }
        .await;
        if let Err(err) = done {
            return Err(self.failed(err).await);
        }
        self.in_transaction = false;
        Ok(feed.len() as u64)
    }

    /// Every index of the shard.
    async fn indexes(&mut self) -> Result<Vec<StoredIndex>, StorageError> {
        let shard = self.shard_param();
        let rows = sqlx::query(
            "SELECT collection, name, fields, built, indexed, oversized, created_at FROM exdaas_indexes WHERE shard = $1",
        )
        .bind(shard)
        .fetch_all(self.conn()?)
        .await;
        match rows {
            Ok(rows) => rows.iter().map(stored_index).collect(),
            Err(err) => Err(self.failed(err).await),
        }
    }

    /// Changes index entries in the open transaction (opening one if
    /// none is).
    async fn index_changes(&mut self, changes: &IndexChanges) -> Result<(), StorageError> {
        if !self.in_transaction {
            self.begin().await?;
        }
        let shard = self.shard_param();
        let done = async {
            let conn = self.conn.as_mut().ok_or(sqlx::Error::WorkerCrashed)?;
            if !changes.removed.is_empty() {
                let collections: Vec<&str> = changes.removed.iter().map(|k| k.collection.as_str()).collect();
                let ids: Vec<&str> = changes.removed.iter().map(|k| k.id.as_str()).collect();
                sqlx::query(
                    "DELETE FROM exdaas_index_entries AS e USING unnest($2::text[], $3::text[]) AS k(collection, id) \
                     WHERE e.shard = $1 AND e.collection = k.collection AND e.id = k.id",
                )
                .persistent(PLANNED_EACH_TIME)
                .bind(shard)
                .bind(&collections)
                .bind(&ids)
                .execute(&mut *conn)
                .await?;
            }
            if !changes.added.is_empty() {
                let collections: Vec<&str> = changes.added.iter().map(|(k, _, _)| k.collection.as_str()).collect();
                let names: Vec<&str> = changes.added.iter().map(|(_, n, _)| n.as_str()).collect();
                let keys: Vec<&[u8]> = changes.added.iter().map(|(_, _, key)| key.as_slice()).collect();
                let ids: Vec<&str> = changes.added.iter().map(|(k, _, _)| k.id.as_str()).collect();
                sqlx::query(
                    "INSERT INTO exdaas_index_entries (shard, collection, name, key, id) \
                     SELECT $1, c, n, k, i FROM unnest($2::text[], $3::text[], $4::bytea[], $5::text[]) AS r(c, n, k, i) \
                     ON CONFLICT DO NOTHING",
                )
                .persistent(PLANNED_EACH_TIME)
                .bind(shard)
                .bind(&collections)
                .bind(&names)
                .bind(&keys)
                .bind(&ids)
                .execute(&mut *conn)
                .await?;
            }
            Ok::<_, sqlx::Error>(())
        }
        .await;
        match done {
            Ok(()) => Ok(()),
            Err(err) => Err(self.failed(err).await),
        }
    }

    /// Declares `index` unless one of its name is there, with `feed`, and
    /// counts the change in the shard's row.
    async fn declare_index(&mut self, index: &StoredIndex, feed: &[FeedEntry]) -> Result<bool, StorageError> {
        self.catalog_change(CatalogChange::Declare(index), feed).await
    }

    /// Drops an index and its entries, with `feed`.
    async fn drop_index(
        &mut self,
        collection: &CollectionName,
        name: &str,
        feed: &[FeedEntry],
    ) -> Result<bool, StorageError> {
        self.catalog_change(CatalogChange::Drop(collection, name), feed).await
    }

    /// Where an index's build is (in the open transaction).
    async fn build_progress(
        &mut self,
        collection: &CollectionName,
        name: &str,
    ) -> Result<Option<(Option<String>, bool)>, StorageError> {
        let shard = self.shard_param();
        let row = sqlx::query(
            "SELECT built_upto, built FROM exdaas_indexes WHERE shard = $1 AND collection = $2 AND name = $3",
        )
        .bind(shard)
        .bind(collection.as_str())
        .bind(name)
        .fetch_optional(self.conn()?)
        .await;
        let row = match row {
            Ok(row) => row,
            Err(err) => return Err(self.failed(err).await),
        };
        row.map(|row| {
            let upto: Option<String> = row.try_get("built_upto").map_err(engine_error)?;
            let built: bool = row.try_get("built").map_err(engine_error)?;
            Ok((upto, built))
        })
        .transpose()
    }

    /// Up to `limit` of the shard's documents of `collection` after
    /// `after`, in id order.
    async fn documents_after(
        &mut self,
        collection: &CollectionName,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Arc<str>)>, StorageError> {
        let shard = self.shard_param();
        let rows = sqlx::query(
            "SELECT id, data FROM exdaas_documents WHERE collection = $1 AND id > $2 AND shard = $3 ORDER BY id LIMIT $4",
        )
        .bind(collection.as_str())
        .bind(after.unwrap_or(""))
        .bind(shard)
        .bind(i64::from(limit))
        .fetch_all(self.conn()?)
        .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(err) => return Err(self.failed(err).await),
        };
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id").map_err(engine_error)?;
                let data: String = row.try_get("data").map_err(engine_error)?;
                Ok((id, Arc::from(data)))
            })
            .collect()
    }

    /// Replaces the build's entries and records its progress; commits.
    async fn build_step(
        &mut self,
        collection: &CollectionName,
        name: &str,
        entries: &[(String, Vec<u8>)],
        oversized: u64,
        upto: Option<&str>,
        done: bool,
    ) -> Result<(), StorageError> {
        if !self.in_transaction {
            self.begin().await?;
        }
        let shard = self.shard_param();
        let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
        let keys: Vec<&[u8]> = entries.iter().map(|(_, key)| key.as_slice()).collect();
        let result = async {
            let conn = self.conn.as_mut().ok_or(sqlx::Error::WorkerCrashed)?;
            sqlx::query(
                "DELETE FROM exdaas_index_entries WHERE shard = $1 AND collection = $2 AND name = $3 AND id = ANY($4::text[])",
            )
            .bind(shard)
            .bind(collection.as_str())
            .bind(name)
            .bind(&ids)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "INSERT INTO exdaas_index_entries (shard, collection, name, key, id) \
                 SELECT $1, $2, $3, k, i FROM unnest($4::bytea[], $5::text[]) AS r(k, i) ON CONFLICT DO NOTHING",
            )
            .bind(shard)
            .bind(collection.as_str())
            .bind(name)
            .bind(&keys)
            .bind(&ids)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "UPDATE exdaas_indexes SET built_upto = coalesce($4, built_upto), indexed = indexed + $5, built = $6, \
                 oversized = oversized + $7 WHERE shard = $1 AND collection = $2 AND name = $3",
            )
            .bind(shard)
            .bind(collection.as_str())
            .bind(name)
            .bind(upto)
            .bind(entries.len() as i64)
            .bind(done)
            .bind(bound(oversized))
            .execute(&mut *conn)
            .await?;
            sqlx::query("COMMIT").execute(&mut *conn).await?;
            Ok::<_, sqlx::Error>(())
        }
        .await;
        match result {
            Ok(()) => {
                self.in_transaction = false;
                Ok(())
            }
            Err(err) => Err(self.failed(err).await),
        }
    }

    /// Every collection schema of the shard, as committed (read in the
    /// transaction `begin` opened, if one is open).
    async fn schemas(&mut self) -> Result<Vec<StoredSchema>, StorageError> {
        let shard = self.shard_param();
        let rows = sqlx::query("SELECT collection, version, schema, updated_at FROM exdaas_schemas WHERE shard = $1")
            .bind(shard)
            .fetch_all(self.conn()?)
            .await;
        match rows {
            Ok(rows) => rows.iter().map(stored_schema).collect(),
            Err(err) => Err(self.failed(err).await),
        }
    }

    /// Stores `change` unless the shard holds a newer version, with `feed`,
    /// and counts the change in the shard's row (other replicas' writers
    /// see it there), in one transaction; answers whether it was stored.
    async fn set_schema(&mut self, change: &StoredSchema, feed: &[FeedEntry]) -> Result<bool, StorageError> {
        self.catalog_change(CatalogChange::Schema(change), feed).await
    }

    /// Removes the feed's entries older than `before_ms` and beyond the
    /// last `keep`, at most `limit`, raising the floor with them.
    async fn compact_feed(&mut self, before_ms: i64, keep: u64, limit: u64) -> Result<u64, StorageError> {
        self.begin().await?;
        let shard = self.shard_param();
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let done = async {
            let conn = self.conn.as_mut().ok_or(sqlx::Error::WorkerCrashed)?;
            let row = sqlx::query(
                "SELECT s.feed_floor AS old, greatest(s.feed_floor, least(s.feed_floor + $4, greatest( \
                   coalesce((SELECT max(seq) FROM (SELECT seq, at FROM exdaas_changes WHERE shard = $1 \
                     ORDER BY seq LIMIT $4) AS o WHERE at < $2), 0), \
                   s.last_seq - $3))) AS new \
                 FROM exdaas_shards AS s WHERE s.shard = $1",
            )
            .bind(shard)
            .bind(before_ms)
            .bind(keep)
            .bind(limit)
            .fetch_one(&mut *conn)
            .await?;
            let (old, new): (i64, i64) = (row.try_get("old")?, row.try_get("new")?);
            if new > old {
                sqlx::query("DELETE FROM exdaas_changes WHERE shard = $1 AND seq <= $2")
                    .bind(shard)
                    .bind(new)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("UPDATE exdaas_shards SET feed_floor = $2 WHERE shard = $1")
                    .bind(shard)
                    .bind(new)
                    .execute(&mut *conn)
                    .await?;
            }
            sqlx::query("COMMIT").execute(&mut *conn).await?;
            Ok::<_, sqlx::Error>(u64::try_from(new - old).unwrap_or(0))
        }
        .await;
        match done {
            Ok(n) => {
                self.in_transaction = false;
                Ok(n)
            }
            Err(err) => Err(self.failed(err).await),
        }
    }

    /// Records the exact id bounds `ids` in place of the reserve, if the
    /// row still holds the `ceilings` this writer left there (no other
    /// replica raised them since), so a clean restart continues without a
    /// gap; then closes the connection.
    async fn close(&mut self, ids: IdBounds, ceilings: IdBounds) {
        self.release().await;
        let shard = self.shard_param();
        if let Ok(conn) = self.conn() {
            let lowered = sqlx::query(
                "UPDATE exdaas_shards SET max_counter_id = $2, counter_high = $3 \
                 WHERE shard = $1 AND max_counter_id = $4 AND counter_high = $5",
            )
            .bind(shard)
            .bind(bound(ids.stored))
            .bind(bound(ids.counter))
            .bind(bound(ceilings.stored))
            .bind(bound(ceilings.counter))
            .execute(conn)
            .await;
            if let Err(e) = lowered {
                tracing::warn!(shard, error = %e, "recording the id bounds failed");
            }
        }
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }

    /// Test hooks: the connection breaks, or the session refuses writes.
    #[cfg(feature = "fault-injection")]
    async fn inject(&mut self, fault: crate::store::engine::EngineFault) -> Result<(), StorageError> {
        use crate::store::engine::EngineFault;
        let sql = match fault {
            EngineFault::BreakConnection => {
                self.conn = None;
                self.in_transaction = false;
                return Ok(());
            }
            EngineFault::ReadOnly | EngineFault::DiskFull => "SET default_transaction_read_only = on",
            EngineFault::Heal => "SET default_transaction_read_only = off",
        };
        sqlx::query(sql)
            .execute(self.conn()?)
            .await
            .map(|_| ())
            .map_err(engine_error)
    }
}

impl PgWrites {
    pub fn new(shard: usize, conn: PgConnection) -> Self {
        Self {
            shard,
            conn: Some(conn),
            in_transaction: false,
        }
    }

    fn conn(&mut self) -> Result<&mut PgConnection, StorageError> {
        self.conn
            .as_mut()
            .ok_or_else(|| StorageError::new(ErrorKind::Unavailable, "its database connection is closed"))
    }

    fn shard_param(&self) -> i32 {
        i32::try_from(self.shard).unwrap_or(i32::MAX)
    }

    /// What the shard's row holds, read without a lock (at open).
    pub async fn read_shard(&mut self) -> Result<Opened, StorageError> {
        let shard = self.shard_param();
        let row = sqlx::query(
            "SELECT last_seq, max_counter_id, counter_high, schema_seq FROM exdaas_shards WHERE shard = $1",
        )
        .bind(shard)
        .fetch_one(self.conn()?)
        .await
        .map_err(engine_error)?;
        opened_from(&row)
    }

    async fn rollback(&mut self) {
        self.in_transaction = false;
        if let Ok(conn) = self.conn() {
            if let Err(e) = sqlx::query("ROLLBACK").execute(conn).await {
                tracing::debug!(error = %e, "rollback");
            }
        }
    }

    /// Rolls back after `err`; a connection that broke, or that reached a
    /// server that will not take writes (a standby after a failover), is
    /// dropped, so the next one finds the primary.
    async fn failed(&mut self, err: sqlx::Error) -> StorageError {
        let err = engine_error(err);
        if matches!(err.kind, ErrorKind::Unavailable | ErrorKind::Away) {
            self.conn = None;
            self.in_transaction = false;
        } else {
            self.rollback().await;
        }
        err
    }

    async fn write(
        &mut self,
        shard: i32,
        up: Upserts,
        del_collections: Vec<String>,
        del_ids: Vec<String>,
        feed: &[FeedEntry],
        ceilings: Option<IdBounds>,
    ) -> Result<(), sqlx::Error> {
        let conn = self.conn.as_mut().ok_or(sqlx::Error::WorkerCrashed)?;
        if !up.collections.is_empty() {
            sqlx::query(
                "INSERT INTO exdaas_documents (collection, id, shard, bucket, version, updated_at, expires_at, data) \
                 SELECT c, i, $8, b, v, u, e, d FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[], \
                 $5::bigint[], $6::bigint[], $7::text[]) AS r(c, i, b, v, u, e, d) \
                 ON CONFLICT (collection, id) DO UPDATE SET version = excluded.version, \
                 updated_at = excluded.updated_at, expires_at = excluded.expires_at, data = excluded.data",
            )
            .bind(&up.collections)
            .bind(&up.ids)
            .bind(&up.buckets)
            .bind(&up.versions)
            .bind(&up.updated)
            .bind(&up.expires)
            .bind(&up.data)
            .bind(shard)
            .execute(&mut *conn)
            .await?;
        }
        if !del_collections.is_empty() {
            delete_keys(conn, &del_collections, &del_ids).await?;
        }
        insert_feed(conn, shard, feed).await?;
        let ceilings = ceilings.unwrap_or_default();
        sqlx::query(
            "UPDATE exdaas_shards SET last_seq = greatest(last_seq, $2), \
             max_counter_id = greatest(max_counter_id, $3), counter_high = greatest(counter_high, $4) WHERE shard = $1",
        )
        .bind(shard)
        .bind(feed.last().map_or(0, |e| bound(e.seq)))
        .bind(bound(ceilings.stored))
        .bind(bound(ceilings.counter))
        .execute(&mut *conn)
        .await?;
        sqlx::query("COMMIT").execute(&mut *conn).await?;
        Ok(())
    }

    /// Makes `change` in the transaction holding the shard; if it changed
    /// something, records `feed` and counts a catalog change in the
    /// shard's row (other replicas' writers read the catalog again).
    async fn catalog_change(&mut self, change: CatalogChange<'_>, feed: &[FeedEntry]) -> Result<bool, StorageError> {
        if !self.in_transaction {
            self.begin().await?;
        }
        let shard = self.shard_param();
        let last = feed.last().map_or(0, |e| bound(e.seq));
        let done = async {
            let conn = self.conn.as_mut().ok_or(sqlx::Error::WorkerCrashed)?;
            let changed = match change {
                CatalogChange::Declare(index) => {
                    let fields = serde_json::to_string(&index.fields).unwrap_or_else(|_| "[]".into());
                    sqlx::query(
                        "INSERT INTO exdaas_indexes (shard, collection, name, fields, created_at) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    )
                    .bind(shard)
                    .bind(index.collection.as_str())
                    .bind(&index.name)
                    .bind(fields)
                    .bind(index.created_at_ms)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected()
                        > 0
                }
                CatalogChange::Schema(change) => {
                    sqlx::query(
                        "INSERT INTO exdaas_schemas (shard, collection, version, schema, updated_at) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (shard, collection) DO UPDATE SET \
                         version = excluded.version, schema = excluded.schema, updated_at = excluded.updated_at \
                         WHERE excluded.version > exdaas_schemas.version",
                    )
                    .bind(shard)
                    .bind(change.collection.as_str())
                    .bind(bound(change.version))
                    .bind(change.schema.as_deref())
                    .bind(change.updated_at_ms)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected()
                        > 0
                }
                CatalogChange::Drop(collection, name) => {
                    let dropped =
                        sqlx::query("DELETE FROM exdaas_indexes WHERE shard = $1 AND collection = $2 AND name = $3")
                            .bind(shard)
                            .bind(collection.as_str())
                            .bind(name)
                            .execute(&mut *conn)
                            .await?
                            .rows_affected()
                            > 0;
                    sqlx::query("DELETE FROM exdaas_index_entries WHERE shard = $1 AND collection = $2 AND name = $3")
                        .bind(shard)
                        .bind(collection.as_str())
                        .bind(name)
                        .execute(&mut *conn)
                        .await?;
                    dropped
                }
            };
            if changed {
                insert_feed(conn, shard, feed).await?;
                sqlx::query(
                    "UPDATE exdaas_shards SET schema_seq = schema_seq + 1, last_seq = greatest(last_seq, $2) WHERE shard = $1",
                )
                .bind(shard)
                .bind(last)
                .execute(&mut *conn)
                .await?;
            }
            sqlx::query("COMMIT").execute(&mut *conn).await?;
            Ok::<_, sqlx::Error>(changed)
        }
        .await;
        match done {
            Ok(changed) => {
                self.in_transaction = false;
                Ok(changed)
            }
            Err(err) => Err(self.failed(err).await),
        }
    }
}

/// Rows to upsert, as column arrays for `unnest`.
#[derive(Default)]
struct Upserts {
    collections: Vec<String>,
    ids: Vec<String>,
    buckets: Vec<i32>,
    versions: Vec<i64>,
    updated: Vec<i64>,
    expires: Vec<Option<i64>>,
    data: Vec<String>,
}

impl Upserts {
    fn push(&mut self, key: &DocKey, bucket: u32, doc: &Document) {
        self.collections.push(key.collection.as_str().to_owned());
        self.ids.push(key.id.as_str().to_owned());
        self.buckets.push(i32::try_from(bucket).unwrap_or(i32::MAX));
        self.versions.push(bound(doc.version));
        self.updated.push(doc.updated_at_ms);
        self.expires.push(doc.expires_at_ms);
        self.data.push(doc.data.to_string());
    }
}

async fn delete_keys(conn: &mut PgConnection, collections: &[String], ids: &[String]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM exdaas_documents AS d USING unnest($1::text[], $2::text[]) AS k(collection, id) \
         WHERE d.collection = k.collection AND d.id = k.id",
    )
    .persistent(PLANNED_EACH_TIME)
    .bind(collections)
    .bind(ids)
    .execute(conn)
    .await
    .map(|_| ())
}

async fn insert_feed(conn: &mut PgConnection, shard: i32, feed: &[FeedEntry]) -> Result<(), sqlx::Error> {
    if feed.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = feed.iter().map(|e| bound(e.seq)).collect();
    let collections: Vec<String> = feed.iter().map(|e| e.key.collection.as_str().to_owned()).collect();
    let ids: Vec<String> = feed.iter().map(|e| e.key.id.as_str().to_owned()).collect();
    let versions: Vec<i64> = feed.iter().map(|e| bound(e.version)).collect();
    let kinds: Vec<i16> = feed.iter().map(|e| e.kind.code() as i16).collect();
    let at: Vec<i64> = feed.iter().map(|e| e.at_ms).collect();
    sqlx::query(
        "INSERT INTO exdaas_changes (shard, seq, collection, id, version, kind, at) \
         SELECT $1, s, c, i, v, k, a FROM unnest($2::bigint[], $3::text[], $4::text[], $5::bigint[], \
         $6::smallint[], $7::bigint[]) AS r(s, c, i, v, k, a)",
    )
    .bind(shard)
    .bind(seqs)
    .bind(collections)
    .bind(ids)
    .bind(versions)
    .bind(kinds)
    .bind(at)
    .execute(conn)
    .await
    .map(|_| ())
}

fn key_arrays(keys: &[DocKey]) -> (Vec<String>, Vec<String>) {
    keys.iter()
        .map(|k| (k.collection.as_str().to_owned(), k.id.as_str().to_owned()))
        .unzip()
}

fn keys_of(rows: &[sqlx::postgres::PgRow], collection: Option<&CollectionName>) -> Vec<(DocKey, u64)> {
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

/// A count or bound as a BIGINT.
fn bound(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// An `exdaas_schemas` row.
fn stored_schema(row: &sqlx::postgres::PgRow) -> Result<StoredSchema, StorageError> {
    let bad = |e: sqlx::Error| StorageError::new(ErrorKind::Damaged, format!("a stored schema: {e}"));
    let collection: String = row.try_get("collection").map_err(bad)?;
    Ok(StoredSchema {
        collection: CollectionName::parse(&collection)
            .map_err(|e| StorageError::new(ErrorKind::Damaged, format!("a stored schema's collection: {e}")))?,
        version: u64::try_from(row.try_get::<i64, _>("version").map_err(bad)?).unwrap_or(0),
        schema: row.try_get("schema").map_err(bad)?,
        updated_at_ms: row.try_get("updated_at").map_err(bad)?,
    })
}

/// An `exdaas_indexes` row.
pub(super) fn stored_index(row: &sqlx::postgres::PgRow) -> Result<StoredIndex, StorageError> {
    let bad = |e: String| StorageError::new(ErrorKind::Damaged, format!("a stored index: {e}"));
    let collection: String = row.try_get("collection").map_err(|e| bad(e.to_string()))?;
    let fields: String = row.try_get("fields").map_err(|e| bad(e.to_string()))?;
    Ok(StoredIndex {
        collection: CollectionName::parse(&collection).map_err(|e| bad(e.to_string()))?,
        name: row.try_get("name").map_err(|e| bad(e.to_string()))?,
        fields: serde_json::from_str(&fields).map_err(|e| bad(e.to_string()))?,
        built: row.try_get("built").map_err(|e| bad(e.to_string()))?,
        indexed: u64::try_from(row.try_get::<i64, _>("indexed").map_err(|e| bad(e.to_string()))?).unwrap_or(0),
        oversized: u64::try_from(row.try_get::<i64, _>("oversized").map_err(|e| bad(e.to_string()))?).unwrap_or(0),
        created_at_ms: row.try_get("created_at").map_err(|e| bad(e.to_string()))?,
    })
}

/// A change of the shard's catalog: its index declarations and schemas.
enum CatalogChange<'a> {
    Declare(&'a StoredIndex),
    Drop(&'a CollectionName, &'a str),
    /// A schema, stored unless the shard holds a newer version.
    Schema(&'a StoredSchema),
}

/// A shard's feed floor, last entry and id bounds, as its row holds them.
pub(crate) fn opened_from(row: &sqlx::postgres::PgRow) -> Result<Opened, StorageError> {
    let get = |name: &str| {
        row.try_get::<i64, _>(name)
            .map(|v| u64::try_from(v).unwrap_or(0))
            .map_err(|e| StorageError::new(ErrorKind::Other, e.to_string()))
    };
    Ok(Opened {
        ids: IdBounds {
            stored: get("max_counter_id")?,
            counter: get("counter_high")?,
        },
        // Another replica may have written documents that expire.
        may_expire: true,
        last_seq: get("last_seq")?,
        schema_seq: get("schema_seq")?,
    })
}
