//! Payments: users top up their balance (or buy a plan) through a provider, and every real payment
//! credits exactly once whatever the provider retries, replays or forges.
//!
//! - [`PaymentGateway`]: the provider side of a top-up. A gateway only speaks its provider's
//!   protocol: create a checkout, verify a notification from the raw body, query and refund.
//!   Implementations, each behind a cargo feature: [`stripe`] (`stripe`), [`alipay`] (`alipay`),
//!   [`wechat`] (`wechat`), [`easypay`] (`easypay`); the `payments` feature enables all four.
//! - [`service::Payments`]: orders and their compare-and-swap lifecycle over a
//!   [`service::PaymentStore`], webhook handling (verify, check amount, currency and merchant,
//!   `PENDING -> PAID`, credit through the [`crate::ledger::Ledger`] keyed by
//!   `pay:<provider>:<trade_no>`, `PAID -> COMPLETED`), expiry after the provider confirms an
//!   order unpaid, and refunds that reverse exactly the credited amount.
//! - [`PaymentsConfig`]: the `[payments]` section of the configuration file.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::UserId;
use crate::money::Money;

pub mod config;
pub mod service;
#[doc(hidden)]
pub mod test_keys;
pub mod util;

#[cfg(all(test, feature = "stripe"))]
mod tests;

#[cfg(feature = "alipay")]
pub mod alipay;
#[cfg(feature = "easypay")]
pub mod easypay;
#[cfg(any(feature = "alipay", feature = "wechat"))]
pub mod rsa_keys;
#[cfg(feature = "stripe")]
pub mod stripe;
#[cfg(feature = "wechat")]
pub mod wechat;

pub use config::{PaymentsConfig, credit_for};
pub use service::{OrderStatus, PaymentStore, Payments, StoredOrder};

/// An order as a gateway needs to see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentOrder {
    pub out_trade_no: String,
    pub user_id: UserId,
    /// In the provider currency's smallest unit (cents, fen).
    pub amount_minor: i64,
    pub currency: String,
    /// What the user gets when it is paid.
    pub credit: Money,
    pub subject: String,
    pub notify_url: String,
    pub return_url: Option<String>,
}

/// What the user is given to pay with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkout {
    pub provider_order_id: Option<String>,
    pub pay_url: Option<String>,
    pub qr_code: Option<String>,
    pub client_secret: Option<String>,
}

/// A verified statement from the provider about one order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentEvent {
    pub out_trade_no: String,
    /// The provider's trade id: the idempotency key of the credit.
    pub provider_trade_no: String,
    pub amount_minor: i64,
    pub currency: String,
    pub status: PaymentStatus,
    /// Merchant/app id the notification was addressed to, checked against configuration.
    pub merchant_id: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    /// Not paid (yet); for a query, also "the provider has no such trade".
    Pending,
    Paid,
    Failed,
    Closed,
    Refunded,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRequest {
    pub out_trade_no: String,
    pub provider_trade_no: String,
    pub refund_no: String,
    pub amount_minor: i64,
    pub total_minor: i64,
    pub currency: String,
    pub reason: String,
}

/// What a query needs: the merchant's order number and, when creation returned one, the
/// provider's own order id (a Stripe Checkout Session id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryRequest {
    pub out_trade_no: String,
    pub provider_order_id: Option<String>,
    pub amount_minor: i64,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    #[error("notification signature invalid")]
    BadSignature,
    #[error("notification timestamp outside the allowed window")]
    StaleTimestamp,
    #[error("notification malformed: {0}")]
    Malformed(String),
    #[error("provider refused: {0}")]
    Provider(String),
    #[error("provider unreachable: {0}")]
    Transport(String),
}

#[async_trait]
pub trait PaymentGateway: Send + Sync + 'static {
    /// The provider's name in routes and orders (`stripe`, `alipay`, `wechat`, `easypay`).
    fn provider(&self) -> &'static str;

    async fn create_checkout(&self, order: &PaymentOrder) -> Result<Checkout, PaymentError>;

    /// Verifies a notification on its raw bytes (body and, for GET notifies, query string).
    fn verify_notification(
        &self,
        headers: &http::HeaderMap,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<PaymentEvent, PaymentError>;

    /// The exact acknowledgement the provider expects once a notification has been handled.
    fn acknowledgement(&self) -> (http::StatusCode, &'static str);

    /// Asks the provider where an order stands. `Paid` comes with the trade id and amount, so a
    /// payment whose notification never arrived can still be credited.
    async fn query(&self, order: &QueryRequest) -> Result<PaymentEvent, PaymentError>;

    async fn refund(&self, refund: &RefundRequest) -> Result<(), PaymentError>;
}
