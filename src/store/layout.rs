//! The data folder: the shard files, `exdaas-layout.json`, which records the
//! shard count and placement scheme they were written with, and
//! `exdaas.lock`, held by the one process using the folder.
//!
//! The layout file is the folder's single point of truth: a server started
//! with another `SHARD_LIMIT` refuses instead of hiding documents on shards
//! it no longer looks at, and resharding switches to a new set of shard
//! files by replacing this one file atomically. Generation 0 keeps its shard
//! files in the folder itself (as every folder did before resharding
//! existed); generation `g` keeps them in `gen-g/`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::placement::{ShardCount, SCHEME};
use super::StoreError;

pub const LAYOUT_FILE: &str = "exdaas-layout.json";
pub const LOCK_FILE: &str = "exdaas.lock";
const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Layout {
    pub format: u32,
    pub shards: u32,
    pub placement: String,
    /// Which set of shard files is current (see the module doc).
    #[serde(default)]
    pub generation: u32,
}

impl Layout {
    /// A new folder's layout.
    pub fn new(shards: ShardCount, generation: u32) -> Self {
        Self {
            format: FORMAT,
            shards: shards.get(),
            placement: SCHEME.to_owned(),
            generation,
        }
    }

    /// The folder holding this generation's shard files.
    pub fn shard_dir(&self, root: &Path) -> PathBuf {
        generation_dir(root, self.generation)
    }

    /// Path of shard `index`'s SQLite file.
    pub fn shard_path(&self, root: &Path, index: usize) -> PathBuf {
        shard_file(&self.shard_dir(root), index)
    }
}

/// The folder of generation `generation`'s shard files.
pub fn generation_dir(root: &Path, generation: u32) -> PathBuf {
    if generation == 0 {
        root.to_path_buf()
    } else {
        root.join(format!("gen-{generation}"))
    }
}

/// The name of shard `index`'s file in a folder of shard files.
pub fn shard_file(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("shard-{index:04}.sqlite3"))
}

/// The index of a shard file's name (`shard-0003.sqlite3` is 3).
fn shard_index(name: &str) -> Option<usize> {
    name.strip_prefix("shard-")?.strip_suffix(".sqlite3")?.parse().ok()
}

/// The exclusive hold of a data folder by one process; released on drop.
#[derive(Debug)]
pub struct FolderLock {
    _file: fs::File,
}

/// Takes the folder's lock, or says which process-independent fact stops
/// it: another exdaas (server, reshard or restore) is using the folder.
pub fn lock(dir: &Path) -> Result<FolderLock, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| folder_error(dir, format!("cannot open {LOCK_FILE}: {e}")))?;
    match file.try_lock() {
        Ok(()) => Ok(FolderLock { _file: file }),
        Err(fs::TryLockError::WouldBlock) => Err(folder_error(
            dir,
            format!("another exdaas process (a server, a reshard or a restore) is using it: {LOCK_FILE} is locked"),
        )),
        Err(fs::TryLockError::Error(e)) => Err(folder_error(dir, format!("cannot lock {LOCK_FILE}: {e}"))),
    }
}

fn folder_error(dir: &Path, reason: String) -> StoreError {
    StoreError::DataFolder {
        path: dir.to_path_buf(),
        reason,
    }
}

/// Creates the folder if needed, checks it is writable, takes its lock,
/// and checks (or, on a new folder, records) the shard count and placement
/// scheme. Shard files the layout does not account for stop the start.
pub fn prepare(dir: &Path, shards: ShardCount) -> Result<(Layout, FolderLock), StoreError> {
    fs::create_dir_all(dir).map_err(|e| folder_error(dir, format!("cannot create it: {e}")))?;
    let probe = dir.join(".exdaas-write-probe");
    fs::write(&probe, b"probe")
        .and_then(|()| fs::remove_file(&probe))
        .map_err(|e| folder_error(dir, format!("cannot write in it: {e}")))?;
    let lock = lock(dir)?;

    let layout = match read(dir)? {
        Some(found) => {
            if found.shards != shards.get() {
                return Err(StoreError::ShardCountMismatch {
                    path: dir.to_path_buf(),
                    on_disk: found.shards,
                    configured: shards.get(),
                });
            }
            found
        }
        None => {
            if shard_file(dir, 0).exists() {
                return Err(folder_error(
                    dir,
                    format!("it holds shard files but no {LAYOUT_FILE}; refusing to guess how they were placed"),
                ));
            }
            let layout = Layout::new(shards, 0);
            write(dir, &layout)?;
            layout
        }
    };
    check_shard_files(dir, &layout)?;
    Ok((layout, lock))
}

/// The folder's layout, if it has one.
pub fn read(dir: &Path) -> Result<Option<Layout>, StoreError> {
    let path = dir.join(LAYOUT_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(folder_error(dir, format!("cannot read {LAYOUT_FILE}: {e}"))),
    };
    let found: Layout = serde_json::from_slice(&bytes).map_err(|e| StoreError::CorruptFile {
        path: path.clone(),
        reason: format!("not an exdaas layout file: {e}"),
    })?;
    if found.placement != SCHEME || found.format != FORMAT {
        return Err(StoreError::CorruptFile {
            path,
            reason: format!(
                "written with placement {:?} (format {}), this build uses {SCHEME:?} (format {FORMAT})",
                found.placement, found.format
            ),
        });
    }
    Ok(Some(found))
}

/// Records `layout`, atomically: the switch point of a reshard or restore.
pub fn write(dir: &Path, layout: &Layout) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(layout).map_err(std::io::Error::other);
    bytes
        .and_then(|bytes| write_atomically(&dir.join(LAYOUT_FILE), &bytes))
        .map_err(|e| folder_error(dir, format!("cannot write {LAYOUT_FILE}: {e}")))
}

/// A shard file numbered past the shard count is not ours to ignore: it
/// may hold documents this layout cannot reach.
fn check_shard_files(root: &Path, layout: &Layout) -> Result<(), StoreError> {
    let dir = layout.shard_dir(root);
    let entries = fs::read_dir(&dir).map_err(|e| folder_error(&dir, format!("cannot list it: {e}")))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(index) = name.to_str().and_then(shard_index) else {
            continue;
        };
        if index >= layout.shards as usize {
            return Err(StoreError::CorruptFile {
                path: entry.path(),
                reason: format!(
                    "a shard file beyond the {} shards of {LAYOUT_FILE}: not part of this data folder's layout",
                    layout.shards
                ),
            });
        }
    }
    Ok(())
}

/// Write to a temporary file, fsync, rename over the target, fsync the folder:
/// a crash leaves either the old file or the new one, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Makes a folder's entries (creations, renames) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}
