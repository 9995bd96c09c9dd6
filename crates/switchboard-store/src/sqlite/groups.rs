//! `GroupStore` for SQLite.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value, json};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use switchboard_bus::groups::{
    Backoff, DeadLetter, GroupOp, GroupRecord, GroupSpec, GroupStore, PendingItem,
};
use switchboard_bus::{Data, Event, Pattern};
use switchboard_core::StorageError;

use super::SqliteStore;
use super::batch::SqlxWrite;
use super::events::{COLUMNS, decode, insert_events};
use super::seen::Seen;
use crate::{corrupt, storage_error};

/// Rows per multi-row INSERT (7 bound values each).
const INSERT_CHUNK: usize = 500;

#[async_trait]
impl GroupStore for SqliteStore {
    async fn create_group(&self, g: &GroupRecord) -> Result<(), StorageError> {
        let s = &g.spec;
        let topics: Vec<&str> = s.patterns.iter().map(Pattern::as_str).collect();
        sqlx::query(
            "INSERT INTO consumer_groups (name, topics, filter, ack_wait_ms, max_deliveries, \
             backoff_kind, backoff_initial_ms, backoff_max_ms, backoff_jitter, max_pending, \
             cursor, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )
        .bind(&s.name)
        .bind(json!(topics).to_string())
        .bind(Value::Object(s.filter.clone()).to_string())
        .bind(millis(s.ack_wait))
        .bind(i64::from(s.max_deliveries))
        .bind(s.backoff.kind.as_str())
        .bind(millis(s.backoff.initial))
        .bind(millis(s.backoff.max))
        .bind(s.backoff.jitter)
        .bind(i64::from(s.max_pending))
        .bind(seq(g.cursor))
        .bind(g.created_at)
        .execute(&mut *self.writer.lock().await?)
        .await
        .map_err(|e| storage_error("create consumer group", e))?;
        Ok(())
    }

    async fn load_groups(&self) -> Result<Vec<GroupRecord>, StorageError> {
        let rows = sqlx::query("SELECT * FROM consumer_groups ORDER BY name")
            .fetch_all(&self.reader)
            .await
            .map_err(|e| storage_error("load consumer groups", e))?;
        rows.iter().map(decode_group).collect()
    }

    async fn delete_group(&self, name: &str) -> Result<(), StorageError> {
        // Pending rows and dead letters go with it (ON DELETE CASCADE).
        sqlx::query("DELETE FROM consumer_groups WHERE name = ?1")
            .bind(name)
            .execute(&mut *self.writer.lock().await?)
            .await
            .map_err(|e| storage_error("delete consumer group", e))?;
        Ok(())
    }

    async fn load_pending(&self, group: &str) -> Result<Vec<PendingItem>, StorageError> {
        let get = |e| storage_error("load pending events", e);
        let rows = sqlx::query(
            "SELECT seq, key, attempts, due_at, last_error, event FROM group_pending \
             WHERE group_name = ?1 ORDER BY seq",
        )
        .bind(group)
        .fetch_all(&self.reader)
        .await
        .map_err(get)?;
        let mut items = Vec::with_capacity(rows.len());
        let mut from_log = Vec::new();
        for row in &rows {
            let offset = unseq(row.try_get("seq").map_err(get)?);
            let copy: Option<String> = row.try_get("event").map_err(get)?;
            let event = copy.map(|c| event_from_json(&c)).transpose()?;
            if event.is_none() {
                from_log.push(offset);
            }
            let attempts: i64 = row.try_get("attempts").map_err(get)?;
            items.push(PendingItem {
                offset,
                key: row.try_get("key").map_err(get)?,
                attempts: u32::try_from(attempts).unwrap_or(0),
                due_at: row.try_get("due_at").map_err(get)?,
                last_error: row.try_get("last_error").map_err(get)?,
                event,
            });
        }
        let mut events: HashMap<u64, Event> = HashMap::new();
        for chunk in from_log.chunks(INSERT_CHUNK) {
            let rows = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM events WHERE seq IN (SELECT value FROM json_each(?1))"
            ))
            .bind(json!(chunk).to_string())
            .fetch_all(&self.reader)
            .await
            .map_err(get)?;
            for row in &rows {
                let e = decode(row)?;
                events.insert(e.offset, e);
            }
        }
        for item in &mut items {
            if item.event.is_none() {
                item.event = events.remove(&item.offset);
            }
        }
        Ok(items)
    }

    async fn apply(&self, group: &str, ops: Vec<GroupOp>) -> Result<(), StorageError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.group_writes
            .write(GroupItem {
                group: group.to_owned(),
                ops,
            })
            .await
            .map(|_| ())
    }

    async fn dead_letters(
        &self,
        group: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StorageError> {
        let rows = sqlx::query(
            "SELECT * FROM dead_letters WHERE group_name = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .bind(group)
        .bind(seq(after))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(|e| storage_error("list dead letters", e))?;
        rows.iter().map(decode_dead).collect()
    }

    async fn dead_letter(
        &self,
        group: &str,
        offset: u64,
    ) -> Result<Option<DeadLetter>, StorageError> {
        let row = sqlx::query("SELECT * FROM dead_letters WHERE group_name = ?1 AND seq = ?2")
            .bind(group)
            .bind(seq(offset))
            .fetch_optional(&self.reader)
            .await
            .map_err(|e| storage_error("read dead letter", e))?;
        row.as_ref().map(decode_dead).transpose()
    }

    async fn count_dead(&self, group: &str) -> Result<u64, StorageError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters WHERE group_name = ?1")
            .bind(group)
            .fetch_one(&self.reader)
            .await
            .map_err(|e| storage_error("count dead letters", e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn purge_dead(
        &self,
        group: &str,
        offsets: Option<Vec<u64>>,
    ) -> Result<u64, StorageError> {
        let done = match offsets {
            None => {
                sqlx::query("DELETE FROM dead_letters WHERE group_name = ?1")
                    .bind(group)
                    .execute(&mut *self.writer.lock().await?)
                    .await
            }
            Some(list) => {
                sqlx::query(
                    "DELETE FROM dead_letters WHERE group_name = ?1 \
                     AND seq IN (SELECT value FROM json_each(?2))",
                )
                .bind(group)
                .bind(json!(list).to_string())
                .execute(&mut *self.writer.lock().await?)
                .await
            }
        }
        .map_err(|e| storage_error("purge dead letters", e))?;
        Ok(done.rows_affected())
    }
}

/// One group's changes.
pub(crate) struct GroupItem {
    group: String,
    ops: Vec<GroupOp>,
}

/// Applies consumer-group changes, many groups' rounds per commit; moves
/// the log's head when a change appended an event (an alert).
pub(crate) struct GroupWrite {
    pub(crate) head: super::head::Head,
    pub(crate) seen: Seen,
}

impl SqlxWrite for GroupWrite {
    type Item = GroupItem;
    type Output = u64;

    async fn write(
        &self,
        conn: &mut SqliteConnection,
        items: &[Self::Item],
    ) -> Result<Vec<u64>, StorageError> {
        let mut appended = 0u64;
        for item in items {
            let mut acked: Vec<u64> = Vec::new();
            for op in &item.ops {
                if let GroupOp::Acked(o) = op {
                    acked.push(*o);
                    continue;
                }
                delete_pending(conn, &item.group, &mut acked).await?;
                apply_op(&self.seen, conn, &item.group, op, &mut appended).await?;
            }
            delete_pending(conn, &item.group, &mut acked).await?;
        }
        Ok(vec![appended; items.len()])
    }

    fn committed(&self, outputs: &[u64]) {
        if let Some(last) = outputs.iter().max() {
            self.head.advance(*last);
        }
    }
}

async fn delete_pending(
    conn: &mut SqliteConnection,
    group: &str,
    offsets: &mut Vec<u64>,
) -> Result<(), StorageError> {
    if offsets.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "DELETE FROM group_pending WHERE group_name = ?1 \
         AND seq IN (SELECT value FROM json_each(?2))",
    )
    .bind(group)
    .bind(json!(offsets).to_string())
    .execute(&mut *conn)
    .await
    .map_err(|e| storage_error("acknowledge", e))?;
    offsets.clear();
    Ok(())
}

async fn apply_op(
    seen: &Seen,
    conn: &mut SqliteConnection,
    group: &str,
    op: &GroupOp,
    appended: &mut u64,
) -> Result<(), StorageError> {
    let ctx = |e| storage_error("update consumer group", e);
    match op {
        GroupOp::Acked(_) => {}
        GroupOp::Fetched { items, cursor, now } => {
            for chunk in items.chunks(INSERT_CHUNK) {
                let mut q = QueryBuilder::<Sqlite>::new(
                    "INSERT OR IGNORE INTO group_pending \
                     (group_name, seq, key, attempts, due_at, last_error, event) ",
                );
                q.push_values(chunk, |mut b, (offset, key)| {
                    b.push_bind(group)
                        .push_bind(seq(*offset))
                        .push_bind(key)
                        .push_bind(0i64)
                        .push_bind(*now)
                        .push_bind(None::<String>)
                        .push_bind(None::<String>);
                });
                q.build().execute(&mut *conn).await.map_err(ctx)?;
            }
            sqlx::query("UPDATE consumer_groups SET cursor = MAX(cursor, ?2) WHERE name = ?1")
                .bind(group)
                .bind(seq(*cursor))
                .execute(&mut *conn)
                .await
                .map_err(ctx)?;
        }
        GroupOp::Failed {
            offset,
            attempts,
            due_at,
            error,
        } => {
            sqlx::query(
                "UPDATE group_pending SET attempts = ?3, due_at = ?4, last_error = ?5 \
                 WHERE group_name = ?1 AND seq = ?2",
            )
            .bind(group)
            .bind(seq(*offset))
            .bind(i64::from(*attempts))
            .bind(*due_at)
            .bind(error)
            .execute(&mut *conn)
            .await
            .map_err(ctx)?;
        }
        GroupOp::Dead { letter: d, alert } => {
            sqlx::query(
                "INSERT OR REPLACE INTO dead_letters \
                 (group_name, seq, event, attempts, last_error, dead_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(group)
            .bind(seq(d.offset))
            .bind(event_to_json(&d.event))
            .bind(i64::from(d.attempts))
            .bind(&d.last_error)
            .bind(d.dead_at)
            .execute(&mut *conn)
            .await
            .map_err(ctx)?;
            delete_pending(conn, group, &mut vec![d.offset]).await?;
            let now = alert.time.unwrap_or(d.dead_at);
            if let Some(seq) = insert_events(seen, conn, &[&**alert], now).await?.last() {
                *appended = (*appended).max(*seq);
            }
        }
        GroupOp::Revived {
            offset,
            event,
            key,
            now,
        } => {
            sqlx::query(
                "INSERT OR REPLACE INTO group_pending \
                 (group_name, seq, key, attempts, due_at, last_error, event) \
                 VALUES (?1, ?2, ?3, 0, ?4, NULL, ?5)",
            )
            .bind(group)
            .bind(seq(*offset))
            .bind(key)
            .bind(*now)
            .bind(event_to_json(event))
            .execute(&mut *conn)
            .await
            .map_err(ctx)?;
            sqlx::query("DELETE FROM dead_letters WHERE group_name = ?1 AND seq = ?2")
                .bind(group)
                .bind(seq(*offset))
                .execute(&mut *conn)
                .await
                .map_err(ctx)?;
        }
    }
    Ok(())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn seq(offset: u64) -> i64 {
    i64::try_from(offset).unwrap_or(i64::MAX)
}

fn unseq(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

fn decode_group(row: &SqliteRow) -> Result<GroupRecord, StorageError> {
    let get = |e| storage_error("decode consumer group", e);
    let name: String = row.try_get("name").map_err(get)?;
    let topics: String = row.try_get("topics").map_err(get)?;
    let topics: Vec<String> =
        serde_json::from_str(&topics).map_err(|e| corrupt("group topics", e))?;
    let patterns = topics
        .iter()
        .map(|t| Pattern::parse(t).map_err(|e| corrupt("group topic", e)))
        .collect::<Result<Vec<_>, _>>()?;
    let filter: String = row.try_get("filter").map_err(get)?;
    let filter: Map<String, Value> =
        serde_json::from_str(&filter).map_err(|e| corrupt("group filter", e))?;
    let kind: String = row.try_get("backoff_kind").map_err(get)?;
    let dur = |col: &str| -> Result<Duration, StorageError> {
        let ms: i64 = row.try_get(col).map_err(get)?;
        Ok(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
    };
    let count = |col: &str| -> Result<u32, StorageError> {
        let n: i64 = row.try_get(col).map_err(get)?;
        u32::try_from(n).map_err(|e| corrupt(col, e))
    };
    Ok(GroupRecord {
        spec: GroupSpec {
            name,
            patterns,
            filter,
            ack_wait: dur("ack_wait_ms")?,
            max_deliveries: count("max_deliveries")?,
            backoff: Backoff {
                kind: kind.parse().map_err(|e| corrupt("backoff kind", e))?,
                initial: dur("backoff_initial_ms")?,
                max: dur("backoff_max_ms")?,
                jitter: row.try_get("backoff_jitter").map_err(get)?,
            },
            max_pending: count("max_pending")?,
        },
        cursor: unseq(row.try_get("cursor").map_err(get)?),
        created_at: row.try_get("created_at").map_err(get)?,
    })
}

fn decode_dead(row: &SqliteRow) -> Result<DeadLetter, StorageError> {
    let get = |e| storage_error("decode dead letter", e);
    let event: String = row.try_get("event").map_err(get)?;
    let attempts: i64 = row.try_get("attempts").map_err(get)?;
    Ok(DeadLetter {
        group: row.try_get("group_name").map_err(get)?,
        offset: unseq(row.try_get("seq").map_err(get)?),
        event: event_from_json(&event)?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        last_error: row.try_get("last_error").map_err(get)?,
        dead_at: row.try_get("dead_at").map_err(get)?,
    })
}

/// A stored copy of an event (the store's own shape, not the wire's).
fn event_to_json(e: &Event) -> String {
    json!({
        "offset": e.offset,
        "id": e.id,
        "source": e.source,
        "type": e.event_type,
        "topic": e.topic,
        "subject": e.subject,
        "time": e.time,
        "datacontenttype": e.datacontenttype,
        "data": e.data.as_ref().map(Data::value),
        "extensions": e.extensions,
    })
    .to_string()
}

fn event_from_json(text: &str) -> Result<Event, StorageError> {
    let v: Value = serde_json::from_str(text).map_err(|e| corrupt("event copy", e))?;
    let s = |k: &str| -> Result<String, StorageError> {
        v.get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| corrupt("event copy", format!("no {k}")))
    };
    Ok(Event {
        offset: v.get("offset").and_then(Value::as_u64).unwrap_or(0),
        id: s("id")?,
        source: s("source")?,
        event_type: s("type")?,
        topic: s("topic")?,
        subject: v.get("subject").and_then(Value::as_str).map(str::to_owned),
        time: v.get("time").and_then(Value::as_i64).unwrap_or(0),
        datacontenttype: s("datacontenttype")?,
        data: v
            .get("data")
            .filter(|d| !d.is_null())
            .cloned()
            .map(Data::from),
        extensions: v
            .get("extensions")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
        rendered: Default::default(),
    })
}
