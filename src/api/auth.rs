//! Who may use the API: bearer API keys, each with a scope and optionally a
//! list of collections.
//!
//! Keys come from settings (`EXDAAS_API_KEYS`), in plain text or as their
//! SHA-256. Only the hash is kept in memory, and a presented key is hashed
//! and compared in constant time; logs name a key by a short prefix of its
//! hash. With no key configured the service is open, as the original was.

use std::fmt;
use std::sync::Arc;

use poem::http::StatusCode;
use poem_openapi::auth::Bearer;
use poem_openapi::SecurityScheme;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::{ApiError, Flavor};
use crate::domain::CollectionName;

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
    hash: [u8; 32],
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

    fn may(&self, need: Scope, collection: Option<&CollectionName>) -> bool {
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

/// The `Authorization: Bearer <key>` scheme, for the OpenAPI document and
/// Swagger UI's Authorize button.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "API key")]
pub struct BearerKey(Bearer);

/// The credentials of a request: a bearer key, or none at all.
#[derive(SecurityScheme)]
pub enum Credentials {
    Key(BearerKey),
    #[oai(fallback)]
    Anonymous,
}

/// The configured keys; decides what each request may do.
#[derive(Debug, Clone, Default)]
pub struct Access {
    keys: Arc<[ApiKey]>,
}

impl Access {
    pub fn new(keys: Vec<ApiKey>) -> Self {
        Self { keys: keys.into() }
    }

    /// No key is configured: every request is allowed.
    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a request with this `Authorization` header may go on to its
    /// route: the API is open, or the header carries a configured key. The
    /// edge asks this before a body is read, so strangers get their 401
    /// without the server reading what they send.
    pub fn admits(&self, authorization: Option<&str>) -> bool {
        if self.is_open() {
            return true;
        }
        let token = authorization.and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
        });
        token.is_some_and(|token| self.find(token).is_some())
    }

    /// The 401 for a request without a valid key.
    pub fn unauthorized(flavor: Flavor) -> ApiError {
        ApiError::new(
            flavor,
            StatusCode::UNAUTHORIZED,
            "send a valid API key: Authorization: Bearer <key>",
        )
        .with_challenge()
    }

    /// Who is calling: refuses with 401 when keys are configured and the
    /// request carries none, or one that is not configured.
    pub fn caller(&self, credentials: &Credentials, flavor: Flavor) -> Result<Caller<'_>, ApiError> {
        if self.is_open() {
            return Ok(Caller { key: None, flavor });
        }
        let key = match credentials {
            Credentials::Key(BearerKey(bearer)) => self.find(&bearer.token),
            Credentials::Anonymous => None,
        };
        match key {
            Some(key) => Ok(Caller { key: Some(key), flavor }),
            None => Err(Self::unauthorized(flavor)),
        }
    }

    /// The key whose hash equals the presented key's. Every configured hash
    /// is compared, in constant time, whatever matches.
    fn find(&self, presented: &str) -> Option<&ApiKey> {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for key in self.keys.iter() {
            if bool::from(key.hash.ct_eq(&hash)) {
                found = Some(key);
            }
        }
        found
    }
}

/// An authenticated request (or any request, when the API is open).
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// `None`: no keys are configured.
    key: Option<&'a ApiKey>,
    flavor: Flavor,
}

impl Caller<'_> {
    /// Allows the request if the caller has `need` on `collection` (`None`:
    /// an operation on no single collection); else 403.
    pub fn allow(&self, need: Scope, collection: Option<&CollectionName>) -> Result<(), ApiError> {
        let Some(key) = self.key else { return Ok(()) };
        if key.may(need, collection) {
            return Ok(());
        }
        tracing::info!(key = %key.label(), need = need.as_str(), collection = collection.map(CollectionName::as_str), "request refused: key out of scope");
        let what = match collection {
            Some(c) => format!("{} access to collection {c:?}", need.as_str()),
            None => format!("{} access to every collection", need.as_str()),
        };
        Err(ApiError::new(
            self.flavor,
            StatusCode::FORBIDDEN,
            format!("this API key does not grant {what}"),
        ))
    }

    /// Whether the caller may read `collection` (to filter listings).
    pub fn can_read(&self, collection: &CollectionName) -> bool {
        self.key.is_none_or(|key| key.may(Scope::Read, Some(collection)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> CollectionName {
        CollectionName::parse("users").expect("name")
    }

    #[test]
    fn entries_parse_with_scopes_collections_and_hashes() {
        let hashed = hex::encode(Sha256::digest(b"0123456789abcdef-hashed"));
        let raw = format!(
            "admin:0123456789abcdef-admin; read:0123456789abcdef-reader:users,orders\nwrite:sha256:{hashed}:users"
        );
        let keys = ApiKey::parse_list(&raw).expect("valid");
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[0].scope, Scope::Admin);
        assert_eq!(keys[1].collections.as_ref().map(Vec::len), Some(2));
        let access = Access::new(keys);
        assert_eq!(
            access.find("0123456789abcdef-hashed").map(|k| k.scope),
            Some(Scope::Write)
        );
        assert!(access.find("0123456789abcdef-nobody").is_none());
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
