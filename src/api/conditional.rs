//! Conditional requests (RFC 9110 §13): a document's `ETag` is its version,
//! `If-Match` and `If-None-Match` become the store's preconditions.

use std::str::FromStr;

/// A parsed `If-Match` / `If-None-Match` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntityTags {
    /// `*`: any current document.
    Any,
    /// The versions named by the tags. Tags that are not an exdaas version
    /// (another server's, or garbage) name none and so never match.
    Versions(Vec<u64>),
}

/// The `ETag` of a version: a strong tag, the version quoted.
pub fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

impl EntityTags {
    /// Parses a header value. `weak`: accept `W/"3"` as version 3 (weak
    /// comparison, for `If-None-Match`); `If-Match` compares strongly, so a
    /// weak tag there matches nothing.
    pub fn parse(header: &str, weak: bool) -> Self {
        if header.trim() == "*" {
            return EntityTags::Any;
        }
        let versions = header
            .split(',')
            .filter_map(|tag| {
                let tag = tag.trim();
                let tag = match tag.strip_prefix("W/") {
                    Some(weak_tag) if weak => weak_tag,
                    Some(_) => return None,
                    None => tag,
                };
                let quoted = tag.strip_prefix('"')?.strip_suffix('"')?;
                u64::from_str(quoted).ok()
            })
            .collect();
        EntityTags::Versions(versions)
    }

    pub fn matches(&self, version: u64) -> bool {
        match self {
            EntityTags::Any => true,
            EntityTags::Versions(versions) => versions.contains(&version),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_parse_strongly_or_weakly() {
        assert_eq!(EntityTags::parse("*", false), EntityTags::Any);
        assert_eq!(EntityTags::parse("\"3\"", false), EntityTags::Versions(vec![3]));
        assert_eq!(
            EntityTags::parse("\"1\", W/\"2\", \"x\", 4", false),
            EntityTags::Versions(vec![1])
        );
        assert_eq!(
            EntityTags::parse("W/\"2\", \"5\"", true),
            EntityTags::Versions(vec![2, 5])
        );
        assert!(!EntityTags::parse("\"abc\"", true).matches(0));
        assert_eq!(etag(7), "\"7\"");
    }
}
