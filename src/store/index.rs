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
