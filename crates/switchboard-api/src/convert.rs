//! Domain types to wire types and back, by hand.

pub(crate) mod tasks;

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use switchboard_bus as bus;
use switchboard_core::{FieldErrors, UnixMillis};
use switchboard_registry as reg;
use switchboard_wire as wire;

pub(crate) fn time(ms: UnixMillis) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

pub(crate) fn status(s: reg::AgentStatus) -> wire::AgentStatus {
    match s {
        reg::AgentStatus::Active => wire::AgentStatus::Active,
        reg::AgentStatus::Idle => wire::AgentStatus::Idle,
        reg::AgentStatus::Busy => wire::AgentStatus::Busy,
        reg::AgentStatus::Draining => wire::AgentStatus::Draining,
        reg::AgentStatus::Stale => wire::AgentStatus::Stale,
        reg::AgentStatus::Offline => wire::AgentStatus::Offline,
    }
}

pub(crate) fn reported(s: wire::ReportedStatus) -> reg::AgentStatus {
    match s {
        wire::ReportedStatus::Active => reg::AgentStatus::Active,
        wire::ReportedStatus::Idle => reg::AgentStatus::Idle,
        wire::ReportedStatus::Busy => reg::AgentStatus::Busy,
        wire::ReportedStatus::Draining => reg::AgentStatus::Draining,
    }
}

pub(crate) fn agent(a: reg::Agent) -> wire::Agent {
    let load = a.load();
    wire::Agent {
        id: a.id,
        agent_type: a.agent_type,
        name: a.name,
        version: a.version,
        capabilities: a.capabilities,
        endpoint: a.endpoint,
        health_check_url: a.health_check_url,
        configuration: a.configuration,
        metadata: a.metadata,
        status: status(a.status),
        reported_status: status(a.reported_status),
        current_tasks: a.current_tasks,
        max_concurrent_tasks: a.max_concurrent_tasks,
        load,
        performance_metrics: a.performance_metrics,
        registered_at: time(a.registered_at),
        updated_at: time(a.updated_at),
        last_heartbeat_at: time(a.last_heartbeat_at),
        status_changed_at: time(a.status_changed_at),
        credentials: None,
    }
}

pub(crate) fn ack(a: reg::HeartbeatAck) -> wire::HeartbeatAck {
    wire::HeartbeatAck {
        agent_id: a.agent_id,
        status: status(a.status),
        recorded_at: time(a.recorded_at),
        heartbeat_interval_ms: a.interval_ms,
    }
}

pub(crate) fn registration(r: wire::RegisterAgentRequest) -> reg::Registration {
    reg::Registration {
        id: r.id,
        agent_type: r.agent_type,
        name: r.name,
        version: r.version,
        capabilities: r.capabilities,
        endpoint: r.endpoint,
        health_check_url: r.health_check_url,
        configuration: r.configuration.unwrap_or_default(),
        metadata: r.metadata.unwrap_or_default(),
    }
}

pub(crate) fn heartbeat(h: wire::HeartbeatRequest) -> reg::Heartbeat {
    reg::Heartbeat {
        status: h.status.map(reported),
        current_tasks: h.current_tasks,
        performance_metrics: h.performance_metrics.map(|m| {
            m.into_iter()
                .map(|(k, v)| {
                    let n = serde_json::Number::from_f64(v)
                        .map_or(serde_json::Value::Null, serde_json::Value::Number);
                    (k, n)
                })
                .collect()
        }),
    }
}

/// The source of events published without one.
pub(crate) const DEFAULT_SOURCE: &str = "/switchboard/api";

/// A published event to a bus event, filling the defaults; problems go to
/// `errs` under `prefix`.
pub(crate) fn new_event(
    e: wire::PublishEvent,
    prefix: &str,
    errs: &mut FieldErrors,
) -> Option<bus::NewEvent> {
    if e.specversion
        .as_deref()
        .is_some_and(|v| v != bus::event::SPEC_VERSION)
    {
        errs.push(format!("{prefix}specversion"), "must be 1.0");
    }
    let (topic, event_type) = match (e.topic, e.event_type) {
        (Some(t), Some(ty)) => (t, ty),
        (Some(t), None) => (t.clone(), t),
        (None, Some(ty)) => (ty.clone(), ty),
        (None, None) => {
            errs.push(format!("{prefix}topic"), "give a topic, a type, or both");
            return None;
        }
    };
    Some(bus::NewEvent {
        id: e.id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        source: e.source.unwrap_or_else(|| DEFAULT_SOURCE.to_owned()),
        event_type,
        topic,
        subject: e.subject,
        time: e.time.map(|t| t.timestamp_millis()),
        datacontenttype: e
            .datacontenttype
            .unwrap_or_else(|| "application/json".to_owned()),
        data: e.data.map(|d| bus::Data::from_raw(d.into_raw())),
        extensions: e.extensions,
    })
}

/// Published events to bus events, checked: every bad field of every
/// event is named (`events[2].topic` in a batch), or none is returned.
pub(crate) fn publish_batch(
    given: Vec<wire::PublishEvent>,
) -> Result<Vec<bus::NewEvent>, Vec<switchboard_core::FieldError>> {
    let batch = given.len() > 1;
    let mut errs = FieldErrors::new();
    let mut events = Vec::with_capacity(given.len());
    for (i, e) in given.into_iter().enumerate() {
        let prefix = if batch {
            format!("events[{i}].")
        } else {
            String::new()
        };
        if let Some(e) = new_event(e, &prefix, &mut errs) {
            // Checked here too, so one answer names every bad field of
            // every event, in order.
            e.check(&prefix, &mut errs);
            events.push(e);
        }
    }
    errs.finish().map(|()| events)
}

/// An event in HTTP binary mode: attributes in `ce-*` headers, the body is
/// the data.
pub(crate) fn binary_event(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<bus::NewEvent, crate::ApiError> {
    let mut errs = FieldErrors::new();
    let mut attrs: Map<String, Value> = Map::new();
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        match value.to_str() {
            Ok(v) => {
                attrs.insert(attr.to_owned(), Value::String(v.to_owned()));
            }
            Err(_) => errs.push(format!("ce-{attr}"), "must be visible ASCII"),
        }
    }
    let take = |attrs: &mut Map<String, Value>, k: &str| {
        attrs.remove(k).and_then(|v| v.as_str().map(str::to_owned))
    };
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let data = if body.is_empty() {
        None
    } else if crate::extract::is_json(headers.get(axum::http::header::CONTENT_TYPE))
        || !headers.contains_key(axum::http::header::CONTENT_TYPE)
    {
        match serde_json::from_slice::<wire::Payload>(body) {
            Ok(v) => Some(v),
            Err(e) => {
                return Err(crate::ApiError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "MALFORMED_JSON",
                    format!("the body (the event's data) is not valid JSON: {e}"),
                ));
            }
        }
    } else if content_type.to_ascii_lowercase().starts_with("text/") {
        match std::str::from_utf8(body) {
            Ok(s) => Some(wire::Payload::from(Value::String(s.to_owned()))),
            Err(_) => {
                errs.push("body", "text data must be UTF-8");
                None
            }
        }
    } else {
        errs.push(
            "content-type",
            "binary mode takes JSON or text data; send other bytes base64-encoded in JSON",
        );
        None
    };
    let time = match take(&mut attrs, "time") {
        None => None,
        Some(t) => match chrono::DateTime::parse_from_rfc3339(&t) {
            Ok(t) => Some(t.timestamp_millis()),
            Err(e) => {
                errs.push("ce-time", format!("must be an RFC 3339 time ({e})"));
                None
            }
        },
    };
    let published = wire::PublishEvent {
        specversion: take(&mut attrs, "specversion"),
        id: take(&mut attrs, "id"),
        source: take(&mut attrs, "source"),
        event_type: take(&mut attrs, "type"),
        topic: take(&mut attrs, "topic"),
        subject: take(&mut attrs, "subject"),
        time: None,
        datacontenttype: Some(content_type),
        data,
        extensions: attrs,
    };
    let event = new_event(published, "ce-", &mut errs);
    errs.finish().map_err(crate::ApiError::validation)?;
    let mut event = event.ok_or_else(|| crate::ApiError::internal("binary event lost"))?;
    event.time = time;
    Ok(event)
}

/// An event's CloudEvents JSON text, rendered once per event however many
/// subscribers it goes to.
pub(crate) fn cloud_event_json(e: &bus::Event) -> std::sync::Arc<str> {
    e.rendered.get_or_init(|| {
        let mut out = Vec::with_capacity(256);
        write_cloud_event(&mut out, e);
        // Only UTF-8 text was written.
        String::from_utf8(out).unwrap_or_else(|_| "{}".to_owned())
    })
}

/// Writes [`wire::CloudEvent`]'s JSON form (the same bytes `serde_json`
/// writes for it) from a borrowed event: no copy of its strings, data and
/// extensions, and strings that need no escaping copied whole (serde_json
/// looks at each byte in turn, which cost a tenth of a live delivery).
fn write_cloud_event(out: &mut Vec<u8>, e: &bus::Event) {
    let field = |out: &mut Vec<u8>, name: &str| {
        out.push(b',');
        json_str(out, name);
        out.push(b':');
    };
    out.extend_from_slice(b"{\"specversion\":");
    json_str(out, bus::event::SPEC_VERSION);
    field(out, "id");
    json_str(out, &e.id);
    field(out, "source");
    json_str(out, &e.source);
    field(out, "type");
    json_str(out, &e.event_type);
    field(out, "topic");
    json_str(out, &e.topic);
    if e.is_logged() {
        field(out, "offset");
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &e.offset);
    }
    if let Some(subject) = &e.subject {
        field(out, "subject");
        json_str(out, subject);
    }
    field(out, "time");
    rfc3339(out, e.time);
    field(out, "datacontenttype");
    json_str(out, &e.datacontenttype);
    if let Some(data) = &e.data {
        field(out, "data");
        out.extend_from_slice(data.json().as_bytes());
    }
    for (k, v) in &e.extensions {
        out.push(b',');
        json_str(out, k);
        out.push(b':');
        json_value(out, v);
    }
    out.push(b'}');
}

/// The answer to a publish, `{"op":"published","ref":…,"events":[…]}`,
/// through serde.
pub(crate) fn published_answer(reference: Option<&str>, events: Vec<wire::Published>) -> String {
    #[derive(serde::Serialize)]
    struct Answer<'a> {
        op: &'static str,
        #[serde(rename = "ref")]
        reference: Option<&'a str>,
        events: Vec<wire::Published>,
    }
    let answer = Answer {
        op: "published",
        reference,
        events,
    };
    serde_json::to_string(&answer).unwrap_or_else(|_| "{}".to_owned())
}

/// The answer to a publish, `{"op":"published","ref":…,"events":[…]}`,
/// written directly: the same bytes as [`published_answer`] of
/// [`published`] of each event, without a copy of each id and topic.
pub(crate) fn published_frame(reference: Option<&str>, accepted: &[bus::Accepted]) -> String {
    let mut out = Vec::with_capacity(48 + 80 * accepted.len());
    out.extend_from_slice(b"{\"op\":\"published\",\"ref\":");
    match reference {
        Some(r) => json_str(&mut out, r),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"events\":");
    published_list(&mut out, accepted);
    out.push(b'}');
    // Only UTF-8 text was written.
    String::from_utf8(out).unwrap_or_else(|_| "{}".to_owned())
}

/// A page of the log as `GET /api/v1/events` answers it, a
/// [`wire::EventPage`], written around each event's rendering (see
/// [`cloud_event_json`]).
pub(crate) fn event_page(events: &[bus::Event], next_after: u64) -> Vec<u8> {
    let rendered: Vec<_> = events.iter().map(cloud_event_json).collect();
    let size = rendered.iter().map(|r| r.len() + 1).sum::<usize>();
    let mut out = Vec::with_capacity(40 + size);
    out.extend_from_slice(b"{\"events\":[");
    for (i, r) in rendered.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(r.as_bytes());
    }
    out.extend_from_slice(b"],\"next_after\":");
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, &next_after);
    out.push(b'}');
    out
}

/// A consumer group's `delivery` frame of the WebSocket protocol, written
/// around the event's rendering (made once per event, see
/// [`cloud_event_json`]): the JSON serde writes for these fields and
/// [`cloud_event`] of the event.
pub(crate) fn delivery_frame(sub: &str, d: &bus::groups::Delivery) -> String {
    let event = cloud_event_json(&d.event);
    let mut out = Vec::with_capacity(112 + sub.len() + d.group.len() + event.len());
    out.extend_from_slice(b"{\"op\":\"delivery\",\"sub\":");
    json_str(&mut out, sub);
    out.extend_from_slice(b",\"group\":");
    json_str(&mut out, &d.group);
    // Writing to a Vec cannot fail.
    out.extend_from_slice(b",\"offset\":");
    let _ = serde_json::to_writer(&mut out, &d.offset);
    out.extend_from_slice(b",\"attempt\":");
    let _ = serde_json::to_writer(&mut out, &d.attempt);
    out.extend_from_slice(b",\"deadline\":");
    rfc3339(&mut out, d.deadline);
    out.extend_from_slice(b",\"event\":");
    out.extend_from_slice(event.as_bytes());
    out.push(b'}');
    // Only UTF-8 text was written.
    String::from_utf8(out).unwrap_or_else(|_| "{}".to_owned())
}

/// The answer of `POST /api/v1/events` to a logged publish, `{"events":
/// […]}`, written directly: the same bytes as a [`wire::PublishAck`] of
/// [`published`] of each event through serde.
pub(crate) fn publish_ack(accepted: &[bus::Accepted]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 80 * accepted.len());
    out.extend_from_slice(b"{\"events\":");
    published_list(&mut out, accepted);
    out.push(b'}');
    out
}

/// `[…]`, [`published`] of each event as serde writes it.
fn published_list(out: &mut Vec<u8>, accepted: &[bus::Accepted]) {
    out.push(b'[');
    for (i, a) in accepted.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match a {
            bus::Accepted::Stored(e) => {
                out.extend_from_slice(b"{\"id\":");
                json_str(out, &e.id);
                out.extend_from_slice(b",\"topic\":");
                json_str(out, &e.topic);
                out.extend_from_slice(b",\"offset\":");
                // Writing to a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, &e.offset);
                out.push(b'}');
            }
            // Rare: through serde.
            scheduled @ bus::Accepted::Scheduled(_) => {
                let _ = serde_json::to_writer(&mut *out, &published(scheduled.clone()));
            }
        }
    }
    out.push(b']');
}

/// A JSON value as `serde_json` writes it (compact), strings through
/// [`json_str`].
fn json_value(out: &mut Vec<u8>, v: &serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        // Writing to a Vec cannot fail.
        Value::Number(n) => {
            let _ = serde_json::to_writer(&mut *out, n);
        }
        Value::String(s) => json_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_str(out, k);
                out.push(b':');
                json_value(out, item);
            }
            out.push(b'}');
        }
    }
}

/// A JSON string: copied whole between quotes when no byte needs escaping
/// (a scan the compiler vectorizes), else escaped by `serde_json`.
fn json_str(out: &mut Vec<u8>, s: &str) {
    let needs_escape = s.bytes().fold(false, |acc, b| {
        acc | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if needs_escape {
        // Writing to a Vec cannot fail, and a str always serializes.
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// A time as `chrono` serializes a `DateTime<Utc>` (RFC 3339, `Z`, the
/// fraction in milliseconds when there is one), written digit by digit:
/// `chrono` writes through `fmt`, one character at a time, which cost a
/// tenth of a live delivery.
fn rfc3339(out: &mut Vec<u8>, ms: UnixMillis) {
    use chrono::{Datelike, Timelike};
    let t = time(ms);
    let year = t.year();
    if !(0..=9999).contains(&year) {
        // Writing to a Vec cannot fail, and a time always serializes.
        let _ = serde_json::to_writer(&mut *out, &t);
        return;
    }
    let millis = t.timestamp_subsec_millis();
    let mut buf = *b"\"0000-00-00T00:00:00.000Z\"";
    let mut put = |at: usize, width: usize, mut v: u32| {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(1, 4, year.unsigned_abs());
    put(6, 2, t.month());
    put(9, 2, t.day());
    put(12, 2, t.hour());
    put(15, 2, t.minute());
    put(18, 2, t.second());
    if millis == 0 {
        buf[20] = b'Z';
        buf[21] = b'"';
        out.extend_from_slice(&buf[..22]);
    } else {
        put(21, 3, millis);
        out.extend_from_slice(&buf);
    }
}

/// A logged event to its CloudEvents JSON form.
pub(crate) fn cloud_event(e: bus::Event) -> wire::CloudEvent {
    let offset = e.is_logged().then_some(e.offset);
    wire::CloudEvent {
        specversion: bus::event::SPEC_VERSION.to_owned(),
        id: e.id,
        source: e.source,
        event_type: e.event_type,
        topic: e.topic,
        offset,
        subject: e.subject,
        time: time(e.time),
        datacontenttype: e.datacontenttype,
        data: e.data.map(bus::Data::into_value),
        extensions: e.extensions,
    }
}

/// A consumer group's state to its wire form.
pub(crate) fn group(g: bus::groups::GroupInfo) -> wire::Group {
    let s = g.spec;
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    wire::Group {
        name: s.name,
        topics: s.patterns.iter().map(|p| p.as_str().to_owned()).collect(),
        filter: s.filter,
        ack_wait_ms: ms(s.ack_wait),
        max_deliveries: s.max_deliveries,
        backoff: wire::BackoffPolicy {
            kind: s.backoff.kind.as_str().to_owned(),
            initial_ms: ms(s.backoff.initial),
            max_ms: ms(s.backoff.max),
            jitter: s.backoff.jitter,
        },
        max_pending: s.max_pending,
        created_at: time(g.created_at),
        cursor: g.cursor,
        pending: g.pending,
        in_flight: g.in_flight,
        consumers: g.consumers,
        dead_letters: g.dead_letters,
    }
}

/// A delivery to its wire form.
pub(crate) fn delivery(d: bus::groups::Delivery) -> wire::Delivery {
    wire::Delivery {
        group: d.group.to_string(),
        offset: d.offset,
        attempt: d.attempt,
        deadline: time(d.deadline),
        event: cloud_event((*d.event).clone()),
    }
}

/// A dead letter to its wire form.
pub(crate) fn dead_letter(d: bus::groups::DeadLetter) -> wire::DeadLetter {
    wire::DeadLetter {
        group: d.group,
        offset: d.offset,
        attempts: d.attempts,
        last_error: d.last_error,
        dead_at: time(d.dead_at),
        event: cloud_event(d.event),
    }
}

/// What became of a published event, to its wire form.
pub(crate) fn published(a: bus::Accepted) -> wire::Published {
    match a {
        bus::Accepted::Stored(e) => wire::Published {
            id: e.id.clone(),
            topic: e.topic.clone(),
            offset: Some(e.offset),
            scheduled_for: None,
            delivered_to: None,
        },
        bus::Accepted::Scheduled(s) => wire::Published {
            id: s.id,
            topic: s.topic,
            offset: None,
            scheduled_for: Some(time(s.due_at)),
            delivered_to: None,
        },
    }
}

/// A transient event handed to `delivered_to` live subscriptions.
pub(crate) fn delivered((e, delivered_to): (std::sync::Arc<bus::Event>, u32)) -> wire::Published {
    wire::Published {
        id: e.id.clone(),
        topic: e.topic.clone(),
        offset: None,
        scheduled_for: None,
        delivered_to: Some(delivered_to),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value, json};

    use super::*;

    fn event(offset: u64, subject: Option<&str>, data: Option<Value>, ext: Value) -> bus::Event {
        let extensions: Map<String, Value> = match ext {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        bus::Event::new(
            bus::NewEvent {
                id: "e-1".into(),
                source: "/agents/a \"quoted\"".into(),
                event_type: "task.progress".into(),
                topic: "task.codegen.progress".into(),
                subject: subject.map(str::to_owned),
                time: Some(1_736_942_400_123),
                datacontenttype: "application/json".into(),
                data: data.map(bus::Data::from),
                extensions,
            },
            offset,
            0,
        )
    }

    /// The JSON written from the borrowed event is the wire type's, byte
    /// for byte.
    #[test]
    fn cloud_event_json_is_the_wire_form() {
        let cases = [
            event(
                42,
                Some("task-001"),
                Some(json!({"progress": 75, "note": "ünïcode \n"})),
                json!({"correlationid": "wf-1", "partitionkey": 7, "flag": true}),
            ),
            event(0, None, None, json!({})),
            event(1, None, Some(json!("text")), json!({"a": "b"})),
            event(
                7,
                Some("tab\there \u{1} \\ \u{7f} é"),
                Some(json!({
                    "n": [0, -1, 1.5, -2.25e-8, 1e300, u64::MAX, i64::MIN, 0.1],
                    "nested": {"k\"ey": [null, true, false, [], {}, ""], "ctl": "\u{1f}\r"},
                    "plain": "x".repeat(128),
                })),
                json!({"with\\slash": "v\"q", "n": 1.0, "arr": [1, "two"]}),
            ),
            event(8, None, Some(json!(null)), json!({})),
            event(9, None, Some(json!(-0.0)), json!({})),
        ];
        let mut times = vec![
            i64::MIN,
            -62_167_219_200_001, // 1 ms before year 0
            -62_167_219_200_000, // year 0
            -1,
            0,
            1,
            999,
            1_000,
            1_736_942_400_000,
            1_736_942_400_123,
            253_402_300_799_999, // the last millisecond of 9999
            253_402_300_800_000, // year 10000
            i64::MAX,
        ];
        times.extend((0..2000).map(|i| i * 7_919_113_337_i64 - 3_000_000_000_000));
        let mut cases = cases.to_vec();
        for t in times {
            let mut e = event(3, None, None, json!({}));
            e.time = t;
            cases.push(e);
        }
        for e in cases {
            let wire = serde_json::to_string(&cloud_event(e.clone())).expect("wire");
            assert_eq!(&*cloud_event_json(&e), wire);
            let back: wire::CloudEvent = serde_json::from_str(&wire).expect("parse");
            assert_eq!(back.offset, e.is_logged().then_some(e.offset));
        }
    }

    /// An event's data is written as the text it was published with.
    #[test]
    fn data_is_rendered_as_published() {
        let mut e = event(5, None, None, json!({}));
        let text = r#"{ "b" : [1, 2.50],  "a":"\u00e9" }"#;
        e.data = Some(bus::Data::from_json(text.to_owned()).expect("JSON"));
        let rendered = cloud_event_json(&e);
        assert!(
            rendered.contains(&format!(r#""data":{text}"#)),
            "{rendered}"
        );
        let back: wire::CloudEvent = serde_json::from_str(&rendered).expect("parse");
        assert_eq!(back.data, Some(json!({"a": "é", "b": [1, 2.5]})));
    }

    /// A page of the log is what serde writes for a `wire::EventPage`.
    #[test]
    fn event_page_is_what_serde_writes() {
        let events = vec![
            event(
                1,
                Some("s"),
                Some(json!({"k": "v"})),
                json!({"partitionkey": "p"}),
            ),
            event(2, None, None, json!({})),
        ];
        for (events, next) in [(vec![], 0), (events[..1].to_vec(), 1), (events, u64::MAX)] {
            let serde = serde_json::to_vec(&wire::EventPage {
                events: events.iter().cloned().map(cloud_event).collect(),
                next_after: next,
            })
            .expect("serde");
            assert_eq!(event_page(&events, next), serde);
        }
    }

    /// A `delivery` frame is what serde writes for its fields, whatever
    /// the order of its keys.
    #[test]
    fn delivery_frame_is_the_wire_form() {
        for (sub, group, e) in [
            (
                "s1",
                "g",
                event(
                    3,
                    Some("x"),
                    Some(json!({"k": [1]})),
                    json!({"partitionkey": "p"}),
                ),
            ),
            (
                "a \"q\" \\",
                "grp\n",
                event(u64::MAX, None, None, json!({})),
            ),
        ] {
            let d = bus::groups::Delivery {
                group: group.into(),
                offset: e.offset,
                attempt: 2,
                deadline: 1_736_942_400_123,
                event: std::sync::Arc::new(e.clone()),
            };
            let frame: Value = serde_json::from_str(&delivery_frame(sub, &d)).expect("JSON");
            let wanted = json!({
                "op": "delivery",
                "sub": sub,
                "group": group,
                "offset": e.offset,
                "attempt": 2,
                "deadline": time(d.deadline),
                "event": cloud_event(e),
            });
            assert_eq!(frame, wanted);
        }
    }

    /// The answers to a publish written directly (the WebSocket frame, the
    /// HTTP body) are serde's, byte for byte.
    #[test]
    fn published_frame_is_what_serde_writes() {
        let mut quoted = event(7, None, None, json!({}));
        quoted.id = "a \"quoted\" \\ id\n".into();
        quoted.topic = "t\u{1}".into();
        let accepted = [
            bus::Accepted::Stored(std::sync::Arc::new(event(42, None, None, json!({})))),
            bus::Accepted::Scheduled(bus::Scheduled {
                id: "later".into(),
                source: "/s".into(),
                topic: "a.b".into(),
                due_at: 1_736_942_400_123,
            }),
            bus::Accepted::Stored(std::sync::Arc::new(quoted)),
            bus::Accepted::Stored(std::sync::Arc::new(event(u64::MAX, None, None, json!({})))),
        ];
        for reference in [None, Some("r-1"), Some("q\"uote")] {
            for n in [0, 1, accepted.len()] {
                let want = published_answer(
                    reference,
                    accepted[..n].iter().cloned().map(published).collect(),
                );
                assert_eq!(published_frame(reference, &accepted[..n]), want);
            }
        }
        for n in [0, 1, accepted.len()] {
            let want = wire::PublishAck {
                events: accepted[..n].iter().cloned().map(published).collect(),
            };
            let want = serde_json::to_string(&want).expect("serialize");
            let got = String::from_utf8(publish_ack(&accepted[..n])).expect("UTF-8");
            assert_eq!(got, want);
        }
    }
}
