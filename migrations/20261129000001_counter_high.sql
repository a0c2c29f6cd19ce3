-- Where the id counter restarts, apart from the highest numeric id stored:
-- a client's far-off numeric id raises `max_counter_id` (so fresh ids above
-- it are known free without a read) but not `counter_high`, so it cannot use
-- up the counter's ids. Folders from before start from their old bound.
INSERT INTO shard_meta (key, value)
SELECT 'counter_high', value FROM shard_meta WHERE key = 'max_counter_id';
