//! SQLite's failures as the engine's kinds.

use super::super::{EngineError, ErrorKind, StorageError};

/// A database failure as what it means for the shard: a full disk, a file
/// that cannot be written, a damaged file, a broken connection, or another
/// error.
pub fn engine_error(err: sqlx::Error) -> StorageError {
    // SQLite's primary result codes (the low byte of extended codes).
    const SQLITE_BUSY: i32 = 5;
    const SQLITE_READONLY: i32 = 8;
    const SQLITE_IOERR: i32 = 10;
    const SQLITE_CORRUPT: i32 = 11;
    const SQLITE_FULL: i32 = 13;
    const SQLITE_CANTOPEN: i32 = 14;
    const SQLITE_NOTADB: i32 = 26;
    let kind = match &err {
        sqlx::Error::Database(db) => match db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0) & 0xff {
            SQLITE_FULL => ErrorKind::Full,
            SQLITE_READONLY => ErrorKind::ReadOnly,
            SQLITE_CORRUPT | SQLITE_NOTADB => ErrorKind::Damaged,
            SQLITE_IOERR | SQLITE_CANTOPEN => ErrorKind::Unavailable,
            SQLITE_BUSY => ErrorKind::Conflict,
            _ => ErrorKind::Other,
        },
        sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed | sqlx::Error::PoolClosed => ErrorKind::Unavailable,
        _ => ErrorKind::Other,
    };
    let detail = match &err {
        sqlx::Error::Database(db) => db.message().to_owned(),
        sqlx::Error::WorkerCrashed | sqlx::Error::PoolClosed => "its database connection is closed".to_owned(),
        other => other.to_string(),
    };
    StorageError::new(kind, detail)
}

/// A failure on shard `shard`.
pub fn shard_error(shard: usize, err: sqlx::Error) -> EngineError {
    EngineError::storage(shard, engine_error(err))
}
