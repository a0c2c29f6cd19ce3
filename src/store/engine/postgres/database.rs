//! The database every shard lives in: connecting (its URL's options),
//! migrating under a lease, its identity, and the id counter's blocks.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};

use super::error::engine_error;
use crate::store::engine::{EngineError, StorageError};

/// The `exdaas_meta` key of a database an `exdaas migrate --to` is filling
/// (or left unfinished): no replica starts on it.
pub const MIGRATING: &str = "migrating";

/// How long a replica may hold the migration lease before another takes it
/// over (a replica killed while migrating).
const MIGRATION_LEASE: Duration = Duration::from_secs(60);

/// The database every shard lives in.
pub struct PgDatabase {
    pub pool: PgPool,
    /// The database's identity: feed cursors from another are void.
    pub id: u64,
}

impl PgDatabase {
    /// Connects, applies the migrations (one replica at a time, under a
    /// lease row rather than advisory locks, which CockroachDB lacks), and
    /// checks the database was made for `shards` shards (recording it if new).
    /// A database an unfinished `exdaas migrate --to` is filling is refused.
    pub async fn open(url: &str, shards: u32, connections: u32, wait: Duration) -> Result<Self, EngineError> {
        let database = Self::prepare(url, shards, connections, wait).await?;
        refuse_unfinished(&database).await?;
        Ok(database)
    }

    /// [`PgDatabase::open`], whatever a migration left.
    pub(crate) async fn prepare(url: &str, shards: u32, connections: u32, wait: Duration) -> Result<Self, EngineError> {
        let options = connect_options(url, "EXDAAS_DATABASE_URL")?.application_name("exdaas");
        let pool = PgPoolOptions::new()
            .max_connections(connections)
            .min_connections(0)
            .acquire_timeout(wait.max(Duration::from_secs(5)))
            .connect_with(options)
            .await
            .map_err(|e| unavailable("cannot connect to the database", e))?;
        migrate(&pool).await?;
        let id = identity(&pool, shards).await?;
        Ok(Self { pool, id })
    }
}

/// The driver's options from `url` (named `what` in messages). The driver
/// logs the value of a query parameter it does not read (an `sslpassword`
/// it would print in clear), so those are taken off first and named here,
/// without their values.
pub(crate) fn connect_options(url: &str, what: &str) -> Result<PgConnectOptions, EngineError> {
    const READ: &[&str] = &[
        "sslmode",
        "ssl-mode",
        "sslrootcert",
        "ssl-root-cert",
        "ssl-ca",
        "sslcert",
        "ssl-cert",
        "sslkey",
        "ssl-key",
        "statement-cache-capacity",
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "password",
        "application_name",
        "options",
    ];
    let (before_fragment, fragment) = url.split_at(url.find('#').unwrap_or(url.len()));
    let url = match before_fragment.split_once('?') {
        None => url.to_owned(),
        Some((base, query)) => {
            let mut kept = Vec::new();
            for pair in query.split('&').filter(|pair| !pair.is_empty()) {
                let (name, value) = form_urlencoded::parse(pair.as_bytes())
                    .next()
                    .map(|(name, value)| (name.into_owned(), value.into_owned()))
                    .unwrap_or_default();
                // The driver would say only "No such file or directory".
                if ["sslrootcert", "ssl-root-cert", "ssl-ca"].contains(&name.as_str()) {
                    if let Err(e) = std::fs::File::open(&value) {
                        return Err(EngineError::Database {
                            reason: format!("{what}: cannot read the CA certificate {name}={value}: {e}"),
                        });
                    }
                }
                if READ.contains(&name.as_str()) || (name.starts_with("options[") && name.ends_with(']')) {
                    kept.push(pair);
                } else {
                    tracing::warn!(
                        parameter = %name,
                        "{what}: exdaas does not read the connection parameter {name:?}; it is ignored"
                    );
                }
            }
            match kept.is_empty() {
                true => format!("{base}{fragment}"),
                false => format!("{base}?{}{fragment}", kept.join("&")),
            }
        }
    };
    url.parse().map_err(|e: sqlx::Error| EngineError::Database {
        reason: format!("{what} is not a PostgreSQL URL: {e}"),
    })
}

fn unavailable(what: &str, err: sqlx::Error) -> EngineError {
    EngineError::Database {
        reason: format!("{what}: {}", engine_error(err)),
    }
}

/// Runs the migrations under a lease: an `exdaas_migration_lease` row taken
/// with `INSERT ... ON CONFLICT ... DO UPDATE ... WHERE` (expired leases
/// only), released at the end.
async fn migrate(pool: &PgPool) -> Result<(), EngineError> {
    let fail = |e| unavailable("cannot migrate the database", e);
    sqlx::query("CREATE TABLE IF NOT EXISTS exdaas_migration_lease (id INT PRIMARY KEY, holder TEXT NOT NULL, until_ms BIGINT NOT NULL)")
        .execute(pool)
        .await
        .map_err(fail)?;
    let holder = format!("{:016x}", random_u64()?);
    let lease_ms = MIGRATION_LEASE.as_millis() as i64;
    let started = std::time::Instant::now();
    loop {
        let now = crate::clock::now_millis();
        let took: Option<String> = sqlx::query_scalar(
            "INSERT INTO exdaas_migration_lease (id, holder, until_ms) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms \
             WHERE exdaas_migration_lease.until_ms < $3 RETURNING holder",
        )
        .bind(&holder)
        .bind(now + lease_ms)
        .bind(now)
        .fetch_optional(pool)
        .await
        .map_err(fail)?;
        if took.as_deref() == Some(holder.as_str()) {
            break;
        }
        if started.elapsed() > MIGRATION_LEASE * 2 {
            return Err(EngineError::Database {
                reason: "another replica has been migrating the database for two minutes".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The schema, from `migrations/postgres`; the lease above stands for
    // sqlx's advisory lock.
    let mut migrator = sqlx::migrate!("migrations/postgres");
    migrator.set_locking(false);
    let migrated = migrator.run(pool).await;
    let released = sqlx::query("DELETE FROM exdaas_migration_lease WHERE id = 1 AND holder = $1")
        .bind(&holder)
        .execute(pool)
        .await;
    migrated.map_err(|e| EngineError::Database {
        reason: format!("cannot migrate the database: {e}"),
    })?;
    released.map_err(fail)?;
    Ok(())
}

/// The database's identity, created on first use with its shard count and
/// one row per shard; a database made for another shard count is refused.
async fn identity(pool: &PgPool, shards: u32) -> Result<u64, EngineError> {
    let fail = |e| unavailable("cannot read the database's identity", e);
    let id = i64::from_ne_bytes(random_u64()?.to_ne_bytes()) & i64::MAX;
    sqlx::query(
        "INSERT INTO exdaas_meta (key, value) VALUES ('database_id', $1), ('shards', $2) ON CONFLICT (key) DO NOTHING",
    )
    .bind(id)
    .bind(i64::from(shards))
    .execute(pool)
    .await
    .map_err(fail)?;
    sqlx::query("INSERT INTO exdaas_shards (shard) SELECT s FROM generate_series(0, $1 - 1) AS s ON CONFLICT (shard) DO NOTHING")
        .bind(i32::try_from(shards).unwrap_or(i32::MAX))
        .execute(pool)
        .await
        .map_err(fail)?;
    let rows = sqlx::query("SELECT key, value FROM exdaas_meta WHERE key IN ('database_id', 'shards')")
        .fetch_all(pool)
        .await
        .map_err(fail)?;
    let value = |name: &str| {
        rows.iter()
            .find(|row| row.try_get::<&str, _>("key").ok() == Some(name))
            .and_then(|row| row.try_get::<i64, _>("value").ok())
    };
    let (Some(id), Some(recorded)) = (value("database_id"), value("shards")) else {
        return Err(EngineError::Database {
            reason: "the database's exdaas_meta lacks its identity".into(),
        });
    };
    if recorded != i64::from(shards) {
        return Err(EngineError::Database {
            reason: format!(
                "the database was made with SHARD_LIMIT={recorded}, but SHARD_LIMIT={shards} is set; \
                 start with SHARD_LIMIT={recorded}"
            ),
        });
    }
    Ok(u64::try_from(id).unwrap_or(0))
}

impl PgDatabase {
    /// Reserves `count` ids of the counter for this process, after every id
    /// reserved before (by any replica) and at least from `at_least`:
    /// answers the first and the last. The row starts past `highest_used`.
    ///
    /// The reservation is committed durably even where the server lets
    /// commits be lost (`synchronous_commit = off`): a crash may then take
    /// acknowledged writes back, but never the block their ids came from,
    /// so no id is handed out twice.
    pub async fn reserve_ids(&self, count: u64, at_least: u64, highest_used: u64) -> Result<(u64, u64), StorageError> {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await.map_err(engine_error)?;
        sqlx::query("SET LOCAL synchronous_commit = on")
            .execute(&mut *tx)
            .await
            .map_err(engine_error)?;
        let last: i64 = sqlx::query_scalar(
            "INSERT INTO exdaas_meta (key, value) VALUES ('id_block', greatest($2, $3 - 1) + $1) \
             ON CONFLICT (key) DO UPDATE SET value = greatest(exdaas_meta.value, $3 - 1) + $1 RETURNING value",
        )
        .bind(count)
        .bind(i64::try_from(highest_used).unwrap_or(i64::MAX))
        .bind(i64::try_from(at_least).unwrap_or(i64::MAX))
        .fetch_one(&mut *tx)
        .await
        .map_err(engine_error)?;
        tx.commit().await.map_err(engine_error)?;
        let last = u64::try_from(last).unwrap_or(0);
        Ok((last.saturating_sub(u64::try_from(count).unwrap_or(0)) + 1, last))
    }
}

fn random_u64() -> Result<u64, EngineError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|_| EngineError::Internal("no randomness for an identity"))?;
    Ok(u64::from_ne_bytes(bytes))
}

pub(super) fn unfinished_migration() -> EngineError {
    EngineError::Database {
        reason: "an `exdaas migrate --to` into this database did not finish (exdaas_meta holds its `migrating` \
                 mark): run it again to copy the data folder afresh"
            .into(),
    }
}

/// Refuses a database an unfinished migration is filling.
pub async fn refuse_unfinished(database: &PgDatabase) -> Result<(), EngineError> {
    let mark: Option<i64> = sqlx::query_scalar("SELECT value FROM exdaas_meta WHERE key = $1")
        .bind(MIGRATING)
        .fetch_optional(&database.pool)
        .await
        .map_err(|e| unavailable("cannot read exdaas_meta", e))?;
    match mark {
        Some(_) => Err(unfinished_migration()),
        None => Ok(()),
    }
}
