//! Keeping the relay's work on a runtime that outlives actix's workers.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use tokio::runtime::{EnterGuard, Handle, Runtime};
use tokio::sync::mpsc;

/// Threads of the shared relay runtime: upstream I/O and settlements are light next to the
/// HTTP work actix's workers do.
const SHARED_THREADS: usize = 2;

/// The adapter's shared relay runtime, started on first use and never stopped (it is a static),
/// so work spawned on it survives any server stop until the process exits.
pub(crate) fn shared() -> Handle {
    static SHARED: OnceLock<Runtime> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(SHARED_THREADS)
                .thread_name("sub2api-relay")
                .enable_all()
                .build()
                .expect("start the sub2api relay runtime")
        })
        .handle()
        .clone()
}

/// A value of the relay (its call future, its response body) that is polled and dropped inside
/// `runtime`: whatever it spawns (a drain, a settlement, a hold release) and whatever I/O it opens
/// (upstream connections, timers) belongs to that runtime, not to the actix worker's.
pub(crate) struct InRuntime<T> {
    inner: Option<T>,
    runtime: Handle,
    /// Dropped only after `inner` (see [`Alive`]).
    _alive: Option<Alive>,
}

/// Held by everything of a relay mount that an actix worker owns (its handlers, call futures and
/// response bodies). When the last one is gone, the worker has handed all of its relay work
/// (drains, settlements) to the relay runtime, so [`Relay::shutdown`] can wait for it.
///
/// [`Relay::shutdown`]: sub2api_core::relay::Relay::shutdown
pub(crate) type Alive = mpsc::Sender<std::convert::Infallible>;

impl<T> InRuntime<T> {
    pub(crate) fn new(inner: T, runtime: Handle, alive: Option<Alive>) -> Self {
        InRuntime {
            inner: Some(inner),
            runtime,
            _alive: alive,
        }
    }

    /// The value, with the runtime entered for as long as the guard lives.
    pub(crate) fn entered(&mut self) -> (EnterGuard<'_>, Option<&mut T>) {
        (self.runtime.enter(), self.inner.as_mut())
    }

    pub(crate) fn get(&self) -> Option<&T> {
        self.inner.as_ref()
    }
}

impl<F: Future + Unpin> Future for InRuntime<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let (_enter, inner) = self.get_mut().entered();
        Pin::new(inner.expect("InRuntime polled after drop")).poll(cx)
    }
}

impl<T> Drop for InRuntime<T> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let _enter = self.runtime.enter();
            drop(inner);
        }
    }
}
