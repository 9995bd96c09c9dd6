//! Credentials, signing keys and the audit log for SQLite.

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Connection;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use switchboard_auth::store::{AuditQuery, AuthSnapshot, AuthStore, AuthWrite};
use switchboard_auth::{AuditEntry, AuditRecord};
use switchboard_core::StorageError;

use super::SqliteStore;
use crate::{corrupt, storage_error};

const SIGNING_KEY: &str = "signing_key";
const API_KEY: &str = "api_key";
const CREDENTIAL: &str = "credential";
const REVOKED: &str = "revoked";
const IDENTITY: &str = "identity";

fn doc<T: Serialize>(what: &str, v: &T) -> Result<String, StorageError> {
    serde_json::to_string(v).map_err(|e| corrupt(what, e))
}

fn parse<T: DeserializeOwned>(rows: &[SqliteRow], kind: &str) -> Result<Vec<T>, StorageError> {
    rows.iter()
        .filter(|r| r.try_get::<String, _>("kind").is_ok_and(|k| k == kind))
        .map(|r| {
            let text: String = r
                .try_get("doc")
                .map_err(|e| storage_error("load auth", e))?;
            serde_json::from_str(&text).map_err(|e| corrupt(&format!("auth {kind}"), e))
        })
        .collect()
}

fn record(row: &SqliteRow) -> Result<AuditRecord, StorageError> {
    let ctx = |e| storage_error("read audit log", e);
    let seq: i64 = row.try_get("seq").map_err(ctx)?;
    let outcome: i64 = row.try_get("outcome").map_err(ctx)?;
    Ok(AuditRecord {
        seq: u64::try_from(seq).map_err(|e| corrupt("audit seq", e))?,
        entry: AuditEntry {
            at: row.try_get("at").map_err(ctx)?,
            principal: row.try_get("principal").map_err(ctx)?,
            principal_kind: row.try_get("principal_kind").map_err(ctx)?,
            action: row.try_get("action").map_err(ctx)?,
            resource: row.try_get("resource").map_err(ctx)?,
            outcome: u16::try_from(outcome).map_err(|e| corrupt("audit outcome", e))?,
            reason: row.try_get("reason").map_err(ctx)?,
            source: row.try_get("source").map_err(ctx)?,
            correlation_id: row.try_get("correlation_id").map_err(ctx)?,
        },
        prev_hash: row.try_get("prev_hash").map_err(ctx)?,
        hash: row.try_get("hash").map_err(ctx)?,
    })
}

const AUDIT_COLUMNS: &str = "seq, at, principal, principal_kind, action, resource, outcome, \
                             reason, source, correlation_id, prev_hash, hash";

/// Appends a batch of audit records given as one JSON array (`?1`) of rows,
/// each an array of the columns in [`AUDIT_COLUMNS`] order. One statement,
/// so the batch is stored all or nothing. Each row is materialized once
/// beside its text, which `->>` then reads.
const APPEND_AUDIT: &str = "WITH r(c) AS MATERIALIZED (SELECT value FROM json_each(?1)) \
    INSERT INTO audit_log (seq, at, principal, principal_kind, action, resource, outcome, \
                           reason, source, correlation_id, prev_hash, hash) \
    SELECT c ->> 0, c ->> 1, c ->> 2, c ->> 3, c ->> 4, c ->> 5, c ->> 6, c ->> 7, c ->> 8, \
           c ->> 9, c ->> 10, c ->> 11 \
    FROM r";

#[async_trait]
impl AuthStore for SqliteStore {
    async fn load_auth(&self) -> Result<AuthSnapshot, StorageError> {
        let rows = sqlx::query("SELECT kind, doc FROM auth_objects")
            .fetch_all(&mut *self.writer.lock().await?)
            .await
            .map_err(|e| storage_error("load auth", e))?;
        Ok(AuthSnapshot {
            signing_keys: parse(&rows, SIGNING_KEY)?,
            api_keys: parse(&rows, API_KEY)?,
            credentials: parse(&rows, CREDENTIAL)?,
            revoked: parse(&rows, REVOKED)?,
            identities: parse(&rows, IDENTITY)?,
        })
    }

    async fn write_auth(&self, writes: Vec<AuthWrite>) -> Result<(), StorageError> {
        let ctx = |e| storage_error("write auth", e);
        let mut conn = self.writer.lock().await?;
        let mut tx = conn.begin().await.map_err(ctx)?;
        for w in writes {
            let (kind, id, text, expires) = match w {
                AuthWrite::SigningKey(k) => (
                    SIGNING_KEY,
                    k.kid.clone(),
                    Some(doc("signing key", &k)?),
                    None,
                ),
                AuthWrite::ApiKey(k) => (API_KEY, k.id.clone(), Some(doc("api key", &k)?), None),
                AuthWrite::Credential(c) => (
                    CREDENTIAL,
                    c.agent_id.clone(),
                    Some(doc("credential", &c)?),
                    None,
                ),
                AuthWrite::Revoke(r) => (
                    REVOKED,
                    r.jti.clone(),
                    Some(doc("revoked token", &r)?),
                    Some(r.expires_at),
                ),
                AuthWrite::DeleteSigningKey(kid) => (SIGNING_KEY, kid, None, None),
                AuthWrite::DeleteCredential(id) => (CREDENTIAL, id, None, None),
                AuthWrite::Identity(i) => (
                    IDENTITY,
                    i.agent_id.clone(),
                    Some(doc("agent keys", &i)?),
                    None,
                ),
                AuthWrite::DeleteIdentity(id) => (IDENTITY, id, None, None),
                AuthWrite::PruneRevoked(before) => {
                    sqlx::query("DELETE FROM auth_objects WHERE kind = ?1 AND expires_at < ?2")
                        .bind(REVOKED)
                        .bind(before)
                        .execute(&mut *tx)
                        .await
                        .map_err(ctx)?;
                    continue;
                }
            };
            match text {
                Some(text) => sqlx::query(
                    "INSERT INTO auth_objects (kind, id, doc, expires_at) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (kind, id) DO UPDATE SET doc = excluded.doc, \
                     expires_at = excluded.expires_at",
                )
                .bind(kind)
                .bind(id)
                .bind(text)
                .bind(expires),
                None => sqlx::query("DELETE FROM auth_objects WHERE kind = ?1 AND id = ?2")
                    .bind(kind)
                    .bind(id),
            }
            .execute(&mut *tx)
            .await
            .map_err(ctx)?;
        }
        tx.commit().await.map_err(ctx)
    }

    async fn audit_tail(&self) -> Result<Option<AuditRecord>, StorageError> {
        let row = sqlx::query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log ORDER BY seq DESC LIMIT 1"
        ))
        .fetch_optional(&mut *self.writer.lock().await?)
        .await
        .map_err(|e| storage_error("read audit log", e))?;
        row.as_ref().map(record).transpose()
    }

    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StorageError> {
        // The batch goes to SQLite as one JSON array of rows (each row an
        // array of the columns in `AUDIT_COLUMNS` order) that one statement
        // inserts: one round trip to SQLite's thread however many records,
        // so the writer's connection is held for one statement, not for a
        // round trip per record.
        let rows = records
            .iter()
            .map(|r| {
                let e = &r.entry;
                Ok((
                    i64::try_from(r.seq).map_err(|e| corrupt("audit seq", e))?,
                    e.at,
                    &e.principal,
                    &e.principal_kind,
                    &e.action,
                    &e.resource,
                    i64::from(e.outcome),
                    &e.reason,
                    &e.source,
                    &e.correlation_id,
                    &r.prev_hash,
                    &r.hash,
                ))
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        let rows = serde_json::to_string(&rows).map_err(|e| corrupt("encode audit records", e))?;
        sqlx::query(APPEND_AUDIT)
            .bind(rows)
            .execute(&mut *self.writer.lock().await?)
            .await
            .map_err(|e| storage_error("append audit log", e))?;
        Ok(())
    }

    async fn read_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StorageError> {
        let after = i64::try_from(q.after).unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > ?1 \
             AND (?2 IS NULL OR principal = ?2) ORDER BY seq LIMIT ?3"
        );
        let rows = sqlx::query(&sql)
            .bind(after)
            .bind(q.principal.as_deref())
            .bind(i64::from(q.limit))
            .fetch_all(&self.reader)
            .await
            .map_err(|e| storage_error("read audit log", e))?;
        rows.iter().map(record).collect()
    }
}
