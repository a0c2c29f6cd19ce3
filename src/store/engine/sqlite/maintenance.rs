//! Operating on a data folder: consistent backups, verified restores,
//! integrity checks and resharding. The `exdaas` subcommands and the admin
//! backup route call these; they work on the files directly, each through
//! its own SQLite connections.
//!
//! - A backup is `VACUUM INTO` of every shard (a consistent snapshot of each,
//!   taken through a read transaction, so it is safe while the server runs),
//!   plus a manifest with each file's document count and SHA-256. A backup
//!   folder is itself a valid data folder.
//! - A restore verifies the manifest (checksums, counts, integrity) before
//!   it copies anything into an empty folder, and writes the layout last.
//! - A check reads every shard whole: SQLite's integrity check, and that
//!   every document sits in the shard its id hashes to.
//! - A reshard (offline: it takes the folder's lock) builds the new shards
//!   as a new generation beside the old one, moving whole buckets, verifies
//!   the counts, then switches by replacing the layout file atomically. A
//!   crash before the switch leaves the old shards in use, untouched.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Row, SqliteConnection};

use super::files::{holds_nothing, read_identity, stamp_identity, APPLICATION_ID, MIGRATOR};
use super::layout::{self, Layout};
use crate::domain::ShardCount;
use crate::domain::{CollectionName, DocId, DocKey};
use crate::store::engine::EngineError;
use crate::store::engine::IdBounds;
use crate::store::placement::{Placement, BUCKETS, SCHEME};

pub const MANIFEST_FILE: &str = "manifest.json";
const MANIFEST_FORMAT: u32 = 1;

/// What a backup holds, written last: a backup without it is incomplete.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format: u32,
    pub exdaas_version: String,
    /// When the backup finished (RFC 3339).
    pub created_at: String,
    pub placement: String,
    pub shards: u32,
    pub files: Vec<ManifestFile>,
}

impl Manifest {
    /// Documents in the whole backup.
    pub fn documents(&self) -> u64 {
        self.files.iter().map(|f| f.documents).sum()
    }
}

/// One shard file of a backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestFile {
    pub shard: u32,
    pub file: String,
    /// Rows in the file's `documents` table.
    pub documents: u64,
    pub bytes: u64,
    pub sha256: String,
}

pub(super) fn folder_error(path: &Path, reason: impl Into<String>) -> EngineError {
    EngineError::DataFolder {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

pub(super) fn file_error(path: &Path, reason: impl Into<String>) -> EngineError {
    EngineError::CorruptFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

pub(super) fn sql_error(path: &Path, err: sqlx::Error) -> EngineError {
    file_error(path, err.to_string())
}

/// The layout of an existing data folder.
pub(super) fn existing_layout(root: &Path) -> Result<Layout, EngineError> {
    layout::read(root)?.ok_or_else(|| {
        folder_error(
            root,
            format!("it holds no {}: not an exdaas data folder", layout::LAYOUT_FILE),
        )
    })
}

pub(super) async fn open_read_only(path: &Path) -> Result<SqliteConnection, EngineError> {
    if !path.exists() {
        return Err(file_error(path, "missing"));
    }
    SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .busy_timeout(std::time::Duration::from_secs(30))
        .connect()
        .await
        .map_err(|e| sql_error(path, e))
}

/// Makes sure `dest` is a new or empty folder, and creates it.
pub(super) fn empty_folder(dest: &Path) -> Result<(), EngineError> {
    match std::fs::read_dir(dest) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(folder_error(dest, "it is not empty"));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(folder_error(dest, format!("cannot read it: {e}"))),
    }
    std::fs::create_dir_all(dest).map_err(|e| folder_error(dest, format!("cannot create it: {e}")))
}

fn sha256_of(path: &Path) -> Result<(String, u64), EngineError> {
    let mut file = std::fs::File::open(path).map_err(|e| file_error(path, format!("cannot read it: {e}")))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(|e| file_error(path, format!("cannot read it: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), bytes))
}

fn fsync(path: &Path) -> Result<(), EngineError> {
    crate::durable::fsync(path).map_err(|e| file_error(path, format!("cannot sync it: {e}")))
}

/// Runs file work (hashing, fsync, copies) on tokio's blocking threads:
/// the admin backup route runs inside the server, whose runtime threads
/// must never wait on a disk.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| EngineError::Internal("a file task panicked"))?
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Takes a consistent snapshot of every shard of the data folder `root`
/// into `dest` (new or empty), with a manifest. Safe while a server runs:
/// each shard is copied inside one read transaction.
pub async fn backup(root: &Path, dest: &Path) -> Result<Manifest, EngineError> {
    let layout = existing_layout(root)?;
    let folder = dest.to_path_buf();
    blocking(move || empty_folder(&folder)).await?;
    let mut files = Vec::new();
    for shard in 0..layout.shards as usize {
        let source = layout.shard_path(root, shard);
        let target = layout::shard_file(dest, shard);
        let mut conn = open_read_only(&source).await?;
        sqlx::query("VACUUM INTO ?1")
            .bind(target.to_string_lossy().into_owned())
            .execute(&mut conn)
            .await
            .map_err(|e| sql_error(&source, e))?;
        conn.close().await.map_err(|e| sql_error(&source, e))?;
        let file = target.clone();
        let (sha256, bytes) = blocking(move || {
            fsync(&file)?;
            sha256_of(&file)
        })
        .await?;
        let documents = count_documents(&target).await?;
        files.push(ManifestFile {
            shard: shard as u32,
            file: file_name(&target),
            documents,
            bytes,
            sha256,
        });
    }
    // The backup is a data folder of its own: generation 0, same shards,
    // whose files record the identity of the folder they came from.
    let backup_layout = Layout {
        generation: 0,
        shards_created: true,
        ..layout.clone()
    };
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        exdaas_version: env!("CARGO_PKG_VERSION").to_owned(),
        created_at: now_rfc3339(),
        placement: SCHEME.to_owned(),
        shards: layout.shards,
        files,
    };
    let (folder, written) = (dest.to_path_buf(), manifest.clone());
    blocking(move || {
        layout::write(&folder, &backup_layout)?;
        write_manifest(&folder, &written)
    })
    .await?;
    Ok(manifest)
}

/// How the names of the backups taken over HTTP begin: what
/// [`backup_room`] counts.
pub const BACKUP_PREFIX: &str = "exdaas-backup-";

/// What a new backup in a folder would meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupRoom {
    /// Backups already there (folders named [`BACKUP_PREFIX`]...).
    pub backups: usize,
    /// Bytes free for an unprivileged user on the folder's disk.
    pub free_bytes: u64,
    /// The data folder's size: a backup is at most about as large.
    pub needed_bytes: u64,
}

/// Creates `dir` if needed and says what a backup of `root` into it would
/// meet: for bounds on backups taken over HTTP.
pub async fn backup_room(root: &Path, dir: &Path) -> Result<BackupRoom, EngineError> {
    let (root, dir) = (root.to_path_buf(), dir.to_path_buf());
    blocking(move || {
        std::fs::create_dir_all(&dir).map_err(|e| folder_error(&dir, format!("cannot create it: {e}")))?;
        let entries = std::fs::read_dir(&dir).map_err(|e| folder_error(&dir, format!("cannot read it: {e}")))?;
        let backups = entries
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().starts_with(BACKUP_PREFIX))
            .count();
        let needed_bytes = std::fs::read_dir(&root)
            .map_err(|e| folder_error(&root, format!("cannot read it: {e}")))?
            .filter_map(|entry| entry.ok()?.metadata().ok())
            .filter(|meta| meta.is_file())
            .map(|meta| meta.len())
            .sum();
        let disk = nix::sys::statvfs::statvfs(&dir)
            .map_err(|e| folder_error(&dir, format!("cannot tell the free space of its disk: {e}")))?;
        // The types are u64 on Linux, narrower on some other systems.
        #[allow(clippy::useless_conversion)]
        let free_bytes = u64::from(disk.blocks_available()).saturating_mul(u64::from(disk.fragment_size()));
        Ok(BackupRoom {
            backups,
            free_bytes,
            needed_bytes,
        })
    })
    .await
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn write_manifest(dest: &Path, manifest: &Manifest) -> Result<(), EngineError> {
    let bytes = serde_json::to_vec_pretty(manifest).map_err(|_| EngineError::Internal("a manifest is JSON"))?;
    crate::durable::write_atomically(&dest.join(MANIFEST_FILE), &bytes)
        .map_err(|e| folder_error(dest, format!("cannot write {MANIFEST_FILE}: {e}")))
}

async fn count_documents(path: &Path) -> Result<u64, EngineError> {
    let mut conn = open_read_only(path).await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM documents")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| sql_error(path, e))?;
    conn.close().await.map_err(|e| sql_error(path, e))?;
    Ok(n as u64)
}

/// Reads and checks a backup's manifest and files: every file there, with
/// its size and checksum, intact, and holding its document count.
pub async fn verify_backup(src: &Path) -> Result<Manifest, EngineError> {
    let manifest_path = src.join(MANIFEST_FILE);
    let bytes = std::fs::read(&manifest_path).map_err(|e| {
        file_error(
            &manifest_path,
            format!("cannot read it ({e}): not a complete exdaas backup"),
        )
    })?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| file_error(&manifest_path, format!("not an exdaas manifest: {e}")))?;
    if manifest.format != MANIFEST_FORMAT || manifest.placement != SCHEME {
        return Err(file_error(
            &manifest_path,
            format!(
                "format {} with placement {:?}; this build reads format {MANIFEST_FORMAT} with {SCHEME:?}",
                manifest.format, manifest.placement
            ),
        ));
    }
    if ShardCount::new(manifest.shards).is_none() || manifest.files.len() != manifest.shards as usize {
        return Err(file_error(
            &manifest_path,
            "its file list does not match its shard count",
        ));
    }
    for (index, entry) in manifest.files.iter().enumerate() {
        let path = src.join(&entry.file);
        if entry.shard as usize != index || path != layout::shard_file(src, index) {
            return Err(file_error(
                &manifest_path,
                format!("entry {index} names {:?}", entry.file),
            ));
        }
        let file = path.clone();
        let (sha256, bytes) = blocking(move || sha256_of(&file)).await?;
        if (sha256.as_str(), bytes) != (entry.sha256.as_str(), entry.bytes) {
            return Err(file_error(
                &path,
                "its checksum or size differs from the manifest: the backup is damaged",
            ));
        }
        let problems = integrity_problems(&path).await?;
        if let Some(problem) = problems.first() {
            return Err(file_error(&path, format!("damaged: {problem}")));
        }
        let documents = count_documents(&path).await?;
        if documents != entry.documents {
            return Err(file_error(
                &path,
                format!("holds {documents} documents, the manifest says {}", entry.documents),
            ));
        }
    }
    Ok(manifest)
}

/// Restores the backup at `src` into the data folder `dest`, which must be
/// empty (or not exist). Nothing is copied until the whole backup checks
/// out; the layout file, written last, makes the folder usable.
pub async fn restore(src: &Path, dest: &Path) -> Result<Manifest, EngineError> {
    let manifest = verify_backup(src).await?;
    empty_folder(dest)?;
    let _lock = layout::lock(dest)?;
    for entry in &manifest.files {
        let from = src.join(&entry.file);
        let to = layout::shard_file(dest, entry.shard as usize);
        let partial = to.with_extension("restoring");
        std::fs::copy(&from, &partial).map_err(|e| file_error(&to, format!("cannot copy {}: {e}", from.display())))?;
        fsync(&partial)?;
        std::fs::rename(&partial, &to).map_err(|e| file_error(&to, format!("cannot rename into place: {e}")))?;
    }
    // A restored folder is a folder of its own: its shards take its new
    // identity, so they cannot pass for the original's.
    let folder_id = layout::new_folder_id()?;
    for entry in &manifest.files {
        let path = layout::shard_file(dest, entry.shard as usize);
        let mut conn = SqliteConnectOptions::new()
            .filename(&path)
            .synchronous(SqliteSynchronous::Full)
            .connect()
            .await
            .map_err(|e| sql_error(&path, e))?;
        stamp_identity(&mut conn, folder_id, entry.shard as usize)
            .await
            .map_err(|e| sql_error(&path, e))?;
        conn.close().await.map_err(|e| sql_error(&path, e))?;
    }
    crate::durable::sync_dir(dest).map_err(|e| folder_error(dest, format!("cannot sync it: {e}")))?;
    let shards = ShardCount::new(manifest.shards).ok_or(EngineError::Internal("a verified shard count"))?;
    layout::write(dest, &Layout::new(shards, 0, folder_id))?;
    Ok(manifest)
}

/// What `check` found in one shard.
#[derive(Debug, Clone, Default)]
pub struct ShardReport {
    pub shard: usize,
    pub path: PathBuf,
    pub documents: u64,
    pub problems: Vec<String>,
}

/// SQLite's full integrity check of a file: the problems it lists.
async fn integrity_problems(path: &Path) -> Result<Vec<String>, EngineError> {
    let mut conn = open_read_only(path).await?;
    let verdict: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await
        .map_err(|e| sql_error(path, e))?;
    conn.close().await.map_err(|e| sql_error(path, e))?;
    Ok(if verdict == ["ok"] { Vec::new() } else { verdict })
}

/// Checks every shard of `root`: SQLite's integrity check, the file is an
/// exdaas shard with its schema (as the server, which refuses to boot
/// without it), every document sits in the shard its id hashes to with the
/// bucket it hashes to, and the id ceiling covers every counter id. A shard
/// whose file a first boot cut short did not make yet is no problem: the
/// next boot makes it. A shard file beyond the count stops the check as it
/// stops the boot. Read-only: safe while a server runs.
pub async fn check(root: &Path) -> Result<Vec<ShardReport>, EngineError> {
    let layout = existing_layout(root)?;
    layout::check_shard_files(root, &layout)?;
    let shards = ShardCount::new(layout.shards).ok_or(EngineError::Internal("a layout with no shards"))?;
    let placement = Placement::new(shards);
    let mut reports = Vec::new();
    for shard in 0..layout.shards as usize {
        let path = layout.shard_path(root, shard);
        let mut report = ShardReport {
            shard,
            path: path.clone(),
            ..ShardReport::default()
        };
        // A first boot cut short may have left a shard without a file, or
        // with one holding nothing: the next boot creates it, as new.
        if !layout.shards_created && (!path.exists() || holds_nothing(&path).await?) {
            reports.push(report);
            continue;
        }
        report.problems = integrity_problems(&path).await?;
        let mut conn = open_read_only(&path).await?;
        let application_id: i32 = sqlx::query_scalar("PRAGMA application_id")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| sql_error(&path, e))?;
        if application_id != APPLICATION_ID {
            report
                .problems
                .push(format!("application_id is {application_id:#x}, not exdaas's"));
        }
        let tables: Vec<String> = sqlx::query_scalar("SELECT name FROM sqlite_schema WHERE type = 'table'")
            .fetch_all(&mut conn)
            .await
            .map_err(|e| sql_error(&path, e))?;
        if !["documents", "shard_meta"]
            .iter()
            .all(|t| tables.iter().any(|name| name == t))
        {
            let tables = if tables.is_empty() {
                "none".to_owned()
            } else {
                tables.join(", ")
            };
            report.problems.push(format!(
                "no exdaas schema (tables: {tables}): not a shard file, or one whose data is gone"
            ));
            conn.close().await.map_err(|e| sql_error(&path, e))?;
            reports.push(report);
            continue;
        }
        let identity = read_identity(&mut conn).await.map_err(|e| sql_error(&path, e))?;
        if identity.folder_id.is_some_and(|id| Some(id) != layout.folder_id) {
            report.problems.push(format!(
                "it records another data folder ({:#x}) than {} names",
                identity.folder_id.unwrap_or_default(),
                layout::LAYOUT_FILE
            ));
        }
        if identity.shard.is_some_and(|recorded| recorded != shard as u64) {
            report.problems.push(format!(
                "it is shard {}'s file, in shard {shard}'s place",
                identity.shard.unwrap_or_default()
            ));
        }
        let ceiling: i64 = sqlx::query_scalar("SELECT value FROM shard_meta WHERE key = 'max_counter_id'")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| sql_error(&path, e))?;
        let mut rows = sqlx::query("SELECT collection, id, bucket FROM documents").fetch(&mut conn);
        use futures_util::TryStreamExt;
        while let Some(row) = rows.try_next().await.map_err(|e| sql_error(&path, e))? {
            report.documents += 1;
            let collection: &str = row.try_get("collection").unwrap_or_default();
            let id: &str = row.try_get("id").unwrap_or_default();
            let stored_bucket: i64 = row.try_get("bucket").unwrap_or(-1);
            let (Ok(c), Ok(i)) = (CollectionName::parse(collection), DocId::parse(id)) else {
                report
                    .problems
                    .push(format!("{collection}/{id}: not a valid collection name and id"));
                continue;
            };
            let key = DocKey::new(c, i);
            let bucket = Placement::bucket_of(&key);
            if i64::from(bucket) != stored_bucket {
                report
                    .problems
                    .push(format!("{key}: stored in bucket {stored_bucket}, hashes to {bucket}"));
            }
            if placement.shard_of_bucket(bucket) != shard {
                report.problems.push(format!(
                    "{key}: stored in shard {shard}, belongs in shard {}",
                    placement.shard_of_bucket(bucket)
                ));
            }
            if key.id.as_counter_value().is_some_and(|n| n as i64 > ceiling) {
                report.problems.push(format!("{key}: above the id ceiling {ceiling}"));
            }
        }
        drop(rows);
        conn.close().await.map_err(|e| sql_error(&path, e))?;
        reports.push(report);
    }
    Ok(reports)
}

/// What a reshard did.
#[derive(Debug, Clone)]
pub struct ReshardReport {
    pub from: u32,
    pub to: u32,
    pub documents: u64,
    pub elapsed: std::time::Duration,
}

/// Moves the data folder `root` from its shard count to `to` shards. Takes
/// the folder's lock, so it refuses while a server (or another reshard)
/// uses the folder.
pub async fn reshard(root: &Path, to: ShardCount) -> Result<ReshardReport, EngineError> {
    let started = Instant::now();
    let _lock = layout::lock(root)?;
    let old = existing_layout(root)?;
    let from = old.shards;
    // First, whatever the count: a reshard killed after its switch but
    // before it removed the old shards left them, and a run to the same
    // count is how they go.
    remove_stale_generations(root, old.generation)?;
    if from == to.get() {
        return Ok(ReshardReport {
            from,
            to: from,
            documents: 0,
            elapsed: started.elapsed(),
        });
    }
    let folder_id = match old.folder_id {
        Some(id) => id,
        None => layout::new_folder_id()?,
    };
    let new = Layout::new(to, old.generation + 1, folder_id);
    let building = root.join(format!("gen-{}.building", new.generation));
    std::fs::create_dir_all(&building).map_err(|e| folder_error(&building, format!("cannot create it: {e}")))?;

    // The id ceilings of every new shard cover every old one's.
    let mut ceilings: BTreeMap<String, i64> = BTreeMap::new();
    let mut before: BTreeMap<String, i64> = BTreeMap::new();
    for shard in 0..from as usize {
        let path = old.shard_path(root, shard);
        let mut conn = open_read_only(&path).await?;
        let bounds = shard_bounds(&mut conn, &path).await?;
        for (key, value) in [("max_counter_id", bounds.stored), ("counter_high", bounds.counter)] {
            let ceiling = ceilings.entry(key.to_owned()).or_default();
            *ceiling = (*ceiling).max(i64::try_from(value).unwrap_or(i64::MAX));
        }
        add_counts(&mut before, &mut conn, &path).await?;
        conn.close().await.map_err(|e| sql_error(&path, e))?;
    }

    let mut after: BTreeMap<String, i64> = BTreeMap::new();
    for target in 0..to.get() as usize {
        let path = layout::shard_file(&building, target);
        let mut conn = create_shard_file(&path).await?;
        stamp_identity(&mut conn, folder_id, target)
            .await
            .map_err(|e| sql_error(&path, e))?;
        for source in 0..from as usize {
            // The buckets that live on `source` now and on `target` after.
            let buckets: Vec<u32> = (0..BUCKETS)
                .filter(|b| (b % from) as usize == source && (b % to.get()) as usize == target)
                .collect();
            if buckets.is_empty() {
                continue;
            }
            let old_path = old.shard_path(root, source);
            move_buckets(&mut conn, &path, &old_path, &buckets).await?;
        }
        // The new shards' feeds start empty: with documents from before,
        // `since=0` must not pass for their whole history (a floor above 0
        // makes it answer 410).
        let floor = i64::from(before.values().any(|&n| n > 0));
        let meta = ceilings
            .iter()
            .map(|(key, value)| (key.as_str(), *value))
            .chain([("feed_floor", floor)]);
        for (key, ceiling) in meta {
            sqlx::query("UPDATE shard_meta SET value = ?1 WHERE key = ?2")
                .bind(ceiling)
                .bind(key)
                .execute(&mut conn)
                .await
                .map_err(|e| sql_error(&path, e))?;
        }
        let misplaced: i64 = sqlx::query_scalar("SELECT count(*) FROM documents WHERE bucket % ?1 != ?2")
            .bind(i64::from(to.get()))
            .bind(target as i64)
            .fetch_one(&mut conn)
            .await
            .map_err(|e| sql_error(&path, e))?;
        if misplaced != 0 {
            return Err(file_error(
                &path,
                format!("{misplaced} documents landed in the wrong shard"),
            ));
        }
        add_counts(&mut after, &mut conn, &path).await?;
        seal_shard_file(conn, &path).await?;
    }
    if before != after {
        return Err(folder_error(
            root,
            format!("the new shards hold other document counts than the old ones ({after:?} against {before:?}); nothing was switched"),
        ));
    }

    // Switch: the new generation's folder takes its name, then the layout
    // file names it. Until that rename, the old layout and shards stand.
    let final_dir = new.shard_dir(root);
    std::fs::rename(&building, &final_dir)
        .map_err(|e| folder_error(&final_dir, format!("cannot rename into place: {e}")))?;
    crate::durable::sync_dir(root).map_err(|e| folder_error(root, format!("cannot sync it: {e}")))?;
    layout::write(root, &new)?;
    remove_generation(root, &old)?;
    Ok(ReshardReport {
        from,
        to: to.get(),
        documents: after.values().sum::<i64>() as u64,
        elapsed: started.elapsed(),
    })
}

/// The id counter's bounds a shard records. A shard from before
/// `counter_high` restarts the counter at its `max_counter_id`, as the
/// server would after migrating it.
pub(super) async fn shard_bounds(conn: &mut SqliteConnection, path: &Path) -> Result<IdBounds, EngineError> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT key, value FROM shard_meta WHERE key IN ('max_counter_id', 'counter_high')")
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| sql_error(path, e))?;
    let value = |name: &str| rows.iter().find(|(key, _)| key == name).map(|(_, v)| *v);
    let stored = value("max_counter_id").unwrap_or(0);
    Ok(IdBounds {
        stored: u64::try_from(stored).unwrap_or(0),
        counter: u64::try_from(value("counter_high").unwrap_or(stored)).unwrap_or(0),
    })
}

/// Finishes a shard file built by bulk load: its WAL checkpointed into it,
/// the connection closed, the file synced.
pub(super) async fn seal_shard_file(mut conn: SqliteConnection, path: &Path) -> Result<(), EngineError> {
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut conn)
        .await
        .map_err(|e| sql_error(path, e))?;
    conn.close().await.map_err(|e| sql_error(path, e))?;
    fsync(path)
}

/// Adds the connection's per-collection document counts to `counts`.
async fn add_counts(
    counts: &mut BTreeMap<String, i64>,
    conn: &mut SqliteConnection,
    path: &Path,
) -> Result<(), EngineError> {
    let rows = sqlx::query("SELECT collection, count(*) AS n FROM documents GROUP BY collection")
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| sql_error(path, e))?;
    for row in rows {
        let name: String = row.try_get("collection").map_err(|e| sql_error(path, e))?;
        let n: i64 = row.try_get("n").map_err(|e| sql_error(path, e))?;
        *counts.entry(name).or_default() += n;
    }
    Ok(())
}

/// A new, empty shard file with the current schema, set up for a bulk load.
pub(super) async fn create_shard_file(path: &Path) -> Result<SqliteConnection, EngineError> {
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .pragma("cache_size", "-262144")
        .connect()
        .await
        .map_err(|e| sql_error(path, e))?;
    MIGRATOR
        .run(&mut conn)
        .await
        .map_err(|e| file_error(path, format!("cannot apply schema: {e}")))?;
    sqlx::query(&format!("PRAGMA application_id = {APPLICATION_ID}"))
        .execute(&mut conn)
        .await
        .map_err(|e| sql_error(path, e))?;
    Ok(conn)
}

/// Copies the documents of `buckets` from the shard file `from` into the
/// connection's shard, in one transaction: whole buckets, found by a scan
/// of `from` (no index by bucket: it would cost every write a page), no
/// document rehashed.
async fn move_buckets(
    conn: &mut SqliteConnection,
    path: &Path,
    from: &Path,
    buckets: &[u32],
) -> Result<(), EngineError> {
    let list = serde_json::to_string(buckets).map_err(|_| EngineError::Internal("buckets are JSON"))?;
    sqlx::query("ATTACH DATABASE ?1 AS old")
        .bind(from.to_string_lossy().into_owned())
        .execute(&mut *conn)
        .await
        .map_err(|e| sql_error(from, e))?;
    let copied = sqlx::query(
        "INSERT INTO documents (collection, id, bucket, version, updated_at, expires_at, data) \
         SELECT collection, id, bucket, version, updated_at, expires_at, data FROM old.documents \
         WHERE bucket IN (SELECT value FROM json_each(?1))",
    )
    .bind(list)
    .execute(&mut *conn)
    .await;
    // Every shard holds every collection's schema: the newest one of each
    // goes along. So do the index declarations, unbuilt: the server builds
    // each new shard's entries when it starts.
    let schemas = match copied {
        Ok(_) => sqlx::query(
            "INSERT INTO collection_schemas (collection, version, schema, updated_at) \
             SELECT collection, version, schema, updated_at FROM old.collection_schemas WHERE true \
             ON CONFLICT (collection) DO UPDATE SET version = excluded.version, schema = excluded.schema, \
             updated_at = excluded.updated_at WHERE excluded.version > collection_schemas.version;\
             INSERT INTO collection_indexes (collection, name, fields, built, built_upto, indexed, created_at) \
             SELECT collection, name, fields, 0, NULL, 0, created_at FROM old.collection_indexes WHERE true \
             ON CONFLICT (collection, name) DO NOTHING;",
        )
        .execute(&mut *conn)
        .await
        .map(|_| ()),
        Err(e) => Err(e),
    };
    let detached = sqlx::query("DETACH DATABASE old").execute(&mut *conn).await;
    schemas.map_err(|e| sql_error(path, e))?;
    detached.map_err(|e| sql_error(path, e))?;
    Ok(())
}

/// Removes the shard files of `layout`'s generation (after a switch).
fn remove_generation(root: &Path, layout: &Layout) -> Result<(), EngineError> {
    if layout.generation > 0 {
        let dir = layout.shard_dir(root);
        return std::fs::remove_dir_all(&dir)
            .map_err(|e| folder_error(&dir, format!("cannot remove the old shards: {e}")));
    }
    for shard in 0..layout.shards as usize {
        let path = layout.shard_path(root, shard);
        for suffix in ["", "-wal", "-shm"] {
            let file = PathBuf::from(format!("{}{suffix}", path.display()));
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(file_error(&file, format!("cannot remove the old shard: {e}"))),
            }
        }
    }
    Ok(())
}

/// Removes what an interrupted reshard left: generation folders other than
/// the current one (finished or half built), and, when the current one is
/// not generation 0, old shard files in the folder itself.
fn remove_stale_generations(root: &Path, current: u32) -> Result<(), EngineError> {
    let entries = std::fs::read_dir(root).map_err(|e| folder_error(root, format!("cannot list it: {e}")))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let stale_dir = name.starts_with("gen-") && name != format!("gen-{current}");
        let stale_file = current > 0 && name.starts_with("shard-") && name.contains(".sqlite3");
        if stale_dir {
            tracing::warn!(path = %path.display(), "removing shards left by an interrupted reshard");
            std::fs::remove_dir_all(&path).map_err(|e| folder_error(&path, format!("cannot remove it: {e}")))?;
        } else if stale_file {
            tracing::warn!(path = %path.display(), "removing a shard file left by an interrupted reshard");
            std::fs::remove_file(&path).map_err(|e| folder_error(&path, format!("cannot remove it: {e}")))?;
        }
    }
    Ok(())
}
