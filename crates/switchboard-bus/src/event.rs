//! Events: CloudEvents 1.0, with Switchboard's extension attributes.

use serde_json::{Map, Value};
use switchboard_core::{FieldErrors, UnixMillis};

use crate::topic;

/// The CloudEvents version spoken.
pub const SPEC_VERSION: &str = "1.0";
/// The longest id, source, type or subject accepted.
pub const MAX_ATTR_LEN: usize = 1024;

/// Extension attributes with a meaning to the hub.
pub mod ext {
    /// Ties a request, its reply and what follows from them.
    pub const CORRELATION_ID: &str = "correlationid";
    /// The id of the event that caused this one.
    pub const CAUSATION_ID: &str = "causationid";
    /// The agent that published the event.
    pub const SOURCE_AGENT: &str = "sourceagent";
    /// The agent the event is meant for.
    pub const TARGET_AGENT: &str = "targetagent";
    /// Events with one key are delivered in order.
    pub const PARTITION_KEY: &str = "partitionkey";
    /// The topic (a CloudEvents extension on the wire).
    pub const TOPIC: &str = "topic";
    /// When to deliver the event (RFC 3339); it is held until then.
    pub const DELIVER_AT: &str = "deliverat";
    /// Deliver the event this many milliseconds after it is published;
    /// the hub turns it into `deliverat`.
    pub const DELAY_MS: &str = "delayms";
}

/// The furthest ahead an event may be scheduled.
pub const MAX_SCHEDULE_AHEAD_MS: i64 = 30 * 24 * 3600 * 1000;

/// The context attributes CloudEvents defines; an extension may not reuse
/// these names.
const RESERVED: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
    ext::TOPIC,
];

/// An event to publish, before it has a place in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Unique with `source`.
    pub id: String,
    /// Who produced it (a URI reference).
    pub source: String,
    /// What happened (`task.completed`).
    pub event_type: String,
    /// Where it is published.
    pub topic: String,
    /// What it is about, within the source.
    pub subject: Option<String>,
    /// When it happened; the hub's clock when absent.
    pub time: Option<UnixMillis>,
    /// The media type of `data`.
    pub datacontenttype: String,
    /// The payload.
    pub data: Option<Value>,
    /// Extension attributes (lower-case names, scalar values).
    pub extensions: Map<String, Value>,
}

/// An event in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Its place in the log: one sequence across all topics, increasing
    /// with every append, never reused; logged offsets start at 1. A
    /// transient event ([`crate::Bus::publish_transient`]) is never logged
    /// and has offset 0.
    pub offset: u64,
    /// See [`NewEvent::id`].
    pub id: String,
    /// See [`NewEvent::source`].
    pub source: String,
    /// See [`NewEvent::event_type`].
    pub event_type: String,
    /// See [`NewEvent::topic`].
    pub topic: String,
    /// See [`NewEvent::subject`].
    pub subject: Option<String>,
    /// When it happened.
    pub time: UnixMillis,
    /// See [`NewEvent::datacontenttype`].
    pub datacontenttype: String,
    /// See [`NewEvent::data`].
    pub data: Option<Value>,
    /// See [`NewEvent::extensions`].
    pub extensions: Map<String, Value>,
    /// Its wire form, made once however many subscribers receive it.
    pub rendered: Rendered,
}

/// A rendering of an event (its JSON on the wire), made on first use and
/// shared by every holder of the event. Not part of the event's value:
/// comparisons ignore it.
#[derive(Clone, Default)]
pub struct Rendered(std::sync::OnceLock<std::sync::Arc<str>>);

impl Rendered {
    /// The rendering, made by `render` the first time.
    pub fn get_or_init(&self, render: impl FnOnce() -> String) -> std::sync::Arc<str> {
        self.0.get_or_init(|| render().into()).clone()
    }
}

impl PartialEq for Rendered {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Rendered(..)"
        } else {
            "Rendered(-)"
        })
    }
}

/// Checks one attribute; its field name is only formatted for an error.
fn check_attr(errs: &mut FieldErrors, prefix: &str, name: &str, value: &str) {
    if value.is_empty() {
        errs.push(format!("{prefix}{name}"), "must not be empty");
    } else if value.len() > MAX_ATTR_LEN {
        errs.push(
            format!("{prefix}{name}"),
            format!("must be at most {MAX_ATTR_LEN} bytes"),
        );
    }
}

/// Whether a content type's essence (before any `;`, trimmed, any case)
/// is JSON or text.
fn json_or_text(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .as_bytes();
    // The last and first 5 bytes (all of them when fewer).
    let (_, end) = essence.split_at(essence.len().saturating_sub(5));
    let (start, _) = essence.split_at(essence.len().min(5));
    essence.eq_ignore_ascii_case(b"application/json")
        || end.eq_ignore_ascii_case(b"+json")
        || start.eq_ignore_ascii_case(b"text/")
}

impl NewEvent {
    /// An event the hub itself publishes: topic and type are the same,
    /// JSON data, a fresh id, the given time.
    pub fn hub(topic: &str, source: &str, subject: &str, time: UnixMillis, data: Value) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            source: source.to_owned(),
            event_type: topic.to_owned(),
            topic: topic.to_owned(),
            subject: Some(subject.to_owned()),
            time: Some(time),
            datacontenttype: "application/json".to_owned(),
            data: Some(data),
            extensions: Map::new(),
        }
    }

    /// Checks every attribute; errors are named `{prefix}{attribute}`
    /// (`events[2].topic`).
    pub fn check(&self, prefix: &str, errs: &mut FieldErrors) {
        check_attr(errs, prefix, "id", &self.id);
        check_attr(errs, prefix, "source", &self.source);
        check_attr(errs, prefix, "type", &self.event_type);
        if let Some(s) = &self.subject {
            check_attr(errs, prefix, "subject", s);
        }
        if let Err(r) = topic::check_topic(&self.topic) {
            errs.push(format!("{prefix}topic"), r);
        }
        if !json_or_text(&self.datacontenttype) {
            errs.push(
                format!("{prefix}datacontenttype"),
                "must be application/json, a +json type or a text/ type",
            );
        }
        for (name, value) in &self.extensions {
            let field = || format!("{prefix}{name}");
            if RESERVED.contains(&name.as_str()) {
                errs.push(field(), "is a reserved attribute name");
            } else if name.is_empty()
                || name.len() > 20
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                errs.push(
                    field(),
                    "is not a CloudEvents attribute name (1 to 20 of a-z and 0-9)",
                );
            } else if !(value.is_string() || value.is_number() || value.is_boolean()) {
                errs.push(
                    field(),
                    "an extension attribute must be a string, number or boolean",
                );
            } else if name == ext::DELIVER_AT && deliver_at(value).is_none() {
                errs.push(
                    field(),
                    "must be an RFC 3339 time like 2026-01-15T12:00:00Z",
                );
            } else if name == ext::DELAY_MS
                && !delay_ms(value).is_some_and(|d| (0..=MAX_SCHEDULE_AHEAD_MS).contains(&d))
            {
                errs.push(
                    field(),
                    "must be a whole number of milliseconds, at most 30 days",
                );
            }
        }
        if self.extensions.contains_key(ext::DELIVER_AT)
            && self.extensions.contains_key(ext::DELAY_MS)
        {
            errs.push(
                format!("{prefix}{}", ext::DELAY_MS),
                "give deliverat or delayms, not both",
            );
        }
    }

    /// When the event is to be delivered, if later than `now`: from
    /// `deliverat`, or `delayms` after `now` (which is then replaced by
    /// `deliverat`, so the logged event says when it was due).
    pub fn take_schedule(&mut self, now: UnixMillis) -> Option<UnixMillis> {
        if let Some(delay) = self
            .extensions
            .remove(ext::DELAY_MS)
            .as_ref()
            .and_then(delay_ms)
        {
            let at = now.saturating_add(delay);
            if let Some(t) = chrono::DateTime::from_timestamp_millis(at) {
                self.extensions.insert(
                    ext::DELIVER_AT.to_owned(),
                    Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                );
            }
        }
        let at = self.extensions.get(ext::DELIVER_AT).and_then(deliver_at)?;
        (at > now).then_some(at)
    }

    /// The extension `name` as a string, if set.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.extensions.get(name).and_then(Value::as_str)
    }
}

/// A delay in milliseconds: a number, or digits in a string (as binary
/// mode's `ce-delayms` header and the CLI's `--ext` give it).
fn delay_ms(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

fn deliver_at(v: &Value) -> Option<UnixMillis> {
    v.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.timestamp_millis())
}

impl Event {
    /// `e` at `offset`; its time is `now` when it had none.
    pub fn new(e: NewEvent, offset: u64, now: UnixMillis) -> Self {
        Self {
            offset,
            id: e.id,
            source: e.source,
            event_type: e.event_type,
            topic: e.topic,
            subject: e.subject,
            time: e.time.unwrap_or(now),
            datacontenttype: e.datacontenttype,
            data: e.data,
            extensions: e.extensions,
            rendered: Rendered::default(),
        }
    }

    /// Whether the event is in the log: false for a transient event.
    pub fn is_logged(&self) -> bool {
        self.offset != 0
    }

    /// The extension `name` as a string, if set.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.extensions.get(name).and_then(Value::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(datacontenttype: &str) -> NewEvent {
        let mut e = NewEvent::hub("a.b", "test", "s", 0, Value::Null);
        e.datacontenttype = datacontenttype.to_owned();
        e
    }

    /// The fields `check` finds bad, with the prefix.
    fn bad_fields(e: &NewEvent) -> Vec<String> {
        let mut errs = FieldErrors::new();
        e.check("events[1].", &mut errs);
        errs.finish()
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|f| f.field)
            .collect()
    }

    #[test]
    fn content_types_of_json_and_text_in_any_case_pass() {
        for ct in [
            "application/json",
            "Application/JSON; charset=utf-8",
            " application/cloudevents+json ",
            "application/VND.API+JSON",
            "text/plain",
            "TEXT/csv;charset=us-ascii",
        ] {
            assert!(bad_fields(&event(ct)).is_empty(), "{ct}");
        }
        for ct in ["", "json", "text", "application/xml", "image/png", "é"] {
            assert_eq!(
                bad_fields(&event(ct)),
                ["events[1].datacontenttype"],
                "{ct:?}"
            );
        }
    }

    #[test]
    fn bad_attributes_are_named_with_the_prefix() {
        let mut e = event("application/json");
        e.id.clear();
        e.source = "x".repeat(MAX_ATTR_LEN + 1);
        e.extensions.insert("Bad".into(), Value::from(1));
        e.extensions
            .insert("nested".into(), serde_json::json!({"a": 1}));
        let mut got = bad_fields(&e);
        got.sort();
        assert_eq!(
            got,
            [
                "events[1].Bad",
                "events[1].id",
                "events[1].nested",
                "events[1].source"
            ]
        );
    }
}
