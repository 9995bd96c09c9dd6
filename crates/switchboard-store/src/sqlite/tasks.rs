//! `TaskStore` for SQLite: tasks and workflows as JSON documents, with the
//! fields listings filter on copied into indexed columns.

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};
use switchboard_core::{StorageError, UnixMillis};
use switchboard_tasks::{
    Active, Changes, Page, Task, TaskFilter, TaskStatus, TaskStore, Workflow, WorkflowFilter,
    WorkflowStatus,
};

use super::SqliteStore;
use super::events::{consecutive, event_row};
use super::writer::rollback;
use crate::{corrupt, storage_error};

/// Rows per `IN (…)` list of a read.
const CHUNK: usize = 500;

/// One engine round, in one transaction: tasks, workflows and events, each
/// kind a JSON array (`?1`, `?2`, `?3`); answers the log's last sequence
/// number. Events go in in array order, so their offsets follow it.
///
/// Each element is read once: one `json_extract` with every column's path
/// gives a small array of the columns (`c`), materialized beside the
/// element's text (`v`, the stored document). Reading each column from
/// `json_each`'s `value` instead renders and parses the whole element once
/// per column, which was half of the writer's time.
const APPLY: &str = "BEGIN; \
    WITH r(c, v) AS MATERIALIZED ( \
      SELECT json_extract(value, '$.id', '$.seq', '$.task_type', '$.status', '$.agent_id', \
               '$.workflow_id', '$.idempotency_key', '$.updated_at'), value \
      FROM json_each(?1)) \
    INSERT INTO tasks (id, seq, type, status, agent_id, workflow_id, idempotency_key, \
                       updated_at, doc) \
      SELECT c ->> 0, c ->> 1, c ->> 2, c ->> 3, c ->> 4, c ->> 5, c ->> 6, c ->> 7, v \
      FROM r WHERE true \
      ON CONFLICT (id) DO UPDATE SET status = excluded.status, agent_id = excluded.agent_id, \
        updated_at = excluded.updated_at, doc = excluded.doc; \
    WITH r(c, v) AS MATERIALIZED ( \
      SELECT json_extract(value, '$.id', '$.seq', '$.status', '$.project_id', \
               '$.idempotency_key', '$.updated_at'), value \
      FROM json_each(?2)) \
    INSERT INTO workflows (id, seq, status, project_id, idempotency_key, updated_at, doc) \
      SELECT c ->> 0, c ->> 1, c ->> 2, c ->> 3, c ->> 4, c ->> 5, v \
      FROM r WHERE true \
      ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
        updated_at = excluded.updated_at, doc = excluded.doc; \
    WITH r(k, c) AS MATERIALIZED ( \
      SELECT key, json_extract(value, '$.id', '$.source', '$.type', '$.topic', '$.subject', \
               '$.time', '$.datacontenttype', '$.data', '$.extensions', '$.size', '$.key') \
      FROM json_each(?3)) \
    INSERT INTO events (id, source, type, topic, subject, time, appended_at, datacontenttype, \
                        data, extensions, size, key) \
      SELECT c ->> 0, c ->> 1, c ->> 2, c ->> 3, c ->> 4, c ->> 5, ?4, c ->> 6, \
             c ->> 7, c ->> 8, c ->> 9, c ->> 10 \
      FROM r ORDER BY k; \
    SELECT seq FROM sqlite_sequence WHERE name = 'events'; \
    COMMIT;";

/// The events as the JSON array [`APPLY`] takes: each row's columns, with
/// `data` and `extensions` as the JSON text they are stored as, but for
/// `appended_at`, bound on its own (`?4`) once the writer is held.
fn events_json(
    events: &[switchboard_bus::NewEvent],
    now: UnixMillis,
) -> Result<String, StorageError> {
    /// One event's columns.
    #[derive(serde::Serialize)]
    struct Row<'a> {
        id: &'a str,
        source: &'a str,
        #[serde(rename = "type")]
        event_type: &'a str,
        topic: &'a str,
        subject: Option<&'a str>,
        time: UnixMillis,
        datacontenttype: &'a str,
        data: Option<&'a str>,
        extensions: String,
        size: i64,
        key: Option<String>,
    }
    let rows: Vec<Row<'_>> = events
        .iter()
        .map(|e| {
            let row = event_row(e);
            Row {
                id: &e.id,
                source: &e.source,
                event_type: &e.event_type,
                topic: &e.topic,
                subject: e.subject.as_deref(),
                time: e.time.unwrap_or(now),
                datacontenttype: &e.datacontenttype,
                data: row.data,
                extensions: row.extensions,
                size: row.size,
                key: row.key,
            }
        })
        .collect();
    serde_json::to_string(&rows).map_err(|e| corrupt("encode events", e))
}

fn seq(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl TaskStore for SqliteStore {
    async fn apply(&self, changes: Changes) -> Result<(), StorageError> {
        let ctx = "write tasks";
        let now = self.clock.now_ms();
        // Each kind of row goes to SQLite as one JSON array that one fixed
        // statement unpacks (`json_each`), and the whole round as one
        // script: the statements are prepared once and reused whatever the
        // round's size, and the round costs one round trip to SQLite's
        // thread (on a busy machine each round trip waits for that thread
        // to be scheduled).
        let tasks =
            serde_json::to_string(&changes.tasks).map_err(|e| corrupt("encode tasks", e))?;
        let workflows = serde_json::to_string(&changes.workflows)
            .map_err(|e| corrupt("encode workflows", e))?;
        let events = events_json(&changes.events, now)?;
        let mut conn = self.writer.lock().await?;
        // Stamped while the writer is held (see `Seen::stamp`).
        let stamp = self.seen.stamp();
        let rows = sqlx::query(APPLY)
            .bind(tasks)
            .bind(workflows)
            .bind(events)
            .bind(stamp)
            .fetch_all(&mut *conn)
            .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                rollback(&mut conn, "task write").await;
                return Err(storage_error(ctx, e));
            }
        };
        if let Some(r) = rows.last() {
            let last: i64 = r.try_get(0).map_err(|e| storage_error(ctx, e))?;
            let last = u64::try_from(last).unwrap_or(0);
            // The round's events took the offsets up to `last`: handed to
            // the window of fresh events, the dispatcher need not read them
            // back.
            if let Some(offsets) = consecutive(last, changes.events.len() as u64) {
                self.seen.note(
                    stamp,
                    changes
                        .events
                        .iter()
                        .zip(offsets.clone())
                        .map(|(e, offset)| (e.source.as_str(), e.id.as_str(), offset)),
                );
                self.recent.push(
                    changes
                        .events
                        .into_iter()
                        .zip(offsets)
                        .map(|(e, offset)| Arc::new(switchboard_bus::Event::new(e, offset, now))),
                );
            }
            self.head.advance(last);
        }
        Ok(())
    }

    async fn load_active(&self) -> Result<Active, StorageError> {
        let ctx = |e| storage_error("load tasks", e);
        let rows = sqlx::query(
            "SELECT doc FROM tasks WHERE status NOT IN ('completed', 'failed', 'timed_out', 'cancelled')",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(ctx)?;
        let tasks = rows.iter().map(decode_task).collect::<Result<_, _>>()?;
        let rows =
            sqlx::query("SELECT doc FROM workflows WHERE status IN ('running', 'compensating')")
                .fetch_all(&self.reader)
                .await
                .map_err(ctx)?;
        let workflows = rows.iter().map(decode_workflow).collect::<Result<_, _>>()?;
        let task_seq: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM tasks")
            .fetch_one(&self.reader)
            .await
            .map_err(ctx)?;
        let workflow_seq: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM workflows")
            .fetch_one(&self.reader)
            .await
            .map_err(ctx)?;
        Ok(Active {
            tasks,
            workflows,
            task_seq: u64::try_from(task_seq).unwrap_or(0),
            workflow_seq: u64::try_from(workflow_seq).unwrap_or(0),
        })
    }

    async fn tasks(&self, ids: &[String]) -> Result<Vec<Task>, StorageError> {
        self.docs_where("tasks", "id", ids, decode_task).await
    }

    async fn tasks_by_key(&self, keys: &[String]) -> Result<Vec<Task>, StorageError> {
        self.docs_where("tasks", "idempotency_key", keys, decode_task)
            .await
    }

    async fn workflows(
        &self,
        ids: &[String],
        keys: &[String],
    ) -> Result<Vec<Workflow>, StorageError> {
        let mut out = self
            .docs_where("workflows", "id", ids, decode_workflow)
            .await?;
        let by_key = self
            .docs_where("workflows", "idempotency_key", keys, decode_workflow)
            .await?;
        out.extend(by_key.into_iter().filter(|w| !ids.contains(&w.id)));
        Ok(out)
    }

    async fn list_tasks(
        &self,
        filter: &TaskFilter,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Page<Task>, StorageError> {
        let push = |q: &mut QueryBuilder<'_, Sqlite>| push_task_filter(q, filter);
        self.page("tasks", push, after, limit, decode_task, |t| t.seq)
            .await
    }

    async fn list_workflows(
        &self,
        filter: &WorkflowFilter,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Page<Workflow>, StorageError> {
        let push = |q: &mut QueryBuilder<'_, Sqlite>| push_workflow_filter(q, filter);
        self.page("workflows", push, after, limit, decode_workflow, |w| w.seq)
            .await
    }

    async fn count_tasks(&self) -> Result<Vec<(TaskStatus, u64)>, StorageError> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM tasks GROUP BY status")
            .fetch_all(&self.reader)
            .await
            .map_err(|e| storage_error("count tasks", e))?;
        counts(&rows, TaskStatus::parse)
    }

    async fn count_workflows(&self) -> Result<Vec<(WorkflowStatus, u64)>, StorageError> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM workflows GROUP BY status")
            .fetch_all(&self.reader)
            .await
            .map_err(|e| storage_error("count workflows", e))?;
        counts(&rows, WorkflowStatus::parse)
    }
}

impl SqliteStore {
    /// A page of `table`'s records (those `push_filter` keeps) in creation
    /// order after `after`, with how many match in all.
    async fn page<T>(
        &self,
        table: &str,
        push_filter: impl Fn(&mut QueryBuilder<'_, Sqlite>),
        after: Option<u64>,
        limit: u32,
        decode: fn(&SqliteRow) -> Result<T, StorageError>,
        seq_of: fn(&T) -> u64,
    ) -> Result<Page<T>, StorageError> {
        let ctx = |e| storage_error(&format!("list {table}"), e);
        let mut count =
            QueryBuilder::<Sqlite>::new(format!("SELECT COUNT(*) FROM {table} WHERE 1 = 1"));
        push_filter(&mut count);
        let total: i64 = count
            .build_query_scalar()
            .fetch_one(&self.reader)
            .await
            .map_err(ctx)?;
        let mut q =
            QueryBuilder::<Sqlite>::new(format!("SELECT seq, doc FROM {table} WHERE 1 = 1"));
        push_filter(&mut q);
        if let Some(a) = after {
            q.push(" AND seq > ").push_bind(seq(a));
        }
        q.push(" ORDER BY seq LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = q.build().fetch_all(&self.reader).await.map_err(ctx)?;
        let mut items = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        let next_after = page_end(&mut items, limit, seq_of);
        Ok(Page {
            items,
            total: u64::try_from(total).unwrap_or(0),
            next_after,
        })
    }

    /// The records of `table` whose `column` is one of `values`.
    async fn docs_where<T>(
        &self,
        table: &str,
        column: &str,
        values: &[String],
        decode: fn(&SqliteRow) -> Result<T, StorageError>,
    ) -> Result<Vec<T>, StorageError> {
        let mut out = Vec::with_capacity(values.len());
        for chunk in values.chunks(CHUNK) {
            let mut q =
                QueryBuilder::<Sqlite>::new(format!("SELECT doc FROM {table} WHERE {column} IN ("));
            let mut sep = q.separated(", ");
            for v in chunk {
                sep.push_bind(v);
            }
            q.push(")");
            let rows = q
                .build()
                .fetch_all(&self.reader)
                .await
                .map_err(|e| storage_error(&format!("read {table}"), e))?;
            for r in &rows {
                out.push(decode(r)?);
            }
        }
        Ok(out)
    }
}

/// Trims the extra row a page query asks for; the `seq` to continue after.
fn page_end<T>(items: &mut Vec<T>, limit: u32, seq: impl Fn(&T) -> u64) -> Option<u64> {
    if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(seq)
    } else {
        None
    }
}

fn counts<S>(
    rows: &[SqliteRow],
    parse: impl Fn(&str) -> Option<S>,
) -> Result<Vec<(S, u64)>, StorageError> {
    let mut out = Vec::new();
    for r in rows {
        let status: String = r.try_get("status").map_err(|e| storage_error("count", e))?;
        let n: i64 = r.try_get("n").map_err(|e| storage_error("count", e))?;
        if let Some(s) = parse(&status) {
            out.push((s, u64::try_from(n).unwrap_or(0)));
        }
    }
    Ok(out)
}

fn push_task_filter(q: &mut QueryBuilder<'_, Sqlite>, f: &TaskFilter) {
    if !f.statuses.is_empty() {
        q.push(" AND status IN (");
        let mut sep = q.separated(", ");
        for s in &f.statuses {
            sep.push_bind(s.as_str());
        }
        q.push(")");
    }
    if let Some(t) = &f.task_type {
        q.push(" AND type = ").push_bind(t.clone());
    }
    if let Some(a) = &f.agent_id {
        q.push(" AND agent_id = ").push_bind(a.clone());
    }
    if let Some(w) = &f.workflow_id {
        q.push(" AND workflow_id = ").push_bind(w.clone());
    }
}

fn push_workflow_filter(q: &mut QueryBuilder<'_, Sqlite>, f: &WorkflowFilter) {
    if !f.statuses.is_empty() {
        q.push(" AND status IN (");
        let mut sep = q.separated(", ");
        for s in &f.statuses {
            sep.push_bind(s.as_str());
        }
        q.push(")");
    }
    if let Some(p) = &f.project_id {
        q.push(" AND project_id = ").push_bind(p.clone());
    }
}

fn decode_task(row: &SqliteRow) -> Result<Task, StorageError> {
    let doc: String = row
        .try_get("doc")
        .map_err(|e| storage_error("decode task", e))?;
    serde_json::from_str(&doc).map_err(|e| corrupt("decode task", e))
}

fn decode_workflow(row: &SqliteRow) -> Result<Workflow, StorageError> {
    let doc: String = row
        .try_get("doc")
        .map_err(|e| storage_error("decode workflow", e))?;
    serde_json::from_str(&doc).map_err(|e| corrupt("decode workflow", e))
}
