//! Parameters and documentation-only body types whose OpenAPI schema says
//! exactly what the server accepts: collection names and ids with their
//! patterns and lengths (parsed into the domain's types at the edge, so a
//! handler gets a valid name or the client gets a 400), the original API's
//! integer ids, and JSON bodies that take any value.

use std::borrow::Cow;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseError, ParseFromParameter, ParseResult, Type};
use serde_json::json;

use super::brackets::FormFields;
use super::text::excerpt;
use crate::domain::{CollectionName, DocId, MAX_COLLECTION_LEN, MAX_ID_LEN};

/// `^...$` patterns of the names `domain` accepts, for the document.
pub const COLLECTION_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";
/// Ids of 1 to 256 id characters, but not `.` or `..` (written without a
/// lookahead, which not every generator of test data reads).
pub const ID_PATTERN: &str = r"^([A-Za-z0-9_~:@-][A-Za-z0-9._~:@-]{0,255}|\.[A-Za-z0-9_~:@-][A-Za-z0-9._~:@-]{0,254}|\.\.[A-Za-z0-9._~:@-]{1,254})$";

/// Implements `Type` for a type whose OpenAPI schema is `$schema`: the
/// parameters parsed here, and the bodies that only document their schema
/// (read as `serde_json::Value`).
macro_rules! with_schema {
    ($name:ident, $type_name:literal, $schema:expr) => {
        impl Type for $name {
            const IS_REQUIRED: bool = true;
            type RawValueType = Self;
            type RawElementValueType = Self;

            fn name() -> Cow<'static, str> {
                $type_name.into()
            }

            fn schema_ref() -> MetaSchemaRef {
                MetaSchemaRef::Inline(Box::new($schema))
            }

            fn as_raw_value(&self) -> Option<&Self::RawValueType> {
                Some(self)
            }

            fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
                Box::new(self.as_raw_value().into_iter())
            }
        }
    };
}

/// A string parameter with a pattern, parsed into a domain type.
macro_rules! string_param {
    ($name:ident, $inner:ty, $type_name:literal, $pattern:expr, $max:expr, $description:literal) => {
        with_schema!(
            $name,
            $type_name,
            MetaSchema {
                description: Some($description),
                pattern: Some($pattern.to_owned()),
                min_length: Some(1),
                max_length: Some($max),
                ..MetaSchema::new("string")
            }
        );

        impl ParseFromParameter for $name {
            fn parse_from_parameter(value: &str) -> ParseResult<Self> {
                <$inner>::parse(value).map(Self).map_err(ParseError::custom)
            }
        }
    };
}

/// A collection name in a path.
pub struct CollectionParam(pub CollectionName);

string_param!(
    CollectionParam,
    CollectionName,
    "collection_name",
    COLLECTION_PATTERN,
    MAX_COLLECTION_LEN,
    "1 to 64 ASCII letters, digits, `_` and `-`"
);

/// A document id in a path.
pub struct DocIdParam(pub DocId);

string_param!(
    DocIdParam,
    DocId,
    "document_id",
    ID_PATTERN,
    MAX_ID_LEN,
    "1 to 256 of `A-Z a-z 0-9 - _ . ~ : @`, not `.` or `..`"
);

/// An id of the original API: an integer.
pub struct LegacyId(pub i64);

with_schema!(
    LegacyId,
    "integer(int64)",
    MetaSchema::new_with_format("integer", "int64")
);

impl ParseFromParameter for LegacyId {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        // An integer as written: digits with an optional `-`, no `+`.
        let digits = value.strip_prefix('-').unwrap_or(value);
        value
            .parse()
            .ok()
            .filter(|_| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .map(Self)
            .ok_or_else(|| ParseError::custom(format!("id must be an integer, not {:?}", excerpt(value, 64))))
    }
}

/// `cmd[query]` of `GET /api/cmd`: documented as its two values, taken as
/// any string, so that another answers as the original did
/// (`400 {"message": "NOPE not supported"}`).
pub struct CmdQuery(pub String);

with_schema!(
    CmdQuery,
    "cmd_query",
    MetaSchema {
        enum_items: vec![json!("ONLY"), json!("FILTER_BOOL")],
        ..MetaSchema::new("string")
    }
);

impl ParseFromParameter for CmdQuery {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Ok(Self(value.to_owned()))
    }
}

/// The `confirm` of a collection drop: required, and it must repeat the
/// collection's name. Taken here even when missing, so that the answer is
/// the route's own 400 saying how to confirm.
pub struct Confirm(pub Option<String>);

with_schema!(
    Confirm,
    "confirm",
    MetaSchema {
        description: Some("The collection's name, repeated"),
        ..MetaSchema::new("string")
    }
);

impl ParseFromParameter for Confirm {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Ok(Self(Some(value.to_owned())))
    }

    fn parse_from_parameters<I: IntoIterator<Item = A>, A: AsRef<str>>(iter: I) -> ParseResult<Self> {
        Ok(Self(iter.into_iter().next().map(|value| value.as_ref().to_owned())))
    }
}

/// A document: any JSON value.
pub struct AnyDocument;

with_schema!(
    AnyDocument,
    "any_document",
    MetaSchema {
        description: Some("The document: any JSON value (object, array, string, number, boolean or null)"),
        example: Some(json!({"name": "Alice", "roles": ["admin"]})),
        ..MetaSchema::ANY
    }
);

/// An RFC 7396 merge patch: any JSON value (an object merges, anything else
/// replaces the document).
pub struct MergePatch;

with_schema!(
    MergePatch,
    "merge_patch",
    MetaSchema {
        description: Some(
            "An RFC 7396 merge patch: an object sets its fields (null removes one, objects merge); any other value replaces the document"
        ),
        example: Some(json!({"roles": ["admin", "billing"], "nickname": null})),
        ..MetaSchema::ANY
    }
);

/// An integer id of the original API, or a string holding one.
fn legacy_id_schema(nullable: bool, description: &'static str) -> MetaSchemaRef {
    MetaSchemaRef::Inline(Box::new(MetaSchema {
        description: Some(description),
        nullable,
        one_of: vec![
            MetaSchemaRef::Inline(Box::new(MetaSchema::new_with_format("integer", "int64"))),
            MetaSchemaRef::Inline(Box::new(MetaSchema {
                pattern: Some("^-?[0-9]{1,18}$".to_owned()),
                ..MetaSchema::new("string")
            })),
        ],
        ..MetaSchema::ANY
    }))
}

/// `POST /api` as JSON: `id` and `data`, both required.
pub struct LegacyWrite;

with_schema!(
    LegacyWrite,
    "legacy_write",
    MetaSchema {
        description: Some(
            "`id`: the document to upsert, or null to store under a fresh id (or the query's `id`; one of the two \
             is needed). `data`: the document."
        ),
        required: vec!["data"],
        properties: vec![
            (
                "id",
                legacy_id_schema(true, "An integer (or a string holding one), or null for a fresh id")
            ),
            ("data", MetaSchemaRef::Inline(Box::new(MetaSchema::ANY))),
        ],
        example: Some(json!({"id": 7, "data": {"color": "blue"}})),
        ..MetaSchema::new("object")
    }
);

/// `POST /api` as a form: `id` and `data` in bracket encoding.
pub struct LegacyForm;

with_schema!(
    LegacyForm,
    "legacy_form",
    MetaSchema {
        description: Some(
            "`id=7&data[color]=blue`: `data` in Rack/Plug bracket encoding (nested objects as `data[a][b]=x`, \
             lists as `data[a][]=x`), every value a string. A form cannot say null: its `id` is always an integer."
        ),
        required: vec!["data"],
        properties: vec![
            (
                "id",
                legacy_id_schema(
                    false,
                    "The document to upsert (or the query's `id`; one of the two is needed)"
                )
            ),
            (
                "data",
                MetaSchemaRef::Inline(Box::new(MetaSchema {
                    description: Some("A string, or an object in bracket encoding (`data[color]=blue`)"),
                    ..MetaSchema::new("string")
                }))
            ),
        ],
        ..MetaSchema::new("object")
    }
);

impl FormFields for LegacyForm {
    const FIELDS: &'static [&'static str] = &["id", "data"];
}

/// The lines of an NDJSON import, documented as the array of JSON values
/// they are (one value per line). Each line is judged on its own and
/// reported, so the request takes any values.
pub struct ImportLines;

with_schema!(
    ImportLines,
    "import_lines",
    MetaSchema {
        description: Some(
            "One JSON value per line (NDJSON). A line that imports is an object `{\"id\": \"alice\", \"data\": ..., \
             \"ttl\": 60}` (`id` a string or a non-negative integer, optional: without it, a fresh id; `data` \
             required, any value; `ttl` in seconds or `expires_at` in RFC 3339, optional). Any other line is \
             skipped and reported by number. The body must be UTF-8."
        ),
        items: Some(Box::new(MetaSchemaRef::Inline(Box::new(MetaSchema::ANY)))),
        example: Some(json!([{"id": "alice", "data": {"name": "Alice"}}, {"data": {"name": "Bob"}, "ttl": 3600}])),
        ..MetaSchema::new("array")
    }
);

/// Whether a `Cache-Control` request header asks past the cache
/// (`no-cache`): what is committed now, not what this replica cached, which
/// with several replicas on one database may be behind by up to
/// `EXDAAS_REPLICA_POLL_MS`.
pub fn asks_past_the_cache(cache_control: Option<&str>) -> bool {
    cache_control.is_some_and(|value| {
        value
            .split(',')
            .any(|directive| directive.trim().eq_ignore_ascii_case("no-cache"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The patterns in the document accept exactly what the parsers do.
    #[test]
    fn the_documented_patterns_agree_with_the_parsers() {
        let id = regex::Regex::new(ID_PATTERN).expect("a regex");
        let long = "i".repeat(256);
        for good in ["a", "7", ".a", "..a", "...", "a.b", "user:42@eu.v1~x_y", long.as_str()] {
            assert!(DocId::parse(good).is_ok() && id.is_match(good), "{good}");
        }
        let too_long = "i".repeat(257);
        for bad in [".", "..", "", "a b", "a/b", "ü", too_long.as_str()] {
            assert!(DocId::parse(bad).is_err() && !id.is_match(bad), "{bad}");
        }
        let collection = regex::Regex::new(COLLECTION_PATTERN).expect("a regex");
        for good in ["default", "user-profiles_2", &"c".repeat(64)] {
            assert!(
                CollectionName::parse(good).is_ok() && collection.is_match(good),
                "{good}"
            );
        }
        for bad in ["", "a/b", "a.b", &"c".repeat(65)] {
            assert!(
                CollectionName::parse(bad).is_err() && !collection.is_match(bad),
                "{bad}"
            );
        }
    }
}
