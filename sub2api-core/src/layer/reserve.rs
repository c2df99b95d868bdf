//! Holds the request's worst-case cost before anything goes upstream (fail closed: no hold, no
//! request). The hold rides in the request extensions as a [`HoldCell`]; the meter layer settles
//! it, and whatever path drops the request without settling (an error, a client gone before the
//! response head, no meter in the stack) releases it.
//!
//! ```
//! use std::sync::Arc;
//! use sub2api_core::layer::reserve::ReserveLayer;
//! use sub2api_core::memory::MemoryLedger;
//! use sub2api_core::meter::PricedMeter;
//! use sub2api_core::pricing::PriceTable;
//! let layer = ReserveLayer::new(
//!     Arc::new(MemoryLedger::new()),
//!     Arc::new(PricedMeter::new(Arc::new(PriceTable::bundled()))),
//! );
//! # let _ = layer;
//! ```

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use tokio_util::task::TaskTracker;
use tower::{Layer, Service};

use crate::domain::Principal;
use crate::error::RelayError;
use crate::ledger::{Hold, HoldRequest, Ledger, LedgerError};
use crate::meter::Meter;
use crate::pricing::PricingError;
use crate::request::RelayRequest;

/// A hold that releases itself unless someone takes it to settle.
pub struct HoldCell {
    hold: Mutex<Option<Hold>>,
    ledger: Arc<dyn Ledger>,
    tracker: TaskTracker,
}

impl HoldCell {
    pub fn new(hold: Hold, ledger: Arc<dyn Ledger>, tracker: TaskTracker) -> Self {
        HoldCell {
            hold: Mutex::new(Some(hold)),
            ledger,
            tracker,
        }
    }

    /// Takes the hold to settle it; afterwards dropping the cell does nothing.
    pub fn take(&self) -> Option<Hold> {
        self.hold.lock().unwrap().take()
    }

    pub fn amount(&self) -> Option<crate::money::Money> {
        self.hold.lock().unwrap().as_ref().map(|h| h.amount)
    }
}

impl Drop for HoldCell {
    fn drop(&mut self) {
        let Some(hold) = self.hold.get_mut().unwrap().take() else {
            return;
        };
        let ledger = self.ledger.clone();
        // Tracked, so `Relay::shutdown` waits for releases as it does for settlements.
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                self.tracker.spawn_on(
                    async move {
                        if let Err(e) = ledger.release(&hold).await {
                            tracing::error!(request_id = %hold.request_id, error = %e, "could not release hold; recovery will");
                        }
                    },
                    &h,
                );
            }
            Err(_) => {
                tracing::error!(request_id = %hold.request_id, "hold dropped outside a runtime; recovery will release it")
            }
        }
    }
}

/// Maps a ledger refusal to what the client sees.
pub fn refusal(e: LedgerError) -> RelayError {
    match e {
        LedgerError::InsufficientBalance {
            available,
            required,
        } => RelayError::billing(format!(
            "insufficient balance: {available} USD available, this request may cost up to {required} USD"
        )),
        LedgerError::UnknownUser(_) => RelayError::billing("this key's user has no wallet"),
        LedgerError::Unavailable(_) => RelayError::overloaded(
            "billing temporarily unavailable",
            Some(std::time::Duration::from_secs(1)),
        ),
        other => RelayError::internal(other.to_string()),
    }
}

#[derive(Clone)]
pub struct ReserveLayer {
    ledger: Arc<dyn Ledger>,
    meter: Arc<dyn Meter>,
    tracker: TaskTracker,
}

impl ReserveLayer {
    pub fn new(ledger: Arc<dyn Ledger>, meter: Arc<dyn Meter>) -> Self {
        ReserveLayer {
            ledger,
            meter,
            tracker: TaskTracker::new(),
        }
    }

    /// Releases of abandoned holds run on this tracker (the relay's, so shutdown waits for them).
    pub fn with_tracker(mut self, tracker: TaskTracker) -> Self {
        self.tracker = tracker;
        self
    }
}

impl<S> Layer<S> for ReserveLayer {
    type Service = Reserve<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Reserve {
            inner,
            ledger: self.ledger.clone(),
            meter: self.meter.clone(),
            tracker: self.tracker.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Reserve<S> {
    inner: S,
    ledger: Arc<dyn Ledger>,
    meter: Arc<dyn Meter>,
    tracker: TaskTracker,
}

impl<S, RB> Service<Request<Bytes>> for Reserve<S>
where
    S: Service<Request<Bytes>, Response = Response<RB>, Error = RelayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<RB>;
    type Error = RelayError;
    type Future = BoxFuture<'static, Result<Response<RB>, RelayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RelayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Bytes>) -> Self::Future {
        let mut inner = super::take_ready(&mut self.inner);
        let ledger = self.ledger.clone();
        let meter = self.meter.clone();
        let tracker = self.tracker.clone();
        Box::pin(async move {
            let ext = req.extensions();
            let (Some(ctx), Some(principal)) = (ext.get::<RelayRequest>(), ext.get::<Principal>())
            else {
                return Err(RelayError::internal(
                    "reserve layer needs the auth and parse layers before it",
                ));
            };
            if !ctx.endpoint.billable() {
                return inner.call(req).await;
            }
            let amount =
                meter
                    .hold(&ctx.estimate, principal.multiplier())
                    .map_err(|e| match e {
                        PricingError::UnknownModel(m) => RelayError::invalid(format!(
                            "model `{m}` is not available on this relay"
                        )),
                        other => RelayError::internal(other.to_string()),
                    })?;
            // A key with a quota holds the same amount of its quota first (exact, like the
            // wallet); a refusal on either side leaves nothing held.
            let request_id = ctx.request_id.as_str().to_owned();
            let quota_hold = match principal.rules.quota {
                Some(quota) => {
                    let Some(access) = req
                        .extensions()
                        .get::<crate::layer::auth::QuotaAccess>()
                        .cloned()
                    else {
                        return Err(RelayError::internal(
                            "this key has a quota, but no key quota accounting is configured",
                        ));
                    };
                    match access
                        .0
                        .hold_quota(principal.key, &request_id, amount, quota)
                        .await
                    {
                        Ok(crate::api::quota::QuotaHold::Held) => Some(access),
                        Ok(crate::api::quota::QuotaHold::Exhausted { remaining }) => {
                            return Err(RelayError::new(
                                crate::dialect::ErrorClass::RateLimited,
                                format!(
                                    "this API key's quota is used up: {remaining} USD of {quota} USD left, this request may cost up to {amount} USD"
                                ),
                            ));
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "key quota hold failed");
                            return Err(RelayError::overloaded(
                                "billing temporarily unavailable",
                                Some(std::time::Duration::from_secs(1)),
                            ));
                        }
                    }
                }
                None => None,
            };
            let hold = ledger
                .reserve(HoldRequest {
                    request_id: request_id.clone(),
                    user_id: principal.user,
                    group_id: principal.group.id,
                    amount,
                })
                .await;
            let hold = match hold {
                Ok(h) => h,
                Err(e) => {
                    if let Some(access) = quota_hold
                        && let Err(e) = access.0.release_quota(&request_id).await
                    {
                        tracing::error!(error = %e, "could not release a key quota hold");
                    }
                    return Err(refusal(e));
                }
            };
            let cell = Arc::new(HoldCell::new(hold, ledger, tracker));
            req.extensions_mut().insert(cell);
            inner.call(req).await
        })
    }
}
