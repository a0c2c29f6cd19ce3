-- One shard file's schema. A document is (collection, id) -> JSON text, with a
-- version that rises on every change and its update time in Unix milliseconds.
-- `bucket` is the document's placement bucket (see src/store/placement.rs),
-- indexed so that resharding moves whole buckets.
CREATE TABLE documents (
    collection TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    bucket     INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    data       TEXT    NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;

CREATE INDEX documents_by_bucket ON documents (bucket);

-- Small per-shard facts, e.g. the highest numeric id this shard has stored,
-- from which the id counter restarts.
CREATE TABLE shard_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO shard_meta (key, value) VALUES ('max_counter_id', 0);
