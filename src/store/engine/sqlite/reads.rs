//! A shard's read pool: point reads for the cache, the scans of listings and
//! exports, counts, and the cache's warm-up. Read-only connections, any
//! number at once beside the writer (WAL).

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use sqlx::pool::PoolConnection;
use sqlx::{Row, Sqlite, SqlitePool};

use super::super::{ChangeKind, FeedEntry, FeedFilter, FeedRun, StoredIndex, WarmBudget};
use super::rows::{document_from_row, select};
use super::shard_error;
use crate::domain::{CollectionName, DocId, DocKey};
use crate::store::document::Document;
use crate::store::engine::contract::{PointRead, ReadPool};
use crate::store::engine::EngineError;

/// Documents per chunk of the cache's warm-up: with the cache's largest
/// warmed document (64 KiB), at most 8 MiB of text (16 with JSON's
/// escapes) held at once.
const WARM_CHUNK_ROWS: i64 = 128;

/// Which documents the cache's warm-up takes: every one changed at or after
/// `whole` (the newest time slices, which fit whole), and older ones while
/// they fit in the `room` those leave.
struct WarmFrom {
    whole: i64,
    room: u64,
}

/// A warm-up row: collection, id, version, updated_at, expires_at, data.
type WarmRow = (String, String, u64, i64, Option<i64>, String);

/// The shard's read pool.
pub struct SqliteReads {
    shard: usize,
    pool: SqlitePool,
    /// How long a read waits for a free connection (reported in a 503).
    wait: Duration,
}

/// A read connection, held before a read that must not wait for one
/// later (the cache's fill).
pub struct ReadSlot {
    shard: usize,
    conn: PoolConnection<Sqlite>,
}

impl PointRead for ReadSlot {
    /// The committed document at `key` (expired or not).
    async fn read(mut self, key: &DocKey) -> Result<Option<Document>, EngineError> {
        select(&mut self.conn, key)
            .await
            .map_err(|e| shard_error(self.shard, e))
    }
}

impl ReadPool for SqliteReads {
    type Slot = ReadSlot;

    /// A read connection, waiting at most the configured time for one.
    async fn reserve(&self) -> Result<ReadSlot, EngineError> {
        let conn = self.pool.acquire().await.map_err(|e| self.error(e))?;
        Ok(ReadSlot {
            shard: self.shard,
            conn,
        })
    }

    /// How many read connections the pool holds at most.
    fn connections(&self) -> u32 {
        self.pool.options().get_max_connections()
    }

    /// The counter-shaped ids of `collection` stored here from `first` to
    /// `last` (inclusive), two numbers with as many digits: ids of one
    /// length sort as their numbers do, so the primary key finds them in
    /// order.
    async fn counter_ids_between(
        &self,
        collection: &CollectionName,
        first: u64,
        last: u64,
    ) -> Result<Vec<u64>, EngineError> {
        let (first, last) = (first.to_string(), last.to_string());
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM documents WHERE collection = ?1 AND id >= ?2 AND id <= ?3 \
             AND length(id) = ?4 AND id NOT GLOB '*[^0-9]*'",
        )
        .bind(collection.as_str())
        .bind(&first)
        .bind(&last)
        .bind(first.len() as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
    }

    /// Up to `limit` documents of `collection` live at `now`, in id order,
    /// after `from` (included if its flag says so) and before `to`: their
    /// ids, versions and times, and the size of their text, which is not
    /// read (it is in SQLite's record header).
    async fn entries(
        &self,
        collection: &CollectionName,
        from: Option<(&str, bool)>,
        to: Option<&str>,
        now: i64,
        limit: usize,
    ) -> Result<Vec<(DocId, Document, usize)>, EngineError> {
        let lower = match from {
            Some((_, true)) => "AND id >= ?2",
            Some((_, false)) => "AND id > ?2",
            None => "",
        };
        let upper = if to.is_some() { "AND id < ?3" } else { "" };
        let sql = format!(
            "SELECT id, version, updated_at, expires_at, '' AS data, octet_length(data) AS bytes \
             FROM documents WHERE collection = ?1 {lower} {upper} \
             AND (expires_at IS NULL OR expires_at > ?4) ORDER BY id LIMIT ?5"
        );
        let rows = sqlx::query(&sql)
            .bind(collection.as_str())
            .bind(from.map(|(id, _)| id))
            .bind(to)
            .bind(now)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.error(e))?;
        rows.iter()
            .map(|row| {
                let id = row.try_get::<&str, _>("id").map_err(|e| self.error(e))?;
                let id = DocId::parse(id).map_err(|_| EngineError::Internal("a stored id is not a valid id"))?;
                let doc = document_from_row(row).map_err(|e| self.error(e))?;
                let bytes = row.try_get::<i64, _>("bytes").map_err(|e| self.error(e))?;
                Ok((id, doc, usize::try_from(bytes).unwrap_or(0)))
            })
            .collect()
    }

    /// The documents among `ids` of `collection` live at `now`, whole, by id.
    async fn documents(
        &self,
        collection: &CollectionName,
        ids: &[&str],
        now: i64,
    ) -> Result<Vec<(String, Document)>, EngineError> {
        let list = serde_json::to_string(ids).map_err(|_| EngineError::Internal("ids are JSON"))?;
        let rows = sqlx::query(
            "SELECT id, version, updated_at, expires_at, data FROM documents \
             WHERE collection = ?1 AND id IN (SELECT value FROM json_each(?2)) \
             AND (expires_at IS NULL OR expires_at > ?3)",
        )
        .bind(collection.as_str())
        .bind(list)
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id").map_err(|e| self.error(e))?;
                let doc = document_from_row(row).map_err(|e| self.error(e))?;
                Ok((id, doc))
            })
            .collect()
    }

    /// The indexes of `collection` in this file.
    async fn index_catalog(&self, collection: &CollectionName) -> Result<Vec<StoredIndex>, EngineError> {
        let rows = sqlx::query(
            "SELECT collection, name, fields, built, indexed, oversized, created_at FROM collection_indexes WHERE collection = ?1",
        )
        .bind(collection.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        rows.iter()
            .map(|row| super::writes::stored_index(row).map_err(|e| EngineError::storage(self.shard, e)))
            .collect()
    }

    /// Indexes whose build has not covered this file yet.
    async fn unbuilt_indexes(&self) -> Result<Vec<(String, String)>, EngineError> {
        sqlx::query_as("SELECT collection, name FROM collection_indexes WHERE built = 0")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.error(e))
    }

    /// Up to `limit` entries of an index in `[low, high)` after `after`.
    async fn index_range(
        &self,
        collection: &CollectionName,
        name: &str,
        low: &[u8],
        high: &[u8],
        after: Option<(&[u8], &str)>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, String)>, EngineError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let query = match after {
            None => sqlx::query(
                "SELECT key, id FROM index_entries WHERE collection = ?1 AND name = ?2 AND key >= ?3 AND key < ?4 \
                 ORDER BY key, id LIMIT ?5",
            )
            .bind(collection.as_str())
            .bind(name)
            .bind(low)
            .bind(high)
            .bind(limit),
            Some((key, id)) => sqlx::query(
                "SELECT key, id FROM index_entries WHERE collection = ?1 AND name = ?2 AND key >= ?3 AND key < ?4 \
                 AND (key, id) > (?6, ?7) ORDER BY key, id LIMIT ?5",
            )
            .bind(collection.as_str())
            .bind(name)
            .bind(low)
            .bind(high)
            .bind(limit)
            .bind(key)
            .bind(id),
        };
        let rows = query.fetch_all(&self.pool).await.map_err(|e| self.error(e))?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("key").map_err(|e| self.error(e))?,
                    row.try_get("id").map_err(|e| self.error(e))?,
                ))
            })
            .collect()
    }

    /// Documents live at `now`; `None` if the shard cannot be read now.
    async fn count_live(&self, now: i64) -> Option<u64> {
        let mut tx = self.pool.begin().await.ok()?;
        let all: i64 = sqlx::query_scalar("SELECT count(*) FROM documents INDEXED BY documents_by_collection")
            .fetch_one(&mut *tx)
            .await
            .ok()?;
        let expired: i64 = sqlx::query_scalar("SELECT count(*) FROM documents WHERE expires_at <= ?1")
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .ok()?;
        let _ = tx.rollback().await;
        u64::try_from(all - expired).ok()
    }

    /// Live documents at `now` per collection, added to `totals`.
    async fn add_collection_counts(&self, now: i64, totals: &mut BTreeMap<String, i64>) -> Result<(), EngineError> {
        // Both counts in one read transaction, so a sweep committing in
        // between cannot skew them. The collection index holds
        // (collection, id): counting over it reads no document data. Expired
        // rows not yet swept are found through the expiry index and taken
        // off.
        let mut tx = self.pool.begin().await.map_err(|e| self.error(e))?;
        let all = sqlx::query(
            "SELECT collection, count(*) AS n FROM documents INDEXED BY documents_by_collection GROUP BY collection",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| self.error(e))?;
        let expired =
            sqlx::query("SELECT collection, count(*) AS n FROM documents WHERE expires_at <= ?1 GROUP BY collection")
                .bind(now)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| self.error(e))?;
        tx.rollback().await.map_err(|e| self.error(e))?;
        for (rows, sign) in [(all, 1), (expired, -1)] {
            for row in rows {
                let name: String = row.try_get("collection").unwrap_or_default();
                let n: i64 = row.try_get("n").unwrap_or(0);
                *totals.entry(name).or_default() += sign * n;
            }
        }
        Ok(())
    }

    /// Live documents at `now` of each of `collections`, added to `totals`:
    /// a range of the collection index each, in one read transaction.
    async fn add_counts_of(
        &self,
        now: i64,
        collections: &[CollectionName],
        totals: &mut BTreeMap<String, i64>,
    ) -> Result<(), EngineError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.error(e))?;
        for collection in collections {
            let (all, expired): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM documents INDEXED BY documents_by_collection WHERE collection = ?1), \
                        (SELECT count(*) FROM documents WHERE collection = ?1 AND expires_at <= ?2)",
            )
            .bind(collection.as_str())
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.error(e))?;
            *totals.entry(collection.as_str().to_owned()).or_default() += all - expired;
        }
        tx.rollback().await.map_err(|e| self.error(e))?;
        Ok(())
    }

    /// The documents the cache is warmed with: the most recently changed
    /// ones live at `now`, as many as `budget` holds, in id order.
    ///
    /// Ordering every row by its change time made SQLite sort the whole
    /// shard's documents, text and all (1.3 s for a shard of 250,000 small
    /// ones). Instead, a histogram of weights by time (a sort of small
    /// records, 0.2 s) gives the newest time slices that fit whole, and a
    /// walk of the primary key, a chunk at a time, takes what changed in
    /// them, and fills the room they leave with older documents that fit
    /// (in key order: one that does not fit is skipped, the walk goes on).
    fn recent(&self, now: i64, budget: WarmBudget) -> BoxStream<'_, Result<(DocKey, Document), EngineError>> {
        let walk = async move {
            let Some(from) = self.warm_from(now, budget).await? else {
                return Ok(futures_util::stream::empty().boxed());
            };
            // The state is where the walk goes on (after a key, `None` at
            // first; nowhere once a chunk came back short) and the room
            // left for older documents, which the next chunk's query is
            // told, so that it reads none that could not fit.
            let chunks =
                futures_util::stream::try_unfold((Some(None), from.room), move |(state, mut room)| async move {
                    let Some(after) = state else { return Ok(None) };
                    let rows = self.warm_chunk(now, budget, from.whole, room, after.as_ref()).await?;
                    // The largest key read (TEXT compares as bytes in SQLite, as
                    // `String`s do).
                    let last = rows
                        .iter()
                        .map(|r| (&r.0, &r.1))
                        .max()
                        .map(|(c, i)| (c.clone(), i.clone()));
                    let next = (rows.len() as i64 == WARM_CHUNK_ROWS).then_some(last);
                    let mut docs = Vec::with_capacity(rows.len());
                    for (collection, id, version, updated_at_ms, expires_at_ms, data) in rows {
                        let (Ok(collection), Ok(id)) = (CollectionName::parse(&collection), DocId::parse(&id)) else {
                            continue;
                        };
                        let key = DocKey::new(collection, id);
                        let doc = Document {
                            version,
                            updated_at_ms,
                            expires_at_ms,
                            data: data.into(),
                        };
                        if updated_at_ms < from.whole {
                            let weight = budget.weight(&key, &doc);
                            if weight > room {
                                continue;
                            }
                            room -= weight;
                        }
                        docs.push(Ok((key, doc)));
                    }
                    Ok::<_, EngineError>(Some((futures_util::stream::iter(docs), (next, room))))
                });
            Ok::<_, EngineError>(chunks.try_flatten().boxed())
        };
        futures_util::stream::once(walk).try_flatten().boxed()
    }

    /// Up to `limit` entries of the feed after `after` and up to `upto`
    /// that `filter` lets through, with the feed's floor, read together.
    async fn feed(&self, after: u64, upto: u64, filter: FeedFilter<'_>, limit: usize) -> Result<FeedRun, EngineError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.error(e))?;
        let floor: i64 = sqlx::query_scalar("SELECT value FROM shard_meta WHERE key = 'feed_floor'")
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.error(e))?;
        // One collection goes by the (collection, seq) index; several, or
        // none, by seq.
        let (collections, by_collection) = match filter.collections {
            None => (None, ""),
            Some([one]) => (Some(one.as_str().to_owned()), "collection = ?4 AND"),
            Some(many) => (
                Some(serde_json::Value::from(many.iter().map(CollectionName::as_str).collect::<Vec<_>>()).to_string()),
                "collection IN (SELECT value FROM json_each(?4)) AND",
            ),
        };
        let by_prefix = if filter.prefix.is_some() {
            "AND substr(id, 1, length(?5)) = ?5"
        } else {
            ""
        };
        let sql = format!(
            "SELECT seq, collection, id, version, kind, at FROM changes \
             WHERE {by_collection} seq > ?1 AND seq <= ?2 {by_prefix} ORDER BY seq LIMIT ?3"
        );
        let rows = sqlx::query(&sql)
            .bind(i64::try_from(after).unwrap_or(i64::MAX))
            .bind(i64::try_from(upto).unwrap_or(i64::MAX))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(collections)
            .bind(filter.prefix)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| self.error(e))?;
        let _ = tx.rollback().await;
        // An entry that does not parse fails the read: skipped, it would be
        // a change nobody hears of (a replica would keep the old document).
        let entries = rows
            .iter()
            .map(|row| {
                let entry = (|| {
                    let collection = CollectionName::parse(row.try_get::<&str, _>("collection").ok()?).ok()?;
                    let id = DocId::parse_in_feed(row.try_get::<&str, _>("id").ok()?).ok()?;
                    Some(FeedEntry {
                        seq: u64::try_from(row.try_get::<i64, _>("seq").ok()?).ok()?,
                        key: DocKey::new(collection, id),
                        version: u64::try_from(row.try_get::<i64, _>("version").ok()?).ok()?,
                        kind: ChangeKind::from_code(row.try_get::<i64, _>("kind").ok()?)?,
                        at_ms: row.try_get::<i64, _>("at").ok()?,
                    })
                })();
                entry.ok_or_else(|| {
                    let seq = row
                        .try_get::<i64, _>("seq")
                        .map_or_else(|_| "?".to_owned(), |s| s.to_string());
                    EngineError::unparsable_feed_entry(self.shard, seq)
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FeedRun {
            floor: u64::try_from(floor).unwrap_or(0),
            entries,
        })
    }

    /// Closes the pool (at shutdown); reads after this fail.
    async fn close(&self) {
        self.pool.close().await;
    }

    fn is_closed(&self) -> bool {
        self.pool.is_closed()
    }
}

impl SqliteReads {
    pub fn new(shard: usize, pool: SqlitePool, wait: Duration) -> Self {
        Self { shard, pool, wait }
    }

    fn error(&self, err: sqlx::Error) -> EngineError {
        match err {
            sqlx::Error::PoolTimedOut => EngineError::Busy {
                shard: self.shard,
                waited_ms: self.wait.as_millis() as u64,
            },
            err => shard_error(self.shard, err),
        }
    }

    /// Which documents the warm-up takes, from a histogram of their
    /// weights by change time; `None` when there is nothing to warm.
    async fn warm_from(&self, now: i64, budget: WarmBudget) -> Result<Option<WarmFrom>, EngineError> {
        const BUCKETS: i64 = 4096;
        let live = "FROM documents WHERE (expires_at IS NULL OR expires_at > ?1)";
        let (oldest, newest): (Option<i64>, Option<i64>) =
            sqlx::query_as(&format!("SELECT min(updated_at), max(updated_at) {live}"))
                .bind(now)
                .fetch_one(&self.pool)
                .await
                .map_err(|e| self.error(e))?;
        let (Some(oldest), Some(newest)) = (oldest, newest) else {
            return Ok(None);
        };
        let width = (newest.saturating_sub(oldest) / BUCKETS).saturating_add(1);
        let buckets: Vec<(i64, i64)> = sqlx::query_as(&format!(
            "SELECT (updated_at - ?2) / ?3 AS b, sum(length(CAST(collection AS BLOB)) + length(CAST(id AS BLOB)) \
             + length(CAST(data AS BLOB)) + ?4) {live} AND length(CAST(data AS BLOB)) <= ?5 GROUP BY b ORDER BY b DESC"
        ))
        .bind(now)
        .bind(oldest)
        .bind(width)
        .bind(i64::try_from(budget.per_entry).unwrap_or(i64::MAX))
        .bind(i64::try_from(budget.largest).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        if buckets.is_empty() {
            return Ok(None);
        }
        let mut from = WarmFrom {
            whole: i64::MAX,
            room: budget.bytes,
        };
        for (bucket, bytes) in buckets {
            let bytes = u64::try_from(bytes).unwrap_or(0);
            if bytes > from.room {
                break;
            }
            from.room -= bytes;
            from.whole = oldest.saturating_add(bucket.saturating_mul(width));
        }
        Ok(Some(from))
    }

    /// Up to [`WARM_CHUNK_ROWS`] warm-up rows in primary key order after
    /// `after`: those changed since `whole`, and older ones that fit in
    /// `room`, as one JSON array: a row at a time, the warm-up spent most
    /// of its time waking this task from sqlx's connection thread.
    async fn warm_chunk(
        &self,
        now: i64,
        budget: WarmBudget,
        whole: i64,
        room: u64,
        after: Option<&(String, String)>,
    ) -> Result<Vec<WarmRow>, EngineError> {
        let (collection, id) = after.map_or(("", ""), |(c, i)| (c.as_str(), i.as_str()));
        let chunk: String = sqlx::query_scalar(
            "SELECT json_group_array(json_array(collection, id, version, updated_at, expires_at, data)) \
             FROM (SELECT collection, id, version, updated_at, expires_at, data FROM documents \
                   WHERE (collection, id) > (?1, ?2) AND (expires_at IS NULL OR expires_at > ?4) \
                   AND length(CAST(data AS BLOB)) <= ?5 \
                   AND (updated_at >= ?3 OR length(CAST(collection AS BLOB)) + length(CAST(id AS BLOB)) \
                        + length(CAST(data AS BLOB)) + ?7 <= ?8) \
                   ORDER BY collection, id LIMIT ?6)",
        )
        .bind(collection)
        .bind(id)
        .bind(whole)
        .bind(now)
        .bind(i64::try_from(budget.largest).unwrap_or(i64::MAX))
        .bind(WARM_CHUNK_ROWS)
        .bind(i64::try_from(budget.per_entry).unwrap_or(i64::MAX))
        .bind(i64::try_from(room).unwrap_or(i64::MAX))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        serde_json::from_str(&chunk).map_err(|e| {
            EngineError::storage(
                self.shard,
                super::super::StorageError::new(super::super::ErrorKind::Other, format!("a warm-up chunk: {e}")),
            )
        })
    }
}
