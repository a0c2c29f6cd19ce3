-- Declared indexes (src/store/index.rs): each shard file holds every
-- collection's declarations, and the entries of its own documents. `built`
-- turns 1 once the background build has covered every document (writes
-- keep entries from the declaration on); `built_upto` is the last id the
-- build reached, `indexed` how many documents it covered, `oversized` how
-- many it could not (a key over the bound: the index is then never used).
-- An entry's `key`
-- is the document's field values in an order-preserving byte form.
CREATE TABLE collection_indexes (
    collection TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    fields     TEXT    NOT NULL,
    built      INTEGER NOT NULL DEFAULT 0,
    built_upto TEXT,
    indexed    INTEGER NOT NULL DEFAULT 0,
    oversized  INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (collection, name)
) WITHOUT ROWID;

CREATE TABLE index_entries (
    collection TEXT NOT NULL,
    name       TEXT NOT NULL,
    key        BLOB NOT NULL,
    id         TEXT NOT NULL,
    PRIMARY KEY (collection, name, key, id)
) WITHOUT ROWID;

-- A document's entries, found to be replaced or removed with it.
CREATE INDEX index_entries_by_id ON index_entries (collection, id);

-- The change feed's `kind` gains 6 (an index declared) and 7 (dropped);
-- such an entry's `id` is the index's name.
