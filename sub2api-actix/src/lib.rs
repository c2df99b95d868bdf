//! # sub2api-actix
//!
//! The actix-web face of sub2api-rs. It mounts the very same core service as the axum adapter
//! ([`Relay::app`]) into an actix-web `App`, so every byte of business logic (auth, holds,
//! metering, settlement, failover) lives once, in `sub2api-core`. This crate is glue:
//!
//! - [`configure`] registers every route of [`Relay::ROUTES`] on a `ServiceConfig`;
//! - [`scope`] mounts them under a prefix (`/ai/v1/messages` reaches the relay as `/v1/messages`);
//! - [`spawn`] runs a ready-made `HttpServer` on its own thread (tests and the `sub2api-actix`
//!   binary use it);
//! - [`Mount`] is what both functions build, for choosing the runtime the relay's work runs on.
//!
//! ```no_run
//! use actix_web::{App, HttpResponse, HttpServer, web};
//!
//! # async fn demo(relay: sub2api_core::relay::Relay) -> std::io::Result<()> {
//! // Build the mount once, outside the factory, and clone it into every worker.
//! let mount = sub2api_actix::Mount::new(&relay);
//! HttpServer::new(move || {
//!     App::new()
//!         .route("/hello", web::get().to(|| async { HttpResponse::Ok().body("hi") }))
//!         .service(mount.clone().scope("/ai"))
//! })
//! .bind("127.0.0.1:8080")?
//! .run()
//! .await?;
//! // Open responses are finished; wait for the drains and settlements they left behind.
//! relay.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! ## How a request crosses over
//!
//! actix's request payload is `!Send`, the relay wants a `Send` body: the payload is forwarded
//! through a bounded channel, fed by the handler itself while the relay reads it (nothing is
//! buffered beyond a few chunks; the relay enforces its own body limit). The relay's call is
//! polled right there, in the handler, on the worker that serves the connection. A small reply
//! of known size is read whole before actix gets the head, so actix writes it with the head;
//! anything else is polled by actix's response body as it writes (SSE is flushed per event;
//! events that arrived together go out in one write). When the client disconnects actix drops
//! the body, which drops the relay's metered body at once: that is how it learns the client left,
//! drains upstream and settles.
//!
//! ## Where the relay's work runs
//!
//! actix runs each worker on its own single-threaded runtime, which is torn down when the server
//! stops. The relay spawns work that must outlive a response (draining upstream after a client
//! hung up, committing a settlement, releasing a hold), so a [`Mount`] polls the relay's call and
//! body, and drops them, inside a runtime that outlives the workers (its *home*): the runtime
//! [`spawn`] is called from, the adapter's shared relay runtime ([`Mount::new`]), or one you pass
//! ([`Mount::on_runtime`]). What the relay spawns, and the store connections it opens, land
//! there; the polling stays on the worker.
//!
//! Upstream, a non-stream request goes out on a connection of the worker's own
//! ([`LocalRuntime`]): the worker reads it, so no wake-up crosses threads between the vendor's
//! answer and the client's (with [`Relay::new`], which builds one upstream client per thread). A
//! stream goes out on the relay's shared connections and is read on the home runtime, whence its
//! events come over in bursts: when its client hangs up, the relay keeps reading it for the final
//! usage, and that may outlast a stopping worker. After the server stopped, [`Relay::shutdown`]
//! waits for the relay's remaining work.
//!
//! [`LocalRuntime`]: sub2api_core::runtime::LocalRuntime

pub mod api;
mod body;
mod call;
mod runtime;
mod server;

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, Scope, web};
use http_body::Body;
use sub2api_core::relay::{Relay, RelayApp};
use sub2api_core::runtime::LocalRuntime;
use tokio::runtime::Handle;

pub use server::{ActixServer, ServeOptions, spawn, spawn_with};

use crate::body::{ResponseBody, request_body};
use crate::call::InPlace;

/// Every relay route, ready to be registered on an actix `App`, a `Scope` or a `ServiceConfig`.
///
/// Cheap to clone: clone one mount into each worker's `App`.
#[derive(Clone)]
pub struct Mount {
    app: RelayApp,
    runtime: Handle,
    alive: Option<runtime::Alive>,
}

impl Mount {
    /// Relay work runs on the adapter's shared relay runtime (a multi-threaded tokio runtime,
    /// one worker per core, started on first use and kept for the life of the process).
    pub fn new(relay: &Relay) -> Self {
        Self::on_runtime(relay, runtime::shared())
    }

    /// Relay work runs on `runtime`, which must outlive the server and be driven while it serves
    /// (e.g. the `#[tokio::main]` or `#[actix_web::main]` runtime the server is started from).
    pub fn on_runtime(relay: &Relay, runtime: Handle) -> Self {
        Mount {
            app: relay.app(),
            runtime,
            alive: None,
        }
    }

    /// Registers every path of [`Relay::ROUTES`]. All methods of a path go to the relay, which
    /// answers a wrong method with an error in the caller's dialect (as the axum adapter does).
    pub fn configure(self) -> impl FnOnce(&mut web::ServiceConfig) + Clone {
        move |cfg: &mut web::ServiceConfig| {
            let mut seen: Vec<&'static str> = Vec::new();
            for &(_, path) in Relay::ROUTES {
                if seen.contains(&path) {
                    continue;
                }
                seen.push(path);
                // Shared by the route's requests, not cloned for each: a `Mount` clone clones the
                // relay's whole service stack.
                let mount = Arc::new(self.clone());
                cfg.service(web::resource(path).to(
                    move |req: HttpRequest, payload: web::Payload| {
                        let mount = mount.clone();
                        async move { mount.serve(req, payload, path).await }
                    },
                ));
            }
        }
    }

    /// The relay under `path` (e.g. `/ai`): `/ai/v1/messages` reaches the relay as `/v1/messages`.
    pub fn scope(self, path: &str) -> Scope {
        web::scope(path).configure(self.configure())
    }

    /// Hands one request to the relay and its response back to actix. `pattern` is the route
    /// pattern the request matched; the relay sees the request path from there on.
    async fn serve(&self, req: HttpRequest, payload: web::Payload, pattern: &str) -> HttpResponse {
        let path = relay_path(req.path(), pattern);
        let uri = match req.query_string() {
            "" => path.to_owned(),
            query => format!("{path}?{query}"),
        };
        let (body, feed) = request_body(payload);
        let mut feed = pin!(feed);
        // A small payload has usually arrived with the head: hand it over before the relay's
        // first poll, so the relay finds it instead of waiting to be woken for it.
        let fed = poll_fn(|cx| Poll::Ready(feed.as_mut().poll(cx).is_ready())).await;
        let mut request = match http_request(&req, &uri, body) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "request not representable as an http::Request");
                return HttpResponse::BadRequest().finish();
            }
        };
        // Key IP allowlists read the client's address.
        if let Some(addr) = req.peer_addr() {
            request
                .extensions_mut()
                .insert(sub2api_core::layer::auth::ClientAddr(addr));
        }
        // This worker polls the request from start to end: its upstream connection may live here.
        if let Some(local) = LocalRuntime::current() {
            request.extensions_mut().insert(local);
        }
        let call = InPlace::new(
            self.app.call_with(request),
            &self.runtime,
            self.alive.clone(),
        );
        let response = if fed {
            call.await
        } else {
            drive(call, feed).await
        };
        let (parts, body) = response.into_parts();
        let size = body.size_hint().exact();
        let whole = if size.is_some_and(|n| n <= call::WHOLE_BODY_BYTES) {
            InPlace::new(
                Box::pin(call::read_whole(body)),
                &self.runtime,
                self.alive.clone(),
            )
            .await
        } else {
            call::unread(body)
        };
        actix_response(
            parts,
            ResponseBody::new(size, whole, &self.runtime, self.alive.clone()),
        )
    }
}

/// Registers every relay route on a `ServiceConfig`: `App::new().configure(configure(relay))`.
///
/// Relay work runs on the adapter's shared relay runtime ([`Mount::new`]).
pub fn configure(relay: Relay) -> impl FnOnce(&mut web::ServiceConfig) + Clone {
    Mount::new(&relay).configure()
}

/// Every relay route under the prefix `path`: `App::new().service(scope("/ai", relay))`.
///
/// Relay work runs on the adapter's shared relay runtime ([`Mount::new`]).
pub fn scope(path: &str, relay: Relay) -> Scope {
    Mount::new(&relay).scope(path)
}

/// Waits for the relay's answer while feeding it the request payload. The feed stops with the
/// answer: a relay that answered without reading the body (a refusal, a `GET`) is not kept waiting
/// for a slow client.
async fn drive<F: Future + Unpin>(mut answer: F, feed: impl Future<Output = ()>) -> F::Output {
    tokio::select! {
        biased;
        out = &mut answer => out,
        () = feed => answer.await,
    }
}

/// The part of `full` the relay routes on: as many trailing path segments as the matched route
/// pattern has, so a mount prefix (a `Scope`, nested scopes) is cut off.
fn relay_path<'a>(full: &'a str, pattern: &str) -> &'a str {
    let mut start = full.len();
    for _ in 0..pattern.matches('/').count() {
        match full[..start].rfind('/') {
            Some(i) => start = i,
            None => return full,
        }
    }
    &full[start..]
}

fn http_request<B>(req: &HttpRequest, uri: &str, body: B) -> Result<http::Request<B>, http::Error> {
    let method = http::Method::from_bytes(req.method().as_str().as_bytes())?;
    let version = match req.version() {
        actix_web::http::Version::HTTP_09 => http::Version::HTTP_09,
        actix_web::http::Version::HTTP_10 => http::Version::HTTP_10,
        actix_web::http::Version::HTTP_2 => http::Version::HTTP_2,
        actix_web::http::Version::HTTP_3 => http::Version::HTTP_3,
        _ => http::Version::HTTP_11,
    };
    let mut builder = http::Request::builder()
        .method(method)
        .uri(uri)
        .version(version);
    if let Some(headers) = builder.headers_mut() {
        for (name, value) in req.headers().iter() {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_str().as_bytes()),
                http::HeaderValue::from_bytes(value.as_bytes()),
            ) {
                headers.append(name, value);
            }
        }
    }
    builder.body(body)
}

/// Headers that describe one hop's framing; actix writes its own from the body's size.
fn hop_by_hop(name: &http::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "transfer-encoding" | "content-length" | "upgrade"
    )
}

fn actix_response(parts: http::response::Parts, body: ResponseBody) -> HttpResponse {
    let status =
        StatusCode::from_u16(parts.status.as_u16()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut builder = HttpResponse::build(status);
    for (name, value) in parts.headers.iter() {
        if hop_by_hop(name) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            builder.append_header((name, value));
        }
    }
    builder.body(body)
}

#[cfg(test)]
mod tests {
    use super::relay_path;

    #[test]
    fn relay_path_cuts_the_mount_prefix() {
        assert_eq!(relay_path("/v1/messages", "/v1/messages"), "/v1/messages");
        assert_eq!(
            relay_path("/ai/v1/messages", "/v1/messages"),
            "/v1/messages"
        );
        assert_eq!(relay_path("/a/b/healthz", "/healthz"), "/healthz");
        assert_eq!(
            relay_path(
                "/ai/v1beta/models/m1:generateContent",
                "/v1beta/models/{model}:generateContent"
            ),
            "/v1beta/models/m1:generateContent"
        );
        assert_eq!(relay_path("x", "/healthz"), "x");
    }
}
