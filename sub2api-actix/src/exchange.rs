//! A response body's relay side, pumped by a task on the relay runtime.
//!
//! actix polls the relay's call on its own worker (see the crate docs), and reads a small body of
//! known size there too. A stream, or a large body, is read by a task on the relay runtime
//! instead, next to the upstream connection it comes from: hyper hands a body's chunks over one
//! at a time, only once the reader asked, so an SSE reply of twenty events read from the actix
//! worker would cost forty wake-ups across threads. The task hands actix batches of chunks through
//! a bounded channel, which actix drains in one write.
//!
//! The body sits in a slot both sides can reach. The task polls it; actix owns it ([`Owner`]):
//! when actix lets go (the client left, the server stopped), the owner drops the body at once,
//! inside the relay runtime, as if it had been polled on the actix worker. So the relay's drain
//! is spawned, and tracked for [`Relay::shutdown`], before actix's drop returns.
//!
//! [`Relay::shutdown`]: sub2api_core::relay::Relay::shutdown

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http_body::Body;
use sub2api_core::BoxError;
use sub2api_core::body::{Batched, RelayBody};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::runtime::Alive;

/// Response chunks in flight from the relay task to actix: a few SSE events of read-ahead, like a
/// socket buffer, before the task waits for actix to write.
const CHUNKS_IN_FLIGHT: usize = 16;

/// The body, batched: the events already on their way come out back to back, and go over as one
/// chunk.
type Held = Batched<RelayBody>;

type Slot = Arc<Mutex<Option<Held>>>;

fn lock(slot: &Slot) -> MutexGuard<'_, Option<Held>> {
    // A panic while polling the relay leaves the slot as it was; the value is still droppable.
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

/// actix's hold on a request's relay side. Dropping it drops what the relay still holds, inside
/// the relay runtime, before the drop returns.
pub(crate) struct Owner {
    slot: Slot,
    runtime: Handle,
    /// Dropped only after the relay value (see [`Alive`]).
    _alive: Option<Alive>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        let held = lock(&self.slot).take();
        if let Some(held) = held {
            let _enter = self.runtime.enter();
            drop(held);
        }
    }
}

/// The relay's answer as actix serves it.
pub(crate) struct Head {
    pub(crate) parts: http::response::Parts,
    /// The body's exact size, when the relay knows it.
    pub(crate) size: Option<u64>,
    pub(crate) body: Received,
}

/// The response body on actix's side: chunks already here, then the rest from the task.
pub(crate) struct Received {
    pub(crate) ready: VecDeque<Bytes>,
    /// The body failed after `ready`.
    pub(crate) failed: Option<BoxError>,
    /// The rest of the body; `None` when `ready` is all of it.
    pub(crate) rest: Option<mpsc::Receiver<Result<Bytes, BoxError>>>,
}

/// Starts pumping `body` from a task on `runtime`. The receiver gets its chunks; the owner must
/// be kept for as long as the response is.
pub(crate) fn start(
    body: RelayBody,
    runtime: &Handle,
    alive: Option<Alive>,
) -> (mpsc::Receiver<Result<Bytes, BoxError>>, Owner) {
    let slot: Slot = Arc::new(Mutex::new(Some(Batched::new(body))));
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    runtime.spawn(run(slot.clone(), tx, alive.clone()));
    let owner = Owner {
        slot,
        runtime: runtime.clone(),
        _alive: alive,
    };
    (rx, owner)
}

/// The task: the body's chunks, a burst at a time, until it ends or fails. Whenever actix lets go
/// (a closed channel), the task just ends: the owner has dropped, or will drop, the rest.
async fn run(slot: Slot, tx: mpsc::Sender<Result<Bytes, BoxError>>, _alive: Option<Alive>) {
    let mut after = None;
    loop {
        let next = match after.take() {
            Some(next) => next,
            None => tokio::select! {
                biased;
                next = next_chunk(&slot) => next,
                () = tx.closed() => return,
            },
        };
        match next {
            Next::Chunk(data) => {
                // The rest of a burst is ready at once: one chunk, one wake-up of actix's worker.
                let mut burst: Option<BytesMut> = None;
                loop {
                    match next_chunk(&slot).now_or_never() {
                        Some(Next::Chunk(more)) => burst
                            .get_or_insert_with(|| BytesMut::from(&data[..]))
                            .extend_from_slice(&more),
                        other => {
                            after = other;
                            break;
                        }
                    }
                }
                let data = burst.map_or(data, BytesMut::freeze);
                if tx.send(Ok(data)).await.is_err() {
                    return;
                }
            }
            Next::Failed(e) => {
                finish(&slot);
                let _ = tx.send(Err(e)).await;
                return;
            }
            Next::End => {
                finish(&slot);
                return;
            }
            Next::Gone => return,
        }
    }
}

enum Next {
    Chunk(Bytes),
    Failed(BoxError),
    End,
    /// actix let go and the owner dropped the body.
    Gone,
}

/// The body's next non-empty data chunk. Empty chunks would end a chunked HTTP/1.1 body early;
/// trailers have no place in an actix response.
async fn next_chunk(slot: &Slot) -> Next {
    poll_fn(|cx| {
        let mut held = lock(slot);
        let Some(body) = held.as_mut() else {
            return Poll::Ready(Next::Gone);
        };
        loop {
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => return Poll::Ready(Next::Chunk(data)),
                    _ => continue,
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Next::Failed(e)),
                Poll::Ready(None) => return Poll::Ready(Next::End),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

/// Drops the finished (or failed) body here, on the relay runtime, outside the lock.
fn finish(slot: &Slot) {
    let held = lock(slot).take();
    drop(held);
}
