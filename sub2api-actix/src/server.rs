//! A ready-made actix `HttpServer` for a [`Relay`] on its own thread and actix `System`.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer};
use sub2api_core::relay::Relay;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::Mount;

/// How [`spawn_with`] runs the server.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// actix worker threads.
    pub workers: usize,
    /// On a graceful stop, how long open responses may take to finish before they are cut.
    pub shutdown_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            workers: 2,
            shutdown_timeout: Duration::from_secs(120),
        }
    }
}

/// A running server from [`spawn`]. Dropping it without [`stop`](Self::stop) stops the server
/// abruptly (without waiting for the relay's settlements).
pub struct ActixServer {
    addr: SocketAddr,
    handle: ServerHandle,
    relay: Relay,
    done: Option<oneshot::Receiver<io::Result<()>>>,
    /// Closes when no worker holds anything of the relay any more.
    workers_gone: mpsc::Receiver<std::convert::Infallible>,
}

/// Serves every relay route on `listener` with 2 workers ([`ServeOptions::default`]).
///
/// The server runs on a thread of its own with its own actix `System`; the relay's work (its
/// calls, response bodies, drains and settlements) runs on the tokio runtime this is called from
/// (or the adapter's shared relay runtime when called outside one). actix's own signal handling
/// is off: the caller decides when to stop.
pub fn spawn(relay: Relay, listener: TcpListener) -> io::Result<ActixServer> {
    spawn_with(relay, listener, ServeOptions::default())
}

/// [`spawn`] with options.
pub fn spawn_with(
    relay: Relay,
    listener: TcpListener,
    options: ServeOptions,
) -> io::Result<ActixServer> {
    let addr = listener.local_addr()?;
    let mut mount = match Handle::try_current() {
        Ok(runtime) => Mount::on_runtime(&relay, runtime),
        Err(_) => Mount::new(&relay),
    };
    let (alive, workers_gone) = mpsc::channel(1);
    mount.alive = Some(alive);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<ServerHandle>>();
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("sub2api-actix".into())
        .spawn(move || {
            let system = actix_web::rt::System::new();
            let result = system.block_on(async move {
                let server =
                    HttpServer::new(move || App::new().configure(mount.clone().configure()))
                        .workers(options.workers.max(1))
                        .shutdown_timeout(options.shutdown_timeout.as_secs())
                        .disable_signals()
                        // Small SSE events must not wait for the peer's delayed ACK (Nagle).
                        .tcp_nodelay(true)
                        .listen(listener);
                let server = match server {
                    Ok(server) => server.run(),
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok(());
                    }
                };
                let _ = ready_tx.send(Ok(server.handle()));
                server.await
            });
            if let Err(e) = &result {
                tracing::error!(error = %e, "actix server stopped with an error");
            }
            let _ = done_tx.send(result);
        })?;
    let handle = ready_rx
        .recv()
        .map_err(|_| io::Error::other("the actix server thread exited before serving"))??;
    Ok(ActixServer {
        addr,
        handle,
        relay,
        done: Some(done_rx),
        workers_gone,
    })
}

impl ActixServer {
    /// The bound address (the real port when bound to port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The actix server handle (pause, resume, stop).
    pub fn handle(&self) -> &ServerHandle {
        &self.handle
    }

    /// Stops accepting and stops the server: `graceful` waits (up to the shutdown timeout) for open
    /// responses to finish, otherwise they are cut, which the relay treats as clients leaving.
    /// Then waits for the relay's drains and settlements ([`Relay::shutdown`]), so every charge is
    /// committed when this returns.
    pub async fn stop(mut self, graceful: bool) {
        self.handle.stop(graceful).await;
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
        // actix may report a forced stop before the worker threads have dropped their cut
        // connections; the relay work those hand off must be tracked before shutdown waits.
        while self.workers_gone.recv().await.is_some() {}
        self.relay.shutdown().await;
    }
}

impl Drop for ActixServer {
    fn drop(&mut self) {
        if self.done.is_some() {
            // The stop command is sent at once; nothing needs to wait for it here.
            drop(self.handle.stop(false));
        }
    }
}

impl std::fmt::Debug for ActixServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActixServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}
