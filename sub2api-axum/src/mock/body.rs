//! A response body that carries the request's [`InFlightGuard`].
//!
//! "In flight" must last until the client has the whole response, not until the handler returns:
//! a streamed reply is still running long after its head is sent. Wrapping every body lets the
//! mock see how it ended: the end of the data (completed), an error from the mock's own stream
//! (aborted on purpose), or a drop before the end (the client hung up).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::state::{InFlightGuard, Outcome};

pub(crate) struct TrackedBody {
    inner: Body,
    guard: Option<InFlightGuard>,
}

impl TrackedBody {
    pub fn new(inner: Body, guard: InFlightGuard) -> Self {
        TrackedBody {
            inner,
            guard: Some(guard),
        }
    }
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) if f.is_data() => {
                if let Some(guard) = &this.guard {
                    guard.chunk_sent();
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) => {
                if let Some(guard) = this.guard.take() {
                    guard.finish(Outcome::Aborted);
                }
            }
            None => {
                if let Some(guard) = this.guard.take() {
                    guard.finish(Outcome::Completed);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        if let Some(guard) = self.guard.take() {
            // A sized body is dropped by hyper right after its last frame, without a final poll:
            // if nothing is left, it completed. Otherwise the guard's drop records the hang-up.
            if self.inner.is_end_stream() {
                guard.finish(Outcome::Completed);
            }
        }
    }
}
