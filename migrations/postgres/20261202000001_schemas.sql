-- Collection schemas (src/store/schema.rs), a row per shard of the key
-- space, written by that shard's writer while it holds the shard: a write
-- is checked against the schema committed before it on its shard, on
-- every replica. `version` rises with every change; a removal keeps its
-- row with `schema` NULL. `schema_seq` counts a shard's schema changes, so
-- a writer sees in the lock it takes anyway that it must read them again.
CREATE TABLE exdaas_schemas (
    shard      INT    NOT NULL,
    collection TEXT   COLLATE "C" NOT NULL,
    version    BIGINT NOT NULL,
    schema     TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (shard, collection)
);

ALTER TABLE exdaas_shards ADD COLUMN schema_seq BIGINT NOT NULL DEFAULT 0;
