//! A database as the source or the target of `exdaas migrate` (see
//! `engine::transfer`).

use std::time::Duration;

use sqlx::{Connection, PgConnection, Row};

use super::database::{unfinished_migration, PgDatabase, MIGRATING};
use super::engine_error;
use crate::domain::ShardCount;
use crate::store::engine::transfer::{shard_count, Catalog, DocumentRow, RowPages, BATCH_ROWS};
use crate::store::engine::EngineError;
use crate::store::engine::IdBounds;
use crate::store::placement::Placement;

fn failed(what: &str) -> impl Fn(sqlx::Error) -> EngineError + '_ {
    move |e| EngineError::Database {
        reason: format!("{what}: {}", engine_error(e)),
    }
}

/// One snapshot of a database (a REPEATABLE READ, READ ONLY transaction),
/// read a page at a time in key order.
pub struct DatabaseSource {
    conn: PgConnection,
    shards: ShardCount,
    after: Option<(String, String)>,
}

impl DatabaseSource {
    /// Connects and opens the snapshot. A database an unfinished migration
    /// is filling is refused, unless `unfinished` (verifying that copy).
    pub async fn connect(url: &str, unfinished: bool) -> Result<Self, EngineError> {
        let options = super::connect_options(url, "the database URL")?;
        let mut conn = PgConnection::connect_with(&options.application_name("exdaas migrate"))
            .await
            .map_err(failed("cannot connect to the database"))?;
        sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut conn)
            .await
            .map_err(failed("cannot open a snapshot of the database"))?;
        let meta: Vec<(String, i64)> =
            sqlx::query_as("SELECT key, value FROM exdaas_meta WHERE key IN ('shards', 'migrating')")
                .fetch_all(&mut conn)
                .await
                .map_err(|e| match &e {
                    sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => EngineError::Database {
                        reason: "it has no exdaas_meta table: exdaas never ran on it".into(),
                    },
                    _ => failed("cannot read exdaas_meta")(e),
                })?;
        let value = |name: &str| meta.iter().find(|(key, _)| key == name).map(|(_, v)| *v);
        if value(MIGRATING).is_some() && !unfinished {
            return Err(unfinished_migration());
        }
        let shards = shard_count(value("shards").unwrap_or(0), "its exdaas_meta")?;
        Ok(Self {
            conn,
            shards,
            after: None,
        })
    }

    pub fn shards(&self) -> ShardCount {
        self.shards
    }

    /// Every shard's id bounds. Ids the replicas took in blocks count as
    /// handed out, whether or not a document holds them.
    pub async fn bounds(&mut self) -> Result<Vec<IdBounds>, EngineError> {
        let read = failed("cannot read the shards' id bounds");
        let block: Option<i64> = sqlx::query_scalar("SELECT value FROM exdaas_meta WHERE key = 'id_block'")
            .fetch_optional(&mut self.conn)
            .await
            .map_err(&read)?;
        let rows: Vec<(i64, i64)> =
            sqlx::query_as("SELECT max_counter_id, counter_high FROM exdaas_shards ORDER BY shard")
                .fetch_all(&mut self.conn)
                .await
                .map_err(&read)?;
        let block = block.unwrap_or(0);
        Ok(rows
            .into_iter()
            .map(|(stored, counter)| IdBounds {
                stored: u64::try_from(stored).unwrap_or(0),
                counter: u64::try_from(counter.max(block)).unwrap_or(0),
            })
            .collect())
    }

    /// Shard `shard`'s schemas and index declarations, in the snapshot.
    pub async fn catalog(&mut self, shard: usize) -> Result<Catalog, EngineError> {
        let shard = i32::try_from(shard).unwrap_or(i32::MAX);
        let schemas =
            sqlx::query_as("SELECT collection, version, schema, updated_at FROM exdaas_schemas WHERE shard = $1")
                .bind(shard)
                .fetch_all(&mut self.conn)
                .await
                .map_err(failed("cannot read the schemas"))?;
        let indexes =
            sqlx::query_as("SELECT collection, name, fields, created_at FROM exdaas_indexes WHERE shard = $1")
                .bind(shard)
                .fetch_all(&mut self.conn)
                .await
                .map_err(failed("cannot read the indexes"))?;
        Ok(Catalog { schemas, indexes })
    }

    pub async fn count(&mut self) -> Result<u64, EngineError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM exdaas_documents")
            .fetch_one(&mut self.conn)
            .await
            .map_err(failed("cannot count the documents"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

impl RowPages for DatabaseSource {
    /// The next page of documents (keyset paging on the primary key).
    async fn next_batch(&mut self) -> Result<Option<Vec<DocumentRow>>, EngineError> {
        const COLUMNS: &str =
            "SELECT collection, id, bucket, version, updated_at, expires_at, data FROM exdaas_documents";
        let first = format!("{COLUMNS} ORDER BY collection, id LIMIT $1");
        let next = format!("{COLUMNS} WHERE (collection, id) > ($2, $3) ORDER BY collection, id LIMIT $1");
        let query = match &self.after {
            None => sqlx::query(&first).bind(BATCH_ROWS as i64),
            Some((collection, id)) => sqlx::query(&next)
                .bind(BATCH_ROWS as i64)
                .bind(collection.as_str())
                .bind(id.as_str()),
        };
        let rows = query
            .fetch_all(&mut self.conn)
            .await
            .map_err(failed("cannot read the documents"))?;
        let batch = rows
            .iter()
            .map(|row| {
                Ok(DocumentRow {
                    collection: row.try_get("collection")?,
                    id: row.try_get("id")?,
                    bucket: u32::try_from(row.try_get::<i32, _>("bucket")?).unwrap_or(u32::MAX),
                    version: row.try_get("version")?,
                    updated_at: row.try_get("updated_at")?,
                    expires_at: row.try_get("expires_at")?,
                    data: row.try_get("data")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(failed("cannot read the documents"))?;
        let Some(last) = batch.last() else {
            return Ok(None);
        };
        self.after = Some((last.collection.clone(), last.id.clone()));
        Ok(Some(batch))
    }
}

impl DatabaseSource {
    /// Ends the snapshot.
    pub async fn close(mut self) -> Result<(), EngineError> {
        sqlx::query("COMMIT")
            .execute(&mut self.conn)
            .await
            .map_err(failed("cannot end the snapshot"))?;
        self.conn.close().await.map_err(failed("cannot disconnect"))
    }
}

/// A database being filled by `exdaas migrate --to`: marked `migrating`
/// (so no replica starts on a partial copy) until [`DatabaseTarget::finish`].
pub struct DatabaseTarget {
    database: PgDatabase,
}

impl DatabaseTarget {
    /// Connects, applies the schema, and checks the database holds no
    /// documents (a copy an earlier, unfinished migration left is removed).
    pub async fn open(url: &str, shards: ShardCount) -> Result<Self, EngineError> {
        let database = PgDatabase::prepare(url, shards.get(), 2, Duration::from_secs(30)).await?;
        let pool = &database.pool;
        let mark: Option<i64> = sqlx::query_scalar("SELECT value FROM exdaas_meta WHERE key = $1")
            .bind(MIGRATING)
            .fetch_optional(pool)
            .await
            .map_err(failed("cannot read exdaas_meta"))?;
        let holds: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM exdaas_documents)")
            .fetch_one(pool)
            .await
            .map_err(failed("cannot read exdaas_documents"))?;
        match (holds, mark) {
            (true, None) => {
                return Err(EngineError::Database {
                    reason: "it already holds documents: migrate into a database exdaas has not written to".into(),
                })
            }
            (true, Some(_)) => {
                tracing::warn!("removing the partial copy an unfinished migration left");
                sqlx::query("TRUNCATE exdaas_documents, exdaas_index_entries")
                    .execute(pool)
                    .await
                    .map_err(failed("cannot remove the partial copy"))?;
            }
            (false, _) => {}
        }
        sqlx::query(
            "INSERT INTO exdaas_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(MIGRATING)
        .bind(crate::clock::now_millis())
        .execute(pool)
        .await
        .map_err(failed("cannot mark the database as migrating"))?;
        Ok(Self { database })
    }

    /// Inserts `rows`, in one statement.
    pub async fn insert(&mut self, rows: &[DocumentRow], placement: &Placement) -> Result<(), EngineError> {
        let column = |f: fn(&DocumentRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
        let shards: Vec<i32> = rows
            .iter()
            .map(|r| i32::try_from(placement.shard_of_bucket(r.bucket)).unwrap_or(i32::MAX))
            .collect();
        let buckets: Vec<i32> = rows
            .iter()
            .map(|r| i32::try_from(r.bucket).unwrap_or(i32::MAX))
            .collect();
        sqlx::query(
            "INSERT INTO exdaas_documents (collection, id, shard, bucket, version, updated_at, expires_at, data) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::int[], $5::bigint[], $6::bigint[], \
             $7::bigint[], $8::text[])",
        )
        .bind(column(|r| r.collection.clone()))
        .bind(column(|r| r.id.clone()))
        .bind(shards)
        .bind(buckets)
        .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.expires_at).collect::<Vec<_>>())
        .bind(column(|r| r.data.clone()))
        .execute(&self.database.pool)
        .await
        .map_err(failed("cannot insert documents"))?;
        Ok(())
    }

    /// Stores a shard's schemas and index declarations (unbuilt).
    pub async fn insert_catalog(&mut self, shard: usize, catalog: &Catalog) -> Result<(), EngineError> {
        let shard = i32::try_from(shard).unwrap_or(i32::MAX);
        for (collection, version, schema, updated_at) in &catalog.schemas {
            sqlx::query(
                "INSERT INTO exdaas_schemas (shard, collection, version, schema, updated_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (shard, collection) DO UPDATE SET version = excluded.version, schema = excluded.schema, \
                 updated_at = excluded.updated_at",
            )
            .bind(shard)
            .bind(collection)
            .bind(version)
            .bind(schema)
            .bind(updated_at)
            .execute(&self.database.pool)
            .await
            .map_err(failed("cannot insert a schema"))?;
        }
        for (collection, name, fields, created_at) in &catalog.indexes {
            sqlx::query(
                "INSERT INTO exdaas_indexes (shard, collection, name, fields, created_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (shard, collection, name) DO UPDATE SET fields = excluded.fields, built = false, \
                 built_upto = NULL, indexed = 0, oversized = 0",
            )
            .bind(shard)
            .bind(collection)
            .bind(name)
            .bind(fields)
            .bind(created_at)
            .execute(&self.database.pool)
            .await
            .map_err(failed("cannot insert an index"))?;
        }
        Ok(())
    }

    /// Records each shard's id bounds, starts the feed after the copy (a
    /// floor above every earlier entry: an older cursor answers 410) and
    /// removes the `migrating` mark, in one transaction.
    pub async fn finish(self, bounds: &[IdBounds]) -> Result<(), EngineError> {
        let fail = failed("cannot record the shards' bounds");
        let mut tx = self.database.pool.begin().await.map_err(&fail)?;
        for (shard, bound) in bounds.iter().enumerate() {
            sqlx::query(
                "UPDATE exdaas_shards SET max_counter_id = greatest(max_counter_id, $2), \
                 counter_high = greatest(counter_high, $3), last_seq = last_seq + 1, feed_floor = last_seq + 1 \
                 WHERE shard = $1",
            )
            .bind(i32::try_from(shard).unwrap_or(i32::MAX))
            .bind(i64::try_from(bound.stored).unwrap_or(i64::MAX))
            .bind(i64::try_from(bound.counter).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await
            .map_err(&fail)?;
        }
        sqlx::query("DELETE FROM exdaas_changes")
            .execute(&mut *tx)
            .await
            .map_err(&fail)?;
        sqlx::query("DELETE FROM exdaas_meta WHERE key = $1")
            .bind(MIGRATING)
            .execute(&mut *tx)
            .await
            .map_err(&fail)?;
        tx.commit().await.map_err(&fail)?;
        self.database.pool.close().await;
        Ok(())
    }
}
