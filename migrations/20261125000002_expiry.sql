-- Documents may expire: `expires_at` in Unix milliseconds, NULL for never.
-- Reads treat a document as gone from that moment; each shard's writer
-- removes expired rows in the background, found through this partial index.
ALTER TABLE documents ADD COLUMN expires_at INTEGER;

CREATE INDEX documents_by_expiry ON documents (expires_at) WHERE expires_at IS NOT NULL;
