//! The SQL [`Ledger`]: wallets, holds and the append-only journal.
//!
//! # The journal and the wallet
//!
//! Every change to a wallet is one row of `ledger_entries`, and each row carries the two deltas it
//! applied: `balance_delta` and `held_delta`. The invariant, checked for every user by
//! [`SqlStore::verify_ledger`], is
//!
//! ```text
//! wallets.balance == SUM(ledger_entries.balance_delta)
//! wallets.held    == SUM(ledger_entries.held_delta) == SUM(holds.wallet_amount)
//! ```
//!
//! | entry kind | `balance_delta` | `held_delta` |
//! |---|---|---|
//! | credit, refund, adjustment | the amount (negative for a debit) | 0 |
//! | hold | 0 | + the part held from the wallet |
//! | settle | − the part charged to the wallet | − the wallet part of the request's hold |
//! | release | 0 | − the wallet part of the hold |
//!
//! `ref` is the idempotency key (credits) or the request id (hold, settle, release) and is unique
//! per kind, so a request holds once, settles once and releases once, and a payment or redeem
//! code credits once, whatever the concurrency and however often a caller retries.
//!
//! The part of a request billed to a subscription (see [`crate::subscriptions`]) is recorded on
//! the same entries (`subscription_id`, `subscription_amount`) and moves window usage, not wallet
//! money.
//!
//! # Never overdrawn by holds
//!
//! In a batch of the ledger writer, holds are decided against wallets read under the write lock
//! (see [`crate::batch`]). Outside a batch, on Postgres a wallet-only hold is one statement: a CTE whose `UPDATE wallets SET held = held + x
//! WHERE balance - held >= x` is chained with the hold and journal inserts. Concurrent updates of
//! the same row re-check the condition on the newest row version, so no interleaving of any number
//! of processes can take the available balance below zero. Everything else (holds that involve a
//! subscription, settlements, releases, credits) runs in a transaction that first locks the wallet
//! row `FOR UPDATE`. On SQLite every write transaction is `BEGIN IMMEDIATE`: one writer at a time
//! across all connections and processes.
//!
//! # Settlements
//!
//! [`Ledger::reserve`], [`Ledger::settle`] and [`Ledger::release`] go through the ledger writer's
//! group commit ([`crate::batch`]) and return only after the transaction that journals them has
//! committed. The per-request functions here are the writer's general path (groups that bill
//! subscriptions) and its fallback when a batch fails.

use async_trait::async_trait;
use sub2api_core::domain::{GroupId, UserId};
use sub2api_core::ledger::{
    Balance, Charge, Credit, CreditOutcome, EntryKind, Hold, HoldRequest, Ledger, LedgerError,
    Settlement,
};
use sub2api_core::money::Money;
use sub2api_core::subscription::{split_charge, split_hold};

use crate::db::{Backend, Pool, Q, Row, TxOf, is_unique_violation};
use crate::subscriptions::{
    active_subscription, group_billing_mode, load_subscription, save_windows,
};
use crate::{Shared, SqlStore};

/// A user whose wallet disagrees with its journal (see the module docs for the invariant).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LedgerMismatch {
    pub user_id: UserId,
    /// `SUM(balance_delta)` of the user's journal.
    pub journal_balance: Money,
    /// `wallets.balance`.
    pub balance: Money,
    /// `SUM(held_delta)` of the user's journal.
    pub journal_held: Money,
    /// `wallets.held`.
    pub held: Money,
    /// `SUM(holds.wallet_amount)` of the user's open holds.
    pub open_holds: Money,
}

/// A subscription window whose held amount disagrees with the open holds billed to it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SubscriptionHoldMismatch {
    pub subscription_id: crate::subscriptions::SubscriptionId,
    pub window: i64,
    pub held: Money,
    pub open_holds: Money,
}

pub(crate) fn unavailable(e: sqlx::Error) -> LedgerError {
    LedgerError::Unavailable(e.to_string())
}

fn invalid(msg: &str) -> LedgerError {
    LedgerError::Unavailable(format!("invalid request: {msg}"))
}

/// Runs `$body` in a write transaction, committing after it, retrying the whole transaction on
/// deadlocks, serialization failures and busy databases. `$body` evaluates to the domain result;
/// domain refusals are decided before anything is written, so committing them is harmless.
macro_rules! in_tx {
    ($pool:expr, |$tx:ident| $body:expr) => {{
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let r: Result<_, sqlx::Error> = async {
                let mut $tx = $pool.begin().await?;
                let out = $body;
                $tx.commit().await?;
                Ok(out)
            }
            .await;
            match r {
                Err(e) if attempt < 8 && crate::db::is_transient(&e) => {
                    tokio::time::sleep(std::time::Duration::from_millis(5u64 << attempt.min(6)))
                        .await;
                }
                other => break other,
            }
        }
    }};
}
pub(crate) use in_tx;

/// Locks and reads the user's wallet: `(balance, held)`.
pub(crate) async fn lock_wallet(
    tx: &mut TxOf<'_>,
    user: i64,
) -> Result<Option<(i64, i64)>, sqlx::Error> {
    let sql = if tx.is_pg() {
        "SELECT balance, held FROM wallets WHERE user_id = $1 FOR UPDATE"
    } else {
        "SELECT balance, held FROM wallets WHERE user_id = $1"
    };
    let row = tx.opt(Q::new(sql).bind(user)).await?;
    row.map(|r| Ok((r.i64("balance")?, r.i64("held")?)))
        .transpose()
}

/// An open hold as stored.
#[derive(Clone, Debug)]
pub(crate) struct HoldRow {
    pub request_id: String,
    pub user_id: i64,
    pub group_id: i64,
    pub amount: i64,
    pub wallet_amount: i64,
    pub subscription_id: Option<i64>,
    pub subscription_amount: i64,
}

impl HoldRow {
    pub(crate) fn from_row(r: &Row) -> Result<HoldRow, sqlx::Error> {
        Ok(HoldRow {
            request_id: r.text("request_id")?,
            user_id: r.i64("user_id")?,
            group_id: r.i64("group_id")?,
            amount: r.i64("amount")?,
            wallet_amount: r.i64("wallet_amount")?,
            subscription_id: r.opt_i64("subscription_id")?,
            subscription_amount: r.i64("subscription_amount")?,
        })
    }
}

/// Removes the hold of `request_id` (of `user`) and returns it; `None` if there is none.
pub(crate) async fn take_hold(
    tx: &mut TxOf<'_>,
    request_id: &str,
    user: i64,
) -> Result<Option<HoldRow>, sqlx::Error> {
    let row = tx
        .opt(
            Q::new(
                "DELETE FROM holds WHERE request_id = $1 AND user_id = $2 \
                 RETURNING request_id, user_id, group_id, amount, wallet_amount, subscription_id, subscription_amount",
            )
            .bind(request_id)
            .bind(user),
        )
        .await?;
    row.map(|r| HoldRow::from_row(&r)).transpose()
}

/// Takes back the subscription part of a hold from its windows.
pub(crate) async fn unhold_subscription(
    tx: &mut TxOf<'_>,
    hold: &HoldRow,
) -> Result<(), sqlx::Error> {
    if hold.subscription_amount > 0
        && let Some(sub_id) = hold.subscription_id
        && let Some(mut sub) = load_subscription(tx, sub_id).await?
    {
        sub.plan
            .unhold(&mut sub.states, Money::from_nanos(hold.subscription_amount));
        save_windows(tx, &sub).await?;
    }
    Ok(())
}

/// Gives a taken hold back: unholds the subscription part and the wallet part, journals a release.
/// The caller holds the wallet lock and has already deleted the hold row.
pub(crate) async fn release_taken_hold(
    tx: &mut TxOf<'_>,
    hold: &HoldRow,
    now: i64,
    memo: &str,
) -> Result<(), sqlx::Error> {
    unhold_subscription(tx, hold).await?;
    tx.exec(
        Q::new("UPDATE wallets SET held = held - $2, updated_at = $3 WHERE user_id = $1")
            .bind(hold.user_id)
            .bind(hold.wallet_amount)
            .bind(now),
    )
    .await?;
    tx.exec(
        Q::new(
            "INSERT INTO ledger_entries (user_id, kind, ref, amount, balance_delta, held_delta, group_id, \
             subscription_id, subscription_amount, memo, created_at) \
             VALUES ($1, 'release', $2, $3, 0, $4, $5, $6, $7, $8, $9)",
        )
        .bind(hold.user_id)
        .bind(hold.request_id.clone())
        .bind(hold.amount)
        .bind(-hold.wallet_amount)
        .bind(hold.group_id)
        .bind(hold.subscription_id)
        .bind(hold.subscription_amount)
        .bind(memo)
        .bind(now),
    )
    .await?;
    Ok(())
}

/// The general hold: subscription headroom first (when the group bills subscriptions), then the
/// wallet. Decides everything before writing anything.
pub(crate) async fn reserve_tx(
    tx: &mut TxOf<'_>,
    shared: &Shared,
    req: &HoldRequest,
    now: i64,
) -> Result<Result<Hold, LedgerError>, sqlx::Error> {
    let user = req.user_id.0;
    let Some((balance, held)) = lock_wallet(tx, user).await? else {
        return Ok(Err(LedgerError::UnknownUser(req.user_id)));
    };
    let seen = tx
        .opt(
            Q::new("SELECT 1 AS one FROM ledger_entries WHERE kind = 'hold' AND ref = $1")
                .bind(&req.request_id),
        )
        .await?;
    if seen.is_some() {
        return Ok(Err(LedgerError::DuplicateHold(req.request_id.clone())));
    }
    let mode = group_billing_mode(tx, req.group_id.0).await?;
    let mut sub = if mode.uses_subscription() {
        active_subscription(tx, user, req.group_id.0, now).await?
    } else {
        None
    };
    let headroom = sub.as_ref().map(|s| s.plan.headroom(&s.states, now));
    let available = Money::from_nanos(balance - held);
    let refuse = |sub_part: Money| LedgerError::InsufficientBalance {
        available: if mode.uses_wallet() {
            available.max(Money::ZERO)
        } else {
            Money::ZERO
        }
        .saturating_add(sub_part),
        required: req.amount,
    };
    let Some(split) = split_hold(mode, headroom, req.amount) else {
        return Ok(Err(refuse(headroom.unwrap_or(Money::ZERO))));
    };
    if split.wallet.is_positive() && available < split.wallet {
        return Ok(Err(refuse(split.subscription)));
    }

    let mut sub_id = None;
    if let Some(s) = sub.as_mut()
        && split.subscription.is_positive()
    {
        s.plan.hold(&mut s.states, split.subscription);
        save_windows(tx, s).await?;
        sub_id = Some(s.id);
    }
    tx.exec(
        Q::new("UPDATE wallets SET held = held + $2, updated_at = $3 WHERE user_id = $1")
            .bind(user)
            .bind(split.wallet.nanos())
            .bind(now),
    )
    .await?;
    tx.exec(
        Q::new(
            "INSERT INTO holds (request_id, user_id, group_id, amount, wallet_amount, subscription_id, \
             subscription_amount, instance_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&req.request_id)
        .bind(user)
        .bind(req.group_id.0)
        .bind(req.amount.nanos())
        .bind(split.wallet.nanos())
        .bind(sub_id)
        .bind(split.subscription.nanos())
        .bind(&shared.instance_id)
        .bind(now)
        .bind(now.saturating_add(shared.hold_ttl_ms)),
    )
    .await?;
    tx.exec(
        Q::new(
            "INSERT INTO ledger_entries (user_id, kind, ref, amount, balance_delta, held_delta, group_id, \
             subscription_id, subscription_amount, memo, created_at) \
             VALUES ($1, 'hold', $2, $3, 0, $4, $5, $6, $7, '', $8)",
        )
        .bind(user)
        .bind(&req.request_id)
        .bind(req.amount.nanos())
        .bind(split.wallet.nanos())
        .bind(req.group_id.0)
        .bind(sub_id)
        .bind(split.subscription.nanos())
        .bind(now),
    )
    .await?;
    Ok(Ok(Hold {
        request_id: req.request_id.clone(),
        user_id: req.user_id,
        group_id: req.group_id,
        amount: req.amount,
    }))
}

/// The Postgres fast path: a wallet-only hold as one statement. Returns `None` when the group's
/// billing involves a subscription the user has, so the general path must decide.
const PG_RESERVE_WALLET: &str = "\
WITH mode AS (
    SELECT COALESCE((SELECT billing_mode FROM groups WHERE id = $2), 'wallet') AS m
), fast AS (
    SELECT (SELECT m FROM mode) = 'wallet'
        OR ((SELECT m FROM mode) = 'both' AND NOT EXISTS (
            SELECT 1 FROM subscriptions s
            WHERE s.user_id = $1 AND s.group_id = $2 AND s.status = 'active'
              AND s.starts_at <= $5 AND s.expires_at > $5)) AS ok
), w AS (
    UPDATE wallets SET held = held + $3, updated_at = $5
    WHERE user_id = $1 AND balance - held >= $3 AND (SELECT ok FROM fast)
    RETURNING user_id
), h AS (
    INSERT INTO holds (request_id, user_id, group_id, amount, wallet_amount, subscription_amount,
                       instance_id, created_at, expires_at)
    SELECT $4, user_id, $2, $3, $3, 0, $6, $5, $7 FROM w
    RETURNING request_id
), e AS (
    INSERT INTO ledger_entries (user_id, kind, ref, amount, balance_delta, held_delta, group_id,
                                subscription_amount, memo, created_at)
    SELECT $1, 'hold', request_id, $3, 0, $3, $2, 0, '', $5 FROM h
    RETURNING id
)
SELECT (SELECT ok FROM fast) AS fast,
       (SELECT count(*) FROM e) AS done,
       (SELECT balance - held FROM wallets WHERE user_id = $1) AS available";

async fn pg_reserve_wallet(
    shared: &Shared,
    req: &HoldRequest,
    now: i64,
) -> Result<Option<Result<Hold, LedgerError>>, sqlx::Error> {
    let q = Q::new(PG_RESERVE_WALLET)
        .bind(req.user_id.0)
        .bind(req.group_id.0)
        .bind(req.amount.nanos())
        .bind(&req.request_id)
        .bind(now)
        .bind(&shared.instance_id)
        .bind(now.saturating_add(shared.hold_ttl_ms));
    let row = match shared.pool.one(q).await {
        Ok(r) => r,
        Err(e) if is_unique_violation(&e) => {
            return Ok(Some(Err(LedgerError::DuplicateHold(
                req.request_id.clone(),
            ))));
        }
        Err(e) => return Err(e),
    };
    if !row.bool("fast")? {
        return Ok(None);
    }
    if row.i64("done")? == 1 {
        return Ok(Some(Ok(Hold {
            request_id: req.request_id.clone(),
            user_id: req.user_id,
            group_id: req.group_id,
            amount: req.amount,
        })));
    }
    Ok(Some(Err(match row.opt_i64("available")? {
        None => LedgerError::UnknownUser(req.user_id),
        Some(a) => LedgerError::InsufficientBalance {
            available: Money::from_nanos(a.max(0)),
            required: req.amount,
        },
    })))
}

/// Settles one charge inside the caller's transaction.
pub(crate) async fn settle_tx(
    tx: &mut TxOf<'_>,
    charge: &Charge,
    now: i64,
) -> Result<Result<Settlement, LedgerError>, sqlx::Error> {
    let user = charge.user_id.0;
    let Some((balance, _held)) = lock_wallet(tx, user).await? else {
        return Ok(Err(LedgerError::UnknownUser(charge.user_id)));
    };
    let done = tx
        .opt(
            Q::new("SELECT amount FROM ledger_entries WHERE kind = 'settle' AND ref = $1")
                .bind(&charge.request_id),
        )
        .await?;
    if let Some(r) = done {
        return Ok(Ok(Settlement {
            request_id: charge.request_id.clone(),
            charged: Money::from_nanos(r.i64("amount")?),
            replayed: true,
        }));
    }
    let hold = take_hold(tx, &charge.request_id, user).await?;
    let mode = group_billing_mode(tx, charge.group_id.0).await?;

    // Give the hold's subscription part back first, so it counts as headroom for this charge.
    let mut sub = None;
    if let Some(h) = &hold {
        unhold_subscription(tx, h).await?;
        if mode.uses_subscription()
            && let Some(id) = h.subscription_id
        {
            // A request keeps billing the subscription it was admitted under, even if that
            // subscription expired while it ran.
            sub = load_subscription(tx, id).await?;
        }
    }
    if sub.is_none() && mode.uses_subscription() {
        sub = active_subscription(tx, user, charge.group_id.0, now).await?;
    }
    let headroom = sub.as_ref().map(|s| s.plan.headroom(&s.states, now));
    let split = split_charge(mode, headroom, charge.amount);
    let mut sub_id = None;
    if let Some(s) = sub.as_mut()
        && split.subscription.is_positive()
    {
        s.plan.charge(&mut s.states, split.subscription, now);
        save_windows(tx, s).await?;
        sub_id = Some(s.id);
    }

    let released = hold.as_ref().map_or(0, |h| h.wallet_amount);
    let wallet_charge = split.wallet.nanos();
    tx.exec(
        Q::new("UPDATE wallets SET balance = balance - $2, held = held - $3, updated_at = $4 WHERE user_id = $1")
            .bind(user)
            .bind(wallet_charge)
            .bind(released)
            .bind(now),
    )
    .await?;
    tx.exec(
        Q::new(
            "INSERT INTO ledger_entries (user_id, kind, ref, amount, balance_delta, held_delta, balance_after, \
             group_id, subscription_id, subscription_amount, memo, created_at) \
             VALUES ($1, 'settle', $2, $3, $4, $5, $6, $7, $8, $9, '', $10)",
        )
        .bind(user)
        .bind(&charge.request_id)
        .bind(charge.amount.nanos())
        .bind(-wallet_charge)
        .bind(-released)
        .bind(balance - wallet_charge)
        .bind(charge.group_id.0)
        .bind(sub_id)
        .bind(split.subscription.nanos())
        .bind(now),
    )
    .await?;
    if balance >= 0 && balance - wallet_charge < 0 {
        tracing::warn!(
            user = user,
            request_id = %charge.request_id,
            "settlement exceeded the available balance (hold estimate below the vendor's count)"
        );
    }
    Ok(Ok(Settlement {
        request_id: charge.request_id.clone(),
        charged: charge.amount,
        replayed: false,
    }))
}

/// Releases a hold inside the caller's transaction; nothing if it is already settled or released.
pub(crate) async fn release_tx(
    tx: &mut TxOf<'_>,
    request_id: &str,
    user: i64,
    now: i64,
    memo: &str,
) -> Result<bool, sqlx::Error> {
    if lock_wallet(tx, user).await?.is_none() {
        return Ok(false);
    }
    match take_hold(tx, request_id, user).await? {
        Some(h) => {
            release_taken_hold(tx, &h, now, memo).await?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Credits (or debits) inside the caller's transaction; idempotent by (kind, key).
pub(crate) async fn credit_tx(
    tx: &mut TxOf<'_>,
    credit: &Credit,
    now: i64,
) -> Result<Result<CreditOutcome, LedgerError>, sqlx::Error> {
    if !matches!(
        credit.kind,
        EntryKind::Credit | EntryKind::Refund | EntryKind::Adjustment
    ) {
        return Ok(Err(invalid(
            "a credit's kind is credit, refund or adjustment",
        )));
    }
    let user = credit.user_id.0;
    let Some((balance, held)) = lock_wallet(tx, user).await? else {
        return Ok(Err(LedgerError::UnknownUser(credit.user_id)));
    };
    let prior = tx
        .opt(
            Q::new("SELECT balance_after FROM ledger_entries WHERE kind = $1 AND ref = $2")
                .bind(credit.kind.as_str())
                .bind(&credit.idempotency_key),
        )
        .await?;
    if let Some(r) = prior {
        let first = r.opt_i64("balance_after")?.unwrap_or(balance);
        return Ok(Ok(CreditOutcome {
            balance: Money::from_nanos(first),
            replayed: true,
        }));
    }
    let amount = credit.amount.nanos();
    let Some(new_balance) = balance.checked_add(amount) else {
        return Ok(Err(invalid("the credit overflows the balance")));
    };
    if amount < 0 && new_balance - held < 0 {
        return Ok(Err(LedgerError::WouldOverdraw {
            amount: Money::from_nanos(amount.saturating_neg()),
        }));
    }
    tx.exec(
        Q::new("UPDATE wallets SET balance = balance + $2, updated_at = $3 WHERE user_id = $1")
            .bind(user)
            .bind(amount)
            .bind(now),
    )
    .await?;
    tx.exec(
        Q::new(
            "INSERT INTO ledger_entries (user_id, kind, ref, amount, balance_delta, held_delta, balance_after, \
             subscription_amount, memo, created_at) VALUES ($1, $2, $3, $4, $4, 0, $5, 0, $6, $7)",
        )
        .bind(user)
        .bind(credit.kind.as_str())
        .bind(&credit.idempotency_key)
        .bind(amount)
        .bind(new_balance)
        .bind(&credit.memo)
        .bind(now),
    )
    .await?;
    Ok(Ok(CreditOutcome {
        balance: Money::from_nanos(new_balance),
        replayed: false,
    }))
}

/// One hold in its own transaction: the Postgres single-statement path when the group bills
/// only the wallet, the general path otherwise. The ledger writer's fallback when a batch fails.
pub(crate) async fn reserve_one(
    shared: &Shared,
    req: &HoldRequest,
    now: i64,
) -> Result<Hold, LedgerError> {
    if shared.pool.backend() == Backend::Postgres {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match pg_reserve_wallet(shared, req, now).await {
                Ok(Some(r)) => return r,
                Ok(None) => break,
                Err(e) if attempt < 8 && crate::db::is_transient(&e) => continue,
                Err(e) => return Err(unavailable(e)),
            }
        }
    }
    let pool: &Pool = &shared.pool;
    let r = in_tx!(
        pool,
        |tx| match reserve_tx(&mut tx, shared, req, now).await {
            Ok(r) => r,
            Err(e) if is_unique_violation(&e) =>
                Err(LedgerError::DuplicateHold(req.request_id.clone())),
            Err(e) => return Err(e),
        }
    );
    r.map_err(unavailable)?
}

/// One release in its own transaction (the ledger writer's fallback).
pub(crate) async fn release_one(shared: &Shared, hold: &Hold, now: i64) -> Result<(), LedgerError> {
    let pool = &shared.pool;
    in_tx!(pool, |tx| release_tx(
        &mut tx,
        &hold.request_id,
        hold.user_id.0,
        now,
        "released"
    )
    .await?)
    .map(|_| ())
    .map_err(unavailable)
}

#[async_trait]
impl Ledger for SqlStore {
    async fn reserve(&self, req: HoldRequest) -> Result<Hold, LedgerError> {
        if req.amount.is_negative() {
            return Err(invalid("a hold amount is never negative"));
        }
        self.inner.writer.hold(req).await
    }

    async fn settle(&self, charge: Charge) -> Result<Settlement, LedgerError> {
        if charge.amount.is_negative() {
            return Err(invalid("a charge is never negative"));
        }
        self.inner.writer.settle(charge).await
    }

    async fn release(&self, hold: &Hold) -> Result<(), LedgerError> {
        self.inner.writer.release(hold.clone()).await
    }

    async fn credit(&self, credit: Credit) -> Result<CreditOutcome, LedgerError> {
        let shared = self.shared();
        let now = shared.clock.now_ms();
        let pool = &shared.pool;
        let r = in_tx!(pool, |tx| credit_tx(&mut tx, &credit, now).await?);
        match r {
            Ok(r) => r,
            // Two first-time credits with the same key raced: the loser replays.
            Err(e) if is_unique_violation(&e) => self.credit(credit).await,
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn balance(&self, user: UserId) -> Result<Balance, LedgerError> {
        let row = self
            .shared()
            .pool
            .opt(Q::new("SELECT balance, held FROM wallets WHERE user_id = $1").bind(user.0))
            .await
            .map_err(unavailable)?
            .ok_or(LedgerError::UnknownUser(user))?;
        Ok(Balance {
            total: Money::from_nanos(row.i64("balance").map_err(unavailable)?),
            held: Money::from_nanos(row.i64("held").map_err(unavailable)?),
        })
    }
}

impl SqlStore {
    /// Checks the journal invariant (module docs) for every user and returns the users that break
    /// it; empty means the books balance. One statement, so one consistent snapshot.
    pub async fn verify_ledger(&self) -> Result<Vec<LedgerMismatch>, LedgerError> {
        let rows = self
            .shared()
            .pool
            .all(Q::new(
                "SELECT w.user_id, w.balance, w.held,
                    COALESCE((SELECT CAST(SUM(e.balance_delta) AS BIGINT) FROM ledger_entries e WHERE e.user_id = w.user_id), 0) AS jb,
                    COALESCE((SELECT CAST(SUM(e.held_delta) AS BIGINT) FROM ledger_entries e WHERE e.user_id = w.user_id), 0) AS jh,
                    COALESCE((SELECT CAST(SUM(h.wallet_amount) AS BIGINT) FROM holds h WHERE h.user_id = w.user_id), 0) AS oh
                 FROM wallets w ORDER BY w.user_id",
            ))
            .await
            .map_err(unavailable)?;
        let mut out = Vec::new();
        for r in rows {
            let m = (|| -> Result<LedgerMismatch, sqlx::Error> {
                Ok(LedgerMismatch {
                    user_id: UserId(r.i64("user_id")?),
                    journal_balance: Money::from_nanos(r.i64("jb")?),
                    balance: Money::from_nanos(r.i64("balance")?),
                    journal_held: Money::from_nanos(r.i64("jh")?),
                    held: Money::from_nanos(r.i64("held")?),
                    open_holds: Money::from_nanos(r.i64("oh")?),
                })
            })()
            .map_err(unavailable)?;
            if m.journal_balance != m.balance || m.journal_held != m.held || m.open_holds != m.held
            {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// Checks that every subscription window's `held` equals the subscription part of the open
    /// holds billed to that subscription; returns the windows that disagree.
    pub async fn verify_subscription_holds(
        &self,
    ) -> Result<Vec<SubscriptionHoldMismatch>, LedgerError> {
        let rows = self
            .shared()
            .pool
            .all(Q::new(
                "SELECT sw.subscription_id, sw.idx, sw.held,
                    COALESCE((SELECT CAST(SUM(h.subscription_amount) AS BIGINT) FROM holds h
                              WHERE h.subscription_id = sw.subscription_id), 0) AS oh
                 FROM subscription_windows sw ORDER BY sw.subscription_id, sw.idx",
            ))
            .await
            .map_err(unavailable)?;
        let mut out = Vec::new();
        for r in rows {
            let m = (|| -> Result<SubscriptionHoldMismatch, sqlx::Error> {
                Ok(SubscriptionHoldMismatch {
                    subscription_id: crate::subscriptions::SubscriptionId(
                        r.i64("subscription_id")?,
                    ),
                    window: r.i64("idx")?,
                    held: Money::from_nanos(r.i64("held")?),
                    open_holds: Money::from_nanos(r.i64("oh")?),
                })
            })()
            .map_err(unavailable)?;
            if m.held != m.open_holds {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// The open holds of a user (request ids and amounts), for operators.
    pub async fn open_holds(&self, user: UserId) -> Result<Vec<Hold>, LedgerError> {
        let rows = self
            .shared()
            .pool
            .all(
                Q::new("SELECT request_id, user_id, group_id, amount FROM holds WHERE user_id = $1 ORDER BY created_at, request_id")
                    .bind(user.0),
            )
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                Ok(Hold {
                    request_id: r.text("request_id")?,
                    user_id: UserId(r.i64("user_id")?),
                    group_id: GroupId(r.i64("group_id")?),
                    amount: Money::from_nanos(r.i64("amount")?),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(unavailable)
    }
}
