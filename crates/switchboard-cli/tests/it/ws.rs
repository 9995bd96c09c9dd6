//! The WebSocket protocol over a real connection.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_test::{DataDir, TestHub};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub(crate) async fn connect(hub: &TestHub) -> Ws {
    connect_as(hub, switchboard_test::ADMIN_TOKEN).await
}

/// A WebSocket authenticated with `token` in the Authorization header.
pub(crate) async fn connect_as(hub: &TestHub, token: &str) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/ws", hub.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    assert_eq!(resp.status(), 101);
    ws
}

pub(crate) async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .expect("send");
}

/// The next JSON frame, within 10 s.
pub(crate) async fn recv(ws: &mut Ws) -> Value {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await.expect("open").expect("frame") {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("json"),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected frame {other:?}"),
            }
        }
    })
    .await
    .expect("a frame within 10s")
}

#[tokio::test]
async fn subscribe_publish_and_receive_in_order() {
    let hub = TestHub::start().await.expect("hub");
    let mut sub = connect(&hub).await;
    send(&mut sub, json!({"op": "subscribe", "id": "s1", "topics": ["task.*.completed"], "filter": {"priority": ["high"]}})).await;
    assert_eq!(
        recv(&mut sub).await,
        json!({"op": "subscribed", "id": "s1"})
    );

    let mut publisher = connect(&hub).await;
    for i in 0..10 {
        let priority = if i % 2 == 0 { "high" } else { "low" };
        send(
            &mut publisher,
            json!({"op": "publish", "ref": format!("r{i}"),
            "event": {"topic": "task.codegen.completed", "data": {"i": i, "priority": priority}}}),
        )
        .await;
        let ack = recv(&mut publisher).await;
        assert_eq!(ack["op"], "published");
        assert_eq!(ack["ref"], format!("r{i}"));
        assert!(ack["events"][0]["offset"].as_u64().expect("offset") > 0);
    }
    send(&mut publisher, json!({"op": "publish", "event": {"topic": "task.codegen.failed", "data": {"priority": "high"}}})).await;
    recv(&mut publisher).await;
    let mut last = 0;
    for want in (0..10).step_by(2) {
        let f = recv(&mut sub).await;
        assert_eq!(f["op"], "event");
        assert_eq!(f["sub"], "s1");
        assert_eq!(f["event"]["data"]["i"], want);
        let offset = f["event"]["offset"].as_u64().expect("offset");
        assert!(offset > last);
        last = offset;
    }
    // Unsubscribed: nothing more arrives, and the answer says so.
    send(&mut sub, json!({"op": "unsubscribe", "id": "s1"})).await;
    assert_eq!(
        recv(&mut sub).await,
        json!({"op": "unsubscribed", "id": "s1"})
    );
    send(&mut publisher, json!({"op": "publish", "event": {"topic": "task.x.completed", "data": {"priority": "high"}}})).await;
    recv(&mut publisher).await;
    send(&mut sub, json!({"op": "ping"})).await;
    assert_eq!(recv(&mut sub).await, json!({"op": "pong"}));
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_connection_survives() {
    let hub = TestHub::start().await.expect("hub");
    let mut ws = connect(&hub).await;
    let cases = [
        ("not json", "MALFORMED_JSON", None),
        (r#"{"op": "dance"}"#, "INVALID_FRAME", None),
        (r#"{"op": "subscribe"}"#, "INVALID_FRAME", None),
        (
            r#"{"op": "subscribe", "id": "a", "topics": ["ok.>", "bad..topic"]}"#,
            "VALIDATION_FAILED",
            Some("topics[1]"),
        ),
        (
            r#"{"op": "subscribe", "id": "b", "filter": {"x": []}}"#,
            "VALIDATION_FAILED",
            Some("filter"),
        ),
        (
            r#"{"op": "unsubscribe", "id": "nope"}"#,
            "UNKNOWN_SUBSCRIPTION",
            None,
        ),
        (
            r#"{"op": "publish", "event": {"topic": "a.*"}}"#,
            "VALIDATION_FAILED",
            Some("topic"),
        ),
        (
            r#"{"op": "publish", "events": [{"topic": "ok"}, {"data": 1}]}"#,
            "VALIDATION_FAILED",
            Some("events[1].topic"),
        ),
    ];
    for (frame, code, field) in cases {
        ws.send(Message::Text(frame.into())).await.expect("send");
        let e = recv(&mut ws).await;
        assert_eq!(e["op"], "error", "{frame}");
        assert_eq!(e["code"], code, "{frame}: {e}");
        if let Some(field) = field {
            assert_eq!(e["errors"][0]["field"], field, "{frame}: {e}");
        }
    }
    // A publish that does not read as one is told what is wrong with it,
    // whatever comes before (data included).
    for (frame, says) in [
        (
            r#"{"op": "publish", "event": {"data": {"a": [1]}, "topic": 5}}"#,
            "invalid type: integer `5`, expected a string",
        ),
        (
            r#"{"op": "publish", "event": {"topic": "ok", "data": 1}, "colour": "red"}"#,
            "unknown field `colour`",
        ),
        (
            r#"{"op": "publish", "events": {"topic": "ok"}}"#,
            "expected a sequence",
        ),
    ] {
        ws.send(Message::Text(frame.into())).await.expect("send");
        let e = recv(&mut ws).await;
        assert_eq!(e["code"], "INVALID_FRAME", "{frame}: {e}");
        let message = e["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{frame}: {e}");
    }
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .expect("send");
    assert_eq!(recv(&mut ws).await["code"], "UNSUPPORTED_FRAME");
    send(
        &mut ws,
        json!({"op": "subscribe", "id": "dup", "topics": ["x"]}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["op"], "subscribed");
    send(
        &mut ws,
        json!({"op": "subscribe", "id": "dup", "topics": ["y"]}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["errors"][0]["field"], "id");
    // Still open, still answering.
    send(&mut ws, json!({"op": "ping"})).await;
    assert_eq!(recv(&mut ws).await, json!({"op": "pong"}));
    // Nothing refused was published.
    let page: Value = hub.get_json("/api/v1/events").await;
    assert_eq!(page["events"], json!([]));
}

#[tokio::test]
async fn reconnect_resumes_after_the_last_offset() {
    let hub = TestHub::start().await.expect("hub");
    let mut ws = connect(&hub).await;
    send(
        &mut ws,
        json!({"op": "subscribe", "id": "s", "topics": ["jobs.>"]}),
    )
    .await;
    recv(&mut ws).await;
    let publish = |i: i64| {
        let http = hub.http.clone();
        let url = hub.url("/api/v1/events");
        async move {
            http.post(url)
                .json(&json!({"topic": "jobs.run", "data": {"i": i}}))
                .send()
                .await
                .expect("send");
        }
    };
    for i in 0..3 {
        publish(i).await;
    }
    let mut last = 0;
    for i in 0..3 {
        let f = recv(&mut ws).await;
        assert_eq!(f["event"]["data"]["i"], i);
        last = f["event"]["offset"].as_u64().expect("offset");
    }
    drop(ws);
    for i in 3..6 {
        publish(i).await;
    }
    let mut ws = connect(&hub).await;
    send(
        &mut ws,
        json!({"op": "subscribe", "id": "s", "topics": ["jobs.>"], "after": last}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["op"], "subscribed");
    publish(6).await;
    for i in 3..7 {
        let f = recv(&mut ws).await;
        assert_eq!(f["event"]["data"]["i"], i, "{f}");
    }
}

#[tokio::test]
async fn oversized_frames_close_the_connection() {
    let hub = TestHub::start_with(
        DataDir::temp().expect("tmp"),
        "[http]\nmax_body_bytes = 8192\n",
    )
    .await
    .expect("hub");
    let mut ws = connect(&hub).await;
    let big = json!({"op": "publish", "event": {"topic": "big", "data": "x".repeat(20_000)}});
    let _ = ws.send(Message::Text(big.to_string().into())).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(frame) = ws.next().await {
            match frame {
                Ok(Message::Close(Some(c))) => return Some(c.code),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("closed within 10s");
    assert_eq!(closed, Some(CloseCode::Size));
}

#[tokio::test]
async fn silent_clients_are_closed_and_shutdown_closes_everyone() {
    let hub = TestHub::start_with(
        DataDir::temp().expect("tmp"),
        "[http]\nws_heartbeat_interval = \"100ms\"\n",
    )
    .await
    .expect("hub");
    // A client that reads (and so answers pings) stays open...
    let mut live = connect(&hub).await;
    // ...one that never reads cannot answer pings and is closed.
    let mut silent = connect(&hub).await;
    for _ in 0..5 {
        send(&mut live, json!({"op": "ping"})).await;
        assert_eq!(recv(&mut live).await, json!({"op": "pong"}));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(frame)) = silent.next().await {
            if let Message::Close(Some(c)) = frame {
                return Some(c.code);
            }
        }
        None
    })
    .await
    .expect("closed");
    assert_eq!(code, Some(CloseCode::Away));

    hub.stop().await.expect("stop");
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(frame)) = live.next().await {
            if let Message::Close(Some(c)) = frame {
                return Some((c.code, c.reason.to_string()));
            }
        }
        None
    })
    .await
    .expect("closed at shutdown");
    assert_eq!(
        code,
        Some((CloseCode::Away, "the hub is shutting down".to_owned()))
    );
}

#[tokio::test]
async fn pipelined_publishes_are_answered_in_order() {
    let hub = TestHub::start().await.expect("hub");
    let mut ws = connect(&hub).await;
    publish_numbered(&mut ws, "r", "pipe.line", 300).await;
    send(&mut ws, json!({"op": "ping"})).await;
    let offsets = expect_published(&mut ws, "r", 300).await;
    assert!(
        offsets[0] > 0 && offsets.windows(2).all(|w| w[0] < w[1]),
        "offsets in publish order: {offsets:?}"
    );
    assert_eq!(
        recv(&mut ws).await["op"],
        "pong",
        "answers keep the order of the frames"
    );
    assert_eq!(
        logged_numbers(&hub, "pipe.line").await,
        (0..300).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_subscription_s_events_follow_its_answer_even_behind_pipelined_publishes() {
    let hub = TestHub::start().await.expect("hub");
    let mut ws = connect(&hub).await;
    // Events already in the log, for the subscription to catch up on.
    publish_numbered(&mut ws, "old", "order.x", 20).await;
    expect_published(&mut ws, "old", 20).await;
    // Publishes still waiting for their commit, then a subscription from
    // the start of the log, in one burst: its catch-up is ready at once,
    // but it must come after every answer before it and its own.
    publish_numbered(&mut ws, "new", "order.y", 300).await;
    send(
        &mut ws,
        json!({"op": "subscribe", "id": "s", "topics": ["order.x"], "after": 0}),
    )
    .await;
    expect_published(&mut ws, "new", 300).await;
    assert_eq!(recv(&mut ws).await, json!({"op": "subscribed", "id": "s"}));
    for i in 0..20 {
        let f = recv(&mut ws).await;
        assert_eq!(
            (f["op"].clone(), f["event"]["data"]["i"].clone()),
            (json!("event"), json!(i)),
            "{f}"
        );
    }
}

/// Sends `n` publish frames without waiting: refs `{prefix}0`, …, data
/// `{"i": 0}`, … on `topic`.
async fn publish_numbered(ws: &mut Ws, prefix: &str, topic: &str, n: i64) {
    for i in 0..n {
        send(
            ws,
            json!({"op": "publish", "ref": format!("{prefix}{i}"), "event": {"topic": topic, "data": {"i": i}}}),
        )
        .await;
    }
}

/// Reads `n` answers that must be `published`, refs `{prefix}0`, … in
/// order; the offset each one got.
async fn expect_published(ws: &mut Ws, prefix: &str, n: i64) -> Vec<u64> {
    let mut offsets = Vec::new();
    for i in 0..n {
        let f = recv(ws).await;
        assert_eq!(
            (f["op"].clone(), f["ref"].clone()),
            (json!("published"), json!(format!("{prefix}{i}"))),
            "{f}"
        );
        offsets.push(f["events"][0]["offset"].as_u64().expect("offset"));
    }
    offsets
}

/// The `data.i` of the first 1,000 events logged on `topic`, in log order.
async fn logged_numbers(hub: &TestHub, topic: &str) -> Vec<i64> {
    let page = hub
        .get_json(&format!("/api/v1/events?topic={topic}&after=0&limit=1000"))
        .await;
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["data"]["i"].as_i64().expect("i"))
        .collect()
}

/// Sends `frames` in one write, so the hub reads them together.
async fn send_burst(ws: &mut Ws, frames: &[Value]) {
    for f in frames {
        ws.feed(Message::Text(f.to_string().into()))
            .await
            .expect("feed");
    }
    ws.flush().await.expect("flush");
}

#[tokio::test]
async fn logged_publishes_read_together_are_each_answered_as_if_sent_alone() {
    let hub = TestHub::start().await.expect("hub");
    let mut ws = connect(&hub).await;
    let one = |r: &str, id: &str, i: i64| {
        json!({"op": "publish", "ref": r,
               "event": {"id": id, "source": "burst", "topic": "burst.x", "data": {"i": i}}})
    };
    // One write: plain publishes, a batch, a refused one, a repeat of an
    // earlier frame's event, a held one, a quiet one (refused: logged
    // publishes are answered), and a ping.
    let mut frames: Vec<Value> = (0..20)
        .map(|i| one(&format!("r{i}"), &format!("e{i}"), i))
        .collect();
    frames.push(json!({"op": "publish", "ref": "batch", "events": [
        {"id": "b0", "source": "burst", "topic": "burst.x", "data": {"i": 20}},
        {"id": "b1", "source": "burst", "topic": "burst.x", "data": {"i": 21}},
    ]}));
    frames.push(json!({"op": "publish", "ref": "bad",
        "event": {"id": "x", "source": "burst", "topic": "burst..x"}}));
    frames.push(one("again", "e5", 5));
    frames.push(json!({"op": "publish", "ref": "held",
        "event": {"id": "h", "source": "burst", "topic": "burst.x", "delayms": 60000}}));
    frames.push(json!({"op": "publish", "ref": "hush", "quiet": true,
        "event": {"id": "q", "source": "burst", "topic": "burst.x"}}));
    frames.push(one("last", "e22", 22));
    frames.push(json!({"op": "ping"}));
    send_burst(&mut ws, &frames).await;

    let offsets = expect_published(&mut ws, "r", 20).await;
    let batch = recv(&mut ws).await;
    assert_eq!(batch["ref"], "batch", "{batch}");
    let batch_offsets = crate::offsets(&batch);
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1])
            && offsets[19] < batch_offsets[0]
            && batch_offsets[0] < batch_offsets[1],
        "each frame has its own offsets, in frame order: {offsets:?} {batch}"
    );
    let bad = recv(&mut ws).await;
    assert_eq!(
        (bad["op"].clone(), bad["ref"].clone(), bad["code"].clone()),
        (json!("error"), json!("bad"), json!("VALIDATION_FAILED")),
        "{bad}"
    );
    assert_eq!(bad["errors"][0]["field"], "topic", "{bad}");
    let again = recv(&mut ws).await;
    assert_eq!(
        (again["ref"].clone(), again["events"][0]["offset"].clone()),
        (json!("again"), json!(offsets[5])),
        "a repeat is answered with the first copy: {again}"
    );
    let held = recv(&mut ws).await;
    assert_eq!(held["ref"], "held", "{held}");
    assert!(held["events"][0]["scheduled_for"].is_string(), "{held}");
    let hush = recv(&mut ws).await;
    assert_eq!(
        (hush["ref"].clone(), hush["code"].clone()),
        (json!("hush"), json!("VALIDATION_FAILED")),
        "{hush}"
    );
    let last = recv(&mut ws).await;
    assert_eq!(last["ref"], "last", "{last}");
    let last_offset = last["events"][0]["offset"].as_u64().expect("offset");
    assert!(last_offset > batch_offsets[1], "{last}");
    assert_eq!(recv(&mut ws).await["op"], "pong");

    // The log holds each event once, in frame order.
    assert_eq!(
        logged_numbers(&hub, "burst.x").await,
        (0..23).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn transient_publishes_reach_live_subscribers_and_are_never_logged() {
    let hub = TestHub::start().await.expect("hub");
    let mut sub = connect(&hub).await;
    send(
        &mut sub,
        json!({"op": "subscribe", "id": "m", "topics": ["metrics.>"], "filter": {"host": ["a"]}}),
    )
    .await;
    assert_eq!(recv(&mut sub).await, json!({"op": "subscribed", "id": "m"}));

    // One burst: transient publishes around a durable one, a transient
    // one the filter refuses, and a transient one that asks for a delay.
    let transient = |r: &str, i: i64, host: &str| {
        json!({"op": "publish", "ref": r, "transient": true,
               "event": {"topic": "metrics.cpu", "data": {"i": i, "host": host}}})
    };
    let mut frames: Vec<Value> = (0..40)
        .map(|i| transient(&format!("t{i}"), i, "a"))
        .collect();
    frames.push(json!({"op": "publish", "ref": "d", "event": {"topic": "metrics.cpu", "data": {"i": 40, "host": "a"}}}));
    frames.push(transient("t41", 41, "b"));
    frames.push(json!({"op": "publish", "ref": "late", "transient": true,
        "event": {"topic": "metrics.cpu", "delayms": 1000, "data": {"host": "a"}}}));
    frames.push(transient("t42", 42, "a"));
    let mut publisher = connect(&hub).await;
    send_burst(&mut publisher, &frames).await;

    // Answers in frame order: transient ones say how many subscriptions
    // they reached and have no offset; the durable one has its offset.
    for i in 0..40 {
        let f = recv(&mut publisher).await;
        assert_eq!(
            (f["op"].clone(), f["ref"].clone()),
            (json!("published"), json!(format!("t{i}"))),
            "{f}"
        );
        assert_eq!(f["events"][0]["delivered_to"], 1, "{f}");
        assert!(f["events"][0].get("offset").is_none(), "{f}");
    }
    let durable = recv(&mut publisher).await;
    assert_eq!(durable["ref"], "d", "{durable}");
    let offset = durable["events"][0]["offset"].as_u64().expect("offset");
    assert!(
        durable["events"][0].get("delivered_to").is_none(),
        "{durable}"
    );
    let refused_by_filter = recv(&mut publisher).await;
    assert_eq!(refused_by_filter["ref"], "t41", "{refused_by_filter}");
    assert_eq!(refused_by_filter["events"][0]["delivered_to"], 0);
    let late = recv(&mut publisher).await;
    assert_eq!(
        (
            late["op"].clone(),
            late["ref"].clone(),
            late["code"].clone()
        ),
        (json!("error"), json!("late"), json!("VALIDATION_FAILED")),
        "{late}"
    );
    assert_eq!(late["errors"][0]["field"], "delayms", "{late}");
    assert_eq!(recv(&mut publisher).await["ref"], "t42");

    // The subscriber gets the transient events in the order published,
    // without offsets; the durable one carries its offset.
    let mut got = Vec::new();
    while got.len() < 42 {
        let f = recv(&mut sub).await;
        assert_eq!(f["op"], "event", "{f}");
        let e = &f["event"];
        let i = e["data"]["i"].as_i64().expect("i");
        if i == 40 {
            assert_eq!(e["offset"], offset, "{f}");
        } else {
            assert!(
                e.get("offset").is_none(),
                "a transient event has no offset: {f}"
            );
        }
        got.push(i);
    }
    let transient_order: Vec<i64> = got.iter().copied().filter(|&i| i != 40).collect();
    let mut want: Vec<i64> = (0..40).collect();
    want.push(42);
    assert_eq!(transient_order, want);
    assert!(got.contains(&40));

    // The log holds the durable event only.
    let page = hub.get_json("/api/v1/events?topic=metrics.>&after=0").await;
    let logged: Vec<i64> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["data"]["i"].as_i64().expect("i"))
        .collect();
    assert_eq!(logged, [40]);

    // The connections survive: both still answer.
    send(&mut publisher, json!({"op": "ping"})).await;
    assert_eq!(recv(&mut publisher).await, json!({"op": "pong"}));
    send(&mut sub, json!({"op": "ping"})).await;
    assert_eq!(recv(&mut sub).await, json!({"op": "pong"}));
}

#[tokio::test]
async fn quiet_transient_publishes_are_answered_only_when_refused() {
    let hub = TestHub::start().await.expect("hub");
    let mut sub = connect(&hub).await;
    send(
        &mut sub,
        json!({"op": "subscribe", "id": "m", "topics": ["metrics.>"]}),
    )
    .await;
    assert_eq!(recv(&mut sub).await, json!({"op": "subscribed", "id": "m"}));

    // One burst: quiet publishes around two that are refused (a delay; a
    // quiet publish to log) and one transient publish that is not quiet,
    // then a ping.
    let quiet = |i: i64| {
        json!({"op": "publish", "ref": format!("q{i}"), "transient": true, "quiet": true,
               "event": {"topic": "metrics.cpu", "data": {"i": i}}})
    };
    let mut frames: Vec<Value> = (0..30).map(quiet).collect();
    frames.push(
        json!({"op": "publish", "ref": "late", "transient": true, "quiet": true,
        "event": {"topic": "metrics.cpu", "delayms": 1000, "data": {"i": -1}}}),
    );
    frames.push(json!({"op": "publish", "ref": "logged", "quiet": true,
        "event": {"topic": "metrics.cpu", "data": {"i": -2}}}));
    frames.push(json!({"op": "publish", "ref": "loud", "transient": true,
        "event": {"topic": "metrics.cpu", "data": {"i": 100}}}));
    frames.extend((30..35).map(quiet));
    frames.push(json!({"op": "ping"}));
    let mut publisher = connect(&hub).await;
    send_burst(&mut publisher, &frames).await;

    // Only the refusals, the loud publish and the pong are answered, in
    // frame order.
    let late = recv(&mut publisher).await;
    assert_eq!(
        (late["op"].clone(), late["ref"].clone()),
        (json!("error"), json!("late")),
        "{late}"
    );
    assert_eq!(late["errors"][0]["field"], "delayms", "{late}");
    let logged = recv(&mut publisher).await;
    assert_eq!(
        (logged["op"].clone(), logged["ref"].clone()),
        (json!("error"), json!("logged")),
        "{logged}"
    );
    assert_eq!(logged["errors"][0]["field"], "quiet", "{logged}");
    let loud = recv(&mut publisher).await;
    assert_eq!(
        (loud["op"].clone(), loud["ref"].clone()),
        (json!("published"), json!("loud")),
        "{loud}"
    );
    assert_eq!(loud["events"][0]["delivered_to"], 1, "{loud}");
    assert_eq!(recv(&mut publisher).await, json!({"op": "pong"}));

    // A quiet publish on its own, then a ping: the pong is the next frame.
    send(&mut publisher, quiet(35)).await;
    send(&mut publisher, json!({"op": "ping"})).await;
    assert_eq!(recv(&mut publisher).await, json!({"op": "pong"}));

    // The subscriber gets every event accepted, in the order published.
    let mut got = Vec::new();
    while got.len() < 37 {
        let f = recv(&mut sub).await;
        assert_eq!(f["op"], "event", "{f}");
        assert!(f["event"].get("offset").is_none(), "{f}");
        got.push(f["event"]["data"]["i"].as_i64().expect("i"));
    }
    let mut want: Vec<i64> = (0..30).collect();
    want.push(100);
    want.extend(30..36);
    assert_eq!(got, want);

    // Nothing was logged, the refused quiet publish included.
    let page = hub.get_json("/api/v1/events?topic=metrics.>&after=0").await;
    assert_eq!(page["events"], json!([]), "{page}");
}
