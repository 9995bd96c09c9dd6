//! Webhooks out (signed, retried, dead-lettered) and in (verified,
//! deduplicated), checked against the `standardwebhooks` Python package.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode as AxStatus;
use axum::routing::post;
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard_test::{TestHub, eventually};
use tokio::sync::mpsc;

/// A request as the receiver got it: headers and body.
type Got = (Vec<(String, String)>, Vec<u8>);

/// A webhook receiver: records each request, answers with the status it is
/// set to.
struct Receiver {
    url: String,
    status: Arc<AtomicU16>,
    got: mpsc::UnboundedReceiver<Got>,
}

async fn receiver() -> Receiver {
    let status = Arc::new(AtomicU16::new(200));
    let (tx, got) = mpsc::unbounded_channel();
    #[derive(Clone)]
    struct S(Arc<AtomicU16>, mpsc::UnboundedSender<Got>);
    async fn hook(State(s): State<S>, req: Request) -> AxStatus {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        let headers = parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let _ = s.1.send((headers, body.to_vec()));
        AxStatus::from_u16(s.0.load(Ordering::SeqCst)).unwrap_or(AxStatus::OK)
    }
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(S(status.clone(), tx));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Receiver {
        url: format!("http://{addr}/hook"),
        status,
        got,
    }
}

async fn next(r: &mut Receiver) -> Got {
    tokio::time::timeout(Duration::from_secs(10), r.got.recv())
        .await
        .expect("a delivery in time")
        .expect("receiver open")
}

/// Runs Python with the `standardwebhooks` package (installed by .ci/run).
async fn python(script: &str, args: &[&str]) -> String {
    let o = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .await
        .expect("python3");
    assert!(
        o.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

async fn publish(hub: &TestHub, topic: &str, id: &str) {
    let r = hub
        .http
        .post(hub.url("/api/v1/events"))
        .json(&json!({"specversion": "1.0", "id": id, "source": "/shop", "type": "order.created", "topic": topic, "data": {"order": id}}))
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn outbound_webhooks_are_signed_retried_and_dead_lettered() {
    let hub = TestHub::start().await.expect("hub");
    let mut rx = receiver().await;
    let r = hub
        .http
        .put(hub.url("/api/v1/webhooks/orders"))
        .json(&json!({"url": rx.url, "topics": ["orders.>"], "max_attempts": 3, "retry_after_ms": 100, "timeout_ms": 2000}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), StatusCode::OK);
    let created: Value = r.json().await.expect("json");
    let secret = created["secret"]
        .as_str()
        .expect("secret shown once")
        .to_owned();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(created["group"], "webhook-orders");
    let listed = hub.get_json("/api/v1/webhooks").await;
    assert!(
        listed["webhooks"][0].get("secret").is_none(),
        "the secret is not shown again"
    );

    publish(&hub, "orders.created", "o-1").await;
    let (headers, body) = next(&mut rx).await;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert!(header("webhook-id").starts_with("msg_"));
    assert!(header("webhook-signature").starts_with("v1,"));
    let event: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        (event["id"].as_str(), event["topic"].as_str()),
        (Some("o-1"), Some("orders.created"))
    );
    // The standardwebhooks package verifies the signature on its own.
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
secret, headers, body = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
payload = Webhook(secret).verify(body, headers)
print(payload["id"])
"#;
    let headers_json = json!({
        "webhook-id": header("webhook-id"),
        "webhook-timestamp": header("webhook-timestamp"),
        "webhook-signature": header("webhook-signature"),
    })
    .to_string();
    let body_text = String::from_utf8(body.clone()).expect("utf8");
    assert_eq!(
        python(script, &[&secret, &headers_json, &body_text]).await,
        "o-1"
    );

    // A failing receiver: retried with backoff, then dead-lettered.
    rx.status.store(500, Ordering::SeqCst);
    publish(&hub, "orders.created", "o-2").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (h, _) = next(&mut rx).await;
        ids.push(
            h.iter()
                .find(|(k, _)| k == "webhook-id")
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
        );
    }
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "one message id across retries: {ids:?}"
    );
    let dead = eventually(Duration::from_secs(10), "dead letter", || async {
        let page = hub
            .get_json("/api/v1/groups/webhook-orders/dead-letters")
            .await;
        page["dead_letters"]
            .as_array()
            .and_then(|d| d.first().cloned())
    })
    .await
    .expect("dead-lettered");
    assert_eq!(dead["attempts"], 3);
    assert!(
        dead["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("500")),
        "{dead}"
    );
    let log = hub.get_json("/api/v1/webhooks/orders/deliveries").await;
    let attempts: Vec<(u64, Value)> = log["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .map(|d| (d["attempt"].as_u64().unwrap_or(0), d["status"].clone()))
        .collect();
    assert_eq!(
        attempts[..3],
        [(3, json!(500)), (2, json!(500)), (1, json!(500))]
    );
    assert_eq!(attempts[3], (1, json!(200)));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.got.recv())
            .await
            .is_err(),
        "no fourth attempt"
    );
}

#[tokio::test]
async fn inbound_hooks_verify_deduplicate_and_refuse_replays() {
    let hub = TestHub::start().await.expect("hub");
    let r = hub
        .http
        .put(hub.url("/api/v1/hooks/payments"))
        .json(&json!({"topic": "hooks.payments", "tolerance_ms": 300000}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), StatusCode::OK);
    let hook: Value = r.json().await.expect("json");
    let secret = hook["secret"].as_str().expect("secret").to_owned();
    // A sender signs with the standardwebhooks package.
    let sign = r#"
import sys, json
from datetime import datetime, timezone, timedelta
from standardwebhooks.webhooks import Webhook
secret, msg_id, age, body = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
ts = datetime.now(tz=timezone.utc) - timedelta(seconds=age)
print(json.dumps({"webhook-id": msg_id, "webhook-timestamp": str(int(ts.timestamp())),
                  "webhook-signature": Webhook(secret).sign(msg_id, ts, body)}))
"#;
    let body = r#"{"type":"payment.succeeded","amount":4200}"#;
    let headers: Value =
        serde_json::from_str(&python(sign, &[&secret, "msg_abc", "0", body]).await).expect("json");
    let post = |headers: Value, body: &'static str| {
        let mut req = reqwest::Client::new()
            .post(hub.url("/api/v1/hooks/payments"))
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers.as_object().cloned().unwrap_or_default() {
            req = req.header(k, v.as_str().unwrap_or(""));
        }
        async move {
            let r = req.send().await.expect("send");
            let s = r.status();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // No credential needed: the signature is the credential.
    let (s, first) = post(headers.clone(), body).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{first}");
    assert_eq!(
        (first["id"].as_str(), first["topic"].as_str()),
        (Some("msg_abc"), Some("hooks.payments"))
    );
    // A retry of the same message is answered with the same event.
    let (s, again) = post(headers.clone(), body).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(again["offset"], first["offset"]);
    let log = hub.get_json("/api/v1/events?topic=hooks.payments").await;
    let events = log["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "published once");
    assert_eq!(events[0]["type"], "payment.succeeded");
    assert_eq!(events[0]["data"]["amount"], 4200);
    // Tampered body, old timestamp, another secret, no headers: refused.
    let (s, b) = post(
        headers.clone(),
        r#"{"type":"payment.succeeded","amount":1}"#,
    )
    .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("HOOK_SIGNATURE_INVALID"))
    );
    let old: Value = serde_json::from_str(&python(sign, &[&secret, "msg_old", "3600", body]).await)
        .expect("json");
    let (s, b) = post(old, body).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        b["detail"].as_str().is_some_and(|d| d.contains("replayed")),
        "{b}"
    );
    let other = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let forged: Value =
        serde_json::from_str(&python(sign, &[other, "msg_forged", "0", body]).await).expect("json");
    assert_eq!(post(forged, body).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(post(json!({}), body).await.0, StatusCode::UNAUTHORIZED);
    let (s, b) = reqwest::Client::new()
        .post(hub.url("/api/v1/hooks/nohook"))
        .body("{}")
        .send()
        .await
        .map(|r| (r.status(), r))
        .expect("send");
    assert_eq!(s, StatusCode::NOT_FOUND);
    drop(b);
    // Refusals are audited.
    let audit = hub.get_json("/api/v1/audit?limit=1000").await;
    let refused = audit["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["action"] == "POST /api/v1/hooks/{name}" && r["outcome"] == 401)
        .count();
    assert_eq!(refused, 4);
}
