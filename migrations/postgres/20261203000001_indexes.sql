-- Declared indexes (src/store/index.rs), per shard of the key space as on
-- SQLite: declarations in every shard, entries with their documents'
-- shard, written by that shard's writer in the transaction of the change.
-- Keys are order-preserving bytes: bytea compares them byte by byte on
-- every engine, whatever the collation. Declaring or dropping one counts
-- in `exdaas_shards.schema_seq` (the catalog's changes), so every
-- replica's writers read the declarations again.
CREATE TABLE exdaas_indexes (
    shard      INT    NOT NULL,
    collection TEXT   COLLATE "C" NOT NULL,
    name       TEXT   COLLATE "C" NOT NULL,
    fields     TEXT   NOT NULL,
    built      BOOLEAN NOT NULL DEFAULT false,
    built_upto TEXT   COLLATE "C",
    indexed    BIGINT NOT NULL DEFAULT 0,
    oversized  BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (shard, collection, name)
);

CREATE TABLE exdaas_index_entries (
    shard      INT   NOT NULL,
    collection TEXT  COLLATE "C" NOT NULL,
    name       TEXT  COLLATE "C" NOT NULL,
    key        BYTEA NOT NULL,
    id         TEXT  COLLATE "C" NOT NULL,
    PRIMARY KEY (shard, collection, name, key, id)
);

CREATE INDEX exdaas_index_entries_by_id ON exdaas_index_entries (shard, collection, id);
