//! The routes, one module per resource.

pub(crate) mod agents;
pub(crate) mod audit;
pub(crate) mod auth;
pub(crate) mod events;
pub(crate) mod gateway;
pub(crate) mod groups;
pub(crate) mod keys;
pub(crate) mod messages;
pub(crate) mod system;
pub(crate) mod tasks;
pub(crate) mod vault;
pub(crate) mod webhooks;
pub(crate) mod workflows;
pub(crate) mod ws;

use crate::extract::AppJson;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;

/// The answer to a create that is safe to repeat: 201 with `Location` when
/// it made something, 200 when it found what an earlier call made.
pub(crate) fn created<T: serde::Serialize>(
    location: String,
    created: bool,
    body: T,
) -> impl IntoResponse {
    let mut headers = HeaderMap::new();
    if let Ok(loc) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, loc);
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, headers, AppJson(body))
}
