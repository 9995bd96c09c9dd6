//! Response aggregation: one request fanned out to every usable instance
//! of a service (or the first `max` of them), in parallel, answered with
//! each instance's response, or its error, within a deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, header};
use http_body_util::{BodyExt, Limited};

use crate::instances::{Instance, serves};
use crate::proxy::{CallContext, forwarding_headers, full, strip_hop_by_hop};
use crate::{Gateway, GatewayError};

/// The largest instance answer kept.
const ANSWER_LIMIT: usize = 1024 * 1024;

/// One instance's part of an aggregated answer.
#[derive(Debug, Clone)]
pub struct InstanceAnswer {
    /// The agent.
    pub instance: String,
    /// Its HTTP status, when it answered.
    pub status: Option<u16>,
    /// Its `Content-Type`.
    pub content_type: Option<String>,
    /// Its body.
    pub body: Bytes,
    /// Why it has no answer: an error, or the deadline.
    pub error: Option<String>,
    /// How long it took (or was waited for).
    pub elapsed: Duration,
}

/// Every instance's answer.
#[derive(Debug, Clone)]
pub struct Aggregated {
    /// The service.
    pub service: String,
    /// Whether every instance asked answered within the deadline.
    pub complete: bool,
    /// One per instance asked, in instance order.
    pub answers: Vec<InstanceAnswer>,
}

impl Gateway {
    /// Sends `req` to the usable instances of `service` at once.
    pub async fn aggregate(
        &self,
        service: &str,
        req: Request<Bytes>,
        ctx: &CallContext,
        max_instances: Option<u32>,
        deadline: Duration,
    ) -> Result<Aggregated, GatewayError> {
        let state = self
            .service_state(service)
            .ok_or_else(|| GatewayError::NoService(service.to_owned()))?;
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        parts.headers.remove(header::HOST);
        if !state.spec.forward_authorization {
            parts.headers.remove(header::AUTHORIZATION);
        }
        forwarding_headers(&mut parts.headers, ctx);
        let now = Instant::now();
        let mut targets: Vec<Arc<Instance>> = state
            .instances()
            .iter()
            .filter(|i| {
                self.0
                    .registry
                    .presence(&i.agent_id)
                    .is_some_and(|p| serves(p.status))
                    && i.usable(now)
            })
            .cloned()
            .collect();
        if let Some(n) = max_instances {
            targets.truncate(n as usize);
        }
        if targets.is_empty() {
            return Err(GatewayError::Unavailable {
                service: service.to_owned(),
                why: "no usable instance to ask".into(),
            });
        }
        let until = tokio::time::Instant::now() + deadline;
        let asks = targets.iter().map(|inst| {
            let (inst, state, gateway) = (inst.clone(), state.clone(), self.clone());
            let (method, headers, body) =
                (parts.method.clone(), parts.headers.clone(), body.clone());
            let path = ctx.path_and_query.clone();
            async move {
                let started = Instant::now();
                let answer = tokio::time::timeout_at(
                    until,
                    gateway.ask(&state, &inst, method, &path, headers, body),
                )
                .await;
                let elapsed = started.elapsed();
                let id = inst.agent_id.to_string();
                match answer {
                    Ok(Ok((status, content_type, body))) => InstanceAnswer {
                        instance: id,
                        status: Some(status),
                        content_type,
                        body,
                        error: None,
                        elapsed,
                    },
                    Ok(Err(why)) => InstanceAnswer {
                        instance: id,
                        status: None,
                        content_type: None,
                        body: Bytes::new(),
                        error: Some(why),
                        elapsed,
                    },
                    Err(_) => InstanceAnswer {
                        instance: id,
                        status: None,
                        content_type: None,
                        body: Bytes::new(),
                        error: Some(format!("no answer within the deadline of {deadline:?}")),
                        elapsed,
                    },
                }
            }
        });
        let answers = futures_util::future::join_all(asks).await;
        Ok(Aggregated {
            service: service.to_owned(),
            complete: answers.iter().all(|a| a.status.is_some()),
            answers,
        })
    }

    async fn ask(
        &self,
        state: &crate::ServiceState,
        inst: &Arc<Instance>,
        method: http::Method,
        path: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<(u16, Option<String>, Bytes), String> {
        let Some(permit) = inst.breaker().try_acquire(Instant::now()) else {
            return Err("its circuit breaker is open".into());
        };
        let uri = inst.endpoint.origin_form(path).map_err(|e| e.to_string())?;
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .body(full(body))
            .map_err(|e| e.to_string())?;
        *req.headers_mut() = headers;
        let _in_flight = inst.start();
        let resp = match state.client.request(inst, req).await {
            Ok(r) => r,
            Err(e) => {
                self.record_outcome(
                    state,
                    inst,
                    permit,
                    true,
                    switchboard_telemetry::Outcome::Error,
                );
                return Err(e.to_string());
            }
        };
        let status = resp.status();
        self.record_outcome(
            state,
            inst,
            permit,
            status.is_server_error(),
            switchboard_telemetry::Outcome::Status(status.as_u16()),
        );
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = Limited::new(resp.into_body(), ANSWER_LIMIT)
            .collect()
            .await
            .map_err(|e| format!("the answer could not be read: {e}"))?
            .to_bytes();
        Ok((status.as_u16(), content_type, body))
    }
}
