//! Subscription plans, their assignment to users, and the window state the ledger charges.
//!
//! The rules (when a window starts and resets, how a hold or a charge is split between a
//! subscription and the wallet) are pure functions in [`sub2api_core::subscription`]; this module
//! stores plans (`plans`, `plan_windows`), assignments (`subscriptions`) and per-window usage
//! (`subscription_windows`), and gives the ledger the subscription to bill.
//!
//! A group's `billing_mode` decides who pays for its requests: `wallet` (default) ignores
//! subscriptions, `subscription` bills only an active subscription (no subscription or no headroom
//! means the request is refused), `both` uses the subscription's headroom first and the wallet for
//! the rest. A subscription is active while `starts_at <= now < expires_at` and not cancelled; if a
//! user has several for one group, the one expiring first is used.

use serde::{Deserialize, Serialize};
use sub2api_core::domain::{GroupId, UserId};
use sub2api_core::money::Money;
use sub2api_core::store::StoreError;
use sub2api_core::subscription::{
    BillingMode, DAY_MS, PlanWindows, WindowLength, WindowSpec, WindowState,
};

use crate::db::{Q, Row, TxOf};
use crate::ledger::in_tx;
use crate::{SqlStore, store_err};

/// A plan's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PlanId(pub i64);

/// A subscription's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SubscriptionId(pub i64);

/// A plan as declared by an operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewPlan {
    pub name: String,
    pub group_id: GroupId,
    /// How long one purchase or redeem code of the plan lasts.
    pub duration_days: i64,
    pub windows: Vec<WindowSpec>,
    /// The price of one purchase in `currency`'s minor unit; `None` (with `currency`): not for sale.
    pub price_minor: Option<i64>,
    pub currency: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub id: PlanId,
    pub name: String,
    pub group_id: GroupId,
    pub duration_days: i64,
    pub windows: PlanWindows,
    pub enabled: bool,
    pub price_minor: Option<i64>,
    pub currency: Option<String>,
}

/// A plan assigned to a user for `[starts_at_ms, expires_at_ms)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub id: SubscriptionId,
    pub user_id: UserId,
    pub plan_id: PlanId,
    pub group_id: GroupId,
    pub starts_at_ms: i64,
    pub expires_at_ms: i64,
    pub cancelled: bool,
}

/// One window of a subscription as a user would see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowUsage {
    pub spec: WindowSpec,
    pub used: Money,
    pub held: Money,
    pub remaining: Money,
    /// `None` for a rolling window that starts with the next charge.
    pub resets_at_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionUsage {
    pub subscription: Subscription,
    pub windows: Vec<WindowUsage>,
}

/// A subscription loaded for billing: its plan's windows and their stored state, index-aligned.
pub(crate) struct BillableSub {
    pub id: i64,
    pub plan: PlanWindows,
    pub states: Vec<WindowState>,
}

pub(crate) async fn group_billing_mode(
    tx: &mut TxOf<'_>,
    group: i64,
) -> Result<BillingMode, sqlx::Error> {
    let row = tx
        .opt(Q::new("SELECT billing_mode FROM groups WHERE id = $1").bind(group))
        .await?;
    Ok(match row {
        Some(r) => r.text("billing_mode")?.parse().unwrap_or_default(),
        None => BillingMode::Wallet,
    })
}

fn window_spec(r: &Row) -> Result<WindowSpec, sqlx::Error> {
    let kind = r.text("kind")?;
    let length = WindowLength::from_parts(&kind, r.i64("rolling_ms")?)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown window kind `{kind}`").into()))?;
    Ok(WindowSpec {
        length,
        limit: Money::from_nanos(r.i64("limit_amount")?),
    })
}

/// Loads a subscription's windows and state (whatever its dates: a request admitted under it may
/// settle after it expired).
pub(crate) async fn load_subscription(
    tx: &mut TxOf<'_>,
    id: i64,
) -> Result<Option<BillableSub>, sqlx::Error> {
    if tx
        .opt(Q::new("SELECT id FROM subscriptions WHERE id = $1").bind(id))
        .await?
        .is_none()
    {
        return Ok(None);
    }
    let rows = tx
        .all(
            Q::new(
                "SELECT pw.idx, pw.kind, pw.rolling_ms, pw.limit_amount, sw.window_start, sw.used, sw.held
                 FROM subscriptions s
                 JOIN plan_windows pw ON pw.plan_id = s.plan_id
                 LEFT JOIN subscription_windows sw ON sw.subscription_id = s.id AND sw.idx = pw.idx
                 WHERE s.id = $1 ORDER BY pw.idx",
            )
            .bind(id),
        )
        .await?;
    let mut plan = Vec::with_capacity(rows.len());
    let mut states = Vec::with_capacity(rows.len());
    for r in &rows {
        plan.push(window_spec(r)?);
        states.push(WindowState {
            start_ms: r.opt_i64("window_start")?,
            used: Money::from_nanos(r.opt_i64("used")?.unwrap_or(0)),
            held: Money::from_nanos(r.opt_i64("held")?.unwrap_or(0)),
        });
    }
    Ok(Some(BillableSub {
        id,
        plan: PlanWindows(plan),
        states,
    }))
}

/// The user's active subscription for a group at `now`: the one expiring first.
pub(crate) async fn active_subscription(
    tx: &mut TxOf<'_>,
    user: i64,
    group: i64,
    now: i64,
) -> Result<Option<BillableSub>, sqlx::Error> {
    let row = tx
        .opt(
            Q::new(
                "SELECT id FROM subscriptions
                 WHERE user_id = $1 AND group_id = $2 AND status = 'active' AND starts_at <= $3 AND expires_at > $3
                 ORDER BY expires_at, id LIMIT 1",
            )
            .bind(user)
            .bind(group)
            .bind(now),
        )
        .await?;
    match row {
        Some(r) => load_subscription(tx, r.i64("id")?).await,
        None => Ok(None),
    }
}

pub(crate) async fn save_windows(tx: &mut TxOf<'_>, sub: &BillableSub) -> Result<(), sqlx::Error> {
    for (idx, s) in sub.states.iter().enumerate() {
        tx.exec(
            Q::new(
                "INSERT INTO subscription_windows (subscription_id, idx, window_start, used, held)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (subscription_id, idx) DO UPDATE
                 SET window_start = excluded.window_start, used = excluded.used, held = excluded.held",
            )
            .bind(sub.id)
            .bind(idx as i64)
            .bind(s.start_ms)
            .bind(s.used.nanos())
            .bind(s.held.nanos()),
        )
        .await?;
    }
    Ok(())
}

fn subscription_from_row(r: &Row) -> Result<Subscription, sqlx::Error> {
    Ok(Subscription {
        id: SubscriptionId(r.i64("id")?),
        user_id: UserId(r.i64("user_id")?),
        plan_id: PlanId(r.i64("plan_id")?),
        group_id: GroupId(r.i64("group_id")?),
        starts_at_ms: r.i64("starts_at")?,
        expires_at_ms: r.i64("expires_at")?,
        cancelled: r.text("status")? == "cancelled",
    })
}

const SUB_COLUMNS: &str = "id, user_id, plan_id, group_id, starts_at, expires_at, status";

/// Gives a user `days` of a plan: extends the user's latest unexpired subscription of that plan,
/// or starts a new one now. Used by redeem codes and plan purchases.
pub(crate) async fn grant_plan_tx(
    tx: &mut TxOf<'_>,
    user: i64,
    plan: i64,
    days: i64,
    now: i64,
) -> Result<Result<Subscription, StoreError>, sqlx::Error> {
    let Some(p) = tx
        .opt(Q::new("SELECT group_id FROM plans WHERE id = $1").bind(plan))
        .await?
    else {
        return Ok(Err(StoreError::NotFound(format!("plan {plan}"))));
    };
    let group = p.i64("group_id")?;
    let span = days.saturating_mul(DAY_MS);
    let current = tx
        .opt(
            Q::new(
                "SELECT id, expires_at FROM subscriptions
                 WHERE user_id = $1 AND plan_id = $2 AND status = 'active' AND expires_at > $3
                 ORDER BY expires_at DESC, id DESC LIMIT 1",
            )
            .bind(user)
            .bind(plan)
            .bind(now),
        )
        .await?;
    let id = match current {
        Some(r) => {
            let id = r.i64("id")?;
            tx.exec(
                Q::new("UPDATE subscriptions SET expires_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(r.i64("expires_at")?.saturating_add(span)),
            )
            .await?;
            id
        }
        None => {
            insert_subscription(tx, user, plan, group, now, now.saturating_add(span), now).await?
        }
    };
    Ok(Ok(subscription_in(tx, id).await?))
}

/// A subscription as the transaction sees it.
async fn subscription_in(tx: &mut TxOf<'_>, id: i64) -> Result<Subscription, sqlx::Error> {
    let row = tx
        .one(
            Q::built(format!(
                "SELECT {SUB_COLUMNS} FROM subscriptions WHERE id = $1"
            ))
            .bind(id),
        )
        .await?;
    subscription_from_row(&row)
}

async fn insert_subscription(
    tx: &mut TxOf<'_>,
    user: i64,
    plan: i64,
    group: i64,
    starts: i64,
    expires: i64,
    now: i64,
) -> Result<i64, sqlx::Error> {
    let row = tx
        .one(
            Q::new(
                "INSERT INTO subscriptions (user_id, plan_id, group_id, starts_at, expires_at, status, created_at)
                 VALUES ($1, $2, $3, $4, $5, 'active', $6) RETURNING id",
            )
            .bind(user)
            .bind(plan)
            .bind(group)
            .bind(starts)
            .bind(expires)
            .bind(now),
        )
        .await?;
    row.i64("id")
}

impl SqlStore {
    /// Sets how a group bills its requests (see the module docs).
    pub async fn set_group_billing_mode(
        &self,
        group: GroupId,
        mode: BillingMode,
    ) -> Result<(), StoreError> {
        let n = self
            .shared()
            .pool
            .exec(
                Q::new("UPDATE groups SET billing_mode = $2, updated_at = $3 WHERE id = $1")
                    .bind(group.0)
                    .bind(mode.as_str())
                    .bind(self.now_ms()),
            )
            .await
            .map_err(store_err)?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("group {group}")));
        }
        Ok(())
    }

    pub async fn group_billing_mode(&self, group: GroupId) -> Result<BillingMode, StoreError> {
        let row = self
            .shared()
            .pool
            .opt(Q::new("SELECT billing_mode FROM groups WHERE id = $1").bind(group.0))
            .await
            .map_err(store_err)?
            .ok_or_else(|| StoreError::NotFound(format!("group {group}")))?;
        row.text("billing_mode")
            .map_err(store_err)?
            .parse()
            .map_err(StoreError::Invalid)
    }

    /// Creates the plan or replaces its group, duration and windows, by name.
    pub async fn upsert_plan(&self, plan: NewPlan) -> Result<Plan, StoreError> {
        if plan.name.trim().is_empty() {
            return Err(StoreError::Invalid("a plan needs a name".into()));
        }
        if plan.duration_days <= 0 {
            return Err(StoreError::Invalid("a plan lasts at least one day".into()));
        }
        if plan.price_minor.is_some() != plan.currency.is_some()
            || plan.price_minor.is_some_and(|p| p <= 0)
        {
            return Err(StoreError::Invalid(
                "a plan's price is positive and has a currency".into(),
            ));
        }
        for w in &plan.windows {
            if w.limit.is_negative() || matches!(w.length, WindowLength::Rolling { ms } if ms <= 0)
            {
                return Err(StoreError::Invalid(
                    "window limits and lengths must be positive".into(),
                ));
            }
        }
        let now = self.now_ms();
        let pool = &self.shared().pool;
        let id = in_tx!(pool, |tx| {
            let row = tx
                .one(
                    Q::new(
                        "INSERT INTO plans (name, group_id, duration_days, enabled, created_at, price_minor, currency)
                         VALUES ($1, $2, $3, TRUE, $4, $5, $6)
                         ON CONFLICT (name) DO UPDATE SET group_id = excluded.group_id, duration_days = excluded.duration_days,
                             price_minor = excluded.price_minor, currency = excluded.currency
                         RETURNING id",
                    )
                    .bind(&plan.name)
                    .bind(plan.group_id.0)
                    .bind(plan.duration_days)
                    .bind(now)
                    .bind(plan.price_minor)
                    .bind(plan.currency.clone()),
                )
                .await?;
            let id = row.i64("id")?;
            tx.exec(Q::new("DELETE FROM plan_windows WHERE plan_id = $1").bind(id)).await?;
            for (idx, w) in plan.windows.iter().enumerate() {
                tx.exec(
                    Q::new("INSERT INTO plan_windows (plan_id, idx, kind, rolling_ms, limit_amount) VALUES ($1, $2, $3, $4, $5)")
                        .bind(id)
                        .bind(idx as i64)
                        .bind(w.length.kind_str())
                        .bind(w.length.rolling_ms())
                        .bind(w.limit.nanos()),
                )
                .await?;
            }
            id
        })
        .map_err(store_err)?;
        self.plan(PlanId(id))
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("plan {id}")))
    }

    pub async fn plan(&self, id: PlanId) -> Result<Option<Plan>, StoreError> {
        Ok(self.load_plans(Some(id.0)).await?.pop())
    }

    pub async fn plans(&self) -> Result<Vec<Plan>, StoreError> {
        self.load_plans(None).await
    }

    async fn load_plans(&self, only: Option<i64>) -> Result<Vec<Plan>, StoreError> {
        let pool = &self.shared().pool;
        let plans = pool
            .all(
                Q::new(
                    "SELECT id, name, group_id, duration_days, enabled, price_minor, currency FROM plans
                     WHERE $1 IS NULL OR id = $1 ORDER BY id",
                )
                .bind(only),
            )
            .await
            .map_err(store_err)?;
        let mut out = Vec::with_capacity(plans.len());
        for p in plans {
            let id = p.i64("id").map_err(store_err)?;
            let windows = pool
                .all(
                    Q::new("SELECT kind, rolling_ms, limit_amount FROM plan_windows WHERE plan_id = $1 ORDER BY idx")
                        .bind(id),
                )
                .await
                .map_err(store_err)?
                .iter()
                .map(window_spec)
                .collect::<Result<Vec<_>, _>>()
                .map_err(store_err)?;
            out.push(Plan {
                id: PlanId(id),
                name: p.text("name").map_err(store_err)?,
                group_id: GroupId(p.i64("group_id").map_err(store_err)?),
                duration_days: p.i64("duration_days").map_err(store_err)?,
                windows: PlanWindows(windows),
                enabled: p.bool("enabled").map_err(store_err)?,
                price_minor: p.opt_i64("price_minor").map_err(store_err)?,
                currency: p.opt_text("currency").map_err(store_err)?,
            });
        }
        Ok(out)
    }

    /// Assigns a plan to a user for `[starts_at_ms, expires_at_ms)`.
    pub async fn assign_subscription(
        &self,
        user: UserId,
        plan: PlanId,
        starts_at_ms: i64,
        expires_at_ms: i64,
    ) -> Result<Subscription, StoreError> {
        if expires_at_ms <= starts_at_ms {
            return Err(StoreError::Invalid(
                "a subscription must end after it starts".into(),
            ));
        }
        let now = self.now_ms();
        let pool = &self.shared().pool;
        let id = in_tx!(pool, |tx| {
            match tx
                .opt(Q::new("SELECT group_id FROM plans WHERE id = $1").bind(plan.0))
                .await?
            {
                Some(p) => {
                    let group = p.i64("group_id")?;
                    Some(
                        insert_subscription(
                            &mut tx,
                            user.0,
                            plan.0,
                            group,
                            starts_at_ms,
                            expires_at_ms,
                            now,
                        )
                        .await?,
                    )
                }
                None => None,
            }
        })
        .map_err(store_err)?
        .ok_or_else(|| StoreError::NotFound(format!("plan {}", plan.0)))?;
        self.subscription(SubscriptionId(id))
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("subscription {id}")))
    }

    /// Gives a user `days` of a plan, extending an unexpired subscription of the same plan.
    pub async fn grant_plan(
        &self,
        user: UserId,
        plan: PlanId,
        days: i64,
    ) -> Result<Subscription, StoreError> {
        let now = self.now_ms();
        let pool = &self.shared().pool;
        in_tx!(pool, |tx| grant_plan_tx(&mut tx, user.0, plan.0, days, now)
            .await?)
        .map_err(store_err)?
    }

    /// [`SqlStore::grant_plan`] once per `grant_key` (a paid order): a key already granted
    /// changes nothing and returns the subscription it went to. The key is claimed first in the
    /// same transaction, so concurrent grants of one key wait for each other and only one extends.
    pub async fn grant_plan_once(
        &self,
        user: UserId,
        plan: PlanId,
        days: i64,
        grant_key: &str,
    ) -> Result<Subscription, StoreError> {
        let now = self.now_ms();
        let pool = &self.shared().pool;
        in_tx!(pool, |tx| {
            let claimed = tx
                .exec(
                    Q::new(
                        "INSERT INTO plan_grants (grant_key, subscription_id, created_at) VALUES ($1, NULL, $2)
                         ON CONFLICT (grant_key) DO NOTHING",
                    )
                    .bind(grant_key)
                    .bind(now),
                )
                .await?;
            if claimed == 0 {
                let row = tx
                    .one(
                        Q::built(format!(
                            "SELECT {} FROM subscriptions s JOIN plan_grants g ON g.subscription_id = s.id
                             WHERE g.grant_key = $1",
                            SUB_COLUMNS
                                .split(", ")
                                .map(|c| format!("s.{c}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                        .bind(grant_key),
                    )
                    .await?;
                Ok(subscription_from_row(&row)?)
            } else {
                match grant_plan_tx(&mut tx, user.0, plan.0, days, now).await? {
                    Ok(sub) => {
                        tx.exec(
                            Q::new(
                                "UPDATE plan_grants SET subscription_id = $2, span_ms = $3
                                 WHERE grant_key = $1",
                            )
                            .bind(grant_key)
                            .bind(sub.id.0)
                            .bind(days.saturating_mul(DAY_MS)),
                        )
                        .await?;
                        Ok(sub)
                    }
                    // No such plan: release the key so a later retry can grant.
                    Err(e) => {
                        tx.exec(Q::new("DELETE FROM plan_grants WHERE grant_key = $1").bind(grant_key))
                            .await?;
                        Err(e)
                    }
                }
            }
        })
        .map_err(store_err)?
    }

    /// Takes back what the grant `grant_key` gave, once (see
    /// `AdminStore::take_back_plan_grant`). The claim on the grant is one conditional update,
    /// so two refunds racing for one order take back once.
    pub async fn take_back_plan_grant(
        &self,
        grant_key: &str,
        fallback_days: i64,
    ) -> Result<Option<Subscription>, StoreError> {
        let now = self.now_ms();
        let pool = &self.shared().pool;
        in_tx!(pool, |tx| {
            let claimed = tx
                .opt(
                    Q::new(
                        "UPDATE plan_grants SET taken_back_at = $2
                         WHERE grant_key = $1 AND taken_back_at IS NULL
                         RETURNING subscription_id, span_ms",
                    )
                    .bind(grant_key)
                    .bind(now),
                )
                .await?;
            // Nothing to take back (no such grant, or taken back already): nothing was written.
            let Some(grant) = claimed else {
                return Ok(None);
            };
            let Some(id) = grant.opt_i64("subscription_id")? else {
                return Ok(None);
            };
            let span = grant
                .opt_i64("span_ms")?
                .unwrap_or(fallback_days.saturating_mul(DAY_MS));
            let Some(sub) = tx
                .opt(Q::new("SELECT expires_at FROM subscriptions WHERE id = $1").bind(id))
                .await?
            else {
                return Ok(None);
            };
            let expires = sub.i64("expires_at")?;
            tx.exec(
                Q::new("UPDATE subscriptions SET expires_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(sub2api_core::api::store::taken_back_expiry(
                        expires, span, now,
                    )),
            )
            .await?;
            Some(subscription_in(&mut tx, id).await?)
        })
        .map_err(store_err)
    }

    pub async fn subscription(
        &self,
        id: SubscriptionId,
    ) -> Result<Option<Subscription>, StoreError> {
        let row = self
            .shared()
            .pool
            .opt(
                Q::built(format!(
                    "SELECT {SUB_COLUMNS} FROM subscriptions WHERE id = $1"
                ))
                .bind(id.0),
            )
            .await
            .map_err(store_err)?;
        row.map(|r| subscription_from_row(&r))
            .transpose()
            .map_err(store_err)
    }

    pub async fn subscriptions_of(&self, user: UserId) -> Result<Vec<Subscription>, StoreError> {
        let rows = self
            .shared()
            .pool
            .all(
                Q::built(format!(
                    "SELECT {SUB_COLUMNS} FROM subscriptions WHERE user_id = $1 ORDER BY id"
                ))
                .bind(user.0),
            )
            .await
            .map_err(store_err)?;
        rows.iter()
            .map(subscription_from_row)
            .collect::<Result<_, _>>()
            .map_err(store_err)
    }

    /// Cancels a subscription: it stops billing at once (requests in flight still settle to it).
    pub async fn cancel_subscription(&self, id: SubscriptionId) -> Result<(), StoreError> {
        self.shared()
            .pool
            .exec(Q::new("UPDATE subscriptions SET status = 'cancelled' WHERE id = $1").bind(id.0))
            .await
            .map_err(store_err)?;
        Ok(())
    }

    /// The active subscription of a user for a group and its windows, as of now.
    pub async fn subscription_usage(
        &self,
        user: UserId,
        group: GroupId,
    ) -> Result<Option<SubscriptionUsage>, StoreError> {
        let now = self.now_ms();
        let pool = &self.shared().pool;
        // Through the same helper as billing, so both see the same subscription.
        let mut tx = pool.begin_read().await.map_err(store_err)?;
        let sub = active_subscription(&mut tx, user.0, group.0, now)
            .await
            .map_err(store_err)?;
        drop(tx);
        let Some(sub) = sub else { return Ok(None) };
        let subscription = self
            .subscription(SubscriptionId(sub.id))
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("subscription {}", sub.id)))?;
        let windows = sub
            .plan
            .0
            .iter()
            .zip(&sub.states)
            .map(|(spec, st)| WindowUsage {
                spec: *spec,
                used: spec.used_at(st, now),
                held: st.held,
                remaining: spec.headroom(st, now),
                resets_at_ms: spec.resets_at(st, now),
            })
            .collect();
        Ok(Some(SubscriptionUsage {
            subscription,
            windows,
        }))
    }
}
