//! `/api/v1/events`: publish, read the log, and stream live (SSE).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{FromRequestParts, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::Stream;
use serde_json::{Map, Value};
use switchboard_bus::{Bus, Filter, Pattern, ReadFrom, Start, SubscriptionSpec};
use switchboard_core::FieldError;
use switchboard_wire::{EventPage, Problem, PublishAck, PublishEvent};

use crate::access::Caller;
use crate::convert;
use crate::error::ApiError;
use crate::extract::{AppJson, JsonText, RawBody, parse_any};

/// The page size of `GET /api/v1/events` when `limit` is absent.
const DEFAULT_READ: u32 = 100;
/// How often an idle stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Publish events: one CloudEvent (a JSON object), a batch (a JSON array,
/// or `application/cloudevents-batch+json`), or one event in HTTP binary
/// mode (`ce-*` headers, the body is the data). Answers once every event is
/// durable, with each one's offset. With `transient=true` the events are
/// not logged: they are handed at once to the live subscriptions that
/// match (no offset, no replay, no consumer group, at most once), and the
/// answer says how many each reached.
#[utoipa::path(
    post,
    path = "/api/v1/events",
    security(("bearer" = ["events:publish"])),
    tag = "events",
    params(
        ("transient" = Option<bool>, Query, description = "true: deliver to live subscriptions only, without logging (default false)"),
    ),
    request_body(content = PublishEvent, description = "A CloudEvent, or an array of them"),
    responses(
        (status = 200, description = "Transient: handed to live subscriptions", body = PublishAck),
        (status = 201, description = "Durable, with offsets", body = PublishAck),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON and not binary mode", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid attributes, each named", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn publish(
    State(bus): State<Bus>,
    State(auth): State<switchboard_auth::Auth>,
    caller: Caller,
    mode: BodyMode,
    RawQuery(query): RawQuery,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let transient = parse_transient(query.as_deref().unwrap_or(""))?;
    let events = if let BodyMode::Binary(headers) = &mode {
        vec![convert::binary_event(headers, &body)?]
    } else if let BodyMode::Json = mode {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        let given: Vec<PublishEvent> = if first == Some(&b'[') {
            parse_any(&body, "events")?
        } else {
            vec![crate::extract::parse(&body)?]
        };
        convert::publish_batch(given).map_err(ApiError::validation)?
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "send JSON (application/json, application/cloudevents+json, \
             application/cloudevents-batch+json) or an event in binary mode (ce-* headers)",
        ));
    };
    let mut events = events;
    for e in &mut events {
        caller.stamp_publish(&auth, e)?;
    }
    if transient {
        let delivered = bus.publish_transient(events)?;
        return Ok((
            StatusCode::OK,
            AppJson(PublishAck {
                events: delivered.into_iter().map(convert::delivered).collect(),
            }),
        )
            .into_response());
    }
    let stored = bus.publish(events).await?;
    Ok((StatusCode::CREATED, JsonText(convert::publish_ack(&stored))).into_response())
}

/// How a publish's body is read, told by its headers: an event in binary
/// mode (its attributes are the `ce-*` headers, copied), JSON, or neither.
pub(crate) enum BodyMode {
    Binary(HeaderMap),
    Json,
    Other,
}

impl<S: Send + Sync> FromRequestParts<S> for BodyMode {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        let headers = &parts.headers;
        Ok(if headers.contains_key("ce-specversion") {
            Self::Binary(headers.clone())
        } else if crate::extract::is_json(headers.get(header::CONTENT_TYPE)) {
            Self::Json
        } else {
            Self::Other
        })
    }
}

/// The publish's query: `transient` (`true` or `false`) and nothing else.
fn parse_transient(raw: &str) -> Result<bool, ApiError> {
    let mut transient = false;
    let mut errs = Vec::new();
    for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
        match key.as_ref() {
            "transient" => match value.as_ref() {
                "true" => transient = true,
                "false" => transient = false,
                _ => errs.push(FieldError::new("transient", "must be true or false")),
            },
            // A credential, read by the access layer.
            "access_token" => {}
            other => errs.push(FieldError::new(
                other,
                "is not a known parameter; use transient",
            )),
        }
    }
    if errs.is_empty() {
        Ok(transient)
    } else {
        Err(ApiError::invalid_query(errs))
    }
}

/// What a read or a stream asks for.
struct Selection {
    patterns: Vec<Pattern>,
    filter: Filter,
    start: Option<ReadFrom>,
    limit: u32,
}

fn parse_selection(raw: &str, headers: Option<&HeaderMap>) -> Result<Selection, ApiError> {
    let mut sel = Selection {
        patterns: Vec::new(),
        filter: Filter::default(),
        start: None,
        limit: DEFAULT_READ,
    };
    let mut errs = Vec::new();
    for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
        match key.as_ref() {
            "topic" => {
                for p in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    match Pattern::parse(p) {
                        Ok(p) => sel.patterns.push(p),
                        Err(r) => errs.push(FieldError::new("topic", format!("{p:?}: {r}"))),
                    }
                }
            }
            "filter" => match serde_json::from_str::<Map<String, Value>>(&value) {
                Ok(spec) => match Filter::parse(&spec) {
                    Ok(f) => sel.filter = f,
                    Err(r) => errs.push(FieldError::new("filter", r)),
                },
                Err(e) => errs.push(FieldError::new(
                    "filter",
                    format!("must be a JSON object of field: value(s) ({e})"),
                )),
            },
            "after" => match value.parse::<u64>() {
                Ok(o) => sel.start = Some(ReadFrom::After(o)),
                Err(_) => errs.push(FieldError::new(
                    "after",
                    "must be an offset (a whole number)",
                )),
            },
            "from_time" => match chrono::DateTime::parse_from_rfc3339(&value) {
                Ok(t) => sel.start = Some(ReadFrom::Time(t.timestamp_millis())),
                Err(e) => errs.push(FieldError::new(
                    "from_time",
                    format!("must be an RFC 3339 time like 2026-01-15T12:00:00Z ({e})"),
                )),
            },
            "limit" => match value.parse::<u32>() {
                Ok(n) if (1..=switchboard_bus::MAX_READ).contains(&n) => sel.limit = n,
                _ => errs.push(FieldError::new(
                    "limit",
                    format!(
                        "must be a whole number from 1 to {}",
                        switchboard_bus::MAX_READ
                    ),
                )),
            },
            // The credential of an EventSource, read by the access layer.
            "access_token" if headers.is_some() => {}
            other => errs.push(FieldError::new(
                other,
                "is not a known parameter; use topic, filter, after, from_time or limit",
            )),
        }
    }
    // A reconnecting EventSource sends the last id it saw.
    if let Some(last) = headers.and_then(|h| h.get("last-event-id")) {
        match last
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            Some(o) => sel.start = Some(ReadFrom::After(o)),
            None => errs.push(FieldError::new("Last-Event-ID", "must be an offset")),
        }
    }
    if errs.is_empty() {
        Ok(sel)
    } else {
        Err(ApiError::invalid_query(errs))
    }
}

/// Read the log: events matching `topic` patterns (any, comma-separated or
/// repeated; all topics when absent) and `filter`, after an offset or from
/// a time, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    security(("bearer" = ["events:subscribe"])),
    tag = "events",
    params(
        ("topic" = Option<String>, Query, description = "Topic patterns (`*` one token, `>` the rest)"),
        ("filter" = Option<String>, Query, description = r#"Payload filter as JSON: {"priority": ["high", "critical"]}"#),
        ("after" = Option<u64>, Query, description = "Start after this offset (default 0: the beginning)"),
        ("from_time" = Option<String>, Query, description = "Start at events appended at or after this RFC 3339 time"),
        ("limit" = Option<u32>, Query, description = "At most this many events, 1 to 1000 (default 100)"),
    ),
    responses(
        (status = 200, description = "Events, oldest first", body = EventPage),
        (status = 400, description = "Invalid query parameters, each named", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn read(
    State(bus): State<Bus>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<JsonText, ApiError> {
    let sel = parse_selection(query.as_deref().unwrap_or(""), None)?;
    caller.may_subscribe_all(&sel.patterns)?;
    let from = sel.start.unwrap_or(ReadFrom::After(0));
    let (events, next) = bus
        .read(&sel.patterns, &sel.filter, from, sel.limit)
        .await?;
    Ok(JsonText(convert::event_page(&events, next)))
}

/// Stream events as Server-Sent Events: each message's `id` is the event's
/// offset and its data the CloudEvent. Starts with the next event, or after
/// `after` / at `from_time` (replaying the log), or after `Last-Event-ID`
/// when a client reconnects. A slow reader is caught up from the log, never
/// dropped. The stream ends when the caller's token expires; reconnect
/// with a fresh one and `Last-Event-ID`. Browsers, whose EventSource sends
/// no headers, may pass the token as `access_token`.
#[utoipa::path(
    get,
    path = "/api/v1/events/stream",
    security(("bearer" = ["events:subscribe"])),
    tag = "events",
    params(
        ("topic" = Option<String>, Query, description = "Topic patterns (all topics when absent)"),
        ("filter" = Option<String>, Query, description = "Payload filter as JSON"),
        ("after" = Option<u64>, Query, description = "Replay after this offset, then go live"),
        ("from_time" = Option<String>, Query, description = "Replay from this RFC 3339 time, then go live"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this offset"),
    ),
    responses(
        (status = 200, description = "An endless stream of events", content_type = "text/event-stream", body = String),
        (status = 400, description = "Invalid query parameters, each named", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn stream(
    State(bus): State<Bus>,
    caller: Caller,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let sel = parse_selection(query.as_deref().unwrap_or(""), Some(&headers))?;
    caller.may_subscribe_all(&sel.patterns)?;
    let expiry = caller.expiry();
    let start = match sel.start {
        None => Start::Now,
        Some(ReadFrom::After(o)) => Start::After(o),
        Some(ReadFrom::Time(t)) => Start::Time(t),
    };
    let sub = bus.subscribe(SubscriptionSpec {
        patterns: sel.patterns,
        filter: sel.filter,
        start,
    });
    let events = futures_util::stream::unfold(sub, |mut sub| async move {
        match sub.next().await {
            Ok(e) => {
                let body = convert::cloud_event_json(&e);
                let event = SseEvent::default().data(&*body);
                // A transient event has no offset: without an id, the
                // client's Last-Event-ID stays the last logged event's.
                let event = if e.is_logged() {
                    event.id(e.offset.to_string())
                } else {
                    event
                };
                Some((Ok(event), sub))
            }
            Err(error) => {
                tracing::debug!(%error, "event stream ended");
                None
            }
        }
    });
    let events = futures_util::StreamExt::take_until(events, expiry);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
