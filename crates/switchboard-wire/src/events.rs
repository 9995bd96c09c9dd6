//! Event bus bodies: CloudEvents in JSON structured mode.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// An event's payload as JSON text: read from a body without being parsed
/// into a [`Value`], so the hub stores and sends on the text it was given.
/// Two payloads are equal when they hold the same JSON value.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The payload parsed.
    pub fn to_value(&self) -> Value {
        // The text is valid JSON: it was parsed once to be held.
        serde_json::from_str(self.get()).unwrap_or(Value::Null)
    }

    /// The text, to be held elsewhere without a copy.
    pub fn into_raw(self) -> Box<RawValue> {
        self.0
    }
}

impl From<Box<RawValue>> for Payload {
    fn from(raw: Box<RawValue>) -> Self {
        Self(raw)
    }
}

impl From<&Value> for Payload {
    fn from(v: &Value) -> Self {
        // A `Value` always serializes.
        Self(serde_json::value::to_raw_value(v).unwrap_or_else(|_| RawValue::NULL.to_owned()))
    }
}

impl From<Value> for Payload {
    fn from(v: Value) -> Self {
        Self::from(&v)
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get() || self.to_value() == other.to_value()
    }
}

/// A CloudEvents 1.0 event as published (JSON structured mode).
///
/// Publishing is lenient where a default is obvious: `specversion` defaults
/// to `1.0`, `id` to a new UUID, `source` to `/switchboard/api`, `type` to
/// the topic and `topic` to the type (one of the two is needed),
/// `datacontenttype` to `application/json`, `time` to the hub's clock.
/// Any other attribute is a CloudEvents extension (lower-case letters and
/// digits, scalar value): `correlationid`, `causationid`, `sourceagent`,
/// `targetagent` and `partitionkey` have a meaning to the hub.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct PublishEvent {
    /// `1.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specversion: Option<String>,
    /// Unique with `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Who produced the event (a URI reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// What happened (`task.completed`).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// Where to publish: dot-separated tokens, no wildcards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "task.code_generation.completed")]
    pub topic: Option<String>,
    /// What the event is about, within the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When it happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<DateTime<Utc>>,
    /// The media type of `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    /// The payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Payload>,
    /// Extension attributes.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extensions: Map<String, Value>,
}

/// Read field by field, every key that is not an attribute going into
/// `extensions`: what `#[serde(flatten)]` would do, without first copying
/// the whole object into a buffer of its own (serde's flatten does).
impl<'de> Deserialize<'de> for PublishEvent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(PublishEventVisitor)
    }
}

struct PublishEventVisitor;

/// The attributes of [`PublishEvent`] other than extensions, as named on
/// the wire; the order of the fields its visitor sets.
const ATTRIBUTES: [&str; 9] = [
    "specversion",
    "id",
    "source",
    "type",
    "topic",
    "subject",
    "time",
    "datacontenttype",
    "data",
];

impl<'de> serde::de::Visitor<'de> for PublishEventVisitor {
    type Value = PublishEvent;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a CloudEvent (a JSON object)")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<PublishEvent, A::Error> {
        let mut e = PublishEvent::default();
        // The attributes given so far (bits by index in `ATTRIBUTES`),
        // even as null: a repeat is an error.
        let mut given: u16 = 0;
        while let Some(Key(key)) = map.next_key()? {
            let Some(at) = ATTRIBUTES.iter().position(|a| *a == key) else {
                let value = map.next_value()?;
                e.extensions.insert(key.into_owned(), value);
                continue;
            };
            if given & (1 << at) != 0 {
                return Err(serde::de::Error::duplicate_field(ATTRIBUTES[at]));
            }
            given |= 1 << at;
            match at {
                0 => e.specversion = map.next_value()?,
                1 => e.id = map.next_value()?,
                2 => e.source = map.next_value()?,
                3 => e.event_type = map.next_value()?,
                4 => e.topic = map.next_value()?,
                5 => e.subject = map.next_value()?,
                6 => e.time = map.next_value()?,
                7 => e.datacontenttype = map.next_value()?,
                _ => e.data = map.next_value()?,
            }
        }
        Ok(e)
    }
}

/// An object key, borrowed from the input when it has no escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> serde::de::Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an attribute name")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_owned())))
            }

            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// A CloudEvents 1.0 event from the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CloudEvent {
    /// `1.0`.
    pub specversion: String,
    /// Unique with `source`.
    pub id: String,
    /// Who produced it.
    pub source: String,
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The topic it was published on.
    pub topic: String,
    /// Its place in the log (one sequence across topics); resume after it.
    /// Absent for a transient event, which is not in the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// What it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// The media type of `data`.
    pub datacontenttype: String,
    /// The payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    /// Extension attributes.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extensions: Map<String, Value>,
}

/// What `POST /api/v1/events` answers: each event's place in the log, in
/// the order published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PublishAck {
    /// One entry per event.
    pub events: Vec<Published>,
}

/// One published event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Published {
    /// Its id (as given or made).
    pub id: String,
    /// Its topic.
    pub topic: String,
    /// Its place in the log; absent while the event is held for later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// When a delayed or scheduled event will be appended to the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<DateTime<Utc>>,
    /// A transient event (not logged): how many live subscriptions it was
    /// handed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_to: Option<u32>,
}

/// `GET /api/v1/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    /// Matching events, in offset order.
    pub events: Vec<CloudEvent>,
    /// Pass as `after` to continue: the last offset examined.
    pub next_after: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: &str) -> Result<PublishEvent, String> {
        serde_json::from_str(v).map_err(|e| e.to_string())
    }

    #[test]
    fn attributes_are_fields_and_every_other_key_an_extension() {
        let e = parse(
            r#"{"specversion":"1.0","id":"e1","source":"/s","type":"t","topic":"a.b",
                "subject":"x","time":"2026-01-15T12:00:00Z","datacontenttype":"text/plain",
                "data":{"n":[1,2]},"partitionkey":"k","ti\u006Deout":3,"flag":true}"#,
        )
        .expect("parses");
        assert_eq!(e.specversion.as_deref(), Some("1.0"));
        assert_eq!(e.id.as_deref(), Some("e1"));
        assert_eq!(e.source.as_deref(), Some("/s"));
        assert_eq!(e.event_type.as_deref(), Some("t"));
        assert_eq!(e.topic.as_deref(), Some("a.b"));
        assert_eq!(e.subject.as_deref(), Some("x"));
        assert_eq!(
            e.time.map(|t| t.timestamp_millis()),
            Some(1_768_478_400_000)
        );
        assert_eq!(e.datacontenttype.as_deref(), Some("text/plain"));
        assert_eq!(e.data.as_ref().map(Payload::get), Some(r#"{"n":[1,2]}"#));
        assert_eq!(e.data, Some(Payload::from(json!({"n": [1, 2]}))));
        let ext = Value::Object(e.extensions.clone());
        assert_eq!(
            ext,
            json!({"partitionkey": "k", "timeout": 3, "flag": true})
        );
        // What it parses, it writes back the same way.
        assert_eq!(parse(&serde_json::to_string(&e).expect("writes")), Ok(e));
    }

    #[test]
    fn data_is_kept_as_the_text_given() {
        let e = parse(r#"{"data": { "n" : [1, 2.50], "s": "\u00e9" } }"#).expect("parses");
        let data = e.data.expect("data");
        assert_eq!(data.get(), r#"{ "n" : [1, 2.50], "s": "\u00e9" }"#);
        // Equal to the same value written any other way, not to another.
        assert_eq!(data, Payload::from(json!({"s": "é", "n": [1, 2.5]})));
        assert_ne!(data, Payload::from(json!({"s": "é", "n": [1, 2.6]})));
        assert_eq!(data.to_value(), json!({"s": "é", "n": [1, 2.5]}));
        for scalar in ["0", "\"x\"", "true", "[]"] {
            let e = parse(&format!(r#"{{"data":{scalar}}}"#)).expect("parses");
            assert_eq!(e.data.as_ref().map(Payload::get), Some(scalar));
        }
        assert!(parse(r#"{"data": {"a": }}"#).is_err());
    }

    #[test]
    fn absent_and_null_attributes_are_unset() {
        assert_eq!(parse("{}"), Ok(PublishEvent::default()));
        assert_eq!(
            parse(r#"{"id":null,"data":null,"time":null}"#),
            Ok(PublishEvent::default())
        );
    }

    #[test]
    fn repeated_attributes_and_wrong_types_are_refused() {
        for (body, says) in [
            (r#"{"id":"a","id":"b"}"#, "duplicate field `id`"),
            (r#"{"data":null,"data":1}"#, "duplicate field `data`"),
            (r#"{"id":7}"#, "invalid type: integer `7`"),
            (
                r#"{"time":"yesterday"}"#,
                "input contains invalid characters",
            ),
            (r#"["id"]"#, "a CloudEvent (a JSON object)"),
        ] {
            let err = parse(body).expect_err(body);
            assert!(err.contains(says), "{body}: {err}");
        }
    }
}
