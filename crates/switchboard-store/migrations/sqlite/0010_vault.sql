-- The vault. Values are stored encrypted with a data key per version;
-- data keys are stored wrapped (encrypted) by a master key, which is
-- never stored here: only its id.
CREATE TABLE vault_secrets (
    name           TEXT    PRIMARY KEY,
    policy         TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    latest_version INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE vault_versions (
    name          TEXT    NOT NULL REFERENCES vault_secrets (name) ON DELETE CASCADE,
    version       INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    created_by    TEXT    NOT NULL,
    value         BLOB    NOT NULL,
    value_nonce   BLOB    NOT NULL,
    wrapped_key   BLOB    NOT NULL,
    wrap_nonce    BLOB    NOT NULL,
    master_key_id TEXT    NOT NULL,
    PRIMARY KEY (name, version)
) STRICT, WITHOUT ROWID;

CREATE INDEX vault_versions_by_master_key ON vault_versions (master_key_id);

-- One blob per master key ever current, that only that key decrypts: a
-- hub started with another key learns so before it serves anything.
CREATE TABLE vault_key_checks (
    master_key_id TEXT    PRIMARY KEY,
    blob          BLOB    NOT NULL,
    nonce         BLOB    NOT NULL,
    created_at    INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
