//! Reads across every shard of a collection: pages in id order, exports,
//! per-collection counts, and dropping a collection.
//!
//! A collection's documents are spread over all shards, each shard's in id
//! order in its primary key. A listing is a k-way merge of per-shard cursors
//! that each fetch a bounded run of rows after their last id, so a page costs
//! in proportion to its size and an export holds at most a run per shard in
//! memory, however large the collection.

use std::collections::{BTreeMap, VecDeque};

use futures_util::future::{join_all, try_join_all};
use futures_util::Stream;

use super::shard::Shard;
use super::{Document, Store, StoreError};
use crate::clock::now_millis;
use crate::domain::{CollectionName, DocId};

/// Most documents a page may hold.
pub const MAX_PAGE: usize = 1000;
/// Documents an export reads together, at most (fewer when they are large).
const EXPORT_RUN: usize = 500;
/// Fewest entries a shard's cursor fetches at a time.
const MIN_RUN: usize = 16;
/// Documents a collection drop deletes per transaction, so writes to the
/// shard are not held up for long.
const DROP_CHUNK: u32 = 5000;

/// Which documents of a collection to list.
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    /// Only ids starting with this.
    pub prefix: Option<String>,
    /// Only ids after this one (exclusive).
    pub start_after: Option<String>,
    /// At most this many (1 to [`MAX_PAGE`]).
    pub limit: usize,
    /// Leave the documents' data out (`Listed::doc.data` is empty): the
    /// page is bounded by `limit` alone.
    pub keys_only: bool,
}

/// One document of a listing.
#[derive(Debug, Clone)]
pub struct Listed {
    pub id: DocId,
    pub doc: Document,
}

/// A page of a listing.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<Listed>,
    /// Where the next page starts (after this id), when more documents
    /// follow. Not always the last item's id: a document deleted between
    /// the merge and the read of its data is left out of `items`.
    pub next_after: Option<DocId>,
}

/// A collection and how many documents it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionInfo {
    pub name: CollectionName,
    pub documents: u64,
}

/// The id range a listing covers.
#[derive(Debug, Clone)]
struct IdRange {
    /// Lower bound and whether it is included.
    from: Option<(String, bool)>,
    /// Exclusive upper bound.
    to: Option<String>,
}

impl IdRange {
    fn new(prefix: Option<&str>, start_after: Option<&str>) -> Self {
        let from = match (prefix, start_after) {
            (Some(p), Some(a)) if a >= p => Some((a.to_owned(), false)),
            (Some(p), _) => Some((p.to_owned(), true)),
            (None, Some(a)) => Some((a.to_owned(), false)),
            (None, None) => None,
        };
        // Ids are printable ASCII, so the prefix with its last byte raised
        // bounds every id that starts with it.
        let to = prefix.and_then(|p| {
            let mut bytes = p.as_bytes().to_vec();
            let last = bytes.pop()?;
            bytes.push(last + 1);
            String::from_utf8(bytes).ok()
        });
        Self { from, to }
    }

    /// The range left after `id`.
    fn after(&self, id: &str) -> Self {
        Self {
            from: Some((id.to_owned(), false)),
            to: self.to.clone(),
        }
    }
}

/// A document's place in a listing, before its data is read: enough to
/// merge shards in id order and to count a page's bytes.
#[derive(Debug, Clone)]
struct Entry {
    id: DocId,
    /// Version, times; `data` empty.
    doc: Document,
    /// The document's size as stored.
    bytes: usize,
    shard: usize,
}

/// One shard's position in a merge: entries fetched and not yet taken.
struct ShardCursor<'a> {
    shard: &'a Shard,
    range: IdRange,
    buffered: VecDeque<Entry>,
    exhausted: bool,
}

impl ShardCursor<'_> {
    /// Fetches the next run of up to `run` entries if the buffer is empty.
    async fn fill(&mut self, collection: &CollectionName, run: usize) -> Result<(), StoreError> {
        if !self.buffered.is_empty() || self.exhausted {
            return Ok(());
        }
        let entries = fetch_entries(self.shard, collection, &self.range, run).await?;
        self.exhausted = entries.len() < run;
        if let Some(last) = entries.last() {
            self.range = self.range.after(last.id.as_str());
        }
        self.buffered.extend(entries);
        Ok(())
    }
}

/// A merge of every shard's cursor, yielding entries in id order. It holds
/// ids, never documents: a few per shard, however large the documents.
struct Merge<'a> {
    collection: CollectionName,
    cursors: Vec<ShardCursor<'a>>,
    run: usize,
}

impl<'a> Merge<'a> {
    /// `wanted`: about how many entries the caller takes before it stops;
    /// each shard fetches its share (twice over), at least a few.
    fn new(store: &'a Store, collection: &CollectionName, range: IdRange, wanted: usize) -> Self {
        let shards = store.shards();
        let run = (2 * wanted / shards.len().max(1) + 1).clamp(MIN_RUN.min(wanted), wanted.max(1));
        let cursors = shards
            .iter()
            .map(|shard| ShardCursor {
                shard,
                range: range.clone(),
                buffered: VecDeque::new(),
                exhausted: false,
            })
            .collect();
        Self {
            collection: collection.clone(),
            cursors,
            run,
        }
    }

    /// The next entry in id order, if any.
    async fn next(&mut self) -> Result<Option<Entry>, StoreError> {
        let (collection, run) = (&self.collection, self.run);
        try_join_all(self.cursors.iter_mut().map(|c| c.fill(collection, run))).await?;
        let smallest = self
            .cursors
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.buffered.front().map(|entry| (i, entry.id.as_str())))
            .min_by(|a, b| a.1.cmp(b.1))
            .map(|(i, _)| i);
        Ok(smallest.and_then(|i| self.cursors[i].buffered.pop_front()))
    }
}

/// Up to `limit` live entries of `collection` in `range`, in id order.
/// The documents' sizes come from the engine: their text is not read.
async fn fetch_entries(
    shard: &Shard,
    collection: &CollectionName,
    range: &IdRange,
    limit: usize,
) -> Result<Vec<Entry>, StoreError> {
    let from = range.from.as_ref().map(|(id, inclusive)| (id.as_str(), *inclusive));
    let entries = shard
        .reads()
        .entries(collection, from, range.to.as_deref(), now_millis(), limit)
        .await?;
    Ok(entries
        .into_iter()
        .map(|(id, doc, bytes)| Entry {
            id,
            doc,
            bytes,
            shard: shard.index,
        })
        .collect())
}

/// The documents of `entries`, read now, in the entries' order. One that
/// was deleted (or expired) since it was listed is left out; one changed
/// since comes as it is now.
async fn hydrate(store: &Store, collection: &CollectionName, entries: &[Entry]) -> Result<Vec<Listed>, StoreError> {
    let now = now_millis();
    let per_shard = try_join_all(store.shards().iter().map(|shard| async move {
        let ids: Vec<&str> = entries
            .iter()
            .filter(|e| e.shard == shard.index)
            .map(|e| e.id.as_str())
            .collect();
        if ids.is_empty() {
            return Ok::<_, StoreError>(Vec::new());
        }
        Ok(shard.reads().documents(collection, &ids, now).await?)
    }))
    .await?;
    let mut found: std::collections::HashMap<String, Document> = per_shard.into_iter().flatten().collect();
    Ok(entries
        .iter()
        .filter_map(|entry| {
            let doc = found.remove(entry.id.as_str())?;
            Some(Listed {
                id: entry.id.clone(),
                doc,
            })
        })
        .collect())
}

impl Store {
    /// A page of `collection` in id order, merged across shards: at most
    /// `limit` documents, and no more of their bytes than the page budget
    /// (`EXDAAS_MAX_PAGE_BYTES`) beyond the first. The merge reads ids
    /// and sizes first, then the chosen documents, so memory follows the
    /// page, not the shard count or the documents' sizes.
    pub async fn list(&self, collection: &CollectionName, request: &ListRequest) -> Result<Page, StoreError> {
        let limit = request.limit.clamp(1, MAX_PAGE);
        let budget = self.inner.page_bytes;
        let range = IdRange::new(request.prefix.as_deref(), request.start_after.as_deref());
        let mut merge = Merge::new(self, collection, range, limit + 1);
        let mut picked: Vec<Entry> = Vec::with_capacity(limit.min(64));
        let mut bytes = 0usize;
        let more = loop {
            let Some(entry) = merge.next().await? else {
                break false;
            };
            let full =
                picked.len() == limit || (!request.keys_only && !picked.is_empty() && bytes + entry.bytes > budget);
            if full {
                break true;
            }
            bytes += entry.bytes;
            picked.push(entry);
        };
        let next_after = picked.last().filter(|_| more).map(|e| e.id.clone());
        let items = if request.keys_only {
            picked
                .into_iter()
                .map(|entry| Listed {
                    id: entry.id,
                    doc: entry.doc,
                })
                .collect()
        } else {
            hydrate(self, collection, &picked).await?
        };
        Ok(Page { items, next_after })
    }

    /// Every live document of `collection` in id order, as a stream that
    /// holds about one page budget of documents at a time, however large
    /// the collection. Not a snapshot: a document changed during the export
    /// may appear in either state (use a backup for a consistent copy).
    pub fn export(
        &self,
        collection: &CollectionName,
    ) -> impl Stream<Item = Result<Listed, StoreError>> + Send + 'static {
        let store = self.clone();
        let collection = collection.clone();
        // One chunk in flight while the next is read.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<Listed>, StoreError>>(1);
        tokio::spawn(async move {
            let budget = store.inner.page_bytes;
            let mut merge = Merge::new(&store, &collection, IdRange::new(None, None), EXPORT_RUN);
            let mut chunk: Vec<Entry> = Vec::new();
            let mut bytes = 0usize;
            loop {
                let next = match merge.next().await {
                    Ok(next) => next,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let done = next.is_none();
                if let Some(entry) = next {
                    bytes += entry.bytes;
                    chunk.push(entry);
                }
                if chunk.is_empty() || !(done || chunk.len() >= EXPORT_RUN || bytes >= budget) {
                    if done {
                        return;
                    }
                    continue;
                }
                let docs = hydrate(&store, &collection, &std::mem::take(&mut chunk)).await;
                bytes = 0;
                let failed = docs.is_err();
                // The receiver went away (the client hung up): stop reading.
                if tx.send(docs).await.is_err() || failed || done {
                    return;
                }
            }
        });
        futures_util::stream::unfold((rx, Vec::new().into_iter()), |(mut rx, mut pending)| async move {
            loop {
                if let Some(doc) = pending.next() {
                    return Some((Ok(doc), (rx, pending)));
                }
                match rx.recv().await? {
                    Ok(docs) => pending = docs.into_iter(),
                    Err(e) => return Some((Err(e), (rx, Vec::new().into_iter()))),
                }
            }
        })
    }

    /// Live documents in each shard, by shard index; `None` for a shard
    /// that cannot be read right now.
    pub async fn documents_per_shard(&self) -> Vec<Option<u64>> {
        let now = now_millis();
        join_all(self.shards().iter().map(|shard| shard.reads().count_live(now))).await
    }

    /// Every collection with its number of live documents, by name.
    pub async fn collections(&self) -> Result<Vec<CollectionInfo>, StoreError> {
        let now = now_millis();
        let mut totals: BTreeMap<String, i64> = BTreeMap::new();
        for shard in self.shards() {
            shard.reads().add_collection_counts(now, &mut totals).await?;
        }
        Ok(totals
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .filter_map(|(name, n)| {
                Some(CollectionInfo {
                    name: CollectionName::parse(&name).ok()?,
                    documents: n as u64,
                })
            })
            .collect())
    }

    /// Deletes every document of `collection`, shard by shard, in chunks so
    /// that other writes keep flowing; answers how many were deleted.
    /// Documents written to the collection while it is being dropped may
    /// survive.
    pub async fn drop_collection(&self, collection: &CollectionName) -> Result<u64, StoreError> {
        let per_shard = try_join_all(self.shards().iter().map(|shard| async move {
            let mut deleted = 0;
            loop {
                let n = shard.purge(collection, DROP_CHUNK).await?;
                deleted += n;
                if n < u64::from(DROP_CHUNK) {
                    return Ok::<_, StoreError>(deleted);
                }
            }
        }))
        .await?;
        Ok(per_shard.into_iter().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_bounds_the_range_on_both_sides() {
        let range = IdRange::new(Some("user:"), None);
        assert_eq!(range.from, Some(("user:".to_owned(), true)));
        assert_eq!(range.to.as_deref(), Some("user;"));
        let range = IdRange::new(Some("user:"), Some("user:5"));
        assert_eq!(range.from, Some(("user:5".to_owned(), false)));
        // A start before the prefix is overtaken by it.
        let range = IdRange::new(Some("m"), Some("a"));
        assert_eq!(range.from, Some(("m".to_owned(), true)));
        assert_eq!(IdRange::new(None, None).to, None);
    }
}
