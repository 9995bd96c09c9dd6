//! Consumer groups over real HTTP and WebSockets: acknowledgements,
//! redelivery, dead letters, competing consumers, priority, ordering by
//! partition key, and state across a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard_test::{DataDir, TestHub, eventually};

use crate::ws::{Ws, connect, recv, send};

async fn call(hub: &TestHub, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = hub.http.request(m, hub.url(path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status();
    let text = resp.text().await.expect("body");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    };
    (status, value)
}

async fn create(hub: &TestHub, name: &str, body: Value) -> Value {
    let (status, v) = call(hub, "PUT", &format!("/api/v1/groups/{name}"), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v
}

async fn publish(hub: &TestHub, events: Vec<Value>) -> Vec<u64> {
    let (status, v) = call(hub, "POST", "/api/v1/events", Some(Value::Array(events))).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    crate::offsets(&v)
}

async fn pull(hub: &TestHub, group: &str, max: u32, wait_ms: u64) -> Vec<Value> {
    let (status, v) = call(
        hub,
        "POST",
        &format!("/api/v1/groups/{group}/pull"),
        Some(json!({"max": max, "wait_ms": wait_ms})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v["deliveries"].as_array().expect("deliveries").clone()
}

async fn settle(hub: &TestHub, group: &str, verb: &str, body: Value) -> Value {
    let (status, v) = call(
        hub,
        "POST",
        &format!("/api/v1/groups/{group}/{verb}"),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v
}

#[tokio::test]
async fn missed_acks_are_redelivered_then_dead_lettered_and_replayed() {
    let hub = TestHub::start().await.expect("hub");
    create(
        &hub,
        "billing",
        json!({"topics": ["invoice.>"], "ack_wait_ms": 300, "max_deliveries": 3,
               "backoff": {"kind": "fixed", "initial_ms": 50, "max_ms": 50, "jitter": 0}}),
    )
    .await;
    let offsets = publish(
        &hub,
        vec![
            json!({"topic": "invoice.created", "data": {"n": 1}}),
            json!({"topic": "other.thing", "data": {"n": 2}}),
        ],
    )
    .await;

    // First delivery, not acknowledged: it comes back after the deadline.
    let first = pull(&hub, "billing", 10, 5000).await;
    assert_eq!(first.len(), 1, "only the matching event: {first:?}");
    assert_eq!(first[0]["offset"], offsets[0]);
    assert_eq!(first[0]["attempt"], 1);
    assert_eq!(first[0]["event"]["data"]["n"], 1);
    let started = tokio::time::Instant::now();
    let second = pull(&hub, "billing", 10, 5000).await;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0]["offset"], offsets[0]);
    assert_eq!(second[0]["attempt"], 2);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "redelivered before the ack deadline: {:?}",
        started.elapsed()
    );

    // A refusal, then the last delivery refused too: dead-lettered.
    let v = settle(
        &hub,
        "billing",
        "nack",
        json!({"offsets": [offsets[0]], "error": "boom 2"}),
    )
    .await;
    assert_eq!(v["settled"], json!([offsets[0]]));
    let third = pull(&hub, "billing", 10, 5000).await;
    assert_eq!(third[0]["attempt"], 3);
    settle(
        &hub,
        "billing",
        "nack",
        json!({"offsets": [offsets[0]], "error": "boom 3"}),
    )
    .await;
    let group = eventually(Duration::from_secs(5), "dead-lettered", || async {
        let g = hub.get_json("/api/v1/groups/billing").await;
        (g["dead_letters"] == 1).then_some(g)
    })
    .await
    .expect("dead letter");
    assert_eq!(group["pending"], 0);
    assert!(
        pull(&hub, "billing", 10, 300).await.is_empty(),
        "a dead letter is not delivered"
    );

    // Announced on the bus, in the same transaction.
    let alerts = hub
        .get_json("/api/v1/events?topic=system.alert&after=0")
        .await;
    let alert = &alerts["events"][0];
    assert_eq!(alert["data"]["kind"], "dead_letter", "{alerts}");
    assert_eq!(alert["data"]["group"], "billing");
    assert_eq!(alert["data"]["offset"], offsets[0]);
    assert_eq!(alert["data"]["last_error"], "boom 3");

    let page = hub.get_json("/api/v1/groups/billing/dead-letters").await;
    let dl = &page["dead_letters"][0];
    assert_eq!(dl["offset"], offsets[0]);
    assert_eq!(dl["attempts"], 3);
    assert_eq!(dl["last_error"], "boom 3");
    assert_eq!(dl["event"]["data"]["n"], 1);
    assert_eq!(page["next_after"], Value::Null);
    let one = hub
        .get_json(&format!(
            "/api/v1/groups/billing/dead-letters/{}",
            offsets[0]
        ))
        .await;
    assert_eq!(one, *dl);

    // Replayed: delivered again with a fresh count, then acknowledged.
    let (status, v) = call(
        &hub,
        "POST",
        "/api/v1/groups/billing/dead-letters/replay",
        Some(json!({})),
    )
    .await;
    assert_eq!((status, v["count"].clone()), (StatusCode::OK, json!(1)));
    let again = pull(&hub, "billing", 10, 5000).await;
    assert_eq!(again[0]["offset"], offsets[0]);
    assert_eq!(again[0]["attempt"], 1);
    let v = settle(
        &hub,
        "billing",
        "ack",
        json!({"offsets": [offsets[0], 999_999]}),
    )
    .await;
    assert_eq!(v["settled"], json!([offsets[0]]));
    assert_eq!(v["not_pending"], json!([999_999]));
    assert!(
        pull(&hub, "billing", 10, 400).await.is_empty(),
        "acknowledged means done"
    );
    let g = hub.get_json("/api/v1/groups/billing").await;
    assert_eq!(
        (g["pending"].clone(), g["dead_letters"].clone()),
        (json!(0), json!(0))
    );

    // Purge: dead letters can be dropped for good.
    let o = publish(&hub, vec![json!({"topic": "invoice.void"})]).await[0];
    for _ in 0..3 {
        let d = pull(&hub, "billing", 1, 5000).await;
        assert_eq!(d[0]["offset"], o);
        settle(
            &hub,
            "billing",
            "nack",
            json!({"offsets": [o], "delay_ms": 0}),
        )
        .await;
    }
    eventually(Duration::from_secs(5), "dead-lettered", || async {
        (hub.get_json("/api/v1/groups/billing").await["dead_letters"] == 1).then_some(())
    })
    .await
    .expect("dead letter");
    let (_, v) = call(
        &hub,
        "POST",
        "/api/v1/groups/billing/dead-letters/purge",
        Some(json!({})),
    )
    .await;
    assert_eq!(v["count"], 1);
    let page = hub.get_json("/api/v1/groups/billing/dead-letters").await;
    assert_eq!(page["dead_letters"], json!([]));
}

/// (consumer, partition key, sequence) of each delivery, in arrival order.
type Seen = Arc<Mutex<Vec<(&'static str, String, u64)>>>;

/// Reads deliveries on a WebSocket consumer and acknowledges each,
/// recording (consumer, partition key, sequence) in arrival order.
async fn ack_all(mut ws: Ws, name: &'static str, seen: Seen, until: usize) -> Ws {
    loop {
        if seen.lock().expect("lock").len() >= until {
            return ws;
        }
        let f = tokio::select! {
            f = recv(&mut ws) => f,
            _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
        };
        assert_eq!(f["op"], "delivery", "{f}");
        let e = &f["event"];
        seen.lock().expect("lock").push((
            name,
            e["partitionkey"].as_str().expect("key").to_owned(),
            e["data"]["seq"].as_u64().expect("seq"),
        ));
        send(
            &mut ws,
            json!({"op": "ack", "group": "orders", "offset": f["offset"]}),
        )
        .await;
    }
}

#[tokio::test]
async fn competing_consumers_share_the_work_and_keys_stay_in_order() {
    let hub = TestHub::start().await.expect("hub");
    create(&hub, "orders", json!({"topics": ["order.*"]})).await;
    let mut a = connect(&hub).await;
    let mut b = connect(&hub).await;
    for (ws, id) in [(&mut a, "a"), (&mut b, "b")] {
        send(
            ws,
            json!({"op": "consume", "id": id, "group": "orders", "max_in_flight": 4}),
        )
        .await;
        assert_eq!(recv(ws).await["op"], "consuming");
    }
    let total = 60;
    let events = (0..total)
        .map(|i| json!({"topic": "order.placed", "partitionkey": format!("k{}", i % 3), "data": {"seq": i}}))
        .collect();
    publish(&hub, events).await;

    let seen = Arc::new(Mutex::new(Vec::new()));
    let (a, b) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(
            ack_all(a, "a", seen.clone(), total),
            ack_all(b, "b", seen.clone(), total)
        )
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "only {} of {total} delivered",
            seen.lock().expect("lock").len()
        )
    });
    drop((a, b));
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), total, "each event once: {seen:?}");
    let mut last: HashMap<String, u64> = HashMap::new();
    for (_, key, seq) in &seen {
        if let Some(prev) = last.get(key) {
            assert!(seq > prev, "key {key}: {seq} after {prev}: {seen:?}");
        }
        last.insert(key.clone(), *seq);
    }
    let by_a = seen.iter().filter(|s| s.0 == "a").count();
    assert!(
        by_a > 0 && by_a < total,
        "both consumers took work: a had {by_a} of {total}"
    );
    let g = hub.get_json("/api/v1/groups/orders").await;
    assert_eq!(g["pending"], 0, "{g}");
}

#[tokio::test]
async fn higher_priority_consumers_are_served_first() {
    let hub = TestHub::start().await.expect("hub");
    create(&hub, "jobs", json!({"topics": ["job.>"]})).await;
    let mut high = connect(&hub).await;
    let mut low = connect(&hub).await;
    send(
        &mut low,
        json!({"op": "consume", "id": "low", "group": "jobs", "max_in_flight": 5, "priority": 0}),
    )
    .await;
    recv(&mut low).await;
    send(
        &mut high,
        json!({"op": "consume", "id": "high", "group": "jobs", "max_in_flight": 5, "priority": 10}),
    )
    .await;
    recv(&mut high).await;

    let offsets = publish(
        &hub,
        (0..8)
            .map(|i| json!({"topic": "job.run", "data": {"i": i}}))
            .collect(),
    )
    .await;
    let mut got_high = Vec::new();
    for _ in 0..5 {
        got_high.push(recv(&mut high).await["offset"].as_u64().expect("offset"));
    }
    let mut got_low = Vec::new();
    for _ in 0..3 {
        got_low.push(recv(&mut low).await["offset"].as_u64().expect("offset"));
    }
    assert_eq!(
        got_high,
        offsets[..5],
        "the high-priority consumer is filled first"
    );
    assert_eq!(got_low, offsets[5..], "the overflow goes to the other");
}

#[tokio::test]
async fn a_consumer_that_goes_away_has_its_events_redelivered_elsewhere() {
    let hub = TestHub::start().await.expect("hub");
    create(&hub, "mail", json!({"topics": ["mail.send"], "backoff": {"kind": "fixed", "initial_ms": 10, "max_ms": 10, "jitter": 0}})).await;
    let mut first = connect(&hub).await;
    send(
        &mut first,
        json!({"op": "consume", "id": "c", "group": "mail"}),
    )
    .await;
    recv(&mut first).await;
    let offset = publish(&hub, vec![json!({"topic": "mail.send"})]).await[0];
    let d = recv(&mut first).await;
    assert_eq!(
        (d["offset"].as_u64(), d["attempt"].clone()),
        (Some(offset), json!(1))
    );
    drop(first);

    let mut second = connect(&hub).await;
    send(
        &mut second,
        json!({"op": "consume", "id": "c", "group": "mail"}),
    )
    .await;
    assert_eq!(recv(&mut second).await["op"], "consuming");
    let d = recv(&mut second).await;
    assert_eq!(
        (d["offset"].as_u64(), d["attempt"].clone()),
        (Some(offset), json!(2))
    );

    // Acknowledging twice: the second is refused with an error frame and
    // the connection stays usable.
    send(
        &mut second,
        json!({"op": "ack", "group": "mail", "offset": offset}),
    )
    .await;
    send(
        &mut second,
        json!({"op": "ack", "group": "mail", "offset": offset}),
    )
    .await;
    let err = recv(&mut second).await;
    assert_eq!(
        (err["op"].clone(), err["code"].clone()),
        (json!("error"), json!("NOT_PENDING"))
    );
    assert_eq!(err["offsets"], json!([offset]));
    send(
        &mut second,
        json!({"op": "consume", "id": "x", "group": "nope"}),
    )
    .await;
    assert_eq!(recv(&mut second).await["code"], "GROUP_NOT_FOUND");
    send(&mut second, json!({"op": "ping"})).await;
    assert_eq!(recv(&mut second).await["op"], "pong");
}

#[tokio::test]
async fn group_state_survives_a_restart() {
    let hub = TestHub::start().await.expect("hub");
    create(
        &hub,
        "audit",
        json!({"topics": ["audit.>"], "max_deliveries": 1, "start": "earliest"}),
    )
    .await;
    let offsets = publish(
        &hub,
        (0..5)
            .map(|i| json!({"topic": "audit.log", "data": {"i": i}}))
            .collect(),
    )
    .await;
    let got = pull(&hub, "audit", 3, 5000).await;
    assert_eq!(got.len(), 3);
    settle(
        &hub,
        "audit",
        "ack",
        json!({"offsets": [offsets[0], offsets[1]]}),
    )
    .await;
    settle(
        &hub,
        "audit",
        "nack",
        json!({"offsets": [offsets[2]], "error": "bad record"}),
    )
    .await;
    eventually(Duration::from_secs(5), "dead-lettered", || async {
        (hub.get_json("/api/v1/groups/audit").await["dead_letters"] == 1).then_some(())
    })
    .await
    .expect("dead letter");

    let data: DataDir = hub.stop().await.expect("stop");
    let hub = TestHub::start_with(data, "").await.expect("restart");
    let g = hub.get_json("/api/v1/groups/audit").await;
    assert_eq!(g["dead_letters"], 1, "{g}");
    assert_eq!(g["max_deliveries"], 1);
    let rest = pull(&hub, "audit", 10, 5000).await;
    let mut offs: Vec<u64> = rest
        .iter()
        .map(|d| d["offset"].as_u64().expect("offset"))
        .collect();
    // The first pull may return before the engine took in the whole log.
    if offs.len() < 2 {
        offs.extend(
            pull(&hub, "audit", 10, 5000)
                .await
                .iter()
                .map(|d| d["offset"].as_u64().expect("offset")),
        );
    }
    assert_eq!(offs, offsets[3..], "only what was never settled comes back");
    let dl = hub.get_json("/api/v1/groups/audit/dead-letters").await;
    assert_eq!(dl["dead_letters"][0]["last_error"], "bad record");
}

#[tokio::test]
async fn bad_group_requests_are_refused_with_every_field_named() {
    let hub = TestHub::start().await.expect("hub");
    let (status, v) = call(
        &hub,
        "PUT",
        "/api/v1/groups/bad",
        Some(
            json!({"topics": ["a..b"], "ack_wait_ms": 1, "max_deliveries": 0,
                    "backoff": {"kind": "sometimes", "initial_ms": 10, "max_ms": 5, "jitter": 2}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let fields: Vec<&str> = v["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["field"].as_str().expect("field"))
        .collect();
    for f in [
        "topics[0]",
        "ack_wait_ms",
        "max_deliveries",
        "backoff.kind",
        "backoff.max_ms",
        "backoff.jitter",
    ] {
        assert!(fields.contains(&f), "{f} not named in {fields:?}");
    }
    let (status, v) = call(
        &hub,
        "PUT",
        "/api/v1/groups/bad",
        Some(json!({"topics": ["x"], "colour": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (status, _) = call(
        &hub,
        "PUT",
        "/api/v1/groups/-bad",
        Some(json!({"topics": ["x"]})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    create(&hub, "g", json!({"topics": ["x"]})).await;
    let (status, _) = call(
        &hub,
        "PUT",
        "/api/v1/groups/g",
        Some(json!({"topics": ["x"]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "the same settings again");
    let (status, v) = call(
        &hub,
        "PUT",
        "/api/v1/groups/g",
        Some(json!({"topics": ["y"]})),
    )
    .await;
    assert_eq!(
        (status, v["code"].clone()),
        (StatusCode::CONFLICT, json!("CONFLICT"))
    );

    for (method, path, body) in [
        ("GET", "/api/v1/groups/nope", None),
        ("POST", "/api/v1/groups/nope/pull", Some(json!({}))),
        (
            "POST",
            "/api/v1/groups/nope/ack",
            Some(json!({"offsets": [1]})),
        ),
        ("GET", "/api/v1/groups/nope/dead-letters", None),
        ("GET", "/api/v1/groups/g/dead-letters/7", None),
        ("DELETE", "/api/v1/groups/nope", None),
    ] {
        let (status, v) = call(&hub, method, path, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {v}");
        assert!(
            v["code"].as_str().expect("code").ends_with("_NOT_FOUND"),
            "{v}"
        );
    }
    let (status, v) = call(
        &hub,
        "POST",
        "/api/v1/groups/g/pull",
        Some(json!({"max": 0, "wait_ms": 999_999})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["errors"].as_array().expect("errors").len(), 2, "{v}");
    let (status, _) = call(
        &hub,
        "POST",
        "/api/v1/groups/g/ack",
        Some(json!({"offsets": []})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, v) = call(&hub, "GET", "/api/v1/groups/g/dead-letters/x7", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["errors"][0]["field"], "offset");

    let (status, _) = call(&hub, "DELETE", "/api/v1/groups/g", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let list = hub.get_json("/api/v1/groups").await;
    assert_eq!(list["groups"], json!([]));
}

#[tokio::test]
async fn acknowledged_events_stay_acknowledged_after_kill_9() {
    let dir = tempfile::tempdir().expect("tmp");
    let hub = switchboard_test::HubProcess::spawn(crate::bin(), dir.path(), &[])
        .await
        .expect("spawn");
    let client = hub.client().expect("client");
    let http = switchboard_test::http_client(switchboard_test::ADMIN_TOKEN).expect("http client");
    let put = http
        .put(hub.url("/api/v1/groups/crash"))
        .json(&json!({"topics": ["crash.>"], "start": "earliest"}))
        .send()
        .await
        .expect("send");
    assert_eq!(put.status(), StatusCode::CREATED);
    let events: Vec<Value> = (0..200)
        .map(|i| json!({"topic": "crash.test", "data": {"i": i}}))
        .collect();
    let resp = http
        .post(hub.url("/api/v1/events"))
        .json(&events)
        .send()
        .await
        .expect("publish");
    assert_eq!(resp.status(), StatusCode::CREATED);

    // Acknowledge 120 events in small rounds, leave 20 in flight, crash.
    let mut acked = std::collections::BTreeSet::new();
    while acked.len() < 120 {
        let got = client
            .pull("crash", 10, Duration::from_secs(5))
            .await
            .expect("pull");
        let offsets: Vec<u64> = got.deliveries.iter().map(|d| d.offset).collect();
        let done = client.ack("crash", &offsets).await.expect("ack");
        assert_eq!(done.settled, offsets);
        acked.extend(offsets);
    }
    let in_flight = client
        .pull("crash", 20, Duration::from_secs(5))
        .await
        .expect("pull");
    assert!(!in_flight.deliveries.is_empty());
    hub.signal("-KILL").await.expect("kill");
    drop(hub);

    let hub = switchboard_test::HubProcess::spawn(crate::bin(), dir.path(), &[])
        .await
        .expect("respawn");
    let client = hub.client().expect("client");
    let mut rest = std::collections::BTreeSet::new();
    loop {
        let got = client
            .pull("crash", 100, Duration::from_millis(1500))
            .await
            .expect("pull");
        if got.deliveries.is_empty() {
            break;
        }
        let offsets: Vec<u64> = got.deliveries.iter().map(|d| d.offset).collect();
        client.ack("crash", &offsets).await.expect("ack");
        for o in offsets {
            assert!(
                !acked.contains(&o),
                "offset {o} was acknowledged before the crash and came back"
            );
            assert!(
                rest.insert(o),
                "offset {o} delivered twice after the restart"
            );
        }
    }
    assert_eq!(
        acked.len() + rest.len(),
        200,
        "every event delivered: {} + {}",
        acked.len(),
        rest.len()
    );
}
