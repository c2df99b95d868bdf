//! The admin and user HTTP API ([`sub2api_core::api::Api`]) on actix-web: every path of the route
//! table goes to the core service, which does matching, authentication, validation and JSON.
//!
//! ```no_run
//! use actix_web::{App, HttpServer};
//! # async fn demo(relay: sub2api_core::relay::Relay, api: sub2api_core::api::Api) -> std::io::Result<()> {
//! let mount = sub2api_actix::Mount::new(&relay);
//! HttpServer::new(move || App::new().configure(mount.clone().configure()).configure(sub2api_actix::api::configure(api.clone())))
//!     .bind("127.0.0.1:8080")?
//!     .run()
//!     .await
//! # }
//! ```

use std::future::poll_fn;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use bytes::BytesMut;
use futures_util::StreamExt;
use http_body::Body;
use sub2api_core::api::Api;
use sub2api_core::body::full;
use sub2api_core::layer::auth::ClientAddr;
use sub2api_core::relay::Relay;
use tokio::runtime::Handle;

/// Bodies larger than this are refused before the API sees them (the API has smaller limits per
/// route; the largest is a whole price table).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Registers every path of the API's route table (and a JSON 404 for other `/api/v1/` paths).
/// The API's work runs on the adapter's shared relay runtime.
pub fn configure(api: Api) -> impl FnOnce(&mut web::ServiceConfig) + Clone {
    configure_on(api, crate::runtime::shared())
}

/// [`configure`] with the API's work on `runtime` (one that outlives the server).
pub fn configure_on(api: Api, runtime: Handle) -> impl FnOnce(&mut web::ServiceConfig) + Clone {
    move |cfg: &mut web::ServiceConfig| {
        let mut paths: Vec<String> = api.paths().into_iter().map(str::to_owned).collect();
        paths.push("/api/v1/{tail:.*}".into());
        for path in paths {
            let api = api.clone();
            let runtime = runtime.clone();
            cfg.service(
                web::resource(path).to(move |req: HttpRequest, payload: web::Payload| {
                    let api = api.clone();
                    let runtime = runtime.clone();
                    async move { serve(api, runtime, req, payload).await }
                }),
            );
        }
    }
}

async fn serve(
    api: Api,
    runtime: Handle,
    req: HttpRequest,
    mut payload: web::Payload,
) -> HttpResponse {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        match chunk {
            Ok(c) if body.len() + c.len() <= MAX_BODY => body.extend_from_slice(&c),
            Ok(_) => return HttpResponse::PayloadTooLarge().finish(),
            Err(_) => return HttpResponse::BadRequest().finish(),
        }
    }
    let uri = match req.query_string() {
        "" => req.path().to_owned(),
        q => format!("{}?{q}", req.path()),
    };
    let mut builder = http::Request::builder()
        .method(
            http::Method::from_bytes(req.method().as_str().as_bytes()).unwrap_or(http::Method::GET),
        )
        .uri(uri);
    if let Some(h) = builder.headers_mut() {
        for (name, value) in req.headers().iter() {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.as_str().as_bytes()),
                http::HeaderValue::from_bytes(value.as_bytes()),
            ) {
                h.append(n, v);
            }
        }
    }
    let Ok(mut request) = builder.body(full(body.freeze())) else {
        return HttpResponse::BadRequest().finish();
    };
    if let Some(addr) = req.peer_addr() {
        request.extensions_mut().insert(ClientAddr(addr));
    }
    // The API's store and ledger live on the relay runtime; answers are small JSON, read whole.
    let answer = runtime.spawn(async move {
        let res = api.call_with(request).await;
        let (parts, mut body) = res.into_parts();
        let mut bytes = BytesMut::new();
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            match frame {
                Ok(f) => {
                    if let Ok(d) = f.into_data() {
                        bytes.extend_from_slice(&d);
                    }
                }
                Err(_) => break,
            }
        }
        (parts, bytes.freeze())
    });
    let Ok((parts, bytes)) = answer.await else {
        return HttpResponse::InternalServerError().finish();
    };
    let mut out = HttpResponse::build(
        StatusCode::from_u16(parts.status.as_u16()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
    );
    for (name, value) in parts.headers.iter() {
        if matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            out.append_header((n, v));
        }
    }
    out.body(bytes)
}

/// A running actix server with the relay routes and the API, from [`spawn`].
pub struct ApiServer {
    addr: SocketAddr,
    handle: ServerHandle,
    relay: Relay,
    done: Option<tokio::sync::oneshot::Receiver<io::Result<()>>>,
}

/// Serves the relay routes and the API on `listener` (2 workers) on a thread of its own; the
/// relay's and the API's work runs on the tokio runtime this is called from.
pub fn spawn(relay: Relay, api: Api, listener: TcpListener) -> io::Result<ApiServer> {
    let addr = listener.local_addr()?;
    let runtime = Handle::try_current().unwrap_or_else(|_| crate::runtime::shared());
    let mount = crate::Mount::on_runtime(&relay, runtime.clone());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<ServerHandle>>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("sub2api-actix-api".into())
        .spawn(move || {
            let system = actix_web::rt::System::new();
            let result = system.block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .configure(mount.clone().configure())
                        .configure(configure_on(api.clone(), runtime.clone()))
                })
                .workers(2)
                .disable_signals()
                // Small SSE events must not wait for the peer's delayed ACK (Nagle).
                .tcp_nodelay(true)
                .listen(listener);
                let server = match server {
                    Ok(s) => s.run(),
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok(());
                    }
                };
                let _ = ready_tx.send(Ok(server.handle()));
                server.await
            });
            let _ = done_tx.send(result);
        })?;
    let handle = ready_rx
        .recv()
        .map_err(|_| io::Error::other("the actix server thread exited before serving"))??;
    Ok(ApiServer {
        addr,
        handle,
        relay,
        done: Some(done_rx),
    })
}

impl ApiServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server (gracefully or not), then waits for the relay's settlements.
    pub async fn stop(mut self, graceful: bool) {
        self.handle.stop(graceful).await;
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
        self.relay.shutdown().await;
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if self.done.is_some() {
            drop(self.handle.stop(false));
        }
    }
}
