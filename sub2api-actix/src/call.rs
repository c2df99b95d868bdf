//! One request's relay call, polled on the actix worker that serves it.
//!
//! actix polls a request's handler on its worker's single-threaded runtime, which the server
//! tears down when it stops; the relay's own work must outlive that. So the call is polled inside
//! the relay's home runtime ([`Entered`]): what it spawns (drains, settlements, hold releases)
//! and the connections it opens to stores land there, while the polling, and with it every
//! wake-up of the call, stays on the worker. The one exception is the upstream connection of a
//! non-stream request, opened on the worker's own runtime ([`LocalRuntime`]): the worker reads
//! it, so nothing crosses threads between the vendor's answer and the client's.
//!
//! Every other request (a stream, a proxied account) goes upstream, and is read, on the relay
//! runtime, and its body comes over in bursts (see `sub2api_core::layer::upstream`).
//!
//! A body of known size up to [`WHOLE_BODY_BYTES`] is read whole before actix gets the head, so
//! actix writes it with the head.
//!
//! [`LocalRuntime`]: sub2api_core::runtime::LocalRuntime

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body::Body;
use sub2api_core::BoxError;
use sub2api_core::body::RelayBody;
use sub2api_core::runtime::Entered;
use tokio::runtime::Handle;

use crate::runtime::Alive;

/// A body of known size up to this many bytes is read whole before the head is handed to actix.
/// A non-stream reply's last bytes wait for its settlement anyway, so the client gets them no
/// later.
pub(crate) const WHOLE_BODY_BYTES: u64 = 256 * 1024;

/// A relay future polled on the actix worker inside the relay runtime, and dropped there (the
/// client left, the server stopped).
pub(crate) struct InPlace<T> {
    inner: Entered<BoxFuture<'static, T>>,
    /// Dropped only after `inner` (see [`Alive`]).
    _alive: Option<Alive>,
}

impl<T> InPlace<T> {
    pub(crate) fn new(
        inner: BoxFuture<'static, T>,
        runtime: &Handle,
        alive: Option<Alive>,
    ) -> Self {
        InPlace {
            inner: Entered::new(runtime.clone(), inner),
            _alive: alive,
        }
    }
}

impl<T> std::future::Future for InPlace<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<T> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

/// A body read whole, or its start.
pub(crate) struct Whole {
    pub(crate) ready: VecDeque<Bytes>,
    pub(crate) end: WholeEnd,
}

pub(crate) enum WholeEnd {
    /// All of it.
    Done,
    /// It failed after `ready`.
    Failed(BoxError),
    /// The size was wrong: the rest is still to be read.
    More(RelayBody),
}

/// Nothing read yet: all of `body` is still to come.
pub(crate) fn unread(body: RelayBody) -> Whole {
    Whole {
        ready: VecDeque::new(),
        end: WholeEnd::More(body),
    }
}

/// Reads `body` whole, up to [`WHOLE_BODY_BYTES`]. The body is dropped (its settlement done) by
/// the time this returns, unless there is more.
pub(crate) async fn read_whole(mut body: RelayBody) -> Whole {
    let mut ready = VecDeque::new();
    let mut bytes = 0u64;
    let end = loop {
        let next = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        match next {
            // Empty chunks would end a chunked HTTP/1.1 body early; trailers have no place in an
            // actix response.
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => {
                    bytes += data.len() as u64;
                    ready.push_back(data);
                    if bytes > WHOLE_BODY_BYTES {
                        break WholeEnd::More(body);
                    }
                }
                _ => {}
            },
            Some(Err(e)) => break WholeEnd::Failed(e),
            None => break WholeEnd::Done,
        }
    };
    Whole { ready, end }
}
