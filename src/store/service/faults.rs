//! Test-only: a fault injected into a shard, through the store.

use crate::store::error::StoreError;
use crate::store::faults::Fault;
use crate::store::handle::Store;

impl Store {
    /// Makes shard `shard` meet `fault`, as a real failure of that kind
    /// would.
    pub async fn inject_fault(&self, shard: usize, fault: Fault) -> Result<(), StoreError> {
        let shard = self.shards().get(shard).ok_or(StoreError::Internal("no such shard"))?;
        shard.inject(fault).await
    }
}
