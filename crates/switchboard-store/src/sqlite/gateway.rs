//! The gateway's configuration and webhook delivery log for SQLite.

use async_trait::async_trait;
use sqlx::Connection;
use sqlx::Row;
use switchboard_core::StorageError;
use switchboard_gateway::store::{DeliveryRecord, GatewayStore};

use super::SqliteStore;
use crate::{corrupt, storage_error};

#[async_trait]
impl GatewayStore for SqliteStore {
    async fn load_gateway(&self) -> Result<Vec<(String, String, String)>, StorageError> {
        let ctx = |e| storage_error("load gateway", e);
        let rows = sqlx::query("SELECT kind, name, doc FROM gateway_objects ORDER BY kind, name")
            .fetch_all(&mut *self.writer.lock().await?)
            .await
            .map_err(ctx)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("kind").map_err(ctx)?,
                    r.try_get("name").map_err(ctx)?,
                    r.try_get("doc").map_err(ctx)?,
                ))
            })
            .collect()
    }

    async fn put_gateway(&self, kind: &str, name: &str, doc: &str) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO gateway_objects (kind, name, doc) VALUES (?1, ?2, ?3) \
             ON CONFLICT (kind, name) DO UPDATE SET doc = excluded.doc",
        )
        .bind(kind)
        .bind(name)
        .bind(doc)
        .execute(&mut *self.writer.lock().await?)
        .await
        .map_err(|e| storage_error("write gateway", e))?;
        Ok(())
    }

    async fn delete_gateway(&self, kind: &str, name: &str) -> Result<bool, StorageError> {
        let done = sqlx::query("DELETE FROM gateway_objects WHERE kind = ?1 AND name = ?2")
            .bind(kind)
            .bind(name)
            .execute(&mut *self.writer.lock().await?)
            .await
            .map_err(|e| storage_error("delete gateway", e))?;
        Ok(done.rows_affected() > 0)
    }

    async fn log_deliveries(
        &self,
        records: &[DeliveryRecord],
        keep: u32,
    ) -> Result<(), StorageError> {
        let ctx = |e| storage_error("log webhook deliveries", e);
        let mut conn = self.writer.lock().await?;
        let mut tx = conn.begin().await.map_err(ctx)?;
        for r in records {
            sqlx::query(
                "INSERT INTO webhook_deliveries (webhook, event_offset, event_id, attempt, at, \
                 status, error, duration_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .bind(&r.webhook)
            .bind(i64::try_from(r.offset).map_err(|e| corrupt("delivery offset", e))?)
            .bind(&r.event_id)
            .bind(i64::from(r.attempt))
            .bind(r.at)
            .bind(r.status.map(i64::from))
            .bind(&r.error)
            .bind(i64::try_from(r.duration_ms).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await
            .map_err(ctx)?;
            sqlx::query(
                "DELETE FROM webhook_deliveries WHERE webhook = ?1 AND id <= \
                 (SELECT id FROM webhook_deliveries WHERE webhook = ?1 ORDER BY id DESC \
                 LIMIT 1 OFFSET ?2)",
            )
            .bind(&r.webhook)
            .bind(i64::from(keep))
            .execute(&mut *tx)
            .await
            .map_err(ctx)?;
        }
        tx.commit().await.map_err(ctx)
    }

    async fn deliveries(
        &self,
        webhook: &str,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StorageError> {
        let ctx = |e| storage_error("read webhook deliveries", e);
        let rows = sqlx::query(
            "SELECT webhook, event_offset, event_id, attempt, at, status, error, duration_ms \
             FROM webhook_deliveries WHERE webhook = ?1 ORDER BY id DESC LIMIT ?2",
        )
        .bind(webhook)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(ctx)?;
        rows.iter()
            .map(|r| {
                let offset: i64 = r.try_get("event_offset").map_err(ctx)?;
                let attempt: i64 = r.try_get("attempt").map_err(ctx)?;
                let status: Option<i64> = r.try_get("status").map_err(ctx)?;
                let duration: i64 = r.try_get("duration_ms").map_err(ctx)?;
                Ok(DeliveryRecord {
                    webhook: r.try_get("webhook").map_err(ctx)?,
                    offset: u64::try_from(offset).map_err(|e| corrupt("delivery offset", e))?,
                    event_id: r.try_get("event_id").map_err(ctx)?,
                    attempt: u32::try_from(attempt).map_err(|e| corrupt("delivery attempt", e))?,
                    at: r.try_get("at").map_err(ctx)?,
                    status: status.and_then(|s| u16::try_from(s).ok()),
                    error: r.try_get("error").map_err(ctx)?,
                    duration_ms: u64::try_from(duration).unwrap_or(0),
                })
            })
            .collect()
    }
}
