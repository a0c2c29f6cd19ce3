//! One shard of the database, as the store opens it.

use std::sync::Arc;
use std::time::Duration;

use super::database::PgDatabase;
use super::error::engine_error;
use super::reads::PgReads;
use super::writes::PgWrites;
use crate::store::engine::contract::{Opened, ShardStorage};
use crate::store::engine::EngineError;

/// One shard of the database, as the core opens it.
#[derive(Clone)]
pub struct PgShard {
    pub index: usize,
    pub database: Arc<PgDatabase>,
}

impl ShardStorage for PgShard {
    type Writes = PgWrites;
    type Reads = PgReads;

    fn index(&self) -> usize {
        self.index
    }

    /// The shard's write connection and what it recorded. A database checks
    /// its own integrity: `boot_check` asks nothing more of it.
    async fn open_at_boot(&self, _boot_check: bool) -> Result<(PgWrites, Opened), EngineError> {
        self.reopen().await
    }

    /// The shard's write connection and what it recorded.
    async fn reopen(&self) -> Result<(PgWrites, Opened), EngineError> {
        let conn = self
            .database
            .pool
            .acquire()
            .await
            .map_err(|e| EngineError::storage(self.index, engine_error(e)))?;
        let mut writes = PgWrites::new(self.index, conn.detach());
        let opened = writes
            .read_shard()
            .await
            .map_err(|e| EngineError::storage(self.index, e))?;
        Ok((writes, opened))
    }

    /// The shard's reads, on the database's one pool.
    async fn open_reads(&self, connections: u32, wait: Duration) -> Result<PgReads, EngineError> {
        Ok(PgReads::new(self.index, self.database.pool.clone(), connections, wait))
    }
}
