//! The request context: the correlation id and path of the request being
//! answered, reachable from anywhere inside its handling.
//!
//! [`scoped`] (run by the middleware stack for every route, and by the
//! gateway's fast path) takes the correlation id from `X-Correlation-Id`
//! (or `X-Request-Id`) when the client sent a usable one, makes one
//! otherwise, echoes it in the response, and makes it available to
//! [`current`] for the whole request (a task-local, so error bodies built
//! deep inside handlers carry it without threading it through).

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;

/// The response header carrying the correlation id.
pub const CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const MAX_ID_LEN: usize = 128;

/// What is known of the request being answered.
#[derive(Clone, Debug)]
pub(crate) struct RequestContext {
    /// The correlation id.
    pub(crate) correlation_id: Arc<str>,
    /// The request path.
    pub(crate) path: Arc<str>,
}

tokio::task_local! {
    static CONTEXT: RequestContext;
}

/// The context of the request being answered, if any.
pub(crate) fn current() -> Option<RequestContext> {
    CONTEXT.try_with(Clone::clone).ok()
}

fn usable(v: &HeaderValue) -> Option<&str> {
    let s = v.to_str().ok()?;
    (!s.is_empty() && s.len() <= MAX_ID_LEN && s.bytes().all(|b| b.is_ascii_graphic())).then_some(s)
}

fn correlation_id(headers: &HeaderMap) -> Arc<str> {
    headers
        .get(&CORRELATION_ID)
        .and_then(usable)
        .or_else(|| headers.get(&REQUEST_ID).and_then(usable))
        .map_or_else(
            || {
                let mut buf = uuid::Uuid::encode_buffer();
                Arc::from(&*uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf))
            },
            Arc::from,
        )
}

/// Runs `f` with the context of `req` (see [`current`]) and echoes the
/// correlation id on its answer.
pub(crate) async fn scoped<F, Fut>(req: Request, f: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let ctx = RequestContext {
        correlation_id: correlation_id(req.headers()),
        path: Arc::from(req.uri().path()),
    };
    let id = ctx.correlation_id.clone();
    let mut resp = CONTEXT.scope(ctx, f(req)).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(CORRELATION_ID, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlation_ids_are_kept_or_made() {
        let mut h = HeaderMap::new();
        let made = correlation_id(&h);
        let uuid = uuid::Uuid::parse_str(&made).expect("a UUID");
        assert_eq!(uuid.get_version_num(), 7);
        assert_eq!(&*made, uuid.hyphenated().to_string());
        assert_ne!(correlation_id(&h), made);
        h.insert(REQUEST_ID, HeaderValue::from_static("req-1"));
        assert_eq!(&*correlation_id(&h), "req-1");
        h.insert(CORRELATION_ID, HeaderValue::from_static("corr-1"));
        assert_eq!(&*correlation_id(&h), "corr-1");
        h.insert(CORRELATION_ID, HeaderValue::from_static("has space"));
        assert_eq!(&*correlation_id(&h), "req-1");
    }
}
