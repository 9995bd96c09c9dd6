-- The event log: one sequence across all topics. AUTOINCREMENT so that a
-- sequence number is never reused, even after old events are removed.
CREATE TABLE events (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL,
    source          TEXT    NOT NULL,
    type            TEXT    NOT NULL,
    topic           TEXT    NOT NULL,
    subject         TEXT,
    time            INTEGER NOT NULL, -- the producer's time, Unix milliseconds
    appended_at     INTEGER NOT NULL, -- the hub's clock at append; replay by time uses it
    datacontenttype TEXT    NOT NULL,
    data            TEXT,             -- JSON text
    extensions      TEXT    NOT NULL  -- JSON object
) STRICT;

CREATE INDEX events_by_appended_at ON events (appended_at);
