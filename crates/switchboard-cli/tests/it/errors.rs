//! Bad input gets a 4xx problem+json naming the field and the reason, and
//! changes nothing.

use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard_test::{DataDir, TestHub};

use crate::agent;

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    fields: &'static [&'static str],
}

fn json_case(
    name: &'static str,
    path: &'static str,
    body: Value,
    status: u16,
    code: &'static str,
    fields: &'static [&'static str],
) -> Case {
    Case {
        name,
        method: "POST",
        path,
        content_type: Some("application/json"),
        body: body.to_string().into_bytes(),
        status,
        code,
        fields,
    }
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

fn without(mut v: Value, key: &str) -> Value {
    v.as_object_mut().expect("object").remove(key);
    v
}

fn cases() -> Vec<Case> {
    const REG: &str = "/api/v1/agents/register";
    const HB: &str = "/api/v1/agents/known/heartbeat";
    let good = agent("new-agent", "worker", &["x"]);
    let mut all_bad = good.clone();
    all_bad["id"] = json!("has space");
    all_bad["type"] = json!("");
    all_bad["version"] = json!("one");
    all_bad["capabilities"] = json!(["ok", "not ok"]);
    all_bad["endpoint"] = json!("not a url");
    all_bad["health_check_url"] = json!("ftp://h/x");
    all_bad["configuration"] = json!({"max_concurrent_tasks": 0});
    vec![
        json_case(
            "missing id",
            REG,
            without(good.clone(), "id"),
            422,
            "VALIDATION_FAILED",
            &["id"],
        ),
        json_case(
            "missing type",
            REG,
            without(good.clone(), "type"),
            422,
            "VALIDATION_FAILED",
            &["type"],
        ),
        json_case(
            "id wrong type",
            REG,
            with(good.clone(), "id", json!(42)),
            422,
            "VALIDATION_FAILED",
            &["id"],
        ),
        json_case(
            "capabilities not a list",
            REG,
            with(good.clone(), "capabilities", json!("x")),
            422,
            "VALIDATION_FAILED",
            &["capabilities"],
        ),
        json_case(
            "capability wrong type",
            REG,
            with(good.clone(), "capabilities", json!(["x", 7])),
            422,
            "VALIDATION_FAILED",
            &["capabilities[1]"],
        ),
        json_case(
            "unknown field",
            REG,
            with(good.clone(), "colour", json!("red")),
            422,
            "VALIDATION_FAILED",
            &["colour"],
        ),
        json_case(
            "every bad field named",
            REG,
            all_bad,
            422,
            "VALIDATION_FAILED",
            &[
                "id",
                "type",
                "version",
                "capabilities[1]",
                "endpoint",
                "health_check_url",
                "configuration.max_concurrent_tasks",
            ],
        ),
        json_case(
            "max_concurrent_tasks not a number",
            REG,
            with(
                good.clone(),
                "configuration",
                json!({"max_concurrent_tasks": "five"}),
            ),
            422,
            "VALIDATION_FAILED",
            &["configuration.max_concurrent_tasks"],
        ),
        json_case(
            "body is an array",
            REG,
            json!([good.clone()]),
            422,
            "VALIDATION_FAILED",
            &["body"],
        ),
        json_case(
            "heartbeat hub-only status",
            HB,
            json!({"status": "offline"}),
            422,
            "VALIDATION_FAILED",
            &["status"],
        ),
        json_case(
            "heartbeat negative tasks",
            HB,
            json!({"current_tasks": -1}),
            422,
            "VALIDATION_FAILED",
            &["current_tasks"],
        ),
        json_case(
            "heartbeat text metric",
            HB,
            json!({"performance_metrics": {"cpu": "high"}}),
            422,
            "VALIDATION_FAILED",
            &["performance_metrics.cpu"],
        ),
        json_case(
            "heartbeat unknown field",
            HB,
            json!({"mood": "good"}),
            422,
            "VALIDATION_FAILED",
            &["mood"],
        ),
        json_case(
            "heartbeat bad id",
            "/api/v1/agents/bad%20id/heartbeat",
            json!({}),
            422,
            "VALIDATION_FAILED",
            &["id"],
        ),
        Case {
            name: "malformed json",
            method: "POST",
            path: REG,
            content_type: Some("application/json"),
            body: br#"{"id": "a", "type": "#.to_vec(),
            status: 400,
            code: "MALFORMED_JSON",
            fields: &[],
        },
        Case {
            name: "empty body",
            method: "POST",
            path: REG,
            content_type: Some("application/json"),
            body: Vec::new(),
            status: 400,
            code: "MALFORMED_JSON",
            fields: &[],
        },
        Case {
            name: "trailing garbage",
            method: "POST",
            path: REG,
            content_type: Some("application/json"),
            body: br#"{"id": "a", "type": "b"} {}"#.to_vec(),
            status: 400,
            code: "MALFORMED_JSON",
            fields: &[],
        },
        Case {
            name: "not utf-8",
            method: "POST",
            path: REG,
            content_type: Some("application/json"),
            body: vec![0x7b, 0xff, 0xfe, 0x7d],
            status: 400,
            code: "MALFORMED_JSON",
            fields: &[],
        },
        Case {
            name: "no content type",
            method: "POST",
            path: REG,
            content_type: None,
            body: good.to_string().into_bytes(),
            status: 415,
            code: "UNSUPPORTED_MEDIA_TYPE",
            fields: &[],
        },
        Case {
            name: "text content type",
            method: "POST",
            path: REG,
            content_type: Some("text/plain"),
            body: good.to_string().into_bytes(),
            status: 415,
            code: "UNSUPPORTED_MEDIA_TYPE",
            fields: &[],
        },
        Case {
            name: "oversized body",
            method: "POST",
            path: REG,
            content_type: Some("application/json"),
            body: with(
                good.clone(),
                "metadata",
                json!({"blob": "x".repeat(20_000)}),
            )
            .to_string()
            .into_bytes(),
            status: 413,
            code: "PAYLOAD_TOO_LARGE",
            fields: &[],
        },
        Case {
            name: "bad query",
            method: "GET",
            path: "/api/v1/agents?status=zombie&limit=5000&colour=red",
            content_type: None,
            body: Vec::new(),
            status: 400,
            code: "INVALID_QUERY",
            fields: &["status", "limit", "colour"],
        },
        Case {
            name: "unknown agent",
            method: "GET",
            path: "/api/v1/agents/nobody",
            content_type: None,
            body: Vec::new(),
            status: 404,
            code: "AGENT_NOT_FOUND",
            fields: &[],
        },
        Case {
            name: "unknown route",
            method: "GET",
            path: "/api/v1/nothing-here",
            content_type: None,
            body: Vec::new(),
            status: 404,
            code: "NOT_FOUND",
            fields: &[],
        },
        Case {
            name: "wrong method",
            method: "PUT",
            path: REG,
            content_type: Some("application/json"),
            body: good.to_string().into_bytes(),
            status: 405,
            code: "METHOD_NOT_ALLOWED",
            fields: &[],
        },
    ]
}

#[tokio::test]
async fn bad_inputs_get_the_right_problem_and_change_nothing() {
    // A small body limit so the oversized case is cheap.
    let hub = TestHub::start_with(
        DataDir::temp().expect("tmp"),
        "[http]\nmax_body_bytes = 8192\n",
    )
    .await
    .expect("hub");
    let known = agent("known", "worker", &["x"]);
    let resp = hub
        .http
        .post(hub.url("/api/v1/agents/register"))
        .json(&known)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let before: Value = hub.get_json("/api/v1/agents/known").await;

    for case in cases() {
        let method = reqwest::Method::from_bytes(case.method.as_bytes()).expect("method");
        let mut req = hub
            .http
            .request(method, hub.url(case.path))
            .header(
                "x-correlation-id",
                format!("case-{}", case.name.replace(' ', "-")),
            )
            .body(case.body.clone());
        if let Some(ct) = case.content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.expect("send");
        assert_eq!(resp.status().as_u16(), case.status, "{}: status", case.name);
        assert_eq!(
            resp.headers()["content-type"],
            "application/problem+json",
            "{}: content type",
            case.name
        );
        let p: Value = resp.json().await.expect("problem body");
        assert_eq!(p["status"], case.status, "{}: status member", case.name);
        assert_eq!(p["code"], case.code, "{}: code {p}", case.name);
        assert_eq!(p["error"]["code"], case.code, "{}: error.code", case.name);
        assert_eq!(
            p["correlation_id"],
            format!("case-{}", case.name.replace(' ', "-")),
            "{}: correlation id",
            case.name
        );
        assert!(
            p["type"]
                .as_str()
                .expect("type")
                .starts_with("urn:switchboard:problem:")
        );
        assert!(
            !p["detail"].as_str().expect("detail").is_empty(),
            "{}: detail",
            case.name
        );
        let fields: Vec<&str> = p["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e["field"].as_str().expect("field"))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(fields, case.fields, "{}: fields in {p}", case.name);
        for e in p["errors"].as_array().into_iter().flatten() {
            assert!(!e["reason"].as_str().expect("reason").is_empty());
        }
    }

    // Nothing changed: still one agent, exactly as before.
    let page: Value = hub.get_json("/api/v1/agents").await;
    assert_eq!(page["total"], 1);
    assert_eq!(page["agents"][0], before);
}

#[tokio::test]
async fn correlation_id_is_made_when_absent_and_echoed() {
    let hub = TestHub::start().await.expect("hub");
    let resp = hub
        .http
        .get(hub.url("/api/v1/agents/none"))
        .send()
        .await
        .expect("send");
    let header = resp.headers()["x-correlation-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(header.len() >= 16);
    let p: Value = resp.json().await.expect("json");
    assert_eq!(p["correlation_id"], header.as_str());
    // X-Request-Id is taken when no correlation id is given.
    let resp = hub
        .http
        .get(hub.url("/healthz"))
        .header("x-request-id", "req-42")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.headers()["x-correlation-id"], "req-42");
}
