//! A shard's reads on the database: point reads for the cache, the scans
//! of listings and exports, counts, the cache's warm-up and the feed. The
//! pool is the database's; each shard takes at most its share of it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres, Row};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::super::{ChangeKind, FeedEntry, FeedFilter, FeedRun, StoredIndex, WarmBudget};
use super::engine_error;
use crate::domain::{CollectionName, DocId, DocKey};
use crate::store::document::Document;
use crate::store::engine::contract::{PointRead, ReadPool};
use crate::store::engine::{EngineError, ErrorKind, StorageError};

pub struct PgReads {
    shard: usize,
    pool: PgPool,
    /// This shard's share of the pool (`EXDAAS_READ_CONNECTIONS`).
    slots: Arc<Semaphore>,
    connections: u32,
    wait: Duration,
}

/// A read connection, held before a read that must not wait for one later.
pub struct PgReadSlot {
    shard: usize,
    conn: PoolConnection<Postgres>,
    _slot: OwnedSemaphorePermit,
}

impl PointRead for PgReadSlot {
    /// The committed document at `key` (expired or not).
    async fn read(mut self, key: &DocKey) -> Result<Option<Document>, EngineError> {
        let row = sqlx::query(
            "SELECT version, updated_at, expires_at, data FROM exdaas_documents WHERE collection = $1 AND id = $2",
        )
        .bind(key.collection.as_str())
        .bind(key.id.as_str())
        .fetch_optional(&mut *self.conn)
        .await
        .map_err(|e| EngineError::storage(self.shard, engine_error(e)))?;
        row.map(|row| document_from_row(&row))
            .transpose()
            .map_err(|e| EngineError::storage(self.shard, engine_error(e)))
    }
}

/// A document from a row with `version`, `updated_at`, `expires_at`, `data`.
pub fn document_from_row(row: &sqlx::postgres::PgRow) -> Result<Document, sqlx::Error> {
    Ok(Document {
        version: u64::try_from(row.try_get::<i64, _>("version")?).unwrap_or(0),
        updated_at_ms: row.try_get("updated_at")?,
        expires_at_ms: row.try_get("expires_at")?,
        data: Arc::from(row.try_get::<&str, _>("data")?),
    })
}

impl ReadPool for PgReads {
    type Slot = PgReadSlot;

    /// A read connection, waiting at most the configured time for one.
    async fn reserve(&self) -> Result<PgReadSlot, EngineError> {
        self.pool()?;
        let slot = match tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => slot,
            _ => return Err(self.busy()),
        };
        let conn = self.pool()?.acquire().await.map_err(|e| self.error(e))?;
        Ok(PgReadSlot {
            shard: self.shard,
            conn,
            _slot: slot,
        })
    }

    fn connections(&self) -> u32 {
        self.connections
    }

    /// The counter-shaped ids of `collection` stored in this shard from
    /// `first` to `last` (inclusive), two numbers with as many digits.
    async fn counter_ids_between(
        &self,
        collection: &CollectionName,
        first: u64,
        last: u64,
    ) -> Result<Vec<u64>, EngineError> {
        let (first, last) = (first.to_string(), last.to_string());
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM exdaas_documents WHERE collection = $1 AND id >= $2 \
             AND id <= $3 AND length(id) = $4 AND shard = $5",
        )
        .bind(collection.as_str())
        .bind(&first)
        .bind(&last)
        .bind(first.len() as i32)
        .bind(self.shard_param())
        .fetch_all(self.pool()?)
        .await
        .map_err(|e| self.error(e))?;
        Ok(ids
            .iter()
            .filter(|id| id.bytes().all(|b| b.is_ascii_digit()))
            .filter_map(|id| id.parse().ok())
            .collect())
    }

    /// Up to `limit` documents of `collection` in this shard live at `now`,
    /// in id order (bytewise), after `from` (included if its flag says so)
    /// and before `to`: ids, versions, times and text sizes.
    async fn entries(
        &self,
        collection: &CollectionName,
        from: Option<(&str, bool)>,
        to: Option<&str>,
        now: i64,
        limit: usize,
    ) -> Result<Vec<(DocId, Document, usize)>, EngineError> {
        let lower = match from {
            Some((_, true)) => "AND id >= $2",
            Some((_, false)) => "AND id > $2",
            None => "AND $2::text IS NULL",
        };
        let upper = if to.is_some() {
            "AND id < $3"
        } else {
            "AND $3::text IS NULL"
        };
        let sql = format!(
            "SELECT id, version, updated_at, expires_at, '' AS data, octet_length(data) AS bytes \
             FROM exdaas_documents WHERE collection = $1 AND shard = $6 {lower} {upper} \
             AND (expires_at IS NULL OR expires_at > $4) ORDER BY id LIMIT $5"
        );
        let rows = sqlx::query(&sql)
            .bind(collection.as_str())
            .bind(from.map(|(id, _)| id))
            .bind(to)
            .bind(now)
            .bind(limit as i64)
            .bind(self.shard_param())
            .fetch_all(self.pool()?)
            .await
            .map_err(|e| self.error(e))?;
        rows.iter()
            .map(|row| {
                let id = row.try_get::<&str, _>("id").map_err(|e| self.error(e))?;
                let id = DocId::parse(id).map_err(|_| EngineError::Internal("a stored id is not a valid id"))?;
                let doc = document_from_row(row).map_err(|e| self.error(e))?;
                let bytes = row.try_get::<i32, _>("bytes").map_err(|e| self.error(e))?;
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
        let ids: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
        let rows = sqlx::query(
            "SELECT id, version, updated_at, expires_at, data FROM exdaas_documents \
             WHERE collection = $1 AND id = ANY($2::text[]) AND (expires_at IS NULL OR expires_at > $3)",
        )
        .bind(collection.as_str())
        .bind(ids)
        .bind(now)
        .fetch_all(self.pool()?)
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

    /// The indexes of `collection` on this shard.
    async fn index_catalog(&self, collection: &CollectionName) -> Result<Vec<StoredIndex>, EngineError> {
        let shard = i32::try_from(self.shard).unwrap_or(i32::MAX);
        let rows = sqlx::query(
            "SELECT collection, name, fields, built, indexed, oversized, created_at FROM exdaas_indexes \
             WHERE shard = $1 AND collection = $2",
        )
        .bind(shard)
        .bind(collection.as_str())
        .fetch_all(self.pool()?)
        .await
        .map_err(|e| self.error(e))?;
        rows.iter()
            .map(|row| super::writes::stored_index(row).map_err(|e| EngineError::storage(self.shard, e)))
            .collect()
    }

    /// Indexes whose build has not covered this shard yet.
    async fn unbuilt_indexes(&self) -> Result<Vec<(String, String)>, EngineError> {
        let shard = i32::try_from(self.shard).unwrap_or(i32::MAX);
        sqlx::query_as("SELECT collection, name FROM exdaas_indexes WHERE shard = $1 AND NOT built")
            .bind(shard)
            .fetch_all(self.pool()?)
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
        let shard = i32::try_from(self.shard).unwrap_or(i32::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let query = match after {
            None => sqlx::query(
                "SELECT key, id FROM exdaas_index_entries WHERE shard = $1 AND collection = $2 AND name = $3 \
                 AND key >= $4 AND key < $5 ORDER BY key, id LIMIT $6",
            )
            .bind(shard)
            .bind(collection.as_str())
            .bind(name)
            .bind(low)
            .bind(high)
            .bind(limit),
            Some((key, id)) => sqlx::query(
                "SELECT key, id FROM exdaas_index_entries WHERE shard = $1 AND collection = $2 AND name = $3 \
                 AND key >= $4 AND key < $5 AND (key, id) > ($7, $8) ORDER BY key, id LIMIT $6",
            )
            .bind(shard)
            .bind(collection.as_str())
            .bind(name)
            .bind(low)
            .bind(high)
            .bind(limit)
            .bind(key)
            .bind(id),
        };
        let rows = query.fetch_all(self.pool()?).await.map_err(|e| self.error(e))?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("key").map_err(|e| self.error(e))?,
                    row.try_get("id").map_err(|e| self.error(e))?,
                ))
            })
            .collect()
    }

    /// Documents of this shard live at `now`; `None` if it cannot be read.
    async fn count_live(&self, now: i64) -> Option<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM exdaas_documents WHERE shard = $1 AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(self.shard_param())
        .bind(now)
        .fetch_one(self.pool().ok()?)
        .await
        .ok()?;
        u64::try_from(n).ok()
    }

    /// Live documents of this shard at `now` per collection, added to `totals`.
    async fn add_collection_counts(&self, now: i64, totals: &mut BTreeMap<String, i64>) -> Result<(), EngineError> {
        let rows = sqlx::query(
            "SELECT collection, count(*) AS n FROM exdaas_documents \
             WHERE shard = $1 AND (expires_at IS NULL OR expires_at > $2) GROUP BY collection",
        )
        .bind(self.shard_param())
        .bind(now)
        .fetch_all(self.pool()?)
        .await
        .map_err(|e| self.error(e))?;
        for row in rows {
            let name: String = row.try_get("collection").unwrap_or_default();
            let n: i64 = row.try_get("n").unwrap_or(0);
            *totals.entry(name).or_default() += n;
        }
        Ok(())
    }

    /// Live documents of this shard at `now` of each of `collections`,
    /// added to `totals`.
    async fn add_counts_of(
        &self,
        now: i64,
        collections: &[CollectionName],
        totals: &mut BTreeMap<String, i64>,
    ) -> Result<(), EngineError> {
        let names: Vec<&str> = collections.iter().map(CollectionName::as_str).collect();
        let rows = sqlx::query(
            "SELECT collection, count(*) AS n FROM exdaas_documents \
             WHERE shard = $1 AND collection = ANY($3) AND (expires_at IS NULL OR expires_at > $2) \
             GROUP BY collection",
        )
        .bind(self.shard_param())
        .bind(now)
        .bind(&names)
        .fetch_all(self.pool()?)
        .await
        .map_err(|e| self.error(e))?;
        for row in rows {
            let name: String = row.try_get("collection").unwrap_or_default();
            let n: i64 = row.try_get("n").unwrap_or(0);
            *totals.entry(name).or_default() += n;
        }
        Ok(())
    }

    /// This shard's documents live at `now`, most recently changed first,
    /// as many as `budget` holds: what the cache is warmed with.
    fn recent(&self, now: i64, budget: WarmBudget) -> BoxStream<'_, Result<(DocKey, Document), EngineError>> {
        let pool = match self.pool() {
            Ok(pool) => pool,
            Err(err) => return futures_util::stream::once(std::future::ready(Err(err))).boxed(),
        };
        let mut used = 0u64;
        sqlx::query(
            "SELECT collection, id, version, updated_at, expires_at, data FROM exdaas_documents \
             WHERE shard = $2 AND (expires_at IS NULL OR expires_at > $1) AND octet_length(data) <= $3 \
             ORDER BY updated_at DESC",
        )
        .bind(now)
        .bind(self.shard_param())
        .bind(i64::try_from(budget.largest).unwrap_or(i64::MAX))
        .fetch(pool)
        .map(move |row| {
            let row = row.map_err(|e| self.error(e))?;
            let (Ok(collection), Ok(id)) = (
                CollectionName::parse(row.try_get("collection").map_err(|e| self.error(e))?),
                DocId::parse(row.try_get("id").map_err(|e| self.error(e))?),
            ) else {
                return Ok(None);
            };
            let doc = document_from_row(&row).map_err(|e| self.error(e))?;
            Ok(Some((DocKey::new(collection, id), doc)))
        })
        // Newest first: one that does not fit is skipped (`Some(None)`), and
        // the walk ends (`None`) once no entry could fit any more.
        .map_ok(move |parsed| {
            if used.saturating_add(budget.per_entry) > budget.bytes {
                return None;
            }
            Some(parsed.filter(|(key, doc)| {
                let weight = budget.weight(key, doc);
                let fits = used.saturating_add(weight) <= budget.bytes;
                if fits {
                    used += weight;
                }
                fits
            }))
        })
        .try_take_while(|step| std::future::ready(Ok(step.is_some())))
        .try_filter_map(|step| std::future::ready(Ok(step.flatten())))
        .boxed()
    }

    /// Up to `limit` entries of this shard's feed after `after` and up to
    /// `upto` that `filter` lets through, with the feed's floor, read in
    /// one statement (one snapshot).
    async fn feed(&self, after: u64, upto: u64, filter: FeedFilter<'_>, limit: usize) -> Result<FeedRun, EngineError> {
        let collections: Option<Vec<String>> = filter
            .collections
            .map(|many| many.iter().map(|c| c.as_str().to_owned()).collect());
        let rows = sqlx::query(
            "SELECT s.feed_floor, c.seq, c.collection, c.id, c.version, c.kind, c.at FROM exdaas_shards AS s \
             LEFT JOIN LATERAL (SELECT seq, collection, id, version, kind, at FROM exdaas_changes \
               WHERE shard = $1 AND seq > $2 AND seq <= $3 \
               AND ($5::text[] IS NULL OR collection = ANY($5::text[])) \
               AND ($6::text IS NULL OR left(id, length($6)) = $6) ORDER BY seq LIMIT $4) AS c ON true \
             WHERE s.shard = $1",
        )
        .bind(self.shard_param())
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(i64::try_from(upto).unwrap_or(i64::MAX))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(collections)
        .bind(filter.prefix)
        .fetch_all(self.pool()?)
        .await
        .map_err(|e| self.error(e))?;
        let floor = rows
            .first()
            .and_then(|row| row.try_get::<i64, _>("feed_floor").ok())
            .unwrap_or(0);
        // The row of a shard without entries in the run has no seq. An
        // entry that does not parse fails the read: skipped, it would be a
        // change nobody hears of (a replica would keep the old document).
        let entries = rows
            .iter()
            .filter_map(|row| {
                row.try_get::<Option<i64>, _>("seq")
                    .ok()
                    .flatten()
                    .map(|seq| (seq, row))
            })
            .map(|(seq, row)| {
                let entry = (|| {
                    let collection = CollectionName::parse(row.try_get::<&str, _>("collection").ok()?).ok()?;
                    let id = DocId::parse_in_feed(row.try_get::<&str, _>("id").ok()?).ok()?;
                    Some(FeedEntry {
                        seq: u64::try_from(seq).ok()?,
                        key: DocKey::new(collection, id),
                        version: u64::try_from(row.try_get::<i64, _>("version").ok()?).ok()?,
                        kind: ChangeKind::from_code(i64::from(row.try_get::<i16, _>("kind").ok()?))?,
                        at_ms: row.try_get::<i64, _>("at").ok()?,
                    })
                })();
                entry.ok_or_else(|| EngineError::unparsable_feed_entry(self.shard, seq))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FeedRun {
            floor: u64::try_from(floor).unwrap_or(0),
            entries,
        })
    }

    /// Closes this shard's reads only: the pool is the database's, shared
    /// by every shard and writer, and closed once by the store at shutdown
    /// (`SharedDatabase::close`).
    async fn close(&self) {
        self.slots.close();
    }

    fn is_closed(&self) -> bool {
        self.slots.is_closed()
    }
}

impl PgReads {
    pub fn new(shard: usize, pool: PgPool, connections: u32, wait: Duration) -> Self {
        Self {
            shard,
            pool,
            slots: Arc::new(Semaphore::new(connections as usize)),
            connections,
            wait,
        }
    }

    fn shard_param(&self) -> i32 {
        i32::try_from(self.shard).unwrap_or(i32::MAX)
    }

    /// The database's pool, unless this shard's reads are closed.
    fn pool(&self) -> Result<&PgPool, EngineError> {
        if self.slots.is_closed() {
            return Err(EngineError::storage(
                self.shard,
                StorageError::new(ErrorKind::Unavailable, "the shard's reads are closed"),
            ));
        }
        Ok(&self.pool)
    }

    fn busy(&self) -> EngineError {
        EngineError::Busy {
            shard: self.shard,
            waited_ms: self.wait.as_millis() as u64,
        }
    }

    fn error(&self, err: sqlx::Error) -> EngineError {
        match err {
            sqlx::Error::PoolTimedOut => self.busy(),
            err => EngineError::storage(self.shard, engine_error(err)),
        }
    }
}
