//! The two bodies crossing the adapter: actix's request payload into the relay, the relay's
//! response body out to actix.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, MessageBody};
use actix_web::web;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body::{Body, Frame};
use sub2api_core::BoxError;
use tokio::sync::mpsc;

use crate::exchange::{Owner, Received};

/// Payload chunks in flight between actix and the relay.
const REQUEST_CHUNKS_IN_FLIGHT: usize = 8;

/// The request body the relay reads: the payload's chunks, as actix receives them.
pub(crate) struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, BoxError>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|r| r.map(Frame::data)))
    }
}

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
            let chunk = chunk.map_err(|e| BoxError::from(format!("request payload: {e}")));
            if tx.send(chunk).await.is_err() || failed {
                return;
            }
        }
    };
    (ChannelBody { rx }, feed)
}

/// The relay's response body as an actix `MessageBody`: the chunks the relay task hands over,
/// written as they arrive (a batch that arrived together goes out in one write). It holds the
/// request's [`Owner`]: when actix drops the response (the client left), what the relay still
/// holds is dropped with it, inside the relay's runtime.
pub(crate) struct ResponseBody {
    size: BodySize,
    body: Received,
    _owner: Option<Owner>,
}

impl ResponseBody {
    pub(crate) fn new(size: Option<u64>, body: Received, owner: Option<Owner>) -> Self {
        let size = size.map_or(BodySize::Stream, BodySize::Sized);
        ResponseBody {
            size,
            body,
            _owner: owner,
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
        let body = &mut self.get_mut().body;
        if let Some(data) = body.ready.pop_front() {
            return Poll::Ready(Some(Ok(data)));
        }
        if let Some(e) = body.failed.take() {
            return Poll::Ready(Some(Err(ResponseBodyError(e))));
        }
        let Some(rest) = body.rest.as_mut() else {
            return Poll::Ready(None);
        };
        rest.poll_recv(cx)
            .map(|chunk| chunk.map(|r| r.map_err(ResponseBodyError)))
    }

    fn try_into_bytes(mut self) -> Result<Bytes, Self>
    where
        Self: Sized,
    {
        // A whole body in one chunk (or none): actix writes it with the head, without polling.
        let body = &mut self.body;
        if body.ready.len() <= 1 && body.failed.is_none() && body.rest.is_none() {
            return Ok(body.ready.pop_front().unwrap_or_default());
        }
        Err(self)
    }
}
