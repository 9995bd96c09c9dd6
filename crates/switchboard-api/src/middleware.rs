//! The middleware stack, in one place.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use switchboard_telemetry::{HttpLabels, Metrics};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

use crate::context;
use crate::error::ApiError;
use crate::state::ApiConfig;

/// Wraps every route (and the fallbacks) in the stack, outermost first:
///
/// 1. the correlation id, so that every answer below, even a panic's,
///    carries it;
/// 2. metrics, outside the panic catcher so a panic counts as the 500 the
///    client saw, and outside the timeout so timeouts count;
/// 3. the panic catcher: a bug answers 500 problem+json, never a dropped
///    connection;
/// 4. the request timeout;
/// 5. the body limit, read by the JSON extractor.
///
/// The first four are one service ([`Stack`]): as separate layers, each
/// cloned the rest of the stack, route included, and boxed it and its own
/// future, for every request.
pub(crate) fn stack<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    metrics: Metrics,
    config: &ApiConfig,
) -> Router<S> {
    router.layer(
        ServiceBuilder::new()
            .layer(StackLayer {
                metrics,
                timeout: config.request_timeout,
            })
            .layer(DefaultBodyLimit::max(config.max_body_bytes)),
    )
}

#[derive(Clone)]
struct StackLayer {
    metrics: Metrics,
    timeout: Duration,
}

impl<S> Layer<S> for StackLayer {
    type Service = Stack<S>;

    fn layer(&self, inner: S) -> Stack<S> {
        Stack {
            inner,
            metrics: self.metrics.clone(),
            timeout: self.timeout,
        }
    }
}

/// The correlation id, metrics, the panic catcher and the timeout around
/// one route.
#[derive(Clone)]
pub(crate) struct Stack<S> {
    inner: S,
    metrics: Metrics,
    timeout: Duration,
}

impl<S> Service<Request> for Stack<S>
where
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
        let inner = self.inner.clone();
        let metrics = self.metrics.clone();
        let limit = self.timeout;
        Box::pin(async move {
            // Bounded label values: known methods only, route templates only.
            let method = match *req.method() {
                Method::GET
                | Method::POST
                | Method::PUT
                | Method::PATCH
                | Method::DELETE
                | Method::HEAD
                | Method::OPTIONS => req.method().as_str().to_owned(),
                _ => "OTHER".to_owned(),
            };
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", MatchedPath::as_str)
                .to_owned();
            let start = Instant::now();
            let resp = context::scoped(req, |req| answer(inner, req, limit)).await;
            metrics.observe_http(
                HttpLabels {
                    method,
                    route,
                    status: resp.status().as_u16(),
                },
                start.elapsed(),
            );
            Ok(resp)
        })
    }
}

/// The route's answer to `req` within `limit`; a panic answers 500.
async fn answer<S>(inner: S, req: Request, limit: Duration) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    let answering = AssertUnwindSafe(inner.oneshot(req)).catch_unwind();
    match tokio::time::timeout(limit, answering).await {
        Ok(Ok(Ok(resp))) => resp,
        Ok(Ok(Err(never))) => match never {},
        Ok(Err(panic)) => panic_response(panic),
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "REQUEST_TIMEOUT",
            format!("the hub did not answer within {limit:?} (http.request_timeout)"),
        )
        .with_retry_after(1)
        .into_response(),
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
