//! The OpenAPI document is valid OpenAPI 3.1 and lists only real routes.

use serde_json::Value;
use switchboard_test::TestHub;

#[tokio::test]
async fn document_validates_as_openapi_3_1() {
    let hub = TestHub::start().await.expect("hub");
    let resp = hub
        .http
        .get(hub.url("/api/v1/openapi.json"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let doc: Value = resp.json().await.expect("json");
    assert!(doc["openapi"].as_str().expect("version").starts_with("3.1"));

    // An independent validator: openapi-spec-validator (installed by .ci/run).
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, doc.to_string()).expect("write");
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&path)
        .output()
        .expect("python3 must be installed (see .ci/run)");
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document (install it with `pip install openapi-spec-validator`):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn every_listed_route_exists() {
    let hub = TestHub::start().await.expect("hub");
    let doc: Value = hub.get_json("/api/v1/openapi.json").await;
    let paths = doc["paths"].as_object().expect("paths");
    let mut checked = 0;
    for (path, item) in paths {
        for method in item.as_object().expect("path item").keys() {
            let Ok(m) = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
                continue;
            };
            let url = hub.url(&path.replace("{id}", "probe-agent"));
            let resp = hub
                .http
                .request(m.clone(), url)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .expect("send");
            let status = resp.status().as_u16();
            let streaming = resp
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            // An endless stream is a route that exists; do not wait for its end.
            let body: Value = if streaming {
                Value::Null
            } else {
                resp.json().await.unwrap_or(Value::Null)
            };
            // A missing route answers 404 NOT_FOUND or 405; a real one
            // answers anything else (AGENT_NOT_FOUND is the route working).
            assert!(
                status != 405 && !(status == 404 && body["code"] == "NOT_FOUND"),
                "{method} {path} is documented but not served ({status} {body})"
            );
            checked += 1;
        }
    }
    assert!(checked >= 9, "only {checked} operations documented");
    for must in [
        "/api/v1/agents/register",
        "/api/v1/agents/{id}/heartbeat",
        "/api/v1/agents",
        "/api/v1/agents/{id}",
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/metrics",
    ] {
        assert!(paths.contains_key(must), "{must} is not documented");
    }
}

#[tokio::test]
async fn document_matches_what_the_server_accepts() {
    // The registration schema lists exactly the fields the server takes and
    // refuses others, as the server does.
    let hub = TestHub::start().await.expect("hub");
    let doc: Value = hub.get_json("/api/v1/openapi.json").await;
    let schema = &doc["components"]["schemas"]["RegisterAgentRequest"];
    let mut props: Vec<&str> = schema["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .map(String::as_str)
        .collect();
    props.sort_unstable();
    assert_eq!(
        props,
        [
            "capabilities",
            "configuration",
            "endpoint",
            "health_check_url",
            "id",
            "metadata",
            "name",
            "type",
            "version"
        ]
    );
    let mut required: Vec<&str> = schema["required"]
        .as_array()
        .expect("required")
        .iter()
        .map(|v| v.as_str().expect("name"))
        .collect();
    required.sort_unstable();
    assert_eq!(required, ["id", "type"]);
    assert_eq!(schema["additionalProperties"], false);
}
