//! The engines a test runs on, each opened the way the store opens it
//! (`engine::backend::open`, then a shard's `open_at_boot`), and what a
//! test needs around them: rows, feed entries, commits, raw SQL.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use exdaas::domain::{CollectionName, DocId, DocKey, ShardCount, SyncMode};
use exdaas::store::engine::backend::{self, Backend, EngineOptions};
use exdaas::store::engine::{
    ChangeKind, FeedEntry, FeedFilter, FeedRun, IdBounds, Opened, ShardFile, ShardReads, ShardWrites, StorageError,
};
use exdaas::store::Document;
use sqlx::Connection;
use tempfile::TempDir;

/// How long a test waits on one engine call before calling it hung.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// One engine, over storage of its own: a temporary data folder, or a
/// fresh database on the PostgreSQL that `EXDAAS_TEST_DATABASE_URL` names.
pub struct Engine {
    pub name: &'static str,
    folder: TempDir,
    database: Option<Database>,
}

/// A database made for one test, dropped by [`Engine::finish`].
struct Database {
    admin: String,
    name: String,
    url: String,
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl Engine {
    /// The engine `name` ("sqlite" or "postgresql") over fresh storage;
    /// `None` where this machine has none of it (PostgreSQL without
    /// `EXDAAS_TEST_DATABASE_URL`).
    pub async fn start(name: &'static str) -> Option<Engine> {
        let database = match name {
            "sqlite" => None,
            "postgresql" => {
                let admin = std::env::var("EXDAAS_TEST_DATABASE_URL")
                    .ok()
                    .filter(|url| !url.is_empty())?;
                Some(Database::create(admin).await)
            }
            other => panic!("no engine {other:?}"),
        };
        Some(Engine {
            name,
            folder: tempfile::tempdir().expect("a temporary data folder"),
            database,
        })
    }
}

/// Runs `test` on the engine `name` over fresh storage, then drops it;
/// says so and passes where this machine has no such engine.
pub async fn run_on(name: &'static str, test: impl AsyncFnOnce(&Engine)) {
    let Some(engine) = Engine::start(name).await else {
        eprintln!("not run on {name}: EXDAAS_TEST_DATABASE_URL is not set");
        return;
    };
    test(&engine).await;
    engine.finish().await;
}

impl Database {
    /// A fresh database beside the admin URL's, named for this process
    /// and a counter, so tests running at once never share one.
    async fn create(admin: String) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "exdaas_engine_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // Another database on the same server, with the same parameters (TLS).
        let (path, query) = admin.split_once('?').unwrap_or((&admin, ""));
        let (base, _) = path.rsplit_once('/').expect("a database URL ends with /name");
        let url = match query {
            "" => format!("{base}/{name}"),
            query => format!("{base}/{name}?{query}"),
        };
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("the test database answers");
        // Left by an earlier run whose process had this id.
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await
            .expect("an old test database dropped");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("a test database created");
        let _ = conn.close().await;
        Self { admin, name, url }
    }
}

impl Engine {
    fn options(&self, shards: u32) -> EngineOptions {
        EngineOptions {
            data_dir: self.folder.path().to_path_buf(),
            database_url: self.database.as_ref().map(|db| db.url.clone()),
            shards: ShardCount::new(shards).expect("a valid shard count"),
            sync: SyncMode::Full,
            cache_bytes: 8 << 20,
            read_connections: 2,
            queue_wait: Duration::from_secs(5),
        }
    }

    /// Opens the engine with one shard, as a boot does.
    pub async fn boot(&self) -> Shard {
        self.boot_all(1).await.swap_remove(0)
    }

    /// Opens the engine with `shards` shards and every one of them, as a
    /// boot does: each shard's writes at boot (with the integrity check),
    /// then its reads.
    pub async fn boot_all(&self, shards: u32) -> Vec<Shard> {
        let mut backend: Backend = backend::open(&self.options(shards))
            .await
            .unwrap_or_else(|e| panic!("{self}: the engine opens: {e}"));
        let mut shards = Vec::new();
        for file in backend.shards {
            let (writes, opened) = file
                .open_at_boot(true)
                .await
                .unwrap_or_else(|e| panic!("{self}: shard {} opens at boot: {e}", file.index()));
            let reads = file
                .open_reads(2, Duration::from_secs(5))
                .await
                .unwrap_or_else(|e| panic!("{self}: shard {}'s reads open: {e}", file.index()));
            shards.push(Shard {
                engine: self.name,
                file,
                writes,
                opened,
                reads,
                _lock: None,
            });
        }
        // What the store does once every shard opened: a data folder
        // records its files as created, and stays locked while open.
        if let Some(folder) = backend.folder.take() {
            let lock = folder.shards_created().await.expect("shards recorded as created");
            shards[0]._lock = Some(Box::new(lock));
        }
        shards
    }

    /// Runs `sqlite` on shard `shard`'s file, or `postgres` on the
    /// database: the way a damaged row gets there.
    pub async fn raw(&self, shard: &Shard, sqlite: &str, postgres: &str) {
        match (&shard.file, &self.database) {
            (ShardFile::Sqlite(file), _) => {
                let path: PathBuf = file.path.clone();
                let mut conn = sqlx::SqliteConnection::connect_with(
                    &sqlx::sqlite::SqliteConnectOptions::new()
                        .filename(&path)
                        .busy_timeout(PATIENCE),
                )
                .await
                .expect("the shard file opens");
                sqlx::raw_sql(sqlite)
                    .execute(&mut conn)
                    .await
                    .expect("raw SQL on the shard file");
                let _ = conn.close().await;
            }
            (ShardFile::Postgres(_), Some(db)) => {
                let mut conn = sqlx::PgConnection::connect(&db.url)
                    .await
                    .expect("the database answers");
                sqlx::raw_sql(postgres)
                    .execute(&mut conn)
                    .await
                    .expect("raw SQL on the database");
                let _ = conn.close().await;
            }
            (ShardFile::Postgres(_), None) => panic!("a PostgreSQL shard without a database"),
        }
    }

    /// Drops the test's database (a data folder goes with the value).
    pub async fn finish(self) {
        if let Some(db) = self.database {
            if let Ok(mut conn) = sqlx::PgConnection::connect(&db.admin).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.name))
                    .execute(&mut conn)
                    .await;
                let _ = conn.close().await;
            }
        }
    }
}

/// One open shard of an engine, as a shard's writer and readers hold it.
pub struct Shard {
    pub engine: &'static str,
    pub file: ShardFile,
    pub writes: ShardWrites,
    pub opened: Opened,
    pub reads: ShardReads,
    /// A data folder stays locked while its shards are open.
    _lock: Option<Box<dyn std::any::Any + Send>>,
}

impl Shard {
    /// A second write handle on the shard: another replica's writer on a
    /// shared database; on files, what a reopen after a failure gives.
    pub async fn another_writer(&self) -> (ShardWrites, Opened) {
        tokio::time::timeout(PATIENCE, self.file.reopen())
            .await
            .unwrap_or_else(|_| panic!("{}: reopen hung", self.engine))
            .unwrap_or_else(|e| panic!("{}: the shard reopens: {e}", self.engine))
    }

    /// Closes the shard cleanly: writes (recording `ids` in place of
    /// `ceilings`), then reads.
    pub async fn close(mut self, ids: IdBounds, ceilings: IdBounds) {
        self.writes.close(ids, ceilings).await;
        self.reads.close().await;
    }

    /// Ends the shard as a crash does: its writes dropped, never closed.
    pub async fn crash(self) {
        drop(self.writes);
        self.reads.close().await;
    }

    /// The whole feed after `after`, up to `upto`, at most `limit`.
    pub async fn feed(&self, after: u64, upto: u64, limit: usize) -> FeedRun {
        self.feed_of(after, upto, FeedFilter::default(), limit).await
    }

    pub async fn feed_of(&self, after: u64, upto: u64, filter: FeedFilter<'_>, limit: usize) -> FeedRun {
        self.reads
            .feed(after, upto, filter, limit)
            .await
            .unwrap_or_else(|e| panic!("{}: the feed reads: {e}", self.engine))
    }
}

pub fn collection(name: &str) -> CollectionName {
    CollectionName::parse(name).expect("a valid collection name")
}

pub fn key(collection_name: &str, id: &str) -> DocKey {
    DocKey::new(collection(collection_name), DocId::parse(id).expect("a valid id"))
}

/// A document that never expires, changed at `updated_at_ms`.
pub fn doc(version: u64, updated_at_ms: i64, data: &str) -> Document {
    Document {
        version,
        updated_at_ms,
        expires_at_ms: None,
        data: data.into(),
    }
}

pub fn entry(seq: u64, key: &DocKey, version: u64, kind: ChangeKind, at_ms: i64) -> FeedEntry {
    FeedEntry {
        seq,
        key: key.clone(),
        version,
        kind,
        at_ms,
    }
}

/// A write entry for each row of `rows` (a deletion's for `None`),
/// numbered from `first`.
pub fn entries_for(first: u64, rows: &[(DocKey, Option<Document>)], at_ms: i64) -> Vec<FeedEntry> {
    rows.iter()
        .zip(first..)
        .map(|((key, doc), seq)| match doc {
            Some(doc) => entry(seq, key, doc.version, ChangeKind::Written, at_ms),
            None => entry(seq, key, 1, ChangeKind::Deleted, at_ms),
        })
        .collect()
}

/// Commits `rows` (`None`: deleted) with `feed` and `ceilings` the way the
/// shard's writer does: the reservation made durable first, then one
/// transaction.
pub async fn commit(
    writes: &mut ShardWrites,
    rows: &[(DocKey, Option<Document>)],
    feed: &[FeedEntry],
    ceilings: Option<IdBounds>,
) -> Result<(), StorageError> {
    if let Some(ceilings) = ceilings {
        writes.reserve_ids(ceilings).await?;
    }
    let changes = rows.iter().map(|(key, doc)| (key, 0u32, doc.as_ref()));
    writes.commit(changes, feed, ceilings).await
}
