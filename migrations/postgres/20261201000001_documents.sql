-- exdaas on a PostgreSQL-protocol database (PostgreSQL, CockroachDB,
-- YugabyteDB, Citus): the portable subset of ../docs/postgres-portability
-- notes: no sequences, triggers, advisory locks or LISTEN/NOTIFY; ordering
-- comes from one counter row per shard, locked by every write to the shard.

-- Facts about the whole database: its identity (feed cursors from another
-- database are void) and the number of shards it was created with.
CREATE TABLE exdaas_meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);

-- One row per shard of the key space: its writers lock it (SELECT ... FOR
-- UPDATE) first in every transaction, so the shard's changes are numbered in
-- commit order whatever replica makes them. `last_seq` is the shard's last
-- feed entry; `max_counter_id` and `counter_high` the id bounds of
-- src/store/ids.rs; every feed entry up to `feed_floor` was compacted away.
CREATE TABLE exdaas_shards (
    shard          INT    PRIMARY KEY,
    last_seq       BIGINT NOT NULL DEFAULT 0,
    max_counter_id BIGINT NOT NULL DEFAULT 0,
    counter_high   BIGINT NOT NULL DEFAULT 0,
    feed_floor     BIGINT NOT NULL DEFAULT 0
);

-- A document is (collection, id) -> JSON text, as on SQLite: the text is
-- kept as written (jsonb would reorder its keys). Names and ids compare
-- bytewise (COLLATE "C"), as SQLite's do, so listings page in the same order
-- whatever the database's locale.
CREATE TABLE exdaas_documents (
    collection TEXT COLLATE "C" NOT NULL,
    id         TEXT COLLATE "C" NOT NULL,
    shard      INT    NOT NULL,
    bucket     INT    NOT NULL,
    version    BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT,
    data       TEXT   NOT NULL,
    PRIMARY KEY (collection, id)
);

CREATE INDEX exdaas_documents_by_shard ON exdaas_documents (shard, collection);
CREATE INDEX exdaas_documents_by_expiry ON exdaas_documents (shard, expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX exdaas_documents_by_update ON exdaas_documents (updated_at);

-- The change feed, per shard, numbered by the shard row's `last_seq` in the
-- transaction of the change.
CREATE TABLE exdaas_changes (
    shard      INT      NOT NULL,
    seq        BIGINT   NOT NULL,
    collection TEXT     NOT NULL,
    id         TEXT     NOT NULL,
    version    BIGINT   NOT NULL,
    kind       SMALLINT NOT NULL,
    at         BIGINT   NOT NULL,
    PRIMARY KEY (shard, seq)
);

CREATE INDEX exdaas_changes_by_collection ON exdaas_changes (shard, collection, seq);
