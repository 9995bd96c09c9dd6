//! The gateway: `ANY /gw/{service}/{*path}`, configured routes (the
//! fallback), and `/api/v1/gateway/*` to manage services and routes.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use http_body_util::BodyExt;
use switchboard_core::FieldErrors;
use switchboard_gateway::{
    Algorithm, BoxError, CallContext, Gateway, HealthSpec, OutlierSpec, Protocol, RouteKind,
    RouteSpec, ServiceSpec, Split, Timeouts,
};
use switchboard_wire::{
    AggregatedPart, AggregatedResponse, BreakerSettings, HealthCheckConfig, InstanceState,
    OutlierConfig, Problem, RetryConfig, Route, RouteConfig, RouteList, Service, ServiceConfig,
    ServiceList, ServiceState, SplitConfig, TimeoutConfig, Topology,
};

use crate::access::{self, Access, ClientAddr, Rule};
use crate::context;
use crate::error::ApiError;
use crate::extract::AppJson;

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Proxy a request to an instance of `service` (the agents of that type,
/// unless configured otherwise): the method, the rest of the path, the
/// query, the headers (hop-by-hop ones removed; `Forwarded`,
/// `X-Forwarded-*`, `X-Request-Id`, `traceparent`, `X-Trace-Id` and
/// `X-Span-Id` added) and the body, streamed both ways; WebSocket upgrades
/// pass through. No usable instance: 503 `AGENT_UNAVAILABLE`; a timeout:
/// 504; an upstream failure: 502.
#[utoipa::path(
    method(get, post, put, patch, delete, head, options),
    path = "/gw/{service}/{path}",
    security(("bearer" = ["gateway:invoke"])),
    tag = "gateway",
    params(
        ("service" = String, Path, description = "The service (an agent type, or a configured service)"),
        ("path" = String, Path, description = "The path to ask the instance for (any depth)"),
    ),
    responses(
        (status = 200, description = "The instance's answer, as it gave it"),
        (status = 404, description = "No such service (SERVICE_NOT_FOUND)", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The instance failed (BAD_GATEWAY)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No usable instance (AGENT_UNAVAILABLE)", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "A timeout ran out (GATEWAY_TIMEOUT)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[expect(
    dead_code,
    reason = "documents the proxy routes for OpenAPI; the router serves `proxy`"
)]
pub(crate) async fn proxy_doc() {}

/// The gateway's fast path (see [`crate::front`]): a request under
/// `/gw/` is admitted (authenticated, rate-limited, authorized as
/// `/gw/{service}/{path}` is documented), proxied and answered here,
/// without the router and the middleware the API's own routes need.
/// Its correlation id is made and echoed as for every route; its figures
/// are the gateway's own metrics.
pub(crate) async fn proxy_admitted(access: &Access, gateway: &Gateway, req: Request) -> Response {
    crate::context::scoped(req, |req| async move {
        const ROUTE: &str = "/gw/{service}/{path}";
        let rule = access.policies.get(req.method(), ROUTE);
        let admitted =
            match access::admit(access, &access::Head::of(&req), ROUTE.to_owned(), rule).await {
                Ok(a) => a,
                Err(resp) => return resp,
            };
        let resp = match std::panic::AssertUnwindSafe(proxy_request(gateway, req))
            .catch_unwind()
            .await
        {
            Ok(r) => r,
            Err(_) => ApiError::internal("the gateway panicked while proxying").into_response(),
        };
        access::finish(access, admitted, resp).await
    })
    .await
}

async fn proxy_request(gateway: &Gateway, req: Request) -> Response {
    let path = req.uri().path();
    let rest = path.strip_prefix("/gw/").unwrap_or_default();
    let (service, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if service.is_empty() {
        return crate::not_found().await.into_response();
    }
    let (service, tail) = (service.to_owned(), tail.to_owned());
    forward(gateway, &service, tail, None, req).await
}

fn context(req: &Request, path: String, route: Option<String>) -> CallContext {
    let (ip, secure) = req
        .extensions()
        .get::<ConnectInfo<ClientAddr>>()
        .map_or(([0, 0, 0, 0].into(), false), |c| {
            (c.0.addr.ip(), c.0.secure)
        });
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    CallContext {
        client_ip: ip,
        inbound_https: secure,
        host: req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned),
        request_id: context::current()
            .map(|c| c.correlation_id.to_string())
            .unwrap_or_default(),
        path_and_query,
        route,
    }
}

fn proxy_body(body: Body) -> switchboard_gateway::ProxyBody {
    body.map_err(|e| Box::new(e) as BoxError).boxed_unsync()
}

async fn forward(
    gateway: &Gateway,
    service: &str,
    path: String,
    route: Option<String>,
    req: Request,
) -> Response {
    let ctx = context(&req, path, route);
    let (parts, body) = req.into_parts();
    let req = http::Request::from_parts(parts, proxy_body(body));
    match gateway.proxy(service, req, &ctx).await {
        Ok(resp) => resp.map(Body::new),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The fallback: a configured route's request (checked like any route,
/// with the scope `gateway:invoke`), or 404.
pub(crate) async fn fallback(
    access: Access,
    gateway: Gateway,
    body_limit: usize,
    req: Request,
) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let route = gateway.match_route(host, req.uri().path());
    let Some(route) = route else {
        return crate::not_found().await.into_response();
    };
    let admitted = match access::admit(
        &access,
        &access::Head::of(&req),
        format!("route:{}", route.name),
        Some(Rule::Scope(switchboard_auth::Scope::GatewayInvoke)),
    )
    .await
    {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let path = if route.strip_prefix {
        let rest = req.uri().path()[route.path_prefix.len()..].to_owned();
        if rest.starts_with('/') {
            rest
        } else {
            format!("/{rest}")
        }
    } else {
        req.uri().path().to_owned()
    };
    let resp = match route.kind {
        RouteKind::Proxy => {
            forward(
                &gateway,
                &route.service,
                path,
                Some(route.name.clone()),
                req,
            )
            .await
        }
        RouteKind::Aggregate {
            max_instances,
            deadline,
        } => {
            let ctx = context(&req, path, Some(route.name.clone()));
            let (parts, body) = req.into_parts();
            let body = match axum::body::to_bytes(body, body_limit).await {
                Ok(b) => b,
                Err(_) => {
                    let e = ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "PAYLOAD_TOO_LARGE",
                        "the body is larger than this hub accepts (http.max_body_bytes)",
                    );
                    return access::finish(&access, admitted, e.into_response()).await;
                }
            };
            let req = http::Request::from_parts(parts, body);
            match gateway
                .aggregate(&route.service, req, &ctx, max_instances, deadline)
                .await
            {
                Ok(a) => AppJson(AggregatedResponse {
                    service: a.service,
                    complete: a.complete,
                    responses: a
                        .answers
                        .into_iter()
                        .map(|ans| {
                            let json = ans
                                .content_type
                                .as_deref()
                                .is_some_and(|c| c.contains("json"));
                            let body = if ans.body.is_empty() {
                                serde_json::Value::Null
                            } else if json {
                                serde_json::from_slice(&ans.body).unwrap_or_else(|_| {
                                    String::from_utf8_lossy(&ans.body).into_owned().into()
                                })
                            } else {
                                String::from_utf8_lossy(&ans.body).into_owned().into()
                            };
                            AggregatedPart {
                                instance: ans.instance,
                                status: ans.status,
                                body,
                                error: ans.error,
                                elapsed_ms: ms(ans.elapsed),
                            }
                        })
                        .collect(),
                })
                .into_response(),
                Err(e) => ApiError::from(e).into_response(),
            }
        }
    };
    access::finish(&access, admitted, resp).await
}

// === Services ===

pub(crate) fn service_wire(spec: ServiceSpec, configured: bool) -> Service {
    let (balancing, hash_header) = match &spec.balancing {
        Algorithm::ConsistentHash { header } => {
            ("consistent_hash".to_owned(), Some(header.clone()))
        }
        other => (other.name().to_owned(), None),
    };
    Service {
        name: spec.name,
        configured,
        agent_type: spec.agent_type,
        balancing,
        hash_header,
        splits: spec
            .splits
            .into_iter()
            .map(|s| SplitConfig {
                version: s.version,
                weight: s.weight,
            })
            .collect(),
        health_check: HealthCheckConfig {
            interval_ms: ms(spec.health.interval),
            timeout_ms: ms(spec.health.timeout),
            unhealthy_after: spec.health.unhealthy_after,
            healthy_after: spec.health.healthy_after,
        },
        outlier: OutlierConfig {
            consecutive_failures: spec.outlier.consecutive_failures,
            base_ejection_ms: ms(spec.outlier.base_ejection),
            max_ejection_ms: ms(spec.outlier.max_ejection),
        },
        breaker: BreakerSettings {
            failure_threshold: spec.breaker.failure_threshold,
            open_ms: ms(spec.breaker.open_for),
            half_open_max: spec.breaker.half_open_max,
        },
        retry: RetryConfig {
            attempts: spec.retry.attempts,
            on_status: spec.retry.on_status,
            backoff_ms: ms(spec.retry.backoff),
            budget_ratio: spec.retry.budget_ratio,
            budget_min_per_second: spec.retry.budget_min_per_second,
        },
        timeouts: TimeoutConfig {
            connect_ms: ms(spec.timeouts.connect),
            first_byte_ms: ms(spec.timeouts.first_byte),
            total_ms: ms(spec.timeouts.total),
        },
        protocol: match spec.protocol {
            Protocol::Http1 => "http1".into(),
            Protocol::Http2 => "http2".into(),
        },
        forward_authorization: spec.forward_authorization,
    }
}

fn service_spec(name: String, c: ServiceConfig) -> Result<ServiceSpec, ApiError> {
    let mut errs = FieldErrors::new();
    let mut spec = ServiceSpec::implicit(&name);
    if let Some(t) = c.agent_type {
        spec.agent_type = t;
    }
    match c.balancing.as_deref().map(str::parse::<Algorithm>) {
        None => {}
        Some(Ok(Algorithm::ConsistentHash { .. })) => match c.hash_header {
            Some(h) => {
                spec.balancing = Algorithm::ConsistentHash {
                    header: h.to_ascii_lowercase(),
                }
            }
            None => errs.push("hash_header", "consistent_hash needs the header to hash"),
        },
        Some(Ok(a)) => spec.balancing = a,
        Some(Err(r)) => errs.push("balancing", r),
    }
    if let Some(splits) = c.splits {
        spec.splits = splits
            .into_iter()
            .map(|s| Split {
                version: s.version,
                weight: s.weight,
            })
            .collect();
    }
    if let Some(h) = c.health_check {
        spec.health = HealthSpec {
            interval: Duration::from_millis(h.interval_ms),
            timeout: Duration::from_millis(h.timeout_ms),
            unhealthy_after: h.unhealthy_after,
            healthy_after: h.healthy_after,
        };
    }
    if let Some(o) = c.outlier {
        spec.outlier = OutlierSpec {
            consecutive_failures: o.consecutive_failures,
            base_ejection: Duration::from_millis(o.base_ejection_ms),
            max_ejection: Duration::from_millis(o.max_ejection_ms),
        };
    }
    if let Some(b) = c.breaker {
        spec.breaker = switchboard_gateway::BreakerConfig {
            failure_threshold: b.failure_threshold,
            open_for: Duration::from_millis(b.open_ms),
            half_open_max: b.half_open_max,
        };
    }
    if let Some(r) = c.retry {
        spec.retry = switchboard_gateway::RetryPolicy {
            attempts: r.attempts,
            on_status: r.on_status,
            backoff: Duration::from_millis(r.backoff_ms),
            budget_ratio: r.budget_ratio,
            budget_min_per_second: r.budget_min_per_second,
        };
    }
    if let Some(t) = c.timeouts {
        spec.timeouts = Timeouts {
            connect: Duration::from_millis(t.connect_ms),
            first_byte: Duration::from_millis(t.first_byte_ms),
            total: Duration::from_millis(t.total_ms),
        };
    }
    match c.protocol.as_deref() {
        None | Some("http1") => {}
        Some("http2") => spec.protocol = Protocol::Http2,
        Some(other) => errs.push("protocol", format!("{other:?} is not http1 or http2")),
    }
    if let Some(f) = c.forward_authorization {
        spec.forward_authorization = f;
    }
    errs.finish().map_err(ApiError::validation)?;
    Ok(spec)
}

/// Every service: configured ones, and agent types with agents (with the
/// defaults).
#[utoipa::path(
    get,
    path = "/api/v1/gateway/services",
    security(("bearer" = ["gateway:read"])),
    tag = "gateway",
    responses((status = 200, description = "By name", body = ServiceList))
)]
pub(crate) async fn list_services(State(gateway): State<Gateway>) -> AppJson<ServiceList> {
    AppJson(ServiceList {
        services: gateway
            .services()
            .into_iter()
            .map(|(s, c)| service_wire(s, c))
            .collect(),
    })
}

/// One service's settings.
#[utoipa::path(
    get,
    path = "/api/v1/gateway/services/{name}",
    security(("bearer" = ["gateway:read"])),
    tag = "gateway",
    params(("name" = String, Path, description = "Service name")),
    responses(
        (status = 200, description = "The service", body = Service),
        (status = 404, description = "No such service", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_service(
    State(gateway): State<Gateway>,
    Path(name): Path<String>,
) -> Result<AppJson<Service>, ApiError> {
    let (s, c) = gateway
        .service(&name)
        .ok_or(switchboard_gateway::GatewayError::NoService(name))?;
    Ok(AppJson(service_wire(s, c)))
}

/// Configure a service: its agents' type, balancing, version splits,
/// health checks, outlier detection, breakers, retries, timeouts and
/// protocol. Takes effect on the next request; instances keep their state.
#[utoipa::path(
    put,
    path = "/api/v1/gateway/services/{name}",
    security(("bearer" = ["gateway:manage"])),
    tag = "gateway",
    params(("name" = String, Path, description = "Service name")),
    request_body = ServiceConfig,
    responses(
        (status = 200, description = "Configured", body = Service),
        (status = 422, description = "Invalid fields, each named", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn put_service(
    State(gateway): State<Gateway>,
    Path(name): Path<String>,
    AppJson(body): AppJson<ServiceConfig>,
) -> Result<AppJson<Service>, ApiError> {
    let spec = gateway.put_service(service_spec(name, body)?).await?;
    Ok(AppJson(service_wire(spec, true)))
}

/// Forget a service's settings (its agents serve it with the defaults).
#[utoipa::path(
    delete,
    path = "/api/v1/gateway/services/{name}",
    security(("bearer" = ["gateway:manage"])),
    tag = "gateway",
    params(("name" = String, Path, description = "Service name")),
    responses(
        (status = 204, description = "Forgotten"),
        (status = 404, description = "Not configured", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete_service(
    State(gateway): State<Gateway>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    gateway.delete_service(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// === Routes ===

fn route_wire(r: RouteSpec) -> Route {
    let (kind, max_instances, deadline_ms) = match r.kind {
        RouteKind::Proxy => ("proxy", None, None),
        RouteKind::Aggregate {
            max_instances,
            deadline,
        } => ("aggregate", max_instances, Some(ms(deadline))),
    };
    Route {
        name: r.name,
        config: RouteConfig {
            host: r.host,
            path_prefix: r.path_prefix,
            service: r.service,
            strip_prefix: r.strip_prefix,
            kind: Some(kind.into()),
            max_instances,
            deadline_ms,
        },
    }
}

/// Every configured route, in the order they are matched (a host before
/// none, longer prefixes first).
#[utoipa::path(
    get,
    path = "/api/v1/gateway/routes",
    security(("bearer" = ["gateway:read"])),
    tag = "gateway",
    responses((status = 200, description = "In matching order", body = RouteList))
)]
pub(crate) async fn list_routes(State(gateway): State<Gateway>) -> AppJson<RouteList> {
    AppJson(RouteList {
        routes: gateway.routes().iter().cloned().map(route_wire).collect(),
    })
}

/// Create or replace a route: requests whose host and path prefix match go
/// to a service, proxied or aggregated. Takes effect on the next request.
#[utoipa::path(
    put,
    path = "/api/v1/gateway/routes/{name}",
    security(("bearer" = ["gateway:manage"])),
    tag = "gateway",
    params(("name" = String, Path, description = "Route name")),
    request_body = RouteConfig,
    responses(
        (status = 200, description = "Set", body = Route),
        (status = 422, description = "Invalid fields, each named", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn put_route(
    State(gateway): State<Gateway>,
    Path(name): Path<String>,
    AppJson(c): AppJson<RouteConfig>,
) -> Result<AppJson<Route>, ApiError> {
    let mut errs = FieldErrors::new();
    let kind = match c.kind.as_deref() {
        None | Some("proxy") => RouteKind::Proxy,
        Some("aggregate") => RouteKind::Aggregate {
            max_instances: c.max_instances,
            deadline: Duration::from_millis(c.deadline_ms.unwrap_or(5000)),
        },
        Some(other) => {
            errs.push("kind", format!("{other:?} is not proxy or aggregate"));
            RouteKind::Proxy
        }
    };
    if kind == RouteKind::Proxy && (c.max_instances.is_some() || c.deadline_ms.is_some()) {
        errs.push(
            "kind",
            "max_instances and deadline_ms are for aggregate routes",
        );
    }
    errs.finish().map_err(ApiError::validation)?;
    let spec = RouteSpec {
        name,
        host: c.host.map(|h| h.to_ascii_lowercase()),
        path_prefix: c.path_prefix,
        service: c.service,
        strip_prefix: c.strip_prefix,
        kind,
    };
    Ok(AppJson(route_wire(gateway.put_route(spec).await?)))
}

/// Remove a route.
#[utoipa::path(
    delete,
    path = "/api/v1/gateway/routes/{name}",
    security(("bearer" = ["gateway:manage"])),
    tag = "gateway",
    params(("name" = String, Path, description = "Route name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such route", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete_route(
    State(gateway): State<Gateway>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    gateway.delete_route(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Services, their instances (registry status, health, ejection, breaker,
/// requests in flight) and routes, as they stand.
#[utoipa::path(
    get,
    path = "/api/v1/gateway/topology",
    security(("bearer" = ["gateway:read"])),
    tag = "gateway",
    responses((status = 200, description = "The topology", body = Topology))
)]
pub(crate) async fn topology(State(gateway): State<Gateway>) -> AppJson<Topology> {
    let t = gateway.topology();
    AppJson(Topology {
        services: t
            .services
            .into_iter()
            .map(|s| ServiceState {
                service: service_wire(s.spec, s.configured),
                instances: s
                    .instances
                    .into_iter()
                    .map(|i| InstanceState {
                        agent_id: i.agent_id,
                        endpoint: i.endpoint,
                        version: i.version,
                        weight: i.weight,
                        status: i.status,
                        healthy: i.report.healthy,
                        last_health_error: i.report.last_health_error,
                        ejected_for_ms: i.report.ejected_for.map(ms),
                        ejections: i.report.ejections,
                        breaker: i.report.breaker.as_str().into(),
                        outstanding: i.report.outstanding,
                    })
                    .collect(),
            })
            .collect(),
        routes: t.routes.into_iter().map(route_wire).collect(),
    })
}
