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

use crate::account_provider::AccountProvider;
use crate::body::{GuardedBody, RelayBody, boxed};
use crate::domain::AccountId;
use crate::domain::Principal;
use crate::error::RelayError;
use crate::layer::failover::Excluded;
use crate::layer::meter::ServedBy;
use crate::layer::upstream::fits;
use crate::request::RelayRequest;
use crate::scheduler::{ScheduleError, Scheduler, SelectRequest};

#[derive(Clone)]
pub struct ScheduleLayer {
    scheduler: Arc<dyn Scheduler>,
    accounts: Option<Arc<dyn AccountProvider>>,
}

impl ScheduleLayer {
    pub fn new(scheduler: Arc<dyn Scheduler>) -> Self {
        ScheduleLayer {
            scheduler,
            accounts: None,
        }
    }

    /// Lets the layer keep requests off accounts that cannot serve them (the account's model
    /// allowlist, a Codex account for Chat Completions), whatever scheduler is used: such
    /// accounts are added to the request's exclusions before selection.
    pub fn with_accounts(mut self, accounts: Arc<dyn AccountProvider>) -> Self {
        self.accounts = Some(accounts);
        self
    }
}

impl<S> Layer<S> for ScheduleLayer {
    type Service = Schedule<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Schedule {
            inner,
            scheduler: self.scheduler.clone(),
            accounts: self.accounts.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Schedule<S> {
    inner: S,
    scheduler: Arc<dyn Scheduler>,
    accounts: Option<Arc<dyn AccountProvider>>,
}

impl<S> Service<Request<Bytes>> for Schedule<S>
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

    fn call(&mut self, mut req: Request<Bytes>) -> Self::Future {
        let mut inner = super::take_ready(&mut self.inner);
        let scheduler = self.scheduler.clone();
        let accounts = self.accounts.clone();
        Box::pin(async move {
            let ext = req.extensions();
            let (Some(ctx), Some(principal)) = (ext.get::<RelayRequest>(), ext.get::<Principal>())
            else {
                return Err(RelayError::internal(
                    "schedule layer needs the auth and parse layers before it",
                ));
            };
            let mut excluded: Vec<AccountId> = ext
                .get::<Excluded>()
                .map(|e| e.0.clone())
                .unwrap_or_default();
            if let Some(accounts) = &accounts {
                let pool = accounts.pool(principal.group.id);
                let before = excluded.len();
                excluded.extend(
                    pool.iter()
                        .filter(|a| !fits(a, ctx.endpoint, &ctx.model))
                        .map(|a| a.id),
                );
                if !pool.is_empty() && excluded.len() - before == pool.len() {
                    return Err(RelayError::invalid(format!(
                        "model `{}` is not served by any account of this key's group",
                        ctx.model
                    )));
                }
            }
            let lease = scheduler
                .select(SelectRequest {
                    group: &principal.group,
                    model: &ctx.model,
                    session: ctx.session.as_ref(),
                    excluded: &excluded,
                })
                .await
                .map_err(|e| match e {
                    ScheduleError::NoAccount { retry_after } => RelayError::overloaded(
                        "no upstream account is available for this key's group right now",
                        retry_after,
                    ),
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
