//! The storage engine: everything that knows SQL and files, below the core
//! of the store (placement, cache, ids, operations, the writer's batching).
//!
//! Today's engine is SQLite (`sqlite/`): one file per shard in WAL mode.
//! The core talks to it through a few calls and hears back only the kinds
//! of failure below, never the engine's own types.

pub mod sqlite;

/// What went wrong in the engine, as the core and the HTTP layer need to
/// know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No room left (a full disk).
    Full,
    /// The storage refuses writes (a read-only file or volume).
    ReadOnly,
    /// The stored data is damaged.
    Damaged,
    /// The connection or the disk failed; opening anew may help.
    Unavailable,
    /// The engine refused the transaction for a concurrent one; retrying
    /// it whole may succeed.
    Conflict,
    /// Anything else.
    Other,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Full => "the disk is full",
            ErrorKind::ReadOnly => "its storage cannot be written",
            ErrorKind::Damaged => "its data is damaged",
            ErrorKind::Unavailable => "its storage failed",
            ErrorKind::Conflict => "a concurrent change conflicted",
            ErrorKind::Other => "a storage error",
        }
    }
}

/// An engine failure: its kind, and the engine's own words for the log.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {detail}", kind.as_str())]
pub struct EngineError {
    pub kind: ErrorKind,
    pub detail: String,
}

impl EngineError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}
