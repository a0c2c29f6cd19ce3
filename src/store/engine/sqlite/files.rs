//! A shard's SQLite file: creating it, opening it, and refusing one that is
//! not this folder's shard (not SQLite, another program's database, another
//! folder's or another shard's file, damaged), before anything is written
//! to it.
//!
//! A shard file is created whole or not at all: built under a temporary
//! name (schema, mark, identity), checkpointed and synced, then renamed
//! into place and its folder synced. So a crash or a power cut during a new
//! folder's first boot leaves each shard either without a file (the next
//! boot creates it) or with a complete one, and the layout records the
//! shards as created only after every file is there for good.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, SqliteConnection};

use super::super::{IdBounds, Opened};
use super::reads::SqliteReads;
use super::shard_error;
use super::writes::SqliteWrites;
use crate::domain::SyncMode;
use crate::store::engine::contract::ShardStorage;
use crate::store::engine::EngineError;

/// The shard schema, from `migrations/`, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// `PRAGMA application_id` of exdaas shard files ("exda"), so a foreign
/// SQLite database is never mistaken for a shard.
pub const APPLICATION_ID: i32 = 0x6578_6461;

/// The largest the WAL file is left at after a checkpoint.
const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// A shard's file and what opening it takes.
#[derive(Debug, Clone)]
pub struct ShardFile {
    pub index: usize,
    pub path: PathBuf,
    /// The data folder's identity, which the file must record.
    pub folder_id: u64,
    pub sync: SyncMode,
    /// Shards in the folder: they share the readers' page-cache budget.
    pub shards: u32,
    /// The writer's SQLite page cache (see [`writer_page_cache_kib`]).
    pub writer_cache_kib: u32,
    /// The layout records every shard file of the folder as created: a
    /// file missing or without the schema is then lost data, never a new
    /// shard.
    pub created: bool,
}

/// SQLite's page caches count in the process's memory beside the document
/// cache, so they are bounded too. The readers' take 8 MiB in all: the
/// document cache answers the hot reads. Each shard's writer takes its share
/// of an eighth of `EXDAAS_CACHE_MIB` (1 to 64 MiB a shard), which the
/// document cache gives up: a writer that keeps the pages it updates writes
/// faster (anonymous creates, `EXDAAS_SYNC=normal`: 19.5k/s with 4 MiB a
/// shard, 21.2k with 8, 23.7k with 64).
const READERS_PAGE_CACHE_KIB: u32 = 8 * 1024;

/// The page cache of each shard's writer, in KiB, for a document cache of
/// `cache_bytes` over `shards` shards.
pub fn writer_page_cache_kib(cache_bytes: u64, shards: u32) -> u32 {
    let share = cache_bytes / 8 / u64::from(shards.max(1)) / 1024;
    u32::try_from(share.clamp(1024, 64 * 1024)).unwrap_or(64 * 1024)
}

impl ShardStorage for ShardFile {
    type Writes = SqliteWrites;
    type Reads = SqliteReads;

    fn index(&self) -> usize {
        self.index
    }

    /// The read pool of the shard: at most `connections` read-only
    /// connections, a request waiting at most `wait` for one.
    async fn open_reads(&self, connections: u32, wait: Duration) -> Result<SqliteReads, EngineError> {
        let cache_kib = (READERS_PAGE_CACHE_KIB / (self.shards.max(1) * connections.max(1))).max(256);
        let pool = SqlitePoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(wait)
            .min_connections(0)
            .connect_with(
                base_options(&self.path)
                    .read_only(true)
                    .pragma("cache_size", format!("-{cache_kib}")),
            )
            .await
            .map_err(|e| shard_error(self.index, e))?;
        Ok(SqliteReads::new(self.index, pool, wait))
    }

    /// Opens the write connection, checks the file, migrates it: at boot.
    /// On a first boot, creates the file first if it is not there (see
    /// [`ShardFile::finish_creation`]). `boot_check`: check its integrity
    /// first (reads it whole).
    async fn open_at_boot(&self, boot_check: bool) -> Result<(SqliteWrites, Opened), EngineError> {
        check_header(&self.path)?;
        if !self.created {
            self.finish_creation().await?;
        }
        let mut conn = self.connect(false).await?;
        let checked = match self.check_ours(&mut conn).await {
            Ok(()) => match self.check_integrity_and_migrate(&mut conn, boot_check).await {
                Ok(()) => self.check_identity(&mut conn, true).await,
                Err(err) => Err(err),
            },
            Err(err) => Err(err),
        };
        if let Err(err) = checked {
            let _ = conn.close().await;
            return Err(err);
        }
        self.writer_on(conn).await
    }

    /// Opens the write connection again after a failure. Never creates the
    /// file (an empty one would silently stand in for the lost data) and
    /// does not migrate (boot did).
    async fn reopen(&self) -> Result<(SqliteWrites, Opened), EngineError> {
        let mut conn = self.connect(false).await?;
        let checked = match self.check_ours(&mut conn).await {
            Ok(()) => self.check_identity(&mut conn, false).await,
            Err(err) => Err(err),
        };
        if let Err(err) = checked {
            let _ = conn.close().await;
            return Err(err);
        }
        self.writer_on(conn).await
    }
}

/// Connection options shared by the writer and the readers.
pub fn base_options(path: &Path) -> SqliteConnectOptions {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10))
        .log_statements(tracing::log::LevelFilter::Trace)
        // The cache's warm-up reads a whole shard in one statement: a long
        // one, expected. `RUST_LOG=sqlx=info` shows any over a second.
        .log_slow_statements(tracing::log::LevelFilter::Info, Duration::from_secs(1));
    #[cfg(feature = "fault-injection")]
    if let Some(vfs) = test_vfs::of(path) {
        return options.vfs(vfs);
    }
    options
}

/// Test hook (the `fault-injection` feature, which only the tests turn
/// on): the shard files of chosen folders are opened through an SQLite VFS
/// the tests registered, such as one that keeps what was synced to model a
/// power cut (tests/api/power_cut.rs).
#[cfg(feature = "fault-injection")]
pub mod test_vfs {
    use parking_lot::Mutex;
    use std::path::{Path, PathBuf};

    static ROUTES: Mutex<Vec<(PathBuf, &'static str)>> = Mutex::new(Vec::new());

    /// Opens the SQLite files under `folder` through the VFS `vfs` (which
    /// must be registered before they are opened).
    pub fn route(folder: &Path, vfs: &'static str) {
        ROUTES.lock().push((folder.to_path_buf(), vfs));
    }

    /// The VFS that files under `path` go through, if a test chose one.
    pub fn of(path: &Path) -> Option<&'static str> {
        let routes = ROUTES.lock();
        routes
            .iter()
            .find(|(folder, _)| path.starts_with(folder))
            .map(|(_, vfs)| *vfs)
    }
}

/// An existing, non-empty shard file must start as every SQLite database
/// does; anything else is not ours to open.
pub fn check_header(path: &Path) -> Result<(), EngineError> {
    use std::io::Read;
    let mut header = [0u8; 16];
    let read = match std::fs::File::open(path) {
        Ok(mut file) => file.read(&mut header),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
    };
    match read {
        Ok(0) => Ok(()),
        Ok(n) if n == header.len() && &header == b"SQLite format 3\0" => Ok(()),
        Ok(_) => Err(EngineError::CorruptFile {
            path: path.to_path_buf(),
            reason: "not an SQLite database (wrong header): not a shard exdaas wrote".into(),
        }),
        Err(e) => Err(EngineError::CorruptFile {
            path: path.to_path_buf(),
            reason: format!("cannot read it: {e}"),
        }),
    }
}

impl ShardFile {
    fn corrupt(&self, reason: String) -> EngineError {
        EngineError::CorruptFile {
            path: self.path.clone(),
            reason,
        }
    }

    async fn connect(&self, create: bool) -> Result<SqliteConnection, EngineError> {
        self.options(&self.path)
            .create_if_missing(create)
            .connect()
            .await
            .map_err(|e| self.corrupt(e.to_string()))
    }

    /// The write connection's options, on `path`.
    fn options(&self, path: &Path) -> SqliteConnectOptions {
        base_options(path)
            .pragma("cache_size", format!("-{}", self.writer_cache_kib))
            .pragma("temp_store", "memory")
            .pragma("journal_size_limit", WAL_SIZE_LIMIT.to_string())
            .synchronous(match self.sync {
                SyncMode::Normal => SqliteSynchronous::Normal,
                SyncMode::Full => SqliteSynchronous::Full,
            })
    }

    /// On a first boot: makes sure a whole shard file is in place. One
    /// there already is left to the checks that follow, unless it is one an
    /// earlier version's interrupted first boot left half-made (holding
    /// nothing, see [`holds_nothing`]): that one is made anew. A new file
    /// is built under a temporary name, checkpointed and synced, renamed
    /// into place and its folder synced: a crash at any moment leaves no
    /// file or a whole one (and at worst the temporary one, removed here).
    async fn finish_creation(&self) -> Result<(), EngineError> {
        let building = building_path(&self.path);
        remove_with_journals(&building)
            .map_err(|e| self.corrupt(format!("cannot remove {}: {e}", building.display())))?;
        if self.path.exists() {
            if !holds_nothing(&self.path).await? {
                return Ok(());
            }
            tracing::info!(shard = self.index, path = %self.path.display(), "a shard file an interrupted first boot left empty is made anew");
            remove_with_journals(&self.path).map_err(|e| self.corrupt(format!("cannot remove it: {e}")))?;
        }
        // Unsynced commits: nothing of the file counts until the final
        // checkpoint, which syncs it.
        let mut conn = self
            .options(&building)
            .create_if_missing(true)
            .synchronous(SqliteSynchronous::Normal)
            .connect()
            .await
            .map_err(|e| self.corrupt(format!("cannot create {}: {e}", building.display())))?;
        let built = self.build(&mut conn).await;
        let closed = conn.close().await;
        built?;
        closed.map_err(|e| shard_error(self.index, e))?;
        // The syncs and the rename on a blocking thread: the shards open
        // together at boot, and the runtime's threads must not wait on disks.
        let (built, path) = (building.clone(), self.path.clone());
        let placed = tokio::task::spawn_blocking(move || -> Result<(), String> {
            crate::durable::fsync(&built).map_err(|e| format!("cannot sync {}: {e}", built.display()))?;
            std::fs::rename(&built, &path).map_err(|e| format!("cannot rename {} to it: {e}", built.display()))?;
            let folder = path.parent().unwrap_or(Path::new("."));
            crate::durable::sync_dir(folder).map_err(|e| format!("cannot sync its folder: {e}"))
        })
        .await
        .unwrap_or_else(|_| Err("the task placing it failed".to_owned()));
        placed.map_err(|reason| self.corrupt(reason))?;
        tracing::debug!(shard = self.index, path = %self.path.display(), "shard file created");
        Ok(())
    }

    /// A new shard file's content: the schema, the mark, the identity, all
    /// checkpointed into the file (whose WAL then goes with the connection).
    async fn build(&self, conn: &mut SqliteConnection) -> Result<(), EngineError> {
        self.migrate_and_mark(conn).await?;
        stamp_identity(conn, self.folder_id, self.index)
            .await
            .map_err(|e| shard_error(self.index, e))?;
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut *conn)
            .await
            .map_err(|e| shard_error(self.index, e))?;
        Ok(())
    }

    async fn writer_on(&self, mut conn: SqliteConnection) -> Result<(SqliteWrites, Opened), EngineError> {
        let file = super::layout::FileIdentity::of(&self.path);
        let meta: Vec<(String, i64)> =
            sqlx::query_as("SELECT key, value FROM shard_meta WHERE key IN ('max_counter_id', 'counter_high')")
                .fetch_all(&mut conn)
                .await
                .map_err(|e| shard_error(self.index, e))?;
        let bound = |name: &str| {
            let value = meta.iter().find(|(key, _)| key == name).map_or(0, |(_, value)| *value);
            u64::try_from(value).unwrap_or(0)
        };
        let ids = IdBounds {
            stored: bound("max_counter_id"),
            counter: bound("counter_high"),
        };
        let may_expire = sqlx::query("SELECT 1 FROM documents WHERE expires_at IS NOT NULL LIMIT 1")
            .fetch_optional(&mut conn)
            .await
            .map_err(|e| shard_error(self.index, e))?
            .is_some();
        let last_seq: i64 = sqlx::query_scalar(
            "SELECT max(coalesce((SELECT max(seq) FROM changes), 0), \
             (SELECT value FROM shard_meta WHERE key = 'feed_floor'))",
        )
        .fetch_one(&mut conn)
        .await
        .map_err(|e| shard_error(self.index, e))?;
        let opened = Opened {
            ids,
            may_expire,
            last_seq: u64::try_from(last_seq).unwrap_or(0),
            schema_seq: 0,
        };
        Ok((
            SqliteWrites::new(self.index, conn, file, self.sync, ids.counter),
            opened,
        ))
    }

    /// Refuses a foreign database: one with tables that is not marked as
    /// an exdaas shard (nor holds our schema from before the mark).
    async fn check_ours(&self, conn: &mut SqliteConnection) -> Result<(), EngineError> {
        let application_id: i32 = sqlx::query_scalar("PRAGMA application_id")
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| self.corrupt(format!("cannot read it: {e}")))?;
        let tables: Vec<String> = sqlx::query_scalar("SELECT name FROM sqlite_schema WHERE type = 'table'")
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.corrupt(format!("cannot read it: {e}")))?;
        let has = |name: &str| tables.iter().any(|t| t == name);
        let ours =
            application_id == APPLICATION_ID || (application_id == 0 && has("documents") && has("_sqlx_migrations"));
        if ours {
            Ok(())
        } else if tables.is_empty() && application_id == 0 {
            // Shard files are created whole (see `finish_creation`): an
            // empty one stands where a shard's data was.
            Err(self.corrupt(format!(
                "empty (no exdaas schema), though {} records it as created: its data is gone; \
                 restore the file (or the folder) from a backup, the server will not start without it",
                super::layout::LAYOUT_FILE
            )))
        } else {
            Err(self.corrupt(format!(
                "a foreign SQLite database (application_id {application_id:#x}, tables {}): not a shard exdaas wrote",
                tables.join(", ")
            )))
        }
    }

    /// Refuses a shard file of another data folder, or of another shard of
    /// this one: what it records must match the layout and its place. A
    /// file from before identities existed takes them, when `stamp`.
    async fn check_identity(&self, conn: &mut SqliteConnection, stamp: bool) -> Result<(), EngineError> {
        let recorded = read_identity(conn)
            .await
            .map_err(|e| self.corrupt(format!("cannot read it: {e}")))?;
        match recorded {
            Identity {
                folder_id: Some(folder),
                ..
            } if folder != self.folder_id => Err(self.corrupt(format!(
                "it belongs to another data folder (it records folder {folder:#x}, {} names {:#x}): \
                 put this folder's own shard file back, or restore the folder from a backup",
                super::layout::LAYOUT_FILE,
                self.folder_id
            ))),
            Identity { shard: Some(shard), .. } if shard != self.index as u64 => Err(self.corrupt(format!(
                "it is shard {shard}'s file, found in shard {}'s place: files were renamed or swapped",
                self.index
            ))),
            Identity {
                folder_id: Some(_),
                shard: Some(_),
            } => Ok(()),
            _ if stamp => stamp_identity(conn, self.folder_id, self.index)
                .await
                .map_err(|e| shard_error(self.index, e)),
            _ => Err(self.corrupt("it records no data folder: it is not the file this server opened".into())),
        }
    }

    /// Checks the file's integrity (it reads the whole file, so only at
    /// boot, and only if `EXDAAS_BOOT_CHECK` says so), then brings the schema
    /// up to date and marks the file as an exdaas shard.
    async fn check_integrity_and_migrate(
        &self,
        conn: &mut SqliteConnection,
        boot_check: bool,
    ) -> Result<(), EngineError> {
        if boot_check {
            let started = std::time::Instant::now();
            let verdict: Vec<String> = sqlx::query_scalar("PRAGMA quick_check")
                .fetch_all(&mut *conn)
                .await
                .map_err(|e| self.corrupt(format!("damaged: {e}")))?;
            if verdict != ["ok"] {
                return Err(self.corrupt(format!("damaged: {}", verdict.join("; "))));
            }
            // The check read every page through this connection's cache:
            // give that memory back rather than keep the whole file's pages.
            sqlx::query("PRAGMA shrink_memory")
                .execute(&mut *conn)
                .await
                .map_err(|e| self.corrupt(e.to_string()))?;
            tracing::debug!(
                shard = self.index,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "integrity check passed"
            );
        }
        self.migrate_and_mark(conn).await
    }

    /// Brings the file's schema up to date (`migrations/`) and marks it as
    /// an exdaas shard: what a new file is built with and what every boot
    /// does to an existing one.
    async fn migrate_and_mark(&self, conn: &mut SqliteConnection) -> Result<(), EngineError> {
        MIGRATOR
            .run(&mut *conn)
            .await
            .map_err(|e| self.corrupt(format!("cannot apply schema: {e}")))?;
        sqlx::query(&format!("PRAGMA application_id = {APPLICATION_ID}"))
            .execute(&mut *conn)
            .await
            .map_err(|e| shard_error(self.index, e))?;
        Ok(())
    }
}

/// Where a shard file is built before it is renamed into place.
fn building_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    path.with_file_name(name)
}

/// Removes an SQLite file and its WAL and shared-memory files, if there.
fn remove_with_journals(path: &Path) -> std::io::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_os_string();
        name.push(suffix);
        match std::fs::remove_file(&name) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// An SQLite file holds nothing: no table but sqlx's `_sqlx_migrations`,
/// empty, and no application id. What a first boot before shard files were
/// created whole could leave when cut short (sqlx commits that table before
/// the first migration): nothing is lost in making it anew, and another
/// program's database, which has tables of its own, is never taken for it.
pub async fn holds_nothing(path: &Path) -> Result<bool, EngineError> {
    let corrupt = |e: sqlx::Error| EngineError::CorruptFile {
        path: path.to_path_buf(),
        reason: format!("cannot read it: {e}"),
    };
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .busy_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(corrupt)?;
    let looked = async {
        let application_id: i32 = sqlx::query_scalar("PRAGMA application_id").fetch_one(&mut conn).await?;
        let tables: Vec<String> = sqlx::query_scalar("SELECT name FROM sqlite_schema WHERE type = 'table'")
            .fetch_all(&mut conn)
            .await?;
        let empty = match tables.as_slice() {
            [] => true,
            [only] if only == "_sqlx_migrations" => {
                sqlx::query_scalar::<_, i64>("SELECT count(*) FROM _sqlx_migrations")
                    .fetch_one(&mut conn)
                    .await?
                    == 0
            }
            _ => false,
        };
        Ok::<_, sqlx::Error>(application_id == 0 && empty)
    }
    .await;
    let _ = conn.close().await;
    looked.map_err(corrupt)
}

/// Which folder and shard a shard file says it belongs to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Identity {
    pub folder_id: Option<u64>,
    pub shard: Option<u64>,
}

/// The identity a shard file records in `shard_meta`.
pub async fn read_identity(conn: &mut SqliteConnection) -> Result<Identity, sqlx::Error> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT key, value FROM shard_meta WHERE key IN ('folder_id', 'shard_index')")
            .fetch_all(&mut *conn)
            .await?;
    let value = |name: &str| {
        rows.iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| u64::try_from(*value).ok())
    };
    Ok(Identity {
        folder_id: value("folder_id"),
        shard: value("shard_index"),
    })
}

/// Records in a shard file which folder and shard it belongs to.
pub async fn stamp_identity(conn: &mut SqliteConnection, folder_id: u64, shard: usize) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT OR REPLACE INTO shard_meta (key, value) VALUES ('folder_id', ?1), ('shard_index', ?2)")
        .bind(i64::try_from(folder_id).unwrap_or(i64::MAX))
        .bind(shard as i64)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
