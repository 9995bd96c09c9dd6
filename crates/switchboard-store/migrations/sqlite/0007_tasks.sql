-- Tasks and workflows. Each row keeps the whole record as JSON (`doc`);
-- the other columns are copies of its fields that listings filter on.
CREATE TABLE tasks (
    id              TEXT    NOT NULL PRIMARY KEY,
    seq             INTEGER NOT NULL UNIQUE, -- creation order
    type            TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    agent_id        TEXT,
    workflow_id     TEXT,
    idempotency_key TEXT    UNIQUE,
    updated_at      INTEGER NOT NULL,
    doc             TEXT    NOT NULL
) STRICT;

CREATE INDEX tasks_by_status ON tasks (status, seq);
CREATE INDEX tasks_by_type ON tasks (type, seq);
CREATE INDEX tasks_by_agent ON tasks (agent_id, seq) WHERE agent_id IS NOT NULL;
CREATE INDEX tasks_by_workflow ON tasks (workflow_id, seq) WHERE workflow_id IS NOT NULL;

CREATE TABLE workflows (
    id              TEXT    NOT NULL PRIMARY KEY,
    seq             INTEGER NOT NULL UNIQUE,
    status          TEXT    NOT NULL,
    project_id      TEXT,
    idempotency_key TEXT    UNIQUE,
    updated_at      INTEGER NOT NULL,
    doc             TEXT    NOT NULL
) STRICT;

CREATE INDEX workflows_by_status ON workflows (status, seq);
CREATE INDEX workflows_by_project ON workflows (project_id, seq) WHERE project_id IS NOT NULL;
