//! Placement: which shard holds a document.
//!
//! A key hashes to one of [`BUCKETS`] virtual buckets with a hash that is
//! fixed by this file (FNV-1a 64 over `collection 0x00 id`, finished with the
//! SplitMix64 mixer), so it is the same on every build, platform and Rust
//! version. Buckets map to shards by `bucket % shard_count`. Each row keeps its
//! bucket, so resharding moves whole buckets instead of rehashing documents.

use crate::domain::{DocKey, ShardCount};

/// Number of virtual buckets. Fixed forever for a data folder's scheme; a
/// shard holds whole buckets, so it is also the most shards a folder has.
pub const BUCKETS: u32 = ShardCount::MAX;

/// Name of this scheme, recorded in every data folder it writes.
pub const SCHEME: &str = "fnv1a64-splitmix64/4096-buckets/mod-shards";

/// The placement of keys on a fixed number of shards.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    shards: ShardCount,
}

impl Placement {
    pub fn new(shards: ShardCount) -> Self {
        Self { shards }
    }

    pub fn bucket_of(key: &DocKey) -> u32 {
        (hash(key.collection.as_str().as_bytes(), key.id.as_str().as_bytes()) % u64::from(BUCKETS)) as u32
    }

    pub fn shard_of_bucket(&self, bucket: u32) -> usize {
        (bucket % self.shards.get()) as usize
    }

    pub fn shard_of(&self, key: &DocKey) -> usize {
        self.shard_of_bucket(Self::bucket_of(key))
    }
}

fn hash(collection: &[u8], id: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for &b in collection.iter().chain(&[0u8]).chain(id) {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    // SplitMix64 finalizer: spreads FNV's weak low bits over the whole word.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CollectionName, DocId};

    fn key(c: &str, id: &str) -> DocKey {
        DocKey::new(
            CollectionName::parse(c).expect("valid collection"),
            DocId::parse(id).expect("valid id"),
        )
    }

    #[test]
    fn the_hash_is_pinned() {
        // Reference values computed from the documented spec (Python, outside
        // this code). They are part of the on-disk format: changing them moves
        // documents to other shards. Never update them; add a new scheme.
        assert_eq!(hash(b"default", b"1"), 0x388f_e84d_3f9a_8d55);
        assert_eq!(Placement::bucket_of(&key("default", "1")), 3413);
        assert_eq!(Placement::bucket_of(&key("users", "alice")), 970);
    }

    #[test]
    fn collection_and_id_do_not_run_together() {
        assert_ne!(
            Placement::bucket_of(&key("ab", "c")),
            Placement::bucket_of(&key("a", "bc"))
        );
    }

    #[test]
    fn buckets_spread_evenly_over_shards() {
        let placement = Placement::new(ShardCount::new(4).expect("4 is valid"));
        let mut counts = [0u32; 4];
        for i in 0..40_000 {
            counts[placement.shard_of(&key("default", &i.to_string()))] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "uneven shards: {counts:?}");
        }
    }

    #[test]
    fn shard_counts_are_bounded() {
        assert!(ShardCount::new(0).is_none());
        assert!(ShardCount::new(1).is_some());
        assert!(ShardCount::new(4096).is_some());
        assert!(ShardCount::new(4097).is_none());
    }
}
