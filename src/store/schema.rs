//! Collection schemas: a JSON Schema (draft 2020-12) a collection's
//! documents must match, compiled once and checked on every write path
//! (a put, a merge patch's result, each batch operation, each import line,
//! the original API).
//!
//! Validation is the `jsonschema` crate's. What is exdaas's own is the
//! bounds on what a client may send as a schema and on what checking a
//! document may cost: its size and depth, no references outside it
//! (nothing is fetched), patterns compiled by a linear-time regex engine,
//! and what a schema expands to once its `$ref`s are written out ([`cost`]):
//! at most [`MAX_SCHEMA_COST`] subschemas per value of a document. A check
//! runs before the write is queued, off the runtime's workers when it is
//! long ([`check_documents`]); the shard's writer only confirms that the
//! schema it checked is still the collection's, so a costly check holds no
//! other collection's commit.

mod cost;
mod violation;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
pub use violation::{SchemaError, Violation};

use serde_json::Value;

use super::{canonical_json, StoreError};
use crate::domain::{measure, CollectionName, DocId, MAX_DEPTH};

/// The largest a schema's text may be.
pub const MAX_SCHEMA_BYTES: usize = 64 << 10;

/// The most violations one refusal lists.
pub const MAX_VIOLATIONS: usize = 16;

/// The most subschemas a schema may apply to one value of a document, its
/// `$ref`s written out in full: a schema that could cost more is refused.
pub const MAX_SCHEMA_COST: u64 = 10_000;

/// The most checks (subschemas applied to a value) one document may take:
/// a document that would take more is refused, as too costly to check
/// against its collection's schema. 0.1 to 0.4 s of one core on a release
/// build, measured across shapes of schema (2 to 9 ns a check).
pub const MAX_DOCUMENT_CHECKS: u64 = 50_000_000;

/// Checks short enough to run where they are asked for (a runtime worker,
/// a shard writer): 0.1 to 0.4 ms on a release build.
pub const INLINE_CHECKS: u64 = 50_000;

/// Checks under which a refused document's violations are all collected
/// (jsonschema collects every one before any is read) and the first 16
/// listed; above, only the first is.
const LISTED_CHECKS: u64 = 200_000;

/// Times one write is checked and sent again when its document changed
/// while it was checked (see [`StoreError::SchemaRace`]).
pub(super) const SCHEMA_RACE_ATTEMPTS: u32 = 3;

/// A regex in a schema's `pattern` may compile to at most this much.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A schema, compiled, with the text it was compiled from.
pub struct CollectionSchema {
    /// The schema as canonical JSON text, as stored.
    pub text: Arc<str>,
    validator: jsonschema::Validator,
    /// What checking a document costs, or why this (stored) schema is not
    /// run at all.
    cost: Result<cost::CostModel, String>,
}

impl std::fmt::Debug for CollectionSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectionSchema").field("text", &self.text).finish()
    }
}

/// A document checked before its write was queued: the writer takes the
/// answer if the document it would store is this one and the collection's
/// schema is still this version.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The schema's version (see [`SchemaState`]).
    pub schema_version: u64,
    /// The document checked, as canonical JSON text.
    pub text: Arc<str>,
    /// None: it matches.
    pub violations: Vec<Violation>,
}

impl CollectionSchema {
    /// Compiles a client's schema, refusing what is too large or deep, not
    /// a schema, refers to anything outside itself, or costs too much to
    /// check (see [`MAX_SCHEMA_COST`]).
    pub fn compile(schema: &Value) -> Result<Self, SchemaError> {
        let compiled = Self::compile_unbounded(schema)?;
        match &compiled.cost {
            Ok(_) => Ok(compiled),
            Err(why) => Err(SchemaError(why.clone())),
        }
    }

    /// Compiles a schema as stored (which compiled when it was set). One set
    /// before schemas were bounded in cost and over the bound is kept, but
    /// refuses every document (see [`CollectionSchema::refusal`]): running
    /// it could stall the server, and letting anything in would break the
    /// collection's promise.
    pub fn from_stored(text: &str) -> Result<Self, SchemaError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| SchemaError(format!("a stored schema is not JSON: {e}")))?;
        Self::compile_unbounded(&value)
    }

    fn compile_unbounded(schema: &Value) -> Result<Self, SchemaError> {
        let size = measure(schema);
        if size.depth > MAX_DEPTH {
            return Err(SchemaError(format!(
                "the schema nests {} arrays and objects deep; the limit is {MAX_DEPTH}",
                size.depth
            )));
        }
        if size.bytes > MAX_SCHEMA_BYTES {
            return Err(SchemaError(format!(
                "the schema is about {} bytes; a schema holds at most {MAX_SCHEMA_BYTES}",
                size.bytes
            )));
        }
        if !matches!(schema, Value::Object(_) | Value::Bool(_)) {
            return Err(SchemaError("a JSON Schema is an object (or true or false)".into()));
        }
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .offline()
            .with_pattern_options(jsonschema::PatternOptions::regex().size_limit(REGEX_SIZE_LIMIT))
            .build(schema)
            .map_err(|e| {
                let at = e.instance_path().as_str();
                let at = if at.is_empty() {
                    String::new()
                } else {
                    format!(" at {at}")
                };
                SchemaError(format!("not a valid JSON Schema (draft 2020-12){at}: {e}"))
            })?;
        let cost = cost::analyse(schema, MAX_SCHEMA_COST).map_err(|e| match e {
            cost::CostError::TooCostly { .. } => format!(
                "the schema is too costly to check: {e}; a schema may apply at most {MAX_SCHEMA_COST} \
                 subschemas to one value"
            ),
            _ => format!("the schema cannot be used: {e}"),
        });
        Ok(Self {
            text: canonical_json(schema),
            validator,
            cost,
        })
    }

    /// Why this schema (stored before schemas were bounded in cost) refuses
    /// every document, if it does.
    pub fn refusal(&self) -> Option<&str> {
        self.cost.as_ref().err().map(String::as_str)
    }

    /// The most subschemas it applies to one value of a document.
    pub fn cost(&self) -> u64 {
        self.cost.as_ref().map_or(u64::MAX, cost::CostModel::per_value)
    }

    /// About how many checks `data` takes (see [`MAX_DOCUMENT_CHECKS`]).
    pub fn work(&self, data: &Value) -> u64 {
        self.cost.as_ref().map_or(0, |model| model.work(data))
    }

    /// The checks [`CollectionSchema::violations`] makes of `data`: none
    /// when it refuses it as too costly without checking.
    pub fn checks_of(&self, data: &Value) -> u64 {
        match self.work(data) {
            work if work > MAX_DOCUMENT_CHECKS => 0,
            work => work,
        }
    }

    /// The ways `data` fails the schema (none: it matches), at most
    /// [`MAX_VIOLATIONS`].
    pub fn violations(&self, data: &Value) -> Vec<Violation> {
        self.violations_within(data, self.work(data))
    }

    /// [`CollectionSchema::violations`] of a document that takes `work`
    /// checks. Valid documents cost one pass that stops at the first
    /// failure; violations are collected (jsonschema collects them all
    /// before any is read) only when that is cheap, else the first alone.
    fn violations_within(&self, data: &Value, work: u64) -> Vec<Violation> {
        if let Some(refusal) = self.refusal() {
            return vec![cost_violation(format!(
                "the collection's schema refuses every document until it is set again: {refusal}"
            ))];
        }
        if work > MAX_DOCUMENT_CHECKS {
            return vec![cost_violation(format!(
                "checking this document against its collection's schema would take about {work} checks \
                 ({} per value at most); a document may take at most {MAX_DOCUMENT_CHECKS}",
                self.cost()
            ))];
        }
        if self.validator.is_valid(data) {
            return Vec::new();
        }
        let violation = |e: jsonschema::ValidationError<'_>| Violation {
            pointer: e.instance_path().as_str().to_owned(),
            keyword: e.kind().keyword().to_owned(),
            message: e.to_string(),
        };
        let found: Vec<Violation> = if work <= LISTED_CHECKS {
            self.validator
                .iter_errors(data)
                .take(MAX_VIOLATIONS)
                .map(violation)
                .collect()
        } else {
            self.validator.validate(data).err().map(violation).into_iter().collect()
        };
        if found.is_empty() {
            // `is_valid` said no: never let such a document pass.
            return vec![Violation {
                pointer: String::new(),
                keyword: "$schema".into(),
                message: "the document does not match the collection's schema".into(),
            }];
        }
        found
    }

    /// The violations of a document kept as JSON text.
    pub fn violations_of_text(&self, text: &str) -> Vec<Violation> {
        match serde_json::from_str::<Value>(text) {
            Ok(data) => self.violations(&data),
            Err(e) => vec![not_json(&e)],
        }
    }
}

/// A document too costly to check (or any, under a stored schema too
/// costly to run), as a violation.
fn cost_violation(message: String) -> Violation {
    Violation {
        pointer: String::new(),
        keyword: "cost".into(),
        message,
    }
}

/// Stored text is always JSON; if not, say so rather than pass it.
pub(super) fn not_json(e: &serde_json::Error) -> Violation {
    Violation {
        pointer: String::new(),
        keyword: "type".into(),
        message: format!("the stored document is not JSON: {e}"),
    }
}

/// Blocking threads checking documents, at most one per core at a time:
/// costly checks queue for each other, not for the runtime's workers or
/// the shard writers.
fn checkers() -> Arc<tokio::sync::Semaphore> {
    static CHECKERS: OnceLock<Arc<tokio::sync::Semaphore>> = OnceLock::new();
    CHECKERS
        .get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
            Arc::new(tokio::sync::Semaphore::new(cores))
        })
        .clone()
}

/// The violations of each of `documents` (none: it matches): checked here
/// when that is quick ([`INLINE_CHECKS`] in all), else on a blocking
/// thread among [`checkers`].
pub async fn check_documents(
    schema: Arc<CollectionSchema>,
    documents: Vec<Value>,
) -> Result<Vec<Vec<Violation>>, StoreError> {
    let works: Vec<u64> = documents.iter().map(|data| schema.work(data)).collect();
    let total = works_total(&works);
    let check = move || -> Vec<Vec<Violation>> {
        documents
            .iter()
            .zip(&works)
            .map(|(data, &work)| schema.violations_within(data, work))
            .collect()
    };
    if total <= INLINE_CHECKS {
        return Ok(check());
    }
    let turn = checkers()
        .acquire_owned()
        .await
        .map_err(|_| StoreError::Internal("the schema checkers were closed"))?;
    tokio::task::spawn_blocking(move || {
        // Held by the thread: a request that goes away leaves its check
        // counted until it ends.
        let _turn = turn;
        check()
    })
    .await
    .map_err(|_| StoreError::Internal("a schema check panicked"))
}

fn works_total(works: &[u64]) -> u64 {
    works.iter().fold(0, |sum, &work| sum.saturating_add(work))
}

/// The schemas a shard's writer holds, as it last published them: what
/// writes are checked against before they are queued.
#[derive(Clone, Default)]
pub struct PublishedSchemas(Arc<parking_lot::RwLock<Arc<HashMap<CollectionName, SchemaState>>>>);

impl PublishedSchemas {
    pub fn publish(&self, schemas: &HashMap<CollectionName, SchemaState>) {
        *self.0.write() = Arc::new(schemas.clone());
    }

    /// A collection's schema as last published.
    pub fn of(&self, collection: &CollectionName) -> Option<SchemaState> {
        self.0.read().get(collection).cloned()
    }
}

/// A collection's schema as a shard holds it: the version rises with every
/// change, a removal included (`schema: None`), so every shard keeps the
/// latest whatever order the changes reach it in.
#[derive(Debug, Clone)]
pub struct SchemaState {
    pub version: u64,
    pub schema: Option<Arc<CollectionSchema>>,
    /// When it was set or removed, Unix milliseconds.
    pub updated_at_ms: i64,
}

/// What a collection's documents look like against its schema.
#[derive(Debug, Clone, Default)]
pub struct Mismatches {
    /// Documents read.
    pub checked: u64,
    /// Of those, how many do not match.
    pub count: u64,
    /// The first of them in id order (at most the limit asked for), with
    /// why.
    pub found: Vec<(DocId, Vec<Violation>)>,
    /// Where to go on from (after this id), when the pass stopped before
    /// the end of the collection.
    pub next_after: Option<DocId>,
}

/// How far one pass of [`Store::mismatches`] goes.
#[derive(Debug, Clone)]
pub struct MismatchPass<'a> {
    /// From after this id (in id order).
    pub after: Option<&'a str>,
    /// Mismatches kept with their violations.
    pub keep: usize,
    /// Stop once `keep` are kept.
    pub stop_when_kept: bool,
    /// Stop after a page once about this many documents were read...
    pub read_at_most: u64,
    /// ...or before a document once this many checks were spent (at least
    /// one document is always checked).
    pub checks_at_most: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn violations_name_the_pointer_and_the_keyword() {
        let schema = CollectionSchema::compile(&json!({
            "type": "object",
            "required": ["name"],
            "properties": {"age": {"type": "integer", "minimum": 0}, "tags": {"type": "array", "items": {"type": "string"}}}
        }))
        .expect("a schema");
        assert!(schema.violations(&json!({"name": "x", "age": 3})).is_empty());
        let found = schema.violations(&json!({"age": -1, "tags": ["a", 2]}));
        let mut pairs: Vec<(&str, &str)> = found.iter().map(|v| (v.pointer.as_str(), v.keyword.as_str())).collect();
        pairs.sort_unstable();
        assert_eq!(pairs, vec![("", "required"), ("/age", "minimum"), ("/tags/1", "type")]);
    }

    #[test]
    fn what_is_not_a_usable_schema_is_refused() {
        for bad in [
            json!({"type": "no-such-type"}),
            json!({"$ref": "https://example.com/elsewhere.json"}),
            json!({"pattern": "("}),
            json!([1, 2]),
        ] {
            assert!(CollectionSchema::compile(&bad).is_err(), "{bad}");
        }
        let mut deep = json!({});
        for _ in 0..(MAX_DEPTH + 1) {
            deep = json!({ "not": deep });
        }
        assert!(CollectionSchema::compile(&deep).is_err());
        let huge = json!({ "description": "x".repeat(MAX_SCHEMA_BYTES) });
        assert!(CollectionSchema::compile(&huge).is_err());
    }

    #[test]
    fn a_pattern_that_backtracks_elsewhere_runs_in_linear_time() {
        let schema = CollectionSchema::compile(&json!({"type": "string", "pattern": "^(a+)+$"})).expect("a schema");
        let started = std::time::Instant::now();
        let evil = format!("{}!", "a".repeat(10_000));
        assert_eq!(schema.violations(&json!(evil)).len(), 1);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
}

#[cfg(test)]
mod bounded {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_are_followed_as_jsonschema_does() {
        // The draft's own example: a strict tree extends a tree, whose
        // `$dynamicRef` lands on the strict one.
        let strict_tree = json!({
            "$id": "https://example.com/strict-tree",
            "$dynamicAnchor": "node",
            "$ref": "tree",
            "unevaluatedProperties": false,
            "$defs": {"tree": {
                "$id": "https://example.com/tree",
                "$dynamicAnchor": "node",
                "type": "object",
                "properties": {"data": true, "children": {"type": "array", "items": {"$dynamicRef": "#node"}}}
            }}
        });
        for schema in [
            json!({"$id": "https://example.com/person", "$defs": {"name": {"type": "string"}}, "properties": {"name": {"$ref": "https://example.com/person#/$defs/name"}}}),
            json!({"$defs": {"name": {"$anchor": "name", "type": "string"}}, "properties": {"name": {"$ref": "#name"}}}),
            json!({"$id": "https://example.com/a", "$defs": {"b": {"$id": "b", "type": "integer"}}, "items": {"$ref": "b"}}),
            json!({"$defs": {"a~b/c%d": {"type": "string"}}, "items": {"$ref": "#/$defs/a~0b~1c%25d"}}),
            strict_tree.clone(),
        ] {
            let compiled = CollectionSchema::compile(&schema).unwrap_or_else(|e| panic!("{schema}: {e}"));
            assert!(compiled.cost() < 20, "{schema}: {}", compiled.cost());
        }
        let strict = CollectionSchema::compile(&strict_tree).expect("a schema");
        assert!(strict.violations(&json!({"children": [{"data": 1}]})).is_empty());
        assert_eq!(strict.violations(&json!({"children": [{"daat": 1}]})).len(), 1);
    }

    #[test]
    fn a_stored_schema_over_the_bound_refuses_every_document() {
        let mut defs = serde_json::Map::new();
        for i in 0..20 {
            let next = format!("#/$defs/d{}", i + 1);
            defs.insert(format!("d{i}"), json!({"allOf": [{"$ref": next}, {"$ref": next}]}));
        }
        defs.insert("d20".into(), json!({}));
        let costly = json!({"$defs": defs, "$ref": "#/$defs/d0"});
        let refused = CollectionSchema::compile(&costly).expect_err("too costly");
        assert!(refused.0.contains(&MAX_SCHEMA_COST.to_string()), "{}", refused.0);
        let stored = CollectionSchema::from_stored(&costly.to_string()).expect("kept");
        assert!(stored.refusal().is_some());
        let found = stored.violations(&json!({}));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].keyword, "cost");
    }

    #[test]
    fn a_document_too_costly_to_check_is_refused_unchecked() {
        let mut defs = serde_json::Map::new();
        for i in 0..11 {
            let next = format!("#/$defs/d{}", i + 1);
            defs.insert(format!("d{i}"), json!({"allOf": [{"$ref": next}, {"$ref": next}]}));
        }
        defs.insert("d11".into(), json!({}));
        let schema =
            CollectionSchema::compile(&json!({"$defs": defs, "items": {"$ref": "#/$defs/d0"}})).expect("a schema");
        let items = (MAX_DOCUMENT_CHECKS / schema.cost()) as usize;
        let fits = Value::Array(vec![json!(0); items - 10]);
        assert!(schema.work(&fits) <= MAX_DOCUMENT_CHECKS);
        let over = Value::Array(vec![json!(0); items + 10]);
        let started = std::time::Instant::now();
        let found = schema.violations(&over);
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
        assert_eq!(found.len(), 1);
        assert!(
            found[0].message.contains(&MAX_DOCUMENT_CHECKS.to_string()),
            "{}",
            found[0].message
        );
    }
}
