//! How a schema or a document is found wanting: plain types below the
//! store's error, which names them.

/// Why a client's schema was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SchemaError(pub String);

/// One way a document fails its collection's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON Pointer (RFC 6901) to the failing value in the document: `""`
    /// is the document itself.
    pub pointer: String,
    /// The schema keyword that failed (`type`, `required`, `maximum`...),
    /// or `cost` when the document is too costly to check at all.
    pub keyword: String,
    pub message: String,
}
