//! The data folder: one SQLite file per shard plus `exdaas-layout.json`, which
//! records the shard count and placement scheme the folder was written with,
//! so a server started with another `SHARD_LIMIT` refuses instead of hiding
//! documents on shards it no longer looks at.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::placement::{ShardCount, SCHEME};
use super::StoreError;

pub const LAYOUT_FILE: &str = "exdaas-layout.json";
const FORMAT: u32 = 1;

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Layout {
    pub format: u32,
    pub shards: u32,
    pub placement: String,
}

/// Path of shard `index`'s SQLite file.
pub fn shard_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("shard-{index:04}.sqlite3"))
}

/// Creates the folder if needed, checks it is writable, and checks (or, on a
/// new folder, records) the shard count and placement scheme.
pub fn prepare(dir: &Path, shards: ShardCount) -> Result<Layout, StoreError> {
    let folder_error = |reason: String| StoreError::DataFolder {
        path: dir.to_path_buf(),
        reason,
    };
    fs::create_dir_all(dir).map_err(|e| folder_error(format!("cannot create it: {e}")))?;
    let probe = dir.join(".exdaas-write-probe");
    fs::write(&probe, b"probe")
        .and_then(|()| fs::remove_file(&probe))
        .map_err(|e| folder_error(format!("cannot write in it: {e}")))?;

    let path = dir.join(LAYOUT_FILE);
    let wanted = Layout {
        format: FORMAT,
        shards: shards.get(),
        placement: SCHEME.to_owned(),
    };
    match fs::read(&path) {
        Ok(bytes) => {
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
            if found.shards != shards.get() {
                return Err(StoreError::ShardCountMismatch {
                    path: dir.to_path_buf(),
                    on_disk: found.shards,
                    configured: shards.get(),
                });
            }
            Ok(found)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if shard_path(dir, 0).exists() {
                return Err(folder_error(format!(
                    "it holds shard files but no {LAYOUT_FILE}; refusing to guess how they were placed"
                )));
            }
            let bytes = serde_json::to_vec_pretty(&wanted).map_err(std::io::Error::other);
            bytes
                .and_then(|bytes| write_atomically(&path, &bytes))
                .map_err(|e| folder_error(format!("cannot write {LAYOUT_FILE}: {e}")))?;
            Ok(wanted)
        }
        Err(e) => Err(folder_error(format!("cannot read {LAYOUT_FILE}: {e}"))),
    }
}

/// Write to a temporary file, fsync, rename over the target, fsync the folder:
/// a crash leaves either the old file or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}
