//! The two bodies crossing the adapter: actix's request payload into the relay, the relay's
//! response body out to actix.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, MessageBody};
use actix_web::web;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body::{Body, Frame};
use sub2api_core::BoxError;
use sub2api_core::body::{Batched, ChannelBody, RelayBody};
use sub2api_core::runtime::Entered;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::call::{Whole, WholeEnd};
use crate::runtime::Alive;

/// Payload chunks in flight between actix and the relay.
const REQUEST_CHUNKS_IN_FLIGHT: usize = 8;

/// A `Send` body over actix's `!Send` payload, and the future that feeds it. The feed must be
/// polled on the actix worker (it owns the payload) while the relay reads the body; it ends when
/// the payload is done, fails, or the relay stops reading.
pub(crate) fn request_body(mut payload: web::Payload) -> (ChannelBody, impl Future<Output = ()>) {
    let (tx, rx) = mpsc::channel(REQUEST_CHUNKS_IN_FLIGHT);
    let feed = async move {
        loop {
            let next = tokio::select! {
                next = payload.next() => next,
                () = tx.closed() => return,
            };
            let Some(chunk) = next else { return };
            let failed = chunk.is_err();
            let chunk = chunk
                .map(Frame::data)
                .map_err(|e| BoxError::from(format!("request payload: {e}")));
            if tx.send(chunk).await.is_err() || failed {
                return;
            }
        }
    };
    (ChannelBody::new(rx), feed)
}

/// The relay's response body as an actix `MessageBody`: what was read before the head, then the
/// rest, polled on this worker inside the relay runtime (a stream's events arrive in bursts, see
/// [`Batched`], and each burst is one write). When actix drops the response (the client left),
/// the rest is dropped inside the relay runtime too, where its drain then runs.
pub(crate) struct ResponseBody {
    size: BodySize,
    ready: VecDeque<Bytes>,
    /// The body failed after `ready`.
    failed: Option<BoxError>,
    rest: Option<Entered<Batched<RelayBody>>>,
    /// Dropped only after `rest` (see [`Alive`]).
    _alive: Option<Alive>,
}

impl ResponseBody {
    /// `size`: the body's exact size, when the relay knows it.
    pub(crate) fn new(
        size: Option<u64>,
        whole: Whole,
        runtime: &Handle,
        alive: Option<Alive>,
    ) -> Self {
        let size = size.map_or(BodySize::Stream, BodySize::Sized);
        let (failed, rest) = match whole.end {
            WholeEnd::Done => (None, None),
            WholeEnd::Failed(e) => (Some(e), None),
            WholeEnd::More(rest) => (
                None,
                Some(Entered::new(runtime.clone(), Batched::new(rest))),
            ),
        };
        ResponseBody {
            size,
            ready: whole.ready,
            failed,
            rest,
            _alive: alive,
        }
    }
}

/// A relay body error, as actix wants it (`Into<Box<dyn Error>>`).
#[derive(Debug)]
pub(crate) struct ResponseBodyError(BoxError);

impl std::fmt::Display for ResponseBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "relay response body: {}", self.0)
    }
}

impl std::error::Error for ResponseBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl MessageBody for ResponseBody {
    type Error = ResponseBodyError;

    fn size(&self) -> BodySize {
        self.size
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, ResponseBodyError>>> {
        let this = self.get_mut();
        if let Some(data) = this.ready.pop_front() {
            return Poll::Ready(Some(Ok(data)));
        }
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Some(Err(ResponseBodyError(e))));
        }
        let Some(rest) = this.rest.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            return match Pin::new(&mut *rest).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => Poll::Ready(Some(Ok(data))),
                    // Empty chunks would end a chunked HTTP/1.1 body early; trailers have no
                    // place in an actix response.
                    _ => continue,
                },
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(ResponseBodyError(e)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }

    fn try_into_bytes(mut self) -> Result<Bytes, Self>
    where
        Self: Sized,
    {
        // A whole body in one chunk (or none): actix writes it with the head, without polling.
        if self.ready.len() <= 1 && self.failed.is_none() && self.rest.is_none() {
            return Ok(self.ready.pop_front().unwrap_or_default());
        }
        Err(self)
    }
}
