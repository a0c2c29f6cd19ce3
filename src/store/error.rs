//! The store's error: everything that can go wrong below the HTTP layer,
//! and what any client may read of it. The API maps it to statuses in one
//! place (`api/error.rs`).

use std::path::PathBuf;

use super::engine::{self, ErrorKind, StorageError};
use super::index::suggested_name;
use super::schema::{SchemaError, Violation};
use crate::domain::{CollectionName, DocKey};

/// Why a shard cannot serve, in words fit for any client: no file paths,
/// no database messages (those go to the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// The writer panicked; the supervisor reopens it.
    WriterPanicked,
    /// The writer's connection or disk failed; the supervisor reopens it.
    WriterFailed,
    /// The writer is stopped (shutting down).
    Stopped,
    /// The file was deleted or replaced under the server: down until
    /// restart.
    FileGone,
    DiskFull,
    ReadOnly,
    Damaged,
    /// The database is unreachable or not writable from here (a failover):
    /// the writer reconnects until it finds the primary.
    DatabaseAway,
}

impl Outage {
    pub fn describe(self) -> &'static str {
        match self {
            Outage::WriterPanicked => "its writer panicked; it is being restarted",
            Outage::WriterFailed => "its writer lost its connection or its disk failed; it is being restarted",
            Outage::Stopped => "its writer has stopped",
            Outage::FileGone => {
                "its file was deleted or replaced while the server ran; an operator must restore it and restart the server"
            }
            Outage::DiskFull => "the disk is full",
            Outage::ReadOnly => "its file cannot be written",
            Outage::Damaged => "its file is damaged; an operator must restore it from a backup",
            Outage::DatabaseAway => {
                "the database cannot be reached or will not take writes here (a failover?); reconnecting"
            }
        }
    }
}

/// Everything that can go wrong below the HTTP layer. `Display` gives the
/// whole story, for logs; [`StoreError::public`] what any client may read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("document {key}: {}", match current_version {
        Some(v) => format!("the precondition failed; its current version is {v}"),
        None => "the precondition failed; it does not exist".to_owned(),
    })]
    PreconditionFailed { key: DocKey, current_version: Option<u64> },
    /// The shard's writer is down or restarting; try again shortly.
    /// `reason` is for the log; `outage` says it to clients.
    #[error("shard {shard} is unavailable: {reason}")]
    Unavailable {
        shard: usize,
        outage: Outage,
        reason: String,
    },
    /// The shard's write queue (or, for `reads`, every read connection)
    /// stayed full for the whole wait.
    #[error("shard {shard} is overloaded: {} for {waited_ms} ms; retry later",
        if *reads { "every read connection stayed busy" } else { "its write queue stayed full" })]
    Busy { shard: usize, waited_ms: u64, reads: bool },
    /// The engine failed on this shard.
    #[error("shard {shard}: {error}")]
    Engine { shard: usize, error: StorageError },
    #[error("DETS_ROOT={path:?} is unusable: {reason}")]
    DataFolder { path: PathBuf, reason: String },
    #[error("{path:?}: {reason}")]
    CorruptFile { path: PathBuf, reason: String },
    /// The database (EXDAAS_DATABASE_URL) cannot be used.
    #[error("the database: {reason}")]
    Database { reason: String },
    #[error(
        "data folder {path:?} was written with SHARD_LIMIT={on_disk}, but SHARD_LIMIT={configured} is set; \
         start with SHARD_LIMIT={on_disk}, or move the folder to {configured} shards with \
         `exdaas reshard --to {configured}` while the server is stopped"
    )]
    ShardCountMismatch {
        path: PathBuf,
        on_disk: u32,
        configured: u32,
    },
    /// The client's document breaks a limit every document keeps.
    #[error("{reason}")]
    InvalidDocument { reason: String },
    /// A request's gets and patches would read more stored documents than
    /// one request may; this one was not read.
    #[error(
        "document {key} was not read: this request reads more than {limit} bytes of stored documents \
         (EXDAAS_MAX_PAGE_BYTES); read it in a request of its own"
    )]
    TooMuchToRead { key: DocKey, limit: usize },
    /// The document would be larger than a document may be.
    #[error("document {key} would be {bytes} bytes; a document holds at most {limit} (EXDAAS_MAX_BODY_BYTES)")]
    DocumentTooLarge { key: DocKey, bytes: usize, limit: usize },
    /// The operation cannot apply to the stored document as it is.
    #[error("{reason}")]
    Unprocessable { reason: String },
    /// The document would not match its collection's schema.
    #[error("document {key} does not match the schema of its collection (version {schema_version}): {}",
        violations.iter().map(|v| format!("{} at {:?} ({})", v.message, v.pointer, v.keyword)).collect::<Vec<_>>().join("; "))]
    SchemaViolation {
        key: DocKey,
        schema_version: u64,
        violations: Vec<Violation>,
    },
    /// The document changed between its check against the schema and its
    /// write, and checking it again would hold the shard's writer too long.
    #[error("document {key} changed while it was checked against its collection's schema; send the write again")]
    SchemaRace { key: DocKey },
    /// A query read more than a query may (no index fits it, or the one
    /// that does leaves too much to read).
    #[error(
        "this query would read more than {max_scan} documents of collection {collection} (EXDAAS_QUERY_MAX_SCAN); \
         declare an index that fits it: PUT /v1/collections/{collection}/indexes/{} with {{\"fields\": {}}}{}",
        suggested_name(suggestion),
        serde_json::to_string(suggestion).unwrap_or_default(),
        if suggestion.is_empty() { " (give the query a filter or a sort the index can serve)" } else { "" }
    )]
    QueryTooBroad {
        collection: CollectionName,
        max_scan: u64,
        /// The fields of an index that would fit.
        suggestion: Vec<String>,
    },
    /// A query did more work than a query may (its filter against the
    /// documents it read).
    #[error(
        "this query would do more than {max_work} units of work on collection {collection} (EXDAAS_QUERY_MAX_WORK: \
         bytes of documents read and of values compared, conditions checked); narrow its filter, or declare an \
         index that fits it: PUT /v1/collections/{collection}/indexes/{} with {{\"fields\": {}}}{}",
        suggested_name(suggestion),
        serde_json::to_string(suggestion).unwrap_or_default(),
        if suggestion.is_empty() { " (give the query a filter or a sort the index can serve)" } else { "" }
    )]
    QueryTooCostly {
        collection: CollectionName,
        max_work: u64,
        /// The fields of an index that would fit.
        suggestion: Vec<String>,
    },
    /// An index of that name exists with other fields.
    #[error("{reason}")]
    Conflict { reason: String },
    /// The client's schema cannot be used.
    #[error("{0}")]
    InvalidSchema(#[from] SchemaError),
    #[error("could not allocate a fresh id after {attempts} attempts")]
    IdsExhausted { attempts: u32 },
    #[error("{reason}")]
    FeedGone { reason: String },
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// The engine's failures as the store reports them.
impl From<engine::EngineError> for StoreError {
    fn from(error: engine::EngineError) -> Self {
        use engine::EngineError as E;
        match error {
            E::Storage { shard, error } => StoreError::Engine { shard, error },
            E::Busy { shard, waited_ms } => StoreError::Busy {
                shard,
                waited_ms,
                reads: true,
            },
            E::Database { reason } => StoreError::Database { reason },
            E::DataFolder { path, reason } => StoreError::DataFolder { path, reason },
            E::CorruptFile { path, reason } => StoreError::CorruptFile { path, reason },
            E::ShardCountMismatch {
                path,
                on_disk,
                configured,
            } => StoreError::ShardCountMismatch {
                path,
                on_disk,
                configured,
            },
            E::Internal(what) => StoreError::Internal(what),
        }
    }
}

impl StoreError {
    /// An engine failure on shard `shard`.
    pub fn engine(shard: usize, error: StorageError) -> Self {
        StoreError::Engine { shard, error }
    }

    /// What any client may read about this error: no file paths and no
    /// database messages, which stay in the log.
    pub fn public(&self) -> String {
        match self {
            StoreError::Unavailable { shard, outage, .. } => {
                format!("shard {shard} is unavailable: {}; retry later", outage.describe())
            }
            StoreError::Engine { shard, error } => match error.kind {
                ErrorKind::Unavailable | ErrorKind::Conflict => {
                    format!(
                        "shard {shard} is unavailable: {}; retry later",
                        self.outage().describe()
                    )
                }
                ErrorKind::Other => format!("shard {shard} failed to read or write"),
                _ => format!("shard {shard}: {}", self.outage().describe()),
            },
            StoreError::DataFolder { .. }
            | StoreError::CorruptFile { .. }
            | StoreError::Database { .. }
            | StoreError::ShardCountMismatch { .. }
            | StoreError::Internal(_) => "the store failed".to_owned(),
            StoreError::PreconditionFailed { .. }
            | StoreError::Busy { .. }
            | StoreError::InvalidDocument { .. }
            | StoreError::DocumentTooLarge { .. }
            | StoreError::TooMuchToRead { .. }
            | StoreError::Unprocessable { .. }
            | StoreError::SchemaViolation { .. }
            | StoreError::SchemaRace { .. }
            | StoreError::QueryTooBroad { .. }
            | StoreError::QueryTooCostly { .. }
            | StoreError::Conflict { .. }
            | StoreError::InvalidSchema(_)
            | StoreError::FeedGone { .. }
            | StoreError::IdsExhausted { .. } => self.to_string(),
        }
    }

    /// How a shard is out of service after this error (for readiness).
    pub fn outage(&self) -> Outage {
        match self {
            StoreError::Unavailable { outage, .. } => *outage,
            StoreError::Engine { error, .. } => match error.kind {
                ErrorKind::Full => Outage::DiskFull,
                ErrorKind::ReadOnly => Outage::ReadOnly,
                ErrorKind::Damaged => Outage::Damaged,
                ErrorKind::Away => Outage::DatabaseAway,
                ErrorKind::Unavailable | ErrorKind::Conflict | ErrorKind::Other => Outage::WriterFailed,
            },
            _ => Outage::WriterFailed,
        }
    }

    /// The shard's connection or file is broken: its writer must be
    /// restarted (opened anew) before it can write again.
    pub fn breaks_the_writer(&self) -> bool {
        match self {
            StoreError::Unavailable { .. } => true,
            StoreError::Engine { error, .. } => {
                matches!(
                    error.kind,
                    ErrorKind::Unavailable | ErrorKind::Away | ErrorKind::Damaged
                )
            }
            _ => false,
        }
    }
}
