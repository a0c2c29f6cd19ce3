//! A stored document, as every layer of the store sees it: a leaf that
//! imports nothing of the store, so the engines and the cache share it
//! without reaching up.

use std::sync::Arc;

/// A stored document's state. Cheap to clone: the JSON text is shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// Starts at 1 and rises by one with every change.
    pub version: u64,
    /// Time of the last change, Unix milliseconds.
    pub updated_at_ms: i64,
    /// When the document expires, Unix milliseconds (`None`: never).
    pub expires_at_ms: Option<i64>,
    /// The document, as canonical (compact, keys sorted) JSON text.
    pub data: Arc<str>,
}

impl Document {
    /// Whether the document still exists at `now_ms`: from its expiry on, it
    /// is gone for every read, swept from disk or not.
    pub fn is_live(&self, now_ms: i64) -> bool {
        match self.expires_at_ms {
            Some(at) => now_ms < at,
            None => true,
        }
    }
}

/// Compact JSON with object keys sorted, so equal documents have equal text.
pub fn canonical_json(value: &serde_json::Value) -> Arc<str> {
    Arc::from(value.to_string())
}
