//! # sub2api-axum
//!
//! The axum face of sub2api-rs: [`router`] mounts a [`Relay`]'s routes into an axum `Router`, and
//! the `sub2api` binary (this crate's `main.rs`) assembles the full relay from a config file.
//!
//! ```no_run
//! # async fn demo(relay: sub2api_core::relay::Relay) {
//! let app = sub2api_axum::router(&relay);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await.unwrap();
//! axum::serve(listener, app).await.unwrap();
//! # }
//! ```

pub mod api;
pub mod boot;
pub mod mock;

use std::convert::Infallible;

use axum::Router;
use axum::body::Body;
use http::Request;
use sub2api_core::body::Batched;
use sub2api_core::relay::Relay;

/// A router answering every relay route ([`Relay::ROUTES`]). Merge it into your own router, or
/// nest it under a prefix.
pub fn router(relay: &Relay) -> Router {
    let app = relay.app();
    let svc = tower::service_fn(move |req: Request<Body>| {
        let fut = app.call_with(api::with_client_addr(req));
        // Streams hand hyper the events already on their way together.
        async move { Ok::<_, Infallible>(fut.await.map(Batched::new)) }
    });
    let mut router = Router::new();
    for (_, path) in Relay::ROUTES {
        router = router.route_service(path, svc.clone());
    }
    router
}

/// A listener whose accepted sockets have `TCP_NODELAY` set. `axum::serve` leaves Nagle's
/// algorithm on, and then every small SSE event can sit ~40 ms waiting for the peer's delayed ACK:
/// a relay must never add that to a stream (the benchmark measured it).
pub type NoDelayListener =
    axum::serve::TapIo<tokio::net::TcpListener, fn(&mut tokio::net::TcpStream)>;

/// Wraps a bound listener so every accepted connection has `TCP_NODELAY`.
pub fn no_delay(listener: tokio::net::TcpListener) -> NoDelayListener {
    use axum::serve::ListenerExt;
    fn set(stream: &mut tokio::net::TcpStream) {
        let _ = stream.set_nodelay(true);
    }
    listener.tap_io(set as fn(&mut tokio::net::TcpStream))
}

/// Serves `router` on `listener` until `shutdown` resolves, then waits for open responses to
/// finish and for the relay's drains and settlements to commit.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    relay: Relay,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(no_delay(listener), router)
        .with_graceful_shutdown(shutdown)
        .await?;
    relay.shutdown().await;
    Ok(())
}
