-- Consumer groups: durable named subscriptions.
CREATE TABLE consumer_groups (
    name               TEXT    PRIMARY KEY,
    topics             TEXT    NOT NULL, -- JSON array of patterns
    filter             TEXT    NOT NULL, -- JSON object
    ack_wait_ms        INTEGER NOT NULL,
    max_deliveries     INTEGER NOT NULL,
    backoff_kind       TEXT    NOT NULL,
    backoff_initial_ms INTEGER NOT NULL,
    backoff_max_ms     INTEGER NOT NULL,
    backoff_jitter     REAL    NOT NULL,
    max_pending        INTEGER NOT NULL,
    cursor             INTEGER NOT NULL, -- the log has been taken in up to here
    created_at         INTEGER NOT NULL
) STRICT;

-- Events a group has taken from the log and not yet settled.
CREATE TABLE group_pending (
    group_name TEXT    NOT NULL REFERENCES consumer_groups (name) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    key        TEXT,             -- partition key
    attempts   INTEGER NOT NULL, -- failed deliveries
    due_at     INTEGER NOT NULL,
    last_error TEXT,
    event      TEXT,             -- a replayed dead letter's copy; NULL: in the log
    PRIMARY KEY (group_name, seq)
) STRICT, WITHOUT ROWID;

CREATE TABLE dead_letters (
    group_name TEXT    NOT NULL REFERENCES consumer_groups (name) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    event      TEXT    NOT NULL, -- a copy, kept whatever the log's retention
    attempts   INTEGER NOT NULL,
    last_error TEXT,
    dead_at    INTEGER NOT NULL,
    PRIMARY KEY (group_name, seq)
) STRICT, WITHOUT ROWID;
