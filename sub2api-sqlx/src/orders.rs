//! Payment orders: the rows a checkout creates and a provider's notification settles.
//!
//! Only what the payments flow needs from storage: insert, read, and a compare-and-swap status
//! transition. The CAS is what makes webhook handling safe under provider retries and concurrent
//! notifications: exactly one handler moves an order from `pending` to `paid` (and records the
//! provider's trade number, unique across orders), and only that handler credits the wallet —
//! whose credit is itself idempotent by the provider trade number.

use serde::{Deserialize, Serialize};
use sub2api_core::domain::UserId;
use sub2api_core::money::Money;
use sub2api_core::payment::PaymentStatus;
use sub2api_core::store::StoreError;

use crate::db::{Q, Row};
use crate::subscriptions::PlanId;
use crate::{SqlStore, store_err};

/// What an order buys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderKind {
    Balance,
    Plan,
}

impl OrderKind {
    fn as_str(self) -> &'static str {
        match self {
            OrderKind::Balance => "balance",
            OrderKind::Plan => "plan",
        }
    }
}

pub(crate) fn status_str(s: PaymentStatus) -> &'static str {
    match s {
        PaymentStatus::Pending => "pending",
        PaymentStatus::Paid => "paid",
        PaymentStatus::Failed => "failed",
        PaymentStatus::Closed => "closed",
        PaymentStatus::Refunded => "refunded",
    }
}

fn parse_status(s: &str) -> Result<PaymentStatus, sqlx::Error> {
    Ok(match s {
        "pending" => PaymentStatus::Pending,
        // The full lifecycle (0030_payments) seen through the provider-level status.
        "paid" | "completed" | "refund_requested" => PaymentStatus::Paid,
        "expired" | "cancelled" => PaymentStatus::Closed,
        "failed" => PaymentStatus::Failed,
        "closed" => PaymentStatus::Closed,
        "refunded" => PaymentStatus::Refunded,
        other => {
            return Err(sqlx::Error::Decode(
                format!("unknown order status `{other}`").into(),
            ));
        }
    })
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOrder {
    pub out_trade_no: String,
    pub user_id: UserId,
    pub provider: String,
    /// In the provider currency's smallest unit.
    pub amount_minor: i64,
    pub currency: String,
    /// What the user gets when it is paid.
    pub credit: Money,
    pub kind: OrderKind,
    pub plan_id: Option<PlanId>,
    pub expires_at_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    pub id: i64,
    pub out_trade_no: String,
    pub user_id: UserId,
    pub provider: String,
    pub amount_minor: i64,
    pub currency: String,
    pub credit: Money,
    pub status: PaymentStatus,
    pub provider_trade_no: Option<String>,
    pub kind: OrderKind,
    pub plan_id: Option<PlanId>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub paid_at_ms: Option<i64>,
}

const ORDER_COLUMNS: &str = "id, out_trade_no, user_id, provider, amount_minor, currency, credit, status, \
    provider_trade_no, kind, plan_id, created_at, updated_at, expires_at, paid_at";

fn order_from_row(r: &Row) -> Result<OrderRecord, sqlx::Error> {
    Ok(OrderRecord {
        id: r.i64("id")?,
        out_trade_no: r.text("out_trade_no")?,
        user_id: UserId(r.i64("user_id")?),
        provider: r.text("provider")?,
        amount_minor: r.i64("amount_minor")?,
        currency: r.text("currency")?,
        credit: Money::from_nanos(r.i64("credit")?),
        status: parse_status(&r.text("status")?)?,
        provider_trade_no: r.opt_text("provider_trade_no")?,
        kind: if r.text("kind")? == "plan" {
            OrderKind::Plan
        } else {
            OrderKind::Balance
        },
        plan_id: r.opt_i64("plan_id")?.map(PlanId),
        created_at_ms: r.i64("created_at")?,
        updated_at_ms: r.i64("updated_at")?,
        expires_at_ms: r.opt_i64("expires_at")?,
        paid_at_ms: r.opt_i64("paid_at")?,
    })
}

impl SqlStore {
    /// Inserts a pending order. A duplicate `out_trade_no` is a [`StoreError::Conflict`].
    pub async fn insert_order(&self, order: NewOrder) -> Result<OrderRecord, StoreError> {
        if order.amount_minor <= 0 || order.credit.is_negative() {
            return Err(StoreError::Invalid("an order has a positive amount".into()));
        }
        if order.kind == OrderKind::Plan && order.plan_id.is_none() {
            return Err(StoreError::Invalid("a plan order names its plan".into()));
        }
        let now = self.now_ms();
        let row = self
            .shared()
            .pool
            .one(
                Q::built(format!(
                    "INSERT INTO payment_orders (out_trade_no, user_id, provider, amount_minor, currency, credit, status,
                                                 kind, plan_id, created_at, updated_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8, $9, $9, $10)
                     RETURNING {ORDER_COLUMNS}"
                ))
                .bind(&order.out_trade_no)
                .bind(order.user_id.0)
                .bind(&order.provider)
                .bind(order.amount_minor)
                .bind(&order.currency)
                .bind(order.credit.nanos())
                .bind(order.kind.as_str())
                .bind(order.plan_id.map(|p| p.0))
                .bind(now)
                .bind(order.expires_at_ms),
            )
            .await
            .map_err(store_err)?;
        order_from_row(&row).map_err(store_err)
    }

    pub async fn order(&self, out_trade_no: &str) -> Result<Option<OrderRecord>, StoreError> {
        let row = self
            .shared()
            .pool
            .opt(
                Q::built(format!(
                    "SELECT {ORDER_COLUMNS} FROM payment_orders WHERE out_trade_no = $1"
                ))
                .bind(out_trade_no),
            )
            .await
            .map_err(store_err)?;
        row.map(|r| order_from_row(&r))
            .transpose()
            .map_err(store_err)
    }

    pub async fn order_by_provider_trade_no(
        &self,
        provider_trade_no: &str,
    ) -> Result<Option<OrderRecord>, StoreError> {
        let row = self
            .shared()
            .pool
            .opt(
                Q::built(format!(
                    "SELECT {ORDER_COLUMNS} FROM payment_orders WHERE provider_trade_no = $1"
                ))
                .bind(provider_trade_no),
            )
            .await
            .map_err(store_err)?;
        row.map(|r| order_from_row(&r))
            .transpose()
            .map_err(store_err)
    }

    pub async fn orders_of(&self, user: UserId) -> Result<Vec<OrderRecord>, StoreError> {
        let rows = self
            .shared()
            .pool
            .all(
                Q::built(format!("SELECT {ORDER_COLUMNS} FROM payment_orders WHERE user_id = $1 ORDER BY created_at DESC, id DESC"))
                    .bind(user.0),
            )
            .await
            .map_err(store_err)?;
        rows.iter()
            .map(order_from_row)
            .collect::<Result<_, _>>()
            .map_err(store_err)
    }

    /// Moves an order from `from` to `to` if and only if it is in `from` now; returns whether this
    /// call made the transition. A `provider_trade_no` given here is recorded (it is unique across
    /// orders: reusing one is a [`StoreError::Conflict`]); moving to `Paid` stamps `paid_at`.
    pub async fn transition_order(
        &self,
        out_trade_no: &str,
        from: PaymentStatus,
        to: PaymentStatus,
        provider_trade_no: Option<&str>,
    ) -> Result<bool, StoreError> {
        let now = self.now_ms();
        let n = self
            .shared()
            .pool
            .exec(
                Q::new(
                    "UPDATE payment_orders
                     SET status = $3, updated_at = $4,
                         provider_trade_no = COALESCE($5, provider_trade_no),
                         paid_at = CASE WHEN $3 = 'paid' THEN $4 ELSE paid_at END
                     WHERE out_trade_no = $1 AND status = $2",
                )
                .bind(out_trade_no)
                .bind(status_str(from))
                .bind(status_str(to))
                .bind(now)
                .bind(provider_trade_no.map(str::to_owned)),
            )
            .await
            .map_err(store_err)?;
        Ok(n == 1)
    }
}

// ---------------------------------------------------------------- the payments flow's store

use async_trait::async_trait;
use sub2api_core::payment::service::{
    AuditEntry, NewPaymentOrder, OrderFilter, OrderStatus, PaymentStore, StoredOrder,
};

const STORED_COLUMNS: &str = "id, out_trade_no, user_id, provider, amount_minor, currency, credit, status, \
    provider_trade_no, provider_order_id, plan_id, created_at, updated_at, expires_at, paid_at";

fn stored_from_row(r: &Row) -> Result<StoredOrder, sqlx::Error> {
    let status = r.text("status")?;
    Ok(StoredOrder {
        id: r.i64("id")?,
        out_trade_no: r.text("out_trade_no")?,
        user_id: UserId(r.i64("user_id")?),
        provider: r.text("provider")?,
        amount_minor: r.i64("amount_minor")?,
        currency: r.text("currency")?,
        credit: Money::from_nanos(r.i64("credit")?),
        status: OrderStatus::parse(&status).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown order status `{status}`").into())
        })?,
        provider_trade_no: r.opt_text("provider_trade_no")?,
        provider_order_id: r.opt_text("provider_order_id")?,
        plan_id: r.opt_i64("plan_id")?,
        created_at_ms: r.i64("created_at")?,
        updated_at_ms: r.i64("updated_at")?,
        expires_at_ms: r.opt_i64("expires_at")?,
        paid_at_ms: r.opt_i64("paid_at")?,
    })
}

#[async_trait]
impl PaymentStore for SqlStore {
    async fn insert_payment_order(&self, o: NewPaymentOrder) -> Result<StoredOrder, StoreError> {
        let kind = if o.plan_id.is_some() {
            OrderKind::Plan
        } else {
            OrderKind::Balance
        };
        let rec = self
            .insert_order(NewOrder {
                out_trade_no: o.out_trade_no,
                user_id: o.user_id,
                provider: o.provider,
                amount_minor: o.amount_minor,
                currency: o.currency,
                credit: o.credit,
                kind,
                plan_id: o.plan_id.map(PlanId),
                expires_at_ms: o.expires_at_ms,
            })
            .await?;
        self.payment_order_by_id(rec.id)
            .await?
            .ok_or_else(|| StoreError::NotFound("order".into()))
    }

    async fn payment_order(&self, out_trade_no: &str) -> Result<Option<StoredOrder>, StoreError> {
        let row = self
            .shared()
            .pool
            .opt(
                Q::built(format!(
                    "SELECT {STORED_COLUMNS} FROM payment_orders WHERE out_trade_no = $1"
                ))
                .bind(out_trade_no),
            )
            .await
            .map_err(store_err)?;
        row.map(|r| stored_from_row(&r))
            .transpose()
            .map_err(store_err)
    }

    async fn payment_order_by_id(&self, id: i64) -> Result<Option<StoredOrder>, StoreError> {
        let row = self
            .shared()
            .pool
            .opt(
                Q::built(format!(
                    "SELECT {STORED_COLUMNS} FROM payment_orders WHERE id = $1"
                ))
                .bind(id),
            )
            .await
            .map_err(store_err)?;
        row.map(|r| stored_from_row(&r))
            .transpose()
            .map_err(store_err)
    }

    async fn payment_orders(&self, f: &OrderFilter) -> Result<Vec<StoredOrder>, StoreError> {
        let mut sql = format!("SELECT {STORED_COLUMNS} FROM payment_orders WHERE 1 = 1");
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if f.user.is_some() {
            sql += &format!(" AND user_id = {}", next());
        }
        if f.status.is_some() {
            sql += &format!(" AND status = {}", next());
        }
        if f.provider.is_some() {
            sql += &format!(" AND provider = {}", next());
        }
        if f.expires_before_ms.is_some() {
            sql += &format!(" AND expires_at IS NOT NULL AND expires_at <= {}", next());
        }
        let limit = if f.limit == 0 {
            1000
        } else {
            f.limit.min(1000)
        };
        sql += &format!(" ORDER BY created_at DESC, id DESC LIMIT {limit}");
        let mut q = Q::built(sql);
        if let Some(u) = f.user {
            q = q.bind(u.0);
        }
        if let Some(s) = f.status {
            q = q.bind(s.as_str());
        }
        if let Some(p) = &f.provider {
            q = q.bind(p.as_str());
        }
        if let Some(t) = f.expires_before_ms {
            q = q.bind(t);
        }
        let rows = self.shared().pool.all(q).await.map_err(store_err)?;
        rows.iter()
            .map(stored_from_row)
            .collect::<Result<_, _>>()
            .map_err(store_err)
    }

    async fn transition_payment_order(
        &self,
        out_trade_no: &str,
        from: OrderStatus,
        to: OrderStatus,
        provider_trade_no: Option<&str>,
    ) -> Result<bool, StoreError> {
        let now = self.now_ms();
        let n = self
            .shared()
            .pool
            .exec(
                Q::new(
                    "UPDATE payment_orders
                     SET status = $3, updated_at = $4,
                         provider_trade_no = COALESCE($5, provider_trade_no),
                         paid_at = CASE WHEN $3 = 'paid' THEN $4 ELSE paid_at END
                     WHERE out_trade_no = $1 AND status = $2",
                )
                .bind(out_trade_no)
                .bind(from.as_str())
                .bind(to.as_str())
                .bind(now)
                .bind(provider_trade_no.map(str::to_owned)),
            )
            .await
            .map_err(store_err)?;
        Ok(n == 1)
    }

    async fn set_provider_order_id(&self, out_trade_no: &str, id: &str) -> Result<(), StoreError> {
        self.shared()
            .pool
            .exec(
                Q::new("UPDATE payment_orders SET provider_order_id = $2 WHERE out_trade_no = $1")
                    .bind(out_trade_no)
                    .bind(id),
            )
            .await
            .map_err(store_err)?;
        Ok(())
    }

    async fn payment_audit(&self, e: AuditEntry) -> Result<(), StoreError> {
        self.shared()
            .pool
            .exec(
                Q::new(
                    "INSERT INTO payment_audit (at, provider, out_trade_no, outcome, detail)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(e.at_ms)
                .bind(e.provider)
                .bind(e.out_trade_no)
                .bind(e.outcome)
                .bind(e.detail),
            )
            .await
            .map_err(store_err)?;
        Ok(())
    }

    async fn payment_audits(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = self
            .shared()
            .pool
            .all(Q::built(format!(
                "SELECT at, provider, out_trade_no, outcome, detail FROM payment_audit
                     ORDER BY id DESC LIMIT {}",
                limit.clamp(1, 1000)
            )))
            .await
            .map_err(store_err)?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    at_ms: r.i64("at")?,
                    provider: r.text("provider")?,
                    out_trade_no: r.opt_text("out_trade_no")?,
                    outcome: r.text("outcome")?,
                    detail: r.text("detail")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(store_err)
    }
}
