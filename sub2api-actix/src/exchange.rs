//! One request's relay side, run as a task on the relay runtime.
//!
//! The relay's call, its response body, and the upstream connection the body reads from all live
//! on the relay runtime, while actix serves the client from its own worker threads. Polling the
//! relay from the actix worker (the obvious way) makes every step between the relay and its
//! upstream connection a wake-up across threads: hyper hands each body chunk over only once the
//! reader asked for it, so an SSE reply of twenty events cost forty cross-thread wake-ups, each a
//! syscall and a context switch on both sides. Here the relay is polled by a task on its own
//! runtime, next to its upstream connection, and only the answer crosses over: the response head
//! (with the whole body, when it is small and of known size) and then batches of chunks through a
//! bounded channel, which actix drains in one write.
//!
//! What the relay holds of the request (the call, then the body) sits in a slot both sides can
//! reach. The task polls it; actix owns it ([`Owner`]): when actix lets go (the client left, the
//! server stopped), the owner drops whatever is in the slot at once, inside the relay runtime, as
//! if the relay value had been polled on the actix worker. So the relay's drain or hold release is
//! spawned, and tracked for [`Relay::shutdown`], before actix's drop returns.
//!
//! [`Relay::shutdown`]: sub2api_core::relay::Relay::shutdown

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http_body::Body;
use sub2api_core::BoxError;
use sub2api_core::body::{Batched, RelayBody};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::runtime::Alive;

/// A body of known size up to this many bytes is read whole before the head is handed to actix:
/// one hand-over instead of three (head, chunk, end). A non-stream reply's last bytes wait for its
/// settlement anyway, so the client gets them no later.
const WHOLE_BODY_BYTES: u64 = 256 * 1024;

/// Response chunks in flight from the relay task to actix: a few SSE events of read-ahead, like a
/// socket buffer, before the task waits for actix to write.
const CHUNKS_IN_FLIGHT: usize = 16;

/// What the relay holds of one request, in order.
enum Held {
    Call(BoxFuture<'static, http::Response<RelayBody>>),
    /// Batched: the events already on their way come out back to back, and go over as one chunk.
    Body(Batched<RelayBody>),
}

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

/// The relay's answer as the task hands it to actix.
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

/// Starts `call` as a task on `runtime`. The receiver gets the head once the relay answered (or
/// fails if the task could not run); the owner must be kept for as long as the response is.
pub(crate) fn start(
    call: BoxFuture<'static, http::Response<RelayBody>>,
    runtime: &Handle,
    alive: Option<Alive>,
) -> (oneshot::Receiver<Head>, Owner) {
    let slot: Slot = Arc::new(Mutex::new(Some(Held::Call(call))));
    let (head_tx, head_rx) = oneshot::channel();
    runtime.spawn(run(slot.clone(), head_tx, alive.clone()));
    let owner = Owner {
        slot,
        runtime: runtime.clone(),
        _alive: alive,
    };
    (head_rx, owner)
}

/// The task: the call until the head, then the body, each polled in the slot. Whenever actix
/// lets go (a closed channel), the task just ends: the owner has dropped, or will drop, the rest.
async fn run(slot: Slot, mut head_tx: oneshot::Sender<Head>, _alive: Option<Alive>) {
    let call = poll_fn(|cx| {
        let mut held = lock(&slot);
        let Some(Held::Call(call)) = held.as_mut() else {
            return Poll::Ready(None);
        };
        let Poll::Ready(response) = call.as_mut().poll(cx) else {
            return Poll::Pending;
        };
        let (parts, body) = response.into_parts();
        let size = body.size_hint().exact();
        *held = Some(Held::Body(Batched::new(body)));
        Poll::Ready(Some((parts, size)))
    });
    let (parts, size) = tokio::select! {
        biased;
        answer = call => match answer {
            Some(answer) => answer,
            None => return,
        },
        () = head_tx.closed() => return,
    };

    let mut body = Received {
        ready: VecDeque::new(),
        failed: None,
        rest: None,
    };
    if size.is_some_and(|n| n <= WHOLE_BODY_BYTES) {
        let mut bytes = 0;
        loop {
            let next = tokio::select! {
                biased;
                next = next_chunk(&slot) => next,
                () = head_tx.closed() => return,
            };
            match next {
                Next::Chunk(data) => {
                    bytes += data.len() as u64;
                    body.ready.push_back(data);
                    // The relay's size was wrong: stream the rest instead of buffering it.
                    if bytes > WHOLE_BODY_BYTES {
                        break;
                    }
                }
                Next::Failed(e) => {
                    body.failed = Some(e);
                    finish(&slot);
                    let _ = head_tx.send(Head { parts, size, body });
                    return;
                }
                Next::End => {
                    finish(&slot);
                    let _ = head_tx.send(Head { parts, size, body });
                    return;
                }
                Next::Gone => return,
            }
        }
    }

    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    body.rest = Some(rx);
    if head_tx.send(Head { parts, size, body }).is_err() {
        return;
    }
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
        let Some(Held::Body(body)) = held.as_mut() else {
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
