-- The gateway's configuration: services, routes, outbound webhooks and
-- inbound hooks, each a JSON document keyed by kind and name.
CREATE TABLE gateway_objects (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    doc  TEXT NOT NULL,
    PRIMARY KEY (kind, name)
) STRICT, WITHOUT ROWID;

-- Outbound webhook delivery attempts; the newest few per webhook are kept.
CREATE TABLE webhook_deliveries (
    id          INTEGER PRIMARY KEY,
    webhook     TEXT    NOT NULL,
    event_offset INTEGER NOT NULL,
    event_id    TEXT    NOT NULL,
    attempt     INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    status      INTEGER,
    error       TEXT,
    duration_ms INTEGER NOT NULL
) STRICT;

CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries (webhook, id);
