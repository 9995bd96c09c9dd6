//! The gateway against real upstream servers started in the test.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard_test::{ADMIN_TOKEN, TestHub, eventually, http_client};

use crate::upstream::Upstream;

/// Registers an agent of `agent_type` serving at `up`.
pub(crate) async fn register(hub: &TestHub, up: &Upstream, agent_type: &str, extra: Value) {
    let mut body = json!({
        "id": up.id,
        "type": agent_type,
        "endpoint": up.url(),
        "health_check_url": format!("{}/health", up.url()),
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    let r = hub
        .http
        .post(hub.url("/api/v1/agents/register"))
        .json(&body)
        .send()
        .await
        .expect("register");
    assert!(
        r.status().is_success(),
        "{}",
        r.text().await.unwrap_or_default()
    );
}

/// Registers agent `id` of `agent_type` at `addr` (no health check URL),
/// the only one of its type, and waits until the gateway knows it.
async fn register_bare(hub: &TestHub, id: &str, agent_type: &str, addr: std::net::SocketAddr) {
    let r = hub
        .http
        .post(hub.url("/api/v1/agents/register"))
        .json(&json!({"id": id, "type": agent_type, "endpoint": format!("http://{addr}")}))
        .send()
        .await
        .expect("register");
    assert!(r.status().is_success());
    wait_instances(hub, agent_type, 1).await;
}

/// Upstreams `{prefix}-0..n`, registered as agents of `agent_type`, known
/// to the gateway.
async fn fleet(hub: &TestHub, prefix: &str, agent_type: &str, n: usize) -> Vec<Upstream> {
    let mut ups = Vec::new();
    for i in 0..n {
        let up = Upstream::start(&format!("{prefix}-{i}")).await;
        register(hub, &up, agent_type, json!({})).await;
        ups.push(up);
    }
    wait_instances(hub, agent_type, n).await;
    ups
}

async fn wait_instances(hub: &TestHub, service: &str, n: usize) {
    eventually(Duration::from_secs(10), "instances known", || async {
        let t = hub.get_json("/api/v1/gateway/topology").await;
        t["services"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == service)
            .filter(|s| s["instances"].as_array().is_some_and(|i| i.len() == n))
            .map(|_| ())
    })
    .await
    .expect("instances");
}

async fn configure(hub: &TestHub, service: &str, config: Value) {
    let r = hub
        .http
        .put(hub.url(&format!("/api/v1/gateway/services/{service}")))
        .json(&config)
        .send()
        .await
        .expect("configure");
    let status = r.status();
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        r.text().await.unwrap_or_default()
    );
}

async fn get(hub: &TestHub, path: &str) -> (StatusCode, Value) {
    let r = hub.http.get(hub.url(path)).send().await.expect("send");
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// Which instance answered each of `n` GETs of `path`.
async fn spread(
    hub: &TestHub,
    path: &str,
    n: usize,
    headers: &[(&str, String)],
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let mut req = hub.http.get(hub.url(path));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let r = req.send().await.expect("send");
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.expect("json");
        *counts
            .entry(v["instance"].as_str().unwrap_or("").to_owned())
            .or_insert(0) += 1;
    }
    counts
}

async fn instance(hub: &TestHub, service: &str, id: &str) -> Value {
    let t = hub.get_json("/api/v1/gateway/topology").await;
    t["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == service))
        .and_then(|s| s["instances"].as_array())
        .and_then(|i| i.iter().find(|i| i["agent_id"] == id))
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn requests_and_answers_pass_through_faithfully() {
    let hub = TestHub::start().await.expect("hub");
    let _ups = fleet(&hub, "fid", "echo", 2).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = hub
        .http
        .get(hub.url("/gw/echo/echo/a/b%20c?x=1&y=%20z&x=2"))
        .header("x-custom", "kept")
        .header("connection", "x-hop")
        .header("x-hop", "dropped")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .header("x-forwarded-for", "192.0.2.7")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let corr = r.headers()["x-correlation-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/echo/a/b%20c");
    assert_eq!(v["query"], "x=1&y=%20z&x=2");
    let h = &v["headers"];
    assert_eq!(h["x-custom"], "kept");
    assert!(
        h.get("x-hop").is_none(),
        "hop-by-hop headers named in Connection go"
    );
    assert!(
        h.get("authorization").is_none(),
        "the hub's credential is not passed on"
    );
    assert_eq!(h["x-forwarded-for"], "192.0.2.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], hub.addr.to_string());
    assert_eq!(
        h["forwarded"],
        format!("for=127.0.0.1;proto=http;host={}", hub.addr)
    );
    assert_eq!(
        h["x-request-id"], corr,
        "the correlation id travels as X-Request-Id"
    );
    let tp = h["traceparent"].as_str().expect("traceparent");
    assert!(tp.starts_with(&format!("00-{trace}-")), "{tp}");
    assert!(!tp.contains("00f067aa0ba902b7"), "a new span for this hop");
    assert_eq!(h["x-trace-id"], trace);
    assert_eq!(h["host"], v["headers"]["host"]);

    // A large body, sent with a length.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let sum: String = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&big))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let v: Value = hub
        .http
        .post(hub.url("/gw/echo/echo/upload"))
        .body(big.clone())
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (v["body_len"].as_u64(), v["body_sha256"].as_str()),
        (Some(3_000_000), Some(sum.as_str()))
    );
    // The same body streamed in chunks (chunked transfer encoding).
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(100_000).map(|c| Ok(c.to_vec())).collect();
    let v: Value = hub
        .http
        .put(hub.url("/gw/echo/echo/stream"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (v["method"].as_str(), v["body_len"].as_u64()),
        (Some("PUT"), Some(3_000_000))
    );
    assert_eq!(v["body_sha256"], sum);
    // A large streamed answer.
    let r = hub
        .http
        .get(hub.url("/gw/echo/big/5000000"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.bytes().await.expect("body");
    assert_eq!(body.len(), 5_000_000);
    assert!(body.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    // Statuses and headers of the answer come back as they are.
    let r = hub
        .http
        .delete(hub.url("/gw/echo/status/418"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::IM_A_TEAPOT);
    assert!(
        r.headers()["x-instance"]
            .to_str()
            .expect("ascii")
            .starts_with("fid-")
    );
    // The service root works with and without a trailing slash.
    assert_eq!(
        hub.http
            .get(hub.url("/gw/echo"))
            .send()
            .await
            .expect("send")
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        hub.http
            .get(hub.url("/gw/echo/"))
            .send()
            .await
            .expect("send")
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn each_balancing_algorithm_spreads_as_it_should() {
    let hub = TestHub::start().await.expect("hub");
    let ups = fleet(&hub, "rr", "rr", 3).await;
    let got = spread(&hub, "/gw/rr/echo", 30, &[]).await;
    assert_eq!(
        got.values()
            .copied()
            .collect::<Vec<_>>()
            .iter()
            .sum::<usize>(),
        30
    );
    assert!(
        got.len() == 3 && got.values().all(|n| *n == 10),
        "round robin: {got:?}"
    );

    // Weighted: agent weights 3 and 1.
    for (i, w) in [3, 1].iter().enumerate() {
        let up = Upstream::start(&format!("w-{i}")).await;
        register(
            &hub,
            &up,
            "weighted",
            json!({"configuration": {"weight": w}}),
        )
        .await;
        std::mem::forget(up);
    }
    wait_instances(&hub, "weighted", 2).await;
    configure(&hub, "weighted", json!({"balancing": "weighted"})).await;
    let got = spread(&hub, "/gw/weighted/echo", 40, &[]).await;
    assert_eq!((got["w-0"], got["w-1"]), (30, 10), "{got:?}");

    // Consistent hashing on a header: each user sticks to one instance.
    configure(
        &hub,
        "rr",
        json!({"balancing": "consistent_hash", "hash_header": "x-user"}),
    )
    .await;
    let mut placed: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for u in 0..20 {
            let user = format!("user-{u}");
            let got = spread(&hub, "/gw/rr/echo", 1, &[("x-user", user.clone())]).await;
            let at = got.keys().next().expect("one").clone();
            if round == 0 {
                placed.insert(user, at);
            } else {
                assert_eq!(placed[&user], at, "{user} moved");
            }
        }
    }
    let used: std::collections::HashSet<&String> = placed.values().collect();
    assert!(used.len() >= 2, "{placed:?}");

    // Least outstanding requests: while one instance holds a slow request,
    // the other takes the new ones.
    drop(ups);
    let _lr = fleet(&hub, "lr", "lr", 2).await;
    configure(&hub, "lr", json!({"balancing": "least_request"})).await;
    let busy = {
        let (http, url) = (hub.http.clone(), hub.url("/gw/lr/slow/1500"));
        tokio::spawn(async move { http.get(url).send().await.map(|r| r.status()) })
    };
    eventually(Duration::from_secs(5), "one request in flight", || async {
        let t = hub.get_json("/api/v1/gateway/topology").await;
        t["services"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == "lr")?["instances"]
            .as_array()?
            .iter()
            .any(|i| i["outstanding"] == 1)
            .then_some(())
    })
    .await
    .expect("in flight");
    let got = spread(&hub, "/gw/lr/echo", 30, &[]).await;
    let _ = busy.await;
    assert_eq!(
        got.values().copied().max(),
        Some(30),
        "the idle instance takes all while the other is busy: {got:?}"
    );
    // Round robin would have split them.
    configure(&hub, "lr", json!({"balancing": "round_robin"})).await;
    let got = spread(&hub, "/gw/lr/echo", 30, &[]).await;
    assert!(got.values().all(|n| *n == 15), "{got:?}");
}

#[tokio::test]
async fn version_splits_send_a_share_to_a_canary() {
    let hub = TestHub::start().await.expect("hub");
    for (id, version) in [("stable", "1.4.0"), ("canary", "2.0.0")] {
        let up = Upstream::start(id).await;
        register(&hub, &up, "split", json!({"version": version})).await;
        std::mem::forget(up);
    }
    wait_instances(&hub, "split", 2).await;
    configure(
        &hub,
        "split",
        json!({"splits": [{"version": "^1", "weight": 90}, {"version": "^2", "weight": 10}]}),
    )
    .await;
    let got = spread(&hub, "/gw/split/echo", 400, &[]).await;
    let canary = got.get("canary").copied().unwrap_or(0);
    // 10% of 400 is 40; the binomial spread is about 6.
    assert!((15..=70).contains(&canary), "{got:?}");
    // A split refers to versions, not instances: 100/0 sends nothing over.
    configure(
        &hub,
        "split",
        json!({"splits": [{"version": "^1", "weight": 1}]}),
    )
    .await;
    let got = spread(&hub, "/gw/split/echo", 20, &[]).await;
    assert_eq!(got.get("stable"), Some(&20), "{got:?}");
    let (s, body) = get(&hub, "/api/v1/gateway/services/split").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["splits"][0]["version"], "^1");
}

#[tokio::test]
async fn unhealthy_and_outlying_instances_are_taken_out_and_come_back() {
    let hub = TestHub::start().await.expect("hub");
    let ups = fleet(&hub, "hc", "hc", 2).await;
    configure(
        &hub,
        "hc",
        json!({
            "health_check": {"interval_ms": 100, "timeout_ms": 500, "unhealthy_after": 2, "healthy_after": 2},
            "outlier": {"consecutive_failures": 3, "base_ejection_ms": 1500, "max_ejection_ms": 60000},
            "retry": {"attempts": 1, "on_status": [503], "backoff_ms": 1, "budget_ratio": 0.2, "budget_min_per_second": 3}
        }),
    )
    .await;
    // Active checks: hc-1 fails its health URL, and leaves the rotation.
    ups[1].set_healthy(false);
    eventually(Duration::from_secs(10), "hc-1 unhealthy", || async {
        (instance(&hub, "hc", "hc-1").await["healthy"] == false).then_some(())
    })
    .await
    .expect("unhealthy");
    let got = spread(&hub, "/gw/hc/echo", 20, &[]).await;
    assert_eq!(got.get("hc-0"), Some(&20), "{got:?}");
    ups[1].set_healthy(true);
    eventually(Duration::from_secs(10), "hc-1 healthy", || async {
        (instance(&hub, "hc", "hc-1").await["healthy"] == true).then_some(())
    })
    .await
    .expect("healthy");
    let got = spread(&hub, "/gw/hc/echo", 20, &[]).await;
    assert_eq!(got.get("hc-1"), Some(&10), "{got:?}");

    // Passive detection: 5xx in a row eject hc-1 for a while.
    ups[1].set_failing(true);
    let mut failures = 0;
    for _ in 0..10 {
        let r = hub
            .http
            .get(hub.url("/gw/hc/echo"))
            .send()
            .await
            .expect("send");
        if r.status() == StatusCode::INTERNAL_SERVER_ERROR {
            failures += 1;
        }
    }
    assert_eq!(failures, 3, "three 500s, then hc-1 is out");
    let i = instance(&hub, "hc", "hc-1").await;
    assert!(i["ejected_for_ms"].as_u64().is_some_and(|ms| ms > 0), "{i}");
    assert_eq!(i["ejections"], 1);
    let got = spread(&hub, "/gw/hc/echo", 10, &[]).await;
    assert_eq!(got.get("hc-0"), Some(&10));
    // Its ejection ends; healthy again, it serves again.
    ups[1].set_failing(false);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let got = spread(&hub, "/gw/hc/echo", 10, &[]).await;
    assert_eq!(got.get("hc-1"), Some(&5), "{got:?}");
}

#[tokio::test]
async fn breakers_open_go_half_open_and_close() {
    let hub = TestHub::start().await.expect("hub");
    let mut ups = fleet(&hub, "cb", "cb", 2).await;
    configure(
        &hub,
        "cb",
        json!({
            "breaker": {"failure_threshold": 2, "open_ms": 700, "half_open_max": 1},
            "outlier": {"consecutive_failures": 0, "base_ejection_ms": 1000, "max_ejection_ms": 1000},
            "health_check": {"interval_ms": 0, "timeout_ms": 500, "unhealthy_after": 1, "healthy_after": 1},
            "retry": {"attempts": 1, "on_status": [], "backoff_ms": 1, "budget_ratio": 0.2, "budget_min_per_second": 3}
        }),
    )
    .await;
    // cb-1 goes away: connections to it are refused.
    let gone = ups.pop().expect("cb-1");
    let addr = gone.stop().await;
    let mut bad_gateway = 0;
    for _ in 0..12 {
        let r = hub
            .http
            .get(hub.url("/gw/cb/echo"))
            .send()
            .await
            .expect("send");
        match r.status() {
            StatusCode::OK => {}
            StatusCode::BAD_GATEWAY => bad_gateway += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        bad_gateway, 2,
        "two failures open the breaker, then cb-0 takes everything"
    );
    assert_eq!(instance(&hub, "cb", "cb-1").await["breaker"], "open");
    let text = hub
        .http
        .get(hub.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains(r#"switchboard_gateway_breaker_state{service="cb",instance="cb-1"} 2"#),
        "{text}"
    );
    // After open_ms it lets one trial through; cb-1 is back by then.
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("rebind the same port");
    let _back = Upstream::serve("cb-1", listener).await;
    tokio::time::sleep(Duration::from_millis(750)).await;
    assert_eq!(instance(&hub, "cb", "cb-1").await["breaker"], "half_open");
    let got = spread(&hub, "/gw/cb/echo", 10, &[]).await;
    assert!(
        got.get("cb-1").is_some_and(|n| *n >= 4),
        "the trial succeeded and cb-1 is back: {got:?}"
    );
    assert_eq!(instance(&hub, "cb", "cb-1").await["breaker"], "closed");
}

#[tokio::test]
async fn retries_only_where_safe_and_within_budget() {
    let hub = TestHub::start().await.expect("hub");
    let ups = fleet(&hub, "rt", "rt", 2).await;
    let no_ejection =
        json!({"consecutive_failures": 0, "base_ejection_ms": 1000, "max_ejection_ms": 1000});
    let lenient = json!({"failure_threshold": 1000, "open_ms": 1000, "half_open_max": 1});
    configure(
        &hub,
        "rt",
        json!({
            "retry": {"attempts": 3, "on_status": [500], "backoff_ms": 1, "budget_ratio": 1.0, "budget_min_per_second": 100},
            "outlier": no_ejection, "breaker": lenient,
            "health_check": {"interval_ms": 0, "timeout_ms": 500, "unhealthy_after": 1, "healthy_after": 1}
        }),
    )
    .await;
    ups[0].set_failing(true);
    // GET is idempotent: a 500 from rt-0 is retried on rt-1.
    for _ in 0..10 {
        let (s, v) = get(&hub, "/gw/rt/echo/x").await;
        assert_eq!((s, v["instance"].as_str()), (StatusCode::OK, Some("rt-1")));
    }
    // POST is not: rt-0's 500 comes back as it is.
    let mut posts = HashMap::new();
    for _ in 0..10 {
        let r = hub
            .http
            .post(hub.url("/gw/rt/echo/x"))
            .body("{}")
            .send()
            .await
            .expect("send");
        *posts.entry(r.status()).or_insert(0) += 1;
    }
    assert_eq!(
        posts.get(&StatusCode::INTERNAL_SERVER_ERROR),
        Some(&5),
        "{posts:?}"
    );
    // A POST that never reached its instance (connection refused) is safe
    // to send elsewhere.
    ups[0].set_failing(false);
    let mut ups = ups;
    let _gone = ups.remove(0).stop().await;
    for _ in 0..10 {
        let r = hub
            .http
            .post(hub.url("/gw/rt/echo/x"))
            .body("{}")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::OK);
    }
    let text = hub
        .http
        .get(hub.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains(r#"switchboard_gateway_retries_total{service="rt"}"#),
        "{text}"
    );

    // The budget: when every instance fails, retries cannot multiply the
    // load past what the budget allows.
    let failing = fleet(&hub, "bud", "bud", 2).await;
    for f in &failing {
        f.set_failing(true);
    }
    configure(
        &hub,
        "bud",
        json!({
            "retry": {"attempts": 5, "on_status": [500], "backoff_ms": 1, "budget_ratio": 0.1, "budget_min_per_second": 1},
            "outlier": no_ejection, "breaker": lenient,
            "health_check": {"interval_ms": 0, "timeout_ms": 500, "unhealthy_after": 1, "healthy_after": 1}
        }),
    )
    .await;
    for _ in 0..100 {
        let r = hub
            .http
            .get(hub.url("/gw/bud/echo"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    let sent: u64 = failing.iter().map(Upstream::hits).sum();
    // 100 first attempts, plus at most 10% of them and 1/s over 10 s.
    assert!(
        (100..=120).contains(&sent),
        "{sent} attempts for 100 requests (no budget: 500)"
    );
}

#[tokio::test]
async fn timeouts_answer_504() {
    let hub = TestHub::start().await.expect("hub");
    let _ups = fleet(&hub, "to", "to", 1).await;
    configure(
        &hub,
        "to",
        json!({"timeouts": {"connect_ms": 500, "first_byte_ms": 300, "total_ms": 5000}, "retry": {"attempts": 1, "on_status": [], "backoff_ms": 1, "budget_ratio": 0.2, "budget_min_per_second": 3}}),
    )
    .await;
    let started = Instant::now();
    let (s, body) = get(&hub, "/gw/to/slow/3000").await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["code"], "GATEWAY_TIMEOUT");
    assert_eq!(body["error"]["details"]["timeout"], "first_byte");
    assert!(started.elapsed() < Duration::from_secs(2));
    configure(
        &hub,
        "to",
        json!({"timeouts": {"connect_ms": 500, "first_byte_ms": 5000, "total_ms": 600}, "retry": {"attempts": 1, "on_status": [], "backoff_ms": 1, "budget_ratio": 0.2, "budget_min_per_second": 3}}),
    )
    .await;
    let (s, body) = get(&hub, "/gw/to/slow/3000").await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body["error"]["details"]["timeout"], "total");
    // Headers in time, a body that never ends: cut at the total timeout.
    let started = Instant::now();
    let r = hub
        .http
        .get(hub.url("/gw/to/stall"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.is_err(), "the body is cut, not finished");
    assert!(started.elapsed() < Duration::from_secs(3));

    // Connect: an instance whose listen queue is full never accepts.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let full = socket.listen(1).expect("listen");
    let addr = full.local_addr().expect("addr");
    let mut held = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(c)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            held.push(c);
        }
    }
    register_bare(&hub, "blackhole", "hole", addr).await;
    configure(
        &hub,
        "hole",
        json!({"timeouts": {"connect_ms": 300, "first_byte_ms": 5000, "total_ms": 10000}, "retry": {"attempts": 1, "on_status": [], "backoff_ms": 1, "budget_ratio": 0.2, "budget_min_per_second": 3}}),
    )
    .await;
    let started = Instant::now();
    let (s, body) = get(&hub, "/gw/hole/x").await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["error"]["details"]["timeout"], "connect");
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(held);
}

#[tokio::test]
async fn aggregation_combines_every_instance_within_a_deadline() {
    let hub = TestHub::start().await.expect("hub");
    let ups = fleet(&hub, "agg", "agg", 3).await;
    ups[1].set_failing(true);
    let r = hub
        .http
        .put(hub.url("/api/v1/gateway/routes/fanout"))
        .json(&json!({"path_prefix": "/fanout/", "service": "agg", "strip_prefix": true, "kind": "aggregate", "deadline_ms": 600}))
        .send()
        .await
        .expect("route");
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "{}",
        r.text().await.unwrap_or_default()
    );
    // agg-2 is slow on /slow, the others answer at once.
    let started = Instant::now();
    let (s, v) = get(&hub, "/fanout/echo/q").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["service"], "agg");
    let parts = v["responses"].as_array().expect("responses");
    assert_eq!(parts.len(), 3);
    let by: HashMap<&str, &Value> = parts
        .iter()
        .map(|p| (p["instance"].as_str().unwrap_or(""), p))
        .collect();
    assert_eq!(by["agg-0"]["status"], 200);
    assert_eq!(by["agg-0"]["body"]["path"], "/echo/q");
    assert_eq!(by["agg-1"]["status"], 500);
    assert_eq!(v["complete"], true);
    assert!(started.elapsed() < Duration::from_secs(2));
    // With a slow instance, the answer comes at the deadline without it.
    let (s, v) = get(&hub, "/fanout/slow/3000").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["complete"], false);
    let errors = v["responses"]
        .as_array()
        .expect("responses")
        .iter()
        .filter(|p| p["error"].as_str().is_some_and(|e| e.contains("deadline")))
        .count();
    assert_eq!(errors, 3, "{v}");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn websockets_pass_through() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let hub = TestHub::start().await.expect("hub");
    let _ups = fleet(&hub, "wsup", "wsup", 1).await;
    let mut req = format!("ws://{}/gw/wsup/ws", hub.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().expect("header"),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade through the gateway");
    assert_eq!(resp.status(), 101);
    for n in 0..3 {
        ws.send(Message::Text(format!("hello {n}").into()))
            .await
            .expect("send");
        let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("frame");
        assert_eq!(got, Message::Text(format!("wsup-0: hello {n}").into()));
    }
    ws.close(None).await.expect("close");
}

#[tokio::test]
async fn no_instance_unknown_service_and_access() {
    let hub = TestHub::start().await.expect("hub");
    let (s, body) = get(&hub, "/gw/nobody/x").await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("SERVICE_NOT_FOUND"))
    );
    let ups = fleet(&hub, "dr", "dr", 1).await;
    // A draining agent takes no more requests.
    let r = hub
        .http
        .post(hub.url("/api/v1/agents/dr-0/heartbeat"))
        .json(&json!({"status": "draining"}))
        .send()
        .await
        .expect("heartbeat");
    assert_eq!(r.status(), StatusCode::OK);
    let r = hub
        .http
        .get(hub.url("/gw/dr/echo"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["code"], "AGENT_UNAVAILABLE");
    assert!(ups[0].hits() == 0);
    // The gateway needs a credential with gateway:invoke.
    let r = reqwest::Client::new()
        .get(hub.url("/gw/dr/echo"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let observer = crate::access::api_key(&hub, "observer").await;
    let r = http_client(&observer)
        .expect("client")
        .get(hub.url("/gw/dr/echo"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Configured routes are guarded the same way.
    let r = hub
        .http
        .put(hub.url("/api/v1/gateway/routes/shop"))
        .json(&json!({"path_prefix": "/shop/", "service": "dr", "strip_prefix": true}))
        .send()
        .await
        .expect("route");
    assert_eq!(r.status(), StatusCode::OK);
    let r = reqwest::Client::new()
        .get(hub.url("/shop/echo"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Routes may not take the hub's own paths.
    let r = hub
        .http
        .put(hub.url("/api/v1/gateway/routes/bad"))
        .json(&json!({"path_prefix": "/api/", "service": "dr"}))
        .send()
        .await
        .expect("route");
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn configured_routes_by_prefix_and_host() {
    let hub = TestHub::start().await.expect("hub");
    let _ups = fleet(&hub, "cr", "cr", 1).await;
    for (name, body) in [
        (
            "strip",
            json!({"path_prefix": "/shop/", "service": "cr", "strip_prefix": true}),
        ),
        ("keep", json!({"path_prefix": "/echo/", "service": "cr"})),
        (
            "byhost",
            json!({"host": "billing.example", "path_prefix": "/", "service": "cr"}),
        ),
    ] {
        let r = hub
            .http
            .put(hub.url(&format!("/api/v1/gateway/routes/{name}")))
            .json(&body)
            .send()
            .await
            .expect("route");
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "{}",
            r.text().await.unwrap_or_default()
        );
    }
    let (s, v) = get(&hub, "/shop/echo/items?id=3").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (v["path"].as_str(), v["query"].as_str()),
        (Some("/echo/items"), Some("id=3"))
    );
    let (_, v) = get(&hub, "/echo/kept").await;
    assert_eq!(v["path"], "/echo/kept");
    let r = hub
        .http
        .get(hub.url("/echo/x"))
        .header("host", "billing.example")
        .send()
        .await
        .expect("send");
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["headers"]["x-forwarded-host"], "billing.example");
    // Without a matching route: 404.
    assert_eq!(get(&hub, "/elsewhere").await.0, StatusCode::NOT_FOUND);
    // Routes are listed and removed without a restart.
    let list = hub.get_json("/api/v1/gateway/routes").await;
    assert_eq!(
        list["routes"][0]["name"], "byhost",
        "a host route matches first"
    );
    let r = hub
        .http
        .delete(hub.url("/api/v1/gateway/routes/strip"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(get(&hub, "/shop/echo/items").await.0, StatusCode::NOT_FOUND);
}

/// An upstream that counts the connections its requests arrive on and can
/// close each connection a moment after answering on it (with no
/// `Connection: close`, as a server whose keep-alive ran out does), once
/// the gateway holds it idle. Every answer names its connection (`c1`,
/// `c2`, …). Written on a bare socket to control exactly when connections
/// close.
struct Closer {
    addr: std::net::SocketAddr,
    /// Connections that carried a request other than `/health`.
    used: std::sync::Arc<std::sync::atomic::AtomicU64>,
    close_after_answer: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Connections it has closed.
    closed: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Closer {
    async fn start() -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let used = Arc::new(AtomicU64::new(0));
        let close = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(AtomicU64::new(0));
        let (u, c, d) = (used.clone(), close.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (used, close, closed) = (u.clone(), c.clone(), d.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut me = None;
                    loop {
                        // One request: the head, then Content-Length bytes.
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            if !read_more(&mut sock, &mut buf).await {
                                return;
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        while buf.len() < head_end + len {
                            if !read_more(&mut sock, &mut buf).await {
                                return;
                            }
                        }
                        buf.drain(..head_end + len);
                        let name = if head.starts_with("get /health") {
                            "health".to_owned()
                        } else {
                            let n =
                                *me.get_or_insert_with(|| used.fetch_add(1, Ordering::SeqCst) + 1);
                            format!("c{n}")
                        };
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{name}",
                            name.len()
                        );
                        if sock.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                        if close.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            drop(sock);
                            closed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            used,
            close_after_answer: close,
            closed,
        }
    }
}

/// Reads what has come on `sock` onto `buf`; false once the peer is gone.
async fn read_more(sock: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> bool {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    match sock.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

#[tokio::test]
async fn upstream_connections_are_reused_and_a_closed_one_loses_no_request() {
    use std::sync::atomic::Ordering;
    let hub = TestHub::start().await.expect("hub");
    let up = Closer::start().await;
    register_bare(&hub, "closer-1", "closer", up.addr).await;
    // No retries: the gateway's own retry of a request that never left
    // would hide a lost one.
    configure(
        &hub,
        "closer",
        json!({"retry": {"attempts": 1, "on_status": [], "backoff_ms": 1, "budget_ratio": 0.0, "budget_min_per_second": 0}}),
    )
    .await;

    // One request after another: one connection carries them all.
    for _ in 0..20 {
        let r = hub
            .http
            .get(hub.url("/gw/closer/r"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.text().await.expect("text"), "c1");
    }
    assert_eq!(up.used.load(Ordering::SeqCst), 1);

    // The upstream now closes every connection a moment after answering
    // on it: the gateway's idle connection is dead when the next request
    // comes. A POST, which is never resent once it may have been sent,
    // must still reach the upstream, on a new connection each time.
    up.close_after_answer.store(true, Ordering::SeqCst);
    let mut seen = Vec::new();
    for i in 0..20u64 {
        if i > 0 {
            eventually(Duration::from_secs(5), "the connection closed", || async {
                (up.closed.load(Ordering::SeqCst) == i).then_some(())
            })
            .await
            .expect("closed");
        }
        let r = hub
            .http
            .post(hub.url("/gw/closer/r"))
            .body("{}")
            .send()
            .await
            .expect("send");
        let status = r.status();
        let text = r.text().await.expect("text");
        assert_eq!(status, StatusCode::OK, "{text}");
        seen.push(text);
    }
    // The first POST still went over c1 (it closed after answering it);
    // each later one needed a new connection.
    let expected: Vec<String> = (1..=20).map(|n| format!("c{n}")).collect();
    assert_eq!(seen, expected);
}
