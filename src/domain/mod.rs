//! Names that cross the HTTP/store boundary, parsed once at the edge.
//!
//! A `CollectionName` or `DocId` that exists is valid: the API builds them with
//! `parse`, and everything below it can rely on the documented limits.

pub mod access;

use std::fmt;
use std::sync::Arc;

/// The collection that holds the original API's documents.
pub const LEGACY_COLLECTION: &str = "default";

/// Longest collection name, in bytes.
pub const MAX_COLLECTION_LEN: usize = 64;
/// Longest document id, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// Deepest nesting of arrays and objects a document may have. Every parser
/// and walker of documents (JSON bodies, bracket-encoded forms, merge
/// patches, stored text read back) stays within it, so none can exhaust the
/// stack however a client nests its input.
pub const MAX_DEPTH: usize = 100;

/// Largest id the counter hands out: 2^53 - 1, the largest integer every
/// JSON client reads exactly. Numeric ids above it are ordinary ids that the
/// counter never reaches, so it need not move past them.
pub const MAX_COUNTER_ID: u64 = (1 << 53) - 1;

/// Why a collection name or id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} bytes long; the limit is {max}")]
    TooLong { what: &'static str, len: usize, max: usize },
    #[error("{what} {value:?} contains {ch:?}; allowed are {allowed}")]
    BadChar {
        what: &'static str,
        value: String,
        ch: char,
        allowed: &'static str,
    },
    #[error("{what} {value:?} is reserved")]
    Reserved { what: &'static str, value: String },
}

const COLLECTION_CHARS: &str = "ASCII letters, digits, '_' and '-'";
const ID_CHARS: &str = "ASCII letters, digits and - _ . ~ : @";

/// A collection name: 1 to 64 bytes of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CollectionName(Arc<str>);

impl CollectionName {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let what = "collection name";
        check_len(what, raw, MAX_COLLECTION_LEN)?;
        if let Some(ch) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(NameError::BadChar {
                what,
                value: raw.to_owned(),
                ch,
                allowed: COLLECTION_CHARS,
            });
        }
        Ok(Self(raw.into()))
    }

    /// The collection of the original API's documents.
    pub fn legacy() -> Self {
        // Shared, so the original API's hot paths clone a pointer instead of
        // allocating the name for every request.
        static LEGACY: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
        Self(LEGACY.get_or_init(|| LEGACY_COLLECTION.into()).clone())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CollectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A document id: 1 to 256 bytes of URL-safe characters, so it can sit in a
/// path segment unescaped. The original API's integer ids are their decimal form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocId(Arc<str>);

impl DocId {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let what = "document id";
        check_len(what, raw, MAX_ID_LEN)?;
        if let Some(ch) = raw.chars().find(|c| !is_id_char(*c)) {
            return Err(NameError::BadChar {
                what,
                value: raw.to_owned(),
                ch,
                allowed: ID_CHARS,
            });
        }
        if raw == "." || raw == ".." {
            return Err(NameError::Reserved {
                what,
                value: raw.to_owned(),
            });
        }
        Ok(Self(raw.into()))
    }

    /// The empty id of a change to a collection itself (its schema), as the
    /// change feed names it: never a document's.
    pub fn of_collection() -> Self {
        Self("".into())
    }

    /// An id as the change feed stores it: a document's, or the empty one
    /// of a change to the collection itself.
    pub fn parse_in_feed(raw: &str) -> Result<Self, NameError> {
        if raw.is_empty() {
            Ok(Self::of_collection())
        } else {
            Self::parse(raw)
        }
    }

    /// The id of an integer-keyed document (the original API, server-chosen ids).
    pub fn from_integer(n: i64) -> Self {
        // Straight into the shared text: one allocation, no formatter.
        Self(itoa::Buffer::new().format(n).into())
    }

    /// The id of a counter value.
    pub fn from_counter(n: u64) -> Self {
        Self(itoa::Buffer::new().format(n).into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value of this id if it is one the id counter could produce: the
    /// canonical decimal form of an integer from 0 to [`MAX_COUNTER_ID`].
    pub fn as_counter_value(&self) -> Option<u64> {
        let s = self.as_str();
        let canonical = s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
        if canonical {
            s.parse().ok().filter(|n| *n <= MAX_COUNTER_ID)
        } else {
            None
        }
    }

    /// Whether `text` is made only of the characters ids may hold (it may
    /// still be empty, too long or reserved): a prefix or a bound of ids.
    pub fn has_id_chars(text: &str) -> bool {
        text.chars().all(is_id_char)
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | ':' | '@')
}

fn check_len(what: &'static str, raw: &str, max: usize) -> Result<(), NameError> {
    if raw.is_empty() {
        return Err(NameError::Empty { what });
    }
    if raw.len() > max {
        return Err(NameError::TooLong {
            what,
            len: raw.len(),
            max,
        });
    }
    Ok(())
}

/// The shape of a JSON value: how deeply it nests arrays and objects (0 for
/// a scalar, 1 for a flat array or object), and about how many bytes it
/// takes as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonSize {
    pub depth: usize,
    pub bytes: usize,
}

/// Measures `value` iteratively, so it is safe on any input.
pub fn measure(value: &serde_json::Value) -> JsonSize {
    use serde_json::Value;
    let mut size = JsonSize { depth: 0, bytes: 0 };
    let mut pending: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((value, depth)) = pending.pop() {
        // Punctuation, numbers and literals, roughly.
        size.bytes += 8;
        match value {
            Value::String(text) => size.bytes += text.len(),
            Value::Array(items) => {
                size.depth = size.depth.max(depth + 1);
                pending.extend(items.iter().map(|item| (item, depth + 1)));
            }
            Value::Object(fields) => {
                size.depth = size.depth.max(depth + 1);
                size.bytes += fields.keys().map(String::len).sum::<usize>();
                pending.extend(fields.values().map(|field| (field, depth + 1)));
            }
            _ => {}
        }
    }
    size
}

/// A valid shard count: 1 to [`ShardCount::MAX`] (the placement's number of
/// buckets: a shard holds whole buckets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardCount(u32);

impl ShardCount {
    pub const MAX: u32 = 4096;

    pub fn new(n: u32) -> Option<Self> {
        (1..=Self::MAX).contains(&n).then_some(Self(n))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// How hard a commit pushes data to the disk before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// `synchronous=NORMAL`: survives a process crash; the last commits may be
    /// lost on power loss or a kernel crash.
    Normal,
    /// `synchronous=FULL`: every acknowledged commit is on stable storage.
    Full,
}

impl SyncMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Normal => "normal",
            SyncMode::Full => "full",
        }
    }
}

/// Where a document lives: its collection and its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocKey {
    pub collection: CollectionName,
    pub id: DocId,
}

impl DocKey {
    pub fn new(collection: CollectionName, id: DocId) -> Self {
        Self { collection, id }
    }
}

impl fmt::Display for DocKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.collection, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_names_follow_the_documented_limits() {
        assert!(CollectionName::parse("default").is_ok());
        assert!(CollectionName::parse("user-profiles_2").is_ok());
        assert!(CollectionName::parse("").is_err());
        assert!(CollectionName::parse("a/b").is_err());
        assert!(CollectionName::parse("ünï").is_err());
        assert!(CollectionName::parse(&"c".repeat(64)).is_ok());
        assert!(CollectionName::parse(&"c".repeat(65)).is_err());
    }

    #[test]
    fn integer_ids_are_their_decimal_form() {
        assert_eq!(DocId::from_integer(0).as_str(), "0");
        assert_eq!(DocId::from_integer(-7).as_str(), "-7");
        assert_eq!(DocId::from_integer(i64::MIN).as_str(), "-9223372036854775808");
        assert_eq!(DocId::from_counter(u64::MAX).as_str(), "18446744073709551615");
    }

    #[test]
    fn ids_follow_the_documented_limits() {
        assert!(DocId::parse("7").is_ok());
        assert!(DocId::parse("-7").is_ok());
        assert!(DocId::parse("user:42@eu.v1~x_y").is_ok());
        assert!(DocId::parse(&"i".repeat(256)).is_ok());
        assert!(DocId::parse(&"i".repeat(257)).is_err());
        assert!(DocId::parse("a b").is_err());
        assert!(DocId::parse("a/b").is_err());
        assert!(DocId::parse("..").is_err());
        assert!(DocId::parse("").is_err());
    }

    #[test]
    fn measure_counts_nesting_and_bytes() {
        use serde_json::json;
        assert_eq!(measure(&json!(1)).depth, 0);
        assert_eq!(measure(&json!([])).depth, 1);
        assert_eq!(measure(&json!({"a": [1, {"b": []}], "c": 2})).depth, 4);
        assert!(measure(&json!({"text": "x".repeat(1000)})).bytes > 1000);
        let mut deep = json!("x");
        for _ in 0..1000 {
            deep = json!([deep]);
        }
        assert_eq!(measure(&deep).depth, 1000);
        // Dropping a value this deep recurses: take it apart level by level.
        while let serde_json::Value::Array(mut items) = deep {
            deep = items.pop().unwrap_or_default();
        }
    }

    #[test]
    fn only_canonical_decimals_are_counter_values() {
        let value = |s: &str| DocId::parse(s).ok().and_then(|id| id.as_counter_value());
        assert_eq!(value("0"), Some(0));
        assert_eq!(value("42"), Some(42));
        assert_eq!(value("042"), None);
        assert_eq!(value("-4"), None);
        assert_eq!(value("4a"), None);
        assert_eq!(value("99999999999999999999999"), None);
        assert_eq!(value("9007199254740991"), Some(MAX_COUNTER_ID));
        assert_eq!(value("9007199254740992"), None);
    }
}
