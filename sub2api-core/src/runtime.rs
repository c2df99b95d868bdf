//! Which tokio runtime the relay's work lands on, for servers that poll it on threads of their
//! own.
//!
//! A tokio server (axum) polls the relay on the runtime the relay was built on, and everything
//! the relay starts (upstream connections, drains, settlements) lands there too. actix-web polls
//! each request on its worker's own single-threaded runtime, which the server tears down when it
//! stops. Work that must outlive a response has to land on a runtime that lives on (the relay's
//! *home*), while an upstream connection read by that very worker is cheapest on the worker's own
//! runtime: no wake-up crosses threads between the connection and its reader.
//!
//! - [`Entered`] polls (and drops) a future inside a runtime's context, so what it spawns and the
//!   sockets and timers it creates belong to that runtime, whichever thread polls it. An adapter
//!   polls the relay's call inside its home runtime this way.
//! - [`LocalRuntime`], put in a request's extensions, says that the request is polled on this
//!   single-threaded runtime's own thread and nowhere else; the upstream layer then sends a
//!   non-stream request on a client whose connections live there (see
//!   [`ClientPool`](crate::layer::upstream::ClientPool)).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tokio::runtime::{Handle, RuntimeFlavor};

/// A future (or a body) polled, and dropped, inside `runtime`'s context.
///
/// Dropping it inside the context matters as much as polling it: the relay's bodies and calls
/// start their drains and hold releases from `Drop`.
pub struct Entered<F> {
    runtime: Handle,
    inner: Option<F>,
}

impl<F> Entered<F> {
    pub fn new(runtime: Handle, inner: F) -> Self {
        Entered {
            runtime,
            inner: Some(inner),
        }
    }
}

impl<F: Future + Unpin> Future for Entered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            panic!("Entered polled after it completed");
        };
        let polled = {
            let _enter = this.runtime.enter();
            Pin::new(inner).poll(cx)
        };
        if polled.is_ready() {
            // Dropped here, still inside the context.
            let _enter = this.runtime.enter();
            this.inner = None;
        }
        polled
    }
}

/// A body polled, and dropped, inside the runtime's context: a response body the relay's metering
/// reads, whose drop starts a drain.
impl<B: Body + Unpin> Body for Entered<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let _enter = this.runtime.enter();
        Pin::new(inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl<F> Drop for Entered<F> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let _enter = self.runtime.enter();
            drop(inner);
        }
    }
}

/// The single-threaded runtime a request is polled on, from start to end, by its server.
///
/// Only a server that never moves the request's future to another thread may set it (an actix
/// worker does not); a request without it is sent on the relay's shared clients.
#[derive(Clone, Debug)]
pub struct LocalRuntime(Handle);

impl LocalRuntime {
    /// The current runtime, when it is a single-threaded one (an actix worker's).
    pub fn current() -> Option<Self> {
        Handle::try_current()
            .ok()
            .filter(|h| h.runtime_flavor() == RuntimeFlavor::CurrentThread)
            .map(LocalRuntime)
    }

    pub fn handle(&self) -> &Handle {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    /// The flavor of the runtime a spawned task lands on tells the two runtimes apart.
    fn flavor() -> RuntimeFlavor {
        Handle::current().runtime_flavor()
    }

    #[test]
    fn entered_spawns_and_drops_inside_its_runtime() {
        let home = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert!(local.block_on(async { LocalRuntime::current() }).is_some());
        assert!(home.block_on(async { LocalRuntime::current() }).is_none());

        // What the future spawns while polled lands on `home`, though `local` polls it.
        let spawned = local.block_on(Entered::new(
            home.handle().clone(),
            Box::pin(std::future::ready(()).map(|()| tokio::spawn(async { flavor() }))),
        ));
        assert_eq!(home.block_on(spawned).unwrap(), RuntimeFlavor::MultiThread);

        // A future dropped unfinished is dropped inside `home` too: its drop guard spawns there.
        struct SpawnOnDrop(Option<tokio::sync::oneshot::Sender<RuntimeFlavor>>);
        impl Drop for SpawnOnDrop {
            fn drop(&mut self) {
                let tx = self.0.take().unwrap();
                tokio::spawn(async move {
                    let _ = tx.send(flavor());
                });
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let guard = SpawnOnDrop(Some(tx));
        let mut pending = Entered::new(
            home.handle().clone(),
            Box::pin(async move {
                let _guard = guard;
                std::future::pending::<()>().await;
            }),
        );
        local.block_on(async {
            assert!(futures_util::poll!(&mut pending).is_pending());
        });
        // Dropped outside any runtime: `home` still gets the drop's spawn.
        drop(pending);
        assert_eq!(home.block_on(rx).unwrap(), RuntimeFlavor::MultiThread);
    }
}
