-- Collection schemas (src/store/schema.rs): each shard file holds every
-- collection's, written by its writer, so a write is checked against the
-- schema its own shard committed before it. `version` rises with every
-- change; a removal keeps its row with `schema` NULL, so the numbering
-- goes on and a late change can never overwrite a newer one.
CREATE TABLE collection_schemas (
    collection TEXT    PRIMARY KEY,
    version    INTEGER NOT NULL,
    schema     TEXT,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;

-- The change feed's `kind` gains 4 (a collection's schema set) and 5 (its
-- schema removed); such an entry has an empty `id` and the schema's version.
