//! The shard's catalog as its writer keeps it: the collections' schemas and
//! indexes, declared, dropped and built between batches.

use std::collections::HashMap;
use std::sync::Arc;

use super::{SchemaChange, Writer};
use crate::domain::{CollectionName, DocKey};
use crate::store::engine::ChangeKind;
use crate::store::engine::StoredSchema;
use crate::store::index::{IndexDef, MAX_KEY_BYTES};
use crate::store::query::FieldPath;
use crate::store::schema::{CollectionSchema, SchemaState};
use crate::store::StoreError;

impl Writer {
    /// Reads and compiles every schema the shard holds. One that no longer
    /// compiles (only a changed validator could do that) is logged and its
    /// collection takes anything, rather than refusing every write.
    pub(in crate::store) async fn load_catalog(&mut self) -> Result<(), StoreError> {
        let stored = self.writes.schemas().await.map_err(|e| self.engine_error(e))?;
        self.schemas = stored
            .into_iter()
            .map(|row| {
                let schema = row.schema.as_deref().and_then(|text| {
                    CollectionSchema::from_stored(text)
                        .inspect_err(|e| {
                            tracing::error!(shard = self.shard, collection = %row.collection, error = %e, "a stored schema does not compile; its collection is not checked");
                        })
                        .ok()
                        .map(Arc::new)
                });
                if let Some(refusal) = schema.as_ref().and_then(|schema| schema.refusal()) {
                    tracing::error!(shard = self.shard, collection = %row.collection, reason = %refusal, "a stored schema is over today's bounds; its collection refuses every write until the schema is set again");
                }
                let state = SchemaState {
                    version: row.version,
                    schema,
                    updated_at_ms: row.updated_at_ms,
                };
                (row.collection, state)
            })
            .collect();
        self.published.publish(&self.schemas);
        let stored = self.writes.indexes().await.map_err(|e| self.engine_error(e))?;
        let mut indexes: HashMap<CollectionName, Vec<IndexDef>> = HashMap::new();
        for index in stored {
            match index
                .fields
                .iter()
                .map(|f| FieldPath::parse(f))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(fields) => indexes.entry(index.collection).or_default().push(IndexDef {
                    name: index.name,
                    fields,
                }),
                Err(e) => {
                    tracing::error!(shard = self.shard, index = %index.name, error = %e, "a stored index's fields do not parse; it is not kept");
                }
            }
        }
        self.indexes = indexes;
        Ok(())
    }

    /// Declares or drops an index on this shard, in the order of its
    /// writes: every write after it keeps (or no longer keeps) its
    /// entries. The shard that records it writes the feed's entry.
    pub(super) async fn change_index(
        &mut self,
        collection: &CollectionName,
        name: &str,
        fields: Option<Vec<String>>,
        recorded: bool,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        self.begin().await?;
        let kind = if fields.is_some() {
            ChangeKind::IndexDeclared
        } else {
            ChangeKind::IndexDropped
        };
        let id = crate::domain::DocId::parse(name).map_err(|_| StoreError::Internal("an index name is an id"))?;
        let feed = if recorded {
            self.feed
                .number(std::iter::once((DocKey::new(collection.clone(), id), 1, kind)), at_ms)
        } else {
            Vec::new()
        };
        let changed = match fields {
            Some(fields) => {
                let paths = fields
                    .iter()
                    .map(|f| FieldPath::parse(f))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| StoreError::Internal("an index's fields were checked"))?;
                let stored = crate::store::engine::StoredIndex {
                    collection: collection.clone(),
                    name: name.to_owned(),
                    fields,
                    built: false,
                    indexed: 0,
                    oversized: 0,
                    created_at_ms: at_ms,
                };
                let changed = self
                    .writes
                    .declare_index(&stored, &feed)
                    .await
                    .map_err(|e| self.engine_error(e))?;
                if changed {
                    self.indexes.entry(collection.clone()).or_default().push(IndexDef {
                        name: name.to_owned(),
                        fields: paths,
                    });
                }
                changed
            }
            None => {
                let changed = self
                    .writes
                    .drop_index(collection, name, &feed)
                    .await
                    .map_err(|e| self.engine_error(e))?;
                if let Some(list) = self.indexes.get_mut(collection) {
                    list.retain(|index| index.name != name);
                }
                changed
            }
        };
        if changed {
            self.feed.published(&feed);
        }
        Ok(changed)
    }

    /// Covers up to `limit` more documents of an index's build, from where
    /// the shard's record says it is (so builds that were interrupted, or
    /// run by several replicas, go on from there); answers how many, and
    /// whether the shard is done.
    pub(super) async fn build_index(
        &mut self,
        collection: &CollectionName,
        name: &str,
        limit: u32,
    ) -> Result<(u64, bool), StoreError> {
        self.begin().await?;
        let Some((upto, built)) = self
            .writes
            .build_progress(collection, name)
            .await
            .map_err(|e| self.engine_error(e))?
        else {
            self.writes.release().await;
            return Ok((0, true));
        };
        if built {
            self.writes.release().await;
            return Ok((0, true));
        }
        let Some(index) = self
            .indexes
            .get(collection)
            .and_then(|list| list.iter().find(|index| index.name == name))
            .cloned()
        else {
            self.writes.release().await;
            return Ok((0, true));
        };
        // Documents are read a few at a time and only their keys kept, so
        // a step holds at most `BUILD_READ_BYTES` of their text besides.
        const BUILD_READ: u32 = 64;
        const BUILD_READ_BYTES: usize = 8 << 20;
        let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
        let mut oversized = 0u64;
        let mut last = upto;
        let mut read = 0u32;
        let mut bytes = 0usize;
        let done = loop {
            let want = BUILD_READ.min(limit.saturating_sub(read)).max(1);
            let docs = self
                .writes
                .documents_after(collection, last.as_deref(), want)
                .await
                .map_err(|e| self.engine_error(e))?;
            let chunk = docs.len() as u32;
            for (id, data) in docs {
                bytes += data.len();
                let value =
                    serde_json::from_str(&data).map_err(|e| self.unreadable(&format!("{collection}/{id}"), &e))?;
                let key = index.key_of(&value);
                // Written before the declaration: it cannot be indexed,
                // and the index is never used (its listing says why).
                if key.len() > MAX_KEY_BYTES {
                    oversized += 1;
                } else {
                    entries.push((id.clone(), key));
                }
                last = Some(id);
            }
            read += chunk;
            if chunk < want {
                break true;
            }
            if read >= limit || bytes >= BUILD_READ_BYTES {
                break false;
            }
        };
        self.writes
            .build_step(collection, name, &entries, oversized, last.as_deref(), done)
            .await
            .map_err(|e| self.engine_error(e))?;
        Ok((entries.len() as u64, done))
    }

    /// Sets or removes a collection's schema on this shard, in the order
    /// of its writes: every write queued after it is checked against it.
    /// The shard that numbers the change records it in the feed. A change
    /// older than what the shard holds (another replica's came first) is
    /// not stored; the answer is what the shard holds.
    pub(super) async fn set_schema(&mut self, change: SchemaChange) -> Result<SchemaState, StoreError> {
        self.begin().await?;
        let current = self.schemas.get(&change.collection).map_or(0, |state| state.version);
        let numbering = change.version.is_none();
        let version = change.version.unwrap_or(current + 1);
        if version <= current {
            self.writes.release().await;
            return self
                .schemas
                .get(&change.collection)
                .cloned()
                .ok_or(StoreError::Internal("a schema's version without its schema"));
        }
        let kind = if change.schema.is_some() {
            ChangeKind::SchemaSet
        } else {
            ChangeKind::SchemaRemoved
        };
        let key = DocKey::new(change.collection.clone(), crate::domain::DocId::of_collection());
        let feed = if numbering {
            self.feed.number(std::iter::once((key, version, kind)), change.at_ms)
        } else {
            Vec::new()
        };
        let row = StoredSchema {
            collection: change.collection.clone(),
            version,
            schema: change.schema.as_ref().map(|s| s.text.to_string()),
            updated_at_ms: change.at_ms,
        };
        let stored = self
            .writes
            .set_schema(&row, &feed)
            .await
            .map_err(|e| self.engine_error(e))?;
        if stored {
            let state = SchemaState {
                version,
                schema: change.schema,
                updated_at_ms: change.at_ms,
            };
            self.schemas.insert(change.collection.clone(), state);
            self.published.publish(&self.schemas);
            self.feed.published(&feed);
        }
        self.schemas
            .get(&change.collection)
            .cloned()
            .ok_or(StoreError::Internal("a schema was stored but not kept"))
    }
}
