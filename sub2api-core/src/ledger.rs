//! The [`Ledger`]: every balance change is a journal entry; requests hold their worst case before
//! going upstream and settle to the exact metered cost afterwards.
//!
//! The contract every implementation keeps (the memory one here, the SQL ones in `sub2api-sqlx`):
//! - `reserve` is atomic: holds alone never take the available balance below zero, at any
//!   concurrency.
//! - `settle` is idempotent by request id: the second call returns the first result and moves no
//!   money. It charges the metered amount even if it exceeds the hold (the vendor's count is the
//!   truth); with the default strict hold estimate that cannot happen.
//! - `credit` is idempotent by its key (a payment's trade id, a redeem code, an admin operation id).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::{GroupId, UserId};
use crate::money::Money;

/// A request to hold money before a request goes upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldRequest {
    pub request_id: String,
    pub user_id: UserId,
    pub group_id: GroupId,
    pub amount: Money,
}

/// Money set aside for one in-flight request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub request_id: String,
    pub user_id: UserId,
    pub group_id: GroupId,
    pub amount: Money,
}

/// The exact cost of a finished request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charge {
    pub request_id: String,
    pub user_id: UserId,
    pub group_id: GroupId,
    pub amount: Money,
}

/// What a settlement did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    pub request_id: String,
    pub charged: Money,
    /// True when this request id had already settled and nothing moved this time.
    pub replayed: bool,
}

/// A credit (positive) or debit (negative) outside the request path: top-ups, redeem codes, admin
/// adjustments, refunds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credit {
    pub user_id: UserId,
    pub amount: Money,
    /// Unique per real-world event; replays credit nothing more.
    pub idempotency_key: String,
    pub kind: EntryKind,
    pub memo: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditOutcome {
    pub balance: Money,
    pub replayed: bool,
}

/// A user's money: `total` is the sum of the journal; `held` is set aside for in-flight requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    pub total: Money,
    pub held: Money,
}

impl Balance {
    pub fn available(&self) -> Money {
        self.total.saturating_sub(self.held)
    }
}

/// The kinds of journal entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Credit,
    Hold,
    Settle,
    Release,
    Refund,
    Adjustment,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Credit => "credit",
            EntryKind::Hold => "hold",
            EntryKind::Settle => "settle",
            EntryKind::Release => "release",
            EntryKind::Refund => "refund",
            EntryKind::Adjustment => "adjustment",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("insufficient balance: {available} USD available, {required} USD required")]
    InsufficientBalance { available: Money, required: Money },
    #[error("unknown user {0}")]
    UnknownUser(UserId),
    #[error("a debit of {amount} USD would take the balance below zero")]
    WouldOverdraw { amount: Money },
    #[error("a hold for request {0} already exists")]
    DuplicateHold(String),
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Holds `amount` of the user's available balance, or refuses without holding anything.
    async fn reserve(&self, req: HoldRequest) -> Result<Hold, LedgerError>;

    /// Charges the exact cost and releases the rest of the request's hold (if any). Idempotent by
    /// `request_id`.
    async fn settle(&self, charge: Charge) -> Result<Settlement, LedgerError>;

    /// Gives a hold back untouched (the request failed before producing anything billable).
    /// Releasing an already settled or released hold does nothing.
    async fn release(&self, hold: &Hold) -> Result<(), LedgerError>;

    /// Credits (or, with a negative amount, debits without overdrawing) outside the request path.
    async fn credit(&self, credit: Credit) -> Result<CreditOutcome, LedgerError>;

    async fn balance(&self, user: UserId) -> Result<Balance, LedgerError>;
}
