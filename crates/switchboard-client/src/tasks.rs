//! Tasks and workflows.

use reqwest::{Method, StatusCode};
use switchboard_wire::{
    CancelRequest, ClaimRequest, ClaimResponse, CreateTaskRequest, CreateWorkflowRequest, Task,
    TaskList, UpdateTaskRequest, Workflow, WorkflowList,
};

use crate::{Client, ClientError, encode};

/// Which tasks a listing wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskListQuery {
    /// Statuses (any of).
    pub status: Vec<String>,
    /// Of this type.
    pub task_type: Option<String>,
    /// Held (or last held) by this agent.
    pub agent_id: Option<String>,
    /// Of this workflow.
    pub workflow_id: Option<String>,
    /// Page size.
    pub limit: Option<u32>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
}

impl TaskListQuery {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if !self.status.is_empty() {
            q.push(("status", self.status.join(",")));
        }
        q.extend(self.task_type.clone().map(|v| ("type", v)));
        q.extend(self.agent_id.clone().map(|v| ("agent_id", v)));
        q.extend(self.workflow_id.clone().map(|v| ("workflow_id", v)));
        q.extend(self.limit.map(|v| ("limit", v.to_string())));
        q.extend(self.cursor.clone().map(|v| ("cursor", v)));
        q
    }
}

/// Which workflows a listing wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkflowListQuery {
    /// Statuses (any of).
    pub status: Vec<String>,
    /// Of this project.
    pub project_id: Option<String>,
    /// Page size.
    pub limit: Option<u32>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
}

impl Client {
    /// Creates a task; `true` when it is new (not a repeat).
    pub async fn create_task(&self, req: &CreateTaskRequest) -> Result<(Task, bool), ClientError> {
        let (status, task) = self
            .send(Method::POST, "api/v1/tasks", &[], Some(req))
            .await?;
        Ok((task, status == StatusCode::CREATED))
    }

    /// One task.
    pub async fn get_task(&self, id: &str) -> Result<Task, ClientError> {
        let path = format!("api/v1/tasks/{}", encode(id));
        Ok(self.send::<(), _>(Method::GET, &path, &[], None).await?.1)
    }

    /// A page of tasks.
    pub async fn list_tasks(&self, q: &TaskListQuery) -> Result<TaskList, ClientError> {
        Ok(self
            .send::<(), _>(Method::GET, "api/v1/tasks", &q.pairs(), None)
            .await?
            .1)
    }

    /// Reports on a task the agent holds.
    pub async fn update_task(
        &self,
        id: &str,
        req: &UpdateTaskRequest,
    ) -> Result<Task, ClientError> {
        let path = format!("api/v1/tasks/{}", encode(id));
        Ok(self.send(Method::PATCH, &path, &[], Some(req)).await?.1)
    }

    /// Cancels a task.
    pub async fn cancel_task(&self, id: &str, reason: Option<&str>) -> Result<Task, ClientError> {
        let path = format!("api/v1/tasks/{}/cancel", encode(id));
        let body = CancelRequest {
            reason: reason.map(str::to_owned),
        };
        Ok(self.send(Method::POST, &path, &[], Some(&body)).await?.1)
    }

    /// Asks for work as an agent (a long poll of up to `wait_ms`).
    pub async fn claim_tasks(&self, req: &ClaimRequest) -> Result<Vec<Task>, ClientError> {
        let r: ClaimResponse = self
            .send(Method::POST, "api/v1/tasks/claim", &[], Some(req))
            .await?
            .1;
        Ok(r.tasks)
    }

    /// Creates and starts a workflow; `true` when it is new.
    pub async fn create_workflow(
        &self,
        req: &CreateWorkflowRequest,
    ) -> Result<(Workflow, bool), ClientError> {
        let (status, w) = self
            .send(Method::POST, "api/v1/workflows", &[], Some(req))
            .await?;
        Ok((w, status == StatusCode::CREATED))
    }

    /// One workflow.
    pub async fn get_workflow(&self, id: &str) -> Result<Workflow, ClientError> {
        let path = format!("api/v1/workflows/{}", encode(id));
        Ok(self.send::<(), _>(Method::GET, &path, &[], None).await?.1)
    }

    /// A page of workflows.
    pub async fn list_workflows(&self, q: &WorkflowListQuery) -> Result<WorkflowList, ClientError> {
        let mut pairs = Vec::new();
        if !q.status.is_empty() {
            pairs.push(("status", q.status.join(",")));
        }
        pairs.extend(q.project_id.clone().map(|v| ("project_id", v)));
        pairs.extend(q.limit.map(|v| ("limit", v.to_string())));
        pairs.extend(q.cursor.clone().map(|v| ("cursor", v)));
        Ok(self
            .send::<(), _>(Method::GET, "api/v1/workflows", &pairs, None)
            .await?
            .1)
    }

    /// Cancels a workflow.
    pub async fn cancel_workflow(&self, id: &str) -> Result<Workflow, ClientError> {
        let path = format!("api/v1/workflows/{}/cancel", encode(id));
        Ok(self.send::<(), _>(Method::POST, &path, &[], None).await?.1)
    }
}
