-- The change feed: every committed change of a document, in the order the
-- shard's one writer committed it, written in the same transaction as the
-- change itself. `seq` rises by one per entry (the writer assigns it);
-- `version` is the document's new version, or for a deletion the version it
-- had; `kind` is 0 for a write, 1 deleted, 2 expired, 3 dropped with its
-- collection; `at` is the change's time in Unix milliseconds.
CREATE TABLE changes (
    seq        INTEGER PRIMARY KEY,
    collection TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    kind       INTEGER NOT NULL,
    at         INTEGER NOT NULL
);

CREATE INDEX changes_by_collection ON changes (collection, seq);

-- Every entry up to `feed_floor` was compacted away: a cursor below it has
-- missed some, and must start over.
INSERT INTO shard_meta (key, value) VALUES ('feed_floor', 0);
