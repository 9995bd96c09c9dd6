//! Log retention for SQLite: by age, by size, and compaction by key.

use serde_json::json;
use sqlx::Row;
use switchboard_bus::{Pattern, Trimmed};
use switchboard_core::{StorageError, UnixMillis};

use super::SqliteStore;
use super::events::first_appended_since;
use crate::storage_error;

/// Rows removed per statement, so a trim never holds the writer long.
const CHUNK: i64 = 5000;

impl SqliteStore {
    pub(crate) async fn trim_log(
        &self,
        appended_before: Option<UnixMillis>,
        max_bytes: Option<u64>,
        compact: &[Pattern],
    ) -> Result<Trimmed, StorageError> {
        let ctx = |e| storage_error("trim the log", e);
        let mut out = Trimmed::default();
        if let Some(cutoff) = appended_before {
            // Every event before `end` was appended before the cutoff
            // (`appended_at` never decreases along the log).
            let end = {
                let mut conn = self.reader.acquire().await.map_err(ctx)?;
                first_appended_since(&mut conn, cutoff).await?
            };
            loop {
                let done = sqlx::query(
                    "DELETE FROM events WHERE seq IN \
                     (SELECT seq FROM events WHERE seq < ?1 ORDER BY seq LIMIT ?2)",
                )
                .bind(i64::try_from(end).unwrap_or(i64::MAX))
                .bind(CHUNK)
                .execute(&mut *self.writer.lock().await?)
                .await
                .map_err(ctx)?;
                out.expired += done.rows_affected();
                if done.rows_affected() < CHUNK as u64 {
                    break;
                }
            }
        }
        if let Some(max) = max_bytes {
            let total: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(size), 0) FROM events")
                .fetch_one(&self.reader)
                .await
                .map_err(ctx)?;
            let mut excess = u64::try_from(total).unwrap_or(0).saturating_sub(max);
            while excess > 0 {
                // The oldest events, until enough bytes are found.
                let rows = sqlx::query("SELECT seq, size FROM events ORDER BY seq LIMIT ?1")
                    .bind(CHUNK)
                    .fetch_all(&self.reader)
                    .await
                    .map_err(ctx)?;
                if rows.is_empty() {
                    break;
                }
                let mut upto = 0i64;
                for row in &rows {
                    upto = row.try_get("seq").map_err(ctx)?;
                    let size: i64 = row.try_get("size").map_err(ctx)?;
                    excess = excess.saturating_sub(u64::try_from(size.max(1)).unwrap_or(1));
                    if excess == 0 {
                        break;
                    }
                }
                let done = sqlx::query("DELETE FROM events WHERE seq <= ?1")
                    .bind(upto)
                    .execute(&mut *self.writer.lock().await?)
                    .await
                    .map_err(ctx)?;
                out.over_size += done.rows_affected();
            }
        }
        if !compact.is_empty() {
            let topics: Vec<String> =
                sqlx::query_scalar("SELECT DISTINCT topic FROM events WHERE key IS NOT NULL")
                    .fetch_all(&self.reader)
                    .await
                    .map_err(ctx)?;
            let chosen: Vec<&String> = topics
                .iter()
                .filter(|t| compact.iter().any(|p| p.matches(t)))
                .collect();
            for chunk in chosen.chunks(100) {
                let done = sqlx::query(
                    "DELETE FROM events WHERE key IS NOT NULL \
                     AND topic IN (SELECT value FROM json_each(?1)) \
                     AND seq < (SELECT MAX(e2.seq) FROM events e2 \
                                WHERE e2.topic = events.topic AND e2.key = events.key)",
                )
                .bind(json!(chunk).to_string())
                .execute(&mut *self.writer.lock().await?)
                .await
                .map_err(ctx)?;
                out.compacted += done.rows_affected();
            }
        }
        Ok(out)
    }
}
