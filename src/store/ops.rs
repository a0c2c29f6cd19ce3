//! What a write asks for and what it did: the operations a shard's writer
//! applies, their preconditions, and the pure decision of one operation
//! against a document's committed state (no I/O here, so it is unit-tested).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::Value;

use super::patch::merge_patch;
use super::{canonical_json, Document, StoreError};
use crate::domain::{measure, DocKey, JsonSize, MAX_DEPTH};

/// What the document must look like for the operation to go ahead (the
/// `If-Match` / `If-None-Match` of HTTP, or a batch operation's expected
/// version). A failed precondition fails that operation alone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Expect {
    /// No precondition.
    #[default]
    Any,
    /// The document must not exist (`If-None-Match: *`, expected version 0).
    Absent,
    /// The document must exist, whatever its version (`If-Match: *`).
    Present,
    /// The document must exist at one of these versions (`If-Match: "3"`).
    Version(Vec<u64>),
    /// Never met: `If-Match` together with `If-None-Match: *`, which no
    /// document passes both of.
    Never,
}

impl Expect {
    fn allows(&self, live: Option<&Document>) -> bool {
        match (self, live) {
            (Expect::Any, _) => true,
            (Expect::Absent, current) => current.is_none(),
            (Expect::Present, current) => current.is_some(),
            (Expect::Version(versions), Some(doc)) => versions.contains(&doc.version),
            (Expect::Version(_), None) => false,
            (Expect::Never, _) => false,
        }
    }
}

/// The change an operation makes.
#[derive(Debug, Clone)]
pub enum Action {
    /// Replace the document with `data` (canonical JSON text), expiring at
    /// `expires_at_ms` (`None`: never).
    Put {
        data: Arc<str>,
        expires_at_ms: Option<i64>,
    },
    /// Merge `patch` into the document (RFC 7396). `expires_at_ms`: `None`
    /// keeps the current expiry, `Some(e)` sets it.
    Patch {
        patch: Arc<Value>,
        expires_at_ms: Option<Option<i64>>,
        /// About how many bytes the patch takes as text.
        bytes: usize,
    },
    Delete,
    /// Read the document as the operations before it in the same request
    /// left it (a batch's `get`).
    Read,
}

impl Action {
    /// A put of `data`, stored as canonical JSON text; refused if it nests
    /// deeper than [`MAX_DEPTH`].
    pub fn put(data: &Value, expires_at_ms: Option<i64>) -> Result<Self, StoreError> {
        check_depth(measure(data), "the document")?;
        Ok(Action::Put {
            data: canonical_json(data),
            expires_at_ms,
        })
    }

    /// A merge patch; `expires_at_ms` as in [`Action::Patch`]. Refused if
    /// it nests deeper than [`MAX_DEPTH`]; its result then cannot either.
    pub fn patch(patch: Value, expires_at_ms: Option<Option<i64>>) -> Result<Self, StoreError> {
        let size = measure(&patch);
        check_depth(size, "the merge patch")?;
        Ok(Action::Patch {
            patch: Arc::new(patch),
            expires_at_ms,
            bytes: size.bytes,
        })
    }

    /// About how many bytes of memory the operation holds while it waits.
    pub fn bytes(&self) -> usize {
        match self {
            Action::Put { data, .. } => data.len(),
            Action::Patch { bytes, .. } => *bytes,
            Action::Delete | Action::Read => 0,
        }
    }
}

fn check_depth(size: JsonSize, what: &str) -> Result<(), StoreError> {
    let depth = size.depth;
    if depth > MAX_DEPTH {
        return Err(StoreError::InvalidDocument {
            reason: format!("{what} nests {depth} arrays and objects deep; the limit is {MAX_DEPTH}"),
        });
    }
    Ok(())
}

/// One operation on one document.
#[derive(Debug, Clone)]
pub struct WriteOp {
    pub key: DocKey,
    /// The key's placement bucket, stored with the row.
    pub bucket: u32,
    pub expect: Expect,
    pub action: Action,
    /// The id counter is past this id (it handed it out, or moved past a
    /// client's): the shard's record of where the counter restarts must
    /// cover it once it is stored.
    pub counted: bool,
    /// What the request's gets and patches may read of large stored
    /// documents, shared by its operations on every shard; `None` for a
    /// request of one operation, which may always read its document.
    pub budget: Option<Arc<ReadBudget>>,
    /// The document it would store, checked against its collection's
    /// schema before it was queued (see `Store::check_before_writing`).
    pub checked: Option<super::schema::Checked>,
}

/// Bytes of large stored documents one request's gets and patches may
/// read, across all the shards its operations go to: its first read always
/// goes ahead, the others while the budget lasts.
#[derive(Debug)]
pub struct ReadBudget {
    limit: usize,
    remaining: AtomicUsize,
    started: AtomicBool,
}

impl ReadBudget {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            remaining: AtomicUsize::new(limit),
            started: AtomicBool::new(false),
        }
    }

    /// The budget it started with.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Takes `bytes` from the budget; `false` if they do not fit.
    pub fn take(&self, bytes: usize) -> bool {
        let first = !self.started.swap(true, Ordering::SeqCst);
        self.remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                match left.checked_sub(bytes) {
                    Some(rest) => Some(rest),
                    None if first => Some(0),
                    None => None,
                }
            })
            .is_ok()
    }
}

/// What an operation did.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    /// Stored a new version; `created` when there was no live document.
    Written { doc: Document, created: bool },
    /// The change left the document as it was: nothing was written.
    Unchanged(Document),
    /// Deleted; the document as it was.
    Deleted(Document),
    /// A patch or delete of a document that does not exist.
    NotFound,
    /// A read: the document, if it exists.
    Read(Option<Document>),
}

pub type WriteResult = Result<WriteOutcome, StoreError>;

/// Decides `op` against the key's current committed row (which may have
/// expired): the outcome, and the row's new state when it changes
/// (`Some(None)`: deleted). `now_ms` stamps new versions.
pub fn decide(op: &WriteOp, current: Option<&Document>, now_ms: i64) -> (WriteResult, Option<Option<Document>>) {
    let live = current.filter(|doc| doc.is_live(now_ms));
    if !op.expect.allows(live) {
        let err = StoreError::PreconditionFailed {
            key: op.key.clone(),
            current_version: live.map(|doc| doc.version),
        };
        return (Err(err), None);
    }
    let next = |data: Arc<str>, expires_at_ms: Option<i64>| Document {
        version: live.map_or(1, |doc| doc.version + 1),
        // Never let a clock step back make a change look older.
        updated_at_ms: live.map_or(now_ms, |doc| now_ms.max(doc.updated_at_ms)),
        expires_at_ms,
        data,
    };
    match (&op.action, live) {
        (Action::Read, live) => (Ok(WriteOutcome::Read(live.cloned())), None),
        (Action::Delete, None) | (Action::Patch { .. }, None) => (Ok(WriteOutcome::NotFound), None),
        (Action::Delete, Some(doc)) => (Ok(WriteOutcome::Deleted(doc.clone())), Some(None)),
        (Action::Put { data, expires_at_ms }, live) => {
            if let Some(doc) = live.filter(|doc| doc.data == *data && doc.expires_at_ms == *expires_at_ms) {
                return (Ok(WriteOutcome::Unchanged(doc.clone())), None);
            }
            let doc = next(data.clone(), *expires_at_ms);
            let outcome = WriteOutcome::Written {
                doc: doc.clone(),
                created: live.is_none(),
            };
            (Ok(outcome), Some(Some(doc)))
        }
        (
            Action::Patch {
                patch, expires_at_ms, ..
            },
            Some(doc),
        ) => {
            let expires_at_ms = expires_at_ms.unwrap_or(doc.expires_at_ms);
            // Stored text nests at most as deep as serde_json reads (an
            // older server took deeper forms): refuse those, never fail hard.
            let data = match serde_json::from_str::<Value>(&doc.data) {
                Ok(current) => canonical_json(&merge_patch(current, patch)),
                Err(e) => {
                    let err = StoreError::Unprocessable {
                        reason: format!(
                            "document {} cannot be patched: its stored text cannot be read ({e}); replace it with PUT",
                            op.key
                        ),
                    };
                    return (Err(err), None);
                }
            };
            if data == doc.data && expires_at_ms == doc.expires_at_ms {
                return (Ok(WriteOutcome::Unchanged(doc.clone())), None);
            }
            let doc = next(data, expires_at_ms);
            let outcome = WriteOutcome::Written {
                doc: doc.clone(),
                created: false,
            };
            (Ok(outcome), Some(Some(doc)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CollectionName, DocId};
    use serde_json::json;

    fn key() -> DocKey {
        DocKey::new(
            CollectionName::parse("c").expect("name"),
            DocId::parse("k").expect("id"),
        )
    }

    fn doc(version: u64, data: &str, expires_at_ms: Option<i64>) -> Document {
        Document {
            version,
            updated_at_ms: 1_000,
            expires_at_ms,
            data: data.into(),
        }
    }

    fn op(expect: Expect, action: Action) -> WriteOp {
        WriteOp {
            key: key(),
            bucket: 0,
            expect,
            action,
            counted: false,
            budget: None,
            checked: None,
        }
    }

    #[test]
    fn a_read_budget_lets_the_first_read_through_then_what_fits() {
        let budget = ReadBudget::new(100);
        assert!(budget.take(250), "the first read, however large");
        assert!(!budget.take(1));
        let budget = ReadBudget::new(100);
        assert!(budget.take(60));
        assert!(budget.take(40));
        assert!(!budget.take(1));
    }

    fn put(data: &str) -> Action {
        Action::Put {
            data: data.into(),
            expires_at_ms: None,
        }
    }

    #[test]
    fn versions_rise_and_equal_data_changes_nothing() {
        let current = doc(3, r#"{"a":1}"#, None);
        let (answer, change) = decide(&op(Expect::Any, put(r#"{"a":2}"#)), Some(&current), 2_000);
        match answer {
            Ok(WriteOutcome::Written { doc, created: false }) => {
                assert_eq!((doc.version, doc.updated_at_ms), (4, 2_000))
            }
            other => panic!("{other:?}"),
        }
        assert!(change.is_some());
        let (answer, change) = decide(&op(Expect::Any, put(r#"{"a":1}"#)), Some(&current), 2_000);
        assert_eq!(answer.ok(), Some(WriteOutcome::Unchanged(current)));
        assert!(change.is_none());
    }

    #[test]
    fn preconditions_fail_alone_and_name_the_current_version() {
        let current = doc(3, "1", None);
        for (expect, passes) in [
            (Expect::Version(vec![3]), true),
            (Expect::Version(vec![1, 2]), false),
            (Expect::Present, true),
            (Expect::Absent, false),
        ] {
            let (answer, _) = decide(&op(expect.clone(), Action::Delete), Some(&current), 2_000);
            match answer {
                Ok(WriteOutcome::Deleted(_)) => assert!(passes, "{expect:?}"),
                Err(StoreError::PreconditionFailed { current_version, .. }) => {
                    assert!(!passes, "{expect:?}");
                    assert_eq!(current_version, Some(3));
                }
                other => panic!("{expect:?}: {other:?}"),
            }
        }
        let (answer, _) = decide(&op(Expect::Version(vec![1]), put("2")), None, 2_000);
        assert!(matches!(
            answer,
            Err(StoreError::PreconditionFailed {
                current_version: None,
                ..
            })
        ));
    }

    #[test]
    fn an_expired_document_is_gone() {
        let expired = doc(7, "1", Some(1_500));
        let (answer, _) = decide(&op(Expect::Any, Action::Read), Some(&expired), 2_000);
        assert_eq!(answer.ok(), Some(WriteOutcome::Read(None)));
        let (answer, _) = decide(&op(Expect::Absent, put("1")), Some(&expired), 2_000);
        match answer {
            Ok(WriteOutcome::Written { doc, created: true }) => assert_eq!(doc.version, 1),
            other => panic!("{other:?}"),
        }
        let (answer, _) = decide(&op(Expect::Any, Action::Delete), Some(&expired), 2_000);
        assert_eq!(answer.ok(), Some(WriteOutcome::NotFound));
    }

    #[test]
    fn a_patch_merges_and_keeps_the_expiry_unless_given() {
        let current = doc(1, r#"{"a":1,"b":2}"#, Some(9_000));
        let patch = Action::patch(json!({"b": null, "c": 3}), None).expect("a shallow patch");
        match decide(&op(Expect::Any, patch), Some(&current), 2_000).0 {
            Ok(WriteOutcome::Written { doc, .. }) => {
                assert_eq!(&*doc.data, r#"{"a":1,"c":3}"#);
                assert_eq!(doc.expires_at_ms, Some(9_000));
            }
            other => panic!("{other:?}"),
        }
        let patch = Action::patch(json!({"a": 1}), Some(None)).expect("a shallow patch");
        match decide(&op(Expect::Any, patch), Some(&current), 2_000).0 {
            Ok(WriteOutcome::Written { doc, .. }) => assert_eq!(doc.expires_at_ms, None),
            other => panic!("{other:?}"),
        }
        let patch = Action::patch(json!({"a": 1}), None).expect("a shallow patch");
        assert_eq!(
            decide(&op(Expect::Any, patch.clone()), None, 2_000).0.ok(),
            Some(WriteOutcome::NotFound)
        );
        assert_eq!(
            decide(&op(Expect::Any, patch), Some(&current), 2_000).0.ok(),
            Some(WriteOutcome::Unchanged(current))
        );
    }
}
