-- Where the id counter restarts, apart from the highest numeric id stored:
-- a client's far-off numeric id raises `max_counter_id` (so fresh ids above
-- it are known free without a read) but not `counter_high`, so it cannot use
-- up the counter's ids. A folder from before starts from its old bound,
-- unless a client's id had pushed that to the end of the counter's range
-- (2^53 - 1, within the 2^20 a client's id may move it): then from the
-- highest numeric id stored below that.
INSERT INTO shard_meta (key, value)
SELECT 'counter_high', CASE
    WHEN value < 9007199254740991 - 1048576 THEN value
    ELSE (
        SELECT coalesce(max(CAST(id AS INTEGER)), 0) FROM documents
        WHERE length(id) BETWEEN 1 AND 16 AND id NOT GLOB '*[^0-9]*'
          AND CAST(id AS INTEGER) < 9007199254740991 - 1048576
    )
END
FROM shard_meta WHERE key = 'max_counter_id';
