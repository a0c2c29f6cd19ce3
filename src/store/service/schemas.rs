//! Collections' schemas as the store serves them: set on every shard,
//! read, and the stored documents checked against them.

use crate::domain::{CollectionName, DocId, DocKey};
use crate::store::ops::{decide, Action, WriteOp};
use crate::store::schema::*;
use crate::store::shard::Shard;
use crate::store::writer::SchemaChange;
use crate::store::{Document, ListRequest, Store, StoreError, MAX_PAGE};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

impl Store {
    /// Sets a collection's schema, or removes it (`None`), on every shard,
    /// each after the writes queued there before it. The shard that the
    /// collection's own key places numbers the change and records it in
    /// the feed; the others store that version, and never go back to an
    /// older one. A shard that cannot be reached makes this an error (and
    /// the change may hold on some shards only): setting it again is safe.
    pub async fn set_schema(
        &self,
        collection: &CollectionName,
        schema: Option<CollectionSchema>,
    ) -> Result<SchemaState, StoreError> {
        let _one_at_a_time = self.inner.catalog_changes.lock().await;
        let schema = schema.map(Arc::new);
        let at_ms = crate::clock::now_millis();
        let numbering = self.numbering_shard(collection);
        let change = |version| SchemaChange {
            collection: collection.clone(),
            schema: schema.clone(),
            version,
            at_ms,
        };
        let state = self.inner.shards[numbering].change_schema(change(None)).await?;
        let others = self
            .inner
            .shards
            .iter()
            .filter(|shard| shard.index != numbering)
            .map(|shard| shard.change_schema(change(Some(state.version))));
        for answer in futures_util::future::join_all(others).await {
            answer?;
        }
        Ok(state)
    }

    /// A collection's schema state, `None` if it never had one.
    pub async fn schema(&self, collection: &CollectionName) -> Result<Option<SchemaState>, StoreError> {
        self.inner.shards[self.numbering_shard(collection)]
            .schema_of(collection)
            .await
    }

    /// Checks the documents `ops` (bound for `shard`, in order) would
    /// store against their collection's schema as the shard last published
    /// it, and notes each answer in its operation ([`Checked`]). A patch's
    /// result is worked out from the document as committed now, as the
    /// writer will (it checks again only if the document or the schema
    /// changed in between). Runs off the runtime's workers when long.
    pub(in crate::store) async fn check_before_writing(
        &self,
        shard: &Shard,
        ops: &mut [WriteOp],
    ) -> Result<(), StoreError> {
        let Some(first) = ops.first() else {
            return Ok(());
        };
        let Some(state) = shard.published_schemas().of(&first.key.collection) else {
            return Ok(());
        };
        let Some(schema) = state.schema.clone() else {
            return Ok(());
        };
        let now = crate::clock::now_millis();
        // A key written twice in one request: the second sees the first.
        let mut seen: HashMap<&DocKey, u32> = HashMap::new();
        for op in ops.iter() {
            *seen.entry(&op.key).or_default() += 1;
        }
        let repeated: std::collections::HashSet<DocKey> = seen
            .into_iter()
            .filter(|&(_, times)| times > 1)
            .map(|(key, _)| key.clone())
            .collect();
        let mut states: HashMap<DocKey, Option<Document>> = HashMap::new();
        let mut unknown: std::collections::HashSet<DocKey> = std::collections::HashSet::new();
        let mut read_bytes = 0usize;
        let mut texts: Vec<(usize, Arc<str>)> = Vec::new();
        for (at, op) in ops.iter().enumerate() {
            if op.key.collection != first.key.collection || unknown.contains(&op.key) {
                continue;
            }
            let patch = matches!(op.action, Action::Patch { .. });
            if !patch && !repeated.contains(&op.key) {
                if let Action::Put { data, .. } = &op.action {
                    texts.push((at, data.clone()));
                }
                continue;
            }
            let current = match states.get(&op.key) {
                Some(state) => state.clone(),
                // Read as the writer will, within the request's page of
                // bytes; past it, the writer checks what is left.
                None if read_bytes < self.inner.page_bytes => match self.get(&op.key).await {
                    Ok(doc) => {
                        read_bytes += doc.as_ref().map_or(0, |doc| doc.data.len());
                        doc
                    }
                    Err(_) => {
                        unknown.insert(op.key.clone());
                        continue;
                    }
                },
                None => {
                    unknown.insert(op.key.clone());
                    continue;
                }
            };
            let (_, next) = decide(op, current.as_ref(), now);
            if let Some(next) = next {
                if let Some(doc) = &next {
                    texts.push((at, doc.data.clone()));
                }
                states.insert(op.key.clone(), next);
            }
        }
        if texts.is_empty() {
            return Ok(());
        }
        let mut documents = Vec::with_capacity(texts.len());
        for (_, text) in &texts {
            documents.push(
                serde_json::from_str::<Value>(text)
                    .map_err(|_| StoreError::Internal("a document to store is not JSON"))?,
            );
        }
        let answers = check_documents(schema, documents).await?;
        for ((at, text), violations) in texts.into_iter().zip(answers) {
            ops[at].checked = Some(Checked {
                schema_version: state.version,
                text,
                violations,
            });
        }
        Ok(())
    }

    /// The shard that numbers a collection's schema changes.
    pub(in crate::store) fn numbering_shard(&self, collection: &CollectionName) -> usize {
        self.shard_of(&DocKey::new(collection.clone(), DocId::of_collection()))
    }

    /// Checks a collection's documents against `schema`, in id order from
    /// after `pass.after`: counts every mismatch among those read and keeps
    /// the first `pass.keep` with their violations. It reads to the end, or
    /// stops where `pass` says; `next_after` then says where it stopped.
    pub async fn mismatches(
        &self,
        collection: &CollectionName,
        schema: &Arc<CollectionSchema>,
        pass: &MismatchPass<'_>,
    ) -> Result<Mismatches, StoreError> {
        let mut report = Mismatches::default();
        let mut start_after = pass.after.map(str::to_owned);
        let mut spent = 0u64;
        loop {
            let request = ListRequest {
                prefix: None,
                start_after: start_after.clone(),
                limit: MAX_PAGE,
                keys_only: false,
            };
            let page = self.list(collection, &request).await?;
            // What of the page this pass can afford, in chunks a checker
            // thread takes at once.
            let mut taken: Vec<(DocId, Result<Value, Violation>, u64)> = Vec::new();
            let mut out_of_checks = false;
            for listed in &page.items {
                let (data, checks) = match serde_json::from_str::<Value>(&listed.doc.data) {
                    Ok(data) => {
                        let checks = 1 + schema.checks_of(&data);
                        (Ok(data), checks)
                    }
                    Err(e) => (Err(not_json(&e)), 1),
                };
                if spent.saturating_add(checks) > pass.checks_at_most && (spent > 0 || !taken.is_empty()) {
                    out_of_checks = true;
                    break;
                }
                spent = spent.saturating_add(checks);
                taken.push((listed.id.clone(), data, checks));
            }
            let mut found = Vec::with_capacity(taken.len());
            let mut chunk: Vec<(DocId, Result<Value, Violation>)> = Vec::new();
            let mut chunk_checks = 0u64;
            let count = taken.len();
            for (at, (id, data, checks)) in taken.into_iter().enumerate() {
                chunk.push((id, data));
                chunk_checks = chunk_checks.saturating_add(checks);
                if chunk_checks >= MAX_DOCUMENT_CHECKS || at + 1 == count {
                    found.extend(check_chunk(schema, std::mem::take(&mut chunk)).await?);
                    chunk_checks = 0;
                }
            }
            let mut last = None;
            for (id, violations) in found {
                report.checked += 1;
                if !violations.is_empty() {
                    report.count += 1;
                    if report.found.len() < pass.keep {
                        report.found.push((id.clone(), violations));
                        if pass.stop_when_kept && report.found.len() == pass.keep {
                            report.next_after = Some(id);
                            return Ok(report);
                        }
                    }
                }
                last = Some(id);
            }
            if out_of_checks {
                report.next_after = last;
                return Ok(report);
            }
            let Some(next) = page.next_after else {
                report.next_after = None;
                return Ok(report);
            };
            if report.checked >= pass.read_at_most {
                report.next_after = Some(next);
                return Ok(report);
            }
            start_after = Some(next.as_str().to_owned());
        }
    }
}

/// Each document of `chunk` with its violations.
async fn check_chunk(
    schema: &Arc<CollectionSchema>,
    chunk: Vec<(DocId, Result<Value, Violation>)>,
) -> Result<Vec<(DocId, Vec<Violation>)>, StoreError> {
    let mut ids = Vec::with_capacity(chunk.len());
    let mut documents = Vec::new();
    let mut unreadable: HashMap<usize, Violation> = HashMap::new();
    for (at, (id, data)) in chunk.into_iter().enumerate() {
        ids.push(id);
        match data {
            Ok(data) => documents.push(data),
            Err(violation) => {
                unreadable.insert(at, violation);
            }
        }
    }
    let mut checked = check_documents(schema.clone(), documents).await?.into_iter();
    Ok(ids
        .into_iter()
        .enumerate()
        .map(|(at, id)| match unreadable.remove(&at) {
            Some(violation) => (id, vec![violation]),
            None => (id, checked.next().unwrap_or_default()),
        })
        .collect())
}
