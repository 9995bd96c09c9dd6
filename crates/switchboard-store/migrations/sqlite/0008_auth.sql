-- Credentials and signing keys: few rows, all loaded at start. Each row is
-- a record as JSON (`doc`); `kind` says which (signing_key, api_key,
-- credential, revoked), `id` is its key within the kind.
CREATE TABLE auth_objects (
    kind       TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    doc        TEXT    NOT NULL,
    -- For revoked tokens: when the entry may go.
    expires_at INTEGER,
    PRIMARY KEY (kind, id)
) STRICT, WITHOUT ROWID;

-- The audit log: append-only, each row chained to the one before by
-- `prev_hash` (see switchboard-auth's audit module). Rows are never
-- updated or deleted by the hub.
CREATE TABLE audit_log (
    seq            INTEGER PRIMARY KEY,
    at             INTEGER NOT NULL,
    principal      TEXT    NOT NULL,
    principal_kind TEXT    NOT NULL,
    action         TEXT    NOT NULL,
    resource       TEXT    NOT NULL,
    outcome        INTEGER NOT NULL,
    reason         TEXT    NOT NULL,
    source         TEXT    NOT NULL,
    correlation_id TEXT    NOT NULL,
    prev_hash      TEXT    NOT NULL,
    hash           TEXT    NOT NULL
) STRICT;

CREATE INDEX audit_log_by_principal ON audit_log (principal, seq);
