//! Queries over a collection's documents: a filter on field paths, a sort,
//! a projection, pages with a cursor, a count. This module holds the
//! language (parsed from JSON, every bound checked, every mistake named)
//! and its meaning, as plain Rust over `serde_json::Value`: every way a
//! query runs (a scan, an index) ends in this evaluation, so they cannot
//! disagree.
//!
//! Meaning, in short (the book's "Queries" page, docs/src/query/queries.md, says it in full):
//! - A field path is dot-separated object keys; a segment of digits also
//!   indexes an array.
//! - A missing field is not `null`: `{"a": null}` matches only a present
//!   `null`; `$exists` tells them apart.
//! - Values compare only with values of their own type: numbers as
//!   numbers (1 equals 1.0), strings byte by byte (UTF-8), false before
//!   true; arrays and objects are equal when their canonical JSON is.
//!   `$gt` and friends never match a value of another type.
//! - Sorting orders types: missing, null, booleans, numbers, strings,
//!   arrays, objects; ties go by id.

pub(crate) mod eval;

use std::cmp::Ordering;
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use self::eval::{canonical, is_composite, same_type_order, Eval};
pub use self::eval::{Operand, ValueSet};
use super::document::Document;
use crate::domain::DocId;

/// Bounds on what one query may ask.
pub const MAX_FILTER_NODES: usize = 256;
pub const MAX_FILTER_DEPTH: usize = 16;
pub const MAX_PATH_SEGMENTS: usize = 16;
pub const MAX_SEGMENT_BYTES: usize = 256;
pub const MAX_IN_VALUES: usize = 256;
pub const MAX_SORT_FIELDS: usize = 4;
pub const MAX_PROJECTED_FIELDS: usize = 32;

/// A field path: object keys (or array positions) from the document down.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPath {
    segments: Vec<String>,
    text: String,
}

impl FieldPath {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("a field path may not be empty".into());
        }
        let segments: Vec<String> = raw.split('.').map(str::to_owned).collect();
        if segments.len() > MAX_PATH_SEGMENTS {
            return Err(format!(
                "field path {raw:?} has {} segments; at most {MAX_PATH_SEGMENTS}",
                segments.len()
            ));
        }
        for segment in &segments {
            if segment.is_empty() {
                return Err(format!("field path {raw:?} has an empty segment"));
            }
            if segment.len() > MAX_SEGMENT_BYTES {
                return Err(format!(
                    "a segment of field path {raw:?} is longer than {MAX_SEGMENT_BYTES} bytes"
                ));
            }
            if segment.starts_with('$') {
                return Err(format!(
                    "field path {raw:?}: a segment may not start with '$' (operators go inside the field's object)"
                ));
            }
        }
        Ok(Self {
            segments,
            text: raw.to_owned(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value at this path in `doc`, if there is one.
    pub fn get<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        let mut at = doc;
        for segment in &self.segments {
            at = match at {
                Value::Object(fields) => fields.get(segment)?,
                Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(at)
    }
}

/// A filter: a tree of conditions on field paths.
#[derive(Debug, Clone)]
pub enum Filter {
    All(Vec<Filter>),
    Any(Vec<Filter>),
    Not(Box<Filter>),
    Field(FieldPath, Condition),
}

/// A condition on one field's value. Operands of equality are prepared
/// when the query is parsed (see [`eval`]).
#[derive(Debug, Clone)]
pub enum Condition {
    Eq(Operand),
    Ne(Operand),
    /// `$gt`, `$gte`, `$lt`, `$lte`: the ordering the value must have
    /// against the operand, and whether equal passes.
    Compare {
        operand: Value,
        want: Ordering,
        or_equal: bool,
    },
    In(ValueSet),
    NotIn(ValueSet),
    Exists(bool),
    Prefix(String),
    Contains(Operand),
}

/// How many filter nodes a parse has used, against the bound.
struct Budget(usize);

impl Budget {
    fn take(&mut self) -> Result<(), String> {
        self.0 += 1;
        if self.0 > MAX_FILTER_NODES {
            return Err(format!("the filter has more than {MAX_FILTER_NODES} conditions"));
        }
        Ok(())
    }
}

impl Filter {
    /// Parses a filter object: `{"field": value}` for equality,
    /// `{"field": {"$op": operand, ...}}`, `{"$and"|"$or": [...]}`,
    /// `{"$not": {...}}`; several keys all must hold. Errors name the part.
    pub fn parse(raw: &Value) -> Result<Self, String> {
        Self::parse_at(raw, "filter", 0, &mut Budget(0))
    }

    fn parse_at(raw: &Value, at: &str, depth: usize, budget: &mut Budget) -> Result<Self, String> {
        if depth > MAX_FILTER_DEPTH {
            return Err(format!("{at}: the filter nests deeper than {MAX_FILTER_DEPTH} levels"));
        }
        let Value::Object(fields) = raw else {
            return Err(format!("{at}: a filter is an object, not {}", kind_of(raw)));
        };
        let mut parts = Vec::with_capacity(fields.len());
        for (key, value) in fields {
            budget.take()?;
            let here = format!("{at}.{key}");
            let part = match key.as_str() {
                "$and" | "$or" => {
                    let Value::Array(items) = value else {
                        return Err(format!("{here}: a list of filters, not {}", kind_of(value)));
                    };
                    if items.is_empty() {
                        return Err(format!("{here}: an empty list"));
                    }
                    let list = items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| Self::parse_at(item, &format!("{here}[{i}]"), depth + 1, budget))
                        .collect::<Result<Vec<_>, _>>()?;
                    if key == "$and" {
                        Filter::All(list)
                    } else {
                        Filter::Any(list)
                    }
                }
                "$not" => Filter::Not(Box::new(Self::parse_at(value, &here, depth + 1, budget)?)),
                op if op.starts_with('$') => {
                    return Err(format!("{here}: unknown operator {op:?} (at the top: $and, $or, $not)"));
                }
                field => {
                    let path = FieldPath::parse(field).map_err(|e| format!("{here}: {e}"))?;
                    Self::parse_conditions(path, value, &here, budget)?
                }
            };
            parts.push(part);
        }
        Ok(match parts.len() {
            1 => parts.pop().unwrap_or(Filter::All(Vec::new())),
            _ => Filter::All(parts),
        })
    }

    /// A field's value: an object of operators, or a value to equal.
    fn parse_conditions(path: FieldPath, raw: &Value, at: &str, budget: &mut Budget) -> Result<Self, String> {
        let operators = match raw {
            Value::Object(ops) if ops.keys().next().is_some_and(|k| k.starts_with('$')) => ops,
            other => {
                check_operand(other, at)?;
                return Ok(Filter::Field(path, Condition::Eq(Operand::new(other.clone()))));
            }
        };
        let mut parts = Vec::with_capacity(operators.len());
        for (op, operand) in operators {
            budget.take()?;
            let here = format!("{at}.{op}");
            check_operand(operand, &here)?;
            let condition = match op.as_str() {
                "$eq" => Condition::Eq(Operand::new(operand.clone())),
                "$ne" => Condition::Ne(Operand::new(operand.clone())),
                "$gt" | "$gte" | "$lt" | "$lte" => {
                    if !matches!(operand, Value::Number(_) | Value::String(_)) {
                        return Err(format!("{here}: compares with a number or a string, not {}", kind_of(operand)));
                    }
                    Condition::Compare {
                        operand: operand.clone(),
                        want: if op.starts_with("$g") {
                            Ordering::Greater
                        } else {
                            Ordering::Less
                        },
                        or_equal: op.ends_with('e'),
                    }
                }
                "$in" | "$nin" => {
                    let Value::Array(values) = operand else {
                        return Err(format!("{here}: a list of values, not {}", kind_of(operand)));
                    };
                    if values.len() > MAX_IN_VALUES {
                        return Err(format!("{here}: at most {MAX_IN_VALUES} values"));
                    }
                    if op == "$in" {
                        Condition::In(ValueSet::new(values))
                    } else {
                        Condition::NotIn(ValueSet::new(values))
                    }
                }
                "$exists" => match operand {
                    Value::Bool(b) => Condition::Exists(*b),
                    other => return Err(format!("{here}: true or false, not {}", kind_of(other))),
                },
                "$prefix" => match operand {
                    Value::String(s) => Condition::Prefix(s.clone()),
                    other => return Err(format!("{here}: a string, not {}", kind_of(other))),
                },
                "$contains" => Condition::Contains(Operand::new(operand.clone())),
                other => {
                    return Err(format!(
                        "{here}: unknown operator {other:?} (on a field: $eq, $ne, $gt, $gte, $lt, $lte, $in, $nin, $exists, $prefix, $contains)"
                    ))
                }
            };
            parts.push(Filter::Field(path.clone(), condition));
        }
        Ok(match parts.len() {
            1 => parts.pop().unwrap_or(Filter::All(Vec::new())),
            _ => Filter::All(parts),
        })
    }

    /// Whether `doc` passes.
    pub fn matches(&self, doc: &Value) -> bool {
        self.passes(doc, &mut Eval::new(self.composite_len()))
    }

    /// Whether `doc` passes, each check counted in `eval`.
    pub(crate) fn passes<'d>(&self, doc: &'d Value, eval: &mut Eval<'d>) -> bool {
        match self {
            Filter::All(parts) => parts.iter().all(|p| p.passes(doc, eval)),
            Filter::Any(parts) => parts.iter().any(|p| p.passes(doc, eval)),
            Filter::Not(inner) => !inner.passes(doc, eval),
            Filter::Field(path, condition) => {
                eval.work += 1;
                condition.holds(path.get(doc), eval)
            }
        }
    }

    /// How many conditions it holds.
    pub(crate) fn conditions(&self) -> usize {
        match self {
            Filter::All(parts) | Filter::Any(parts) => parts.iter().map(Filter::conditions).sum(),
            Filter::Not(inner) => inner.conditions(),
            Filter::Field(..) => 1,
        }
    }

    /// The length of the canonical JSON of its longest array or object
    /// operand: no longer value can equal one, so none is written further.
    pub(crate) fn composite_len(&self) -> usize {
        match self {
            Filter::All(parts) | Filter::Any(parts) => parts.iter().map(Filter::composite_len).max().unwrap_or(0),
            Filter::Not(inner) => inner.composite_len(),
            Filter::Field(_, condition) => match condition {
                Condition::Eq(o) | Condition::Ne(o) | Condition::Contains(o) => o.composite_len(),
                Condition::In(set) | Condition::NotIn(set) => set.composite_len(),
                _ => 0,
            },
        }
    }
}

/// Operands are bounded like documents are: this keeps one from nesting
/// without limit inside a small body.
fn check_operand(operand: &Value, at: &str) -> Result<(), String> {
    let size = crate::domain::measure(operand);
    if size.depth > MAX_FILTER_DEPTH {
        return Err(format!("{at}: the value nests deeper than {MAX_FILTER_DEPTH} levels"));
    }
    Ok(())
}

impl Condition {
    fn holds<'d>(&self, value: Option<&'d Value>, eval: &mut Eval<'d>) -> bool {
        match self {
            Condition::Eq(operand) => value.is_some_and(|v| eval.same(v, operand)),
            Condition::Ne(operand) => !value.is_some_and(|v| eval.same(v, operand)),
            Condition::Compare {
                operand,
                want,
                or_equal,
            } => value.is_some_and(|v| match same_type_order(v, operand) {
                Some(Ordering::Equal) => *or_equal,
                Some(order) => order == *want,
                None => false,
            }),
            Condition::In(values) => value.is_some_and(|v| values.holds(v, eval)),
            Condition::NotIn(values) => !value.is_some_and(|v| values.holds(v, eval)),
            Condition::Exists(wanted) => value.is_some() == *wanted,
            Condition::Prefix(prefix) => matches!(value, Some(Value::String(s)) if s.starts_with(prefix.as_str())),
            Condition::Contains(operand) => value.is_some_and(|v| eval.contains(v, operand)),
        }
    }
}

fn type_rank(value: Option<&Value>) -> u8 {
    match value {
        None => 0,
        Some(Value::Null) => 1,
        Some(Value::Bool(_)) => 2,
        Some(Value::Number(_)) => 3,
        Some(Value::String(_)) => 4,
        Some(Value::Array(_)) => 5,
        Some(Value::Object(_)) => 6,
    }
}

/// The total order of sorting: by type (missing, null, booleans, numbers,
/// strings, arrays, objects), then within the type.
pub fn sort_order(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    let by_type = type_rank(a).cmp(&type_rank(b));
    if by_type != Ordering::Equal {
        return by_type;
    }
    match (a, b) {
        (Some(x @ (Value::Array(_) | Value::Object(_))), Some(y)) => canonical(x).cmp(&canonical(y)),
        (Some(x), Some(y)) => same_type_order(x, y).unwrap_or(Ordering::Equal),
        _ => Ordering::Equal,
    }
}

/// A sort value as a page's candidates keep it: an array or object with
/// its canonical JSON, made once rather than at every comparison.
#[derive(Debug, Clone)]
pub(crate) struct SortKey {
    pub(crate) value: Option<Value>,
    pub(crate) text: Option<Box<str>>,
}

impl SortKey {
    pub(crate) fn new(value: Option<Value>) -> Self {
        let text = value
            .as_ref()
            .filter(|v| is_composite(v))
            .map(|v| canonical(v).into_boxed_str());
        Self { value, text }
    }

    /// [`sort_order`], with the canonical JSON at hand.
    pub(crate) fn order(&self, other: &SortKey) -> Ordering {
        match (&self.text, &other.text) {
            (Some(x), Some(y)) if type_rank(self.value.as_ref()) == type_rank(other.value.as_ref()) => x.cmp(y),
            _ => sort_order(self.value.as_ref(), other.value.as_ref()),
        }
    }
}

/// One sort field and its direction.
#[derive(Debug, Clone, PartialEq)]
pub struct SortField {
    pub path: FieldPath,
    pub descending: bool,
}

/// A parsed query.
#[derive(Debug, Clone)]
pub struct Query {
    pub filter: Option<Filter>,
    pub sort: Vec<SortField>,
    pub fields: Option<Vec<FieldPath>>,
}

impl Query {
    /// The order of two documents' positions (their sort keys and ids),
    /// the query's sort then ids.
    pub(crate) fn order(&self, a: (&[SortKey], &str), b: (&[SortKey], &str)) -> Ordering {
        for ((field, x), y) in self.sort.iter().zip(a.0).zip(b.0) {
            let order = x.order(y);
            let order = if field.descending { order.reverse() } else { order };
            if order != Ordering::Equal {
                return order;
            }
        }
        a.1.as_bytes().cmp(b.1.as_bytes())
    }

    /// `doc`'s sort keys, and the work of making them.
    pub(crate) fn sort_keys(&self, doc: &Value) -> (Vec<SortKey>, u64) {
        let keys: Vec<SortKey> = self
            .sort
            .iter()
            .map(|f| SortKey::new(f.path.get(doc).cloned()))
            .collect();
        let work = keys.iter().map(|k| k.text.as_ref().map_or(1, |t| t.len() as u64)).sum();
        (keys, work)
    }

    /// `doc` cut down to the projected fields (all of it without a
    /// projection); a field it lacks stays out.
    pub fn project(&self, doc: Value) -> Value {
        let Some(fields) = &self.fields else { return doc };
        let mut out = Value::Object(Map::new());
        for path in fields {
            if let Some(value) = path.get(&doc) {
                put_at(&mut out, &path.segments, value.clone());
            }
        }
        out
    }
}

/// Sets `value` at `segments` in `out`, making objects on the way.
fn put_at(out: &mut Value, segments: &[String], value: Value) {
    let Some((first, rest)) = segments.split_first() else {
        return;
    };
    let Value::Object(fields) = out else { return };
    if rest.is_empty() {
        fields.insert(first.clone(), value);
        return;
    }
    let next = fields.entry(first.clone()).or_insert_with(|| Value::Object(Map::new()));
    put_at(next, rest, value);
}

/// Where a page ended: the last document's sort values and id.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    pub values: Vec<Option<Value>>,
    pub id: String,
}

impl Cursor {
    /// The cursor as clients carry it: the hex of `[[values], id]`, each
    /// value wrapped in an array of one (an empty one: the field was
    /// missing, which is not `null`).
    pub fn encode(&self) -> String {
        let values: Vec<Value> = self
            .values
            .iter()
            .map(|v| match v {
                Some(v) => Value::Array(vec![v.clone()]),
                None => Value::Array(Vec::new()),
            })
            .collect();
        hex::encode(Value::Array(vec![Value::Array(values), Value::String(self.id.clone())]).to_string())
    }

    /// Reads a cursor for a query sorting by `sort_fields` fields.
    pub fn decode(raw: &str, sort_fields: usize) -> Result<Self, String> {
        let bad = || "cursor: not one this query's pages gave (pass next_cursor back, with the same sort)".to_owned();
        let text = hex::decode(raw).map_err(|_| bad())?;
        let value: Value = serde_json::from_slice(&text).map_err(|_| bad())?;
        let Value::Array(mut parts) = value else {
            return Err(bad());
        };
        let (Some(Value::String(id)), Some(Value::Array(values)), true) = (parts.pop(), parts.pop(), parts.is_empty())
        else {
            return Err(bad());
        };
        if values.len() != sort_fields {
            return Err(bad());
        }
        let values = values
            .into_iter()
            .map(|v| match v {
                Value::Array(mut one) if one.len() <= 1 => Ok(one.pop()),
                _ => Err(bad()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { values, id })
    }
}

/// Parses `sort`: a list of field paths, each with a leading `-` to
/// sort descending.
pub fn parse_sort(raw: &Value) -> Result<Vec<SortField>, String> {
    let Value::Array(items) = raw else {
        return Err(format!("sort: a list of field paths, not {}", kind_of(raw)));
    };
    if items.len() > MAX_SORT_FIELDS {
        return Err(format!("sort: at most {MAX_SORT_FIELDS} fields"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let Value::String(text) = item else {
                return Err(format!("sort[{i}]: a field path, not {}", kind_of(item)));
            };
            let (descending, path) = match text.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, text.as_str()),
            };
            let path = FieldPath::parse(path).map_err(|e| format!("sort[{i}]: {e}"))?;
            Ok(SortField { path, descending })
        })
        .collect()
}

/// Parses `fields`: a list of field paths to keep.
pub fn parse_fields(raw: &Value) -> Result<Vec<FieldPath>, String> {
    let Value::Array(items) = raw else {
        return Err(format!("fields: a list of field paths, not {}", kind_of(raw)));
    };
    if items.len() > MAX_PROJECTED_FIELDS {
        return Err(format!("fields: at most {MAX_PROJECTED_FIELDS}"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(text) => FieldPath::parse(text).map_err(|e| format!("fields[{i}]: {e}")),
            other => Err(format!("fields[{i}]: a field path, not {}", kind_of(other))),
        })
        .collect()
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What any one query may spend; the threads are shared by all of them.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Documents (or index entries) read, at most.
    pub max_scan: u64,
    /// Units of work, at most: bytes of documents parsed, bytes of values
    /// written to compare them, conditions checked, array items looked at.
    pub max_work: u64,
    /// Evaluations running at once, across every query.
    pub threads: Arc<Semaphore>,
}

impl QueryLimits {
    pub fn new(max_scan: usize, max_work: u64, threads: usize) -> Self {
        Self {
            max_scan: max_scan as u64,
            max_work,
            threads: Arc::new(Semaphore::new(threads.max(1))),
        }
    }
}

/// One page a query asks for.
#[derive(Debug, Clone)]
pub struct QueryPage {
    /// At most this many documents (1 to the most a page holds).
    pub limit: usize,
    /// Start after this position.
    pub after: Option<Cursor>,
    /// Also count every matching document.
    pub count: bool,
}

/// A page of a query's answer.
#[derive(Debug, Clone, Default)]
pub struct QueryAnswer {
    /// The documents, in the query's order, projected.
    pub items: Vec<(DocId, Document)>,
    /// Where the next page starts, when more documents match.
    pub next: Option<Cursor>,
    /// Every matching document, when counted.
    pub count: Option<u64>,
    /// Documents (or index entries) read on each shard.
    pub read_per_shard: Vec<u64>,
    /// The index the query ran on (`None`: it read every document).
    pub index: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn matches(filter: Value, doc: Value) -> bool {
        Filter::parse(&filter).expect("a filter").matches(&doc)
    }

    #[test]
    fn missing_is_not_null_and_types_do_not_mix() {
        assert!(matches(json!({"a": null}), json!({"a": null})));
        assert!(!matches(json!({"a": null}), json!({})));
        assert!(matches(json!({"a": {"$exists": false}}), json!({})));
        assert!(matches(json!({"a": {"$ne": 1}}), json!({})));
        assert!(matches(json!({"a": 1}), json!({"a": 1.0})));
        assert!(!matches(json!({"a": {"$gt": 1}}), json!({"a": "2"})));
        assert!(
            matches(json!({"a": {"$gt": "10"}}), json!({"a": "9"})),
            "strings compare as strings"
        );
        assert!(matches(json!({"a.b.1": {"$gte": 2}}), json!({"a": {"b": [0, 2]}})));
        assert!(matches(
            json!({"tags": {"$contains": "x"}}),
            json!({"tags": ["y", "x"]})
        ));
        assert!(matches(json!({"n": {"$prefix": "ab"}}), json!({"n": "abc"})));
        assert!(matches(
            json!({"$or": [{"a": 1}, {"$not": {"b": {"$in": [1, 2]}}}]}),
            json!({"b": 3})
        ));
    }

    #[test]
    fn arrays_and_objects_are_equal_by_their_canonical_json() {
        let doc = json!({"o": {"b": [1, 2.5], "a": null}, "l": [{"x": 1}, [1], "s"], "n": 1});
        let holds = |filter: Value| matches(filter, doc.clone());
        assert!(holds(json!({"o": {"a": null, "b": [1, 2.5]}})), "keys in any order");
        assert!(holds(json!({"o": {"$in": [1, {"b": [1, 2.5], "a": null}]}})));
        assert!(
            !holds(json!({"o": {"$in": [{"b": [1.0, 2.5], "a": null}]}})),
            "1.0 is not 1 inside a value"
        );
        assert!(holds(json!({"o": {"$nin": [{"a": null}, [1]]}})));
        assert!(holds(json!({"o": {"$ne": {"a": null}}})));
        assert!(holds(json!({"l": {"$contains": {"x": 1}}})));
        assert!(holds(json!({"l": {"$contains": [1]}})));
        assert!(!holds(json!({"l": {"$contains": [1.0]}})));
        assert!(holds(json!({"l": {"$contains": "s"}})));
        assert!(!holds(json!({"l": {"$contains": {"x": 1, "y": 2}}})));
        assert!(
            !holds(json!({"l": {"$in": [{}, []]}})),
            "a value longer than every operand"
        );
        assert!(!holds(json!({"n": {"$in": [[1], {"n": 1}]}})), "a number is no array");
        assert!(holds(json!({"n": {"$in": [[1], 1.0]}})));
        assert!(holds(json!({"$or": [{"o": {"$in": [{}]}}, {"o.b": [1, 2.5]}]})));
    }

    #[test]
    fn mistakes_name_the_part() {
        for (filter, part) in [
            (json!({"a": {"$gt": [1]}}), "filter.a.$gt"),
            (json!({"a": {"$bogus": 1}}), "filter.a.$bogus"),
            (json!({"$or": []}), "filter.$or"),
            (json!({"$and": [{"x": 1}, 3]}), "filter.$and[1]"),
            (json!({"a..b": 1}), "filter.a..b"),
        ] {
            let err = Filter::parse(&filter).expect_err("refused");
            assert!(err.starts_with(part), "{err}");
        }
        assert!(parse_sort(&json!(["a", 1]))
            .expect_err("refused")
            .starts_with("sort[1]"));
    }

    #[test]
    fn sorting_orders_types_then_values_and_cursors_round_trip() {
        let mut values = vec![
            json!("b"),
            json!(2),
            json!(null),
            json!(true),
            json!([1]),
            json!(1.5),
            json!("a"),
        ];
        values.sort_by(|a, b| sort_order(Some(a), Some(b)));
        assert_eq!(
            values,
            vec![
                json!(null),
                json!(true),
                json!(1.5),
                json!(2),
                json!("a"),
                json!("b"),
                json!([1])
            ]
        );
        let cursor = Cursor {
            values: vec![Some(json!(3)), None],
            id: "x".into(),
        };
        assert_eq!(Cursor::decode(&cursor.encode(), 2), Ok(cursor));
        assert!(Cursor::decode("zz", 2).is_err());
    }
}
