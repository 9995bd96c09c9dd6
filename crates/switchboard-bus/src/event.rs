//! Events: CloudEvents 1.0, with Switchboard's extension attributes.

use std::sync::OnceLock;

use serde_json::value::RawValue;
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

/// The deepest nesting of arrays and objects in an event's data: parsed
/// on its own, data this deep always parses (serde_json refuses a
/// document nested 128 deep).
pub const MAX_DATA_DEPTH: usize = 126;

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

/// An event's payload: the JSON text it was published with. It is
/// stored, sent and compared as that text, and parsed, once, only when
/// something looks inside it (a payload filter, a handler of the hub's own
/// events), as a broker keeps a message's body as bytes.
#[derive(Clone)]
pub struct Data {
    json: Box<RawValue>,
    parsed: OnceLock<Value>,
}

impl Data {
    /// Valid JSON text, held as it is.
    pub fn from_raw(json: Box<RawValue>) -> Self {
        Self {
            json,
            parsed: OnceLock::new(),
        }
    }

    /// `text` if it is valid JSON (as the log stores it).
    pub fn from_json(text: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text).map(Self::from_raw)
    }

    /// The JSON text.
    pub fn json(&self) -> &str {
        self.json.get()
    }

    /// The payload parsed, on first use.
    pub fn value(&self) -> &Value {
        self.parsed.get_or_init(|| parse(self.json()))
    }

    /// The payload parsed.
    pub fn into_value(self) -> Value {
        self.parsed
            .into_inner()
            .unwrap_or_else(|| parse(self.json.get()))
    }

    /// The text, to be held elsewhere without a copy.
    pub fn into_raw(self) -> Box<RawValue> {
        self.json
    }

    /// Whether its arrays and objects nest deeper than `n`: at once when
    /// it opens no more than `n` of them (a count the compiler makes a
    /// vector loop), else by [`Data::depth`].
    pub fn nests_deeper_than(&self, n: usize) -> bool {
        // `[` is `{` but for the bit 0x20, which no other byte shares
        // with them. Counted in bytes, 255 at a time, which the compiler
        // turns into vector instructions.
        let opens: usize = self
            .json()
            .as_bytes()
            .chunks(255)
            .map(|c| {
                let n = c
                    .iter()
                    .fold(0u8, |n, &b| n.wrapping_add(u8::from(b | 0x20 == b'{')));
                usize::from(n)
            })
            .sum();
        opens > n && self.depth() > n
    }

    /// How deep its arrays and objects nest (0 for a scalar).
    fn depth(&self) -> usize {
        let (mut depth, mut deepest) = (0usize, 0usize);
        let (mut in_string, mut escaped) = (false, false);
        for b in self.json().bytes() {
            if in_string {
                match b {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        deepest
    }
}

/// `json` parsed. It is valid JSON nested within what the parser takes:
/// it was parsed once to be held, and checked at publish.
fn parse(json: &str) -> Value {
    serde_json::from_str(json).unwrap_or(Value::Null)
}

impl From<Value> for Data {
    fn from(v: Value) -> Self {
        // A `Value` always serializes.
        let json =
            serde_json::value::to_raw_value(&v).unwrap_or_else(|_| RawValue::NULL.to_owned());
        Self {
            json,
            parsed: OnceLock::from(v),
        }
    }
}

/// The same JSON value, however it is written.
impl PartialEq for Data {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json() || self.value() == other.value()
    }
}

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Data").field(&self.json()).finish()
    }
}

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
    pub data: Option<Data>,
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
    pub data: Option<Data>,
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
            data: Some(Data::from(data)),
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
        if self
            .data
            .as_ref()
            .is_some_and(|d| d.nests_deeper_than(MAX_DATA_DEPTH))
        {
            errs.push(
                format!("{prefix}data"),
                format!("must not nest arrays and objects more than {MAX_DATA_DEPTH} deep"),
            );
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
    fn data_is_held_as_its_text_and_parsed_on_use() {
        let text = r#"{"a": [1, {"b": "]}\\\" [{"}], "c": {}}"#;
        let d = Data::from_json(text.to_owned()).expect("JSON");
        assert_eq!(d.json(), text);
        assert_eq!(d.depth(), 3);
        // Six opened (two of them inside a string), three deep.
        assert!(d.nests_deeper_than(2));
        assert!(!d.nests_deeper_than(3));
        assert!(!d.nests_deeper_than(4));
        assert_eq!(d.value()["a"][1]["b"], "]}\\\" [{");
        assert_eq!(
            d,
            Data::from(serde_json::json!({"c": {}, "a": [1, {"b": "]}\\\" [{"}]}))
        );
        assert_ne!(d, Data::from(serde_json::json!({"c": {}})));
        assert_eq!(Data::from_json("7".into()).expect("JSON").depth(), 0);
        assert!(Data::from_json("{\"a\":".into()).is_err());
    }

    #[test]
    fn data_nested_too_deep_is_refused_and_the_deepest_allowed_parses() {
        let nested = |n: usize| {
            let text = format!("{}{}", "[".repeat(n), "]".repeat(n));
            let mut e = event("application/json");
            e.data = Some(Data::from_json(text).expect("JSON"));
            e
        };
        let deepest = nested(MAX_DATA_DEPTH);
        assert!(bad_fields(&deepest).is_empty());
        let data = deepest.data.as_ref().expect("data");
        assert_eq!(data.depth(), MAX_DATA_DEPTH);
        assert!(data.value().is_array(), "the deepest allowed parses");
        assert_eq!(bad_fields(&nested(MAX_DATA_DEPTH + 1)), ["events[1].data"]);
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
