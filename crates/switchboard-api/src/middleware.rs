//! The middleware stack, in one place.
//!
//! What wraps every request the router answers, outermost first:
//!
//! 1. the correlation id, so that every answer below, even a panic's,
//!    carries it;
//! 2. metrics, outside the panic catcher so a panic counts as the 500 the
//!    client saw, and outside the timeout so timeouts count;
//! 3. the panic catcher: a bug answers 500 problem+json, never a dropped
//!    connection;
//! 4. the request timeout;
//! 5. the router, then on a matched route access control and the body
//!    limit (`access::Guard`), then the handler.
//!
//! The first four are [`Stack`], run by each connection's service around
//! the router (`crate::front`): one future per request. As a layer of the
//! router it would wrap every route, and cost a clone of the route and a
//! boxed future per request.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use switchboard_telemetry::{HttpLabels, Metrics};
use tower::{Layer, Service, ServiceExt};

use crate::context;
use crate::error::ApiError;
use crate::state::ApiConfig;

/// What runs around a service's answer to a request (a route's, or the
/// router's): given a clone of the service, answers the request. [`Wrap`]
/// makes it a layer whose service clones the route once and boxes one
/// future per request.
pub(crate) trait Around: Clone + Send + Sync + 'static {
    fn around<S>(&self, inner: S, req: Request) -> impl Future<Output = Response> + Send + 'static
    where
        S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
        S::Future: Send + 'static;
}

/// The layer of an [`Around`].
#[derive(Clone)]
pub(crate) struct Wrap<W>(pub(crate) W);

impl<W: Clone, S> Layer<S> for Wrap<W> {
    type Service = Wrapped<W, S>;

    fn layer(&self, inner: S) -> Wrapped<W, S> {
        Wrapped {
            around: self.0.clone(),
            inner,
        }
    }
}

/// A route's service inside an [`Around`].
#[derive(Clone)]
pub(crate) struct Wrapped<W, S> {
    around: W,
    inner: S,
}

impl<W, S> Service<Request> for Wrapped<W, S>
where
    W: Around,
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let answer = self.around.around(self.inner.clone(), req);
        Box::pin(async move { Ok(answer.await) })
    }
}

/// The correlation id, metrics, the panic catcher and the timeout. The
/// route label of the metrics is the [`MatchedPath`] the answer carries
/// (put there by `access::Guard`, and by the answer to a method a route
/// does not take); an answer without one counts as `unmatched`.
#[derive(Clone)]
pub(crate) struct Stack {
    metrics: Metrics,
    timeout: Duration,
}

impl Stack {
    pub(crate) fn new(metrics: Metrics, config: &ApiConfig) -> Self {
        Self {
            metrics,
            timeout: config.request_timeout,
        }
    }
}

impl Around for Stack {
    fn around<S>(&self, inner: S, req: Request) -> impl Future<Output = Response> + Send + 'static
    where
        S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
        S::Future: Send + 'static,
    {
        let metrics = self.metrics.clone();
        let limit = self.timeout;
        async move {
            // Bounded label values: known methods only, route templates only.
            let method = match *req.method() {
                Method::GET
                | Method::POST
                | Method::PUT
                | Method::PATCH
                | Method::DELETE
                | Method::HEAD
                | Method::OPTIONS => req.method().as_str(),
                _ => "OTHER",
            };
            let method = method.to_owned();
            let start = Instant::now();
            let resp = context::scoped(req, |req| answer(inner, req, limit)).await;
            let route = resp
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", MatchedPath::as_str)
                .to_owned();
            metrics.observe_http(
                HttpLabels {
                    method,
                    route,
                    status: resp.status().as_u16(),
                },
                start.elapsed(),
            );
            resp
        }
    }
}

/// The route's answer to `req` within `limit`; a panic answers 500.
async fn answer<S>(inner: S, req: Request, limit: Duration) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    match tokio::time::timeout(limit, answered(inner, req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "REQUEST_TIMEOUT",
            format!("the hub did not answer within {limit:?} (http.request_timeout)"),
        )
        .with_retry_after(1)
        .into_response(),
    }
}

/// `inner`'s answer to `req`; a panic answers 500 problem+json.
pub(crate) async fn answered<S>(inner: S, req: Request) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    match AssertUnwindSafe(inner.oneshot(req)).catch_unwind().await {
        Ok(Ok(resp)) => resp,
        Ok(Err(never)) => match never {},
        Err(panic) => panic_response(panic),
    }
}

fn panic_response(payload: Box<dyn Any + Send + 'static>) -> Response {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    ApiError::internal(format!("handler panicked: {what}")).into_response()
}
