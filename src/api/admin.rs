//! Administration over HTTP: a consistent backup of every shard, taken while
//! the service runs, for admin keys.

use std::path::PathBuf;

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::auth::{Access, Credentials};
use super::error::{Flavor, Problem, ProblemError};
use super::ApiTags;
use crate::domain::access::Scope;
use crate::store::maintenance::Manifest;
use crate::store::Store;

pub struct AdminApi {
    pub store: Store,
    pub access: Access,
    /// Where backups taken over HTTP go (`EXDAAS_BACKUP_DIR`).
    pub backup_dir: PathBuf,
}

/// A finished backup.
#[derive(Object)]
pub struct BackupTaken {
    /// The folder holding it, on the server.
    path: String,
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
    /// and checksums, written to a new folder under `EXDAAS_BACKUP_DIR`. Writes
    /// go on meanwhile. Needs an admin key that is not limited to some
    /// collections. Restore it with `exdaas restore`.
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
        let stamp = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second].[subsecond digits:3]Z"
            ))
            .unwrap_or_default();
        let dest = self.backup_dir.join(format!("exdaas-backup-{stamp}"));
        let manifest: Manifest = self.store.backup(&dest).await?;
        tracing::info!(path = %dest.display(), documents = manifest.documents(), "backup taken");
        Ok(BackupResponse::Taken(Json(BackupTaken {
            path: dest.display().to_string(),
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
