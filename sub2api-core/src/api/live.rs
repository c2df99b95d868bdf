//! The parts of a running relay the API changes at run time: the price table ([`LiveMeter`]) and
//! the account pool ([`PoolControl`]).

use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use crate::account_provider::AccountStatus;
use crate::dialect::Dialect;
use crate::domain::{AccountId, Usage};
use crate::memory::MemoryAccountProvider;
use crate::meter::{CostEstimate, HoldPolicy, Meter, PricedMeter, UsageScanner};
use crate::money::{Money, Multiplier};
use crate::pricing::{PriceTable, PricingError};
use crate::store::StoreError;

/// A [`Meter`] whose price table can be replaced while the relay runs: requests already holding
/// keep the prices they were admitted with only as far as their hold goes; everything settled
/// after the swap is priced by the new table.
pub struct LiveMeter {
    current: RwLock<(Arc<PriceTable>, Arc<PricedMeter>)>,
    default: Arc<PriceTable>,
    policy: HoldPolicy,
    replaced: RwLock<bool>,
}

impl LiveMeter {
    /// `prices` is also the table [`LiveMeter::reset`] goes back to.
    pub fn new(prices: Arc<PriceTable>, policy: HoldPolicy) -> Self {
        let meter = Arc::new(PricedMeter::new(prices.clone()).with_policy(policy));
        LiveMeter {
            current: RwLock::new((prices.clone(), meter)),
            default: prices,
            policy,
            replaced: RwLock::new(false),
        }
    }

    pub fn prices(&self) -> Arc<PriceTable> {
        self.current.read().unwrap().0.clone()
    }

    /// Whether the table in force was replaced at run time (not the configured one).
    pub fn is_replaced(&self) -> bool {
        *self.replaced.read().unwrap()
    }

    pub fn replace(&self, prices: PriceTable) {
        let prices = Arc::new(prices);
        let meter = Arc::new(PricedMeter::new(prices.clone()).with_policy(self.policy));
        *self.current.write().unwrap() = (prices, meter);
        *self.replaced.write().unwrap() = true;
    }

    /// Back to the configured table.
    pub fn reset(&self) {
        let meter = Arc::new(PricedMeter::new(self.default.clone()).with_policy(self.policy));
        *self.current.write().unwrap() = (self.default.clone(), meter);
        *self.replaced.write().unwrap() = false;
    }

    fn meter(&self) -> Arc<PricedMeter> {
        self.current.read().unwrap().1.clone()
    }
}

impl Meter for LiveMeter {
    fn scanner(&self, dialect: Dialect, stream: bool) -> Box<dyn UsageScanner> {
        self.meter().scanner(dialect, stream)
    }

    fn cost(
        &self,
        model: &str,
        usage: &Usage,
        multiplier: Multiplier,
    ) -> Result<Money, PricingError> {
        self.meter().cost(model, usage, multiplier)
    }

    fn hold(&self, estimate: &CostEstimate, multiplier: Multiplier) -> Result<Money, PricingError> {
        self.meter().hold(estimate, multiplier)
    }
}

/// The relay's account pool as the API drives it.
#[async_trait]
pub trait PoolControl: Send + Sync + 'static {
    /// Re-reads accounts after an operator changed them.
    async fn reload(&self) -> Result<(), StoreError>;
    /// Puts an account back into service (clears a cooldown or a disablement).
    async fn clear_status(&self, id: AccountId);
    fn status(&self, id: AccountId) -> AccountStatus;
}

#[async_trait]
impl PoolControl for MemoryAccountProvider {
    async fn reload(&self) -> Result<(), StoreError> {
        MemoryAccountProvider::reload(self).await
    }

    async fn clear_status(&self, id: AccountId) {
        MemoryAccountProvider::clear_status(self, id).await
    }

    fn status(&self, id: AccountId) -> AccountStatus {
        crate::account_provider::AccountProvider::status(self, id)
    }
}
