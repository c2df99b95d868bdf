//! Body types shared by the layers.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

use crate::BoxError;

/// The response body every relay service returns.
pub type RelayBody = UnsyncBoxBody<Bytes, BoxError>;

/// The request body the relay stack accepts (adapters box theirs into it).
pub type IncomingBody = UnsyncBoxBody<Bytes, BoxError>;

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> RelayBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Boxes any body into a [`RelayBody`].
pub fn boxed<B>(body: B) -> RelayBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

pin_project_lite::pin_project! {
    /// A body that owns a guard (a scheduler lease, a concurrency permit) and drops it when the
    /// body is finished or dropped, so the slot is held exactly as long as the response streams.
    pub struct GuardedBody<B, G> {
        #[pin]
        inner: B,
        guard: Option<G>,
    }
}

impl<B, G> GuardedBody<B, G> {
    pub fn new(inner: B, guard: G) -> Self {
        GuardedBody {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B, G> Body for GuardedBody<B, G>
where
    B: Body,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let res = this.inner.poll_frame(cx);
        if let Poll::Ready(None) = res {
            this.guard.take();
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The most a [`Coalesced`] body joins into one chunk.
const COALESCE_MAX: usize = 64 * 1024;

/// A streamed body that hands the server, in one chunk, every chunk its inner body already has
/// ready, and never waits for more. An SSE stream arrives from upstream one event per read; once
/// the relay is busy several are often ready by the time the server polls, and writing them one
/// `writev` per event (hyper flushes each) costs a syscall and a wake-up apiece. Joining only
/// what is ready never delays a byte.
pub struct Coalesced {
    inner: RelayBody,
    /// A frame read while joining that could not be joined (trailers, an error, the end).
    parked: Option<Option<Result<Frame<Bytes>, BoxError>>>,
}

impl Coalesced {
    pub fn new(inner: RelayBody) -> Self {
        Coalesced {
            inner,
            parked: None,
        }
    }
}

impl Body for Coalesced {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(parked) = self.parked.take() {
            return Poll::Ready(parked);
        }
        let first = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => match f.into_data() {
                Ok(data) => data,
                Err(f) => return Poll::Ready(Some(Ok(f))),
            },
            other => return other,
        };
        let mut joined: Option<bytes::BytesMut> = None;
        while joined.as_ref().map_or(first.len(), |j| j.len()) < COALESCE_MAX {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => match f.into_data() {
                    Ok(more) => {
                        joined
                            .get_or_insert_with(|| {
                                let mut j = bytes::BytesMut::with_capacity(first.len() * 4);
                                j.extend_from_slice(&first);
                                j
                            })
                            .extend_from_slice(&more);
                    }
                    Err(f) => {
                        self.parked = Some(Some(Ok(f)));
                        break;
                    }
                },
                Poll::Ready(other) => {
                    self.parked = Some(other);
                    break;
                }
                Poll::Pending => break,
            }
        }
        Poll::Ready(Some(Ok(Frame::data(match joined {
            Some(j) => j.freeze(),
            None => first,
        }))))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.parked, Some(None)) || (self.parked.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use http_body_util::StreamBody;

    #[tokio::test]
    async fn coalesces_only_what_is_ready_and_keeps_every_byte_and_the_end() {
        let chunks: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"event: a\n\n"))),
            Ok(Frame::data(Bytes::from_static(b"event: b\n\n"))),
            Ok(Frame::data(Bytes::from_static(b"event: c\n\n"))),
        ];
        let body = boxed(StreamBody::new(stream::iter(chunks)));
        let mut c = Coalesced::new(body);
        let all = (&mut c).collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"event: a\n\nevent: b\n\nevent: c\n\n");
        assert!(c.frame().await.is_none(), "the end is kept");

        // A chunk that is not ready yet is not waited for: the first comes out alone.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let body = boxed(StreamBody::new(tokio_stream_from(rx)));
        let mut c = Coalesced::new(body);
        tx.send(Ok(Frame::data(Bytes::from_static(b"one")))).await.unwrap();
        let f = c.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&f[..], b"one");
        tx.send(Err("upstream cut".into())).await.unwrap();
        assert!(c.frame().await.unwrap().is_err(), "errors pass through");
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
