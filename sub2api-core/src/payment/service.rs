//! Orders and notifications: [`Payments`] over a [`PaymentStore`] and the [`Ledger`].
//!
//! Exactly-once crediting rests on two things: the order's status moves by compare-and-swap
//! (`PENDING -> PAID -> COMPLETED`; only one handler wins each step), and the credit itself is
//! idempotent in the ledger by `pay:<provider>:<provider trade id>`. A handler that wins
//! `PENDING -> PAID` and dies before crediting leaves a `PAID` order, which the next notification,
//! the expiry job or an operator's retry completes with the same key: never twice, never lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::config::{PaymentsConfig, credit_for};
use super::{
    PaymentError, PaymentEvent, PaymentGateway, PaymentOrder, PaymentStatus, QueryRequest,
    RefundRequest,
};
use crate::domain::UserId;
use crate::ledger::{Credit, EntryKind, Ledger, LedgerError};
use crate::money::Money;
use crate::store::StoreError;

/// Where an order is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Pending,
    Paid,
    Completed,
    Expired,
    Cancelled,
    Failed,
    RefundRequested,
    Refunded,
}

impl OrderStatus {
    pub const ALL: &'static [OrderStatus] = &[
        OrderStatus::Pending,
        OrderStatus::Paid,
        OrderStatus::Completed,
        OrderStatus::Expired,
        OrderStatus::Cancelled,
        OrderStatus::Failed,
        OrderStatus::RefundRequested,
        OrderStatus::Refunded,
    ];

    /// The stored (lowercase) name.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Paid => "paid",
            OrderStatus::Completed => "completed",
            OrderStatus::Expired => "expired",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Failed => "failed",
            OrderStatus::RefundRequested => "refund_requested",
            OrderStatus::Refunded => "refunded",
        }
    }

    /// The name in API answers (`PENDING`).
    pub fn api_name(self) -> String {
        self.as_str().to_ascii_uppercase()
    }

    /// Parses either form; the legacy `closed` reads as `expired`.
    pub fn parse(s: &str) -> Option<OrderStatus> {
        let l = s.to_ascii_lowercase();
        if l == "closed" {
            return Some(OrderStatus::Expired);
        }
        OrderStatus::ALL.iter().copied().find(|o| o.as_str() == l)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewPaymentOrder {
    pub out_trade_no: String,
    pub user_id: UserId,
    pub provider: String,
    pub amount_minor: i64,
    pub currency: String,
    pub credit: Money,
    pub plan_id: Option<i64>,
    pub expires_at_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredOrder {
    pub id: i64,
    pub out_trade_no: String,
    pub user_id: UserId,
    pub provider: String,
    pub amount_minor: i64,
    pub currency: String,
    pub credit: Money,
    pub status: OrderStatus,
    pub provider_trade_no: Option<String>,
    pub provider_order_id: Option<String>,
    pub plan_id: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub paid_at_ms: Option<i64>,
}

/// Which orders to list.
#[derive(Clone, Debug, Default)]
pub struct OrderFilter {
    pub user: Option<UserId>,
    pub status: Option<OrderStatus>,
    pub provider: Option<String>,
    /// Only orders whose `expires_at` is at or before this.
    pub expires_before_ms: Option<i64>,
    pub limit: u32,
}

/// A refused or odd notification, kept for the operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: i64,
    pub provider: String,
    pub out_trade_no: Option<String>,
    pub outcome: String,
    pub detail: String,
}

#[async_trait]
pub trait PaymentStore: Send + Sync + 'static {
    /// A duplicate `out_trade_no` is a [`StoreError::Conflict`].
    async fn insert_payment_order(&self, order: NewPaymentOrder)
    -> Result<StoredOrder, StoreError>;
    async fn payment_order(&self, out_trade_no: &str) -> Result<Option<StoredOrder>, StoreError>;
    async fn payment_order_by_id(&self, id: i64) -> Result<Option<StoredOrder>, StoreError>;
    /// Newest first.
    async fn payment_orders(&self, filter: &OrderFilter) -> Result<Vec<StoredOrder>, StoreError>;
    /// Moves `from -> to` iff the order is in `from`; records `provider_trade_no` when given
    /// (unique across orders); moving to `Paid` stamps `paid_at`. Returns whether this call moved it.
    async fn transition_payment_order(
        &self,
        out_trade_no: &str,
        from: OrderStatus,
        to: OrderStatus,
        provider_trade_no: Option<&str>,
    ) -> Result<bool, StoreError>;
    async fn set_provider_order_id(&self, out_trade_no: &str, id: &str) -> Result<(), StoreError>;
    async fn payment_audit(&self, entry: AuditEntry) -> Result<(), StoreError>;
    async fn payment_audits(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError>;
}

fn now_ms() -> i64 {
    crate::account_provider::now_ms()
}

/// [`PaymentStore`] in memory (tests, the `memory` database).
#[derive(Default)]
pub struct MemoryPaymentStore {
    state: Mutex<(Vec<StoredOrder>, Vec<AuditEntry>)>,
}

impl MemoryPaymentStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl PaymentStore for MemoryPaymentStore {
    async fn insert_payment_order(&self, o: NewPaymentOrder) -> Result<StoredOrder, StoreError> {
        let mut s = self.state.lock().unwrap();
        if s.0.iter().any(|x| x.out_trade_no == o.out_trade_no) {
            return Err(StoreError::Conflict("order exists".into()));
        }
        let now = now_ms();
        let rec = StoredOrder {
            id: s.0.len() as i64 + 1,
            out_trade_no: o.out_trade_no,
            user_id: o.user_id,
            provider: o.provider,
            amount_minor: o.amount_minor,
            currency: o.currency,
            credit: o.credit,
            status: OrderStatus::Pending,
            provider_trade_no: None,
            provider_order_id: None,
            plan_id: o.plan_id,
            created_at_ms: now,
            updated_at_ms: now,
            expires_at_ms: o.expires_at_ms,
            paid_at_ms: None,
        };
        s.0.push(rec.clone());
        Ok(rec)
    }

    async fn payment_order(&self, no: &str) -> Result<Option<StoredOrder>, StoreError> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .0
            .iter()
            .find(|o| o.out_trade_no == no)
            .cloned())
    }

    async fn payment_order_by_id(&self, id: i64) -> Result<Option<StoredOrder>, StoreError> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .0
            .iter()
            .find(|o| o.id == id)
            .cloned())
    }

    async fn payment_orders(&self, f: &OrderFilter) -> Result<Vec<StoredOrder>, StoreError> {
        let s = self.state.lock().unwrap();
        let limit = if f.limit == 0 {
            usize::MAX
        } else {
            f.limit as usize
        };
        Ok(s.0
            .iter()
            .rev()
            .filter(|o| f.user.is_none_or(|u| o.user_id == u))
            .filter(|o| f.status.is_none_or(|st| o.status == st))
            .filter(|o| f.provider.as_ref().is_none_or(|p| &o.provider == p))
            .filter(|o| {
                f.expires_before_ms
                    .is_none_or(|t| o.expires_at_ms.is_some_and(|e| e <= t))
            })
            .take(limit)
            .cloned()
            .collect())
    }

    async fn transition_payment_order(
        &self,
        no: &str,
        from: OrderStatus,
        to: OrderStatus,
        trade: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut s = self.state.lock().unwrap();
        if let Some(t) = trade
            && s.0
                .iter()
                .any(|o| o.out_trade_no != no && o.provider_trade_no.as_deref() == Some(t))
        {
            return Err(StoreError::Conflict(
                "provider trade number belongs to another order".into(),
            ));
        }
        let Some(o) = s.0.iter_mut().find(|o| o.out_trade_no == no) else {
            return Ok(false);
        };
        if o.status != from {
            return Ok(false);
        }
        let now = now_ms();
        o.status = to;
        o.updated_at_ms = now;
        if let Some(t) = trade {
            o.provider_trade_no = Some(t.to_owned());
        }
        if to == OrderStatus::Paid {
            o.paid_at_ms = Some(now);
        }
        Ok(true)
    }

    async fn set_provider_order_id(&self, no: &str, id: &str) -> Result<(), StoreError> {
        if let Some(o) = self
            .state
            .lock()
            .unwrap()
            .0
            .iter_mut()
            .find(|o| o.out_trade_no == no)
        {
            o.provider_order_id = Some(id.to_owned());
        }
        Ok(())
    }

    async fn payment_audit(&self, e: AuditEntry) -> Result<(), StoreError> {
        self.state.lock().unwrap().1.push(e);
        Ok(())
    }

    async fn payment_audits(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let s = self.state.lock().unwrap();
        Ok(s.1
            .iter()
            .rev()
            .take(limit.max(1) as usize)
            .cloned()
            .collect())
    }
}

/// An unpaid answer to a query.
pub fn unpaid(order: &QueryRequest) -> PaymentEvent {
    PaymentEvent {
        out_trade_no: order.out_trade_no.clone(),
        provider_trade_no: String::new(),
        amount_minor: order.amount_minor,
        currency: order.currency.clone(),
        status: PaymentStatus::Pending,
        merchant_id: None,
    }
}

/// A configured provider: its gateway and what orders through it are worth.
#[derive(Clone)]
pub struct Provider {
    pub gateway: Arc<dyn PaymentGateway>,
    pub currency: String,
    pub usd_per_unit: String,
    /// The merchant/app id notifications must be addressed to (`None`: not checked).
    pub merchant_id: Option<String>,
}

/// Why an order operation failed, for the API to render.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayFailure {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("payment provider: {0}")]
    Provider(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("ledger: {0}")]
    Ledger(String),
}

impl From<LedgerError> for PayFailure {
    fn from(e: LedgerError) -> Self {
        PayFailure::Ledger(e.to_string())
    }
}

/// What the expiry sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    pub expired: u32,
    pub completed: u32,
    pub kept: u32,
}

/// A newly created order and what to pay it with.
#[derive(Clone, Debug)]
pub struct CreatedOrder {
    pub order: StoredOrder,
    pub checkout: super::Checkout,
}

/// Fulfils a paid plan order (assigns or extends the subscription). Credited orders need none.
/// Must be idempotent by the order: called again for the same order (a repeated notification, a
/// retry after a crash) it grants nothing more.
#[async_trait]
pub trait PlanFulfiller: Send + Sync + 'static {
    async fn fulfil_plan(
        &self,
        user: UserId,
        plan_id: i64,
        order: &StoredOrder,
    ) -> Result<(), StoreError>;

    /// Takes back what [`PlanFulfiller::fulfil_plan`] gave for `order` (a refund), once: a
    /// second call for the same order changes nothing.
    async fn take_back_plan(&self, plan_id: i64, order: &StoredOrder) -> Result<(), StoreError>;
}

struct Inner {
    config: PaymentsConfig,
    providers: HashMap<String, Provider>,
    store: Arc<dyn PaymentStore>,
    ledger: Arc<dyn Ledger>,
    plans: Option<Arc<dyn PlanFulfiller>>,
}

/// The payments flow. Cheap to clone.
#[derive(Clone)]
pub struct Payments {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Payments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.inner.providers.keys().collect();
        names.sort();
        write!(f, "Payments({names:?})")
    }
}

impl Payments {
    pub fn new(
        config: PaymentsConfig,
        store: Arc<dyn PaymentStore>,
        ledger: Arc<dyn Ledger>,
    ) -> Self {
        Payments {
            inner: Arc::new(Inner {
                config,
                providers: HashMap::new(),
                store,
                ledger,
                plans: None,
            }),
        }
    }

    /// Adds a provider (before the service is shared).
    pub fn with_provider(mut self, p: Provider) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("configure before sharing");
        inner.providers.insert(p.gateway.provider().to_owned(), p);
        self
    }

    pub fn with_plans(mut self, plans: Arc<dyn PlanFulfiller>) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("configure before sharing")
            .plans = Some(plans);
        self
    }

    /// Builds the gateways the configuration names (each needs its cargo feature).
    pub fn from_config(
        config: PaymentsConfig,
        store: Arc<dyn PaymentStore>,
        ledger: Arc<dyn Ledger>,
        http: reqwest::Client,
    ) -> Result<Self, String> {
        #[allow(unused_mut)]
        let mut p = Payments::new(config.clone(), store, ledger);
        let _ = &http;
        if let Some(c) = config.stripe.clone() {
            #[cfg(feature = "stripe")]
            {
                credit_for(100, &c.currency, &c.usd_per_unit)
                    .map_err(|e| format!("payments.stripe: {e}"))?;
                p = p.with_provider(Provider {
                    currency: c.currency.clone(),
                    usd_per_unit: c.usd_per_unit.clone(),
                    merchant_id: None,
                    gateway: Arc::new(super::stripe::StripeGateway::new(c, http.clone())),
                });
            }
            #[cfg(not(feature = "stripe"))]
            {
                let _ = c;
                return Err("[payments.stripe] needs sub2api-core's `stripe` feature".into());
            }
        }
        if let Some(c) = config.alipay.clone() {
            #[cfg(feature = "alipay")]
            {
                credit_for(100, &c.currency, &c.usd_per_unit)
                    .map_err(|e| format!("payments.alipay: {e}"))?;
                p = p.with_provider(Provider {
                    currency: c.currency.clone(),
                    usd_per_unit: c.usd_per_unit.clone(),
                    merchant_id: Some(c.app_id.clone()),
                    gateway: Arc::new(super::alipay::AlipayGateway::new(c, http.clone())?),
                });
            }
            #[cfg(not(feature = "alipay"))]
            {
                let _ = c;
                return Err("[payments.alipay] needs sub2api-core's `alipay` feature".into());
            }
        }
        if let Some(c) = config.wechat.clone() {
            #[cfg(feature = "wechat")]
            {
                credit_for(100, &c.currency, &c.usd_per_unit)
                    .map_err(|e| format!("payments.wechat: {e}"))?;
                p = p.with_provider(Provider {
                    currency: c.currency.clone(),
                    usd_per_unit: c.usd_per_unit.clone(),
                    merchant_id: Some(c.mchid.clone()),
                    gateway: Arc::new(super::wechat::WechatGateway::new(c, http.clone())?),
                });
            }
            #[cfg(not(feature = "wechat"))]
            {
                let _ = c;
                return Err("[payments.wechat] needs sub2api-core's `wechat` feature".into());
            }
        }
        if let Some(c) = config.easypay.clone() {
            #[cfg(feature = "easypay")]
            {
                credit_for(100, &c.currency, &c.usd_per_unit)
                    .map_err(|e| format!("payments.easypay: {e}"))?;
                p = p.with_provider(Provider {
                    currency: c.currency.clone(),
                    usd_per_unit: c.usd_per_unit.clone(),
                    merchant_id: Some(c.pid.clone()),
                    gateway: Arc::new(super::easypay::EasyPayGateway::new(c, http.clone())),
                });
            }
            #[cfg(not(feature = "easypay"))]
            {
                let _ = c;
                return Err("[payments.easypay] needs sub2api-core's `easypay` feature".into());
            }
        }
        Ok(p)
    }

    pub fn config(&self) -> &PaymentsConfig {
        &self.inner.config
    }

    pub fn store(&self) -> &Arc<dyn PaymentStore> {
        &self.inner.store
    }

    /// Configured provider names, sorted.
    pub fn provider_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.providers.keys().cloned().collect();
        v.sort();
        v
    }

    pub fn provider(&self, name: &str) -> Option<&Provider> {
        self.inner.providers.get(name)
    }

    fn notify_url(&self, provider: &str) -> String {
        let base = self
            .inner
            .config
            .public_base_url
            .as_deref()
            .unwrap_or("http://127.0.0.1:8080");
        format!(
            "{}/api/v1/payments/webhook/{provider}",
            base.trim_end_matches('/')
        )
    }

    /// Creates an order for `amount_minor` and asks the provider for a checkout.
    pub async fn create_order(
        &self,
        user: UserId,
        provider: &str,
        amount_minor: i64,
        plan_id: Option<i64>,
    ) -> Result<CreatedOrder, PayFailure> {
        let p = self
            .provider(provider)
            .ok_or_else(|| PayFailure::Invalid(format!("provider `{provider}` is not configured")))?
            .clone();
        let c = &self.inner.config;
        if amount_minor < c.min_amount || amount_minor > c.max_amount {
            return Err(PayFailure::Invalid(format!(
                "amount must be between {} and {} (minor units)",
                c.min_amount, c.max_amount
            )));
        }
        let pending = self
            .inner
            .store
            .payment_orders(&OrderFilter {
                user: Some(user),
                status: Some(OrderStatus::Pending),
                ..Default::default()
            })
            .await?;
        if pending.len() >= c.max_pending_per_user as usize {
            return Err(PayFailure::Conflict(format!(
                "at most {} unpaid orders at a time: pay or cancel one first",
                c.max_pending_per_user
            )));
        }
        if plan_id.is_some() && self.inner.plans.is_none() {
            return Err(PayFailure::Invalid("plan orders are not enabled".into()));
        }
        let credit = if plan_id.is_some() {
            Money::ZERO
        } else {
            credit_for(amount_minor, &p.currency, &p.usd_per_unit).map_err(PayFailure::Invalid)?
        };
        let rnd: [u8; 5] = rand::random();
        let out_trade_no = format!("S2A{}{}", now_ms(), hex::encode(rnd));
        let order = self
            .inner
            .store
            .insert_payment_order(NewPaymentOrder {
                out_trade_no: out_trade_no.clone(),
                user_id: user,
                provider: provider.to_owned(),
                amount_minor,
                currency: p.currency.clone(),
                credit,
                plan_id,
                expires_at_ms: Some(now_ms() + (c.order_timeout_secs as i64) * 1000),
            })
            .await?;
        let req = PaymentOrder {
            out_trade_no: out_trade_no.clone(),
            user_id: user,
            amount_minor,
            currency: p.currency.clone(),
            credit,
            subject: match plan_id {
                Some(plan) => format!("Subscription plan {plan} ({out_trade_no})"),
                None => format!("Balance top-up {out_trade_no}"),
            },
            notify_url: self.notify_url(provider),
            return_url: c.public_base_url.clone(),
        };
        match p.gateway.create_checkout(&req).await {
            Ok(checkout) => {
                if let Some(id) = &checkout.provider_order_id {
                    self.inner
                        .store
                        .set_provider_order_id(&out_trade_no, id)
                        .await?;
                }
                let order = self
                    .inner
                    .store
                    .payment_order(&out_trade_no)
                    .await?
                    .unwrap_or(order);
                Ok(CreatedOrder { order, checkout })
            }
            Err(e) => {
                self.inner
                    .store
                    .transition_payment_order(
                        &out_trade_no,
                        OrderStatus::Pending,
                        OrderStatus::Failed,
                        None,
                    )
                    .await?;
                Err(PayFailure::Provider(e.to_string()))
            }
        }
    }

    async fn audit(
        &self,
        provider: &str,
        out_trade_no: Option<&str>,
        outcome: &str,
        detail: String,
    ) {
        tracing::warn!(provider, out_trade_no, outcome, detail = %detail, "payment notification refused");
        let _ = self
            .inner
            .store
            .payment_audit(AuditEntry {
                at_ms: now_ms(),
                provider: provider.to_owned(),
                out_trade_no: out_trade_no.map(str::to_owned),
                outcome: outcome.to_owned(),
                detail,
            })
            .await;
    }

    /// Handles a provider notification on its raw bytes; returns the exact answer to send.
    pub async fn handle_notification(
        &self,
        provider: &str,
        headers: &http::HeaderMap,
        query: Option<&str>,
        body: &[u8],
    ) -> (StatusCode, String) {
        let Some(p) = self.provider(provider).cloned() else {
            return (StatusCode::NOT_FOUND, "unknown provider".into());
        };
        let refuse = |msg: &str| -> (StatusCode, String) {
            if provider == "wechat" {
                (
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"code": "FAIL", "message": msg}).to_string(),
                )
            } else {
                (StatusCode::BAD_REQUEST, "fail".into())
            }
        };
        let (ack_status, ack_body) = p.gateway.acknowledgement();
        let ack = (ack_status, ack_body.to_owned());
        let event = match p.gateway.verify_notification(headers, query, body) {
            Ok(e) => e,
            Err(e) => {
                let outcome = match e {
                    PaymentError::BadSignature => "bad_signature",
                    PaymentError::StaleTimestamp => "stale_timestamp",
                    _ => "malformed",
                };
                self.audit(provider, None, outcome, e.to_string()).await;
                return refuse(outcome);
            }
        };
        if event.status != PaymentStatus::Paid {
            // Failures and pending states change nothing: the order may still be paid later.
            return ack;
        }
        match self.apply_paid(&p, provider, &event).await {
            Ok(Applied::Refused(outcome, detail)) => {
                self.audit(provider, Some(&event.out_trade_no), outcome, detail)
                    .await;
                refuse(outcome)
            }
            Ok(Applied::Unknown) => {
                self.audit(
                    provider,
                    Some(&event.out_trade_no),
                    "unknown_order",
                    "acknowledged".into(),
                )
                .await;
                ack
            }
            Ok(Applied::Done) => ack,
            Err(e) => {
                tracing::error!(provider, error = %e, "payment notification not applied; the provider will retry");
                (StatusCode::INTERNAL_SERVER_ERROR, "retry".into())
            }
        }
    }

    /// Checks a verified `Paid` statement against its order, then pays and fulfils it once.
    async fn apply_paid(
        &self,
        p: &Provider,
        provider: &str,
        e: &PaymentEvent,
    ) -> Result<Applied, PayFailure> {
        let Some(order) = self.inner.store.payment_order(&e.out_trade_no).await? else {
            return Ok(Applied::Unknown);
        };
        if order.provider != provider {
            return Ok(Applied::Refused(
                "wrong_provider",
                format!("order is for {}", order.provider),
            ));
        }
        if e.amount_minor != order.amount_minor {
            return Ok(Applied::Refused(
                "wrong_amount",
                format!(
                    "paid {} but the order is {}",
                    e.amount_minor, order.amount_minor
                ),
            ));
        }
        if !e.currency.is_empty() && !e.currency.eq_ignore_ascii_case(&order.currency) {
            return Ok(Applied::Refused(
                "wrong_currency",
                format!("paid in {}", e.currency),
            ));
        }
        if let (Some(want), Some(got)) = (&p.merchant_id, &e.merchant_id)
            && want != got
        {
            return Ok(Applied::Refused(
                "wrong_merchant",
                format!("addressed to {got}"),
            ));
        }
        if e.provider_trade_no.is_empty() {
            return Ok(Applied::Refused("malformed", "no provider trade id".into()));
        }
        // Paid, even after the order expired or was cancelled: real money arrived.
        for from in [
            OrderStatus::Pending,
            OrderStatus::Expired,
            OrderStatus::Cancelled,
            OrderStatus::Failed,
        ] {
            if order.status == from {
                self.inner
                    .store
                    .transition_payment_order(
                        &order.out_trade_no,
                        from,
                        OrderStatus::Paid,
                        Some(&e.provider_trade_no),
                    )
                    .await?;
            }
        }
        let order = self
            .inner
            .store
            .payment_order(&e.out_trade_no)
            .await?
            .unwrap_or(order);
        if order.status == OrderStatus::Paid {
            self.fulfil(&order).await?;
        }
        Ok(Applied::Done)
    }

    /// Credits (or assigns the plan of) a `PAID` order and moves it to `COMPLETED`. Safe to call
    /// any number of times, concurrently: the credit is keyed by the provider's trade id.
    pub async fn fulfil(&self, order: &StoredOrder) -> Result<(), PayFailure> {
        let trade = order
            .provider_trade_no
            .clone()
            .ok_or_else(|| PayFailure::Conflict("a paid order has a provider trade id".into()))?;
        match order.plan_id {
            Some(plan) => {
                let plans = self.plans()?;
                // The grant is idempotent by the order (assigning twice would extend twice), so it
                // runs before PAID -> COMPLETED: a handler dying in between leaves a PAID order whose
                // retry grants nothing more.
                plans.fulfil_plan(order.user_id, plan, order).await?;
            }
            None => {
                self.inner
                    .ledger
                    .credit(Credit {
                        user_id: order.user_id,
                        amount: order.credit,
                        idempotency_key: format!("pay:{}:{trade}", order.provider),
                        kind: EntryKind::Credit,
                        memo: format!("top-up {} via {}", order.out_trade_no, order.provider),
                    })
                    .await?;
            }
        }
        self.inner
            .store
            .transition_payment_order(
                &order.out_trade_no,
                OrderStatus::Paid,
                OrderStatus::Completed,
                None,
            )
            .await?;
        Ok(())
    }

    /// Re-runs fulfilment of a `PAID` order (an operator's retry).
    pub async fn retry(&self, id: i64) -> Result<StoredOrder, PayFailure> {
        let order = self.order_by_id(id).await?;
        if order.status != OrderStatus::Paid {
            return Err(PayFailure::Conflict(format!(
                "order is {}, not PAID",
                order.status.api_name()
            )));
        }
        self.fulfil(&order).await?;
        self.order_by_id(id).await
    }

    pub async fn order_by_id(&self, id: i64) -> Result<StoredOrder, PayFailure> {
        self.inner
            .store
            .payment_order_by_id(id)
            .await?
            .ok_or_else(|| PayFailure::NotFound("order".into()))
    }

    /// A user cancels their own unpaid order.
    pub async fn cancel(&self, user: UserId, id: i64) -> Result<StoredOrder, PayFailure> {
        let order = self.order_by_id(id).await?;
        if order.user_id != user {
            return Err(PayFailure::NotFound("order".into()));
        }
        if !self
            .inner
            .store
            .transition_payment_order(
                &order.out_trade_no,
                OrderStatus::Pending,
                OrderStatus::Cancelled,
                None,
            )
            .await?
        {
            return Err(PayFailure::Conflict(
                "only a PENDING order can be cancelled".into(),
            ));
        }
        self.order_by_id(id).await
    }

    /// Expires due unpaid orders, each only after its provider confirms it unpaid; one the
    /// provider reports paid is completed instead. A provider that cannot be asked keeps it.
    pub async fn sweep(&self, now_ms: i64) -> Result<SweepReport, PayFailure> {
        let due = self
            .inner
            .store
            .payment_orders(&OrderFilter {
                status: Some(OrderStatus::Pending),
                expires_before_ms: Some(now_ms),
                limit: 500,
                ..Default::default()
            })
            .await?;
        let mut r = SweepReport::default();
        for order in due {
            let Some(p) = self.provider(&order.provider).cloned() else {
                r.kept += 1;
                continue;
            };
            let q = QueryRequest {
                out_trade_no: order.out_trade_no.clone(),
                provider_order_id: order.provider_order_id.clone(),
                amount_minor: order.amount_minor,
                currency: order.currency.clone(),
            };
            match p.gateway.query(&q).await {
                Ok(e) if e.status == PaymentStatus::Paid => {
                    match self.apply_paid(&p, &order.provider, &e).await? {
                        Applied::Done => r.completed += 1,
                        Applied::Refused(outcome, detail) => {
                            self.audit(
                                &order.provider,
                                Some(&order.out_trade_no),
                                outcome,
                                format!("query: {detail}"),
                            )
                            .await;
                            r.kept += 1;
                        }
                        Applied::Unknown => r.kept += 1,
                    }
                }
                Ok(_) => {
                    if self
                        .inner
                        .store
                        .transition_payment_order(
                            &order.out_trade_no,
                            OrderStatus::Pending,
                            OrderStatus::Expired,
                            None,
                        )
                        .await?
                    {
                        r.expired += 1;
                    }
                }
                Err(e) => {
                    tracing::warn!(order = %order.out_trade_no, error = %e, "cannot ask the provider; order kept");
                    r.kept += 1;
                }
            }
        }
        Ok(r)
    }

    /// Refunds a completed order in full, then through the provider. A balance order debits
    /// exactly the credited amount (never below zero); a plan order takes back exactly the time
    /// its grant added. Both are idempotent by the order, so retrying a `REFUND_REQUESTED` order
    /// (after a crash or a provider error) re-asks the provider without taking anything twice.
    pub async fn refund(&self, id: i64, reason: &str) -> Result<StoredOrder, PayFailure> {
        let order = self.order_by_id(id).await?;
        match order.status {
            OrderStatus::Completed => {
                if !self
                    .inner
                    .store
                    .transition_payment_order(
                        &order.out_trade_no,
                        OrderStatus::Completed,
                        OrderStatus::RefundRequested,
                        None,
                    )
                    .await?
                {
                    return Err(PayFailure::Conflict(
                        "the order changed meanwhile; try again".into(),
                    ));
                }
                if let Err(e) = self.take_back(&order, reason).await {
                    self.inner
                        .store
                        .transition_payment_order(
                            &order.out_trade_no,
                            OrderStatus::RefundRequested,
                            OrderStatus::Completed,
                            None,
                        )
                        .await?;
                    return Err(e);
                }
            }
            // A refund that stopped half-way: what it took is taken at most once.
            OrderStatus::RefundRequested => self.take_back(&order, reason).await?,
            other => {
                return Err(PayFailure::Conflict(format!(
                    "order is {}, not COMPLETED",
                    other.api_name()
                )));
            }
        }
        let trade = order.provider_trade_no.clone().unwrap_or_default();
        let p = self
            .provider(&order.provider)
            .ok_or_else(|| PayFailure::Invalid("provider no longer configured".into()))?;
        p.gateway
            .refund(&RefundRequest {
                out_trade_no: order.out_trade_no.clone(),
                provider_trade_no: trade,
                refund_no: format!("R{}", order.out_trade_no),
                amount_minor: order.amount_minor,
                total_minor: order.amount_minor,
                currency: order.currency.clone(),
                reason: reason.to_owned(),
            })
            .await
            .map_err(|e| {
                PayFailure::Provider(format!(
                    "{e} (the order stays REFUND_REQUESTED; retry the refund)"
                ))
            })?;
        self.inner
            .store
            .transition_payment_order(
                &order.out_trade_no,
                OrderStatus::RefundRequested,
                OrderStatus::Refunded,
                None,
            )
            .await?;
        self.order_by_id(id).await
    }

    fn plans(&self) -> Result<&Arc<dyn PlanFulfiller>, PayFailure> {
        self.inner
            .plans
            .as_ref()
            .ok_or_else(|| PayFailure::Invalid("plan orders are not enabled".into()))
    }

    /// Takes back what a completed order gave: the credit (a debit keyed by the provider's trade
    /// id, so a second one is a replay) or the plan time (keyed by the order's grant).
    async fn take_back(&self, order: &StoredOrder, reason: &str) -> Result<(), PayFailure> {
        match order.plan_id {
            Some(plan) => {
                let plans = self.plans()?;
                plans.take_back_plan(plan, order).await?;
            }
            None => {
                let trade = order.provider_trade_no.clone().unwrap_or_default();
                self.inner
                    .ledger
                    .credit(Credit {
                        user_id: order.user_id,
                        amount: Money::from_nanos(-order.credit.nanos()),
                        idempotency_key: format!("refund:{}:{trade}", order.provider),
                        kind: EntryKind::Refund,
                        memo: format!("refund of {}: {reason}", order.out_trade_no),
                    })
                    .await
                    .map_err(|e| {
                        PayFailure::Conflict(format!("cannot take the credit back: {e}"))
                    })?;
            }
        }
        Ok(())
    }

    /// Asks every provider about an order that cannot exist: reachable and answering.
    pub async fn health(&self) -> Vec<(String, Result<(), String>)> {
        let mut out = Vec::new();
        for name in self.provider_names() {
            let p = &self.inner.providers[&name];
            let q = QueryRequest {
                out_trade_no: format!("S2AHEALTH{}", now_ms()),
                provider_order_id: None,
                amount_minor: 1,
                currency: p.currency.clone(),
            };
            let r = p
                .gateway
                .query(&q)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            out.push((name, r));
        }
        out
    }

    /// Runs [`Payments::sweep`] every `sweep_interval_secs` until the task is dropped.
    pub fn spawn_sweeper(&self) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let every = std::time::Duration::from_secs(self.inner.config.sweep_interval_secs.max(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Err(e) = me.sweep(now_ms()).await {
                    tracing::warn!(error = %e, "payment expiry sweep failed");
                }
            }
        })
    }
}

enum Applied {
    Done,
    Unknown,
    Refused(&'static str, String),
}
