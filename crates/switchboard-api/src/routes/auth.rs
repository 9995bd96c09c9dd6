//! `/api/v1/auth`: tokens (OAuth2 client credentials), the JWKS,
//! revocation, API keys and signing keys.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use switchboard_auth::{Auth, AuthError, KeyAlgorithm, NewApiKey, Role, Scope, Scopes};
use switchboard_core::FieldError;
use switchboard_wire::{
    ApiKey, ApiKeyCreated, ApiKeyList, CreateApiKeyRequest, Problem, RevokeRequest,
    RotateKeyRequest, SigningKey, SigningKeyList, TokenResponse, TopicAcl, Whoami,
};

use crate::access::Caller;
use crate::context;
use crate::convert::time;
use crate::error::{ApiError, ErrorCode};
use crate::extract::{AppJson, RawBody, is_json, parse};

/// Exchange client credentials for a token (OAuth2 client credentials,
/// RFC 6749 §4.4). The client authenticates with HTTP Basic, or with
/// `client_id` and `client_secret` in the body; the body is form-encoded
/// (`grant_type=client_credentials&scope=...`) or JSON with the same
/// fields. Errors follow RFC 6749 §5.2 (`error`, `error_description`) and
/// also carry the problem fields.
#[utoipa::path(
    post,
    path = "/api/v1/auth/token",
    security(()),
    tag = "auth",
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "grant_type=client_credentials, optional scope, and client_id/client_secret unless sent with HTTP Basic"),
    responses(
        (status = 200, description = "A token", body = TokenResponse),
        (status = 400, description = "invalid_request, unsupported_grant_type or invalid_scope"),
        (status = 401, description = "invalid_client"),
    )
)]
pub(crate) async fn token(
    State(auth): State<Auth>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let fields = match token_fields(&headers, &body) {
        Ok(f) => f,
        Err(why) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &why),
    };
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    match get("grant_type") {
        Some("client_credentials") => {}
        Some(other) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("grant_type {other:?} is not supported; use client_credentials"),
            );
        }
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is missing; send grant_type=client_credentials",
            );
        }
    }
    let basic = basic_credentials(&headers);
    let (id, secret) = match (&basic, get("client_id"), get("client_secret")) {
        (Some((id, secret)), None | Some(_), None) => (id.as_str(), secret.as_str()),
        (None, Some(id), Some(secret)) => (id, secret),
        (Some(_), _, Some(_)) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "send the client secret once: in HTTP Basic or in the body, not both",
            );
        }
        _ => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication is missing: use HTTP Basic, or client_id and client_secret in the body",
            );
        }
    };
    match auth.issue_token(id, secret, get("scope")).await {
        Ok(t) => {
            let mut resp = AppJson(TokenResponse {
                access_token: t.access_token,
                token_type: "Bearer".into(),
                expires_in: t.expires_in,
                scope: t.scope.to_string(),
            })
            .into_response();
            no_store(&mut resp);
            resp
        }
        Err(AuthError::InvalidClient) => oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed: unknown client, or a wrong or expired secret",
        ),
        Err(AuthError::InvalidScope(why)) => {
            oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", &why)
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

fn no_store(resp: &mut Response) {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// The body's fields: form-encoded or JSON (strings only); the error
/// says what is wrong with the body.
fn token_fields(headers: &HeaderMap, body: &[u8]) -> Result<Vec<(String, String)>, String> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return Ok(form_urlencoded::parse(body).into_owned().collect());
    }
    if !is_json(headers.get(header::CONTENT_TYPE)) {
        return Err("send the body as application/x-www-form-urlencoded (or JSON)".into());
    }
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Some(obj) = v.as_object() else {
        return Err("the body must be a JSON object".into());
    };
    obj.iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) => Ok((k.clone(), s.to_owned())),
            None => Err(format!("{k} must be a string")),
        })
        .collect()
}

/// `Authorization: Basic base64(urlencode(id):urlencode(secret))`.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let encoded = v
        .get(..6)
        .filter(|s| s.eq_ignore_ascii_case("basic "))
        .map(|_| v[6..].trim())?;
    let decoded = String::from_utf8(STANDARD.decode(encoded).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |s: &str| {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((unescape(id)?, unescape(secret)?))
}

/// An RFC 6749 §5.2 error, with the problem fields beside it.
fn oauth_error(status: StatusCode, error: &'static str, description: &str) -> Response {
    let code = match error {
        "invalid_client" => "INVALID_CLIENT",
        "invalid_scope" => "INVALID_SCOPE",
        "unsupported_grant_type" => "UNSUPPORTED_GRANT_TYPE",
        _ => "INVALID_REQUEST",
    };
    let correlation_id =
        context::current().map_or_else(String::new, |c| c.correlation_id.to_string());
    let body = json!({
        "error": error,
        "error_description": description,
        "type": format!("urn:switchboard:problem:{}", code.to_ascii_lowercase()),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": description,
        "code": code,
        "correlation_id": correlation_id,
    });
    let mut resp = (status, AppJson(body)).into_response();
    no_store(&mut resp);
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="switchboard""#),
        );
    }
    resp.extensions_mut().insert(ErrorCode(code));
    resp
}

/// The public keys that verify the hub's tokens (RFC 7517), including
/// rotated-out keys whose tokens have not all expired.
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    security(()),
    tag = "auth",
    responses((status = 200, description = "A JSON Web Key Set", body = Object))
)]
pub(crate) async fn jwks(State(auth): State<Auth>) -> Response {
    let mut resp = AppJson(auth.jwks()).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    resp
}

/// Who the hub takes the caller to be.
#[utoipa::path(
    get,
    path = "/api/v1/auth/whoami",
    security(("bearer" = [])),
    tag = "auth",
    responses(
        (status = 200, description = "The caller", body = Whoami),
        (status = 401, description = "No valid credential", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn whoami(
    State(auth): State<Auth>,
    caller: Caller,
) -> Result<AppJson<Whoami>, ApiError> {
    let Some(p) = caller.principal() else {
        return Err(ApiError::unauthorized("UNAUTHENTICATED", "no credential"));
    };
    let acl = p.agent_id().map(|id| {
        let a = auth.acl(id);
        TopicAcl {
            publish: a.publish,
            subscribe: a.subscribe,
        }
    });
    Ok(AppJson(Whoami {
        id: p.id.to_string(),
        kind: p.kind.as_str().into(),
        role: p.role.to_string(),
        scopes: p.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
        expires_at: p.expires_at.map(time),
        token_id: p.token_id.as_deref().map(str::to_owned),
        acl,
    }))
}

/// Revoke a token at once: the caller's own (`token`), or any token by its
/// id (`jti`, admin only). Revoking a token that is already invalid
/// succeeds.
#[utoipa::path(
    post,
    path = "/api/v1/auth/revoke",
    security(("bearer" = [])),
    tag = "auth",
    request_body = RevokeRequest,
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "Not the caller's token, and the caller is no admin", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Neither token nor jti", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn revoke(
    State(auth): State<Auth>,
    caller: Caller,
    AppJson(body): AppJson<RevokeRequest>,
) -> Result<StatusCode, ApiError> {
    let admin = caller.can(Scope::Admin);
    match (body.token, body.jti) {
        (Some(token), None) => {
            let Ok(p) = auth.authenticate(&token) else {
                return Ok(StatusCode::NO_CONTENT);
            };
            let (Some(jti), Some(exp)) = (p.token_id.clone(), p.expires_at) else {
                return Err(ApiError::validation(vec![FieldError::new(
                    "token",
                    "is not a token the hub issued (API keys are revoked by id: DELETE /api/v1/auth/api-keys/{id})",
                )]));
            };
            let own = caller.principal().is_some_and(|c| c.id == p.id);
            if !own && !admin {
                return Err(ApiError::forbidden(
                    "only the token's holder or an admin may revoke it",
                ));
            }
            auth.revoke_jti(&jti, exp).await?;
        }
        (None, Some(jti)) => {
            if !admin {
                return Err(ApiError::forbidden(
                    "revoking by jti needs the admin scope; send the token itself to revoke your own",
                ));
            }
            if jti.is_empty() || jti.len() > 128 {
                return Err(ApiError::validation(vec![FieldError::new(
                    "jti",
                    "must be 1 to 128 characters",
                )]));
            }
            // Any token with this id expires within one lifetime from now.
            let c = auth.config();
            let until = chrono::Utc::now().timestamp_millis()
                + i64::try_from((c.token_ttl + c.leeway).as_millis()).unwrap_or(i64::MAX / 2);
            auth.revoke_jti(&jti, until).await?;
        }
        _ => {
            return Err(ApiError::validation(vec![FieldError::new(
                "token",
                "send exactly one of token and jti",
            )]));
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

fn api_key(r: switchboard_auth::ApiKeyRecord) -> ApiKey {
    ApiKey {
        id: r.id,
        name: r.name,
        role: r.role,
        scopes: r
            .scopes
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        created_at: time(r.created_at),
        expires_at: r.expires_at.map(time),
        revoked_at: r.revoked_at.map(time),
    }
}

/// Make an API key for a service, a CI job or a person. The key is in this
/// answer only; the hub keeps its hash.
#[utoipa::path(
    post,
    path = "/api/v1/auth/api-keys",
    security(("bearer" = ["admin"])),
    tag = "auth",
    request_body = CreateApiKeyRequest,
    responses(
        (status = 201, description = "Made; the key is shown once", body = ApiKeyCreated),
        (status = 422, description = "Invalid fields, each named", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create_api_key(
    State(auth): State<Auth>,
    AppJson(body): AppJson<CreateApiKeyRequest>,
) -> Result<(StatusCode, AppJson<ApiKeyCreated>), ApiError> {
    let mut errs = Vec::new();
    let role = body
        .role
        .parse::<Role>()
        .map_err(|e| errs.push(FieldError::new("role", e)))
        .ok();
    let scopes = match &body.scopes {
        Some(list) => match Scopes::parse(&list.join(" ")) {
            Ok(s) => Some(s),
            Err(e) => {
                errs.push(FieldError::new("scopes", e));
                None
            }
        },
        None => None,
    };
    let (Some(role), true) = (role, errs.is_empty()) else {
        return Err(ApiError::validation(errs));
    };
    let created = auth
        .create_api_key(NewApiKey {
            name: body.name,
            role,
            scopes,
            expires_at: body.expires_at.map(|t| t.timestamp_millis()),
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        AppJson(ApiKeyCreated {
            api_key: api_key(created.record),
            key: created.key,
        }),
    ))
}

/// Every API key, without secrets.
#[utoipa::path(
    get,
    path = "/api/v1/auth/api-keys",
    security(("bearer" = ["admin"])),
    tag = "auth",
    responses((status = 200, description = "Newest first", body = ApiKeyList))
)]
pub(crate) async fn list_api_keys(State(auth): State<Auth>) -> AppJson<ApiKeyList> {
    AppJson(ApiKeyList {
        keys: auth.list_api_keys().into_iter().map(api_key).collect(),
    })
}

/// Revoke an API key at once.
#[utoipa::path(
    delete,
    path = "/api/v1/auth/api-keys/{id}",
    security(("bearer" = ["admin"])),
    tag = "auth",
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 200, description = "Revoked", body = ApiKey),
        (status = 404, description = "No such key", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn revoke_api_key(
    State(auth): State<Auth>,
    Path(id): Path<String>,
) -> Result<AppJson<ApiKey>, ApiError> {
    Ok(AppJson(api_key(auth.revoke_api_key(&id).await?)))
}

fn signing_key(k: switchboard_auth::KeyInfo) -> SigningKey {
    SigningKey {
        kid: k.kid,
        alg: k.alg.to_string(),
        created_at: time(k.created_at),
        retired_at: k.retired_at.map(time),
        current: k.current,
    }
}

/// The hub's signing keys.
#[utoipa::path(
    get,
    path = "/api/v1/auth/keys",
    security(("bearer" = ["admin"])),
    tag = "auth",
    responses((status = 200, description = "Oldest first", body = SigningKeyList))
)]
pub(crate) async fn list_keys(State(auth): State<Auth>) -> AppJson<SigningKeyList> {
    AppJson(SigningKeyList {
        keys: auth.signing_keys().into_iter().map(signing_key).collect(),
    })
}

/// Make a new signing key and sign with it from now on. The previous key
/// keeps verifying its tokens until they expire, then leaves the JWKS;
/// with `drop_previous` it goes at once and its tokens are refused.
#[utoipa::path(
    post,
    path = "/api/v1/auth/keys/rotate",
    security(("bearer" = ["admin"])),
    tag = "auth",
    request_body(content = RotateKeyRequest, description = "Optional: the algorithm"),
    responses(
        (status = 201, description = "The new key", body = SigningKey),
        (status = 422, description = "Unknown algorithm", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn rotate_key(
    State(auth): State<Auth>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<(StatusCode, AppJson<SigningKey>), ApiError> {
    let req: RotateKeyRequest = optional_json(&headers, &body)?;
    let alg = match req.alg {
        Some(a) => a
            .parse::<KeyAlgorithm>()
            .map_err(|e| ApiError::validation(vec![FieldError::new("alg", e)]))?,
        None => auth.config().signing_algorithm,
    };
    let info = auth.rotate_signing_key(alg, req.drop_previous).await?;
    Ok((StatusCode::CREATED, AppJson(signing_key(info))))
}

/// A JSON body that may be left out (then `T::default()`).
pub(crate) fn optional_json<T: serde::de::DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    if !is_json(headers.get(header::CONTENT_TYPE)) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "the body must be JSON: send Content-Type: application/json",
        ));
    }
    parse(body)
}
