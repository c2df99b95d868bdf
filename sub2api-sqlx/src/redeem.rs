//! Redeem codes: generated in batches, each worth a balance credit or days of a plan, redeemable
//! exactly once.
//!
//! Redeeming is one transaction: a conditional `UPDATE … SET status = 'used' WHERE status =
//! 'unused' AND not expired` claims the code (on Postgres concurrent claimers queue on the row lock
//! and re-check the condition, on SQLite writers are serialised), then the credit is journaled in
//! the same transaction with idempotency key `redeem:<code>`. The claim and the money commit
//! together or not at all, so twenty concurrent attempts credit once and a crash in between
//! leaves the code unused.

use rand::Rng;
use serde::{Deserialize, Serialize};
use sub2api_core::domain::UserId;
use sub2api_core::ledger::{Credit, EntryKind, LedgerError};
use sub2api_core::money::Money;
use sub2api_core::store::StoreError;

use crate::db::{Q, Row};
use crate::ledger::{credit_tx, in_tx, lock_wallet};
use crate::subscriptions::{PlanId, Subscription, grant_plan_tx};
use crate::{SqlStore, store_err};

/// What a code is worth.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RedeemValue {
    Balance { amount: Money },
    Plan { plan_id: PlanId, days: i64 },
}

/// A batch to generate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedeemBatch {
    pub value: RedeemValue,
    pub count: u32,
    /// Unix ms after which the codes no longer redeem; `None` = never.
    pub expires_at_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeneratedCodes {
    pub batch_id: String,
    pub codes: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedeemStatus {
    Unused,
    Used,
    Disabled,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedeemCode {
    pub code: String,
    pub batch_id: String,
    pub value: RedeemValue,
    pub status: RedeemStatus,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub used_by: Option<UserId>,
    pub used_at_ms: Option<i64>,
}

/// What redeeming gave the user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Redeemed {
    Balance { amount: Money, balance: Money },
    Plan { subscription: Subscription },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedeemError {
    #[error("no such redeem code")]
    NotFound,
    #[error("this redeem code has already been used")]
    AlreadyUsed,
    #[error("this redeem code has expired")]
    Expired,
    #[error("this redeem code has been disabled")]
    Disabled,
    #[error("unknown user {0}")]
    UnknownUser(UserId),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Unambiguous characters (no 0/O, 1/I): 32 symbols, 5 bits each; 16 of them are 80 bits.
const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

fn new_code() -> String {
    let mut rng = rand::rng();
    let mut s = String::with_capacity(19);
    for i in 0..16 {
        if i > 0 && i % 4 == 0 {
            s.push('-');
        }
        s.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    s
}

/// Codes are matched case-insensitively and with surrounding whitespace ignored.
pub fn normalize_code(code: &str) -> String {
    code.trim().to_ascii_uppercase()
}

fn code_from_row(r: &Row) -> Result<RedeemCode, sqlx::Error> {
    let value = match r.text("kind")?.as_str() {
        "balance" => RedeemValue::Balance {
            amount: Money::from_nanos(r.opt_i64("value")?.unwrap_or(0)),
        },
        _ => RedeemValue::Plan {
            plan_id: PlanId(r.opt_i64("plan_id")?.unwrap_or(0)),
            days: r.opt_i64("duration_days")?.unwrap_or(0),
        },
    };
    let status = match r.text("status")?.as_str() {
        "unused" => RedeemStatus::Unused,
        "used" => RedeemStatus::Used,
        _ => RedeemStatus::Disabled,
    };
    Ok(RedeemCode {
        code: r.text("code")?,
        batch_id: r.text("batch_id")?,
        value,
        status,
        created_at_ms: r.i64("created_at")?,
        expires_at_ms: r.opt_i64("expires_at")?,
        used_by: r.opt_i64("used_by")?.map(UserId),
        used_at_ms: r.opt_i64("used_at")?,
    })
}

const CODE_COLUMNS: &str = "code, batch_id, kind, value, plan_id, duration_days, status, created_at, expires_at, used_by, used_at";

impl SqlStore {
    /// Generates `count` random codes of one value, in one transaction.
    pub async fn generate_redeem_codes(
        &self,
        batch: RedeemBatch,
    ) -> Result<GeneratedCodes, StoreError> {
        if batch.count == 0 || batch.count > 100_000 {
            return Err(StoreError::Invalid("a batch has 1 to 100000 codes".into()));
        }
        let (kind, value, plan, days) = match &batch.value {
            RedeemValue::Balance { amount } if amount.is_positive() => {
                ("balance", Some(amount.nanos()), None, None)
            }
            RedeemValue::Plan { plan_id, days } if *days > 0 => {
                ("subscription", None, Some(plan_id.0), Some(*days))
            }
            _ => {
                return Err(StoreError::Invalid(
                    "a code is worth a positive amount or a positive number of days".into(),
                ));
            }
        };
        if let Some(p) = plan
            && self.plan(PlanId(p)).await?.is_none()
        {
            return Err(StoreError::NotFound(format!("plan {p}")));
        }
        let batch_id = format!("rb-{:016x}", rand::rng().random::<u64>());
        let codes: Vec<String> = (0..batch.count).map(|_| new_code()).collect();
        let now = self.now_ms();
        let pool = &self.shared().pool;
        in_tx!(pool, |tx| {
            for code in &codes {
                tx.exec(
                    Q::new(
                        "INSERT INTO redeem_codes (code, batch_id, kind, value, plan_id, duration_days, status, created_at, expires_at)
                         VALUES ($1, $2, $3, $4, $5, $6, 'unused', $7, $8)",
                    )
                    .bind(code)
                    .bind(&batch_id)
                    .bind(kind)
                    .bind(value)
                    .bind(plan)
                    .bind(days)
                    .bind(now)
                    .bind(batch.expires_at_ms),
                )
                .await?;
            }
        })
        .map_err(store_err)?;
        Ok(GeneratedCodes { batch_id, codes })
    }

    pub async fn redeem_code(&self, code: &str) -> Result<Option<RedeemCode>, StoreError> {
        let row = self
            .shared()
            .pool
            .opt(
                Q::built(format!(
                    "SELECT {CODE_COLUMNS} FROM redeem_codes WHERE code = $1"
                ))
                .bind(normalize_code(code)),
            )
            .await
            .map_err(store_err)?;
        row.map(|r| code_from_row(&r))
            .transpose()
            .map_err(store_err)
    }

    pub async fn redeem_codes_of_batch(
        &self,
        batch_id: &str,
    ) -> Result<Vec<RedeemCode>, StoreError> {
        let rows = self
            .shared()
            .pool
            .all(
                Q::built(format!(
                    "SELECT {CODE_COLUMNS} FROM redeem_codes WHERE batch_id = $1 ORDER BY code"
                ))
                .bind(batch_id),
            )
            .await
            .map_err(store_err)?;
        rows.iter()
            .map(code_from_row)
            .collect::<Result<_, _>>()
            .map_err(store_err)
    }

    /// Disables an unused code. Returns whether it was unused.
    pub async fn disable_redeem_code(&self, code: &str) -> Result<bool, StoreError> {
        let n = self
            .shared()
            .pool
            .exec(
                Q::new("UPDATE redeem_codes SET status = 'disabled' WHERE code = $1 AND status = 'unused'")
                    .bind(normalize_code(code)),
            )
            .await
            .map_err(store_err)?;
        Ok(n == 1)
    }

    /// Redeems a code for a user, exactly once across any concurrency.
    pub async fn redeem(&self, code: &str, user: UserId) -> Result<Redeemed, RedeemError> {
        let code = normalize_code(code);
        let now = self.now_ms();
        let pool = &self.shared().pool;
        let r = in_tx!(pool, |tx| {
            if lock_wallet(&mut tx, user.0).await?.is_none() {
                return Ok(Err(RedeemError::UnknownUser(user)));
            }
            let claimed = tx
                .opt(
                    Q::new(
                        "UPDATE redeem_codes SET status = 'used', used_by = $2, used_at = $3
                         WHERE code = $1 AND status = 'unused' AND (expires_at IS NULL OR expires_at > $3)
                         RETURNING kind, value, plan_id, duration_days",
                    )
                    .bind(&code)
                    .bind(user.0)
                    .bind(now),
                )
                .await?;
            let Some(c) = claimed else {
                let why = tx
                    .opt(
                        Q::new("SELECT status, expires_at FROM redeem_codes WHERE code = $1")
                            .bind(&code),
                    )
                    .await?;
                return Ok(Err(match why {
                    None => RedeemError::NotFound,
                    Some(r) => match r.text("status")?.as_str() {
                        "used" => RedeemError::AlreadyUsed,
                        "disabled" => RedeemError::Disabled,
                        _ => RedeemError::Expired,
                    },
                }));
            };
            if c.text("kind")? == "balance" {
                let amount = Money::from_nanos(c.opt_i64("value")?.unwrap_or(0));
                let credit = Credit {
                    user_id: user,
                    amount,
                    idempotency_key: format!("redeem:{code}"),
                    kind: EntryKind::Credit,
                    memo: "redeem code".into(),
                };
                match credit_tx(&mut tx, &credit, now).await? {
                    Ok(o) => Ok::<_, RedeemError>(Redeemed::Balance {
                        amount,
                        balance: o.balance,
                    }),
                    Err(LedgerError::UnknownUser(u)) => {
                        return Ok(Err(RedeemError::UnknownUser(u)));
                    }
                    Err(e) => {
                        return Ok(Err(RedeemError::Store(StoreError::Unavailable(
                            e.to_string(),
                        ))));
                    }
                }
            } else {
                let plan = c.opt_i64("plan_id")?.unwrap_or(0);
                let days = c.opt_i64("duration_days")?.unwrap_or(0);
                match grant_plan_tx(&mut tx, user.0, plan, days, now).await? {
                    Ok(subscription) => Ok(Redeemed::Plan { subscription }),
                    Err(e) => return Ok(Err(RedeemError::Store(e))),
                }
            }
        });
        r.map_err(|e| RedeemError::Store(store_err(e)))?
    }
}
