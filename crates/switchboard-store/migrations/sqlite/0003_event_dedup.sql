-- Finds an earlier event with the same (source, id) for deduplication.
CREATE INDEX events_by_source_id ON events (source, id);
