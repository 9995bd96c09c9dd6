//! Extractors whose rejections are problem+json with the field at fault.

use axum::RequestExt as _;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use http_body_util::BodyExt as _;
use serde::de::DeserializeOwned;
use switchboard_core::FieldError;

use crate::error::ApiError;

/// JSON both ways. As a request's body, it refuses a missing or wrong
/// media type (415), an oversized body (413), broken JSON (400) and JSON
/// of the wrong shape (422, naming the field). As an answer, it is every
/// route's JSON body.
pub(crate) struct AppJson<T>(pub(crate) T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                "the body must be JSON: send Content-Type: application/json",
            ));
        }
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        parse(&bytes).map(AppJson)
    }
}

/// A JSON answer, serialized straight into the buffer that becomes its
/// body (axum's `Json` writes through `io::Write` into a `BytesMut`, a
/// call per token).
impl<T: serde::Serialize> axum::response::IntoResponse for AppJson<T> {
    fn into_response(self) -> axum::response::Response {
        let mut buf = Vec::with_capacity(128);
        match serde_json::to_writer(&mut buf, &self.0) {
            Ok(()) => JsonText(buf).into_response(),
            Err(e) => {
                ApiError::internal(format!("could not serialize the answer: {e}")).into_response()
            }
        }
    }
}

/// A JSON answer already written (`application/json`).
pub(crate) struct JsonText(pub(crate) Vec<u8>);

impl axum::response::IntoResponse for JsonText {
    fn into_response(self) -> axum::response::Response {
        let mut resp = axum::response::Response::new(axum::body::Body::from(self.0));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        );
        resp
    }
}

/// The body as bytes, within the body limit (413 past it). A body that
/// arrives as one chunk (most do) is kept as it came, without a copy or a
/// buffer to gather chunks in.
pub(crate) struct RawBody(pub(crate) Bytes);

impl<S> FromRequest<S> for RawBody
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        let mut body = req.into_limited_body();
        let mut first: Option<Bytes> = None;
        let mut more: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(body_error)?.into_data() else {
                continue;
            };
            match &first {
                None => first = Some(data),
                Some(head) => {
                    if more.is_empty() {
                        more.extend_from_slice(head);
                    }
                    more.extend_from_slice(&data);
                }
            }
        }
        Ok(RawBody(if more.is_empty() {
            first.unwrap_or_default()
        } else {
            Bytes::from(more)
        }))
    }
}

/// The answer to a body that could not be read: 413 past the limit.
fn body_error(e: axum::Error) -> ApiError {
    // The limit's error is boxed twice, as axum's own extractors find it:
    // `Limited` boxes it, and the `Body` around `Limited` wraps that in an
    // `axum::Error`.
    let inner = e.into_inner();
    let inner = match inner.downcast::<axum::Error>() {
        Ok(wrapped) => wrapped.into_inner(),
        Err(other) => other,
    };
    if inner.is::<http_body_util::LengthLimitError>() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            "the body is larger than this hub accepts (http.max_body_bytes)",
        )
    } else {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "MALFORMED_REQUEST",
            format!("the body could not be read: {inner}"),
        )
    }
}

/// A JSON body read as bytes: 415 unless the media type is JSON, then as
/// [`AppJson`] parses it.
pub(crate) fn json_body<T: DeserializeOwned>(
    headers: &axum::http::HeaderMap,
    bytes: &[u8],
) -> Result<T, ApiError> {
    if !is_json(headers.get(header::CONTENT_TYPE)) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "the body must be JSON: send Content-Type: application/json",
        ));
    }
    parse(bytes)
}

pub(crate) fn is_json(v: Option<&axum::http::HeaderValue>) -> bool {
    let Some(ct) = v.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or("").trim().as_bytes();
    let Some(subtype) = essence
        .get(.."application/".len())
        .filter(|t| t.eq_ignore_ascii_case(b"application/"))
        .map(|_| &essence["application/".len()..])
    else {
        return false;
    };
    subtype.eq_ignore_ascii_case(b"json")
        || subtype.len() > "+json".len()
            && subtype[subtype.len() - "+json".len()..].eq_ignore_ascii_case(b"+json")
}

/// Parses a JSON body of any shape into `T`, classifying the failure; a
/// field path that starts with an index is put under `prefix`
/// (`events[2].topic`).
pub(crate) fn parse_any<T: DeserializeOwned>(bytes: &[u8], prefix: &str) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "MALFORMED_JSON",
            "the body is empty; send JSON",
        ));
    }
    deserialize(bytes, prefix)
}

fn deserialize<T: DeserializeOwned>(bytes: &[u8], prefix: &str) -> Result<T, ApiError> {
    // At full speed first: tracking the path costs on every field, and it
    // is only needed to name the one at fault, so a body that fails is
    // read again with it (the same parser, so it fails the same way).
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let malformed = |e: &serde_json::Error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "MALFORMED_JSON",
            format!("the body is not valid JSON: {e}"),
        )
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let path = e.path().to_string();
                let path = if path.starts_with('[') {
                    format!("{prefix}{path}")
                } else {
                    path
                };
                ApiError::validation(vec![field_error(&path, inner)])
            }
            _ => malformed(inner),
        }
    })?;
    // Nothing but white space may follow the value.
    de.end().map_err(|e| malformed(&e))?;
    Ok(value)
}

/// Parses a JSON body into `T`, classifying the failure.
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "MALFORMED_JSON",
            "the body is empty; send a JSON object",
        ));
    }
    // Every body of this API is an object; serde would otherwise read a
    // struct from an array too, and blame its first element.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        let first = serde_json::from_slice::<serde::de::IgnoredAny>(bytes);
        if let Err(e) = first {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "MALFORMED_JSON",
                format!("the body is not valid JSON: {e}"),
            ));
        }
        return Err(ApiError::validation(vec![FieldError::new(
            "body",
            "must be a JSON object",
        )]));
    }
    deserialize(bytes, "")
}

/// Names the field of a data error. serde reports a missing field at its
/// parent, with the name in backquotes; move it into the path so the client
/// sees `inner.x`, not `inner`. An unknown field's path already ends with it.
fn field_error(path: &str, e: &serde_json::Error) -> FieldError {
    let msg = e.to_string();
    // Drop serde_json's " at line 1 column 5" suffix: the path says where.
    let msg = msg
        .rsplit_once(" at line ")
        .map_or(msg.as_str(), |(m, _)| m)
        .to_owned();
    let parent = if path == "." { "" } else { path };
    for prefix in ["unknown field `", "missing field `"] {
        if let Some((name, _)) = msg.strip_prefix(prefix).and_then(|r| r.split_once('`')) {
            let field = if parent.is_empty() {
                name.to_owned()
            } else if parent == name || parent.ends_with(&format!(".{name}")) {
                parent.to_owned()
            } else {
                format!("{parent}.{name}")
            };
            let reason = if prefix.starts_with("unknown") {
                "is not a known field".to_owned()
            } else {
                "is required".to_owned()
            };
            return FieldError::new(field, reason);
        }
    }
    let field = if parent.is_empty() { "body" } else { parent };
    FieldError::new(field, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request whose body comes in `chunks`, under a body limit.
    async fn chunked(chunks: &[&'static str], limit: usize) -> Request {
        use tower::{Layer, ServiceExt};
        let frames = chunks
            .iter()
            .map(|c| Ok::<_, std::io::Error>(Bytes::from_static(c.as_bytes())))
            .collect::<Vec<_>>();
        let req = Request::new(axum::body::Body::from_stream(futures_util::stream::iter(
            frames,
        )));
        // The body limit travels as an extension, put there by its layer.
        let passed =
            tower::service_fn(|req: Request| async move { Ok::<_, std::convert::Infallible>(req) });
        match axum::extract::DefaultBodyLimit::max(limit)
            .layer(passed)
            .oneshot(req)
            .await
        {
            Ok(req) => req,
            Err(never) => match never {},
        }
    }

    #[tokio::test]
    async fn bodies_are_read_whole_in_one_chunk_or_many() {
        let RawBody(one) = RawBody::from_request(chunked(&["{\"a\":1}"], 100).await, &())
            .await
            .expect("one chunk");
        assert_eq!(one, "{\"a\":1}");
        let RawBody(many) = RawBody::from_request(chunked(&["{\"a\"", ":", "1}"], 100).await, &())
            .await
            .expect("three chunks");
        assert_eq!(many, "{\"a\":1}");
        let RawBody(none) = RawBody::from_request(chunked(&[], 100).await, &())
            .await
            .expect("no chunk");
        assert!(none.is_empty());
        let too_large = RawBody::from_request(chunked(&["12345", "67890", "1"], 10).await, &())
            .await
            .err()
            .expect("past the limit");
        assert_eq!(
            axum::response::IntoResponse::into_response(too_large).status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn json_media_types() {
        let is = |ct: &'static str| is_json(Some(&axum::http::HeaderValue::from_static(ct)));
        for yes in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            " application/json ;charset=utf-8",
            "application/cloudevents+json",
            "application/cloudevents-batch+json",
            "APPLICATION/CLOUDEVENTS+JSON",
        ] {
            assert!(is(yes), "{yes}");
        }
        for no in [
            "text/json",
            "application/jsonx",
            "application/+json",
            "application/",
            "application",
            "text/plain",
            "",
            "json",
        ] {
            assert!(!is(no), "{no}");
        }
        assert!(!is_json(None));
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        id: String,
        n: Option<u32>,
        inner: Option<Inner>,
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        x: Vec<u8>,
    }

    fn fail(body: &str) -> (u16, String, Vec<String>) {
        let e = parse::<T>(body.as_bytes()).expect_err("should fail");
        (
            e.status().as_u16(),
            e.code().to_owned(),
            e.fields().iter().map(|f| f.field.clone()).collect(),
        )
    }

    #[test]
    fn names_the_field() {
        assert_eq!(fail(r#"{"n": 1}"#).2, ["id"]);
        assert_eq!(fail(r#"{"id": "a", "zz": 1}"#).2, ["zz"]);
        assert_eq!(fail(r#"{"id": 5}"#).2, ["id"]);
        assert_eq!(fail(r#"{"id": "a", "n": -1}"#).2, ["n"]);
        assert_eq!(
            fail(r#"{"id": "a", "inner": {"x": [1, 300]}}"#).2,
            ["inner.x[1]"]
        );
        assert_eq!(fail(r#"{"id": "a", "inner": {"y": 1}}"#).2, ["inner.y"]);
        assert_eq!(fail(r#"[]"#).2, ["body"]);
    }

    #[test]
    fn malformed_is_400() {
        assert_eq!(fail(r#"{"id": "#).0, 400);
        assert_eq!(fail("").1, "MALFORMED_JSON");
        assert_eq!(fail(r#"{"id": "a"} x"#).0, 400);
    }
}
