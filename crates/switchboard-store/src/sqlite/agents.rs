//! `AgentStore` for SQLite.

use std::collections::HashMap;

use async_trait::async_trait;
use serde_json::{Map, Value};
use sqlx::Connection;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use switchboard_bus::NewEvent;
use switchboard_core::{Clock, StorageError, UnixMillis};
use switchboard_registry::{
    Agent, AgentFilter, AgentPage, AgentStatus, AgentStore, Liveness, RegisteredEvents,
    ValidRegistration,
};

use super::SqliteStore;
use super::batch::SqlxWrite;
use super::events::insert_events;
use super::seen::Seen;
use crate::{corrupt, storage_error};

const COLUMNS: &str = "id, agent_type, name, version, capabilities, endpoint, health_check_url, \
     configuration, max_concurrent_tasks, metadata, status, reported_status, current_tasks, \
     performance_metrics, registered_at, updated_at, last_heartbeat_at, status_changed_at, \
     status_version";

#[async_trait]
impl AgentStore for SqliteStore {
    async fn upsert_agent(
        &self,
        reg: &ValidRegistration,
        min_status_version: u64,
        now: UnixMillis,
        events: RegisteredEvents<'_>,
    ) -> Result<(Agent, bool), StorageError> {
        let r = reg.registration();
        let ctx = "register agent";
        let min_version = i64::try_from(min_status_version.max(1)).unwrap_or(i64::MAX);
        let mut conn = self.writer.lock().await?;
        let mut tx = conn.begin().await.map_err(|e| storage_error(ctx, e))?;
        let row = sqlx::query(&format!(
            "INSERT INTO agents ({COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'active', 'active', 0, '{{}}', \
                     ?11, ?11, ?11, ?11, ?12) \
             ON CONFLICT (id) DO UPDATE SET \
               agent_type = excluded.agent_type, name = excluded.name, version = excluded.version, \
               capabilities = excluded.capabilities, endpoint = excluded.endpoint, \
               health_check_url = excluded.health_check_url, configuration = excluded.configuration, \
               max_concurrent_tasks = excluded.max_concurrent_tasks, metadata = excluded.metadata, \
               previous_status = agents.status, status = agents.reported_status, \
               status_changed_at = CASE WHEN agents.status = agents.reported_status \
                                        THEN agents.status_changed_at ELSE ?11 END, \
               status_version = MAX(agents.status_version + 1, ?12), \
               updated_at = ?11, last_heartbeat_at = MAX(agents.last_heartbeat_at, ?11) \
             RETURNING {COLUMNS}, previous_status"
        ))
        .bind(&r.id)
        .bind(&r.agent_type)
        .bind(reg.name())
        .bind(&r.version)
        .bind(json(&r.capabilities))
        .bind(&r.endpoint)
        .bind(&r.health_check_url)
        .bind(Value::Object(r.configuration.clone()).to_string())
        .bind(reg.max_concurrent_tasks().map(i64::from))
        .bind(Value::Object(r.metadata.clone()).to_string())
        .bind(now)
        .bind(min_version)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| storage_error(ctx, e))?;
        let agent = decode(&row)?;
        // An insert leaves previous_status NULL; an update sets it.
        let previous: Option<String> = row
            .try_get("previous_status")
            .map_err(|e| storage_error(ctx, e))?;
        sqlx::query("DELETE FROM agent_capabilities WHERE agent_id = ?")
            .bind(&r.id)
            .execute(&mut *tx)
            .await
            .map_err(|e| storage_error(ctx, e))?;
        if !r.capabilities.is_empty() {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO agent_capabilities (capability, agent_id) ",
            );
            q.push_values(&r.capabilities, |mut b, cap| {
                b.push_bind(cap).push_bind(&r.id);
            });
            q.build()
                .execute(&mut *tx)
                .await
                .map_err(|e| storage_error(ctx, e))?;
        }
        let created = previous.is_none();
        let outbox = events(&agent, created);
        let seqs =
            insert_events(&self.seen, &mut tx, &outbox.iter().collect::<Vec<_>>(), now).await?;
        tx.commit().await.map_err(|e| storage_error(ctx, e))?;
        if let Some(last) = seqs.last() {
            self.head.advance(*last);
        }
        Ok((agent, created))
    }

    async fn save_liveness(
        &self,
        batch: &[(String, Liveness)],
        events: Vec<NewEvent>,
    ) -> Result<(), StorageError> {
        if batch.is_empty() && events.is_empty() {
            return Ok(());
        }
        // Group committed with every other liveness write waiting.
        self.liveness
            .write(LivenessBatch {
                rows: batch.to_vec(),
                events,
            })
            .await
            .map(|_| ())
    }

    async fn load_liveness(&self) -> Result<Vec<(String, Liveness)>, StorageError> {
        let rows = sqlx::query(
            "SELECT id, status, reported_status, current_tasks, performance_metrics, \
                    last_heartbeat_at, status_changed_at, status_version FROM agents",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(|e| storage_error("load liveness", e))?;
        rows.iter()
            .map(|row| {
                let id: String = row
                    .try_get("id")
                    .map_err(|e| storage_error("load liveness", e))?;
                Ok((id, decode_liveness(row)?))
            })
            .collect()
    }

    async fn get_agent(&self, id: &str) -> Result<Option<Agent>, StorageError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM agents WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(|e| storage_error("get agent", e))?;
        row.as_ref().map(decode).transpose()
    }

    async fn list_agents(
        &self,
        filter: &AgentFilter,
        after: Option<&str>,
        limit: u32,
    ) -> Result<AgentPage, StorageError> {
        let ctx = "list agents";
        let mut count = QueryBuilder::<Sqlite>::new("SELECT COUNT(*) FROM agents WHERE 1 = 1");
        push_filter(&mut count, filter);
        let total: i64 = count
            .build_query_scalar()
            .fetch_one(&self.reader)
            .await
            .map_err(|e| storage_error(ctx, e))?;

        let mut q =
            QueryBuilder::<Sqlite>::new(format!("SELECT {COLUMNS} FROM agents WHERE 1 = 1"));
        push_filter(&mut q, filter);
        if let Some(after) = after {
            q.push(" AND id > ").push_bind(after);
        }
        q.push(" ORDER BY id LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = q
            .build()
            .fetch_all(&self.reader)
            .await
            .map_err(|e| storage_error(ctx, e))?;
        let mut agents = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        let next_after = if agents.len() > limit as usize {
            agents.truncate(limit as usize);
            agents.last().map(|a| a.id.clone())
        } else {
            None
        };
        Ok(AgentPage {
            agents,
            total: u64::try_from(total).unwrap_or(0),
            next_after,
        })
    }

    async fn delete_agent(&self, id: &str, event: NewEvent) -> Result<bool, StorageError> {
        let ctx = "delete agent";
        let mut conn = self.writer.lock().await?;
        let mut tx = conn.begin().await.map_err(|e| storage_error(ctx, e))?;
        let done = sqlx::query("DELETE FROM agents WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| storage_error(ctx, e))?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        let seqs = insert_events(&self.seen, &mut tx, &[&event], event.time.unwrap_or(0)).await?;
        tx.commit().await.map_err(|e| storage_error(ctx, e))?;
        if let Some(last) = seqs.last() {
            self.head.advance(*last);
        }
        Ok(true)
    }
}

/// Liveness rows to write, and the events that record their changes.
pub(crate) struct LivenessBatch {
    rows: Vec<(String, Liveness)>,
    events: Vec<NewEvent>,
}

/// Writes batches of liveness with one statement (an `UPDATE ... FROM`
/// over all of them, passed as one JSON array) and their events, in one
/// transaction.
pub(crate) struct LivenessWrite {
    pub(crate) clock: Clock,
    pub(crate) head: super::head::Head,
    pub(crate) seen: Seen,
}

impl SqlxWrite for LivenessWrite {
    type Item = LivenessBatch;
    /// The last event appended for the item, if any.
    type Output = Option<u64>;

    async fn write(
        &self,
        conn: &mut SqliteConnection,
        items: &[Self::Item],
    ) -> Result<Vec<Option<u64>>, StorageError> {
        // One row per agent: the newest of its entries in the batch.
        let mut newest: HashMap<&str, &Liveness> = HashMap::new();
        for (id, live) in items.iter().flat_map(|i| &i.rows) {
            let keep = newest.get(id.as_str()).is_none_or(|old| {
                (live.status_version, live.last_heartbeat_at)
                    >= (old.status_version, old.last_heartbeat_at)
            });
            if keep {
                newest.insert(id, live);
            }
        }
        let rows: Vec<Value> = newest
            .into_iter()
            .map(|(id, l)| {
                serde_json::json!({
                    "id": id,
                    "status": l.status.as_str(),
                    "reported": l.reported_status.as_str(),
                    "tasks": l.current_tasks,
                    "metrics": Value::Object(l.performance_metrics.clone()).to_string(),
                    "seen": l.last_heartbeat_at,
                    "changed": l.status_changed_at,
                    "version": l.status_version,
                })
            })
            .collect();
        sqlx::query(
            "UPDATE agents SET \
               status = CASE WHEN v_version > status_version THEN v_status ELSE status END, \
               status_changed_at = CASE WHEN v_version > status_version \
                                        THEN v_changed ELSE status_changed_at END, \
               status_version = MAX(status_version, v_version), \
               reported_status = CASE WHEN v_seen >= last_heartbeat_at \
                                      THEN v_reported ELSE reported_status END, \
               current_tasks = CASE WHEN v_seen >= last_heartbeat_at \
                                    THEN v_tasks ELSE current_tasks END, \
               performance_metrics = CASE WHEN v_seen >= last_heartbeat_at \
                                          THEN v_metrics ELSE performance_metrics END, \
               last_heartbeat_at = MAX(last_heartbeat_at, v_seen), \
               updated_at = MAX(updated_at, v_seen) \
             FROM (SELECT value ->> 'id' AS v_id, value ->> 'status' AS v_status, \
                          value ->> 'reported' AS v_reported, value ->> 'tasks' AS v_tasks, \
                          value ->> 'metrics' AS v_metrics, value ->> 'seen' AS v_seen, \
                          value ->> 'changed' AS v_changed, value ->> 'version' AS v_version \
                   FROM json_each(?1)) \
             WHERE agents.id = v_id",
        )
        .bind(Value::Array(rows).to_string())
        .execute(&mut *conn)
        .await
        .map_err(|e| storage_error("save liveness", e))?;
        let events: Vec<&NewEvent> = items.iter().flat_map(|i| &i.events).collect();
        let mut seqs = insert_events(&self.seen, conn, &events, self.clock.now_ms())
            .await?
            .into_iter();
        Ok(items
            .iter()
            .map(|i| seqs.by_ref().take(i.events.len()).last())
            .collect())
    }

    fn committed(&self, outputs: &[Option<u64>]) {
        if let Some(last) = outputs.iter().flatten().max() {
            self.head.advance(*last);
        }
    }
}

fn push_statuses(q: &mut QueryBuilder<'_, Sqlite>, statuses: &[AgentStatus]) {
    if statuses.is_empty() {
        return;
    }
    q.push(" AND status IN (");
    let mut sep = q.separated(", ");
    for s in statuses {
        sep.push_bind(s.as_str());
    }
    sep.push_unseparated(")");
}

fn push_filter<'a>(q: &mut QueryBuilder<'a, Sqlite>, filter: &'a AgentFilter) {
    if let Some(t) = &filter.agent_type {
        q.push(" AND agent_type = ").push_bind(t);
    }
    push_statuses(q, &filter.statuses);
    if !filter.capabilities.is_empty() {
        let mut caps = filter.capabilities.clone();
        caps.sort();
        caps.dedup();
        let n = i64::try_from(caps.len()).unwrap_or(i64::MAX);
        q.push(" AND id IN (SELECT agent_id FROM agent_capabilities WHERE capability IN (");
        let mut sep = q.separated(", ");
        for c in caps {
            sep.push_bind(c);
        }
        sep.push_unseparated(") GROUP BY agent_id HAVING COUNT(*) = ");
        q.push_bind(n).push(")");
    }
}

fn json(v: &[String]) -> String {
    Value::from(v.to_vec()).to_string()
}

fn parse_status(s: &str) -> Result<AgentStatus, StorageError> {
    AgentStatus::parse(s).ok_or_else(|| corrupt("agent status", format!("unknown status {s:?}")))
}

fn object(row: &SqliteRow, col: &str) -> Result<Map<String, Value>, StorageError> {
    let text: String = row.try_get(col).map_err(|e| storage_error(col, e))?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(corrupt(col, "not a JSON object")),
        Err(e) => Err(corrupt(col, e)),
    }
}

fn decode(row: &SqliteRow) -> Result<Agent, StorageError> {
    let get = |e| storage_error("decode agent", e);
    let caps: String = row.try_get("capabilities").map_err(get)?;
    let capabilities: Vec<String> =
        serde_json::from_str(&caps).map_err(|e| corrupt("capabilities", e))?;
    let status: String = row.try_get("status").map_err(get)?;
    let reported: String = row.try_get("reported_status").map_err(get)?;
    let max: Option<i64> = row.try_get("max_concurrent_tasks").map_err(get)?;
    let current: i64 = row.try_get("current_tasks").map_err(get)?;
    Ok(Agent {
        id: row.try_get("id").map_err(get)?,
        agent_type: row.try_get("agent_type").map_err(get)?,
        name: row.try_get("name").map_err(get)?,
        version: row.try_get("version").map_err(get)?,
        capabilities,
        endpoint: row.try_get("endpoint").map_err(get)?,
        health_check_url: row.try_get("health_check_url").map_err(get)?,
        configuration: object(row, "configuration")?,
        max_concurrent_tasks: max.and_then(|m| u32::try_from(m).ok()),
        metadata: object(row, "metadata")?,
        status: parse_status(&status)?,
        reported_status: parse_status(&reported)?,
        current_tasks: u32::try_from(current).unwrap_or(u32::MAX),
        performance_metrics: object(row, "performance_metrics")?,
        registered_at: row.try_get("registered_at").map_err(get)?,
        updated_at: row.try_get("updated_at").map_err(get)?,
        last_heartbeat_at: row.try_get("last_heartbeat_at").map_err(get)?,
        status_changed_at: row.try_get("status_changed_at").map_err(get)?,
        status_version: version(row)?,
    })
}

fn version(row: &SqliteRow) -> Result<u64, StorageError> {
    let v: i64 = row
        .try_get("status_version")
        .map_err(|e| storage_error("decode agent", e))?;
    Ok(u64::try_from(v).unwrap_or(0))
}

fn decode_liveness(row: &SqliteRow) -> Result<Liveness, StorageError> {
    let get = |e| storage_error("decode liveness", e);
    let status: String = row.try_get("status").map_err(get)?;
    let reported: String = row.try_get("reported_status").map_err(get)?;
    let current: i64 = row.try_get("current_tasks").map_err(get)?;
    Ok(Liveness {
        status: parse_status(&status)?,
        reported_status: parse_status(&reported)?,
        current_tasks: u32::try_from(current).unwrap_or(u32::MAX),
        performance_metrics: object(row, "performance_metrics")?,
        last_heartbeat_at: row.try_get("last_heartbeat_at").map_err(get)?,
        status_changed_at: row.try_get("status_changed_at").map_err(get)?,
        status_version: version(row)?,
    })
}
