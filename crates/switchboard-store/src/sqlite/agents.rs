//! `AgentStore` for SQLite.

use async_trait::async_trait;
use serde_json::{Map, Value};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};
use switchboard_core::{StorageError, UnixMillis};
use switchboard_registry::{
    Agent, AgentFilter, AgentPage, AgentStatus, AgentStore, Heartbeat, HeartbeatOutcome,
    StatusChange, ValidRegistration,
};

use super::SqliteStore;
use crate::{corrupt, storage_error};

const COLUMNS: &str = "id, agent_type, name, version, capabilities, endpoint, health_check_url, \
     configuration, max_concurrent_tasks, metadata, status, reported_status, current_tasks, \
     performance_metrics, registered_at, updated_at, last_heartbeat_at, status_changed_at";

#[async_trait]
impl AgentStore for SqliteStore {
    async fn upsert_agent(
        &self,
        reg: &ValidRegistration,
        now: UnixMillis,
    ) -> Result<(Agent, bool), StorageError> {
        let r = reg.registration();
        let ctx = "register agent";
        let mut tx = self
            .writer
            .begin()
            .await
            .map_err(|e| storage_error(ctx, e))?;
        let existed: Option<(String,)> = sqlx::query_as("SELECT status FROM agents WHERE id = ?")
            .bind(&r.id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| storage_error(ctx, e))?;
        let row = sqlx::query(&format!(
            "INSERT INTO agents ({COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'active', 'active', 0, '{{}}', ?11, ?11, ?11, ?11) \
             ON CONFLICT (id) DO UPDATE SET \
               agent_type = excluded.agent_type, name = excluded.name, version = excluded.version, \
               capabilities = excluded.capabilities, endpoint = excluded.endpoint, \
               health_check_url = excluded.health_check_url, configuration = excluded.configuration, \
               max_concurrent_tasks = excluded.max_concurrent_tasks, metadata = excluded.metadata, \
               status = agents.reported_status, \
               status_changed_at = CASE WHEN agents.status = agents.reported_status \
                                        THEN agents.status_changed_at ELSE ?11 END, \
               updated_at = ?11, last_heartbeat_at = ?11 \
             RETURNING {COLUMNS}"
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
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| storage_error(ctx, e))?;
        let agent = decode(&row)?;
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
        tx.commit().await.map_err(|e| storage_error(ctx, e))?;
        Ok((agent, existed.is_none()))
    }

    async fn record_heartbeat(
        &self,
        id: &str,
        hb: &Heartbeat,
        now: UnixMillis,
    ) -> Result<Option<HeartbeatOutcome>, StorageError> {
        let ctx = "record heartbeat";
        let mut tx = self
            .writer
            .begin()
            .await
            .map_err(|e| storage_error(ctx, e))?;
        let before: Option<(String, String)> =
            sqlx::query_as("SELECT status, reported_status FROM agents WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| storage_error(ctx, e))?;
        let Some((status, reported)) = before else {
            return Ok(None);
        };
        let from = parse_status(&status)?;
        let to = match hb.status {
            Some(s) => s,
            None => parse_status(&reported)?,
        };
        let row = sqlx::query(&format!(
            "UPDATE agents SET status = ?1, reported_status = ?1, \
               current_tasks = COALESCE(?2, current_tasks), \
               performance_metrics = COALESCE(?3, performance_metrics), \
               updated_at = ?4, last_heartbeat_at = ?4, \
               status_changed_at = CASE WHEN status = ?1 THEN status_changed_at ELSE ?4 END \
             WHERE id = ?5 RETURNING {COLUMNS}"
        ))
        .bind(to.as_str())
        .bind(hb.current_tasks.map(i64::from))
        .bind(
            hb.performance_metrics
                .as_ref()
                .map(|m| Value::Object(m.clone()).to_string()),
        )
        .bind(now)
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| storage_error(ctx, e))?;
        let agent = decode(&row)?;
        tx.commit().await.map_err(|e| storage_error(ctx, e))?;
        let change = (from != to).then(|| StatusChange {
            agent_id: id.to_owned(),
            from,
            to,
            at: now,
        });
        Ok(Some(HeartbeatOutcome { agent, change }))
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

    async fn delete_agent(&self, id: &str) -> Result<bool, StorageError> {
        let done = sqlx::query("DELETE FROM agents WHERE id = ?")
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(|e| storage_error("delete agent", e))?;
        Ok(done.rows_affected() > 0)
    }

    async fn count_by_status(&self) -> Result<Vec<(AgentStatus, u64)>, StorageError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM agents GROUP BY status")
                .fetch_all(&self.reader)
                .await
                .map_err(|e| storage_error("count agents", e))?;
        rows.into_iter()
            .map(|(s, n)| Ok((parse_status(&s)?, u64::try_from(n).unwrap_or(0))))
            .collect()
    }

    async fn mark_lapsed(
        &self,
        from: &[AgentStatus],
        to: AgentStatus,
        seen_before: UnixMillis,
        now: UnixMillis,
    ) -> Result<Vec<StatusChange>, StorageError> {
        let ctx = "mark lapsed agents";
        let mut tx = self
            .writer
            .begin()
            .await
            .map_err(|e| storage_error(ctx, e))?;
        let mut select =
            QueryBuilder::<Sqlite>::new("SELECT id, status FROM agents WHERE last_heartbeat_at < ");
        select.push_bind(seen_before);
        push_statuses(&mut select, from);
        let lapsed: Vec<(String, String)> = select
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| storage_error(ctx, e))?;
        if lapsed.is_empty() {
            return Ok(Vec::new());
        }
        let mut update = QueryBuilder::<Sqlite>::new("UPDATE agents SET status = ");
        update
            .push_bind(to.as_str())
            .push(", status_changed_at = ")
            .push_bind(now)
            .push(" WHERE last_heartbeat_at < ")
            .push_bind(seen_before);
        push_statuses(&mut update, from);
        update
            .build()
            .execute(&mut *tx)
            .await
            .map_err(|e| storage_error(ctx, e))?;
        tx.commit().await.map_err(|e| storage_error(ctx, e))?;
        lapsed
            .into_iter()
            .map(|(agent_id, status)| {
                Ok(StatusChange {
                    agent_id,
                    from: parse_status(&status)?,
                    to,
                    at: now,
                })
            })
            .collect()
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
    })
}
