//! The vault's ciphertext for SQLite.

use async_trait::async_trait;
use sqlx::Connection;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use switchboard_core::{StorageError, UnixMillis};
use switchboard_vault::store::{
    Ciphertext, KeyCheck, ReadPolicy, SecretMeta, StoredVersion, VaultStore,
};

use super::SqliteStore;
use crate::{corrupt, storage_error};

const META_COLUMNS: &str = "name, policy, created_at, updated_at, latest_version";
const VERSION_COLUMNS: &str = "name, version, created_at, created_by, value, value_nonce, \
                               wrapped_key, wrap_nonce, master_key_id";

fn meta(r: &SqliteRow) -> Result<SecretMeta, StorageError> {
    let ctx = |e| storage_error("read vault secret", e);
    let policy: String = r.try_get("policy").map_err(ctx)?;
    let latest: i64 = r.try_get("latest_version").map_err(ctx)?;
    Ok(SecretMeta {
        name: r.try_get("name").map_err(ctx)?,
        policy: serde_json::from_str(&policy).map_err(|e| corrupt("vault policy", e))?,
        created_at: r.try_get("created_at").map_err(ctx)?,
        updated_at: r.try_get("updated_at").map_err(ctx)?,
        latest_version: u64::try_from(latest).map_err(|e| corrupt("vault version", e))?,
    })
}

fn version(r: &SqliteRow) -> Result<StoredVersion, StorageError> {
    let ctx = |e| storage_error("read vault version", e);
    let v: i64 = r.try_get("version").map_err(ctx)?;
    Ok(StoredVersion {
        name: r.try_get("name").map_err(ctx)?,
        version: u64::try_from(v).map_err(|e| corrupt("vault version", e))?,
        created_at: r.try_get("created_at").map_err(ctx)?,
        created_by: r.try_get("created_by").map_err(ctx)?,
        ciphertext: Ciphertext {
            value: r.try_get("value").map_err(ctx)?,
            value_nonce: r.try_get("value_nonce").map_err(ctx)?,
            wrapped_key: r.try_get("wrapped_key").map_err(ctx)?,
            wrap_nonce: r.try_get("wrap_nonce").map_err(ctx)?,
            master_key_id: r.try_get("master_key_id").map_err(ctx)?,
        },
    })
}

fn policy_doc(p: &ReadPolicy) -> Result<String, StorageError> {
    serde_json::to_string(p).map_err(|e| corrupt("vault policy", e))
}

fn version_i64(v: u64) -> Result<i64, StorageError> {
    i64::try_from(v).map_err(|e| corrupt("vault version", e))
}

#[async_trait]
impl VaultStore for SqliteStore {
    async fn key_checks(&self) -> Result<Vec<KeyCheck>, StorageError> {
        let ctx = |e| storage_error("read vault key checks", e);
        let rows =
            sqlx::query("SELECT master_key_id, blob, nonce, created_at FROM vault_key_checks")
                .fetch_all(&mut *self.writer.lock().await?)
                .await
                .map_err(ctx)?;
        rows.iter()
            .map(|r| {
                Ok(KeyCheck {
                    master_key_id: r.try_get("master_key_id").map_err(ctx)?,
                    blob: r.try_get("blob").map_err(ctx)?,
                    nonce: r.try_get("nonce").map_err(ctx)?,
                    created_at: r.try_get("created_at").map_err(ctx)?,
                })
            })
            .collect()
    }

    async fn put_key_check(&self, c: &KeyCheck) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO vault_key_checks (master_key_id, blob, nonce, created_at) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (master_key_id) DO NOTHING",
        )
        .bind(&c.master_key_id)
        .bind(&c.blob)
        .bind(&c.nonce)
        .bind(c.created_at)
        .execute(&mut *self.writer.lock().await?)
        .await
        .map_err(|e| storage_error("write vault key check", e))?;
        Ok(())
    }

    async fn wrapped_counts(&self) -> Result<Vec<(String, u64)>, StorageError> {
        let ctx = |e| storage_error("count vault versions", e);
        let rows = sqlx::query(
            "SELECT master_key_id, count(*) AS n FROM vault_versions GROUP BY master_key_id \
             ORDER BY master_key_id",
        )
        .fetch_all(&mut *self.writer.lock().await?)
        .await
        .map_err(ctx)?;
        rows.iter()
            .map(|r| {
                let n: i64 = r.try_get("n").map_err(ctx)?;
                Ok((
                    r.try_get("master_key_id").map_err(ctx)?,
                    u64::try_from(n).unwrap_or(0),
                ))
            })
            .collect()
    }

    async fn secret(&self, name: &str) -> Result<Option<SecretMeta>, StorageError> {
        let row = sqlx::query(&format!(
            "SELECT {META_COLUMNS} FROM vault_secrets WHERE name = ?1"
        ))
        .bind(name)
        .fetch_optional(&mut *self.writer.lock().await?)
        .await
        .map_err(|e| storage_error("read vault secret", e))?;
        row.as_ref().map(meta).transpose()
    }

    async fn list_secrets(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SecretMeta>, StorageError> {
        let rows = sqlx::query(&format!(
            "SELECT {META_COLUMNS} FROM vault_secrets WHERE name > ?1 ORDER BY name LIMIT ?2"
        ))
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&mut *self.writer.lock().await?)
        .await
        .map_err(|e| storage_error("list vault secrets", e))?;
        rows.iter().map(meta).collect()
    }

    async fn put_version(&self, m: &SecretMeta, v: &StoredVersion) -> Result<(), StorageError> {
        let ctx = |e| storage_error("write vault secret", e);
        let mut conn = self.writer.lock().await?;
        let mut tx = conn.begin().await.map_err(ctx)?;
        sqlx::query(
            "INSERT INTO vault_secrets (name, policy, created_at, updated_at, latest_version) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (name) DO UPDATE SET \
             policy = excluded.policy, updated_at = excluded.updated_at, \
             latest_version = excluded.latest_version",
        )
        .bind(&m.name)
        .bind(policy_doc(&m.policy)?)
        .bind(m.created_at)
        .bind(m.updated_at)
        .bind(version_i64(m.latest_version)?)
        .execute(&mut *tx)
        .await
        .map_err(ctx)?;
        let c = &v.ciphertext;
        sqlx::query(&format!(
            "INSERT INTO vault_versions ({VERSION_COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        ))
        .bind(&v.name)
        .bind(version_i64(v.version)?)
        .bind(v.created_at)
        .bind(&v.created_by)
        .bind(&c.value)
        .bind(&c.value_nonce)
        .bind(&c.wrapped_key)
        .bind(&c.wrap_nonce)
        .bind(&c.master_key_id)
        .execute(&mut *tx)
        .await
        .map_err(ctx)?;
        tx.commit().await.map_err(ctx)?;
        Ok(())
    }

    async fn set_policy(
        &self,
        name: &str,
        policy: &ReadPolicy,
        at: UnixMillis,
    ) -> Result<bool, StorageError> {
        let done =
            sqlx::query("UPDATE vault_secrets SET policy = ?2, updated_at = ?3 WHERE name = ?1")
                .bind(name)
                .bind(policy_doc(policy)?)
                .bind(at)
                .execute(&mut *self.writer.lock().await?)
                .await
                .map_err(|e| storage_error("write vault policy", e))?;
        Ok(done.rows_affected() > 0)
    }

    async fn version(&self, name: &str, v: u64) -> Result<Option<StoredVersion>, StorageError> {
        let row = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM vault_versions WHERE name = ?1 AND version = ?2"
        ))
        .bind(name)
        .bind(version_i64(v)?)
        .fetch_optional(&mut *self.writer.lock().await?)
        .await
        .map_err(|e| storage_error("read vault version", e))?;
        row.as_ref().map(version).transpose()
    }

    async fn versions(&self, name: &str) -> Result<Vec<StoredVersion>, StorageError> {
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM vault_versions WHERE name = ?1 ORDER BY version"
        ))
        .bind(name)
        .fetch_all(&mut *self.writer.lock().await?)
        .await
        .map_err(|e| storage_error("read vault versions", e))?;
        rows.iter().map(version).collect()
    }

    async fn delete_secret(&self, name: &str) -> Result<bool, StorageError> {
        let ctx = |e| storage_error("delete vault secret", e);
        let mut conn = self.writer.lock().await?;
        let mut tx = conn.begin().await.map_err(ctx)?;
        sqlx::query("DELETE FROM vault_versions WHERE name = ?1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(ctx)?;
        let done = sqlx::query("DELETE FROM vault_secrets WHERE name = ?1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(ctx)?;
        tx.commit().await.map_err(ctx)?;
        Ok(done.rows_affected() > 0)
    }

    async fn wrapped_by_others(
        &self,
        current: &str,
        limit: u32,
    ) -> Result<Vec<StoredVersion>, StorageError> {
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM vault_versions WHERE master_key_id <> ?1 \
             ORDER BY name, version LIMIT ?2"
        ))
        .bind(current)
        .bind(i64::from(limit))
        .fetch_all(&mut *self.writer.lock().await?)
        .await
        .map_err(|e| storage_error("read vault versions to rewrap", e))?;
        rows.iter().map(version).collect()
    }

    async fn rewrap(&self, versions: &[StoredVersion]) -> Result<(), StorageError> {
        let ctx = |e| storage_error("rewrap vault data keys", e);
        let mut conn = self.writer.lock().await?;
        let mut tx = conn.begin().await.map_err(ctx)?;
        for v in versions {
            let c = &v.ciphertext;
            sqlx::query(
                "UPDATE vault_versions SET wrapped_key = ?3, wrap_nonce = ?4, master_key_id = ?5 \
                 WHERE name = ?1 AND version = ?2",
            )
            .bind(&v.name)
            .bind(version_i64(v.version)?)
            .bind(&c.wrapped_key)
            .bind(&c.wrap_nonce)
            .bind(&c.master_key_id)
            .execute(&mut *tx)
            .await
            .map_err(ctx)?;
        }
        tx.commit().await.map_err(ctx)?;
        Ok(())
    }
}
