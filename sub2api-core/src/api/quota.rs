//! Key quotas: the most a key may ever spend, exact to the nano-USD.
//!
//! A key with a quota takes a *quota hold* next to its wallet hold (same amount, same request
//! id) in the reserve layer: refused, with nothing held, when `used + held + amount > quota`.
//! When the request settles, [`QuotaLedger`] turns the quota hold into `used` by the exact charge;
//! when it is released, the quota hold goes too. Quota holds carry an expiry in durable stores, so
//! a crashed process never strands quota.
//!
//! Wire it by wrapping the relay's ledger: `RelayParts { ledger: QuotaLedger::wrap(ledger,
//! directory), .. }` (the `sub2api` binary does), and by a [`Directory`] whose
//! [`Directory::key_quotas`] returns itself (the memory and SQL directories do).

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::{KeyId, UserId};
use crate::ledger::{
    Balance, Charge, Credit, CreditOutcome, Hold, HoldRequest, Ledger, LedgerError, Settlement,
};
use crate::money::Money;
use crate::store::{Directory, StoreError};

/// The outcome of asking for quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaHold {
    Held,
    /// Not enough quota left: `remaining` (quota minus used minus held, never negative).
    Exhausted {
        remaining: Money,
    },
}

/// Per-key quota accounting.
#[async_trait]
pub trait KeyQuotas: Send + Sync + 'static {
    /// Holds `amount` of `key`'s quota for `request_id`, atomically against concurrent holds.
    async fn hold_quota(
        &self,
        key: KeyId,
        request_id: &str,
        amount: Money,
        quota: Money,
    ) -> Result<QuotaHold, StoreError>;
    /// The request settled for `charged`: its quota hold (if any) becomes used quota.
    async fn settle_quota(&self, request_id: &str, charged: Money) -> Result<(), StoreError>;
    /// The request's quota hold (if any) is given back.
    async fn release_quota(&self, request_id: &str) -> Result<(), StoreError>;
}

/// A [`Ledger`] that also settles and releases the key quota holds of the requests it sees.
pub struct QuotaLedger {
    inner: Arc<dyn Ledger>,
    quotas: Arc<dyn KeyQuotas>,
}

impl QuotaLedger {
    pub fn new(inner: Arc<dyn Ledger>, quotas: Arc<dyn KeyQuotas>) -> Self {
        QuotaLedger { inner, quotas }
    }

    /// Wraps `ledger` when `directory` keeps key quotas; returns it unchanged otherwise.
    pub fn wrap(ledger: Arc<dyn Ledger>, directory: Arc<dyn Directory>) -> Arc<dyn Ledger> {
        match directory.key_quotas() {
            Some(q) => Arc::new(QuotaLedger::new(ledger, q)),
            None => ledger,
        }
    }
}

#[async_trait]
impl Ledger for QuotaLedger {
    async fn reserve(&self, req: HoldRequest) -> Result<Hold, LedgerError> {
        self.inner.reserve(req).await
    }

    async fn settle(&self, charge: Charge) -> Result<Settlement, LedgerError> {
        let request_id = charge.request_id.clone();
        let out = self.inner.settle(charge).await?;
        if let Err(e) = self.quotas.settle_quota(&request_id, out.charged).await {
            // The wallet charge stands; the quota hold expires by itself in durable stores.
            tracing::error!(%request_id, error = %e, "could not settle the key quota hold");
        }
        Ok(out)
    }

    async fn release(&self, hold: &Hold) -> Result<(), LedgerError> {
        self.inner.release(hold).await?;
        if let Err(e) = self.quotas.release_quota(&hold.request_id).await {
            tracing::error!(request_id = %hold.request_id, error = %e, "could not release the key quota hold");
        }
        Ok(())
    }

    async fn credit(&self, credit: Credit) -> Result<CreditOutcome, LedgerError> {
        self.inner.credit(credit).await
    }

    async fn balance(&self, user: UserId) -> Result<Balance, LedgerError> {
        self.inner.balance(user).await
    }
}
