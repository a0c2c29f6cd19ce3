//! PostgreSQL's failures (SQLSTATE codes, shared by the protocol's other
//! engines) as the engine's kinds.

use super::super::{ErrorKind, StorageError};

pub fn engine_error(err: sqlx::Error) -> StorageError {
    let kind = match &err {
        sqlx::Error::Database(db) => match db.code().as_deref().unwrap_or("") {
            // serialization_failure, deadlock_detected: retry the whole
            // transaction (CockroachDB and YugabyteDB ask for it).
            "40001" | "40P01" => ErrorKind::Conflict,
            // disk_full, out_of_memory, too_many_connections
            "53100" | "53200" | "53300" => ErrorKind::Full,
            // read_only_sql_transaction: a standby, where a failover or a
            // routing layer that has not caught up sent the connection.
            "25006" => ErrorKind::Away,
            // data_corrupted, index_corrupted
            "XX001" | "XX002" => ErrorKind::Damaged,
            // connection failures, admin shutdown, crash shutdown, cannot connect now
            code if code.starts_with("08") || code == "57P01" || code == "57P02" || code == "57P03" => ErrorKind::Away,
            _ => ErrorKind::Other,
        },
        sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => {
            ErrorKind::Away
        }
        sqlx::Error::PoolClosed | sqlx::Error::PoolTimedOut => ErrorKind::Unavailable,
        _ => ErrorKind::Other,
    };
    let detail = match &err {
        sqlx::Error::Database(db) => format!("{} ({})", db.message(), db.code().as_deref().unwrap_or("?")),
        other => other.to_string(),
    };
    StorageError::new(kind, detail)
}
