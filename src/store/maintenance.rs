//! Maintenance of the documents' home, for the CLI and the admin API: a
//! backup, a restore, a check, a reshard (a data folder's), and a move
//! between a data folder and a database. The work is the engines'; this
//! module is the one door to it, answering in the store's error, so nothing
//! above the store reaches into an engine.

use std::path::Path;

use super::engine::{sqlite, transfer};
use super::StoreError;
use crate::domain::ShardCount;

pub use sqlite::maintenance::{
    BackupRoom, Manifest, ManifestFile, ReshardReport, ShardReport, BACKUP_PREFIX, MANIFEST_FILE,
};
pub use transfer::{Migrated, Progress, Stage};

/// A consistent backup of the data folder `root` into the new folder
/// `dest`, taken while a server may run on it.
pub async fn backup(root: &Path, dest: &Path) -> Result<Manifest, StoreError> {
    Ok(sqlite::maintenance::backup(root, dest).await?)
}

/// What a backup of `root` into the folder `dir` would meet: the backups
/// there, the room its disk has, the room the backup needs.
pub async fn backup_room(root: &Path, dir: &Path) -> Result<BackupRoom, StoreError> {
    Ok(sqlite::maintenance::backup_room(root, dir).await?)
}

/// Restores the backup `src` into the data folder `dest` (no server
/// running on it), after checking the backup against its manifest.
pub async fn restore(src: &Path, dest: &Path) -> Result<Manifest, StoreError> {
    Ok(sqlite::maintenance::restore(src, dest).await?)
}

/// Checks every shard file of the data folder `root`.
pub async fn check(root: &Path) -> Result<Vec<ShardReport>, StoreError> {
    Ok(sqlite::maintenance::check(root).await?)
}

/// Moves the data folder `root` (no server running on it) to `to` shards.
pub async fn reshard(root: &Path, to: ShardCount) -> Result<ReshardReport, StoreError> {
    Ok(sqlite::maintenance::reshard(root, to).await?)
}

/// Copies the data folder `root` into the empty database at `url`, then
/// verifies the copy.
pub async fn folder_to_database(
    root: &Path,
    url: &str,
    report: &mut dyn FnMut(Progress),
) -> Result<Migrated, StoreError> {
    Ok(transfer::folder_to_database(root, url, report).await?)
}

/// Copies the database at `url` into the empty data folder `root`, then
/// verifies the copy.
pub async fn database_to_folder(
    url: &str,
    root: &Path,
    report: &mut dyn FnMut(Progress),
) -> Result<Migrated, StoreError> {
    Ok(transfer::database_to_folder(url, root, report).await?)
}
