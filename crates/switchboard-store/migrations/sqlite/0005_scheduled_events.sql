-- Events held for later delivery (delayed or scheduled publish); each is
-- moved into `events` when due, in one transaction.
CREATE TABLE scheduled_events (
    hold            INTEGER PRIMARY KEY AUTOINCREMENT,
    due_at          INTEGER NOT NULL,
    id              TEXT    NOT NULL,
    source          TEXT    NOT NULL,
    type            TEXT    NOT NULL,
    topic           TEXT    NOT NULL,
    subject         TEXT,
    time            INTEGER NOT NULL,
    datacontenttype TEXT    NOT NULL,
    data            TEXT,
    extensions      TEXT    NOT NULL,
    UNIQUE (source, id)
) STRICT;

CREATE INDEX scheduled_events_by_due ON scheduled_events (due_at, hold);
