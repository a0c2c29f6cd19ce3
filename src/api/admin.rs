//! Administration over HTTP: a consistent backup of every shard, taken while
//! the service runs, for admin keys.

use std::path::PathBuf;

use poem::http::StatusCode;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::auth::{Access, Credentials};
use super::error::{Flavor, Problem, ProblemError};
use super::tags::ApiTags;
use crate::domain::access::Scope;
use crate::store::maintenance::{Manifest, BACKUP_PREFIX};
use crate::store::Store;

/// Backups over HTTP: where they go, and the bounds that keep them from
/// filling the disk.
#[derive(Debug, Clone)]
pub struct Backups {
    /// `EXDAAS_BACKUP_DIR`; `None`: backups over HTTP are off.
    pub dir: Option<PathBuf>,
    /// Backups the folder may hold before a new one is refused
    /// (`EXDAAS_BACKUP_MAX_COUNT`).
    pub max_count: usize,
    /// Bytes a backup must leave free on the folder's disk
    /// (`EXDAAS_BACKUP_MIN_FREE_MIB`).
    pub min_free_bytes: u64,
}

pub struct AdminApi {
    pub store: Store,
    pub access: Access,
    pub backups: Backups,
    /// One backup at a time: two at once could each pass the bounds that
    /// together they break.
    pub taking: tokio::sync::Mutex<()>,
}

/// A finished backup.
#[derive(Object)]
pub struct BackupTaken {
    /// The folder holding it: its name in the server's backup folder
    /// (`EXDAAS_BACKUP_DIR`).
    name: String,
    created_at: String,
    shards: u32,
    documents: u64,
    files: Vec<BackupFile>,
}

/// One shard file of a backup.
#[derive(Object)]
pub struct BackupFile {
    shard: u32,
    file: String,
    documents: u64,
    bytes: u64,
    sha256: String,
}

#[derive(ApiResponse)]
pub enum BackupResponse {
    /// The backup is complete; its manifest is in the folder.
    #[oai(status = 201)]
    Taken(Json<BackupTaken>),
    /// This server keeps its documents in a database
    /// (`EXDAAS_DATABASE_URL`), not in a data folder: back it up with the
    /// database's own tools (`pg_dump`).
    #[oai(status = 501, content_type = "application/problem+json")]
    NotHere(Json<Problem>),
}

#[OpenApi(prefix_path = "/v1/admin", tag = "ApiTags::Admin")]
impl AdminApi {
    /// Take a backup
    ///
    /// A consistent snapshot of every shard (SQLite's `VACUUM INTO`, each
    /// shard inside one read transaction) plus a manifest of document counts
    /// and checksums, written to a new folder under `EXDAAS_BACKUP_DIR`, whose
    /// name the answer gives. Writes go on meanwhile. Needs an admin key that
    /// is not limited to some collections. Restore it with `exdaas restore`.
    /// Off (403) unless the server sets `EXDAAS_BACKUP_DIR`; refused (507)
    /// when the folder holds `EXDAAS_BACKUP_MAX_COUNT` backups already, or
    /// when the backup would leave less than `EXDAAS_BACKUP_MIN_FREE_MIB`
    /// free on its disk; one at a time (409 while another is taken).
    #[oai(path = "/backup", method = "post")]
    async fn backup(&self, auth: Credentials) -> Result<BackupResponse, ProblemError> {
        let caller = self.access.caller(&auth, Flavor::V1).map_err(ProblemError)?;
        caller.allow(Scope::Admin, None).map_err(ProblemError)?;
        if !self.store.has_data_folder() {
            return Ok(BackupResponse::NotHere(Json(Problem {
                kind: "about:blank".into(),
                title: "Not Implemented".into(),
                status: 501,
                detail: "this server keeps its documents in a database (EXDAAS_DATABASE_URL), not in a data \
                         folder: back it up with the database's own tools, such as pg_dump"
                    .into(),
                error_id: None,
                violations: None,
            })));
        }
        let Some(dir) = &self.backups.dir else {
            return Err(ProblemError::new(
                StatusCode::FORBIDDEN,
                "backups over HTTP are off on this server: its operator turns them on by naming a folder for \
                 them in EXDAAS_BACKUP_DIR (or takes them with `exdaas backup DEST`)",
            ));
        };
        let Ok(_taking) = self.taking.try_lock() else {
            return Err(ProblemError::new(
                StatusCode::CONFLICT,
                "a backup is being taken now: wait until it is done",
            ));
        };
        let room = self.store.backup_room(dir).await?;
        let max_count = self.backups.max_count;
        if room.backups >= max_count {
            return Err(ProblemError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                format!(
                    "the backup folder holds {} backups, and EXDAAS_BACKUP_MAX_COUNT={max_count} is the most it \
                     may: move or delete old ones first",
                    room.backups
                ),
            ));
        }
        let min_free = self.backups.min_free_bytes;
        if room.free_bytes < room.needed_bytes.saturating_add(min_free) {
            return Err(ProblemError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                format!(
                    "a backup needs up to {} MiB, and the backup folder's disk has {} MiB free: it must keep \
                     EXDAAS_BACKUP_MIN_FREE_MIB={} MiB free after it",
                    room.needed_bytes.div_ceil(1 << 20),
                    room.free_bytes >> 20,
                    min_free >> 20
                ),
            ));
        }
        let stamp = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second].[subsecond digits:3]Z"
            ))
            .unwrap_or_default();
        let name = format!("{BACKUP_PREFIX}{stamp}");
        let dest = dir.join(&name);
        let manifest: Manifest = self.store.backup(&dest).await?;
        tracing::info!(path = %dest.display(), documents = manifest.documents(), "backup taken");
        Ok(BackupResponse::Taken(Json(BackupTaken {
            name,
            created_at: manifest.created_at.clone(),
            shards: manifest.shards,
            documents: manifest.documents(),
            files: manifest
                .files
                .into_iter()
                .map(|f| BackupFile {
                    shard: f.shard,
                    file: f.file,
                    documents: f.documents,
                    bytes: f.bytes,
                    sha256: f.sha256,
                })
                .collect(),
        })))
    }
}
