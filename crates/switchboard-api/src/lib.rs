//! Switchboard's HTTP API: the only crate that knows HTTP status codes,
//! problem+json and how wire types map to domain types.
//!
//! Layout:
//! - [`front`] builds the whole API from an [`AppState`]: the service of
//!   each connection, which sends `/gw/` requests straight to the gateway
//!   and the rest to the `axum::Router`; [`openapi`] returns the OpenAPI
//!   3.1 document generated from the same route table, so the document
//!   cannot list a route that does not exist.
//! - `routes/*`: one module per resource; handlers are thin: extract,
//!   convert, call the component handle, convert back.
//! - `error`: [`ApiError`], rendered as problem+json.
//! - `extract`: the JSON extractor whose rejections name the bad field.
//! - `context`: the correlation id of the request being answered.
//! - `middleware`: the layer stack and its order.
//! - `access`: authentication, rate limits, authorization and audit on
//!   every route, from each route's OpenAPI `security` requirement.

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

mod access;
mod context;
mod convert;
mod error;
mod extract;
mod front;
mod middleware;
mod routes;
mod state;

pub use access::ClientAddr;
pub use context::CORRELATION_ID;
pub use error::ApiError;
pub use front::{Connection, Front};
pub use state::{ApiConfig, AppState, Checks, Handles};

use routes::{
    agents, audit, auth, events, gateway, groups, keys, messages, system, tasks, vault, webhooks,
    workflows, ws,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchboard",
        description = "The hub through which software agents find and talk to each other.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "agents", description = "The agent registry"),
        (name = "events", description = "The event bus: publish, read the log, stream"),
        (name = "groups", description = "Consumer groups: durable subscriptions, acknowledgements, dead letters"),
        (name = "messages", description = "Direct messages and request-response between agents, in clear or sealed end to end"),
        (name = "keys", description = "Agents' public keys for sealed messages: proof of possession, rotation, revocation"),
        (name = "vault", description = "Secrets encrypted at rest: versions, read policies, master key rotation"),
        (name = "tasks", description = "The task queue: create, claim, report, cancel"),
        (name = "workflows", description = "Workflows: DAGs of stages with failure strategies and compensation"),
        (name = "auth", description = "Tokens, API keys, signing keys, revocation"),
        (name = "audit", description = "The hash-chained audit log"),
        (name = "gateway", description = "The reverse proxy to agents: services, routes, topology"),
        (name = "webhooks", description = "Signed webhooks out, verified hooks in"),
        (name = "system", description = "Health, readiness, metrics, this document"),
    ),
    components(schemas(switchboard_wire::Problem)),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

/// The gateway's proxy routes: documented once (`/gw/{service}/{path}`,
/// every method), served by the fast path (`gateway::proxy_admitted`,
/// from `front`).
#[derive(OpenApi)]
#[openapi(paths(gateway::proxy_doc))]
struct GatewayDoc;

/// Declares the `bearer` scheme each route's `security` refers to.
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some(
            "A token from POST /api/v1/auth/token (agents, client credentials) or an API key (sbk_...)"
                .into(),
        );
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

fn route_table() -> OpenApiRouter<AppState> {
    let mut doc = ApiDoc::openapi();
    let mut gateway_doc = GatewayDoc::openapi();
    // One handler serves every method: name each operation by its method.
    for item in gateway_doc.paths.paths.values_mut() {
        for (method, op) in [
            ("get", &mut item.get),
            ("post", &mut item.post),
            ("put", &mut item.put),
            ("patch", &mut item.patch),
            ("delete", &mut item.delete),
            ("head", &mut item.head),
            ("options", &mut item.options),
        ] {
            if let Some(op) = op {
                op.operation_id = Some(format!("gateway_proxy_{method}"));
            }
        }
    }
    doc.merge(gateway_doc);
    OpenApiRouter::with_openapi(doc)
        .routes(routes!(system::healthz))
        .routes(routes!(system::readyz))
        .routes(routes!(system::prometheus))
        .routes(routes!(system::report))
        .routes(routes!(openapi_json))
        .routes(routes!(agents::register))
        .routes(routes!(agents::list))
        .routes(routes!(agents::get, agents::remove))
        .routes(routes!(agents::heartbeat))
        .routes(routes!(
            agents::rotate_credentials,
            agents::revoke_credentials
        ))
        .routes(routes!(agents::get_acl, agents::set_acl))
        .routes(routes!(keys::agent_key_challenge))
        .routes(routes!(keys::register_agent_keys, keys::list_agent_keys))
        .routes(routes!(keys::revoke_agent_keys))
        .routes(routes!(vault::list_secrets))
        .routes(routes!(
            vault::put_secret,
            vault::get_secret,
            vault::delete_secret
        ))
        .routes(routes!(vault::describe_secret))
        .routes(routes!(vault::set_secret_policy))
        .routes(routes!(vault::vault_status))
        .routes(routes!(vault::rotate_vault))
        .routes(routes!(auth::token))
        .routes(routes!(auth::jwks))
        .routes(routes!(auth::whoami))
        .routes(routes!(auth::revoke))
        .routes(routes!(auth::create_api_key, auth::list_api_keys))
        .routes(routes!(auth::revoke_api_key))
        .routes(routes!(auth::list_keys))
        .routes(routes!(auth::rotate_key))
        .routes(routes!(audit::list_audit))
        .routes(routes!(audit::verify_audit))
        .routes(routes!(gateway::list_services))
        .routes(routes!(
            gateway::get_service,
            gateway::put_service,
            gateway::delete_service
        ))
        .routes(routes!(gateway::list_routes))
        .routes(routes!(gateway::put_route, gateway::delete_route))
        .routes(routes!(gateway::topology))
        .routes(routes!(webhooks::list_webhooks))
        .routes(routes!(webhooks::put_webhook, webhooks::delete_webhook))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(webhooks::list_hooks))
        .routes(routes!(
            webhooks::put_hook,
            webhooks::delete_hook,
            webhooks::receive_hook
        ))
        .routes(routes!(events::publish, events::read))
        .routes(routes!(events::stream))
        .routes(routes!(groups::list_groups))
        .routes(routes!(
            groups::create_group,
            groups::get_group,
            groups::delete_group
        ))
        .routes(routes!(groups::pull))
        .routes(routes!(groups::ack))
        .routes(routes!(groups::nack))
        .routes(routes!(groups::list_dead_letters))
        .routes(routes!(groups::get_dead_letter))
        .routes(routes!(groups::replay_dead_letters))
        .routes(routes!(groups::purge_dead_letters))
        .routes(routes!(messages::send))
        .routes(routes!(messages::request))
        .routes(routes!(tasks::create_task, tasks::list_tasks))
        .routes(routes!(tasks::claim_tasks))
        .routes(routes!(tasks::get_task, tasks::update_task))
        .routes(routes!(tasks::cancel_task))
        .routes(routes!(
            workflows::create_workflow,
            workflows::list_workflows
        ))
        .routes(routes!(workflows::get_workflow))
        .routes(routes!(workflows::cancel_workflow))
        .routes(routes!(ws::upgrade))
}

/// An event as the API writes it (CloudEvents JSON, rendered once per
/// event); webhooks post the same.
pub fn render_event(e: &switchboard_bus::Event) -> Arc<str> {
    convert::cloud_event_json(e)
}

/// The OpenAPI 3.1 document of every route [`front`] serves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    route_table().split_for_parts().1
}

/// [`openapi`] as JSON, made on first use: the document follows from the
/// code alone, so every request need not carry it.
static OPENAPI_JSON: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    openapi()
        .to_json()
        .unwrap_or_else(|e| format!(r#"{{"error": "could not render the document: {e}"}}"#))
});

/// This document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    security(()),
    tag = "system",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object))
)]
async fn openapi_json() -> Response {
    let mut resp = OPENAPI_JSON.as_str().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Routes whose authorization rule is missing or unreadable; a route in
/// this list is refused to everyone.
pub fn policy_problems() -> Vec<String> {
    access::Policies::from_openapi(&openapi()).1
}

/// The whole API: the service each accepted connection is served by.
pub fn front(state: AppState) -> Front {
    let (routes, doc) = route_table().split_for_parts();
    let (policies, problems) = access::Policies::from_openapi(&doc);
    for problem in problems {
        tracing::error!(%problem, "route without an authorization rule: refused to everyone");
    }
    let metrics = state.metrics.clone();
    let config = state.config.clone();
    let access = access::Access::new(
        state.auth.clone(),
        state.bus.clone(),
        state.metrics.clone(),
        policies,
        config.audit_data_plane,
    );
    let (fast_access, fast_gateway) = (access.clone(), state.gateway.clone());
    let fallback = {
        let (access, gateway, limit) =
            (access.clone(), state.gateway.clone(), config.max_body_bytes);
        move |req: axum::extract::Request| {
            gateway::fallback(access.clone(), gateway.clone(), limit, req)
        }
    };
    let guard = access::Guard {
        access,
        body_limit: axum::extract::DefaultBodyLimit::max(config.max_body_bytes),
    };
    let router = routes
        .route_layer(middleware::Wrap(guard))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    let stack = middleware::Stack::new(metrics, &config);
    Front::new(router, stack, fast_access, fast_gateway)
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "no such route; the routes are listed at /api/v1/openapi.json",
    )
}

/// Carries the route's template, the label of its metrics.
async fn method_not_allowed(route: Option<axum::extract::MatchedPath>) -> Response {
    let mut resp = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "this route does not take that method; see /api/v1/openapi.json",
    )
    .into_response();
    if let Some(route) = route {
        resp.extensions_mut().insert(route);
    }
    resp
}
