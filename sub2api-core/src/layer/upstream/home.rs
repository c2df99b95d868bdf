//! An upstream exchange run on the relay's home runtime for a request polled on another thread.
//!
//! A server that polls its requests on a single-threaded runtime of its own (an actix worker,
//! see [`LocalRuntime`]) sends a non-stream request on that thread's own connection. A stream
//! cannot go there: when its client leaves, the relay keeps reading it for the final usage, and
//! that drain may outlast the worker's runtime (a server stop). So a stream goes out on the shared
//! clients, whose connections live on the relay's home runtime, and is read there too: hyper's
//! client hands over a body's chunks one at a time, only once the reader asked, so reading it from
//! the other thread would cost two wake-ups across threads per SSE event. Here a task next to the
//! connection sends the request, hands the head over, and then the body in bursts (the chunks
//! already on their way, as one), through a bounded channel.
//!
//! [`LocalRuntime`]: crate::runtime::LocalRuntime

use std::pin::Pin;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::BoxError;
use crate::body::{ChannelBody, IDLE_TURNS, RelayBody, boxed};

/// Frames in flight from the home task to the reader: a few SSE events of read-ahead, like a
/// socket buffer, before the task waits for the reader.
const FRAMES_IN_FLIGHT: usize = 16;

/// Why an exchange failed, for the log (the URL left out).
pub(crate) type Failure = String;

/// Sends `send` from a task on `home` and returns the response, its body read there. Dropping
/// the future before the head, or the body later, stops the task and drops the connection's
/// request.
pub(crate) async fn send(
    home: &Handle,
    send: reqwest::RequestBuilder,
) -> Result<http::Response<RelayBody>, Failure> {
    let (head_tx, head_rx) = oneshot::channel();
    home.spawn(run(send, head_tx));
    match head_rx.await {
        Ok(head) => head,
        Err(_) => Err("the relay runtime dropped the upstream request".to_owned()),
    }
}

type HeadTx = oneshot::Sender<Result<http::Response<RelayBody>, Failure>>;

async fn run(send: reqwest::RequestBuilder, mut head_tx: HeadTx) {
    let res = tokio::select! {
        biased;
        res = send.send() => res,
        () = head_tx.closed() => return,
    };
    let res = match res {
        Ok(res) => http::Response::<reqwest::Body>::from(res),
        Err(e) => {
            let _ = head_tx.send(Err(e.without_url().to_string()));
            return;
        }
    };
    let (parts, mut body) = res.into_parts();
    let (tx, rx) = mpsc::channel(FRAMES_IN_FLIGHT);
    let crossing = ChannelBody::new(rx).with_size_hint(body.size_hint());
    // The head goes over with what is already on its way behind it (often a whole reply): one
    // wake-up of the reader instead of two.
    let first = tokio::select! {
        biased;
        first = gather(&mut body, false) => first,
        () = head_tx.closed() => return,
    };
    // A new channel has room for a burst and what stopped it: this does not wait.
    let more = deliver(first, &tx).await;
    if head_tx
        .send(Ok(http::Response::from_parts(parts, boxed(crossing))))
        .is_err()
        || !more
    {
        return;
    }
    pump(body, tx).await;
}

/// Hands the body over, a burst at a time, until it ends, fails, or the reader lets go.
async fn pump(mut body: reqwest::Body, tx: mpsc::Sender<Result<Frame<Bytes>, BoxError>>) {
    loop {
        let burst = tokio::select! {
            biased;
            burst = gather(&mut body, true) => burst,
            () = tx.closed() => return,
        };
        if !deliver(burst, &tx).await {
            return;
        }
    }
}

/// Hands a burst over, then what stopped it (the end, trailers or an error); false when nothing
/// more comes or the reader has gone.
async fn deliver(burst: Burst, tx: &mpsc::Sender<Result<Frame<Bytes>, BoxError>>) -> bool {
    if let Some(data) = burst.data
        && tx.send(Ok(Frame::data(data))).await.is_err()
    {
        return false;
    }
    let stop = match burst.after {
        None => return true,
        Some(None) => return false,
        Some(Some(stop)) => stop,
    };
    let failed = stop.is_err();
    tx.send(stop).await.is_ok() && !failed
}

type Next = Option<Result<Frame<Bytes>, BoxError>>;

/// Bytes gathered before a burst is handed over anyway.
const MAX_BURST: usize = 64 * 1024;

/// One burst: the data that came back to back, and what stopped it (`None`: nothing more yet).
struct Burst {
    data: Option<Bytes>,
    after: Option<Next>,
}

/// Gathers the data frames already on their way: it yields its turn (so the connection's task
/// runs) until [`IDLE_TURNS`] turns in a row bring nothing, for the reason [`crate::body::Batched`]
/// does. With `wait`, it first waits for a frame.
async fn gather(body: &mut reqwest::Body, wait: bool) -> Burst {
    let mut kept = Kept::default();
    let mut idle = 0u8;
    let after = std::future::poll_fn(|cx| {
        loop {
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) if frame.is_data() => {
                    kept.push(frame.into_data().unwrap_or_default());
                    idle = 0;
                    if kept.len() >= MAX_BURST {
                        return Poll::Ready(None);
                    }
                }
                Poll::Ready(other) => {
                    return Poll::Ready(Some(other.map(|r| r.map_err(BoxError::from))));
                }
                Poll::Pending if wait && kept.len() == 0 => return Poll::Pending,
                Poll::Pending if idle < IDLE_TURNS => {
                    idle += 1;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Pending => return Poll::Ready(None),
            }
        }
    })
    .await;
    Burst {
        data: kept.into_bytes(),
        after,
    }
}

/// Chunks joined into one, copied only when there is more than one.
#[derive(Default)]
struct Kept {
    first: Option<Bytes>,
    joined: Option<BytesMut>,
}

impl Kept {
    fn push(&mut self, chunk: Bytes) {
        if let Some(joined) = &mut self.joined {
            joined.extend_from_slice(&chunk);
        } else if let Some(first) = self.first.take() {
            let mut joined = BytesMut::with_capacity(first.len() + chunk.len());
            joined.extend_from_slice(&first);
            joined.extend_from_slice(&chunk);
            self.joined = Some(joined);
        } else {
            self.first = Some(chunk);
        }
    }

    fn len(&self) -> usize {
        self.joined
            .as_ref()
            .map_or_else(|| self.first.as_ref().map_or(0, Bytes::len), BytesMut::len)
    }

    fn into_bytes(self) -> Option<Bytes> {
        self.joined.map(BytesMut::freeze).or(self.first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP/1.1 server: answers the first request with `reply`, then keeps the
    /// connection open until the client closes it; reports when it did.
    async fn server(reply: &'static [u8]) -> (String, oneshot::Receiver<()>) {
        serve(reply, false).await
    }

    /// `cut`: the server closes the connection right after `reply`.
    async fn serve(reply: &'static [u8], cut: bool) -> (String, oneshot::Receiver<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let (closed_tx, closed_rx) = oneshot::channel();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).await.unwrap();
                seen.extend_from_slice(&buf[..n]);
            }
            sock.write_all(reply).await.unwrap();
            if cut {
                return;
            }
            while sock.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            let _ = closed_tx.send(());
        });
        (url, closed_rx)
    }

    fn client() -> reqwest::Client {
        crate::layer::upstream::Upstream::default_client()
    }

    #[tokio::test]
    async fn head_then_the_body_in_bursts_from_home() {
        let (url, _closed) = server(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n\
              5\r\nevt1\n\r\n5\r\nevt2\n\r\n5\r\nevt3\n\r\n0\r\n\r\n",
        )
        .await;
        let home = Handle::current();
        let res = send(&home, client().get(&url)).await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.body().size_hint().exact().is_none());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"evt1\nevt2\nevt3\n");
    }

    #[tokio::test]
    async fn a_cut_body_ends_in_an_error_not_in_a_clean_end() {
        let (url, _closed) = serve(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n\
              5\r\nevt1\n\r\n",
            true,
        )
        .await;
        let res = send(&Handle::current(), client().get(&url)).await.unwrap();
        let mut body = res.into_body();
        let mut data = Vec::new();
        let failed = loop {
            match body.frame().await {
                Some(Ok(frame)) => data.extend_from_slice(&frame.into_data().unwrap()),
                Some(Err(_)) => break true,
                None => break false,
            }
        };
        assert_eq!(&data[..], b"evt1\n");
        assert!(failed, "a cut stream must not look complete");
    }

    #[tokio::test]
    async fn a_sized_body_keeps_its_size() {
        let (url, _closed) = server(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello").await;
        let res = send(&Handle::current(), client().get(&url)).await.unwrap();
        assert_eq!(res.body().size_hint().exact(), Some(5));
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
    }

    #[tokio::test]
    async fn a_failed_request_is_reported_without_its_url() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/secret-path", listener.local_addr().unwrap());
        drop(listener);
        let e = send(&Handle::current(), client().get(&url))
            .await
            .unwrap_err();
        assert!(!e.contains("secret-path"), "{e}");
    }

    #[tokio::test]
    async fn dropping_the_body_lets_the_connection_go() {
        // A stream that never ends: only the reader letting go ends it.
        let (url, closed) = server(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n\
              5\r\nevt1\n\r\n",
        )
        .await;
        let res = send(&Handle::current(), client().get(&url)).await.unwrap();
        let mut body = res.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"evt1\n");
        drop(body);
        // The home task stops and drops the unfinished response: the connection closes.
        closed.await.unwrap();
    }
}
