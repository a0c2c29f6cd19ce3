//! The change feed, read across shards.
//!
//! Each shard's writer numbers the changes it commits (`seq`, rising by one)
//! and records them in the same transaction as the changes themselves (see
//! `writer.rs`), so the feed holds exactly what was acknowledged, in commit
//! order, and survives a crash with it. A reader's place is a [`FeedCursor`]:
//! the data folder and layout it was read from and, for each shard, the last
//! entry it has seen. Pages merge the shards' runs by commit time, so one
//! document's changes come in the order they were committed.
//!
//! Readers see an entry only once its writer has published it to the cache
//! (the shard's `feed_head`): a document read for an entry is never older
//! than the entry.

use std::fmt;
use std::str::FromStr;

use super::engine::{FeedEntry, FeedFilter};
use crate::domain::{CollectionName, ShardCount};

/// Where a reader of the change feed stands: in which data folder and
/// shard layout, after which entry of each shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedCursor {
    pub(in crate::store) folder: u64,
    pub(in crate::store) generation: u32,
    pub(in crate::store) positions: Vec<u64>,
}

/// A cursor that cannot be read: the client's mistake (a 400).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct CursorError(String);

impl fmt::Display for FeedCursor {
    /// `FOLDER-GENERATION-SEQ.SEQ...`: the folder's identity in hex, the
    /// layout generation, then one position per shard.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}-", self.folder, self.generation)?;
        for (i, position) in self.positions.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{position}")?;
        }
        Ok(())
    }
}

impl FromStr for FeedCursor {
    type Err = CursorError;

    fn from_str(text: &str) -> Result<Self, CursorError> {
        let bad = |why: &str| {
            CursorError(format!(
                "the cursor {:?} is not one this server gave: {why}",
                shorten(text)
            ))
        };
        let mut parts = text.splitn(3, '-');
        let (Some(folder), Some(generation), Some(positions)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("it has not the form FOLDER-GENERATION-POSITIONS"));
        };
        if folder.len() != 16 {
            return Err(bad("its folder is not 16 hex digits"));
        }
        let folder = u64::from_str_radix(folder, 16).map_err(|_| bad("its folder is not 16 hex digits"))?;
        let generation = generation.parse().map_err(|_| bad("its generation is not a number"))?;
        let positions = positions
            .split('.')
            .map(|p| {
                // Digits only: `parse` would take a sign too.
                if p.is_empty() || p.len() > 20 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad("a position is not a number"));
                }
                p.parse::<u64>().map_err(|_| bad("a position is not a number"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if positions.len() > ShardCount::MAX as usize {
            return Err(bad("it has more positions than a folder has shards"));
        }
        Ok(FeedCursor {
            folder,
            generation,
            positions,
        })
    }
}

/// The start of a cursor's text, for a message about it.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

impl FeedCursor {
    /// The cursor after `item`, from this one (the page's start): what a
    /// client resuming right after that entry passes back.
    pub fn after(&mut self, item: &FeedItem) {
        if let Some(position) = self.positions.get_mut(item.shard) {
            *position = item.entry.seq;
        }
    }
}

/// Where a read of the feed starts.
#[derive(Debug, Clone)]
pub enum FeedStart {
    /// Every change the feed still holds: refused (gone) once the feed has
    /// been compacted, since changes would be missing.
    Beginning,
    /// Only changes from now on.
    Now,
    /// After a cursor an earlier page gave.
    After(FeedCursor),
}

/// A read of the feed.
#[derive(Debug, Clone)]
pub struct FeedRequest {
    /// Only these collections' changes (`None`: every collection's).
    pub collections: Option<Vec<CollectionName>>,
    /// Only changes of ids that start with this.
    pub prefix: Option<String>,
    pub start: FeedStart,
    /// Most entries in the page.
    pub limit: usize,
}

/// One entry of a page, with its shard.
#[derive(Debug, Clone)]
pub struct FeedItem {
    pub shard: usize,
    pub entry: FeedEntry,
}

/// A page of the feed.
#[derive(Debug, Clone)]
pub struct FeedPage {
    /// Where the page starts: with [`FeedCursor::after`], each entry's own
    /// cursor.
    pub start: FeedCursor,
    pub items: Vec<FeedItem>,
    /// Where the next page starts.
    pub cursor: FeedCursor,
    /// Some shard holds entries past this page already.
    pub more: bool,
}

impl FeedPage {
    /// Keeps the first `n` items (to bound an answer's bytes); the cursor
    /// then stands right after the last one kept of each shard that lost
    /// some.
    pub fn truncate(&mut self, n: usize) {
        if n >= self.items.len() {
            return;
        }
        let dropped: Vec<usize> = self.items[n..].iter().map(|item| item.shard).collect();
        self.items.truncate(n);
        let mut kept = self.start.clone();
        for item in &self.items {
            kept.after(item);
        }
        for shard in dropped {
            self.cursor.positions[shard] = kept.positions[shard];
        }
        self.more = true;
    }
}

/// The last entries a shard's writer published, kept in memory: readers
/// near the head (every live follower, usually) are served from here
/// without reading the file, however many they are. Bounded by count; the
/// entries share their keys' text with the cache.
pub struct RecentFeed {
    entries: parking_lot::Mutex<std::collections::VecDeque<FeedEntry>>,
    capacity: usize,
}

impl RecentFeed {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: parking_lot::Mutex::new(std::collections::VecDeque::with_capacity(capacity)),
            capacity,
        }
    }

    /// Appends what a commit published. Entries are kept without gaps: a
    /// run that does not follow the last one (a writer restarted after a
    /// commit it could not publish) starts the memory over.
    pub fn push(&self, published: &[FeedEntry]) {
        let Some(first) = published.first() else { return };
        let mut entries = self.entries.lock();
        if entries.back().is_some_and(|last| last.seq + 1 != first.seq) {
            entries.clear();
        }
        let room = self.capacity.saturating_sub(published.len());
        while entries.len() > room {
            entries.pop_front();
        }
        let skip = published.len().saturating_sub(self.capacity);
        entries.extend(published[skip..].iter().cloned());
    }

    /// Up to `limit` entries after `after` and up to `upto` that `filter`
    /// lets through, or `None` when the memory does not reach back to
    /// `after` (the file must be read).
    pub(in crate::store) fn read(
        &self,
        after: u64,
        upto: u64,
        filter: FeedFilter<'_>,
        limit: usize,
    ) -> Option<Vec<FeedEntry>> {
        let entries = self.entries.lock();
        let first = entries.front()?.seq;
        // It must hold the whole run: a restarted writer's head may be past
        // what reached the memory.
        if first > after + 1 || entries.back()?.seq < upto {
            return None;
        }
        let start = usize::try_from(after + 1 - first).ok()?;
        Some(
            entries
                .range(start.min(entries.len())..)
                .take_while(|entry| entry.seq <= upto)
                .filter(|entry| filter.admits(entry))
                .take(limit)
                .cloned()
                .collect(),
        )
    }
}

impl FeedFilter<'_> {
    fn admits(&self, entry: &FeedEntry) -> bool {
        self.collections
            .is_none_or(|collections| collections.contains(&entry.key.collection))
            && self
                .prefix
                .is_none_or(|prefix| entry.key.id.as_str().starts_with(prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_read_back_as_written() {
        let cursor = FeedCursor {
            folder: 0x00ab_cdef_0123_4567,
            generation: 2,
            positions: vec![0, 17, u64::MAX],
        };
        let text = cursor.to_string();
        assert_eq!(text, "00abcdef01234567-2-0.17.18446744073709551615");
        assert_eq!(text.parse::<FeedCursor>().ok(), Some(cursor));
    }

    fn entries(collection: &str, seqs: std::ops::RangeInclusive<u64>) -> Vec<FeedEntry> {
        seqs.map(|seq| FeedEntry {
            seq,
            key: crate::domain::DocKey::new(
                CollectionName::parse(collection).expect("name"),
                crate::domain::DocId::parse(&format!("d{seq}")).expect("id"),
            ),
            version: 1,
            kind: crate::store::ChangeKind::Written,
            at_ms: seq as i64,
        })
        .collect()
    }

    fn seqs(read: Option<Vec<FeedEntry>>) -> Option<Vec<u64>> {
        read.map(|entries| entries.iter().map(|e| e.seq).collect())
    }

    #[test]
    fn recent_entries_serve_only_what_they_reach_back_to() {
        let recent = RecentFeed::new(4);
        let all = FeedFilter::default();
        assert_eq!(seqs(recent.read(0, 0, all, 10)), None, "empty: read the file");
        recent.push(&entries("a", 1..=3));
        assert_eq!(seqs(recent.read(0, 3, all, 10)), Some(vec![1, 2, 3]));
        assert_eq!(
            seqs(recent.read(1, 2, all, 10)),
            Some(vec![2]),
            "up to what is published"
        );
        assert_eq!(
            seqs(recent.read(1, 5, all, 10)),
            None,
            "a head past the memory: read the file"
        );
        recent.push(&entries("b", 4..=6));
        // Only the last four are kept: 1 and 2 are gone from memory.
        assert_eq!(seqs(recent.read(0, 6, all, 10)), None);
        assert_eq!(seqs(recent.read(2, 6, all, 2)), Some(vec![3, 4]));
        let only_b = [CollectionName::parse("b").expect("name")];
        let filter = FeedFilter {
            collections: Some(&only_b),
            prefix: None,
        };
        assert_eq!(seqs(recent.read(2, 6, filter, 10)), Some(vec![4, 5, 6]));
        // A run that does not follow the last starts over.
        recent.push(&entries("a", 9..=9));
        assert_eq!(seqs(recent.read(6, 9, all, 10)), None);
        assert_eq!(seqs(recent.read(8, 9, all, 10)), Some(vec![9]));
    }

    #[test]
    fn malformed_cursors_are_refused_with_a_reason() {
        for text in [
            "",
            "abc",
            "00abcdef01234567-2-",
            "00abcdef01234567-2-1..2",
            "00abcdef01234567-2-+1",
            "00abcdef01234567-x-1",
            "00abcdef0123456-2-1",
            "00abcdef01234567-2-99999999999999999999",
            "00abcdef01234567-2-100000000000000000000",
        ] {
            let err = text.parse::<FeedCursor>().err();
            assert!(
                err.is_some_and(|e| e.to_string().contains("not one this server gave")),
                "{text:?}"
            );
        }
    }
}
