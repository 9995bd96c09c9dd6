-- The agent registry.
CREATE TABLE agents (
    id                   TEXT    NOT NULL PRIMARY KEY,
    agent_type           TEXT    NOT NULL,
    name                 TEXT    NOT NULL,
    version              TEXT,
    capabilities         TEXT    NOT NULL, -- JSON array, sorted; the index is agent_capabilities
    endpoint             TEXT,
    health_check_url     TEXT,
    configuration        TEXT    NOT NULL, -- JSON object
    max_concurrent_tasks INTEGER,
    metadata             TEXT    NOT NULL, -- JSON object
    status               TEXT    NOT NULL,
    -- The status before the last registration (NULL after an insert), so
    -- that one INSERT ... ON CONFLICT ... RETURNING tells insert from update.
    previous_status      TEXT,
    -- Counts changes of status; a write carrying an older version never
    -- overwrites a newer status.
    status_version       INTEGER NOT NULL DEFAULT 1,
    reported_status      TEXT    NOT NULL,
    current_tasks        INTEGER NOT NULL DEFAULT 0,
    performance_metrics  TEXT    NOT NULL DEFAULT '{}',
    registered_at        INTEGER NOT NULL, -- Unix milliseconds, as every time below
    updated_at           INTEGER NOT NULL,
    last_heartbeat_at    INTEGER NOT NULL,
    status_changed_at    INTEGER NOT NULL
) STRICT;

CREATE INDEX agents_by_type ON agents (agent_type, id);
CREATE INDEX agents_by_status ON agents (status, id);

-- One row per (capability, agent): discovery by capability reads an index,
-- never every agent.
CREATE TABLE agent_capabilities (
    capability TEXT NOT NULL,
    agent_id   TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    PRIMARY KEY (capability, agent_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX agent_capabilities_by_agent ON agent_capabilities (agent_id);
