use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use crate::account_provider::now_ms;
use crate::domain::{AccountId, Principal, Usage, UsageRecord};
use crate::layer::reserve::HoldCell;
use crate::ledger::{Charge, LedgerError};
use crate::meter::Ending;
use crate::metrics::Metrics;
use crate::money::Money;
use crate::request::RelayRequest;

use super::MeterSettings;

/// One response's settlement: prices the metered usage, charges it once, logs it.
pub struct Settler {
    settings: Arc<MeterSettings>,
    ctx: RelayRequest,
    principal: Principal,
    account: Option<AccountId>,
    hold: Option<Arc<HoldCell>>,
    /// The model the serving account sent upstream, when it mapped the client's: the price used
    /// when the client's model itself has none (an alias).
    upstream_model: Option<String>,
}

impl Settler {
    pub fn new(
        settings: Arc<MeterSettings>,
        ctx: RelayRequest,
        principal: Principal,
        account: Option<AccountId>,
        hold: Option<Arc<HoldCell>>,
    ) -> Self {
        Settler {
            settings,
            ctx,
            principal,
            account,
            hold,
            upstream_model: None,
        }
    }

    /// See [`Settler`]'s `upstream_model`.
    pub fn with_upstream_model(mut self, model: Option<String>) -> Self {
        self.upstream_model = model;
        self
    }

    pub(crate) fn metrics(&self) -> Arc<crate::metrics::Metrics> {
        self.settings.metrics.clone()
    }

    /// Charges `usage` and records it. Returns the amount charged once the ledger has committed.
    pub async fn settle(
        self: Arc<Self>,
        usage: Usage,
        ending: Ending,
    ) -> Result<Money, LedgerError> {
        let s = &self.settings;
        let held = self.hold.as_ref().and_then(|h| h.amount());
        let priced = match (
            s.meter
                .cost(&self.ctx.model, &usage, self.principal.multiplier()),
            &self.upstream_model,
        ) {
            (Err(crate::pricing::PricingError::UnknownModel(_)), Some(m)) => {
                s.meter.cost(m, &usage, self.principal.multiplier())
            }
            (other, _) => other,
        };
        let cost = match priced {
            Ok(c) => c,
            Err(e) => {
                // The model was priced when the hold was taken; the table changed since. Charging
                // the hold keeps the operator whole and stays within what the user agreed to.
                tracing::error!(request_id = %self.ctx.request_id.as_str(), error = %e, "pricing failed at settlement; charging the hold");
                held.unwrap_or(Money::ZERO)
            }
        };
        let charge = Charge {
            request_id: self.ctx.request_id.as_str().to_owned(),
            user_id: self.principal.user,
            group_id: self.principal.group.id,
            amount: cost,
        };
        let result = s.ledger.settle(charge).await;
        match &result {
            Ok(done) => {
                // The ledger released the hold with the settlement: make the cell forget it.
                if let Some(cell) = &self.hold {
                    cell.take();
                }
                if !done.replayed {
                    Metrics::inc(&s.metrics.settled);
                    s.metrics
                        .charged_nanos
                        .fetch_add(cost.nanos().max(0) as u64, Relaxed);
                    if held.is_some_and(|h| cost > h) {
                        Metrics::inc(&s.metrics.hold_overruns);
                        tracing::warn!(request_id = %self.ctx.request_id.as_str(), %cost, "metered cost exceeded the hold");
                    }
                }
            }
            Err(e) => {
                Metrics::inc(&s.metrics.settle_failures);
                tracing::error!(request_id = %self.ctx.request_id.as_str(), error = %e, "settlement failed");
            }
        }
        match ending {
            Ending::ClientGoneDrained | Ending::ClientGoneTimedOut => {
                Metrics::inc(&s.metrics.client_aborts)
            }
            Ending::UpstreamCut => Metrics::inc(&s.metrics.upstream_cuts),
            _ => {}
        }
        s.usage_log
            .record(UsageRecord {
                request_id: self.ctx.request_id.as_str().to_owned(),
                user_id: self.principal.user,
                key_id: self.principal.key,
                group_id: self.principal.group.id,
                account_id: self.account,
                model: self.ctx.model.clone(),
                usage,
                cost: if result.is_ok() { cost } else { Money::ZERO },
                stream: self.ctx.stream,
                ending,
                duration_ms: self.ctx.received_at.elapsed().as_millis() as u64,
                created_at: now_ms(),
            })
            .await;
        result.map(|_| cost)
    }
}
