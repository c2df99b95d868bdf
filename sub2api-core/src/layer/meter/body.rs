use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio_util::task::TaskTracker;

use crate::BoxError;
use crate::body::RelayBody;
use crate::dialect::{Dialect, ErrorClass};
use crate::ledger::LedgerError;
use crate::meter::{Ending, UsageScanner};
use crate::money::Money;

use super::Settler;

/// What is still to be sent once the settlement has committed.
struct Tail {
    frames: VecDeque<Bytes>,
    /// End the body with this error (a cut non-stream body cannot be repaired in-band).
    fail: Option<String>,
}

enum State {
    Streaming,
    Settling {
        fut: BoxFuture<'static, Result<Money, LedgerError>>,
        tail: Option<Tail>,
    },
    Flushing(Tail),
    /// Settled mid-stream (a vendor whose final usage is not its last byte, e.g. Gemini's last
    /// chunk, Chat's `[DONE]`): the rest of the stream passes through unmetered.
    Passthrough,
    Done,
}

/// A response body that meters itself. See the [module docs](super) for the settlement table.
pub struct MeteredBody {
    inner: Option<RelayBody>,
    scanner: Option<Box<dyn UsageScanner>>,
    settler: Arc<Settler>,
    stream: bool,
    dialect: Dialect,
    /// Non-stream bodies hold their latest chunk back: it may be the last one, which must wait for
    /// the settlement.
    held_back: Option<Bytes>,
    state: State,
    tracker: TaskTracker,
    drain_timeout: Duration,
    metrics: Arc<crate::metrics::Metrics>,
}

impl MeteredBody {
    pub(crate) fn new(
        inner: RelayBody,
        scanner: Box<dyn UsageScanner>,
        settler: Arc<Settler>,
        stream: bool,
        dialect: Dialect,
        tracker: TaskTracker,
        drain_timeout: Duration,
    ) -> Self {
        let metrics = settler.metrics();
        metrics.open_responses.fetch_add(1, Relaxed);
        MeteredBody {
            inner: Some(inner),
            scanner: Some(scanner),
            settler,
            stream,
            dialect,
            held_back: None,
            state: State::Streaming,
            tracker,
            drain_timeout,
            metrics,
        }
    }

    fn start_settle(&mut self, ending: Ending, tail: Tail, keep_inner: bool) {
        let usage = self.scanner.as_mut().map(|s| s.usage()).unwrap_or_default();
        if !keep_inner {
            self.inner = None; // upstream is finished with; free its connection now
        }
        let fut = self.settler.clone().settle(usage, ending);
        self.state = State::Settling {
            fut: Box::pin(fut),
            tail: Some(tail),
        };
    }

    fn cut_tail(&mut self, upstream_error: Option<String>) -> Tail {
        let mut frames = VecDeque::new();
        frames.extend(self.held_back.take());
        let saw_error = self.scanner.as_ref().is_some_and(|s| s.saw_error());
        if self.stream {
            if !saw_error {
                frames.push_back(self.dialect.sse_error(
                    ErrorClass::Api,
                    "upstream ended the stream before it was complete",
                ));
            }
            Tail { frames, fail: None }
        } else {
            Tail {
                frames,
                fail: Some(upstream_error.unwrap_or_else(|| "upstream body ended early".into())),
            }
        }
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Flushing(tail) => {
                    if let Some(b) = tail.frames.pop_front() {
                        return Poll::Ready(Some(Ok(Frame::data(b))));
                    }
                    let fail = tail.fail.take();
                    if fail.is_none() && this.inner.is_some() {
                        this.state = State::Passthrough;
                        continue;
                    }
                    this.state = State::Done;
                    return Poll::Ready(fail.map(|m| Err(m.into())));
                }
                State::Passthrough => {
                    let inner = this
                        .inner
                        .as_mut()
                        .expect("inner present while passing through");
                    match ready!(Pin::new(inner).poll_frame(cx)) {
                        Some(Ok(frame)) => return Poll::Ready(Some(Ok(frame))),
                        Some(Err(e)) => {
                            // Already settled on the final usage; the tail was cut: end here.
                            tracing::debug!(error = %e, "upstream failed after its final usage");
                            this.inner = None;
                            this.state = State::Done;
                            return Poll::Ready(None);
                        }
                        None => {
                            this.inner = None;
                            this.state = State::Done;
                            return Poll::Ready(None);
                        }
                    }
                }
                State::Settling { fut, tail } => {
                    let result = ready!(fut.as_mut().poll(cx));
                    let mut tail = tail.take().expect("tail present while settling");
                    if result.is_err() {
                        // Not committed: the client must not receive the bytes that say "done".
                        tail.frames.clear();
                        if this.stream {
                            tail.frames.push_back(this.dialect.sse_error(
                                ErrorClass::Api,
                                "billing unavailable; the response was not completed",
                            ));
                        } else {
                            tail.fail = Some("billing unavailable".into());
                        }
                    }
                    this.state = State::Flushing(tail);
                }
                State::Streaming => {
                    let inner = this.inner.as_mut().expect("inner present while streaming");
                    match ready!(Pin::new(inner).poll_frame(cx)) {
                        Some(Ok(frame)) => {
                            let frame = match frame.into_data() {
                                Ok(data) => data,
                                Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                            };
                            let scanner = this
                                .scanner
                                .as_mut()
                                .expect("scanner present while streaming");
                            scanner.feed(&frame);
                            if this.stream {
                                if scanner.is_final() {
                                    this.start_settle(
                                        Ending::Complete,
                                        Tail {
                                            frames: VecDeque::from([frame]),
                                            fail: None,
                                        },
                                        true,
                                    );
                                    continue;
                                }
                                return Poll::Ready(Some(Ok(Frame::data(frame))));
                            }
                            if let Some(prev) = this.held_back.replace(frame) {
                                return Poll::Ready(Some(Ok(Frame::data(prev))));
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "upstream body failed mid-response");
                            let tail = this.cut_tail(Some(format!("upstream body failed: {e}")));
                            this.start_settle(Ending::UpstreamCut, tail, false);
                        }
                        None => {
                            let scanner = this
                                .scanner
                                .as_mut()
                                .expect("scanner present while streaming");
                            let complete = if this.stream {
                                scanner.is_final()
                            } else {
                                scanner.usage();
                                scanner.is_final()
                            };
                            if complete {
                                let frames = this.held_back.take().into_iter().collect();
                                this.start_settle(
                                    Ending::Complete,
                                    Tail { frames, fail: None },
                                    false,
                                );
                            } else {
                                let tail = this.cut_tail(None);
                                this.start_settle(Ending::UpstreamCut, tail, false);
                            }
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.state, &self.inner) {
            (State::Streaming, Some(inner)) if !self.stream => inner.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        self.metrics.open_responses.fetch_sub(1, Relaxed);
        match std::mem::replace(&mut self.state, State::Done) {
            State::Done | State::Flushing(_) | State::Passthrough => {}
            State::Settling { fut, .. } => {
                // The client left while the settlement was committing: let it finish.
                self.tracker.spawn(async move {
                    let _ = fut.await;
                });
            }
            State::Streaming => {
                // The client hung up mid-response: keep reading upstream (bounded) for the final
                // usage, then settle.
                let (Some(mut inner), Some(mut scanner)) = (self.inner.take(), self.scanner.take())
                else {
                    return;
                };
                let settler = self.settler.clone();
                let timeout = self.drain_timeout;
                let held = self.held_back.take();
                let stream = self.stream;
                if tokio::runtime::Handle::try_current().is_err() {
                    tracing::error!(
                        "metered body dropped outside a runtime; its hold will be recovered"
                    );
                    return;
                }
                self.tracker.spawn(async move {
                    let _ = held;
                    let deadline = tokio::time::Instant::now() + timeout;
                    let ending = loop {
                        match tokio::time::timeout_at(deadline, inner.frame()).await {
                            Ok(Some(Ok(frame))) => {
                                if let Some(d) = frame.data_ref() {
                                    scanner.feed(d);
                                    if stream && scanner.is_final() {
                                        break Ending::ClientGoneDrained;
                                    }
                                }
                            }
                            Ok(Some(Err(_))) => break Ending::UpstreamCut,
                            Ok(None) => {
                                scanner.usage();
                                break if scanner.is_final() {
                                    Ending::ClientGoneDrained
                                } else {
                                    Ending::UpstreamCut
                                };
                            }
                            Err(_) => break Ending::ClientGoneTimedOut,
                        }
                    };
                    drop(inner);
                    let usage = scanner.usage();
                    let _ = settler.settle(usage, ending).await;
                });
            }
        }
    }
}
