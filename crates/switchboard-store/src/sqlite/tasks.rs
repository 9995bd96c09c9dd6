//! `TaskStore` for SQLite: tasks and workflows as JSON documents, with the
//! fields listings filter on copied into indexed columns.

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};
use switchboard_core::StorageError;
use switchboard_tasks::{
    Active, Changes, Page, Task, TaskFilter, TaskStatus, TaskStore, Workflow, WorkflowFilter,
    WorkflowStatus,
};

use super::SqliteStore;
use super::events::{advance, insert_events};
use crate::{corrupt, storage_error};

/// Rows per INSERT statement (9 parameters each, under SQLite's limit).
const CHUNK: usize = 500;

fn seq(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl TaskStore for SqliteStore {
    async fn apply(&self, changes: Changes) -> Result<(), StorageError> {
        let ctx = |e| storage_error("write tasks", e);
        let now = self.clock.now_ms();
        let tasks: Vec<(&Task, String)> = changes
            .tasks
            .iter()
            .map(|t| serde_json::to_string(t).map(|doc| (t, doc)))
            .collect::<Result<_, _>>()
            .map_err(|e| corrupt("encode task", e))?;
        let workflows: Vec<(&Workflow, String)> = changes
            .workflows
            .iter()
            .map(|w| serde_json::to_string(w).map(|doc| (w, doc)))
            .collect::<Result<_, _>>()
            .map_err(|e| corrupt("encode workflow", e))?;
        let mut tx = self.writer.begin().await.map_err(ctx)?;
        for chunk in tasks.chunks(CHUNK) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO tasks (id, seq, type, status, agent_id, workflow_id, \
                 idempotency_key, updated_at, doc) ",
            );
            q.push_values(chunk, |mut b, (t, doc)| {
                b.push_bind(&t.id)
                    .push_bind(seq(t.seq))
                    .push_bind(&t.task_type)
                    .push_bind(t.status.as_str())
                    .push_bind(&t.agent_id)
                    .push_bind(&t.workflow_id)
                    .push_bind(&t.idempotency_key)
                    .push_bind(t.updated_at)
                    .push_bind(doc);
            });
            q.push(
                " ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
                 agent_id = excluded.agent_id, updated_at = excluded.updated_at, \
                 doc = excluded.doc",
            );
            q.build().execute(&mut *tx).await.map_err(ctx)?;
        }
        for chunk in workflows.chunks(CHUNK) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO workflows (id, seq, status, project_id, idempotency_key, \
                 updated_at, doc) ",
            );
            q.push_values(chunk, |mut b, (w, doc)| {
                b.push_bind(&w.id)
                    .push_bind(seq(w.seq))
                    .push_bind(w.status.as_str())
                    .push_bind(&w.project_id)
                    .push_bind(&w.idempotency_key)
                    .push_bind(w.updated_at)
                    .push_bind(doc);
            });
            q.push(
                " ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
                 updated_at = excluded.updated_at, doc = excluded.doc",
            );
            q.build().execute(&mut *tx).await.map_err(ctx)?;
        }
        let events: Vec<_> = changes.events.iter().collect();
        let seqs = insert_events(&mut tx, &events, now).await?;
        tx.commit().await.map_err(ctx)?;
        if let Some(last) = seqs.last() {
            advance(&self.head, *last);
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
        self.tasks_where("id", ids).await
    }

    async fn tasks_by_key(&self, keys: &[String]) -> Result<Vec<Task>, StorageError> {
        self.tasks_where("idempotency_key", keys).await
    }

    async fn workflows(
        &self,
        ids: &[String],
        keys: &[String],
    ) -> Result<Vec<Workflow>, StorageError> {
        let mut out = Vec::new();
        for (column, values) in [("id", ids), ("idempotency_key", keys)] {
            for chunk in values.chunks(CHUNK) {
                let mut q = QueryBuilder::<Sqlite>::new(format!(
                    "SELECT doc FROM workflows WHERE {column} IN ("
                ));
                let mut sep = q.separated(", ");
                for v in chunk {
                    sep.push_bind(v);
                }
                q.push(")");
                let rows = q
                    .build()
                    .fetch_all(&self.reader)
                    .await
                    .map_err(|e| storage_error("read workflows", e))?;
                for r in &rows {
                    out.push(decode_workflow(r)?);
                }
            }
        }
        Ok(out)
    }

    async fn list_tasks(
        &self,
        filter: &TaskFilter,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Page<Task>, StorageError> {
        let ctx = |e| storage_error("list tasks", e);
        let mut count = QueryBuilder::<Sqlite>::new("SELECT COUNT(*) FROM tasks WHERE 1 = 1");
        push_task_filter(&mut count, filter);
        let total: i64 = count
            .build_query_scalar()
            .fetch_one(&self.reader)
            .await
            .map_err(ctx)?;
        let mut q = QueryBuilder::<Sqlite>::new("SELECT seq, doc FROM tasks WHERE 1 = 1");
        push_task_filter(&mut q, filter);
        if let Some(a) = after {
            q.push(" AND seq > ").push_bind(seq(a));
        }
        q.push(" ORDER BY seq LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = q.build().fetch_all(&self.reader).await.map_err(ctx)?;
        let mut items = rows
            .iter()
            .map(decode_task)
            .collect::<Result<Vec<_>, _>>()?;
        let next_after = page_end(&mut items, limit, |t| t.seq);
        Ok(Page {
            items,
            total: u64::try_from(total).unwrap_or(0),
            next_after,
        })
    }

    async fn list_workflows(
        &self,
        filter: &WorkflowFilter,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Page<Workflow>, StorageError> {
        let ctx = |e| storage_error("list workflows", e);
        let mut count = QueryBuilder::<Sqlite>::new("SELECT COUNT(*) FROM workflows WHERE 1 = 1");
        push_workflow_filter(&mut count, filter);
        let total: i64 = count
            .build_query_scalar()
            .fetch_one(&self.reader)
            .await
            .map_err(ctx)?;
        let mut q = QueryBuilder::<Sqlite>::new("SELECT seq, doc FROM workflows WHERE 1 = 1");
        push_workflow_filter(&mut q, filter);
        if let Some(a) = after {
            q.push(" AND seq > ").push_bind(seq(a));
        }
        q.push(" ORDER BY seq LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = q.build().fetch_all(&self.reader).await.map_err(ctx)?;
        let mut items = rows
            .iter()
            .map(decode_workflow)
            .collect::<Result<Vec<_>, _>>()?;
        let next_after = page_end(&mut items, limit, |w| w.seq);
        Ok(Page {
            items,
            total: u64::try_from(total).unwrap_or(0),
            next_after,
        })
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
    async fn tasks_where(
        &self,
        column: &str,
        values: &[String],
    ) -> Result<Vec<Task>, StorageError> {
        let mut out = Vec::with_capacity(values.len());
        for chunk in values.chunks(CHUNK) {
            let mut q =
                QueryBuilder::<Sqlite>::new(format!("SELECT doc FROM tasks WHERE {column} IN ("));
            let mut sep = q.separated(", ");
            for v in chunk {
                sep.push_bind(v);
            }
            q.push(")");
            let rows = q
                .build()
                .fetch_all(&self.reader)
                .await
                .map_err(|e| storage_error("read tasks", e))?;
            for r in &rows {
                out.push(decode_task(r)?);
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
