//! Meters a response as it streams and settles its charge exactly once, on every exit path
//! (the settlement table in the README):
//!
//! | how the response ended | what is charged |
//! |---|---|
//! | upstream sent final usage | exactly that usage |
//! | client disconnected mid-stream | upstream is drained (bounded) for its final usage; if the bound hits, input known + output counted |
//! | upstream cut mid-stream | input known + output seen; the client gets an SSE error event |
//! | upstream error before any output | nothing; the hold is released |
//! | failover to another account | only the attempt that produced the response |
//!
//! The scanner sees the very `Bytes` that go to the client (already rewritten for the account by
//! the upstream layer: model named back, Code Assist unwrapped; usage is never changed by those),
//! with one exception: the Chat Completions usage chunk the relay forced upstream is read by the
//! scanner and only then removed for a client that did not ask for it. The chunk that completes
//! the usage (an SSE stream's final event, a JSON body's last chunk) is held back until the
//! settlement has committed, so a charge the client was told about can never be lost; whatever
//! the vendor sends after its final usage passes through unmetered.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use sub2api_core::layer::meter::{MeterLayer, MeterSettings};
//! use sub2api_core::memory::{MemoryLedger, MemoryUsageLog};
//! use sub2api_core::meter::PricedMeter;
//! use sub2api_core::pricing::PriceTable;
//! let layer = MeterLayer::new(MeterSettings {
//!     ledger: Arc::new(MemoryLedger::new()),
//!     meter: Arc::new(PricedMeter::new(Arc::new(PriceTable::bundled()))),
//!     usage_log: Arc::new(MemoryUsageLog::default()),
//!     metrics: Default::default(),
//!     tracker: Default::default(),
//!     drain_timeout: Duration::from_secs(30),
//! });
//! # let _ = layer;
//! ```

mod body;
mod settle;

pub use body::MeteredBody;
pub use settle::Settler;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use http_body::Body;
use tokio_util::task::TaskTracker;
use tower::{Layer, Service};

use crate::BoxError;
use crate::body::{RelayBody, boxed};
use crate::domain::{Account, Principal};
use crate::error::RelayError;
use crate::layer::reserve::HoldCell;
use crate::ledger::Ledger;
use crate::meter::Meter;
use crate::metrics::Metrics;
use crate::protocol::openai;
use crate::protocol::reframe::SseRewrite;
use crate::request::{Endpoint, RelayRequest};
use crate::store::UsageLog;

/// The account that produced a response (set by the schedule layer, read for the usage log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedBy(pub Arc<Account>);

/// Everything settlement needs.
#[derive(Clone)]
pub struct MeterSettings {
    pub ledger: Arc<dyn Ledger>,
    pub meter: Arc<dyn Meter>,
    pub usage_log: Arc<dyn UsageLog>,
    pub metrics: Arc<Metrics>,
    /// Tracks drains and settlements that outlive their response, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// How long upstream is read for final usage after the client left.
    pub drain_timeout: Duration,
}

#[derive(Clone)]
pub struct MeterLayer {
    settings: Arc<MeterSettings>,
}

impl MeterLayer {
    pub fn new(settings: MeterSettings) -> Self {
        MeterLayer {
            settings: Arc::new(settings),
        }
    }
}

impl<S> Layer<S> for MeterLayer {
    type Service = MeterService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MeterService {
            inner,
            settings: self.settings.clone(),
        }
    }
}

#[derive(Clone)]
pub struct MeterService<S> {
    inner: S,
    /// Shared, not copied: the service is cloned for every request, and each copy of five
    /// handles was ten atomic operations on cache lines every core fights over.
    settings: Arc<MeterSettings>,
}

impl<S, RB> Service<Request<Bytes>> for MeterService<S>
where
    S: Service<Request<Bytes>, Response = Response<RB>, Error = RelayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<RelayBody>;
    type Error = RelayError;
    type Future = BoxFuture<'static, Result<Response<RelayBody>, RelayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RelayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let mut inner = super::take_ready(&mut self.inner);
        let settings = self.settings.clone();
        Box::pin(async move {
            let ext = req.extensions();
            let (Some(ctx), Some(principal)) = (
                ext.get::<RelayRequest>().cloned(),
                ext.get::<Principal>().cloned(),
            ) else {
                return Err(RelayError::internal(
                    "meter layer needs the auth and parse layers before it",
                ));
            };
            if !ctx.endpoint.billable() {
                return Ok(inner.call(req).await?.map(boxed));
            }
            let hold = ext.get::<Arc<HoldCell>>().cloned();
            Metrics::inc(&settings.metrics.requests);
            let res = inner.call(req).await?;
            if !res.status().is_success() {
                // Upstream error before any output: nothing is charged; dropping the request's
                // hold cell releases the hold.
                return Ok(res.map(boxed));
            }
            let served = res.extensions().get::<ServedBy>().map(|s| s.0.clone());
            let account = served.as_ref().map(|a| a.id);
            let upstream_model = served
                .as_ref()
                .map(|a| a.upstream_model(&ctx.model).into_owned())
                .filter(|m| *m != ctx.model);
            let scanner = settings.meter.endpoint_scanner(ctx.endpoint, ctx.stream);
            let settler = Arc::new(
                Settler::new(settings.clone(), ctx.clone(), principal, account, hold)
                    .with_upstream_model(upstream_model),
            );
            // The relay always asks a Chat stream for usage; a client that did not must not see
            // the extra chunk. It is removed after the meter has read it.
            let hide_usage =
                ctx.endpoint == Endpoint::ChatCompletions && ctx.stream && !ctx.include_usage;
            Ok(res.map(|b| {
                let metered = boxed(MeteredBody::new(
                    boxed(b),
                    scanner,
                    settler,
                    ctx.stream,
                    ctx.dialect,
                    settings.tracker.clone(),
                    settings.drain_timeout,
                ));
                if hide_usage {
                    boxed(SseRewrite::new(metered, Box::new(openai::drop_usage_chunk)))
                } else {
                    metered
                }
            }))
        })
    }
}
