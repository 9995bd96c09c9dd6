//! The event bus over HTTP: publish, read the log, stream with SSE.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard_client::{EventQuery, From};
use switchboard_test::{DataDir, HubProcess, TestHub};
use switchboard_wire::CloudEvent;

use crate::bin;

async fn publish(hub: &TestHub, body: Value) -> (StatusCode, Value) {
    let resp = hub
        .http
        .post(hub.url("/api/v1/events"))
        .json(&body)
        .send()
        .await
        .expect("send");
    let status = resp.status();
    (status, resp.json().await.expect("json"))
}

async fn read(hub: &TestHub, query: &str) -> Value {
    let resp = hub
        .http
        .get(hub.url(&format!("/api/v1/events?{query}")))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK, "GET /api/v1/events?{query}");
    resp.json().await.expect("json")
}

fn topics(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["topic"].as_str().expect("topic").to_owned())
        .collect()
}

/// Reads events from a stream until `n` arrived, within a deadline.
async fn take(stream: &mut switchboard_client::EventStream, n: usize) -> Vec<CloudEvent> {
    let mut got = Vec::with_capacity(n);
    tokio::time::timeout(Duration::from_secs(30), async {
        while got.len() < n {
            match stream.next().await.expect("stream") {
                Some(e) => got.push(e),
                None => panic!("stream ended after {} events", got.len()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {n} events arrived in 30s", got.len()));
    got
}

#[tokio::test]
async fn publish_single_batch_and_binary_then_read_in_order() {
    let hub = TestHub::start().await.expect("hub");
    let (s, ack) = publish(
        &hub,
        json!({
            "specversion": "1.0", "id": "e-1", "source": "/agents/a1", "type": "task.progress",
            "topic": "task.codegen.progress", "subject": "task-001",
            "time": "2025-01-15T12:00:00Z", "correlationid": "workflow-123",
            "data": {"task_id": "task-001", "progress": 75}
        }),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{ack}");
    let first = ack["events"][0]["offset"].as_u64().expect("offset");
    assert_eq!(ack["events"][0]["id"], "e-1");

    let (s, ack) = publish(
        &hub,
        json!([
            {"topic": "task.codegen.completed", "data": {"n": 1}},
            {"type": "workflow.started", "data": {"n": 2}}
        ]),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{ack}");
    let offsets = crate::offsets(&ack);
    assert_eq!(offsets, [first + 1, first + 2]);
    // The type defaults to the topic and the topic to the type.
    assert_eq!(ack["events"][1]["topic"], "workflow.started");

    let resp = hub
        .http
        .post(hub.url("/api/v1/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "bin-1")
        .header("ce-source", "/agents/b")
        .header("ce-type", "system.alert")
        .header("ce-topic", "system.alert")
        .header("ce-partitionkey", "k1")
        .header("content-type", "application/json")
        .body(r#"{"level": "warn"}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::CREATED);

    let page = read(&hub, "").await;
    assert_eq!(
        topics(&page),
        [
            "task.codegen.progress",
            "task.codegen.completed",
            "workflow.started",
            "system.alert"
        ]
    );
    let e = &page["events"][0];
    assert_eq!(e["specversion"], "1.0");
    assert_eq!(e["source"], "/agents/a1");
    assert_eq!(e["type"], "task.progress");
    assert_eq!(e["subject"], "task-001");
    assert_eq!(e["time"], "2025-01-15T12:00:00Z");
    assert_eq!(e["datacontenttype"], "application/json");
    assert_eq!(e["correlationid"], "workflow-123");
    assert_eq!(e["data"]["progress"], 75);
    let b = &page["events"][3];
    assert_eq!(b["id"], "bin-1");
    assert_eq!(b["partitionkey"], "k1");
    assert_eq!(b["data"]["level"], "warn");
    assert_eq!(page["next_after"], first + 3);
}

#[tokio::test]
async fn read_filters_by_pattern_payload_offset_and_time() {
    let hub = TestHub::start().await.expect("hub");
    let events = [
        (
            "task.codegen.completed",
            json!({"priority": "high", "project_id": "proj-456"}),
        ),
        (
            "task.codegen.failed",
            json!({"priority": "high", "project_id": "proj-456"}),
        ),
        (
            "task.review.completed",
            json!({"priority": "low", "project_id": "proj-456"}),
        ),
        (
            "workflow.stage_completed",
            json!({"priority": "critical", "project_id": "proj-1"}),
        ),
        (
            "workflow.wf1.stage.done",
            json!({"priority": "critical", "project_id": "proj-456"}),
        ),
    ];
    for (topic, data) in &events {
        let (s, _) = publish(&hub, json!({"topic": topic, "data": data})).await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let cases: &[(&str, &[&str])] = &[
        (
            "topic=task.*.completed",
            &["task.codegen.completed", "task.review.completed"],
        ),
        (
            "topic=task.>",
            &[
                "task.codegen.completed",
                "task.codegen.failed",
                "task.review.completed",
            ],
        ),
        (
            "topic=workflow.>",
            &["workflow.stage_completed", "workflow.wf1.stage.done"],
        ),
        ("topic=workflow.*", &["workflow.stage_completed"]),
        (
            "topic=task.codegen.*,workflow.*",
            &[
                "task.codegen.completed",
                "task.codegen.failed",
                "workflow.stage_completed",
            ],
        ),
        ("topic=nothing.here", &[]),
        (
            r#"filter={"priority":["high","critical"],"project_id":"proj-456"}"#,
            &[
                "task.codegen.completed",
                "task.codegen.failed",
                "workflow.wf1.stage.done",
            ],
        ),
        (
            r#"topic=task.>&filter={"priority":"low"}"#,
            &["task.review.completed"],
        ),
        (
            "limit=2",
            &["task.codegen.completed", "task.codegen.failed"],
        ),
    ];
    for (query, want) in cases {
        let q: String = query
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').expect("k=v");
                format!("{k}={}", url_encode(v))
            })
            .collect::<Vec<_>>()
            .join("&");
        assert_eq!(topics(&read(&hub, &q).await), *want, "query {query}");
    }
    let all = read(&hub, "").await;
    let third = all["events"][2]["offset"].as_u64().expect("offset");
    assert_eq!(
        topics(&read(&hub, &format!("after={third}")).await),
        ["workflow.stage_completed", "workflow.wf1.stage.done"]
    );
    // From a time after everything: nothing; from long ago: everything.
    assert!(topics(&read(&hub, "from_time=2999-01-01T00:00:00Z").await).is_empty());
    assert_eq!(
        topics(&read(&hub, "from_time=2000-01-01T00:00:00Z").await).len(),
        5
    );
}

fn url_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn bad_events_are_refused_whole_with_each_field_named() {
    let hub = TestHub::start().await.expect("hub");
    // Arrays in arrays 127 deep: one level deeper than an event's data
    // may go.
    let too_deep = (0..127).fold(json!(1), |v, _| json!([v]));
    let cases = [
        (json!({"data": 1}), 422, vec!["topic"]),
        (json!({"topic": "t", "data": too_deep}), 422, vec!["data"]),
        (json!({"topic": "a..b"}), 422, vec!["topic"]),
        (json!({"topic": "task.*"}), 422, vec!["topic"]),
        (
            json!({"topic": "t", "specversion": "0.3"}),
            422,
            vec!["specversion"],
        ),
        (
            json!({"topic": "t", "Bad_Name": "x"}),
            422,
            vec!["Bad_Name"],
        ),
        (
            json!({"topic": "t", "traceinfo": {"nested": true}}),
            422,
            vec!["traceinfo"],
        ),
        (json!({"topic": "t", "id": ""}), 422, vec!["id"]),
        (
            json!({"topic": "t", "time": "yesterday"}),
            422,
            vec!["time"],
        ),
        (
            json!({"topic": "t", "datacontenttype": "image/png"}),
            422,
            vec!["datacontenttype"],
        ),
        (
            json!([{"topic": "ok"}, {"topic": "bad topic"}, {"data": 1}]),
            422,
            vec!["events[1].topic", "events[2].topic"],
        ),
        (
            json!([{"topic": "ok"}, {"topic": 5}]),
            422,
            vec!["events[1].topic"],
        ),
    ];
    for (body, status, fields) in cases {
        let (s, p) = publish(&hub, body.clone()).await;
        assert_eq!(s.as_u16(), status, "{body} -> {p}");
        let got: Vec<&str> = p["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .map(|e| e["field"].as_str().expect("field"))
            .collect();
        assert_eq!(got, fields, "{body} -> {p}");
    }
    let resp = hub
        .http
        .post(hub.url("/api/v1/events"))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    for q in [
        "topic=a..b",
        "after=-1",
        "from_time=noon",
        "limit=0",
        r#"filter=[1]"#,
        "colour=red",
    ] {
        let resp = hub
            .http
            .get(hub.url(&format!("/api/v1/events?{q}")))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{q}");
    }
    // Nothing of the refused batches was stored.
    assert!(topics(&read(&hub, "").await).is_empty());
}

/// An event's data comes back as the JSON text it was published with,
/// spacing and number forms included, from the log and live.
#[tokio::test]
async fn data_comes_back_as_the_text_published() {
    let hub = TestHub::start().await.expect("hub");
    let data = r#"{ "price" : 1.50, "tags":["a" , "b"], "note": "caf\u00e9" }"#;
    let mut stream = hub
        .http
        .get(hub.url("/api/v1/events/stream?topic=raw.>"))
        .send()
        .await
        .expect("stream");
    let body = format!(r#"{{"topic": "raw.text", "data": {data}}}"#);
    let resp = hub
        .http
        .post(hub.url("/api/v1/events"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let field = format!(r#""data":{data}"#);

    let page = hub
        .http
        .get(hub.url("/api/v1/events?topic=raw.>"))
        .send()
        .await
        .expect("read");
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.expect("text");
    assert!(page.contains(&field), "{page}");
    let parsed: Value = serde_json::from_str(&page).expect("JSON");
    assert_eq!(
        parsed["events"][0]["data"],
        json!({"price": 1.5, "tags": ["a", "b"], "note": "café"})
    );

    // Live, over SSE.
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains(&field) {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .expect("the event within 10 s")
            .expect("read")
            .expect("open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn stream_delivers_matching_events_live_in_order() {
    let hub = TestHub::start().await.expect("hub");
    let q = EventQuery {
        topics: vec!["task.>".into()],
        filter: Some(
            json!({"priority": ["high", "critical"]})
                .as_object()
                .expect("obj")
                .clone(),
        ),
        ..Default::default()
    };
    let mut stream = hub.api.stream_events(&q, None).await.expect("stream");
    // Published after the stream opened: only the matching ones arrive.
    for i in 0..30 {
        let (topic, priority) = match i % 3 {
            0 => ("task.a.done", "high"),
            1 => ("task.b.done", "low"),
            _ => ("other.topic", "high"),
        };
        let (s, _) = publish(
            &hub,
            json!({"topic": topic, "data": {"i": i, "priority": priority}}),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let got = take(&mut stream, 10).await;
    let is: Vec<i64> = got
        .iter()
        .map(|e| e.data.as_ref().expect("data")["i"].as_i64().expect("i"))
        .collect();
    assert_eq!(is, (0..30).step_by(3).collect::<Vec<i64>>());
    assert!(got.windows(2).all(|w| w[0].offset < w[1].offset));
}

#[tokio::test]
async fn stream_resumes_after_last_event_id_without_gaps() {
    let hub = TestHub::start().await.expect("hub");
    let q = EventQuery {
        topics: vec!["orders.>".into()],
        ..Default::default()
    };
    let mut stream = hub.api.stream_events(&q, None).await.expect("stream");
    for i in 0..5 {
        publish(&hub, json!({"topic": "orders.created", "data": {"i": i}})).await;
    }
    let got = take(&mut stream, 5).await;
    let last = got[4].offset.expect("a logged event has an offset");
    drop(stream);
    // Published while nobody listens.
    for i in 5..12 {
        publish(&hub, json!({"topic": "orders.created", "data": {"i": i}})).await;
    }
    let mut stream = hub.api.stream_events(&q, Some(last)).await.expect("resume");
    for i in 12..15 {
        publish(&hub, json!({"topic": "orders.created", "data": {"i": i}})).await;
    }
    let got = take(&mut stream, 10).await;
    let is: Vec<i64> = got
        .iter()
        .map(|e| e.data.as_ref().expect("data")["i"].as_i64().expect("i"))
        .collect();
    assert_eq!(is, (5..15).collect::<Vec<i64>>());
}

#[tokio::test]
async fn slow_subscriber_catches_up_from_the_log() {
    // A tiny buffer: the subscriber falls behind at once and must be
    // served from the log, in order, with nothing missing or repeated.
    let hub = TestHub::start_with(
        DataDir::temp().expect("tmp"),
        "[bus]\nsubscriber_buffer = 4\n",
    )
    .await
    .expect("hub");
    let q = EventQuery {
        topics: vec!["load.>".into()],
        ..Default::default()
    };
    let mut stream = hub.api.stream_events(&q, None).await.expect("stream");
    let blob = "x".repeat(1000);
    let total = 3000;
    for chunk in 0..(total / 500) {
        let batch: Vec<Value> = (0..500)
            .map(|i| json!({"topic": "load.test", "data": {"i": chunk * 500 + i, "blob": blob}}))
            .collect();
        let (s, _) = publish(&hub, Value::Array(batch)).await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let got = take(&mut stream, total).await;
    let is: Vec<i64> = got
        .iter()
        .map(|e| e.data.as_ref().expect("data")["i"].as_i64().expect("i"))
        .collect();
    assert_eq!(is, (0..total as i64).collect::<Vec<i64>>());
}

#[tokio::test]
async fn stream_replays_history_then_goes_live() {
    let hub = TestHub::start().await.expect("hub");
    for i in 0..3 {
        publish(&hub, json!({"topic": "hist.x", "data": {"i": i}})).await;
    }
    let q = EventQuery {
        topics: vec!["hist.*".into()],
        from: From::After(0),
        ..Default::default()
    };
    let mut stream = hub.api.stream_events(&q, None).await.expect("stream");
    let got = take(&mut stream, 3).await;
    assert_eq!(got.len(), 3);
    publish(&hub, json!({"topic": "hist.x", "data": {"i": 3}})).await;
    let got = take(&mut stream, 1).await;
    assert_eq!(got[0].data.as_ref().expect("data")["i"], 3);
}

#[tokio::test]
async fn acknowledged_events_survive_kill_9_exactly_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut hub = HubProcess::spawn(bin(), dir.path(), &[])
        .await
        .expect("spawn");
    let client = hub.client().expect("client");
    // Publishers run concurrently; the hub is killed while they do.
    let mut tasks = Vec::new();
    for p in 0..4 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0.. {
                let e = switchboard_wire::PublishEvent {
                    topic: Some("crash.test".into()),
                    id: Some(format!("p{p}-{i}")),
                    ..Default::default()
                };
                match client.publish(&[e]).await {
                    Ok(ack) => acked.push(ack.events[0].id.clone()),
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    // Let some events through, then kill.
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let page = client
                .read_events(&EventQuery {
                    limit: Some(1000),
                    ..Default::default()
                })
                .await
                .expect("read");
            if page.events.len() >= 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("200 events within 30s");
    hub.signal("-KILL").await.expect("kill");
    hub.wait(Duration::from_secs(10)).await.expect("exit");
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.expect("publisher"));
    }

    let hub = HubProcess::spawn(bin(), dir.path(), &[])
        .await
        .expect("respawn");
    let client = hub.client().expect("client");
    let mut stored = Vec::new();
    let mut offsets = std::collections::HashMap::new();
    let mut after = 0;
    loop {
        let page = client
            .read_events(&EventQuery {
                from: From::After(after),
                limit: Some(1000),
                ..Default::default()
            })
            .await
            .expect("read");
        if page.events.is_empty() {
            break;
        }
        after = page.next_after;
        for e in page.events {
            offsets.insert(e.id.clone(), e.offset);
            stored.push(e.id);
        }
    }
    let mut unique = stored.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), stored.len(), "an event was stored twice");
    for id in &acked {
        assert!(
            stored.contains(id),
            "acknowledged event {id} is missing after kill -9"
        );
    }
    assert!(acked.len() >= 200, "only {} acknowledged", acked.len());

    // A publisher retrying after the crash gets the stored copies: the
    // restarted hub knows the ids of its window from the log.
    let retried: Vec<&String> = acked
        .iter()
        .take(3)
        .chain(acked.iter().rev().take(3))
        .collect();
    for id in retried {
        let e = switchboard_wire::PublishEvent {
            topic: Some("crash.test".into()),
            id: Some(id.clone()),
            ..Default::default()
        };
        let ack = client.publish(&[e]).await.expect("retry");
        let offset = ack.events[0].offset;
        assert!(offset.is_some(), "retry of {id} answered without an offset");
        assert_eq!(offset, offsets.get(id).copied().flatten(), "retry of {id}");
    }
    let page = client
        .read_events(&EventQuery {
            from: From::After(after),
            limit: Some(10),
            ..Default::default()
        })
        .await
        .expect("read");
    assert!(page.events.is_empty(), "a retry was stored again");
}

#[tokio::test]
async fn the_registry_publishes_its_changes() {
    let fast = "[registry]\nheartbeat_interval = \"100ms\"\nstale_after_missed = 3\noffline_after_missed = 100\nsweep_interval = \"20ms\"\n";
    let hub = TestHub::start_with(DataDir::temp().expect("tmp"), fast)
        .await
        .expect("hub");
    let q = EventQuery {
        topics: vec!["agent.>".into()],
        ..Default::default()
    };
    let mut stream = hub.api.stream_events(&q, None).await.expect("stream");
    hub.http
        .post(hub.url("/api/v1/agents/register"))
        .json(&crate::agent("ev-1", "worker", &["x"]))
        .send()
        .await
        .expect("send");
    hub.http
        .post(hub.url("/api/v1/agents/ev-1/heartbeat"))
        .json(&json!({"status": "busy"}))
        .send()
        .await
        .expect("send");
    // Silent now: the sweeper marks it stale (and says so on the bus).
    let got = take(&mut stream, 3).await;
    let summary: Vec<(String, Value)> = got
        .iter()
        .map(|e| (e.event_type.clone(), e.data.clone().expect("data")))
        .collect();
    assert_eq!(summary[0].0, "agent.registered");
    assert_eq!(summary[0].1["agent_id"], "ev-1");
    assert_eq!(summary[0].1["new"], true);
    assert_eq!(summary[1].0, "agent.status_changed");
    assert_eq!(
        (&summary[1].1["from"], &summary[1].1["to"]),
        (&json!("active"), &json!("busy"))
    );
    assert_eq!(summary[2].0, "agent.status_changed");
    assert_eq!(
        (&summary[2].1["from"], &summary[2].1["to"]),
        (&json!("busy"), &json!("stale"))
    );
    assert!(got.iter().all(|e| e.subject.as_deref() == Some("ev-1")));
    assert!(got.iter().all(|e| e.source == "/switchboard/registry"));

    let resp = hub
        .http
        .delete(hub.url("/api/v1/agents/ev-1"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let got = take(&mut stream, 1).await;
    assert_eq!(got[0].event_type, "agent.removed");
    // The same events are in the log, in the same order.
    let page = read(&hub, "topic=agent.>").await;
    let types: Vec<&str> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(
        types,
        [
            "agent.registered",
            "agent.status_changed",
            "agent.status_changed",
            "agent.removed"
        ]
    );
}

#[tokio::test]
async fn repeated_event_ids_are_acknowledged_but_stored_once() {
    let hub = TestHub::start_with(
        DataDir::temp().expect("tmp"),
        "[bus]\ndedup_window = \"300ms\"\n",
    )
    .await
    .expect("hub");
    let event =
        json!({"id": "dup-1", "source": "/agents/a", "topic": "orders.created", "data": {"n": 1}});
    let (s, first) = publish(&hub, event.clone()).await;
    assert_eq!(s, StatusCode::CREATED);
    let offset = first["events"][0]["offset"].as_u64().expect("offset");
    // A retry of the same event, alone and inside a batch (twice): every
    // answer carries the first offset.
    let (s, again) = publish(&hub, event.clone()).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(again["events"][0]["offset"], offset);
    let other_source = json!({"id": "dup-1", "source": "/agents/b", "topic": "orders.created"});
    let (_, batch) = publish(&hub, json!([event, other_source, event])).await;
    let offsets = crate::offsets(&batch);
    assert_eq!(offsets[0], offset);
    assert_eq!(offsets[2], offset);
    assert!(
        offsets[1] > offset,
        "same id from another source is another event"
    );
    assert_eq!(topics(&read(&hub, "").await).len(), 2);

    // Once the window has passed, the same id is a new event.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, later) = publish(&hub, event).await;
    assert!(later["events"][0]["offset"].as_u64().expect("offset") > offsets[1]);
    assert_eq!(topics(&read(&hub, "").await).len(), 3);
}

#[tokio::test]
async fn delayed_events_are_held_then_delivered_even_across_a_restart() {
    let hub = TestHub::start().await.expect("hub");
    let mut stream = hub
        .api
        .stream_events(
            &EventQuery {
                topics: vec!["remind.>".into()],
                ..Default::default()
            },
            None,
        )
        .await
        .expect("stream");
    let sent = tokio::time::Instant::now();
    let (status, ack) = publish(
        &hub,
        json!([
            {"topic": "remind.later", "delayms": 400, "data": {"n": "later"}},
            {"topic": "remind.now", "data": {"n": "now"}},
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{ack}");
    let held = &ack["events"][0];
    assert_eq!(held["offset"], Value::Null, "{ack}");
    assert!(held["scheduled_for"].is_string(), "{ack}");
    assert!(ack["events"][1]["offset"].as_u64().is_some(), "{ack}");

    let got = take(&mut stream, 2).await;
    assert_eq!(got[0].data.as_ref().expect("data")["n"], "now");
    assert_eq!(got[1].data.as_ref().expect("data")["n"], "later");
    assert!(
        sent.elapsed() >= Duration::from_millis(380),
        "delivered after {:?}",
        sent.elapsed()
    );
    assert_eq!(got[1].extensions["deliverat"], held["scheduled_for"]);

    // Held durably: a hub stopped before the time delivers after restart.
    let (_, ack) = publish(&hub, json!({"topic": "remind.restart", "delayms": 3000})).await;
    assert_eq!(ack["events"][0]["offset"], Value::Null);
    let data = hub.stop().await.expect("stop");
    let hub = TestHub::start_with(data, "").await.expect("restart");
    assert_eq!(
        topics(&read(&hub, "topic=remind.restart&after=0").await).len(),
        0,
        "not yet due"
    );
    switchboard_test::eventually(
        Duration::from_secs(10),
        "the held event arrives",
        || async {
            (topics(&read(&hub, "topic=remind.restart&after=0").await).len() == 1).then_some(())
        },
    )
    .await
    .expect("delivered after restart");

    // A time in the past is now; bad schedules are refused, naming the field.
    let (_, ack) = publish(
        &hub,
        json!({"topic": "remind.past", "deliverat": "2020-01-01T00:00:00Z"}),
    )
    .await;
    assert!(ack["events"][0]["offset"].as_u64().is_some(), "{ack}");
    for (body, field) in [
        (json!({"topic": "t", "deliverat": "tomorrow"}), "deliverat"),
        (json!({"topic": "t", "delayms": -5}), "delayms"),
        (
            json!({"topic": "t", "delayms": 5, "deliverat": "2030-01-01T00:00:00Z"}),
            "delayms",
        ),
        (
            json!({"topic": "t", "deliverat": "2999-01-01T00:00:00Z"}),
            "deliverat",
        ),
    ] {
        let (status, v) = publish(&hub, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
        assert_eq!(v["errors"][0]["field"], field, "{body}: {v}");
    }
}

#[tokio::test]
async fn compacted_topics_keep_the_latest_event_per_key() {
    let toml = "[bus]\ncompact_topics = [\"config.>\"]\nretention_interval = \"50ms\"\n";
    let hub = TestHub::start_with(DataDir::temp().expect("dir"), toml)
        .await
        .expect("hub");
    let mut batch = Vec::new();
    for i in 0..10 {
        let key = if i % 2 == 0 { "db" } else { "cache" };
        batch.push(json!({"topic": "config.app", "partitionkey": key, "data": {"v": i}}));
    }
    batch.push(json!({"topic": "config.app", "data": {"v": "keyless"}}));
    batch.push(json!({"topic": "audit.app", "partitionkey": "db", "data": {"v": "other topic"}}));
    let (status, _) = publish(&hub, Value::Array(batch)).await;
    assert_eq!(status, StatusCode::CREATED);
    let page = switchboard_test::eventually(Duration::from_secs(10), "compaction", || async {
        let page = read(&hub, "after=0").await;
        (page["events"].as_array().map(Vec::len) == Some(4)).then_some(page)
    })
    .await
    .expect("compacted");
    let kept: Vec<Value> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["data"]["v"].clone())
        .collect();
    assert_eq!(
        kept,
        [json!(8), json!(9), json!("keyless"), json!("other topic")]
    );
}

#[tokio::test]
async fn the_log_keeps_to_its_size_and_age_limits() {
    let toml = "[bus]\nretention_max_bytes = 20000\nretention_interval = \"50ms\"\n";
    let hub = TestHub::start_with(DataDir::temp().expect("dir"), toml)
        .await
        .expect("hub");
    let big = "x".repeat(1000);
    let batch: Vec<Value> = (0..50)
        .map(|i| json!({"topic": "bulk.load", "data": {"i": i, "pad": big}}))
        .collect();
    let (_, ack) = publish(&hub, Value::Array(batch)).await;
    let last = ack["events"][49]["offset"].as_u64().expect("offset");
    let page = switchboard_test::eventually(Duration::from_secs(10), "trimmed to size", || async {
        let page = read(&hub, "after=0&limit=1000").await;
        (page["events"].as_array().map(Vec::len) < Some(50)).then_some(page)
    })
    .await
    .expect("trimmed");
    let events = page["events"].as_array().expect("events");
    assert!(
        (15..=19).contains(&events.len()),
        "{} events kept",
        events.len()
    );
    assert_eq!(
        events.last().expect("last")["offset"],
        last,
        "the newest stay"
    );
    let data = hub.stop().await.expect("stop");

    // By age: everything older than a second goes; offsets never repeat,
    // even once the log is empty and the hub restarts.
    let hub = TestHub::start_with(
        data,
        "[bus]\nretention_max_age = \"1s\"\nretention_interval = \"50ms\"\n",
    )
    .await
    .expect("restart");
    switchboard_test::eventually(Duration::from_secs(10), "expired", || async {
        (read(&hub, "after=0").await["events"] == json!([])).then_some(())
    })
    .await
    .expect("expired");
    let data = hub.stop().await.expect("stop");
    let hub = TestHub::start_with(data, "").await.expect("restart");
    let (_, ack) = publish(&hub, json!({"topic": "bulk.load"})).await;
    assert!(
        ack["events"][0]["offset"].as_u64().expect("offset") > last,
        "{ack}"
    );
}

#[tokio::test]
async fn transient_events_over_http_reach_the_stream_and_stay_out_of_the_log() {
    let hub = TestHub::start().await.expect("hub");
    let q = EventQuery {
        topics: vec!["presence.>".into()],
        ..Default::default()
    };
    let mut stream = hub.api.stream_events(&q, None).await.expect("stream");
    let post = |query: &'static str, body: Value| {
        let req = hub
            .http
            .post(hub.url(&format!("/api/v1/events{query}")))
            .json(&body);
        async move {
            let resp = req.send().await.expect("send");
            let status = resp.status();
            (status, resp.json::<Value>().await.expect("json"))
        }
    };
    let (s, ack) = post(
        "?transient=true",
        json!([
            {"topic": "presence.agent-1", "data": {"n": 1}},
            {"topic": "presence.agent-2", "data": {"n": 2}},
            {"topic": "elsewhere.x", "data": {"n": 3}}
        ]),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{ack}");
    let reached: Vec<u64> = ack["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            assert!(e.get("offset").is_none(), "{e}");
            e["delivered_to"].as_u64().expect("delivered_to")
        })
        .collect();
    assert_eq!(reached, [1, 1, 0]);
    let (s, ack) = post("", json!({"topic": "presence.agent-1", "data": {"n": 4}})).await;
    assert_eq!(s, StatusCode::CREATED, "{ack}");
    let offset = ack["events"][0]["offset"].as_u64().expect("offset");

    let got = take(&mut stream, 3).await;
    let seen: Vec<(i64, Option<u64>)> = got
        .iter()
        .map(|e| {
            (
                e.data.as_ref().expect("data")["n"].as_i64().expect("n"),
                e.offset,
            )
        })
        .collect();
    assert_eq!(seen, [(1, None), (2, None), (4, Some(offset))]);

    // Only the durable event is in the log; a reader from the start sees
    // nothing else.
    let page = read(&hub, "topic=presence.>&after=0").await;
    assert_eq!(topics(&page), ["presence.agent-1"]);
    assert_eq!(page["events"][0]["offset"], offset);

    // A transient event cannot be delayed, and the query is checked.
    let (s, problem) = post(
        "?transient=true",
        json!({"topic": "presence.x", "deliverat": "2099-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "deliverat", "{problem}");
    for (query, field) in [
        ("?transient=yes", "transient"),
        ("?transent=true", "transent"),
    ] {
        let (s, problem) = post(query, json!({"topic": "presence.x"})).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {problem}");
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    let page = read(&hub, "topic=presence.>&after=0").await;
    assert_eq!(
        topics(&page),
        ["presence.agent-1"],
        "nothing refused was logged"
    );

    // The client library speaks it too.
    let ack = hub
        .api
        .publish_transient(&[switchboard_wire::PublishEvent {
            topic: Some("presence.agent-3".into()),
            ..Default::default()
        }])
        .await
        .expect("publish");
    assert_eq!(ack.events[0].delivered_to, Some(1));
    assert_eq!(ack.events[0].offset, None);
    let got = take(&mut stream, 1).await;
    assert_eq!(
        (got[0].topic.as_str(), got[0].offset),
        ("presence.agent-3", None)
    );
}
