//! `exdaas migrate`: every document copied between a data folder and a
//! PostgreSQL-protocol database, either way, then verified.
//!
//! - Rows move as they are stored: version, update time, expiry and the
//!   JSON text unchanged, so ETags and `If-Match` keep working across the
//!   move. Each keeps its placement bucket; the target gets the source's
//!   shard count, so each row lands in the same shard.
//! - The id counter's bounds move too, so fresh ids never repeat one the
//!   source handed out.
//! - The change feed does not move: the target is a store of its own, whose
//!   feed starts after the copy (a cursor from the source gets 410, as after
//!   a restore, and a consumer reads the collections again).
//! - Verification reads the target back, whole, and compares each
//!   collection's document count and checksum with the source's; the target
//!   is only made usable (the folder's layout file written, the database's
//!   `migrating` mark removed) once they match.
//!
//! The source is held still meanwhile: a data folder through its lock (the
//! server must be stopped), a database through one snapshot (REPEATABLE
//! READ), so replicas may keep serving from it, though writes after the
//! snapshot are not copied.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{postgres, sqlite, IdBounds};
use crate::domain::ShardCount;
use crate::store::engine::EngineError;
use crate::store::placement::Placement;

/// Rows read or written per statement.
pub const BATCH_ROWS: usize = 256;

/// One stored document, as both engines hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentRow {
    pub collection: String,
    pub id: String,
    pub bucket: u32,
    pub version: i64,
    pub updated_at: i64,
    pub expires_at: Option<i64>,
    pub data: String,
}

/// Per collection: how many documents, and a checksum of them all that does
/// not depend on the order they were read in (the engines read in different
/// orders): the sum, modulo 2^256, of each row's SHA-256.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub collections: BTreeMap<String, CollectionTally>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectionTally {
    pub documents: u64,
    /// Little-endian 64-bit limbs of the sum.
    sum: [u64; 4],
}

impl CollectionTally {
    /// The checksum, as 64 hex digits.
    pub fn checksum(&self) -> String {
        self.sum.iter().rev().map(|limb| format!("{limb:016x}")).collect()
    }
}

impl Tally {
    pub fn add(&mut self, row: &DocumentRow) {
        let mut hasher = Sha256::new();
        for field in [row.id.as_bytes(), row.data.as_bytes()] {
            hasher.update((field.len() as u64).to_le_bytes());
            hasher.update(field);
        }
        hasher.update(row.bucket.to_le_bytes());
        hasher.update(row.version.to_le_bytes());
        hasher.update(row.updated_at.to_le_bytes());
        hasher.update(row.expires_at.map_or([0xff; 8], i64::to_le_bytes));
        let digest = hasher.finalize();
        let entry = match self.collections.get_mut(&row.collection) {
            Some(entry) => entry,
            None => self.collections.entry(row.collection.clone()).or_default(),
        };
        entry.documents += 1;
        add_digest(&mut entry.sum, &digest);
    }

    pub fn documents(&self) -> u64 {
        self.collections.values().map(|c| c.documents).sum()
    }

    /// Where `copy` differs from `self`, one line per collection.
    pub fn differences(&self, copy: &Tally) -> Vec<String> {
        let mut names: Vec<&String> = self.collections.keys().chain(copy.collections.keys()).collect();
        names.sort();
        names.dedup();
        let empty = CollectionTally::default();
        names
            .into_iter()
            .filter_map(|name| {
                let (a, b) = (
                    self.collections.get(name).unwrap_or(&empty),
                    copy.collections.get(name).unwrap_or(&empty),
                );
                (a != b).then(|| {
                    format!(
                        "{name}: {} documents (checksum {}) in the source, {} (checksum {}) in the copy",
                        a.documents,
                        a.checksum(),
                        b.documents,
                        b.checksum()
                    )
                })
            })
            .collect()
    }
}

/// Adds a 32-byte digest, read as a little-endian number, to `sum`.
fn add_digest(sum: &mut [u64; 4], digest: &[u8]) {
    let mut carry = false;
    for (limb, bytes) in sum.iter_mut().zip(digest.chunks_exact(8)) {
        let mut word = [0u8; 8];
        word.copy_from_slice(bytes);
        let (partial, first) = limb.overflowing_add(u64::from_le_bytes(word));
        let (total, second) = partial.overflowing_add(u64::from(carry));
        *limb = total;
        carry = first || second;
    }
}

/// How far a copy is, reported after each batch.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub stage: Stage,
    pub done: u64,
    pub total: u64,
    /// Since the stage began.
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Copying,
    Verifying,
}

/// What a migration did.
#[derive(Debug, Clone)]
pub struct Migrated {
    pub shards: u32,
    /// The source's counts and checksums, which the copy matched.
    pub tally: Tally,
    pub elapsed: Duration,
}

/// Counts rows through a stage and reports progress.
struct Meter<'a> {
    report: &'a mut dyn FnMut(Progress),
    stage: Stage,
    done: u64,
    total: u64,
    started: Instant,
}

impl<'a> Meter<'a> {
    fn new(report: &'a mut dyn FnMut(Progress), total: u64) -> Self {
        Self {
            report,
            stage: Stage::Copying,
            done: 0,
            total,
            started: Instant::now(),
        }
    }

    fn advance(&mut self, rows: usize) {
        self.done += rows as u64;
        (self.report)(Progress {
            stage: self.stage,
            done: self.done,
            total: self.total,
            elapsed: self.started.elapsed(),
        });
    }

    fn stage(&mut self, stage: Stage) {
        self.stage = stage;
        self.done = 0;
        self.started = Instant::now();
    }
}

/// A shard's catalog as a migration carries it: its collections' schemas
/// as stored (removals included, so versions go on), and its index
/// declarations, which arrive unbuilt (the server builds them at its
/// first start on the copy).
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    /// (collection, version, schema or `None` once removed, updated at).
    pub schemas: Vec<(String, i64, Option<String>, i64)>,
    /// (collection, name, fields as JSON, created at).
    pub indexes: Vec<(String, String, String, i64)>,
}

/// Pages of documents, read in turn to the end.
pub trait RowPages {
    /// The next page, or `None` after the last.
    fn next_batch(&mut self)
        -> impl std::future::Future<Output = Result<Option<Vec<DocumentRow>>, EngineError>> + Send;
}

/// Reads every page of `rows`, hands it to `each`, then counts it into
/// `tally` and the progress.
async fn pump(
    rows: &mut impl RowPages,
    tally: &mut Tally,
    meter: &mut Meter<'_>,
    mut each: impl AsyncFnMut(&[DocumentRow]) -> Result<(), EngineError>,
) -> Result<(), EngineError> {
    while let Some(batch) = rows.next_batch().await? {
        each(&batch).await?;
        batch.iter().for_each(|row| tally.add(row));
        meter.advance(batch.len());
    }
    Ok(())
}

/// Copies the data folder `root` (with no server running on it) into the
/// database at `url`, which must hold no documents, then verifies the copy.
pub async fn folder_to_database(
    root: &Path,
    url: &str,
    report: &mut dyn FnMut(Progress),
) -> Result<Migrated, EngineError> {
    let started = Instant::now();
    let source = sqlite::transfer::FolderSource::open(root).await?;
    let shards = source.shards();
    let placement = Placement::new(shards);
    let mut target = postgres::transfer::DatabaseTarget::open(url, shards).await?;
    let mut meter = Meter::new(report, source.count().await?);
    let mut tally = Tally::default();
    let mut bounds = Vec::with_capacity(shards.get() as usize);
    for shard in 0..shards.get() as usize {
        bounds.push(source.bounds(shard).await?);
        let mut rows = source.reader(shard).await?;
        pump(&mut rows, &mut tally, &mut meter, async |batch| {
            if let Some(stray) = batch.iter().find(|row| placement.shard_of_bucket(row.bucket) != shard) {
                return Err(EngineError::DataFolder {
                    path: root.to_path_buf(),
                    reason: format!(
                        "{}/{} is in shard {shard}, but its bucket {} belongs to shard {}; run `exdaas check`",
                        stray.collection,
                        stray.id,
                        stray.bucket,
                        placement.shard_of_bucket(stray.bucket)
                    ),
                });
            }
            target.insert(batch, &placement).await
        })
        .await?;
        rows.close().await?;
        target.insert_catalog(shard, &source.catalog(shard).await?).await?;
    }
    meter.stage(Stage::Verifying);
    let mut copy = Tally::default();
    let mut check = postgres::transfer::DatabaseSource::connect(url, true).await?;
    pump(&mut check, &mut copy, &mut meter, async |_| Ok(())).await?;
    check.close().await?;
    verified(
        &tally,
        &copy,
        "the database keeps its `migrating` mark, so no replica starts on it; run the migration again",
    )?;
    target.finish(&bounds).await?;
    Ok(Migrated {
        shards: shards.get(),
        tally,
        elapsed: started.elapsed(),
    })
}

/// Copies the database at `url` (one snapshot of it) into the data folder
/// `root`, which must be empty or not exist, then verifies the copy.
pub async fn database_to_folder(
    url: &str,
    root: &Path,
    report: &mut dyn FnMut(Progress),
) -> Result<Migrated, EngineError> {
    let started = Instant::now();
    let mut source = postgres::transfer::DatabaseSource::connect(url, false).await?;
    let shards = source.shards();
    let bounds = source.bounds().await?;
    let placement = Placement::new(shards);
    let mut target = sqlite::transfer::FolderTarget::create(root, shards).await?;
    let mut meter = Meter::new(report, source.count().await?);
    let mut tally = Tally::default();
    pump(&mut source, &mut tally, &mut meter, async |batch| {
        target.insert(batch, &placement).await
    })
    .await?;
    for shard in 0..shards.get() as usize {
        target.insert_catalog(shard, &source.catalog(shard).await?).await?;
    }
    source.close().await?;
    let check = target.finish(&bounds).await?;
    meter.stage(Stage::Verifying);
    let mut copy = Tally::default();
    for shard in 0..shards.get() as usize {
        let mut rows = check.reader(shard).await?;
        pump(&mut rows, &mut copy, &mut meter, async |_| Ok(())).await?;
        rows.close().await?;
    }
    verified(
        &tally,
        &copy,
        "the folder has no layout file, so no server starts on it; empty it and run the migration again",
    )?;
    target.commit(check).await?;
    Ok(Migrated {
        shards: shards.get(),
        tally,
        elapsed: started.elapsed(),
    })
}

fn verified(source: &Tally, copy: &Tally, left: &str) -> Result<(), EngineError> {
    let differences = source.differences(copy);
    if differences.is_empty() {
        return Ok(());
    }
    Err(EngineError::Database {
        reason: format!(
            "the copy differs from the source in {} collections ({}); {left}",
            differences.len(),
            differences.into_iter().take(5).collect::<Vec<_>>().join("; ")
        ),
    })
}

/// The id bounds of every shard: the highest of each.
pub fn highest(bounds: &[IdBounds]) -> IdBounds {
    bounds.iter().fold(IdBounds::default(), |high, b| IdBounds {
        stored: high.stored.max(b.stored),
        counter: high.counter.max(b.counter),
    })
}

/// A shard count read from a source, checked.
pub fn shard_count(shards: i64, source: &str) -> Result<ShardCount, EngineError> {
    u32::try_from(shards)
        .ok()
        .and_then(ShardCount::new)
        .ok_or_else(|| EngineError::Database {
            reason: format!("{source} records {shards} shards; expected 1 to {}", ShardCount::MAX),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(collection: &str, id: &str, data: &str) -> DocumentRow {
        DocumentRow {
            collection: collection.into(),
            id: id.into(),
            bucket: 7,
            version: 1,
            updated_at: 1_700_000_000_000,
            expires_at: None,
            data: data.into(),
        }
    }

    #[test]
    fn the_checksum_ignores_order_and_sees_every_field() {
        let rows = [row("a", "1", "{}"), row("a", "2", "{\"x\":1}"), row("b", "1", "[]")];
        let (mut forward, mut backward) = (Tally::default(), Tally::default());
        rows.iter().for_each(|r| forward.add(r));
        rows.iter().rev().for_each(|r| backward.add(r));
        assert_eq!(forward, backward);
        assert!(forward.differences(&backward).is_empty());
        assert_eq!(forward.documents(), 3);

        let mut changed = Tally::default();
        for r in &rows {
            let mut r = r.clone();
            if r.id == "2" {
                r.version = 2;
            }
            changed.add(&r);
        }
        let differences = forward.differences(&changed);
        assert_eq!(differences.len(), 1, "{differences:?}");
        assert!(differences[0].starts_with("a: 2 documents"), "{differences:?}");

        let mut missing = Tally::default();
        rows[..2].iter().for_each(|r| missing.add(r));
        assert_eq!(forward.differences(&missing).len(), 1, "collection b is missing");
    }

    #[test]
    fn the_checksum_carries_across_limbs() {
        let mut sum = [u64::MAX, u64::MAX, 0, 0];
        let mut one = [0u8; 32];
        one[0] = 1;
        add_digest(&mut sum, &one);
        assert_eq!(sum, [0, 0, 1, 0]);
        let tally = CollectionTally { documents: 0, sum };
        assert_eq!(tally.checksum(), format!("{}1{}", "0".repeat(31), "0".repeat(32)));
    }
}
