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
use sqlx::Row;

use super::shard::Shard;
use super::writer::{document_from_row, now_millis};
use super::{Document, Store, StoreError};
use crate::domain::{CollectionName, DocId};

/// Most documents a page may hold.
pub const MAX_PAGE: usize = 1000;
/// Rows an export fetches from a shard at a time.
const EXPORT_RUN: usize = 500;
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
    /// Leave the documents' data out (`Listed::doc.data` is empty).
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
    /// More documents follow the last one.
    pub more: bool,
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

/// One shard's position in a merge: rows fetched and not yet taken.
struct ShardCursor<'a> {
    shard: &'a Shard,
    range: IdRange,
    buffered: VecDeque<Listed>,
    exhausted: bool,
}

impl ShardCursor<'_> {
    /// Fetches the next run of up to `run` rows if the buffer is empty.
    async fn fill(&mut self, collection: &CollectionName, run: usize, keys_only: bool) -> Result<(), StoreError> {
        if !self.buffered.is_empty() || self.exhausted {
            return Ok(());
        }
        let rows = fetch_run(self.shard, collection, &self.range, run, keys_only).await?;
        self.exhausted = rows.len() < run;
        if let Some(last) = rows.last() {
            self.range = self.range.after(last.id.as_str());
        }
        self.buffered.extend(rows);
        Ok(())
    }
}

/// A merge of every shard's cursor, yielding documents in id order.
struct Merge<'a> {
    collection: CollectionName,
    cursors: Vec<ShardCursor<'a>>,
    run: usize,
    keys_only: bool,
}

impl<'a> Merge<'a> {
    fn new(store: &'a Store, collection: &CollectionName, range: IdRange, run: usize, keys_only: bool) -> Self {
        let cursors = store
            .shards()
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
            keys_only,
        }
    }

    /// The next document in id order, if any.
    async fn next(&mut self) -> Result<Option<Listed>, StoreError> {
        let (collection, run, keys_only) = (&self.collection, self.run, self.keys_only);
        try_join_all(self.cursors.iter_mut().map(|c| c.fill(collection, run, keys_only))).await?;
        let smallest = self
            .cursors
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.buffered.front().map(|item| (i, item.id.as_str())))
            .min_by(|a, b| a.1.cmp(b.1))
            .map(|(i, _)| i);
        Ok(smallest.and_then(|i| self.cursors[i].buffered.pop_front()))
    }
}

/// Up to `limit` live documents of `collection` in `range`, in id order.
async fn fetch_run(
    shard: &Shard,
    collection: &CollectionName,
    range: &IdRange,
    limit: usize,
    keys_only: bool,
) -> Result<Vec<Listed>, StoreError> {
    let columns = if keys_only {
        "id, version, updated_at, expires_at, '' AS data"
    } else {
        "id, version, updated_at, expires_at, data"
    };
    let lower = match &range.from {
        Some((_, true)) => "AND id >= ?2",
        Some((_, false)) => "AND id > ?2",
        None => "",
    };
    let upper = if range.to.is_some() { "AND id < ?3" } else { "" };
    let sql = format!(
        "SELECT {columns} FROM documents WHERE collection = ?1 {lower} {upper} \
         AND (expires_at IS NULL OR expires_at > ?4) ORDER BY id LIMIT ?5"
    );
    let rows = sqlx::query(&sql)
        .bind(collection.as_str())
        .bind(range.from.as_ref().map(|(id, _)| id.as_str()))
        .bind(range.to.as_deref())
        .bind(now_millis())
        .bind(limit as i64)
        .fetch_all(shard.reads())
        .await
        .map_err(|e| shard.db_error(e))?;
    rows.iter()
        .map(|row| {
            let id = row.try_get::<&str, _>("id").map_err(|e| shard.db_error(e))?;
            let id = DocId::parse(id).map_err(|_| StoreError::Internal("a stored id is not a valid id"))?;
            let doc = document_from_row(row).map_err(|e| shard.db_error(e))?;
            Ok(Listed { id, doc })
        })
        .collect()
}

impl Store {
    /// A page of `collection` in id order, merged across shards. Each shard
    /// reads at most `limit + 1` rows, whatever the collection's size.
    pub async fn list(&self, collection: &CollectionName, request: &ListRequest) -> Result<Page, StoreError> {
        let limit = request.limit.clamp(1, MAX_PAGE);
        let range = IdRange::new(request.prefix.as_deref(), request.start_after.as_deref());
        let mut merge = Merge::new(self, collection, range, limit + 1, request.keys_only);
        let mut items = Vec::with_capacity(limit);
        while items.len() < limit {
            match merge.next().await? {
                Some(item) => items.push(item),
                None => return Ok(Page { items, more: false }),
            }
        }
        let more = merge.next().await?.is_some();
        Ok(Page { items, more })
    }

    /// Every live document of `collection` in id order, as a stream that
    /// holds at most a few hundred documents per shard in memory. Not a
    /// snapshot: a document changed during the export may appear in either
    /// state (use a backup for a consistent copy).
    pub fn export(
        &self,
        collection: &CollectionName,
    ) -> impl Stream<Item = Result<Listed, StoreError>> + Send + 'static {
        let store = self.clone();
        let collection = collection.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Listed, StoreError>>(64);
        tokio::spawn(async move {
            let mut merge = Merge::new(&store, &collection, IdRange::new(None, None), EXPORT_RUN, false);
            loop {
                let next = merge.next().await.transpose();
                let Some(item) = next else { break };
                let failed = item.is_err();
                // The receiver went away (the client hung up): stop reading.
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        });
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
    }

    /// Live documents in each shard, by shard index; `None` for a shard
    /// that cannot be read right now.
    pub async fn documents_per_shard(&self) -> Vec<Option<u64>> {
        let now = now_millis();
        join_all(self.shards().iter().map(|shard| async move {
            let mut tx = shard.reads().begin().await.ok()?;
            let all: i64 = sqlx::query_scalar("SELECT count(*) FROM documents INDEXED BY documents_by_bucket")
                .fetch_one(&mut *tx)
                .await
                .ok()?;
            let expired: i64 = sqlx::query_scalar("SELECT count(*) FROM documents WHERE expires_at <= ?1")
                .bind(now)
                .fetch_one(&mut *tx)
                .await
                .ok()?;
            let _ = tx.rollback().await;
            u64::try_from(all - expired).ok()
        }))
        .await
    }

    /// Every collection with its number of live documents, by name.
    pub async fn collections(&self) -> Result<Vec<CollectionInfo>, StoreError> {
        let now = now_millis();
        let counts = try_join_all(self.shards().iter().map(|shard| async move {
            // Both counts in one read transaction, so a sweep committing in
            // between cannot skew them. The bucket index holds (bucket,
            // collection, id): counting over it reads no document data.
            // Expired rows not yet swept are found through the expiry index
            // and taken off.
            let db_error = |e| shard.db_error(e);
            let mut tx = shard.reads().begin().await.map_err(db_error)?;
            let all = sqlx::query(
                "SELECT collection, count(*) AS n FROM documents INDEXED BY documents_by_bucket GROUP BY collection",
            )
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            let expired = sqlx::query(
                "SELECT collection, count(*) AS n FROM documents WHERE expires_at <= ?1 GROUP BY collection",
            )
            .bind(now)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            tx.rollback().await.map_err(db_error)?;
            Ok::<_, StoreError>((all, expired))
        }))
        .await?;
        let mut totals: BTreeMap<String, i64> = BTreeMap::new();
        for (all, expired) in counts {
            for (rows, sign) in [(all, 1), (expired, -1)] {
                for row in rows {
                    let name: String = row.try_get("collection").unwrap_or_default();
                    let n: i64 = row.try_get("n").unwrap_or(0);
                    *totals.entry(name).or_default() += sign * n;
                }
            }
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
