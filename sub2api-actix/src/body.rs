//! The two bodies crossing the adapter: actix's request payload into the relay, the relay's
//! response body out to actix.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, MessageBody};
use actix_web::web;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body::{Body, Frame, SizeHint};
use sub2api_core::BoxError;
use sub2api_core::body::RelayBody;
use tokio::sync::mpsc;

use crate::runtime::InRuntime;

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

/// The relay's response body as an actix `MessageBody`. It owns the body: every chunk goes out
/// as it arrives, and when actix drops the response (the client left), the relay body is dropped
/// with it, inside the relay's runtime.
pub(crate) struct ResponseBody {
    body: InRuntime<RelayBody>,
}

impl ResponseBody {
    pub(crate) fn new(body: InRuntime<RelayBody>) -> Self {
        ResponseBody { body }
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
        let Some(body) = self.body.get() else {
            return BodySize::Sized(0);
        };
        let hint: SizeHint = body.size_hint();
        match hint.exact() {
            Some(n) => BodySize::Sized(n),
            None => BodySize::Stream,
        }
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, ResponseBodyError>>> {
        let (_enter, body) = self.get_mut().body.entered();
        let Some(body) = body else {
            return Poll::Ready(None);
        };
        loop {
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    // An empty chunk would end a chunked HTTP/1.1 body early.
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => return Poll::Ready(Some(Ok(data))),
                    // Trailers have no place in an actix response; skip them.
                    Err(_) => continue,
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(ResponseBodyError(e)))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
