//! Keeps an Anthropic streaming client company while its request waits (for a key or user slot,
//! an account slot, or the vendor's first byte): after `after` of silence the response is
//! committed as `200 text/event-stream` and an SSE `ping` event is sent every `after` until the
//! real answer is ready; then the vendor's stream follows on the same body. Opt-in
//! (`relay.stream_wait_pings_after_ms`); off, the layer passes every request through.
//!
//! Why it is opt-in: once the 200 is sent, a refusal can no longer be a status code. Whatever
//! ends the wait badly (a slot that never frees, a 402 hold, no account, the vendor's own 4xx or
//! 5xx) reaches the client as an SSE `error` event in Anthropic's shape, which is what Anthropic
//! itself sends when a stream fails midway and what its SDKs raise as an API error; but an SDK
//! retries a 429 or 529 status by itself and does not retry an in-stream error, and the vendor's
//! response headers (`request-id`) are not passed on. Pings before `message_start` are skipped by
//! the official SDKs (they ignore `ping` wherever it appears). Only `POST /v1/messages` with
//! `"stream": true` is affected; OpenAI and Gemini streams have no ping event and always wait
//! silently.
//!
//! The pings are made here, above the meter: they are never metered or billed, and a client
//! that hangs up while waiting cancels the wait (it leaves the queue; nothing goes upstream).
//!
//! ```
//! use std::time::Duration;
//! use sub2api_core::layer::stream_wait::StreamWaitLayer;
//! let layer = StreamWaitLayer::new(Some(Duration::from_secs(3)));
//! # let _ = layer;
//! ```

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use tower::{Layer, Service};

use crate::BoxError;
use crate::body::{RelayBody, boxed};
use crate::dialect::{Dialect, ErrorClass};
use crate::error::RelayError;
use crate::request::{Endpoint, RelayRequest};

/// The SSE frame a waiting Anthropic stream gets.
pub const PING: &[u8] = b"event: ping\ndata: {\"type\": \"ping\"}\n\n";

/// The most of an error body read to pass it on as an SSE `error` event.
const MAX_ERROR_BODY: usize = 64 * 1024;

#[derive(Clone, Copy, Debug)]
pub struct StreamWaitLayer {
    after: Option<Duration>,
}

impl StreamWaitLayer {
    /// `None`: off (every request passes through untouched).
    pub fn new(after: Option<Duration>) -> Self {
        StreamWaitLayer {
            after: after.filter(|d| !d.is_zero()),
        }
    }
}

impl<S> Layer<S> for StreamWaitLayer {
    type Service = StreamWait<S>;
    fn layer(&self, inner: S) -> Self::Service {
        StreamWait {
            inner,
            after: self.after,
        }
    }
}

#[derive(Clone)]
pub struct StreamWait<S> {
    inner: S,
    after: Option<Duration>,
}

impl<S> Service<Request<Bytes>> for StreamWait<S>
where
    S: Service<Request<Bytes>, Response = Response<RelayBody>, Error = RelayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<RelayBody>;
    type Error = RelayError;
    type Future = BoxFuture<'static, Result<Response<RelayBody>, RelayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RelayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let mut inner = super::take_ready(&mut self.inner);
        let pings = self.after.filter(|_| {
            req.extensions()
                .get::<RelayRequest>()
                .is_some_and(|c| c.stream && c.endpoint == Endpoint::Messages)
        });
        let Some(every) = pings else {
            return Box::pin(async move { inner.call(req).await });
        };
        let mut answer: BoxFuture<'static, Result<Response<RelayBody>, RelayError>> =
            Box::pin(async move { inner.call(req).await });
        Box::pin(async move {
            tokio::select! {
                res = &mut answer => res,
                _ = tokio::time::sleep(every) => Ok(committed(answer, every)),
            }
        })
    }
}

/// The early `200`: pings until `answer` is ready, then the answer's stream (or its failure as
/// an SSE `error` event).
fn committed(
    answer: BoxFuture<'static, Result<Response<RelayBody>, RelayError>>,
    every: Duration,
) -> Response<RelayBody> {
    let mut res = Response::new(boxed(PingBody {
        state: State::Waiting {
            answer,
            next_ping: Box::pin(tokio::time::sleep(Duration::ZERO)),
        },
        every,
    }));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

enum State {
    Waiting {
        answer: BoxFuture<'static, Result<Response<RelayBody>, RelayError>>,
        next_ping: Pin<Box<tokio::time::Sleep>>,
    },
    /// Reading a refusal's body to send it as an `error` event.
    Refused {
        status: StatusCode,
        body: RelayBody,
        read: BytesMut,
    },
    Streaming(RelayBody),
    Done,
}

struct PingBody {
    state: State,
    every: Duration,
}

fn frame(bytes: impl Into<Bytes>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    Poll::Ready(Some(Ok(Frame::data(bytes.into()))))
}

fn sse_error(class: ErrorClass, message: &str) -> Bytes {
    Dialect::Anthropic.sse_error(class, message)
}

/// A refusal's JSON body as an SSE `error` event: as it is when it is an Anthropic error object,
/// else an `api_error` naming the status.
fn refusal_event(status: StatusCode, body: &[u8]) -> Bytes {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) if v["type"] == "error" && v["error"]["type"].is_string() => {
            Bytes::from(format!("event: error\ndata: {v}\n\n"))
        }
        _ => sse_error(
            class_of(status),
            &format!(
                "the upstream request failed with status {}",
                status.as_u16()
            ),
        ),
    }
}

/// The error class a bare status stands for.
fn class_of(status: StatusCode) -> ErrorClass {
    match status.as_u16() {
        400 | 422 => ErrorClass::InvalidRequest,
        401 => ErrorClass::Authentication,
        402 => ErrorClass::Billing,
        403 => ErrorClass::Permission,
        404 => ErrorClass::NotFound,
        413 => ErrorClass::RequestTooLarge,
        429 => ErrorClass::RateLimited,
        503 | 529 => ErrorClass::Overloaded,
        504 => ErrorClass::Timeout,
        _ => ErrorClass::Api,
    }
}

fn is_event_stream(res: &Response<RelayBody>) -> bool {
    res.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

impl Body for PingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Waiting { answer, next_ping } => match answer.as_mut().poll(cx) {
                    Poll::Ready(Ok(res)) if res.status().is_success() && is_event_stream(&res) => {
                        this.state = State::Streaming(res.into_body());
                    }
                    Poll::Ready(Ok(res)) if res.status().is_success() => {
                        // Not a stream after all: nothing the client could parse here.
                        this.state = State::Done;
                        return frame(sse_error(
                            ErrorClass::Api,
                            "the upstream answered a stream request without a stream",
                        ));
                    }
                    Poll::Ready(Ok(res)) => {
                        let status = res.status();
                        this.state = State::Refused {
                            status,
                            body: res.into_body(),
                            read: BytesMut::new(),
                        };
                    }
                    Poll::Ready(Err(e)) => {
                        this.state = State::Done;
                        return frame(sse_error(e.class, &e.message));
                    }
                    Poll::Pending => {
                        if next_ping.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        let at = tokio::time::Instant::now() + this.every;
                        next_ping.as_mut().reset(at);
                        return frame(Bytes::from_static(PING));
                    }
                },
                State::Refused { status, body, read } => {
                    match Pin::new(&mut *body).poll_frame(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Some(Ok(f))) => {
                            if let Ok(data) = f.into_data() {
                                let room = MAX_ERROR_BODY.saturating_sub(read.len());
                                read.extend_from_slice(&data[..data.len().min(room)]);
                            }
                        }
                        Poll::Ready(Some(Err(_))) | Poll::Ready(None) => {
                            let event = refusal_event(*status, read);
                            this.state = State::Done;
                            return frame(event);
                        }
                    }
                }
                State::Streaming(body) => return Pin::new(body).poll_frame(cx),
                State::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use http_body_util::BodyExt;
    use tokio::sync::oneshot;
    use tower::ServiceExt;

    use super::*;
    use crate::body::full;
    use crate::request::RequestId;

    fn request(stream: bool) -> Request<Bytes> {
        let mut req = Request::new(Bytes::new());
        req.extensions_mut().insert(RelayRequest {
            request_id: RequestId::generate(),
            dialect: Dialect::Anthropic,
            endpoint: Endpoint::Messages,
            model: "claude-haiku-4-5".into(),
            stream,
            session: None,
            estimate: crate::meter::CostEstimate {
                model: "claude-haiku-4-5".into(),
                body_bytes: 0,
                cache_ttl: None,
                max_output_tokens: None,
                alternatives: Vec::new(),
            },
            include_usage: true,
            received_at: std::time::Instant::now(),
        });
        req
    }

    fn sse(text: &'static str) -> Response<RelayBody> {
        let mut r = Response::new(full(text));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        r
    }

    type Answer = Result<Response<RelayBody>, RelayError>;

    /// A service that answers with whatever the test sends, when it sends it; `dropped` tells
    /// whether the waiting call was cancelled.
    fn gated(
        rx: oneshot::Receiver<Answer>,
        dropped: Arc<AtomicBool>,
    ) -> impl Service<
        Request<Bytes>,
        Response = Response<RelayBody>,
        Error = RelayError,
        Future = BoxFuture<'static, Answer>,
    > + Clone
    + Send
    + 'static {
        let rx = Arc::new(std::sync::Mutex::new(Some(rx)));
        tower::service_fn(move |_req: Request<Bytes>| {
            let rx = rx.lock().unwrap().take().expect("called once");
            let dropped = dropped.clone();
            Box::pin(async move {
                struct OnDrop(Arc<AtomicBool>);
                impl Drop for OnDrop {
                    fn drop(&mut self) {
                        self.0.store(true, Ordering::SeqCst);
                    }
                }
                let guard = OnDrop(dropped);
                let answer = rx.await.expect("the test answers");
                std::mem::forget(guard);
                answer
            }) as BoxFuture<'static, Answer>
        })
    }

    async fn next(body: &mut RelayBody) -> Option<Bytes> {
        body.frame().await.map(|f| f.unwrap().into_data().unwrap())
    }

    const STREAM: &str = "event: message_start\ndata: {}\n\nevent: message_stop\ndata: {}\n\n";

    #[tokio::test(start_paused = true)]
    async fn a_quick_answer_passes_through_with_its_own_status() {
        let (tx, rx) = oneshot::channel();
        let svc =
            StreamWaitLayer::new(Some(Duration::from_secs(3))).layer(gated(rx, Default::default()));
        tx.send(Err(RelayError::rate_limited(
            "busy",
            Duration::from_secs(1),
        )))
        .ok();
        let e = svc.oneshot(request(true)).await.unwrap_err();
        assert_eq!(e.class, ErrorClass::RateLimited);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_wait_commits_200_pings_then_the_stream() {
        let (tx, rx) = oneshot::channel();
        let svc =
            StreamWaitLayer::new(Some(Duration::from_secs(3))).layer(gated(rx, Default::default()));
        let res = svc.oneshot(request(true)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(is_event_stream(&res));
        let mut body = res.into_body();
        assert_eq!(next(&mut body).await.unwrap(), PING);
        assert_eq!(next(&mut body).await.unwrap(), PING, "one every 3 s");
        tx.send(Ok(sse(STREAM))).ok();
        assert_eq!(next(&mut body).await.unwrap(), STREAM);
        assert!(next(&mut body).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_after_the_commit_is_an_sse_error_event() {
        // A refusal of the relay (a slot that never freed).
        let (tx, rx) = oneshot::channel();
        let svc =
            StreamWaitLayer::new(Some(Duration::from_secs(1))).layer(gated(rx, Default::default()));
        let mut body = svc.oneshot(request(true)).await.unwrap().into_body();
        assert_eq!(next(&mut body).await.unwrap(), PING);
        tx.send(Err(RelayError::rate_limited(
            "timed out waiting for a free slot on this user",
            Duration::from_secs(1),
        )))
        .ok();
        let event = next(&mut body).await.unwrap();
        let text = std::str::from_utf8(&event).unwrap();
        let data: serde_json::Value =
            serde_json::from_str(text.strip_prefix("event: error\ndata: ").unwrap().trim())
                .unwrap();
        assert_eq!(data["type"], "error");
        assert_eq!(data["error"]["type"], "rate_limit_error");
        assert!(next(&mut body).await.is_none());

        // The vendor's own error response, passed on as it is.
        let (tx, rx) = oneshot::channel();
        let svc =
            StreamWaitLayer::new(Some(Duration::from_secs(1))).layer(gated(rx, Default::default()));
        let mut body = svc.oneshot(request(true)).await.unwrap().into_body();
        assert_eq!(next(&mut body).await.unwrap(), PING);
        let vendor = r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too large"}}"#;
        let mut refusal = Response::new(full(vendor));
        *refusal.status_mut() = StatusCode::BAD_REQUEST;
        tx.send(Ok(refusal)).ok();
        let event = next(&mut body).await.unwrap();
        let text = std::str::from_utf8(&event).unwrap();
        let data: serde_json::Value =
            serde_json::from_str(text.strip_prefix("event: error\ndata: ").unwrap().trim())
                .unwrap();
        assert_eq!(data["error"]["type"], "invalid_request_error");
        assert_eq!(data["error"]["message"], "max_tokens: too large");
        assert!(next(&mut body).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_hanging_up_while_waiting_cancels_the_wait() {
        let (tx, rx) = oneshot::channel();
        let dropped = Arc::new(AtomicBool::new(false));
        let svc =
            StreamWaitLayer::new(Some(Duration::from_secs(1))).layer(gated(rx, dropped.clone()));
        let mut body = svc.oneshot(request(true)).await.unwrap().into_body();
        assert_eq!(next(&mut body).await.unwrap(), PING);
        assert!(!dropped.load(Ordering::SeqCst));
        drop(body);
        assert!(
            dropped.load(Ordering::SeqCst),
            "the waiting call was dropped"
        );
        assert!(tx.send(Ok(sse(STREAM))).is_err(), "nobody waits any more");
    }

    #[tokio::test(start_paused = true)]
    async fn non_streams_and_a_disabled_layer_wait_silently() {
        for (after, stream) in [(Some(Duration::from_secs(1)), false), (None, true)] {
            let (tx, rx) = oneshot::channel();
            let svc = StreamWaitLayer::new(after).layer(gated(rx, Default::default()));
            let call = tokio::spawn(svc.oneshot(request(stream)));
            tokio::time::sleep(Duration::from_secs(30)).await;
            assert!(!call.is_finished(), "no early answer");
            let mut r = Response::new(full("{}"));
            *r.status_mut() = StatusCode::PAYMENT_REQUIRED;
            tx.send(Ok(r)).ok();
            let res = call.await.unwrap().unwrap();
            assert_eq!(res.status(), StatusCode::PAYMENT_REQUIRED);
        }
    }
}
