//! The hub's WebSocket protocol (`GET /ws`), as a client speaks it: one
//! JSON object per text frame. See `crates/switchboard-api/src/routes/ws.rs`.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// How long to wait for the hub to confirm a subscription.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// Opens `ws://addr/ws`.
pub(crate) async fn connect(addr: SocketAddr) -> anyhow::Result<Ws> {
    let tcp = TcpStream::connect(addr).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let url = format!("ws://{addr}/ws?access_token={}", crate::hub::TOKEN);
    let (ws, _) = tokio_tungstenite::client_async(url, tcp)
        .await
        .context("websocket handshake")?;
    Ok(ws)
}

/// Opens a connection subscribed to `topic` (from now on), once the hub
/// has confirmed the subscription.
pub(crate) async fn subscriber(addr: SocketAddr, topic: &str) -> anyhow::Result<Ws> {
    let mut ws = connect(addr).await?;
    ws.send(Message::Text(
        format!(r#"{{"op":"subscribe","id":"s","topics":["{topic}"]}}"#).into(),
    ))
    .await?;
    loop {
        let frame = tokio::time::timeout(ANSWER_WITHIN, ws.next())
            .await
            .context("no answer to subscribe")?;
        match frame {
            Some(Ok(Message::Text(t))) => {
                let f: Frame<'_> = serde_json::from_str(t.as_str())
                    .with_context(|| format!("unexpected frame {t}"))?;
                match f.op {
                    "subscribed" => return Ok(ws),
                    "error" => bail!("subscribe refused: {t}"),
                    _ => {}
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed before subscribing"),
        }
    }
}

/// One event as published: `{"id","source","type","topic","data"}`, with a
/// string payload (the bench's payloads are plain ASCII: no escaping).
pub(crate) fn event(id: &str, source: &str, topic: &str, data: &str) -> String {
    format!(
        r#"{{"id":"{id}","source":"{source}","type":"bench","topic":"{topic}","data":"{data}"}}"#
    )
}

/// How a `publish` frame asks for its events to be handled.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Publish {
    /// Logged, answered once durable.
    Logged,
    /// Delivered live and not logged, answered at once.
    Transient,
    /// Delivered live and not logged, answered only if refused.
    Quiet,
}

/// A `publish` frame with reference `reference` carrying `events` (one:
/// `"event"`; more: `"events"`, stored all or nothing).
pub(crate) fn publish(reference: u64, events: &[String], how: Publish) -> Message {
    let flag = match how {
        Publish::Logged => "",
        Publish::Transient => r#","transient":true"#,
        Publish::Quiet => r#","transient":true,"quiet":true"#,
    };
    let text = match events {
        [one] => format!(r#"{{"op":"publish","ref":"{reference}"{flag},"event":{one}}}"#),
        many => format!(
            r#"{{"op":"publish","ref":"{reference}"{flag},"events":[{}]}}"#,
            many.join(",")
        ),
    };
    Message::Text(text.into())
}

/// A `ping` frame: its `pong` comes after the answers to every frame sent
/// before it.
pub(crate) fn ping() -> Message {
    Message::Text(r#"{"op":"ping"}"#.into())
}

/// A frame from the hub, with what the bench reads of it.
#[derive(Deserialize)]
pub(crate) struct Frame<'a> {
    #[serde(borrow)]
    pub(crate) op: &'a str,
    /// A `published` or `error` frame's reference.
    #[serde(default, rename = "ref", borrow)]
    pub(crate) reference: Option<Cow<'a, str>>,
    /// A `published` frame's events.
    #[serde(default)]
    pub(crate) events: Option<Vec<serde::de::IgnoredAny>>,
    /// An `event` frame's CloudEvent.
    #[serde(default, borrow)]
    pub(crate) event: Option<EventOut<'a>>,
}

/// What the bench reads of a delivered CloudEvent.
#[derive(Deserialize)]
pub(crate) struct EventOut<'a> {
    #[serde(default, borrow)]
    pub(crate) data: Option<Cow<'a, str>>,
}
