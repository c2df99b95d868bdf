//! Response bodies rewritten on their way to the client: per SSE event ([`SseRewrite`]) or as a
//! whole JSON body ([`WholeRewrite`]).
//!
//! Used for what depends on the account or the client and not on billing: the response's model
//! name mapped back, Code Assist's `{"response": ...}` envelope removed, and the Chat Completions
//! usage chunk dropped for a client that did not ask for it. An SSE event is passed on once it is
//! complete (its blank line seen), so a rewrite never sees half an event; an event larger than
//! [`MAX_EVENT_BYTES`] is passed through unchanged rather than buffered.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use crate::BoxError;
use crate::body::RelayBody;

/// Events larger than this are not rewritten.
pub const MAX_EVENT_BYTES: usize = 8 << 20;
/// Bodies larger than this are not rewritten.
pub const MAX_WHOLE_BYTES: usize = 64 << 20;

/// Rewrites one complete SSE event (its bytes, blank line included): `Some` replaces it (an empty
/// `Bytes` drops it), `None` keeps it as it is.
pub type EventRewrite = Box<dyn FnMut(&[u8]) -> Option<Bytes> + Send>;

/// Rewrites a whole body: `Some` replaces it.
pub type BodyRewrite = Box<dyn FnOnce(&[u8]) -> Option<Vec<u8>> + Send>;

/// Where the first complete event in `buf` ends (just past its blank line). A `\r` at the very
/// end may still be followed by `\n`, so an event ending there waits for more input unless the
/// body is over.
fn event_end(buf: &[u8], at_eof: bool) -> Option<usize> {
    let mut line_start = 0;
    let mut i = 0;
    while i < buf.len() {
        match buf[i] {
            b'\n' | b'\r' => {
                let mut end = i + 1;
                if buf[i] == b'\r' {
                    if end == buf.len() && !at_eof {
                        return None;
                    }
                    if buf.get(end) == Some(&b'\n') {
                        end += 1;
                    }
                }
                if i == line_start {
                    return Some(end);
                }
                line_start = end;
                i = end;
            }
            _ => i += 1,
        }
    }
    None
}

/// The `data` payload of an event (lines joined with `\n`), and whether the event has other
/// fields besides `data` and `event`.
pub fn event_data(event: &[u8]) -> Option<Vec<u8>> {
    let mut data: Option<Vec<u8>> = None;
    for line in event.split(|&b| b == b'\n' || b == b'\r') {
        if let Some(rest) = line.strip_prefix(b"data:") {
            let rest = rest.strip_prefix(b" ").unwrap_or(rest);
            match &mut data {
                Some(d) => {
                    d.push(b'\n');
                    d.extend_from_slice(rest);
                }
                None => data = Some(rest.to_vec()),
            }
        }
    }
    data
}

/// Rewrites an event's `data` payload with `f` (which returns `None` to keep it), keeping its
/// other lines. The rewritten event uses `\n` line endings.
pub fn map_event_data(event: &[u8], f: impl FnOnce(&[u8]) -> Option<Vec<u8>>) -> Option<Bytes> {
    let data = event_data(event)?;
    let new = f(&data)?;
    let mut out = Vec::with_capacity(new.len() + 32);
    let mut wrote_data = false;
    for line in event
        .split(|&b| b == b'\n' || b == b'\r')
        .filter(|l| !l.is_empty())
    {
        if line.starts_with(b"data:") {
            if !wrote_data {
                wrote_data = true;
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&new);
                out.push(b'\n');
            }
        } else {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    out.push(b'\n');
    Some(Bytes::from(out))
}

pin_project_lite::pin_project! {
    /// An SSE body rewritten event by event.
    pub struct SseRewrite {
        #[pin]
        inner: RelayBody,
        buf: BytesMut,
        out: VecDeque<Bytes>,
        rewrite: EventRewrite,
        // Inside an oversized event: pass bytes through until its end.
        passthrough: bool,
        done: bool,
        error: Option<BoxError>,
    }
}

impl SseRewrite {
    pub fn new(inner: RelayBody, rewrite: EventRewrite) -> Self {
        SseRewrite {
            inner,
            buf: BytesMut::new(),
            out: VecDeque::new(),
            rewrite,
            passthrough: false,
            done: false,
            error: None,
        }
    }
}

impl SseRewrite {
    fn drain(
        buf: &mut BytesMut,
        out: &mut VecDeque<Bytes>,
        rewrite: &mut EventRewrite,
        passthrough: &mut bool,
        eof: bool,
    ) {
        loop {
            if buf.is_empty() {
                return;
            }
            match event_end(buf, eof) {
                Some(end) => {
                    let event = buf.split_to(end).freeze();
                    if std::mem::take(passthrough) {
                        out.push_back(event);
                        continue;
                    }
                    match rewrite(&event) {
                        Some(b) if b.is_empty() => {}
                        Some(b) => out.push_back(b),
                        None => out.push_back(event),
                    }
                }
                None if eof => {
                    // A trailing partial event (the stream was cut): pass it on as it is.
                    out.push_back(buf.split().freeze());
                    return;
                }
                None if *passthrough || buf.len() > MAX_EVENT_BYTES => {
                    *passthrough = true;
                    // Keep a possible `\r` of a split line ending back.
                    let keep = usize::from(buf.last() == Some(&b'\r'));
                    let n = buf.len() - keep;
                    out.push_back(buf.split_to(n).freeze());
                    return;
                }
                None => return,
            }
        }
    }
}

impl Body for SseRewrite {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if let Some(b) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if *this.done {
                return Poll::Ready(this.error.take().map(Err));
            }
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.buf.extend_from_slice(&data);
                        Self::drain(this.buf, this.out, this.rewrite, this.passthrough, false);
                    }
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
                Some(Err(e)) => {
                    // Hand on what arrived, then the error.
                    Self::drain(this.buf, this.out, this.rewrite, this.passthrough, true);
                    *this.done = true;
                    *this.error = Some(e);
                }
                None => {
                    Self::drain(this.buf, this.out, this.rewrite, this.passthrough, true);
                    *this.done = true;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.out.is_empty() && self.error.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

pin_project_lite::pin_project! {
    /// A JSON body rewritten whole once it has arrived (bounded by [`MAX_WHOLE_BYTES`]; a larger
    /// body passes unchanged).
    pub struct WholeRewrite {
        #[pin]
        inner: RelayBody,
        buf: BytesMut,
        rewrite: Option<BodyRewrite>,
        done: bool,
        error: Option<BoxError>,
    }
}

impl WholeRewrite {
    pub fn new(inner: RelayBody, rewrite: BodyRewrite) -> Self {
        WholeRewrite {
            inner,
            buf: BytesMut::new(),
            rewrite: Some(rewrite),
            done: false,
            error: None,
        }
    }
}

impl Body for WholeRewrite {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if *this.done {
                return Poll::Ready(this.error.take().map(Err));
            }
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if this.rewrite.is_none() {
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        this.buf.extend_from_slice(&data);
                        if this.buf.len() > MAX_WHOLE_BYTES {
                            this.rewrite.take();
                            return Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze()))));
                        }
                    }
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
                Some(Err(e)) => {
                    // A cut body cannot be rewritten: what arrived is handed on, then the error.
                    *this.done = true;
                    *this.error = Some(e);
                    this.rewrite.take();
                    if !this.buf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze()))));
                    }
                }
                None => {
                    *this.done = true;
                    let body = this.buf.split().freeze();
                    let out = match this.rewrite.take() {
                        Some(f) => f(&body).map(Bytes::from).unwrap_or(body),
                        None => body,
                    };
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.error.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn chunked(parts: Vec<&'static [u8]>) -> RelayBody {
        let s = futures_util::stream::iter(
            parts
                .into_iter()
                .map(|p| Ok::<_, BoxError>(Frame::data(Bytes::from_static(p)))),
        );
        http_body_util::StreamBody::new(s).boxed_unsync()
    }

    #[test]
    fn event_ends() {
        assert_eq!(event_end(b"data: a\n\nrest", false), Some(9));
        assert_eq!(event_end(b"data: a\r\n\r\nrest", false), Some(11));
        assert_eq!(event_end(b"data: a\r\r", false), None);
        assert_eq!(event_end(b"data: a\r\r", true), Some(9));
        assert_eq!(event_end(b"data: a\r\rx", false), Some(9));
        assert_eq!(event_end(b"data: a\n", false), None);
    }

    #[tokio::test]
    async fn rewrites_split_events_and_drops_some() {
        let body = chunked(vec![
            b"data: {\"a\":1}\n",
            b"\ndata: drop\n\nda",
            b"ta: keep\n\n",
        ]);
        let rw: EventRewrite = Box::new(|ev: &[u8]| {
            let d = event_data(ev)?;
            if d == b"drop" {
                return Some(Bytes::new());
            }
            map_event_data(ev, |d| (d == b"{\"a\":1}").then(|| b"{\"a\":2}".to_vec()))
        });
        let out = SseRewrite::new(body, rw)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&out[..], b"data: {\"a\":2}\n\ndata: keep\n\n");
    }

    #[tokio::test]
    async fn whole_body() {
        let body = chunked(vec![b"{\"x\":", b"1}"]);
        let out = WholeRewrite::new(body, Box::new(|b: &[u8]| Some([b, b"!"].concat())))
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&out[..], b"{\"x\":1}!");
    }
}
