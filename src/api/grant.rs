//! `GET /v1/access`: what the request's key may do, so a client (the admin
//! page) offers only what will be allowed.

use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};

use super::auth::{Access, Credentials};
use super::error::{Flavor, ProblemError};
use super::tags::ApiTags;
use crate::domain::access::Scope;

pub struct GrantApi {
    pub access: Access,
}

/// A key's scope; each includes the ones before it.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum GrantedScope {
    /// Read documents, list collections, follow the feed.
    Read,
    /// Also create, change and delete documents.
    Write,
    /// Also drop collections and take backups.
    Admin,
}

/// What the caller may do.
#[derive(Object)]
pub struct Grant {
    /// Whether the server needs a key at all (`false`: everyone may do
    /// everything, as in the original).
    keys_required: bool,
    scope: GrantedScope,
    /// The collections the key is limited to; `null`: every collection.
    #[oai(nullable)]
    collections: Option<Vec<String>>,
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Admin")]
impl GrantApi {
    /// What my key may do
    ///
    /// The scope of the key the request carries and the collections it is
    /// limited to, if any. Without keys configured: `admin` on everything.
    #[oai(path = "/access", method = "get")]
    async fn access(&self, auth: Credentials) -> Result<Json<Grant>, ProblemError> {
        let caller = self.access.caller(&auth, Flavor::V1).map_err(ProblemError)?;
        let (scope, collections) = caller.grant();
        Ok(Json(Grant {
            keys_required: !self.access.is_open(),
            scope: match scope {
                Scope::Read => GrantedScope::Read,
                Scope::Write => GrantedScope::Write,
                Scope::Admin => GrantedScope::Admin,
            },
            collections: collections.map(|list| list.iter().map(|c| c.as_str().to_owned()).collect()),
        }))
    }
}
