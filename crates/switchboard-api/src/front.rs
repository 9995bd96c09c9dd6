//! The hub's HTTP entry: [`Front`] makes one [`Connection`] service per
//! accepted connection. A request under `/gw/` goes straight to the
//! gateway's fast path; everything else to the router, inside the
//! middleware stack (`crate::middleware`). Proxied requests
//! thus skip the router's per-request work (matching, cloning each
//! route's layered service, the middleware the API's own routes need),
//! which costs more than the proxying itself.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use axum::routing::future::RouteFuture;
use axum::serve::{IncomingStream, Listener};
use futures_util::future::Either;
use switchboard_gateway::Gateway;
use tower::Service;

use crate::access::{Access, ClientAddr};
use crate::middleware::{Around, Stack};
use crate::routes::gateway;

/// Makes the service of each connection.
#[derive(Clone)]
pub struct Front(Arc<Inner>);

struct Inner {
    router: Router,
    /// What runs around the router: `None` serves the router alone.
    stack: Option<Stack>,
    /// The gateway's fast path: `None` serves `/gw/` from the router too.
    fast: Option<Arc<(Access, Gateway)>>,
}

impl Front {
    pub(crate) fn new(router: Router, stack: Stack, access: Access, gateway: Gateway) -> Self {
        Self(Arc::new(Inner {
            router,
            stack: Some(stack),
            fast: Some(Arc::new((access, gateway))),
        }))
    }

    /// Serves `router` alone, with the connection handling of the hub
    /// (`ConnectInfo<ClientAddr>` on every request).
    pub fn from_router(router: Router) -> Self {
        Self(Arc::new(Inner {
            router,
            stack: None,
            fast: None,
        }))
    }

    /// The service of a connection from `peer`.
    pub fn connection(&self, peer: ClientAddr) -> Connection {
        Connection {
            front: self.0.clone(),
            peer: ConnectInfo(peer),
        }
    }
}

impl<L> Service<IncomingStream<'_, L>> for Front
where
    L: Listener<Addr = ClientAddr>,
{
    type Response = Connection;
    type Error = Infallible;
    type Future = Ready<Result<Connection, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, stream: IncomingStream<'_, L>) -> Self::Future {
        ready(Ok(self.connection(stream.remote_addr().clone())))
    }
}

/// One connection's service: its requests carry `ConnectInfo<ClientAddr>`.
#[derive(Clone)]
pub struct Connection {
    front: Arc<Inner>,
    peer: ConnectInfo<ClientAddr>,
}

type Proxied = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl Service<Request> for Connection {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Proxied, RouteFuture<Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        req.extensions_mut().insert(self.peer.clone());
        match &self.front.fast {
            Some(fast) if req.uri().path().starts_with("/gw/") => {
                let fast = fast.clone();
                Either::Left(Box::pin(async move {
                    Ok(gateway::proxy_admitted(&fast.0, &fast.1, req).await)
                }))
            }
            _ => match &self.front.stack {
                Some(stack) => {
                    let answer = stack.around(self.front.router.clone(), req);
                    Either::Left(Box::pin(async move { Ok(answer.await) }))
                }
                None => Either::Right(self.front.router.clone().call(req)),
            },
        }
    }
}
