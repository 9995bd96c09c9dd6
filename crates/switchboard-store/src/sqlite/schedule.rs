//! Held events (delayed and scheduled publish) for SQLite.

use serde_json::{Map, Value};
use sqlx::Connection;
use sqlx::Row;
use switchboard_bus::{Data, NewEvent, Scheduled};
use switchboard_core::{StorageError, UnixMillis};

use super::SqliteStore;
use super::events::insert_events;
use crate::{corrupt, storage_error};

impl SqliteStore {
    pub(crate) async fn hold(
        &self,
        events: Vec<NewEvent>,
        due: Vec<UnixMillis>,
    ) -> Result<Vec<Scheduled>, StorageError> {
        let ctx = |e| storage_error("hold events", e);
        let mut conn = self.writer.lock().await?;
        let mut tx = conn.begin().await.map_err(ctx)?;
        let mut out = Vec::with_capacity(events.len());
        for (e, at) in events.iter().zip(due) {
            sqlx::query(
                "INSERT OR IGNORE INTO scheduled_events (due_at, id, source, type, topic, \
                 subject, time, datacontenttype, data, extensions) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .bind(at)
            .bind(&e.id)
            .bind(&e.source)
            .bind(&e.event_type)
            .bind(&e.topic)
            .bind(&e.subject)
            .bind(e.time.unwrap_or(at))
            .bind(&e.datacontenttype)
            .bind(e.data.as_ref().map(Data::json))
            .bind(Value::Object(e.extensions.clone()).to_string())
            .execute(&mut *tx)
            .await
            .map_err(ctx)?;
            // The one held under this (source, id): this event, or an
            // earlier publish of it.
            let row = sqlx::query(
                "SELECT topic, due_at FROM scheduled_events WHERE source = ?1 AND id = ?2",
            )
            .bind(&e.source)
            .bind(&e.id)
            .fetch_one(&mut *tx)
            .await
            .map_err(ctx)?;
            out.push(Scheduled {
                id: e.id.clone(),
                source: e.source.clone(),
                topic: row.try_get("topic").map_err(ctx)?,
                due_at: row.try_get("due_at").map_err(ctx)?,
            });
        }
        tx.commit().await.map_err(ctx)?;
        Ok(out)
    }

    pub(crate) async fn release(
        &self,
        now: UnixMillis,
        limit: u32,
    ) -> Result<(u32, Option<UnixMillis>), StorageError> {
        let ctx = |e| storage_error("release held events", e);
        let mut conn = self.writer.lock().await?;
        let mut tx = conn.begin().await.map_err(ctx)?;
        let rows = sqlx::query(
            "SELECT hold, id, source, type, topic, subject, time, datacontenttype, data, \
             extensions FROM scheduled_events WHERE due_at <= ?1 ORDER BY due_at, hold LIMIT ?2",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(ctx)?;
        let mut holds = Vec::with_capacity(rows.len());
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            holds.push(row.try_get::<i64, _>("hold").map_err(ctx)?);
            let data: Option<String> = row.try_get("data").map_err(ctx)?;
            let ext: String = row.try_get("extensions").map_err(ctx)?;
            events.push(NewEvent {
                id: row.try_get("id").map_err(ctx)?,
                source: row.try_get("source").map_err(ctx)?,
                event_type: row.try_get("type").map_err(ctx)?,
                topic: row.try_get("topic").map_err(ctx)?,
                subject: row.try_get("subject").map_err(ctx)?,
                time: Some(row.try_get("time").map_err(ctx)?),
                datacontenttype: row.try_get("datacontenttype").map_err(ctx)?,
                data: data
                    .map(|d| Data::from_json(d).map_err(|e| corrupt("held event data", e)))
                    .transpose()?,
                extensions: serde_json::from_str::<Map<String, Value>>(&ext)
                    .map_err(|e| corrupt("held event extensions", e))?,
            });
        }
        let mut last = None;
        if !events.is_empty() {
            let refs: Vec<&NewEvent> = events.iter().collect();
            last = insert_events(&self.seen, &mut tx, &refs, now)
                .await?
                .last()
                .copied();
            sqlx::query(
                "DELETE FROM scheduled_events WHERE hold IN (SELECT value FROM json_each(?1))",
            )
            .bind(serde_json::json!(holds).to_string())
            .execute(&mut *tx)
            .await
            .map_err(ctx)?;
        }
        let next: Option<i64> = sqlx::query_scalar("SELECT MIN(due_at) FROM scheduled_events")
            .fetch_one(&mut *tx)
            .await
            .map_err(ctx)?;
        tx.commit().await.map_err(ctx)?;
        if let Some(seq) = last {
            self.head.advance(seq);
        }
        Ok((u32::try_from(holds.len()).unwrap_or(0), next))
    }
}
