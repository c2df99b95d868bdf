//! Picks the account through the [`Scheduler`] and carries its [`Lease`](crate::scheduler::Lease)
//! inside the response body: the concurrency slot is freed when the body ends, not when the
//! headers arrive.
//!
//! ```
//! use std::sync::Arc;
//! use sub2api_core::layer::schedule::ScheduleLayer;
//! use sub2api_core::memory::{MemoryAccountProvider, MemoryScheduler};
//! let accounts = Arc::new(MemoryAccountProvider::new(vec![]));
//! let layer = ScheduleLayer::new(Arc::new(MemoryScheduler::new(accounts)));
//! # let _ = layer;
//! ```

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use tower::{Layer, Service};

use crate::body::{GuardedBody, RelayBody, boxed};
use crate::domain::Principal;
use crate::error::RelayError;
use crate::layer::failover::Excluded;
use crate::layer::meter::ServedBy;
use crate::request::RelayRequest;
use crate::scheduler::{ScheduleError, Scheduler, SelectRequest};

#[derive(Clone)]
pub struct ScheduleLayer {
    scheduler: Arc<dyn Scheduler>,
}

impl ScheduleLayer {
    pub fn new(scheduler: Arc<dyn Scheduler>) -> Self {
        ScheduleLayer { scheduler }
    }
}

impl<S> Layer<S> for ScheduleLayer {
    type Service = Schedule<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Schedule { inner, scheduler: self.scheduler.clone() }
    }
}

#[derive(Clone)]
pub struct Schedule<S> {
    inner: S,
    scheduler: Arc<dyn Scheduler>,
}

impl<S> Service<Request<Bytes>> for Schedule<S>
where
    S: Service<Request<Bytes>, Response = Response<RelayBody>, Error = RelayError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<RelayBody>;
    type Error = RelayError;
    type Future = BoxFuture<'static, Result<Response<RelayBody>, RelayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RelayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Bytes>) -> Self::Future {
        let mut inner = super::take_ready(&mut self.inner);
        let scheduler = self.scheduler.clone();
        Box::pin(async move {
            let ext = req.extensions();
            let (Some(ctx), Some(principal)) = (ext.get::<RelayRequest>(), ext.get::<Principal>()) else {
                return Err(RelayError::internal("schedule layer needs the auth and parse layers before it"));
            };
            let excluded = ext.get::<Excluded>().map(|e| e.0.as_slice()).unwrap_or(&[]);
            let lease = scheduler
                .select(SelectRequest {
                    group: &principal.group,
                    model: &ctx.model,
                    session: ctx.session.as_ref(),
                    excluded,
                })
                .await
                .map_err(|e| match e {
                    ScheduleError::NoAccount { retry_after } => {
                        RelayError::overloaded("no upstream account is available for this key's group right now", retry_after)
                    }
                    ScheduleError::Busy { retry_after } => {
                        RelayError::overloaded("all upstream accounts are busy", Some(retry_after))
                    }
                })?;
            let account = lease.account.clone();
            req.extensions_mut().insert(account.clone());
            let mut res = inner.call(req).await?;
            res.extensions_mut().insert(ServedBy(account));
            Ok(res.map(|b| boxed(GuardedBody::new(b, lease))))
        })
    }
}
