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
//!
//! Each folder has an identity, a random number in the layout that every
//! shard file also records with its own index (`shard_meta`), so a boot
//! refuses a shard file that is missing, that came from another folder, or
//! that sits under another shard's name, instead of serving without it.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::domain::ShardCount;
use crate::store::engine::EngineError;
use crate::store::placement::SCHEME;

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
    /// The folder's identity, recorded in every shard file too. `None` in
    /// folders from before it existed: the next boot assigns one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder_id: Option<u64>,
    /// Every shard file of this generation was created. Only a first boot
    /// interrupted before it created them all leaves this `false`; then the
    /// missing ones may be created, else a missing one stops the boot.
    #[serde(default = "created")]
    pub shards_created: bool,
}

fn created() -> bool {
    true
}

impl Layout {
    /// The layout of a folder (or a generation) whose shard files all exist.
    pub fn new(shards: ShardCount, generation: u32, folder_id: u64) -> Self {
        Self {
            format: FORMAT,
            shards: shards.get(),
            placement: SCHEME.to_owned(),
            generation,
            folder_id: Some(folder_id),
            shards_created: true,
        }
    }

    /// The folder's identity (see the module doc).
    pub fn id(&self) -> u64 {
        self.folder_id.unwrap_or_default()
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

/// A new folder identity: random, below 2^53 so JSON readers keep it exact
/// and SQLite stores it as it is.
pub fn new_folder_id() -> Result<u64, EngineError> {
    let random = getrandom::u64().map_err(|e| EngineError::DataFolder {
        path: PathBuf::new(),
        reason: format!("no randomness for a folder identity: {e}"),
    })?;
    Ok((random >> 11).max(1))
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
pub fn lock(dir: &Path) -> Result<FolderLock, EngineError> {
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

fn folder_error(dir: &Path, reason: String) -> EngineError {
    EngineError::DataFolder {
        path: dir.to_path_buf(),
        reason,
    }
}

/// Creates the folder if needed, checks it is writable, takes its lock,
/// and checks (or, on a new folder, records) the shard count and placement
/// scheme. Shard files the layout does not account for stop the start, and
/// so does a missing one the layout says was created. A folder without an
/// identity gets one. Call [`shards_created`] once every shard is open.
pub fn prepare(dir: &Path, shards: ShardCount) -> Result<(Layout, FolderLock), EngineError> {
    fs::create_dir_all(dir).map_err(|e| folder_error(dir, format!("cannot create it: {e}")))?;
    let probe = dir.join(".exdaas-write-probe");
    fs::write(&probe, b"probe")
        .and_then(|()| fs::remove_file(&probe))
        .map_err(|e| folder_error(dir, format!("cannot write in it: {e}")))?;
    let lock = lock(dir)?;

    let layout = match read(dir)? {
        Some(found) => {
            if found.shards != shards.get() {
                return Err(EngineError::ShardCountMismatch {
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
            let layout = Layout {
                shards_created: false,
                ..Layout::new(shards, 0, new_folder_id()?)
            };
            write(dir, &layout)?;
            layout
        }
    };
    check_shard_files(dir, &layout)?;
    if layout.shards_created {
        check_none_missing(dir, &layout)?;
    }
    let layout = match layout.folder_id {
        Some(_) => layout,
        None => {
            let layout = Layout {
                folder_id: Some(new_folder_id()?),
                ..layout
            };
            write(dir, &layout)?;
            layout
        }
    };
    Ok((layout, lock))
}

/// Records that every shard file of `layout` exists (after a first boot
/// created them).
pub fn shards_created(dir: &Path, layout: &Layout) -> Result<(), EngineError> {
    if layout.shards_created {
        return Ok(());
    }
    write(
        dir,
        &Layout {
            shards_created: true,
            ..layout.clone()
        },
    )
}

/// Every shard file the layout names must be there: one gone would be
/// replaced by an empty file, and its acknowledged documents would read as
/// never written.
fn check_none_missing(root: &Path, layout: &Layout) -> Result<(), EngineError> {
    for index in 0..layout.shards as usize {
        let path = layout.shard_path(root, index);
        if !path.exists() {
            return Err(EngineError::CorruptFile {
                path,
                reason: format!(
                    "missing: {LAYOUT_FILE} lists {} shards and this is shard {index}; restore the file (or the folder) from a backup, the server will not start without it",
                    layout.shards
                ),
            });
        }
    }
    Ok(())
}

/// The folder's layout, if it has one.
pub fn read(dir: &Path) -> Result<Option<Layout>, EngineError> {
    let path = dir.join(LAYOUT_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(folder_error(dir, format!("cannot read {LAYOUT_FILE}: {e}"))),
    };
    let found: Layout = serde_json::from_slice(&bytes).map_err(|e| EngineError::CorruptFile {
        path: path.clone(),
        reason: format!("not an exdaas layout file: {e}"),
    })?;
    if found.placement != SCHEME || found.format != FORMAT {
        return Err(EngineError::CorruptFile {
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
pub fn write(dir: &Path, layout: &Layout) -> Result<(), EngineError> {
    let bytes = serde_json::to_vec_pretty(layout).map_err(std::io::Error::other);
    bytes
        .and_then(|bytes| crate::durable::write_atomically(&dir.join(LAYOUT_FILE), &bytes))
        .map_err(|e| folder_error(dir, format!("cannot write {LAYOUT_FILE}: {e}")))
}

/// A shard file numbered past the shard count is not ours to ignore: it
/// may hold documents this layout cannot reach.
pub(super) fn check_shard_files(root: &Path, layout: &Layout) -> Result<(), EngineError> {
    let dir = layout.shard_dir(root);
    let entries = fs::read_dir(&dir).map_err(|e| folder_error(&dir, format!("cannot list it: {e}")))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(index) = name.to_str().and_then(shard_index) else {
            continue;
        };
        if index >= layout.shards as usize {
            return Err(EngineError::CorruptFile {
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

/// Which file a path named when it was opened (device and inode), to notice
/// it being deleted or replaced under a running server.
#[derive(Debug, Clone)]
pub struct FileIdentity {
    pub path: PathBuf,
    #[cfg(unix)]
    id: Option<(u64, u64)>,
}

impl FileIdentity {
    pub fn of(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            #[cfg(unix)]
            id: Self::current(path),
        }
    }

    #[cfg(unix)]
    fn current(path: &Path) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }

    /// The path still names the file that was opened.
    pub fn still_there(&self) -> bool {
        #[cfg(unix)]
        {
            self.id.is_some() && Self::current(&self.path) == self.id
        }
        #[cfg(not(unix))]
        {
            self.path.exists()
        }
    }
}
