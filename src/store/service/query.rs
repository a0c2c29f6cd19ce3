//! How a query runs. Its documents are read a batch at a time (from an
//! index's range or the whole collection), and each batch is evaluated
//! away from the threads that answer HTTP: on a blocking thread, one of at
//! most `EXDAAS_QUERY_THREADS` across every query. Each document's work
//! (bytes parsed, conditions checked, values compared) is counted against
//! `EXDAAS_QUERY_MAX_WORK`, and once the request is dropped (its client
//! went away) the evaluation stops at the next document.

use std::cmp::Ordering;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use serde_json::Value;

use crate::domain::{CollectionName, DocId, DocKey};
use crate::stats::StoreEvents;
use crate::store::query::eval::Eval;
use crate::store::query::{Cursor, Query, QueryAnswer, QueryLimits, QueryPage, SortKey};
use crate::store::{Document, ListRequest, Store, StoreError, MAX_PAGE};

/// A batch of at most this much work (bytes of documents, and conditions
/// times documents) is evaluated where it was read: a thread's hand-off
/// would cost more than the work.
const INLINE_WORK: usize = 32 * 1024;
/// The page's documents are checked again in chunks of at most this many
/// bytes (or [`FINISH_CHUNK`] documents), beyond the first.
const FINISH_BYTES: usize = 1 << 20;
const FINISH_CHUNK: usize = 16;

/// A candidate for the page: where it sorts, and which document it is.
struct Candidate {
    sort: Vec<SortKey>,
    id: DocId,
    bytes: usize,
}

/// One query as it runs: what its evaluations on other threads share.
struct Run {
    collection: CollectionName,
    query: Query,
    page: QueryPage,
    limits: QueryLimits,
    /// The filter's longest array or object operand, written as JSON: a
    /// document's value is written no further to be compared.
    cap: usize,
    /// The filter's conditions.
    conditions: usize,
    /// The cursor's position as sort keys.
    after: Option<(Vec<SortKey>, String)>,
    /// Units of work done so far, on every thread.
    work: AtomicU64,
    /// The request was dropped before the answer was ready.
    abandoned: AtomicBool,
    events: Arc<dyn StoreEvents>,
}

impl Run {
    /// Adds a document's work to the query's; an error once the query is
    /// past its budget, or has no one left to answer.
    fn spend(&self, units: u64) -> Result<(), StoreError> {
        self.events.query_work(units);
        let total = self.work.fetch_add(units, Relaxed).saturating_add(units);
        if total > self.limits.max_work {
            return Err(StoreError::QueryTooCostly {
                collection: self.collection.clone(),
                max_work: self.limits.max_work,
                suggestion: crate::store::index::suggest(&self.query),
            });
        }
        if self.abandoned.load(Relaxed) {
            return Err(StoreError::Internal("the query's client went away"));
        }
        Ok(())
    }

    /// The refusal of a query that would read too much, naming the index
    /// that would fit it.
    fn too_broad(&self) -> StoreError {
        StoreError::QueryTooBroad {
            collection: self.collection.clone(),
            max_scan: self.limits.max_scan,
            suggestion: crate::store::index::suggest(&self.query),
        }
    }

    /// Runs `work` over `docs` documents of `bytes` in all: where it was
    /// called if that is little, else on a blocking thread once one of the
    /// query threads is free. The thread is held until `work` ends, even if
    /// the caller stops waiting for it (then `work` stops at its next
    /// [`Run::spend`]).
    async fn evaluate<T: Send + 'static>(
        self: &Arc<Self>,
        docs: usize,
        bytes: usize,
        work: impl FnOnce(&Run) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if bytes.saturating_add(docs.saturating_mul(self.conditions + 1)) <= INLINE_WORK {
            return work(self);
        }
        let permit = self
            .limits
            .threads
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Internal("the query threads are closed"))?;
        let run = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work(&run)
        })
        .await
        .map_err(|_| StoreError::Internal("a query's evaluation failed"))?
    }

    /// `data` parsed, if it passes the filter; the work it took.
    fn check(&self, data: &str) -> (Option<Value>, u64) {
        let mut work = data.len() as u64;
        let Ok(doc) = serde_json::from_str::<Value>(data) else {
            return (None, work);
        };
        let passes = match &self.query.filter {
            None => true,
            Some(filter) => {
                let mut eval = Eval::new(self.cap);
                let passes = filter.passes(&doc, &mut eval);
                work += eval.work;
                passes
            }
        };
        (passes.then_some(doc), work)
    }
}

/// Marks its run abandoned when dropped before [`Abandon::finished`]: the
/// request's future was dropped, its client gone.
struct Abandon(Arc<Run>, bool);

impl Abandon {
    fn finished(mut self) {
        self.1 = true;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if !self.1 {
            self.0.abandoned.store(true, Relaxed);
            self.0.events.query_abandoned();
        }
    }
}

impl Store {
    /// Runs `query` over a collection: through the index that fits it
    /// best, if one is built, else by reading every document. Either way
    /// it is refused with [`StoreError::QueryTooBroad`] once it has read
    /// `max_scan` documents or index entries, and with
    /// [`StoreError::QueryTooCostly`] once its work passes `max_work`.
    /// Memory holds the page's candidates (sort values and ids), never the
    /// collection: their documents are read again once the page is known.
    pub async fn query(
        &self,
        collection: &CollectionName,
        query: Query,
        page: QueryPage,
        limits: &QueryLimits,
    ) -> Result<QueryAnswer, StoreError> {
        let ready = self.ready_indexes(collection).await?;
        let plan = crate::store::index::plan(&query, &ready);
        let after = page.after.as_ref().map(|cursor| {
            let keys = cursor.values.iter().map(|v| SortKey::new(v.clone())).collect();
            (keys, cursor.id.clone())
        });
        let run = Arc::new(Run {
            collection: collection.clone(),
            cap: query.filter.as_ref().map_or(0, |f| f.composite_len()),
            conditions: query.filter.as_ref().map_or(0, |f| f.conditions()),
            query,
            page,
            limits: limits.clone(),
            after,
            work: AtomicU64::new(0),
            abandoned: AtomicBool::new(false),
            events: self.inner.events.clone(),
        });
        let running = Abandon(run.clone(), false);
        let gathered = match plan {
            Some(plan) => self.gather_by_index(&run, &plan).await,
            None => self.gather_by_scan(&run).await,
        };
        let answer = match gathered {
            Ok(gathered) => self.finish(&run, gathered).await,
            Err(e) => Err(e),
        };
        running.finished();
        answer
    }

    /// Candidates from every document of the collection.
    async fn gather_by_scan(&self, run: &Arc<Run>) -> Result<Gathered, StoreError> {
        let mut gathered = Gathered::new(self.shard_count(), None);
        let mut pool = Candidates::new(run.clone(), self.inner.page_bytes);
        let mut read = 0u64;
        let mut start_after: Option<String> = None;
        loop {
            let request = ListRequest {
                prefix: None,
                start_after: start_after.take(),
                limit: MAX_PAGE,
                keys_only: false,
            };
            let listed = self.list(&run.collection, &request).await?;
            read += listed.items.len() as u64;
            if read > run.limits.max_scan {
                return Err(run.too_broad());
            }
            for item in &listed.items {
                let shard = self.shard_of(&DocKey::new(run.collection.clone(), item.id.clone()));
                if let Some(n) = gathered.read_per_shard.get_mut(shard) {
                    *n += 1;
                }
            }
            let bytes = listed.items.iter().map(|item| item.doc.data.len()).sum();
            let items = listed.items;
            pool = run
                .evaluate(items.len(), bytes, move |run| {
                    for item in items {
                        let units = pool.offer(&item.id, &item.doc.data);
                        run.spend(units)?;
                    }
                    Ok(pool)
                })
                .await?;
            match listed.next_after {
                Some(next) => start_after = Some(next.as_str().to_owned()),
                None => break,
            }
        }
        gathered.count = pool.count;
        gathered.candidates = pool.into_first();
        Ok(gathered)
    }

    /// Candidates from the entries of `plan`'s index: each shard reads its
    /// range, and where the index's order is the query's (and nothing is
    /// counted), only as far as a page, starting after the cursor.
    async fn gather_by_index(&self, run: &Arc<Run>, plan: &crate::store::index::Plan) -> Result<Gathered, StoreError> {
        let seek = plan.sorted && !run.page.count;
        let after: Option<(Vec<u8>, String)> = match (&run.page.after, seek) {
            (Some(cursor), true) => {
                let mut key = plan.prefix.clone();
                for value in &cursor.values {
                    crate::store::index::encode(value.as_ref(), &mut key);
                }
                Some((key, cursor.id.clone()))
            }
            _ => None,
        };
        let want = run.page.limit.clamp(1, MAX_PAGE) + 1;
        let reads = self
            .inner
            .shards
            .iter()
            .map(|shard| self.index_candidates(shard, run, plan, after.clone(), seek.then_some(want)));
        let mut gathered = Gathered::new(self.shard_count(), Some(plan.index.name.clone()));
        let mut merged = Candidates::new(run.clone(), self.inner.page_bytes);
        for (shard, found) in futures_util::future::join_all(reads).await.into_iter().enumerate() {
            let (pool, read) = found?;
            if let Some(n) = gathered.read_per_shard.get_mut(shard) {
                *n = read;
            }
            merged.count += pool.count;
            for candidate in pool.into_first() {
                merged.push(candidate);
            }
        }
        gathered.count = merged.count;
        gathered.candidates = merged.into_first();
        Ok(gathered)
    }

    /// One shard's candidates from an index range; how many entries it read.
    async fn index_candidates(
        &self,
        shard: &crate::store::shard::Shard,
        run: &Arc<Run>,
        plan: &crate::store::index::Plan,
        mut after: Option<(Vec<u8>, String)>,
        stop_at: Option<usize>,
    ) -> Result<(Candidates, u64), StoreError> {
        const BATCH: usize = 512;
        let batch = stop_at.map_or(BATCH, |want| want.clamp(16, BATCH));
        let mut pool = Candidates::new(run.clone(), self.inner.page_bytes);
        let mut read = 0u64;
        let now = crate::clock::now_millis();
        loop {
            let entries = shard
                .reads()
                .index_range(
                    &run.collection,
                    &plan.index.name,
                    &plan.low,
                    &plan.high,
                    after.as_ref().map(|(key, id)| (key.as_slice(), id.as_str())),
                    batch,
                )
                .await?;
            read += entries.len() as u64;
            if read > run.limits.max_scan {
                return Err(run.too_broad());
            }
            // The documents a few at a time: memory holds sort values, and
            // at most this many documents' text.
            for chunk in entries.chunks(16) {
                let ids: Vec<&str> = chunk.iter().map(|(_, id)| id.as_str()).collect();
                let mut docs: std::collections::HashMap<String, Document> = shard
                    .reads()
                    .documents(&run.collection, &ids, now)
                    .await?
                    .into_iter()
                    .collect();
                let found: Vec<(DocId, Document)> = chunk
                    .iter()
                    .filter_map(|(_, id)| Some((DocId::parse(id).ok()?, docs.remove(id)?)))
                    .collect();
                let bytes = found.iter().map(|(_, doc)| doc.data.len()).sum();
                pool = run
                    .evaluate(found.len(), bytes, move |run| {
                        for (id, doc) in found {
                            let units = pool.offer(&id, &doc.data);
                            run.spend(units)?;
                        }
                        Ok(pool)
                    })
                    .await?;
            }
            if stop_at.is_some_and(|want| pool.count as usize >= want) || entries.len() < batch {
                break;
            }
            after = entries.last().cloned();
        }
        Ok((pool, read))
    }

    /// The page from the candidates: each document read again (one
    /// changed since is checked anew, one gone or no longer matching
    /// leaves a shorter page), projected, within the page's bytes.
    async fn finish(&self, run: &Arc<Run>, gathered: Gathered) -> Result<QueryAnswer, StoreError> {
        let limit = run.page.limit.clamp(1, MAX_PAGE);
        let budget = self.inner.page_bytes;
        let mut answer = QueryAnswer {
            read_per_shard: gathered.read_per_shard,
            index: gathered.index,
            count: run.page.count.then_some(gathered.count),
            ..QueryAnswer::default()
        };
        let mut candidates = gathered.candidates;
        let more = candidates.len() > limit;
        candidates.truncate(limit);
        let mut bytes = 0usize;
        let mut cut = false;
        let mut passed: Option<Cursor> = None;
        let mut candidates = candidates.into_iter().peekable();
        while candidates.peek().is_some() && !cut {
            // A chunk of the page's documents, read now...
            let mut chunk: Vec<(Candidate, Option<Document>)> = Vec::new();
            let mut chunk_bytes = 0usize;
            while chunk.len() < FINISH_CHUNK && chunk_bytes < FINISH_BYTES {
                let Some(candidate) = candidates.next() else { break };
                let key = DocKey::new(run.collection.clone(), candidate.id.clone());
                let doc = self.get(&key).await?;
                chunk_bytes += doc.as_ref().map_or(0, |d| d.data.len());
                chunk.push((candidate, doc));
            }
            // ...checked against the filter again and projected...
            let checked = run
                .evaluate(chunk.len(), chunk_bytes, move |run| {
                    let mut checked = Vec::with_capacity(chunk.len());
                    for (candidate, doc) in chunk {
                        let Some(doc) = doc else {
                            checked.push((candidate, None));
                            continue;
                        };
                        let (value, units) = run.check(&doc.data);
                        run.spend(units)?;
                        let stored = doc.data.len();
                        let kept = value.map(|value| {
                            let data = match &run.query.fields {
                                Some(_) => crate::store::canonical_json(&run.query.project(value)),
                                None => doc.data.clone(),
                            };
                            (stored, Document { data, ..doc })
                        });
                        checked.push((candidate, kept));
                    }
                    Ok(checked)
                })
                .await?;
            // ...and taken in order while the page has room.
            for (candidate, kept) in checked {
                passed = Some(Cursor {
                    values: candidate.sort.iter().map(|k| k.value.clone()).collect(),
                    id: candidate.id.as_str().to_owned(),
                });
                let Some((stored, doc)) = kept else { continue };
                bytes += stored;
                if bytes > budget && !answer.items.is_empty() {
                    cut = true;
                    break;
                }
                answer.next = passed.clone();
                answer.items.push((candidate.id, doc));
            }
        }
        // More may follow what was answered: after a page cut short by its
        // bytes, after the last answered; else after the last looked at.
        answer.next = match (more, cut) {
            (_, true) => answer.next,
            (true, false) => passed,
            (false, false) => None,
        };
        Ok(answer)
    }
}

/// What a query gathered before its page is read.
struct Gathered {
    candidates: Vec<Candidate>,
    count: u64,
    read_per_shard: Vec<u64>,
    index: Option<String>,
}

impl Gathered {
    fn new(shards: usize, index: Option<String>) -> Self {
        Self {
            candidates: Vec::new(),
            count: 0,
            read_per_shard: vec![0; shards],
            index,
        }
    }
}

/// The best candidates so far for a page: documents that match and come
/// after the cursor, kept as sort keys and ids, pruned to the page (and
/// one more) whenever they grow past twice that or past the byte budget.
struct Candidates {
    run: Arc<Run>,
    keep: usize,
    budget: usize,
    list: Vec<Candidate>,
    bytes: usize,
    /// Matching documents offered, before or after the cursor.
    count: u64,
}

impl Candidates {
    fn new(run: Arc<Run>, budget: usize) -> Self {
        Self {
            keep: run.page.limit.clamp(1, MAX_PAGE) + 1,
            run,
            budget,
            list: Vec::new(),
            bytes: 0,
            count: 0,
        }
    }

    /// A document: counted if it matches, kept if it also comes after the
    /// cursor. Answers the work it took.
    fn offer(&mut self, id: &DocId, data: &str) -> u64 {
        let (doc, mut work) = self.run.check(data);
        let Some(doc) = doc else {
            return work;
        };
        self.count += 1;
        let (sort, sorting) = self.run.query.sort_keys(&doc);
        work += sorting;
        if let Some((keys, after)) = &self.run.after {
            if self.run.query.order((&sort, id.as_str()), (keys, after)) != Ordering::Greater {
                return work;
            }
        }
        let bytes = sort
            .iter()
            .map(|k| {
                k.value.as_ref().map_or(0, |v| crate::domain::measure(v).bytes) + k.text.as_ref().map_or(0, |t| t.len())
            })
            .sum::<usize>()
            + id.as_str().len();
        self.push(Candidate {
            sort,
            id: id.clone(),
            bytes,
        });
        work
    }

    fn push(&mut self, candidate: Candidate) {
        self.bytes += candidate.bytes;
        self.list.push(candidate);
        if self.list.len() > 2 * self.keep || self.bytes > self.budget {
            keep_first(&self.run.query, &mut self.list, self.keep);
            self.bytes = self.list.iter().map(|c| c.bytes).sum();
        }
    }

    /// The first `keep`, in the query's order.
    fn into_first(mut self) -> Vec<Candidate> {
        keep_first(&self.run.query, &mut self.list, self.keep);
        self.list
    }
}

/// Sorts `candidates` in the query's order and keeps the first `n`.
fn keep_first(query: &Query, candidates: &mut Vec<Candidate>, n: usize) {
    candidates.sort_by(|a, b| query.order((&a.sort, a.id.as_str()), (&b.sort, b.id.as_str())));
    candidates.truncate(n);
}
