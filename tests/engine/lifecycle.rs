//! Opening, transactions and closing: `ShardFile::open_at_boot` and
//! `reopen`, `ShardWrites::begin`/`release`/`close`, `ShardReads::close`.
//!
//! Contract (both engines):
//! - `open_at_boot(boot_check)` and `reopen()` are the two ways in, on
//!   every engine, and report the same `Opened` for the same shard (ids,
//!   the feed's last entry). An engine with nothing to check at boot takes
//!   `boot_check` and does nothing with it.
//! - `begin` answers `Some(what is committed now)` exactly where
//!   `shared()` (other processes write the shard too), `None` where this
//!   writer is the only one; where shared, it holds the shard until
//!   `release` or the next commit, and another writer's commit waits for
//!   it. `release` without `begin`, or twice, is harmless.
//! - After `ShardWrites::close`, a write fails with `Unavailable` (no
//!   panic); after `ShardReads::close`, `is_closed()` and a read fails with
//!   `Unavailable`, on that shard only: the other shards' reads go on.

use std::time::Instant;

use exdaas::store::engine::{ChangeKind, EngineError, ErrorKind, IdBounds};

use crate::engines::{commit, doc, entries_for, entry, key, PATIENCE};

conformance! {
    async fn open_at_boot_and_reopen_report_the_same_shard(engine) {
        let mut shard = engine.boot().await;
        assert_eq!(shard.opened.last_seq, 0, "{engine}: a new shard's feed is empty");
        assert_eq!(
            shard.opened.ids,
            IdBounds::default(),
            "{engine}: a new shard holds no ids"
        );
        let rows = vec![(key("c", "1"), Some(doc(1, 1_000, "{}")))];
        let ceilings = IdBounds { stored: 9, counter: 9 };
        commit(&mut shard.writes, &rows, &entries_for(1, &rows, 1_000), Some(ceilings))
            .await
            .unwrap_or_else(|e| panic!("{engine}: the commit: {e}"));
        let (reopened, by_reopen) = shard.another_writer().await;
        drop(reopened);
        let (booted, by_boot) = tokio::time::timeout(PATIENCE, shard.file.open_at_boot(false))
            .await
            .unwrap_or_else(|_| panic!("{engine}: open_at_boot hung"))
            .unwrap_or_else(|e| panic!("{engine}: open_at_boot on an open shard: {e}"));
        drop(booted);
        for (how, opened) in [("reopen", by_reopen), ("open_at_boot", by_boot)] {
            assert_eq!(opened.ids, ceilings, "{engine}: {how} reports the ids");
            assert_eq!(opened.last_seq, 1, "{engine}: {how} reports the feed's last entry");
        }
        shard.close(ceilings, ceilings).await;
    }
}

conformance! {
    /// The drift "begin/release on PostgreSQL only": the SQLite engine had
    /// neither, and the store called them through a special case.
    async fn begin_holds_the_shard_until_release_or_commit_where_it_is_shared(engine) {
        let mut shard = engine.boot().await;
        let (mut other, _) = shard.another_writer().await;
        let shared = shard.writes.shared();

        // Release without begin, and twice, is harmless.
        shard.writes.release().await;
        shard.writes.release().await;

        let begun = shard
            .writes
            .begin()
            .await
            .unwrap_or_else(|e| panic!("{engine}: begin: {e}"));
        assert_eq!(
            begun.is_some(),
            shared,
            "{engine}: begin reports the committed state where shared"
        );
        // While it is held, the other writer's commit waits for the release.
        let rows = vec![(key("c", "a"), Some(doc(1, 1_000, "{\"by\":\"other\"}")))];
        let feed = entries_for(1, &rows, 1_000);
        let theirs = async {
            let done = tokio::time::timeout(PATIENCE, commit(&mut other, &rows, &feed, None)).await;
            (done, Instant::now())
        };
        let mine = async {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            shard.writes.release().await;
            Instant::now()
        };
        let ((done, committed_at), released_at) = tokio::join!(theirs, mine);
        done.unwrap_or_else(|_| panic!("{engine}: the other writer's commit waited past the release"))
            .unwrap_or_else(|e| panic!("{engine}: the other writer's commit: {e}"));
        if shared {
            assert!(
                committed_at >= released_at,
                "{engine}: the other writer committed while begin held the shard"
            );
        }

        // Begin again: where shared, it sees the other writer's commit.
        let begun = shard
            .writes
            .begin()
            .await
            .unwrap_or_else(|e| panic!("{engine}: begin: {e}"));
        if let Some(now) = begun {
            assert_eq!(now.last_seq, 1, "{engine}: begin reports the other writer's entry");
        }
        // A commit ends what begin opened: the other writer is not held.
        let rows = vec![(key("c", "b"), Some(doc(1, 1_001, "{}")))];
        commit(&mut shard.writes, &rows, &entries_for(2, &rows, 1_001), None)
            .await
            .unwrap_or_else(|e| panic!("{engine}: a commit after begin: {e}"));
        let rows = vec![(key("c", "c"), Some(doc(1, 1_002, "{}")))];
        tokio::time::timeout(PATIENCE, commit(&mut other, &rows, &entries_for(3, &rows, 1_002), None))
            .await
            .unwrap_or_else(|_| panic!("{engine}: the commit after begin still held the shard"))
            .unwrap_or_else(|e| panic!("{engine}: the other writer's second commit: {e}"));
        let run = shard.feed(0, u64::MAX >> 1, 10).await;
        let seqs: Vec<u64> = run.entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3], "{engine}: both writers' entries, in order");
        other.close(IdBounds::default(), IdBounds::default()).await;
        shard.close(IdBounds::default(), IdBounds::default()).await;
    }
}

fn unavailable<T>(engine: &str, what: &str, result: Result<T, EngineError>) {
    match result {
        Err(EngineError::Storage { error, .. }) => {
            assert_eq!(error.kind, ErrorKind::Unavailable, "{engine}: {what}: {error}")
        }
        Err(other) => panic!("{engine}: {what}: not a storage error: {other}"),
        Ok(_) => panic!("{engine}: {what} succeeded after close"),
    }
}

conformance! {
    async fn after_close_writes_and_reads_fail_as_unavailable(engine) {
        let mut shard = engine.boot().await;
        shard.writes.close(IdBounds::default(), IdBounds::default()).await;
        let rows = vec![(key("c", "a"), Some(doc(1, 1_000, "{}")))];
        let written = commit(
            &mut shard.writes,
            &rows,
            &[entry(1, &rows[0].0, 1, ChangeKind::Written, 1_000)],
            None,
        )
        .await;
        match written {
            Err(error) => assert_eq!(
                error.kind,
                ErrorKind::Unavailable,
                "{engine}: a write after close: {error}"
            ),
            Ok(()) => panic!("{engine}: a write after close succeeded"),
        }
        // Closing twice is harmless.
        shard.writes.close(IdBounds::default(), IdBounds::default()).await;

        assert!(!shard.reads.is_closed(), "{engine}: reads are open");
        shard.reads.close().await;
        assert!(shard.reads.is_closed(), "{engine}: reads are closed");
        unavailable(engine.name, "a point read", shard.reads.reserve().await.map(|_| ()));
        unavailable(
            engine.name,
            "a feed read",
            shard.reads.feed(0, 10, Default::default(), 10).await,
        );
    }
}

conformance! {
    /// Found by this suite: the PostgreSQL engine's `ShardReads::close` closed
    /// the database's one pool, so closing one shard's reads closed every
    /// shard's (and a writer could no longer reopen).
    async fn closing_one_shards_reads_leaves_the_others_open(engine) {
        let mut shards = engine.boot_all(2).await;
        let second = shards.pop().expect("shard 1");
        let first = shards.pop().expect("shard 0");
        first.reads.close().await;
        assert!(!second.reads.is_closed(), "{engine}: shard 1's reads stay open");
        let run = second.reads.feed(0, 10, Default::default(), 10).await;
        assert!(run.is_ok(), "{engine}: shard 1's feed still reads: {:?}", run.err());
        let (writes, _) = second.another_writer().await;
        drop(writes);
        first.close(IdBounds::default(), IdBounds::default()).await;
        second.close(IdBounds::default(), IdBounds::default()).await;
    }
}
