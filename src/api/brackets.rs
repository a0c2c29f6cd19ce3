//! Rack/Plug nested-bracket parameters: `cmd[keys][]=a&cmd[keys][]=b` and
//! `data[color]=blue` become JSON trees, as Phoenix built them for the
//! original service's form posts.

use serde_json::{Map, Value};

use super::text::excerpt;
use crate::domain::MAX_DEPTH;

/// Most bracket levels a parameter may have: a document's nesting limit
/// (`data[a][b]` is `data` holding a document of depth 2). Parsing a key
/// stops there, so no input can build a deeper tree.
const MAX_LEVELS: usize = MAX_DEPTH;

/// A form's fields: the names [`parse`] keeps; others are ignored.
pub trait FormFields {
    const FIELDS: &'static [&'static str];
}

/// Parses `application/x-www-form-urlencoded` text (percent-encoded or not)
/// into a JSON object of strings, lists and nested objects, keeping the
/// parameters whose name is one of `fields`. Others are ignored whatever
/// they hold, as Phoenix ignored parameters a controller did not read.
pub fn parse(encoded: &[u8], fields: &[&str]) -> Result<Map<String, Value>, String> {
    let mut root = Map::new();
    for (key, value) in form_urlencoded::parse(encoded) {
        let name = key.split('[').next().unwrap_or_default();
        if !fields.contains(&name) {
            continue;
        }
        let (head, path) = split_key(&key)?;
        insert(&mut root, &head, &path, Value::String(value.into_owned()), &shown(&key))?;
    }
    Ok(root)
}

/// `a[b][]` -> ("a", ["b", ""]).
fn split_key(key: &str) -> Result<(String, Vec<String>), String> {
    let (head, mut rest) = match key.find('[') {
        Some(i) => (&key[..i], &key[i..]),
        None => (key, ""),
    };
    let key = shown(key);
    if head.is_empty() {
        return Err(format!("parameter {key:?} has no name before its brackets"));
    }
    let mut path = Vec::new();
    while !rest.is_empty() {
        if path.len() == MAX_LEVELS {
            return Err(format!(
                "parameter {key:?} nests more than {MAX_LEVELS} levels of brackets, as deep as a document may nest"
            ));
        }
        let close = rest
            .find(']')
            .filter(|_| rest.starts_with('['))
            .ok_or_else(|| format!("parameter {key:?} has unbalanced brackets"))?;
        path.push(rest[1..close].to_owned());
        rest = &rest[close + 1..];
    }
    Ok((head.to_owned(), path))
}

/// A parameter's name as error messages quote it: cut short, since a
/// client's key can be as long as the body.
fn shown(key: &str) -> String {
    excerpt(key, 64)
}

/// Recursive, at most [`MAX_LEVELS`] deep (`split_key` bounds `path`).
fn insert(map: &mut Map<String, Value>, name: &str, path: &[String], value: Value, key: &str) -> Result<(), String> {
    let conflict = || format!("parameter {key:?} conflicts with another parameter of the same name");
    match path.split_first() {
        None => {
            map.insert(name.to_owned(), value);
            Ok(())
        }
        Some((segment, rest)) if segment.is_empty() => {
            let list = map.entry(name.to_owned()).or_insert_with(|| Value::Array(Vec::new()));
            let Value::Array(items) = list else {
                return Err(conflict());
            };
            if rest.is_empty() {
                items.push(value);
                return Ok(());
            }
            // `a[][b]=1&a[][c]=2`: Plug starts a new element when the key repeats.
            let start_new = match items.last() {
                Some(Value::Object(last)) => rest.first().is_some_and(|k| last.contains_key(k)),
                _ => true,
            };
            if start_new {
                items.push(Value::Object(Map::new()));
            }
            let Some(Value::Object(last)) = items.last_mut() else {
                return Err(conflict());
            };
            insert(last, &rest[0], &rest[1..], value, key)
        }
        Some((segment, rest)) => {
            let child = map.entry(name.to_owned()).or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(child) = child else {
                return Err(conflict());
            };
            insert(child, segment, rest, value, key)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FIELDS: &[&str] = &["id", "cmd", "data", "a"];

    fn parsed(s: &str) -> Value {
        Value::Object(parse(s.as_bytes(), FIELDS).expect("parses"))
    }

    #[test]
    fn plain_nested_and_list_parameters() {
        assert_eq!(
            parsed("id=7&cmd[query]=ONLY&cmd[keys][]=color&cmd[keys][]=size"),
            json!({"id": "7", "cmd": {"query": "ONLY", "keys": ["color", "size"]}})
        );
        assert_eq!(
            parsed("data[color]=blue&data[size][w]=2"),
            json!({"data": {"color": "blue", "size": {"w": "2"}}})
        );
    }

    #[test]
    fn percent_encoded_brackets_are_the_same() {
        assert_eq!(
            parsed("cmd%5Bkeys%5D%5B%5D=a+b&cmd%5Bquery%5D=ONLY"),
            json!({"cmd": {"keys": ["a b"], "query": "ONLY"}})
        );
    }

    #[test]
    fn lists_of_objects() {
        assert_eq!(
            parsed("a[][x]=1&a[][y]=2&a[][x]=3"),
            json!({"a": [{"x": "1", "y": "2"}, {"x": "3"}]})
        );
    }

    #[test]
    fn nesting_is_bounded_and_errors_quote_keys_short() {
        let at_limit = format!("data{}=x", "[a]".repeat(MAX_DEPTH));
        let parsed = parse(at_limit.as_bytes(), FIELDS).expect("a document at the depth limit parses");
        assert_eq!(crate::domain::measure(&parsed["data"]).depth, MAX_DEPTH);
        let deep = format!("data{}=x", "[a]".repeat(100_000));
        let err = parse(deep.as_bytes(), FIELDS).expect_err("too deep");
        assert!(err.contains("levels of brackets") && err.len() < 300, "{err}");
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert!(parse(b"a[b=1", FIELDS).is_err());
        assert!(parse(b"a=1&a[b]=2", FIELDS).is_err());
    }

    #[test]
    fn other_parameters_are_ignored_whatever_they_hold() {
        assert_eq!(parsed("[b]=1&=0&x[=2&id=7&other[a]=1&other=2"), json!({"id": "7"}));
    }
}
