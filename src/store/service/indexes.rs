//! Declared indexes as the store serves them: declared and dropped on
//! every shard, built in the background, listed.

use crate::domain::CollectionName;
use crate::store::index::*;
use crate::store::query::FieldPath;
use crate::store::{Store, StoreError};

/// Documents a build covers per step: one transaction of the shard's
/// writer, between its other writes.
const BUILD_STEP: u32 = 1000;

impl Store {
    /// Declares an index of `fields` on a collection: every write keeps its
    /// entries from now on, and a background build covers the documents
    /// already there (queries use it once that is done on every shard).
    /// `Ok(false)` if it exists already with these fields; a conflict if
    /// with others.
    pub async fn declare_index(
        &self,
        collection: &CollectionName,
        name: &str,
        fields: Vec<String>,
    ) -> Result<bool, StoreError> {
        let invalid = |reason: String| StoreError::InvalidDocument { reason };
        check_name(name).map_err(invalid)?;
        if fields.is_empty() || fields.len() > MAX_INDEX_FIELDS {
            return Err(invalid(format!("fields: 1 to {MAX_INDEX_FIELDS} field paths")));
        }
        for (i, field) in fields.iter().enumerate() {
            FieldPath::parse(field).map_err(|e| invalid(format!("fields[{i}]: {e}")))?;
            if fields[..i].contains(field) {
                return Err(invalid(format!("fields[{i}]: {field:?} is there twice")));
            }
        }
        let _one_at_a_time = self.inner.catalog_changes.lock().await;
        let existing = self.indexes(collection).await?;
        if let Some(index) = existing.iter().find(|index| index.name == name) {
            if index.fields == fields {
                return Ok(false);
            }
            return Err(StoreError::Conflict {
                reason: format!(
                    "index {name:?} of collection {collection} exists with fields {:?}; drop it first to change them",
                    index.fields
                ),
            });
        }
        if existing.len() >= MAX_INDEXES_PER_COLLECTION {
            return Err(StoreError::Unprocessable {
                reason: format!(
                    "collection {collection} has {MAX_INDEXES_PER_COLLECTION} indexes, the most it may have"
                ),
            });
        }
        self.change_index_everywhere(collection, name, Some(fields)).await?;
        self.spawn_index_build(collection.clone(), name.to_owned());
        Ok(true)
    }

    /// Drops an index and its entries; `false` if there was none.
    pub async fn drop_index(&self, collection: &CollectionName, name: &str) -> Result<bool, StoreError> {
        let _one_at_a_time = self.inner.catalog_changes.lock().await;
        if !self.indexes(collection).await?.iter().any(|index| index.name == name) {
            return Ok(false);
        }
        self.change_index_everywhere(collection, name, None).await?;
        Ok(true)
    }

    /// The change on every shard, the recording one first.
    pub(in crate::store) async fn change_index_everywhere(
        &self,
        collection: &CollectionName,
        name: &str,
        fields: Option<Vec<String>>,
    ) -> Result<(), StoreError> {
        let at_ms = crate::clock::now_millis();
        let recording = self.numbering_shard(collection);
        self.inner.shards[recording]
            .change_index(collection, name, fields.clone(), true, at_ms)
            .await?;
        let others = self
            .inner
            .shards
            .iter()
            .filter(|shard| shard.index != recording)
            .map(|shard| shard.change_index(collection, name, fields.clone(), false, at_ms));
        for answer in futures_util::future::join_all(others).await {
            answer?;
        }
        Ok(())
    }

    /// A collection's indexes with their build's progress.
    pub async fn indexes(&self, collection: &CollectionName) -> Result<Vec<IndexInfo>, StoreError> {
        let catalogs = futures_util::future::join_all(
            self.inner
                .shards
                .iter()
                .map(|shard| shard.reads().index_catalog(collection)),
        )
        .await;
        let shards = self.inner.shards.len();
        let mut merged: Vec<IndexInfo> = Vec::new();
        for catalog in catalogs {
            for stored in catalog? {
                let info = match merged.iter_mut().find(|i| i.name == stored.name) {
                    Some(info) => info,
                    None => {
                        merged.push(IndexInfo {
                            name: stored.name.clone(),
                            fields: stored.fields.clone(),
                            ready: false,
                            indexed: 0,
                            oversized: 0,
                            shards_built: 0,
                            shards,
                            created_at_ms: stored.created_at_ms,
                        });
                        let last = merged.len() - 1;
                        &mut merged[last]
                    }
                };
                info.indexed += stored.indexed;
                info.oversized += stored.oversized;
                info.shards_built += usize::from(stored.built);
            }
        }
        for info in &mut merged {
            info.ready = info.shards_built == shards && info.oversized == 0;
        }
        merged.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(merged)
    }

    /// Runs an index's build in the background, shard after shard, each a
    /// step at a time through its writer (so writes go on between steps),
    /// until every shard is covered, the index is dropped, or the server
    /// stops. A failed step is tried again a second later.
    pub fn spawn_index_build(&self, collection: CollectionName, name: String) {
        let store = self.clone();
        tokio::spawn(async move {
            let events = store.inner.events.clone();
            events.index_builds_running(1);
            let mut shutdown = store.inner.shutdown.subscribe();
            let started = std::time::Instant::now();
            let mut covered = 0u64;
            'shards: for shard in &store.inner.shards {
                loop {
                    if *shutdown.borrow() {
                        break 'shards;
                    }
                    match shard.build_index(&collection, &name, BUILD_STEP).await {
                        Ok((n, done)) => {
                            covered += n;
                            events.index_built(n);
                            if done {
                                break;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(collection = %collection, index = %name, shard = shard.index, error = %e, "an index build step failed; trying again");
                            tokio::select! {
                                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                                _ = shutdown.changed() => {}
                            }
                        }
                    }
                }
            }
            events.index_builds_running(-1);
            tracing::info!(collection = %collection, index = %name, documents = covered, seconds = started.elapsed().as_secs_f64(), "index build ended");
        });
    }

    /// Goes on with the builds a stop interrupted.
    pub async fn resume_index_builds(&self) -> Result<(), StoreError> {
        let mut unbuilt: Vec<(String, String)> = Vec::new();
        for shard in &self.inner.shards {
            for found in shard.reads().unbuilt_indexes().await? {
                if !unbuilt.contains(&found) {
                    unbuilt.push(found);
                }
            }
        }
        for (collection, name) in unbuilt {
            match CollectionName::parse(&collection) {
                Ok(collection) => self.spawn_index_build(collection, name),
                Err(e) => {
                    tracing::error!(collection = %collection, error = %e, "an index of a collection whose name does not parse")
                }
            }
        }
        Ok(())
    }

    /// The indexes built on every shard, as the planner takes them.
    pub(in crate::store) async fn ready_indexes(
        &self,
        collection: &CollectionName,
    ) -> Result<Vec<IndexDef>, StoreError> {
        Ok(self
            .indexes(collection)
            .await?
            .into_iter()
            .filter(|info| info.ready)
            .filter_map(|info| {
                let fields = info
                    .fields
                    .iter()
                    .map(|f| FieldPath::parse(f))
                    .collect::<Result<Vec<_>, _>>()
                    .ok()?;
                Some(IndexDef {
                    name: info.name,
                    fields,
                })
            })
            .collect())
    }
}
