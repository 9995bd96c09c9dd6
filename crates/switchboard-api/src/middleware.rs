//! The middleware stack, in one place.

use std::any::Any;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use switchboard_telemetry::{HttpLabels, Metrics};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;

use crate::context;
use crate::error::ApiError;
use crate::state::ApiConfig;

/// Wraps every route (and the fallbacks) in the stack, outermost first:
///
/// 1. `context`: the correlation id, so that every answer below, even a
///    panic's, carries it;
/// 2. `track`: metrics, outside the panic catcher so a panic counts as the
///    500 the client saw, and outside the timeout so timeouts count;
/// 3. the panic catcher: a bug answers 500 problem+json, never a dropped
///    connection;
/// 4. the request timeout;
/// 5. the body limit, read by the JSON extractor.
pub(crate) fn stack<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    metrics: Metrics,
    config: &ApiConfig,
) -> Router<S> {
    router.layer(
        ServiceBuilder::new()
            .layer(middleware::from_fn(context::layer))
            .layer(middleware::from_fn_with_state(metrics, track))
            .layer(CatchPanicLayer::custom(panic_response))
            .layer(middleware::from_fn_with_state(
                config.request_timeout,
                timeout,
            ))
            .layer(DefaultBodyLimit::max(config.max_body_bytes)),
    )
}

async fn track(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
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
    let resp = next.run(req).await;
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

async fn timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
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

fn panic_response(payload: Box<dyn Any + Send + 'static>) -> Response {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    ApiError::internal(format!("handler panicked: {what}")).into_response()
}
