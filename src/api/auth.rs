//! Who may use the API: a request's bearer key, checked against the keys
//! of the settings (`domain::access`). A presented key is hashed and
//! compared in constant time; logs name a key by a short prefix of its
//! hash. With no key configured the service is open, as the original was.

use std::sync::Arc;

use poem::http::StatusCode;
use poem_openapi::auth::Bearer;
use poem_openapi::SecurityScheme;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::{ApiError, Flavor};
use crate::domain::access::{ApiKey, Scope};
use crate::domain::CollectionName;

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
        let token = authorization
            .and_then(|value| bearer_token(value.trim()))
            .map(str::trim);
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

    /// `collection`, if the caller may act on it with `scope`: the check of
    /// every v1 route that names a collection (401 or 403 otherwise).
    pub fn authorized(
        &self,
        credentials: &Credentials,
        scope: Scope,
        collection: CollectionName,
    ) -> Result<CollectionName, super::error::ProblemError> {
        let caller = self
            .caller(credentials, Flavor::V1)
            .map_err(super::error::ProblemError)?;
        caller
            .allow(scope, Some(&collection))
            .map_err(super::error::ProblemError)?;
        Ok(collection)
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

    /// Whether a request with this `Authorization` header may `need` on
    /// `collection`, for a path answered before the OpenAPI layer (see
    /// `legacy::QuickRead`). Only the plain `Bearer <key>` form is judged;
    /// `false` for anything else, which the documented route then answers
    /// (and refuses with its own 401 or 403, logged).
    pub fn grants(&self, authorization: Option<&str>, need: Scope, collection: &CollectionName) -> bool {
        if self.is_open() {
            return true;
        }
        let key = authorization.and_then(bearer_token).and_then(|token| self.find(token));
        key.is_some_and(|key| key.may(need, Some(collection)))
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

/// The token of `Bearer <token>` (the scheme in any case), as written.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
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
            Some(c) => format!("{} access to collection \"{c}\"", need.as_str()),
            None => format!("{} access to every collection", need.as_str()),
        };
        Err(ApiError::new(
            self.flavor,
            StatusCode::FORBIDDEN,
            format!("this API key does not grant {what}"),
        ))
    }

    /// What the caller may read: `Some(None)` every collection,
    /// `Some(Some(list))` those, `None` nothing.
    pub fn readable_collections(&self) -> Option<Option<Vec<CollectionName>>> {
        let Some(key) = self.key else { return Some(None) };
        (key.scope >= Scope::Read).then(|| key.collections.clone())
    }

    /// The caller's scope and the collections it is limited to (`None`:
    /// every one); with no keys configured, everything.
    pub fn grant(&self) -> (Scope, Option<&[CollectionName]>) {
        match self.key {
            None => (Scope::Admin, None),
            Some(key) => (key.scope, key.collections.as_deref()),
        }
    }

    /// Whether the caller may read `collection` (to filter listings).
    pub fn can_read(&self, collection: &CollectionName) -> bool {
        self.key.is_none_or(|key| key.may(Scope::Read, Some(collection)))
    }

    /// Who the caller is when callers share something out (the change
    /// feed's places): its key or, with no keys configured, the address it
    /// calls from.
    pub fn principal(&self, remote: &poem::web::RemoteAddr) -> Principal {
        match (self.key, remote.as_socket_addr()) {
            (Some(key), _) => Principal::Key(key.hash),
            (None, Some(addr)) => Principal::Address(addr.ip()),
            (None, None) => Principal::Unknown,
        }
    }
}

/// A caller as a holder of a share: a key (by its hash), or a client
/// address on a server without keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    Key([u8; 32]),
    Address(std::net::IpAddr),
    /// Not over TCP (a test's in-memory request): one holder for all.
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
