//! Files made durable: written whole or not at all, and synced, so a crash
//! or a power cut leaves the old file or the new one. Below everything: the
//! engines and the daemon's pid file use them alike.

use std::fs;
use std::io::Write;
use std::path::Path;

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

/// Makes a file's content durable.
pub fn fsync(path: &Path) -> std::io::Result<()> {
    fs::File::open(path)?.sync_all()
}
