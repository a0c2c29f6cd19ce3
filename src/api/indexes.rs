//! `/v1/collections/{collection}/indexes`: declared indexes, built in the
//! background and kept by every write, that queries run on.

use poem::http::StatusCode;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde_json::Value;

use super::auth::{Access, Credentials};
use super::docs::{bad_request, format_time};
use super::error::ProblemError;
use super::params::CollectionParam;
use super::payload::JsonBody;
use super::tags::ApiTags;
use crate::domain::access::Scope;
use crate::domain::CollectionName;
use crate::store::index::IndexInfo;
use crate::store::Store;

pub struct IndexesApi {
    pub store: Store,
    pub access: Access,
}

/// What an index covers.
#[derive(Object)]
#[oai(deny_unknown_fields)]
pub struct IndexRequest {
    /// 1 to 4 field paths (dot-separated); a query uses the index when its
    /// filter binds the first ones by equality, then a range on the next,
    /// or sorts by the ones that follow.
    #[oai(validator(min_items = 1, max_items = 4))]
    fields: Vec<String>,
}

/// An index and how far its build is.
#[derive(Object)]
pub struct IndexBody {
    collection: String,
    name: String,
    fields: Vec<String>,
    /// `building`: the background build is covering the documents stored
    /// before the index was declared (queries do not use it yet); `ready`;
    /// `failed`: some stored documents have values too large for a key
    /// (`oversized`), so queries never use it: change them, drop the index
    /// and declare it again.
    state: String,
    /// Documents whose values are too large for a key (over 1536 bytes).
    oversized: u64,
    /// Documents the build has covered so far.
    indexed: u64,
    /// Shards whose part of the build is done, and all shards.
    shards_built: u64,
    shards: u64,
    /// When it was declared (RFC 3339, UTC).
    created_at: String,
}

/// A collection's indexes.
#[derive(Object)]
pub struct IndexList {
    indexes: Vec<IndexBody>,
}

/// A dropped index.
#[derive(Object)]
pub struct IndexDropped {
    collection: String,
    name: String,
    dropped: bool,
}

#[derive(ApiResponse)]
pub enum DeclareResponse {
    /// It exists already with these fields.
    #[oai(status = 200)]
    Exists(Json<IndexBody>),
    /// Declared: writes keep it from now on; its build has started.
    #[oai(status = 201)]
    Declared(Json<IndexBody>),
}

#[derive(ApiResponse)]
pub enum ListResponse {
    #[oai(status = 200)]
    List(Json<IndexList>),
}

#[derive(ApiResponse)]
pub enum OneResponse {
    #[oai(status = 200)]
    Found(Json<IndexBody>),
}

#[derive(ApiResponse)]
pub enum DropResponse {
    /// Dropped, with its entries.
    #[oai(status = 200)]
    Dropped(Json<IndexDropped>),
}

#[OpenApi(prefix_path = "/v1/collections", tag = "ApiTags::Collections")]
impl IndexesApi {
    /// Declare an index
    ///
    /// Every write path keeps its entries from now on (PUT, POST, PATCH,
    /// batches, imports, the original API, expiry, drops), in the same
    /// transaction as the document. A background build covers the documents
    /// already there, a thousand at a time between other writes; queries
    /// use the index once it is `ready`. Declaring it again with the same
    /// fields is a 200; with other fields, 409. A name is 1 to 64 of
    /// `A-Z a-z 0-9 _ -`; a collection has at most 16 indexes. Needs an
    /// admin key.
    #[oai(path = "/:collection/indexes/:name", method = "put")]
    async fn declare_index(
        &self,
        auth: Credentials,
        collection: Path<CollectionParam>,
        /// The index's name
        #[oai(validator(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
        name: Path<String>,
        body: JsonBody<IndexRequest>,
    ) -> Result<DeclareResponse, ProblemError> {
        let collection = self.access.authorized(&auth, Scope::Admin, collection.0 .0)?;
        let fields = fields_of(&body.0).map_err(bad_request)?;
        let created = self.store.declare_index(&collection, &name.0, fields).await?;
        let index = self.one(&collection, &name.0).await?;
        tracing::info!(collection = %collection, index = %name.0, created, "index declared");
        Ok(if created {
            DeclareResponse::Declared(Json(index))
        } else {
            DeclareResponse::Exists(Json(index))
        })
    }

    /// List a collection's indexes
    #[oai(path = "/:collection/indexes", method = "get")]
    async fn list_indexes(
        &self,
        auth: Credentials,
        collection: Path<CollectionParam>,
    ) -> Result<ListResponse, ProblemError> {
        let collection = self.access.authorized(&auth, Scope::Read, collection.0 .0)?;
        let indexes = self.store.indexes(&collection).await?;
        Ok(ListResponse::List(Json(IndexList {
            indexes: indexes.iter().map(|i| body(&collection, i)).collect(),
        })))
    }

    /// Read an index and its build's progress
    #[oai(path = "/:collection/indexes/:name", method = "get")]
    async fn get_index(
        &self,
        auth: Credentials,
        collection: Path<CollectionParam>,
        /// The index's name
        #[oai(validator(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
        name: Path<String>,
    ) -> Result<OneResponse, ProblemError> {
        let collection = self.access.authorized(&auth, Scope::Read, collection.0 .0)?;
        Ok(OneResponse::Found(Json(self.one(&collection, &name.0).await?)))
    }

    /// Drop an index
    ///
    /// Its entries go with it; queries that used it read the collection
    /// again (or are refused, past `EXDAAS_QUERY_MAX_SCAN`). Needs an admin
    /// key.
    #[oai(path = "/:collection/indexes/:name", method = "delete")]
    async fn drop_index(
        &self,
        auth: Credentials,
        collection: Path<CollectionParam>,
        /// The index's name
        #[oai(validator(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
        name: Path<String>,
    ) -> Result<DropResponse, ProblemError> {
        let collection = self.access.authorized(&auth, Scope::Admin, collection.0 .0)?;
        if !self.store.drop_index(&collection, &name.0).await? {
            return Err(not_found(&collection, &name.0));
        }
        tracing::info!(collection = %collection, index = %name.0, "index dropped");
        Ok(DropResponse::Dropped(Json(IndexDropped {
            collection: collection.as_str().to_owned(),
            name: name.0,
            dropped: true,
        })))
    }
}

impl IndexesApi {
    async fn one(&self, collection: &CollectionName, name: &str) -> Result<IndexBody, ProblemError> {
        self.store
            .indexes(collection)
            .await?
            .iter()
            .find(|i| i.name == name)
            .map(|i| body(collection, i))
            .ok_or_else(|| not_found(collection, name))
    }
}

/// The body's `fields`, read strictly: a list of strings, and nothing else
/// in the body (the paths themselves are the store's to check).
fn fields_of(body: &Value) -> Result<Vec<String>, String> {
    let Value::Object(parts) = body else {
        return Err("the body is a JSON object: {\"fields\": [...]}".into());
    };
    if let Some(unknown) = parts.keys().find(|k| k.as_str() != "fields") {
        return Err(format!("{unknown}: not a part of an index (fields)"));
    }
    let Some(Value::Array(items)) = parts.get("fields") else {
        return Err("fields: a list of 1 to 4 field paths".into());
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(path) => Ok(path.clone()),
            other => Err(format!("fields[{i}]: a field path (a string), not {other}")),
        })
        .collect()
}

fn not_found(collection: &CollectionName, name: &str) -> ProblemError {
    ProblemError::new(
        StatusCode::NOT_FOUND,
        format!("collection {:?} has no index {name:?}", collection.as_str()),
    )
}

fn body(collection: &CollectionName, index: &IndexInfo) -> IndexBody {
    IndexBody {
        collection: collection.as_str().to_owned(),
        name: index.name.clone(),
        fields: index.fields.clone(),
        state: if index.oversized > 0 {
            "failed"
        } else if index.ready {
            "ready"
        } else {
            "building"
        }
        .to_owned(),
        oversized: index.oversized,
        indexed: index.indexed,
        shards_built: index.shards_built as u64,
        shards: index.shards as u64,
        created_at: format_time(index.created_at_ms),
    }
}
