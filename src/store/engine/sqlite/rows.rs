//! Rows as the SQLite engine reads and binds them.

use std::fmt::Write as _;
use std::sync::Arc;

use sqlx::{Row, SqliteConnection};

use crate::domain::DocKey;
use crate::store::document::Document;

/// `keys` as a JSON array of `[collection, id]` pairs, for `json_each`.
/// Collection names and ids are plain ASCII without quotes or backslashes
/// (see `domain`): nothing to escape.
pub fn keys_param(keys: &[DocKey]) -> String {
    let mut param = String::from("[");
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            param.push(',');
        }
        let _ = write!(param, "[\"{}\",\"{}\"]", key.collection, key.id);
    }
    param.push(']');
    param
}

/// The committed row at `key`, read on the given connection (expired or not).
pub async fn select(conn: &mut SqliteConnection, key: &DocKey) -> Result<Option<Document>, sqlx::Error> {
    let row =
        sqlx::query("SELECT version, updated_at, expires_at, data FROM documents WHERE collection = ?1 AND id = ?2")
            .bind(key.collection.as_str())
            .bind(key.id.as_str())
            .fetch_optional(&mut *conn)
            .await?;
    row.map(|row| document_from_row(&row)).transpose()
}

/// A document from a row with `version`, `updated_at`, `expires_at`, `data`.
pub fn document_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Document, sqlx::Error> {
    Ok(Document {
        version: row.try_get::<i64, _>("version")? as u64,
        updated_at_ms: row.try_get("updated_at")?,
        expires_at_ms: row.try_get("expires_at")?,
        data: Arc::from(row.try_get::<&str, _>("data")?),
    })
}
