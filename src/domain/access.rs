//! API keys as settings give them: each a scope and optionally a list of
//! collections, kept as the SHA-256 of the key, never the key itself. The
//! HTTP layer (`api::auth`) decides with them; settings parse them.

use std::fmt;

use sha2::{Digest, Sha256};

use super::CollectionName;

/// What a key may do. Each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Read documents and list collections.
    Read,
    /// Also create, change and delete documents.
    Write,
    /// Also drop collections and take backups.
    Admin,
}

impl Scope {
    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

/// A configured key: its hash, never the key itself.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub(crate) hash: [u8; 32],
    pub scope: Scope,
    /// `None`: every collection.
    pub collections: Option<Vec<CollectionName>>,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("label", &self.label())
            .field("scope", &self.scope)
            .field("collections", &self.collections)
            .finish()
    }
}

/// Shortest plain-text key accepted: shorter keys are guessable.
pub const MIN_KEY_LEN: usize = 16;

/// Why an `EXDAAS_API_KEYS` entry was refused. Never holds the key itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("entry {entry} ({shown}): {reason}")]
pub struct KeyError {
    /// 1-based position of the entry.
    pub entry: usize,
    /// The entry with its key hidden.
    pub shown: String,
    pub reason: String,
}

impl ApiKey {
    /// Parses `EXDAAS_API_KEYS`: entries separated by `;` or line breaks,
    /// each `scope:key` or `scope:key:collection,collection`. The key is at
    /// least 16 characters of `A-Z a-z 0-9 . _ ~ + / = -`, or `sha256:` and
    /// the 64 hex digits of its SHA-256.
    pub fn parse_list(raw: &str) -> Result<Vec<ApiKey>, KeyError> {
        raw.split([';', '\n'])
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .enumerate()
            .map(|(i, entry)| ApiKey::parse(i + 1, entry))
            .collect()
    }

    fn parse(entry: usize, raw: &str) -> Result<ApiKey, KeyError> {
        let mut parts = raw.splitn(3, ':');
        let scope_text = parts.next().unwrap_or_default();
        let mut secret = parts.next().unwrap_or_default();
        let mut rest = parts.next();
        let hashed = scope_text != "sha256" && secret == "sha256";
        if hashed {
            // `scope:sha256:HEX[:collections]`
            let mut tail = rest.unwrap_or_default().splitn(2, ':');
            secret = tail.next().unwrap_or_default();
            rest = tail.next();
        }
        // The entry as logs may show it: never the key, and the scope only
        // if it is one (a key written without its scope would sit there).
        let scope = Scope::parse(scope_text);
        let shown = format!(
            "{}:{}{}",
            scope.map_or("?", Scope::as_str),
            if hashed { "sha256:…" } else { "…" },
            rest.map(|c| format!(":{c}")).unwrap_or_default()
        );
        let fail = |reason: String| KeyError {
            entry,
            shown: shown.clone(),
            reason,
        };
        let scope = scope.ok_or_else(|| fail("it must start with a scope: read, write or admin".into()))?;
        let hash = if hashed {
            let bytes = hex::decode(secret).map_err(|_| fail("sha256: must be followed by 64 hex digits".into()))?;
            <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| fail("sha256: must be followed by 64 hex digits".into()))?
        } else {
            if secret.len() < MIN_KEY_LEN {
                return Err(fail(format!("the key must be at least {MIN_KEY_LEN} characters")));
            }
            if !secret
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '+' | '/' | '=' | '-'))
            {
                return Err(fail("the key may hold only A-Z a-z 0-9 . _ ~ + / = -".into()));
            }
            Sha256::digest(secret.as_bytes()).into()
        };
        let collections = match rest {
            None => None,
            Some(list) => Some(
                list.split(',')
                    .map(|name| CollectionName::parse(name.trim()).map_err(|e| fail(e.to_string())))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(ApiKey {
            hash,
            scope,
            collections,
        })
    }

    /// How logs name the key: the first 8 hex digits of its hash.
    pub fn label(&self) -> String {
        hex::encode(&self.hash[..4])
    }

    /// Whether the key grants `need` on `collection` (`None`: on no single
    /// collection, as a backup is).
    pub fn may(&self, need: Scope, collection: Option<&CollectionName>) -> bool {
        let in_scope = self.scope >= need;
        let in_collections = match (&self.collections, collection) {
            (None, _) => true,
            (Some(allowed), Some(c)) => allowed.contains(c),
            // Operations on no particular collection (backups) need a key
            // that is not limited to some.
            (Some(_), None) => false,
        };
        in_scope && in_collections
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> CollectionName {
        CollectionName::parse("users").expect("name")
    }

    #[test]
    fn bad_entries_are_refused_without_showing_the_key() {
        for raw in [
            "root:0123456789abcdef",
            "0123456789abcdef",
            "0123456789abcdef:users",
            "read:short",
            "read:0123456789abcdef!",
            "read:sha256:abc",
            "read:0123456789abcdef:no/slash",
        ] {
            let err = ApiKey::parse_list(raw).expect_err(raw);
            assert!(!err.to_string().contains("0123456789abcdef"), "{err}");
        }
    }

    #[test]
    fn scopes_include_the_lower_ones_and_collections_limit_them() {
        let keys = ApiKey::parse_list("write:0123456789abcdef-writer:users").expect("valid");
        let key = &keys[0];
        assert!(key.may(Scope::Read, Some(&users())));
        assert!(key.may(Scope::Write, Some(&users())));
        assert!(!key.may(Scope::Admin, Some(&users())));
        assert!(!key.may(Scope::Read, Some(&CollectionName::parse("orders").expect("name"))));
        assert!(!key.may(Scope::Read, None));
    }
}
