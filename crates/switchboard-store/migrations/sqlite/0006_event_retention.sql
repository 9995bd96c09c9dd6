-- Retention by size and compaction by key.
ALTER TABLE events ADD COLUMN size INTEGER NOT NULL DEFAULT 0; -- bytes stored
ALTER TABLE events ADD COLUMN key TEXT;                        -- the partition key
CREATE INDEX events_by_topic_key ON events (topic, key, seq) WHERE key IS NOT NULL;
