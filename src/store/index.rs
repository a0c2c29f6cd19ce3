//! Declared indexes: per collection, a list of field paths whose values
//! each document's entry is keyed by, kept by the shard writers in the
//! same transaction as the document (every write path, sweeps and drops
//! included), in a table of the engine's (`index_entries`).
//!
//! An entry's key is the field values in an order-preserving byte form:
//! comparing keys byte by byte orders documents exactly as a query's sort
//! does (`query::sort_order`), on either engine, whatever its collation.
//! An index only narrows what a query reads: every document it yields is
//! checked against the whole filter, so a query means the same with or
//! without one.

use std::cmp::Ordering;

use serde_json::Value;

use super::query::{Condition, FieldPath, Filter, Query};
use super::{Store, StoreError};
use crate::domain::CollectionName;

/// Fields an index may have.
pub const MAX_INDEX_FIELDS: usize = 4;

/// Indexes one collection may have.
pub const MAX_INDEXES_PER_COLLECTION: usize = 16;

/// The longest an entry's key may be: every engine's index takes it (a
/// PostgreSQL B-tree entry holds about 2.7 KB, with the names and id).
pub const MAX_KEY_BYTES: usize = 1536;

/// An index's definition.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexDef {
    pub name: String,
    pub fields: Vec<FieldPath>,
}

impl IndexDef {
    /// The entry key of `doc` in this index.
    pub fn key_of(&self, doc: &Value) -> Vec<u8> {
        let mut key = Vec::with_capacity(16 * self.fields.len());
        for field in &self.fields {
            encode(field.get(doc), &mut key);
        }
        key
    }

    pub fn field_names(&self) -> Vec<String> {
        self.fields.iter().map(|f| f.as_str().to_owned()).collect()
    }
}

/// Checks an index's name: 1 to 64 of `A-Z a-z 0-9 _ -`.
pub fn check_name(name: &str) -> Result<(), String> {
    let fine = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if fine {
        Ok(())
    } else {
        Err(format!("index name {name:?}: 1 to 64 of A-Z a-z 0-9 _ -"))
    }
}

/// Type tags, in the order sorting puts types.
const MISSING: u8 = 0x01;
const NULL: u8 = 0x02;
const BOOL: u8 = 0x03;
const NUMBER: u8 = 0x04;
const STRING: u8 = 0x05;
const ARRAY: u8 = 0x06;
const OBJECT: u8 = 0x07;

/// Past every key that starts with a given prefix (no encoding has 0xFF
/// right after a value: tags are below it, and UTF-8 never holds it).
const PAST: u8 = 0xFF;

/// Appends the order-preserving form of one value.
pub fn encode(value: Option<&Value>, out: &mut Vec<u8>) {
    match value {
        None => out.push(MISSING),
        Some(Value::Null) => out.push(NULL),
        Some(Value::Bool(b)) => out.extend([BOOL, u8::from(*b)]),
        Some(Value::Number(n)) => {
            out.push(NUMBER);
            let f = n.as_f64().unwrap_or(0.0);
            // -0.0 equals 0.0.
            let f = if f == 0.0 { 0.0 } else { f };
            let bits = f.to_bits();
            let sortable = if bits >> 63 == 1 { !bits } else { bits | (1 << 63) };
            out.extend(sortable.to_be_bytes());
        }
        Some(Value::String(s)) => {
            out.push(STRING);
            escaped(s.as_bytes(), out);
        }
        Some(v @ Value::Array(_)) => {
            out.push(ARRAY);
            escaped(v.to_string().as_bytes(), out);
        }
        Some(v @ Value::Object(_)) => {
            out.push(OBJECT);
            escaped(v.to_string().as_bytes(), out);
        }
    }
}

/// Bytes with 0x00 escaped as 0x00 0xFF, ended by 0x00 0x00: byte order
/// kept, and no value a prefix of another.
fn escaped(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(PAST);
        }
    }
    out.extend([0, 0]);
}

/// A string's escaped bytes without the end: what every string starting
/// with it begins with.
fn escaped_prefix(prefix: &str, out: &mut Vec<u8>) {
    out.push(STRING);
    for &b in prefix.as_bytes() {
        out.push(b);
        if b == 0 {
            out.push(PAST);
        }
    }
}

/// Which entries of an index a query reads: keys from `low` (inclusive)
/// to `high` (exclusive).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub index: IndexDef,
    /// The keys' common start: the values the filter binds by equality.
    pub prefix: Vec<u8>,
    pub low: Vec<u8>,
    pub high: Vec<u8>,
    /// The index's order is the query's (its sort fields follow the
    /// equalities, all ascending): each shard reads only as far as its
    /// page.
    pub sorted: bool,
}

/// What the filter says of a field, at its top level (under `$and` only).
#[derive(Default)]
struct Known<'a> {
    equal: Vec<(&'a FieldPath, &'a Value)>,
    ranges: Vec<(&'a FieldPath, &'a Condition)>,
}

fn gather<'a>(filter: &'a Filter, known: &mut Known<'a>) {
    match filter {
        Filter::All(parts) => parts.iter().for_each(|p| gather(p, known)),
        Filter::Field(path, Condition::Eq(operand)) => known.equal.push((path, operand.value())),
        Filter::Field(path, condition @ (Condition::Compare { .. } | Condition::Prefix(_))) => {
            known.ranges.push((path, condition));
        }
        _ => {}
    }
}

/// The best of `indexes` for `query`, if any fits: most leading fields
/// bound by equality, then a range on the next, then the query's sort.
pub fn plan(query: &Query, indexes: &[IndexDef]) -> Option<Plan> {
    let mut known = Known::default();
    if let Some(filter) = &query.filter {
        gather(filter, &mut known);
    }
    let ascending = query.sort.iter().all(|s| !s.descending);
    let mut best: Option<(u32, Plan)> = None;
    for index in indexes {
        let mut low = Vec::new();
        let mut equalities = 0;
        for field in &index.fields {
            match known.equal.iter().find(|(path, _)| *path == field) {
                Some((_, value)) => {
                    encode(Some(value), &mut low);
                    equalities += 1;
                }
                None => break,
            }
        }
        let prefix = low.clone();
        let mut high = low.clone();
        high.push(PAST);
        let mut ranged = false;
        if let Some(field) = index.fields.get(equalities) {
            if let Some((_, condition)) = known.ranges.iter().find(|(path, _)| *path == field) {
                ranged = narrow(condition, &mut low, &mut high);
            }
        }
        // The index reads in (unbound fields, id) order: the query's when
        // it sorts by exactly those, ascending, or by id alone and every
        // field is bound.
        let rest = &index.fields[equalities..];
        let sorted = if query.sort.is_empty() {
            rest.is_empty()
        } else {
            ascending && query.sort.len() == rest.len() && query.sort.iter().zip(rest).all(|(s, f)| &s.path == f)
        };
        let score = 4 * equalities as u32 + 2 * u32::from(ranged) + u32::from(sorted && !query.sort.is_empty());
        if score == 0 {
            continue;
        }
        if best.as_ref().is_none_or(|(s, _)| score > *s) {
            best = Some((
                score,
                Plan {
                    index: index.clone(),
                    prefix,
                    low,
                    high,
                    sorted,
                },
            ));
        }
    }
    best.map(|(_, plan)| plan)
}

/// Narrows `[low, high)` (both holding the equalities' prefix) by a range
/// condition on the next field; `false` if it cannot.
fn narrow(condition: &Condition, low: &mut Vec<u8>, high: &mut Vec<u8>) -> bool {
    let prefix = low.clone();
    match condition {
        Condition::Compare {
            operand,
            want,
            or_equal,
        } => {
            // Only values of the operand's type can match.
            let tag = match operand {
                Value::Number(_) => NUMBER,
                Value::String(_) => STRING,
                _ => return false,
            };
            let mut bound = prefix.clone();
            encode(Some(operand), &mut bound);
            let mut type_start = prefix.clone();
            type_start.push(tag);
            let mut type_end = prefix;
            type_end.push(tag + 1);
            match (want, or_equal) {
                (Ordering::Greater, false) => {
                    bound.push(PAST);
                    *low = bound;
                    *high = type_end;
                }
                (Ordering::Greater, true) => {
                    *low = bound;
                    *high = type_end;
                }
                (_, false) => {
                    *low = type_start;
                    *high = bound;
                }
                (_, true) => {
                    bound.push(PAST);
                    *low = type_start;
                    *high = bound;
                }
            }
            true
        }
        Condition::Prefix(text) => {
            let mut start = prefix;
            escaped_prefix(text, &mut start);
            let mut end = start.clone();
            end.push(PAST);
            *low = start;
            *high = end;
            true
        }
        _ => false,
    }
}

/// The index that would fit `query`: its equality fields, then a range's,
/// then the sort's (for the refusal of a query that none fits).
pub fn suggest(query: &Query) -> Vec<String> {
    let mut known = Known::default();
    if let Some(filter) = &query.filter {
        gather(filter, &mut known);
    }
    let mut fields: Vec<String> = Vec::new();
    let mut add = |path: &FieldPath| {
        if fields.len() < MAX_INDEX_FIELDS && !fields.iter().any(|f| f == path.as_str()) {
            fields.push(path.as_str().to_owned());
        }
    };
    known.equal.iter().for_each(|(p, _)| add(p));
    if let Some((p, _)) = known.ranges.first() {
        add(p);
    }
    query.sort.iter().for_each(|s| add(&s.path));
    fields
}

/// A name for an index of `fields`: `by_` and the fields.
pub fn suggested_name(fields: &[String]) -> String {
    let mut name = String::from("by");
    for field in fields {
        name.push('_');
        name.extend(field.chars().map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        }));
    }
    name.truncate(64);
    name
}

/// An index as its listing shows it.
#[derive(Debug, Clone)]
pub struct IndexInfo {
    pub name: String,
    pub fields: Vec<String>,
    /// Built on every shard: queries use it.
    pub ready: bool,
    /// Documents the build has covered, over all shards.
    pub indexed: u64,
    /// Shards whose part of the build is done, of all shards.
    pub shards_built: usize,
    /// Documents the build could not cover (a key over [`MAX_KEY_BYTES`]):
    /// while there are any, the index is never used.
    pub oversized: u64,
    pub shards: usize,
    pub created_at_ms: i64,
}

/// Documents a build covers per step: one transaction of the shard's
/// writer, between its other writes.
const BUILD_STEP: u32 = 1000;

impl Store {
    /// Declares an index of `fields` on a collection: every write keeps its
    /// entries from now on, and a background build covers the documents
    /// already there (queries use it once that is done on every shard).
    /// `Ok(false)` if it exists already with these fields; a conflict if
    /// with others.
    pub async fn declare_index(
        &self,
        collection: &CollectionName,
        name: &str,
        fields: Vec<String>,
    ) -> Result<bool, StoreError> {
        let invalid = |reason: String| StoreError::InvalidDocument { reason };
        check_name(name).map_err(invalid)?;
        if fields.is_empty() || fields.len() > MAX_INDEX_FIELDS {
            return Err(invalid(format!("fields: 1 to {MAX_INDEX_FIELDS} field paths")));
        }
        for (i, field) in fields.iter().enumerate() {
            FieldPath::parse(field).map_err(|e| invalid(format!("fields[{i}]: {e}")))?;
            if fields[..i].contains(field) {
                return Err(invalid(format!("fields[{i}]: {field:?} is there twice")));
            }
        }
        let _one_at_a_time = self.inner.catalog_changes.lock().await;
        let existing = self.indexes(collection).await?;
        if let Some(index) = existing.iter().find(|index| index.name == name) {
            if index.fields == fields {
                return Ok(false);
            }
            return Err(StoreError::Conflict {
                reason: format!(
                    "index {name:?} of collection {collection} exists with fields {:?}; drop it first to change them",
                    index.fields
                ),
            });
        }
        if existing.len() >= MAX_INDEXES_PER_COLLECTION {
            return Err(StoreError::Unprocessable {
                reason: format!(
                    "collection {collection} has {MAX_INDEXES_PER_COLLECTION} indexes, the most it may have"
                ),
            });
        }
        self.change_index_everywhere(collection, name, Some(fields)).await?;
        self.spawn_index_build(collection.clone(), name.to_owned());
        Ok(true)
    }

    /// Drops an index and its entries; `false` if there was none.
    pub async fn drop_index(&self, collection: &CollectionName, name: &str) -> Result<bool, StoreError> {
        let _one_at_a_time = self.inner.catalog_changes.lock().await;
        if !self.indexes(collection).await?.iter().any(|index| index.name == name) {
            return Ok(false);
        }
        self.change_index_everywhere(collection, name, None).await?;
        Ok(true)
    }

    /// The change on every shard, the recording one first.
    async fn change_index_everywhere(
        &self,
        collection: &CollectionName,
        name: &str,
        fields: Option<Vec<String>>,
    ) -> Result<(), StoreError> {
        let at_ms = crate::clock::now_millis();
        let recording = self.numbering_shard(collection);
        self.inner.shards[recording]
            .change_index(collection, name, fields.clone(), true, at_ms)
            .await?;
        let others = self
            .inner
            .shards
            .iter()
            .filter(|shard| shard.index != recording)
            .map(|shard| shard.change_index(collection, name, fields.clone(), false, at_ms));
        for answer in futures_util::future::join_all(others).await {
            answer?;
        }
        Ok(())
    }

    /// A collection's indexes with their build's progress.
    pub async fn indexes(&self, collection: &CollectionName) -> Result<Vec<IndexInfo>, StoreError> {
        let catalogs = futures_util::future::join_all(
            self.inner
                .shards
                .iter()
                .map(|shard| shard.reads().index_catalog(collection)),
        )
        .await;
        let shards = self.inner.shards.len();
        let mut merged: Vec<IndexInfo> = Vec::new();
        for catalog in catalogs {
            for stored in catalog? {
                let info = match merged.iter_mut().find(|i| i.name == stored.name) {
                    Some(info) => info,
                    None => {
                        merged.push(IndexInfo {
                            name: stored.name.clone(),
                            fields: stored.fields.clone(),
                            ready: false,
                            indexed: 0,
                            oversized: 0,
                            shards_built: 0,
                            shards,
                            created_at_ms: stored.created_at_ms,
                        });
                        let last = merged.len() - 1;
                        &mut merged[last]
                    }
                };
                info.indexed += stored.indexed;
                info.oversized += stored.oversized;
                info.shards_built += usize::from(stored.built);
            }
        }
        for info in &mut merged {
            info.ready = info.shards_built == shards && info.oversized == 0;
        }
        merged.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(merged)
    }

    /// Runs an index's build in the background, shard after shard, each a
    /// step at a time through its writer (so writes go on between steps),
    /// until every shard is covered, the index is dropped, or the server
    /// stops. A failed step is tried again a second later.
    pub fn spawn_index_build(&self, collection: CollectionName, name: String) {
        let store = self.clone();
        tokio::spawn(async move {
            let events = store.inner.events.clone();
            events.index_builds_running(1);
            let mut shutdown = store.inner.shutdown.subscribe();
            let started = std::time::Instant::now();
            let mut covered = 0u64;
            'shards: for shard in &store.inner.shards {
                loop {
                    if *shutdown.borrow() {
                        break 'shards;
                    }
                    match shard.build_index(&collection, &name, BUILD_STEP).await {
                        Ok((n, done)) => {
                            covered += n;
                            events.index_built(n);
                            if done {
                                break;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(collection = %collection, index = %name, shard = shard.index, error = %e, "an index build step failed; trying again");
                            tokio::select! {
                                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                                _ = shutdown.changed() => {}
                            }
                        }
                    }
                }
            }
            events.index_builds_running(-1);
            tracing::info!(collection = %collection, index = %name, documents = covered, seconds = started.elapsed().as_secs_f64(), "index build ended");
        });
    }

    /// Goes on with the builds a stop interrupted.
    pub async fn resume_index_builds(&self) -> Result<(), StoreError> {
        let mut unbuilt: Vec<(String, String)> = Vec::new();
        for shard in &self.inner.shards {
            for found in shard.reads().unbuilt_indexes().await? {
                if !unbuilt.contains(&found) {
                    unbuilt.push(found);
                }
            }
        }
        for (collection, name) in unbuilt {
            match CollectionName::parse(&collection) {
                Ok(collection) => self.spawn_index_build(collection, name),
                Err(e) => {
                    tracing::error!(collection = %collection, error = %e, "an index of a collection whose name does not parse")
                }
            }
        }
        Ok(())
    }

    /// The indexes built on every shard, as the planner takes them.
    pub(super) async fn ready_indexes(&self, collection: &CollectionName) -> Result<Vec<IndexDef>, StoreError> {
        Ok(self
            .indexes(collection)
            .await?
            .into_iter()
            .filter(|info| info.ready)
            .filter_map(|info| {
                let fields = info
                    .fields
                    .iter()
                    .map(|f| FieldPath::parse(f))
                    .collect::<Result<Vec<_>, _>>()
                    .ok()?;
                Some(IndexDef {
                    name: info.name,
                    fields,
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::query::{parse_sort, sort_order};
    use serde_json::json;

    fn key(value: Option<&Value>) -> Vec<u8> {
        let mut out = Vec::new();
        encode(value, &mut out);
        out
    }

    #[test]
    fn keys_order_as_sorting_does() {
        let values = [
            json!(null),
            json!(false),
            json!(true),
            json!(-1e300),
            json!(-2),
            json!(-0.5),
            json!(0),
            json!(0.25),
            json!(3),
            json!(1e300),
            json!(""),
            json!("a"),
            json!("a\u{0}b"),
            json!("ab"),
            json!("b"),
            json!("é"),
            json!([1]),
            json!([1, 2]),
            json!({"a": 1}),
        ];
        let mut all: Vec<Option<&Value>> = vec![None];
        all.extend(values.iter().map(Some));
        for a in &all {
            for b in &all {
                assert_eq!(key(*a).cmp(&key(*b)), sort_order(*a, *b), "{a:?} vs {b:?}");
            }
        }
        assert_eq!(key(Some(&json!(1))), key(Some(&json!(1.0))));
        assert_eq!(key(Some(&json!(-0.0))), key(Some(&json!(0))));
    }

    #[test]
    fn the_plan_binds_equalities_then_a_range_then_the_sort() {
        let index = |name: &str, fields: &[&str]| IndexDef {
            name: name.into(),
            fields: fields.iter().map(|f| FieldPath::parse(f).expect("path")).collect(),
        };
        let indexes = [index("by_city", &["city"]), index("by_city_age", &["city", "age"])];
        let query = Query {
            filter: Some(Filter::parse(&json!({"city": "Oslo", "age": {"$gt": 18}})).expect("filter")),
            sort: parse_sort(&json!(["age"])).expect("sort"),
            fields: None,
        };
        let plan = plan(&query, &indexes).expect("a plan");
        assert_eq!(plan.index.name, "by_city_age");
        assert!(plan.sorted);
        let doc = json!({"city": "Oslo", "age": 30});
        let k = plan.index.key_of(&doc);
        assert!(plan.low <= k && k < plan.high);
        for outside in [
            json!({"city": "Oslo", "age": 18}),
            json!({"city": "Oslo", "age": "30"}),
            json!({"city": "Bergen", "age": 30}),
        ] {
            let k = plan.index.key_of(&outside);
            assert!(!(plan.low <= k && k < plan.high), "{outside}");
        }
        let none = Query {
            filter: Some(Filter::parse(&json!({"name": "x"})).expect("filter")),
            sort: Vec::new(),
            fields: None,
        };
        assert!(super::plan(&none, &indexes).is_none());
        assert_eq!(suggest(&query), vec!["city", "age"]);
    }
}
