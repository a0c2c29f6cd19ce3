//! How the API writes what it says back in text: a client's input quoted
//! short in an error message, a string as a JSON literal, a JSON parse
//! error in the documented limits' terms. A leaf: the body, parameter and
//! form parsers and the routes all quote input, so it imports none of them.

use serde_json::Value;

/// At most `max` bytes of `text` (cut at a character boundary, marked
/// with `…`): how an error message quotes what a client sent, which can be
/// as long as a body.
pub fn excerpt(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// `s` as a JSON string literal.
pub fn json_string(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// What is wrong with JSON that did not parse. serde_json stops at 128
/// levels of nesting before it could exhaust the stack; say so in terms of
/// the documented limit.
pub fn json_error(e: &serde_json::Error) -> String {
    if e.to_string().starts_with("recursion limit exceeded") {
        format!(
            "it nests more than 127 arrays and objects deep (a document may nest {} deep)",
            crate::domain::MAX_DEPTH
        )
    } else {
        e.to_string()
    }
}
