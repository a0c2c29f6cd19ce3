//! A filter's evaluation at a cost that follows the sizes of the filter and
//! of the document, never their product: an array or object operand is
//! made canonical once, when the query is parsed; a document's array or
//! object at most once per document, and only as far as the longest such
//! operand (a longer value cannot equal any); `$in`, `$nin` and `$contains`
//! look values up in sets. Each step adds to a count of work, which the
//! query's budget bounds.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::io;

use std::cmp::Ordering;

use serde_json::{Number, Value};

/// An operand of equality: an array or object carries its canonical JSON.
#[derive(Debug, Clone)]
pub struct Operand {
    value: Value,
    canonical: Option<Box<str>>,
}

impl Operand {
    pub fn new(value: Value) -> Self {
        let canonical = is_composite(&value).then(|| canonical(&value).into_boxed_str());
        Self { value, canonical }
    }

    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The length of its canonical JSON, for an array or object.
    pub(crate) fn composite_len(&self) -> usize {
        self.canonical.as_ref().map_or(0, |text| text.len())
    }
}

/// The operands of `$in` and `$nin`, to look a value up in.
#[derive(Debug, Clone, Default)]
pub struct ValueSet {
    scalars: Scalars<Box<str>>,
    /// Arrays' and objects' canonical JSON.
    composites: HashSet<Box<str>>,
    longest: usize,
}

impl ValueSet {
    pub fn new(values: &[Value]) -> Self {
        let mut set = Self::default();
        for value in values {
            if !set.scalars.add(value, Box::from) {
                let text = canonical(value);
                set.longest = set.longest.max(text.len());
                set.composites.insert(text.into_boxed_str());
            }
        }
        set
    }

    /// The length of its longest array's or object's canonical JSON.
    pub(crate) fn composite_len(&self) -> usize {
        self.longest
    }

    /// Whether `value` equals one of the operands.
    pub(super) fn holds<'d>(&self, value: &'d Value, eval: &mut Eval<'d>) -> bool {
        if !is_composite(value) {
            return self.scalars.has(value);
        }
        if self.composites.is_empty() {
            return false;
        }
        eval.canonical(value).is_some_and(|text| self.composites.contains(text))
    }
}

/// Scalars, equal as queries mean it: numbers by value (1 equals 1.0),
/// strings byte for byte; `S` holds the strings (owned or borrowed).
#[derive(Debug, Clone)]
struct Scalars<S> {
    null: bool,
    booleans: [bool; 2],
    /// Each number's `f64` bits, zero's sign dropped: JSON has no NaN, so
    /// equal bits are equal numbers and the other way round.
    numbers: HashSet<u64>,
    strings: HashSet<S>,
}

impl<S> Default for Scalars<S> {
    fn default() -> Self {
        Self {
            null: false,
            booleans: [false; 2],
            numbers: HashSet::new(),
            strings: HashSet::new(),
        }
    }
}

impl<S: Borrow<str> + Hash + Eq> Scalars<S> {
    /// Adds `value` if it is a scalar; `false` for an array or object.
    fn add<'v>(&mut self, value: &'v Value, keep: impl FnOnce(&'v str) -> S) -> bool {
        match value {
            Value::Null => self.null = true,
            Value::Bool(b) => self.booleans[usize::from(*b)] = true,
            Value::Number(n) => {
                if let Some(key) = number_key(n) {
                    self.numbers.insert(key);
                }
            }
            Value::String(s) => {
                self.strings.insert(keep(s));
            }
            Value::Array(_) | Value::Object(_) => return false,
        }
        true
    }

    fn has(&self, value: &Value) -> bool {
        match value {
            Value::Null => self.null,
            Value::Bool(b) => self.booleans[usize::from(*b)],
            Value::Number(n) => number_key(n).is_some_and(|key| self.numbers.contains(&key)),
            Value::String(s) => self.strings.contains(s.as_str()),
            Value::Array(_) | Value::Object(_) => false,
        }
    }
}

fn number_key(n: &Number) -> Option<u64> {
    let x = n.as_f64()?;
    Some(if x == 0.0 { 0f64.to_bits() } else { x.to_bits() })
}

/// A document's array as a set of its items, for `$contains`.
struct Items<'d> {
    scalars: Scalars<&'d str>,
    /// Canonical JSON of the items that are arrays or objects, those no
    /// longer than the filter's longest such operand.
    composites: HashSet<String>,
}

/// One document's evaluation: the canonical JSON of its arrays and objects
/// and the sets of its arrays' items, each made at most once, and the work
/// done.
pub struct Eval<'d> {
    /// The longest canonical JSON of an array or object operand in the
    /// filter: a value's is made only this far.
    cap: usize,
    /// By the value's address; `None`: longer than `cap`.
    texts: HashMap<*const Value, Option<String>>,
    items: HashMap<*const Value, Items<'d>>,
    /// Units of work: conditions checked, bytes and items handled.
    pub work: u64,
}

impl<'d> Eval<'d> {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            texts: HashMap::new(),
            items: HashMap::new(),
            work: 0,
        }
    }

    /// `value`'s canonical JSON, if it is no longer than the cap.
    fn canonical(&mut self, value: &'d Value) -> Option<&str> {
        let cap = self.cap;
        let work = &mut self.work;
        self.texts
            .entry(value as *const Value)
            .or_insert_with(|| {
                let text = canonical_within(value, cap);
                *work += 1 + text.as_ref().map_or(cap as u64, |t| t.len() as u64);
                text
            })
            .as_deref()
    }

    /// Whether `value` equals `operand`.
    pub(super) fn same(&mut self, value: &'d Value, operand: &Operand) -> bool {
        match &operand.canonical {
            None => same_type_order(value, &operand.value) == Some(std::cmp::Ordering::Equal),
            Some(wanted) => {
                std::mem::discriminant(value) == std::mem::discriminant(&operand.value)
                    && self.canonical(value).is_some_and(|text| text == &**wanted)
            }
        }
    }

    /// Whether `array` (a document's) holds an item equal to `operand`.
    pub(super) fn contains(&mut self, array: &'d Value, operand: &Operand) -> bool {
        let Value::Array(list) = array else {
            return false;
        };
        let cap = self.cap;
        let work = &mut self.work;
        let items = self.items.entry(array as *const Value).or_insert_with(|| {
            let mut items = Items {
                scalars: Scalars::default(),
                composites: HashSet::new(),
            };
            for item in list {
                *work += 1;
                if !items.scalars.add(item, |s| s) {
                    let text = canonical_within(item, cap);
                    *work += text.as_ref().map_or(cap as u64, |t| t.len() as u64);
                    items.composites.extend(text);
                }
            }
            items
        });
        match &operand.canonical {
            None => items.scalars.has(&operand.value),
            Some(wanted) => items.composites.contains(&**wanted),
        }
    }
}

pub(super) fn is_composite(value: &Value) -> bool {
    matches!(value, Value::Array(_) | Value::Object(_))
}

/// A value's canonical JSON: serde_json's maps keep their keys sorted, so
/// its text is canonical.
pub(super) fn canonical(value: &Value) -> String {
    value.to_string()
}

/// `value`'s canonical JSON if it is at most `cap` bytes long; the
/// writing stops as soon as it is longer.
fn canonical_within(value: &Value, cap: usize) -> Option<String> {
    let mut out = Capped { text: Vec::new(), cap };
    serde_json::to_writer(&mut out, value).ok()?;
    String::from_utf8(out.text).ok()
}

/// A buffer that refuses to grow past `cap` bytes.
struct Capped {
    text: Vec<u8>,
    cap: usize,
}

impl io::Write for Capped {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.text.len() + bytes.len() > self.cap {
            return Err(io::Error::other("longer than any operand"));
        }
        self.text.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The order of two values of one type (numbers, strings, booleans,
/// null); `None` across types or for arrays and objects.
pub(super) fn same_type_order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_value_is_written_only_as_far_as_the_cap() {
        assert_eq!(
            canonical_within(&json!({"b": 1, "a": [1.0]}), 64).as_deref(),
            Some(r#"{"a":[1.0],"b":1}"#)
        );
        assert_eq!(canonical_within(&json!({"a": 1}), 7).as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(canonical_within(&json!({"a": 1}), 6), None);
    }

    #[test]
    fn sets_find_what_equality_finds() {
        let set = ValueSet::new(&[
            json!(1),
            json!("x"),
            json!(null),
            json!(false),
            json!({"a": [1]}),
            json!(0),
        ]);
        let doc = json!([1.0, "x", null, false, {"a": [1]}, -0.0, true, "y", {"a": [1.0]}, [1], 2]);
        let mut eval = Eval::new(set.composite_len());
        let found: Vec<bool> = doc
            .as_array()
            .expect("array")
            .iter()
            .map(|v| set.holds(v, &mut eval))
            .collect();
        assert_eq!(
            found,
            [true, true, true, true, true, true, false, false, false, false, false]
        );
        assert!(eval.contains(&doc, &Operand::new(json!({"a": [1]}))));
        assert!(eval.contains(&doc, &Operand::new(json!(-0))));
        assert!(!eval.contains(&doc, &Operand::new(json!([2]))));
        assert!(!eval.contains(&doc, &Operand::new(json!("z"))));
    }
}
