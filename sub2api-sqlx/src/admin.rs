//! What the admin and user API needs from the database ([`AdminStore`]) and the key quota
//! accounting of the relay path ([`KeyQuotas`]).
//!
//! Key quotas are exact across any number of relay processes: a quota hold is one row of
//! `key_quota_holds` taken in a write transaction that first locks the key's row (`FOR UPDATE` on
//! Postgres; SQLite serialises writers), and counted only until its expiry, so the holds of a
//! crashed process stop counting by themselves. Settling a request turns its hold into
//! `api_keys.quota_used` by the exact charge.

use async_trait::async_trait;
use sub2api_core::api::quota::{KeyQuotas, QuotaHold};
use sub2api_core::api::store::*;
use sub2api_core::domain::{
    Account, AccountId, Group, GroupId, IpNet, KeyHash, KeyId, KeyLimits, KeyRules, UserId,
};
use sub2api_core::ledger::Ledger;
use sub2api_core::money::{Money, Multiplier};
use sub2api_core::store::{Directory, NewAccount, StoreError, UsageQuery};

use crate::db::{Arg, Q, Row};
use crate::ledger::in_tx;
use crate::redeem::{RedeemBatch, RedeemCode, RedeemError, RedeemStatus, RedeemValue, Redeemed};
use crate::subscriptions::{NewPlan, Plan, PlanId, Subscription, SubscriptionId};
use crate::{SqlStore, store_err};

const USER_COLUMNS: &str = "id, email, enabled, is_admin, created_at, concurrency, rpm";
const KEY_COLUMNS: &str = "id, user_id, group_id, name, enabled, concurrency_limit, rpm_limit, created_at, hint, quota, \
     quota_used, expires_at, ip_allowlist";

fn user_from_row(r: &Row) -> Result<UserRecord, sqlx::Error> {
    Ok(UserRecord {
        id: UserId(r.i64("id")?),
        email: r.text("email")?,
        enabled: r.bool("enabled")?,
        is_admin: r.bool("is_admin")?,
        created_at_ms: r.i64("created_at")?,
        limits: crate::directory::user_limits_from_row(r, "concurrency", "rpm")?,
    })
}

fn limit(v: Option<i64>) -> Option<u32> {
    v.map(|v| v.clamp(0, u32::MAX as i64) as u32)
}

/// The rules columns of `api_keys` (`quota`, `expires_at`, `ip_allowlist`).
pub(crate) fn key_rules_from_row(r: &Row) -> Result<KeyRules, sqlx::Error> {
    let list = r.text("ip_allowlist")?;
    Ok(KeyRules {
        quota: r.opt_i64("quota")?.map(Money::from_nanos),
        expires_at_ms: r.opt_i64("expires_at")?,
        ip_allowlist: list
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .map_err(|e| sqlx::Error::Decode(e.into()))
            })
            .collect::<Result<_, _>>()?,
    })
}

fn allowlist_text(list: &[IpNet]) -> String {
    list.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn key_from_row(r: &Row) -> Result<KeyRecord, sqlx::Error> {
    Ok(KeyRecord {
        id: KeyId(r.i64("id")?),
        user_id: UserId(r.i64("user_id")?),
        group_id: GroupId(r.i64("group_id")?),
        name: r.text("name")?,
        enabled: r.bool("enabled")?,
        hint: r.text("hint")?,
        limits: KeyLimits {
            concurrency: limit(r.opt_i64("concurrency_limit")?),
            rpm: limit(r.opt_i64("rpm_limit")?),
        },
        rules: key_rules_from_row(r)?,
        quota_used: Money::from_nanos(r.i64("quota_used")?),
        created_at_ms: r.i64("created_at")?,
    })
}

fn plan_record(p: Plan) -> PlanRecord {
    PlanRecord {
        id: p.id.0,
        name: p.name,
        group_id: p.group_id,
        duration_days: p.duration_days,
        windows: p.windows.0,
        enabled: p.enabled,
        price_minor: p.price_minor,
        currency: p.currency,
    }
}

fn subscription_record(s: Subscription) -> SubscriptionRecord {
    SubscriptionRecord {
        id: s.id.0,
        user_id: s.user_id,
        plan_id: s.plan_id.0,
        group_id: s.group_id,
        starts_at_ms: s.starts_at_ms,
        expires_at_ms: s.expires_at_ms,
        revoked: s.cancelled,
    }
}

fn subscription_from_row(r: &Row) -> Result<SubscriptionRecord, sqlx::Error> {
    Ok(SubscriptionRecord {
        id: r.i64("id")?,
        user_id: UserId(r.i64("user_id")?),
        plan_id: r.i64("plan_id")?,
        group_id: GroupId(r.i64("group_id")?),
        starts_at_ms: r.i64("starts_at")?,
        expires_at_ms: r.i64("expires_at")?,
        revoked: r.text("status")? == "cancelled",
    })
}

fn code_record(c: RedeemCode) -> RedeemCodeRecord {
    RedeemCodeRecord {
        code: c.code,
        batch_id: c.batch_id,
        value: match c.value {
            RedeemValue::Balance { amount } => CodeValue::Balance { amount },
            RedeemValue::Plan { plan_id, days } => CodeValue::Plan {
                plan_id: plan_id.0,
                days,
            },
        },
        status: match c.status {
            RedeemStatus::Unused => CodeStatus::Unused,
            RedeemStatus::Used => CodeStatus::Used,
            RedeemStatus::Disabled => CodeStatus::Disabled,
        },
        created_at_ms: c.created_at_ms,
        expires_at_ms: c.expires_at_ms,
        used_by: c.used_by,
        used_at_ms: c.used_at_ms,
    }
}

fn code_from_row(r: &Row) -> Result<RedeemCodeRecord, sqlx::Error> {
    Ok(RedeemCodeRecord {
        code: r.text("code")?,
        batch_id: r.text("batch_id")?,
        value: match r.text("kind")?.as_str() {
            "balance" => CodeValue::Balance {
                amount: Money::from_nanos(r.opt_i64("value")?.unwrap_or(0)),
            },
            _ => CodeValue::Plan {
                plan_id: r.opt_i64("plan_id")?.unwrap_or(0),
                days: r.opt_i64("duration_days")?.unwrap_or(0),
            },
        },
        status: match r.text("status")?.as_str() {
            "unused" => CodeStatus::Unused,
            "used" => CodeStatus::Used,
            _ => CodeStatus::Disabled,
        },
        created_at_ms: r.i64("created_at")?,
        expires_at_ms: r.opt_i64("expires_at")?,
        used_by: r.opt_i64("used_by")?.map(UserId),
        used_at_ms: r.opt_i64("used_at")?,
    })
}

fn order_from_row(r: &Row) -> Result<OrderView, sqlx::Error> {
    Ok(OrderView {
        id: r.i64("id")?,
        out_trade_no: r.text("out_trade_no")?,
        user_id: UserId(r.i64("user_id")?),
        provider: r.text("provider")?,
        amount_minor: r.i64("amount_minor")?,
        currency: r.text("currency")?,
        credit: Money::from_nanos(r.i64("credit")?),
        status: r.text("status")?,
        kind: r.text("kind")?,
        plan_id: r.opt_i64("plan_id")?,
        created_at_ms: r.i64("created_at")?,
        paid_at_ms: r.opt_i64("paid_at")?,
    })
}

fn all<T>(rows: &[Row], f: impl Fn(&Row) -> Result<T, sqlx::Error>) -> Result<Vec<T>, StoreError> {
    rows.iter()
        .map(f)
        .collect::<Result<_, _>>()
        .map_err(store_err)
}

impl SqlStore {
    async fn rates(&self, group: Option<i64>) -> Result<Vec<(GroupId, UserRate)>, StoreError> {
        let rows = self
            .shared()
            .pool
            .all(
                Q::new(
                    "SELECT group_id, user_id, rate_multiplier_ppm FROM group_user_rates
                     WHERE $1 IS NULL OR group_id = $1 ORDER BY group_id, user_id",
                )
                .bind(group),
            )
            .await
            .map_err(store_err)?;
        all(&rows, |r| {
            Ok((
                GroupId(r.i64("group_id")?),
                UserRate {
                    user_id: UserId(r.i64("user_id")?),
                    rate_multiplier: Multiplier::from_ppm(r.i64("rate_multiplier_ppm")?),
                },
            ))
        })
    }

    async fn group_records_where(&self, only: Option<i64>) -> Result<Vec<GroupRecord>, StoreError> {
        let rows = self
            .shared()
            .pool
            .all(
                Q::new(
                    "SELECT id, name, platform, rate_multiplier_ppm, billing_mode FROM groups
                     WHERE $1 IS NULL OR id = $1 ORDER BY id",
                )
                .bind(only),
            )
            .await
            .map_err(store_err)?;
        let rates = self.rates(only).await?;
        all(&rows, |r| {
            let platform = r.text("platform")?;
            let id = GroupId(r.i64("id")?);
            Ok(GroupRecord {
                group: Group {
                    id,
                    name: r.text("name")?,
                    platform: platform
                        .parse()
                        .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
                    rate_multiplier: Multiplier::from_ppm(r.i64("rate_multiplier_ppm")?),
                },
                billing_mode: r.text("billing_mode")?.parse().unwrap_or_default(),
                user_rates: rates
                    .iter()
                    .filter(|(g, _)| *g == id)
                    .map(|(_, r)| *r)
                    .collect(),
            })
        })
    }
}

#[async_trait]
impl AdminStore for SqlStore {
    async fn create_user(&self, user: NewUser) -> Result<UserRecord, StoreError> {
        let now = self.now_ms();
        let pool = &self.shared().pool;
        let row = in_tx!(pool, |tx| {
            let row = tx
                .one(
                    Q::built(format!(
                        "INSERT INTO users (email, enabled, created_at, password_hash, is_admin, concurrency, rpm)
                         VALUES ($1, TRUE, $2, $3, $4, $5, $6)
                         RETURNING {USER_COLUMNS}"
                    ))
                    .bind(&user.email)
                    .bind(now)
                    .bind(user.password_hash.clone())
                    .bind(user.is_admin)
                    .bind(user.limits.concurrency.map(i64::from))
                    .bind(user.limits.rpm.map(i64::from)),
                )
                .await?;
            tx.exec(
                Q::new("INSERT INTO wallets (user_id, balance, held, updated_at) VALUES ($1, 0, 0, $2)")
                    .bind(row.i64("id")?)
                    .bind(now),
            )
            .await?;
            row
        })
        .map_err(store_err)?;
        user_from_row(&row).map_err(store_err)
    }

    async fn user_record(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        let row = self
            .shared()
            .pool
            .opt(Q::built(format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1")).bind(id.0))
            .await
            .map_err(store_err)?;
        row.map(|r| user_from_row(&r))
            .transpose()
            .map_err(store_err)
    }

    async fn user_records(&self, offset: u32, limit: u32) -> Result<Vec<UserRecord>, StoreError> {
        let rows = self
            .shared()
            .pool
            .all(
                Q::built(format!(
                    "SELECT {USER_COLUMNS} FROM users ORDER BY id LIMIT $1 OFFSET $2"
                ))
                .bind(i64::from(limit))
                .bind(i64::from(offset)),
            )
            .await
            .map_err(store_err)?;
        all(&rows, user_from_row)
    }

    async fn user_login(
        &self,
        email: &str,
    ) -> Result<Option<(UserRecord, Option<String>)>, StoreError> {
        let row = self
            .shared()
            .pool
            .opt(
                Q::built(format!(
                    "SELECT {USER_COLUMNS}, password_hash FROM users WHERE email = $1"
                ))
                .bind(email),
            )
            .await
            .map_err(store_err)?;
        row.map(|r| Ok((user_from_row(&r)?, r.opt_text("password_hash")?)))
            .transpose()
            .map_err(store_err)
    }

    async fn password_hash(&self, id: UserId) -> Result<Option<String>, StoreError> {
        let row = self
            .shared()
            .pool
            .opt(Q::new("SELECT password_hash FROM users WHERE id = $1").bind(id.0))
            .await
            .map_err(store_err)?;
        Ok(row
            .map(|r| r.opt_text("password_hash"))
            .transpose()
            .map_err(store_err)?
            .flatten())
    }

    async fn update_user(&self, id: UserId, patch: UserPatch) -> Result<UserRecord, StoreError> {
        let pool = &self.shared().pool;
        let n = in_tx!(pool, |tx| {
            let mut n = tx
                .exec(Q::new("UPDATE users SET email = email WHERE id = $1").bind(id.0))
                .await?;
            if let Some(e) = patch.enabled {
                n = tx
                    .exec(
                        Q::new("UPDATE users SET enabled = $2 WHERE id = $1")
                            .bind(id.0)
                            .bind(e),
                    )
                    .await?;
            }
            if let Some(a) = patch.is_admin {
                tx.exec(
                    Q::new("UPDATE users SET is_admin = $2 WHERE id = $1")
                        .bind(id.0)
                        .bind(a),
                )
                .await?;
            }
            if let Some(h) = &patch.password_hash {
                tx.exec(
                    Q::new("UPDATE users SET password_hash = $2 WHERE id = $1")
                        .bind(id.0)
                        .bind(h),
                )
                .await?;
            }
            if let Some(l) = &patch.limits {
                tx.exec(
                    Q::new("UPDATE users SET concurrency = $2, rpm = $3 WHERE id = $1")
                        .bind(id.0)
                        .bind(l.concurrency.map(i64::from))
                        .bind(l.rpm.map(i64::from)),
                )
                .await?;
            }
            n
        })
        .map_err(store_err)?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("user {id}")));
        }
        self.user_record(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("user {id}")))
    }

    async fn create_key(&self, key: NewKeyRecord) -> Result<KeyRecord, StoreError> {
        if key.key.is_empty() {
            return Err(StoreError::Invalid("an API key must not be empty".into()));
        }
        let row = self
            .shared()
            .pool
            .one(
                Q::built(format!(
                    "INSERT INTO api_keys (key_hash, user_id, group_id, name, enabled, concurrency_limit, rpm_limit, created_at,
                                           hint, quota, quota_used, expires_at, ip_allowlist)
                     VALUES ($1, $2, $3, $4, TRUE, $5, $6, $7, $8, $9, 0, $10, $11)
                     RETURNING {KEY_COLUMNS}"
                ))
                .bind(KeyHash::of(key.key.expose()).0.to_vec())
                .bind(key.user_id.0)
                .bind(key.group_id.0)
                .bind(&key.name)
                .bind(key.limits.concurrency.map(i64::from))
                .bind(key.limits.rpm.map(i64::from))
                .bind(self.now_ms())
                .bind(key_hint(key.key.expose()))
                .bind(key.rules.quota.map(Money::nanos))
                .bind(key.rules.expires_at_ms)
                .bind(allowlist_text(&key.rules.ip_allowlist)),
            )
            .await
            .map_err(store_err)?;
        key_from_row(&row).map_err(store_err)
    }

    async fn key_record(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let row = self
            .shared()
            .pool
            .opt(Q::built(format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1")).bind(id.0))
            .await
            .map_err(store_err)?;
        row.map(|r| key_from_row(&r)).transpose().map_err(store_err)
    }

    async fn key_records(&self, user: Option<UserId>) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = self
            .shared()
            .pool
            .all(
                Q::built(format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE $1 IS NULL OR user_id = $1 ORDER BY id"))
                    .bind(user.map(|u| u.0)),
            )
            .await
            .map_err(store_err)?;
        all(&rows, key_from_row)
    }

    async fn update_key(&self, id: KeyId, patch: KeyPatch) -> Result<KeyRecord, StoreError> {
        let k = self
            .key_record(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("key {id}")))?;
        let limits = patch.limits.unwrap_or(k.limits);
        let quota = patch.quota.unwrap_or(k.rules.quota);
        let expires = patch.expires_at_ms.unwrap_or(k.rules.expires_at_ms);
        let allow = patch.ip_allowlist.unwrap_or(k.rules.ip_allowlist);
        self.shared()
            .pool
            .exec(
                Q::new(
                    "UPDATE api_keys SET name = $2, enabled = $3, concurrency_limit = $4, rpm_limit = $5, quota = $6,
                                         expires_at = $7, ip_allowlist = $8
                     WHERE id = $1",
                )
                .bind(id.0)
                .bind(patch.name.unwrap_or(k.name))
                .bind(patch.enabled.unwrap_or(k.enabled))
                .bind(limits.concurrency.map(i64::from))
                .bind(limits.rpm.map(i64::from))
                .bind(quota.map(Money::nanos))
                .bind(expires)
                .bind(allowlist_text(&allow)),
            )
            .await
            .map_err(store_err)?;
        self.key_record(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("key {id}")))
    }

    async fn group_record(&self, id: GroupId) -> Result<Option<GroupRecord>, StoreError> {
        Ok(self.group_records_where(Some(id.0)).await?.pop())
    }

    async fn group_records(&self) -> Result<Vec<GroupRecord>, StoreError> {
        self.group_records_where(None).await
    }

    async fn update_group(
        &self,
        id: GroupId,
        patch: GroupPatch,
    ) -> Result<GroupRecord, StoreError> {
        let now = self.now_ms();
        let pool = &self.shared().pool;
        in_tx!(pool, |tx| {
            if let Some(p) = patch.platform {
                tx.exec(
                    Q::new("UPDATE groups SET platform = $2, updated_at = $3 WHERE id = $1")
                        .bind(id.0)
                        .bind(p.as_str())
                        .bind(now),
                )
                .await?;
            }
            if let Some(m) = patch.rate_multiplier {
                tx.exec(
                    Q::new(
                        "UPDATE groups SET rate_multiplier_ppm = $2, updated_at = $3 WHERE id = $1",
                    )
                    .bind(id.0)
                    .bind(m.ppm())
                    .bind(now),
                )
                .await?;
            }
            if let Some(b) = patch.billing_mode {
                tx.exec(
                    Q::new("UPDATE groups SET billing_mode = $2, updated_at = $3 WHERE id = $1")
                        .bind(id.0)
                        .bind(b.as_str())
                        .bind(now),
                )
                .await?;
            }
        })
        .map_err(store_err)?;
        self.group_record(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("group {id}")))
    }

    async fn delete_group(&self, id: GroupId) -> Result<(), StoreError> {
        let pool = &self.shared().pool;
        in_tx!(pool, |tx| {
            let used = tx
                .opt(
                    Q::new(
                        "SELECT 1 AS x FROM api_keys WHERE group_id = $1
                         UNION ALL SELECT 1 AS x FROM plans WHERE group_id = $1
                         UNION ALL SELECT 1 AS x FROM subscriptions WHERE group_id = $1",
                    )
                    .bind(id.0),
                )
                .await?;
            if used.is_some() {
                Err(StoreError::Conflict(
                    "keys, plans or subscriptions use this group".into(),
                ))
            } else if tx
                .exec(Q::new("DELETE FROM groups WHERE id = $1").bind(id.0))
                .await?
                == 0
            {
                Err(StoreError::NotFound(format!("group {id}")))
            } else {
                Ok(())
            }
        })
        .map_err(store_err)?
    }

    async fn set_user_rate(
        &self,
        group: GroupId,
        user: UserId,
        rate: Option<Multiplier>,
    ) -> Result<(), StoreError> {
        let q = match rate {
            Some(r) => Q::new(
                "INSERT INTO group_user_rates (group_id, user_id, rate_multiplier_ppm) VALUES ($1, $2, $3)
                 ON CONFLICT (group_id, user_id) DO UPDATE SET rate_multiplier_ppm = excluded.rate_multiplier_ppm",
            )
            .bind(group.0)
            .bind(user.0)
            .bind(r.ppm()),
            None => Q::new("DELETE FROM group_user_rates WHERE group_id = $1 AND user_id = $2").bind(group.0).bind(user.0),
        };
        self.shared().pool.exec(q).await.map_err(store_err)?;
        Ok(())
    }

    async fn update_account(
        &self,
        id: AccountId,
        patch: AccountPatch,
    ) -> Result<Account, StoreError> {
        let account = self
            .accounts()
            .await?
            .into_iter()
            .find(|a| a.id == id)
            .ok_or_else(|| StoreError::NotFound(format!("account {id}")))?;
        let credentials = match patch.credentials {
            Some(c) => c,
            None => self.account_credentials(id).await?,
        };
        let groups = match patch.groups {
            Some(g) => g,
            None => {
                let all = self.groups().await?;
                account
                    .groups
                    .iter()
                    .filter_map(|g| all.iter().find(|x| x.id == *g).map(|x| x.name.clone()))
                    .collect()
            }
        };
        let updated = self
            .upsert_account(NewAccount {
                name: account.name,
                platform: account.platform,
                kind: account.kind,
                base_url: patch.base_url.unwrap_or(account.base_url),
                priority: patch.priority.unwrap_or(account.priority),
                concurrency: patch.concurrency.unwrap_or(account.concurrency),
                groups,
                credentials,
                options: patch.options.unwrap_or(account.options),
            })
            .await?;
        Ok(updated)
    }

    async fn delete_account(&self, id: AccountId) -> Result<(), StoreError> {
        let n = self
            .shared()
            .pool
            .exec(Q::new("DELETE FROM accounts WHERE id = $1").bind(id.0))
            .await
            .map_err(store_err)?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("account {id}")));
        }
        Ok(())
    }

    async fn set_account_enabled(&self, id: AccountId, enabled: bool) -> Result<(), StoreError> {
        SqlStore::set_account_enabled(self, id, enabled).await
    }

    async fn create_session(
        &self,
        token_hash: [u8; 32],
        user: UserId,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        let pool = &self.shared().pool;
        pool.exec(Q::new("DELETE FROM sessions WHERE expires_at <= $1").bind(now_ms))
            .await
            .map_err(store_err)?;
        pool.exec(
            Q::new("INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
                .bind(token_hash.to_vec())
                .bind(user.0)
                .bind(now_ms)
                .bind(expires_at_ms),
        )
        .await
        .map_err(store_err)?;
        Ok(())
    }

    async fn session_user(
        &self,
        token_hash: [u8; 32],
        now_ms: i64,
    ) -> Result<Option<UserId>, StoreError> {
        let row = self
            .shared()
            .pool
            .opt(
                Q::new("SELECT user_id FROM sessions WHERE token_hash = $1 AND expires_at > $2")
                    .bind(token_hash.to_vec())
                    .bind(now_ms),
            )
            .await
            .map_err(store_err)?;
        row.map(|r| r.i64("user_id").map(UserId))
            .transpose()
            .map_err(store_err)
    }

    async fn delete_session(&self, token_hash: [u8; 32]) -> Result<(), StoreError> {
        self.shared()
            .pool
            .exec(Q::new("DELETE FROM sessions WHERE token_hash = $1").bind(token_hash.to_vec()))
            .await
            .map_err(store_err)?;
        Ok(())
    }

    async fn delete_sessions_of(&self, user: UserId) -> Result<(), StoreError> {
        self.shared()
            .pool
            .exec(Q::new("DELETE FROM sessions WHERE user_id = $1").bind(user.0))
            .await
            .map_err(store_err)?;
        Ok(())
    }

    async fn settings(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self
            .shared()
            .pool
            .all(Q::new("SELECT name, value FROM settings ORDER BY name"))
            .await
            .map_err(store_err)?;
        all(&rows, |r| Ok((r.text("name")?, r.text("value")?)))
    }

    async fn set_setting(&self, name: &str, value: &str) -> Result<(), StoreError> {
        self.shared()
            .pool
            .exec(
                Q::new(
                    "INSERT INTO settings (name, value, updated_at) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                )
                .bind(name)
                .bind(value)
                .bind(self.now_ms()),
            )
            .await
            .map_err(store_err)?;
        Ok(())
    }

    async fn upsert_plan(&self, plan: NewPlanRecord) -> Result<PlanRecord, StoreError> {
        SqlStore::upsert_plan(
            self,
            NewPlan {
                name: plan.name,
                group_id: plan.group_id,
                duration_days: plan.duration_days,
                windows: plan.windows,
                price_minor: plan.price_minor,
                currency: plan.currency,
            },
        )
        .await
        .map(plan_record)
    }

    async fn plan_records(&self) -> Result<Vec<PlanRecord>, StoreError> {
        Ok(self.plans().await?.into_iter().map(plan_record).collect())
    }

    async fn assign_subscription(
        &self,
        user: UserId,
        plan: i64,
        starts_at_ms: i64,
        expires_at_ms: i64,
    ) -> Result<SubscriptionRecord, StoreError> {
        SqlStore::assign_subscription(self, user, PlanId(plan), starts_at_ms, expires_at_ms)
            .await
            .map(subscription_record)
    }

    async fn grant_plan_once(
        &self,
        user: UserId,
        plan: i64,
        days: i64,
        grant_key: &str,
    ) -> Result<SubscriptionRecord, StoreError> {
        SqlStore::grant_plan_once(self, user, PlanId(plan), days, grant_key)
            .await
            .map(subscription_record)
    }

    async fn take_back_plan_grant(
        &self,
        grant_key: &str,
        fallback_days: i64,
    ) -> Result<Option<SubscriptionRecord>, StoreError> {
        SqlStore::take_back_plan_grant(self, grant_key, fallback_days)
            .await
            .map(|s| s.map(subscription_record))
    }

    async fn subscription_record(&self, id: i64) -> Result<Option<SubscriptionRecord>, StoreError> {
        Ok(self
            .subscription(SubscriptionId(id))
            .await?
            .map(subscription_record))
    }

    async fn subscription_records(
        &self,
        user: Option<UserId>,
    ) -> Result<Vec<SubscriptionRecord>, StoreError> {
        let rows = self
            .shared()
            .pool
            .all(
                Q::new(
                    "SELECT id, user_id, plan_id, group_id, starts_at, expires_at, status FROM subscriptions
                     WHERE $1 IS NULL OR user_id = $1 ORDER BY id",
                )
                .bind(user.map(|u| u.0)),
            )
            .await
            .map_err(store_err)?;
        all(&rows, subscription_from_row)
    }

    async fn set_subscription_expiry(
        &self,
        id: i64,
        expires_at_ms: i64,
    ) -> Result<SubscriptionRecord, StoreError> {
        let n = self
            .shared()
            .pool
            .exec(
                Q::new(
                    "UPDATE subscriptions SET expires_at = $2 WHERE id = $1 AND status = 'active'",
                )
                .bind(id)
                .bind(expires_at_ms),
            )
            .await
            .map_err(store_err)?;
        if n == 0 {
            return Err(StoreError::Conflict(format!(
                "subscription {id} is not active"
            )));
        }
        self.subscription_record(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("subscription {id}")))
    }

    async fn revoke_subscription(&self, id: i64) -> Result<SubscriptionRecord, StoreError> {
        self.cancel_subscription(SubscriptionId(id)).await?;
        self.subscription_record(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("subscription {id}")))
    }

    async fn generate_codes(&self, batch: CodeBatch) -> Result<Vec<RedeemCodeRecord>, StoreError> {
        let value = match batch.value {
            CodeValue::Balance { amount } => RedeemValue::Balance { amount },
            CodeValue::Plan { plan_id, days } => RedeemValue::Plan {
                plan_id: PlanId(plan_id),
                days,
            },
        };
        let generated = self
            .generate_redeem_codes(RedeemBatch {
                value,
                count: batch.count,
                expires_at_ms: batch.expires_at_ms,
            })
            .await?;
        Ok(self
            .redeem_codes_of_batch(&generated.batch_id)
            .await?
            .into_iter()
            .map(code_record)
            .collect())
    }

    async fn code_records(
        &self,
        batch_id: Option<&str>,
    ) -> Result<Vec<RedeemCodeRecord>, StoreError> {
        let rows = self
            .shared()
            .pool
            .all(
                Q::new(
                    "SELECT code, batch_id, kind, value, plan_id, duration_days, status, created_at, expires_at, used_by, used_at
                     FROM redeem_codes WHERE $1 IS NULL OR batch_id = $1 ORDER BY created_at, code",
                )
                .bind(batch_id.map(str::to_owned)),
            )
            .await
            .map_err(store_err)?;
        all(&rows, code_from_row)
    }

    async fn expire_code(
        &self,
        code: &str,
        now_ms: i64,
    ) -> Result<Option<RedeemCodeRecord>, StoreError> {
        let code = crate::redeem::normalize_code(code);
        self.shared()
            .pool
            .exec(
                Q::new(
                    "UPDATE redeem_codes SET expires_at = $2
                     WHERE code = $1 AND status = 'unused' AND (expires_at IS NULL OR expires_at > $2)",
                )
                .bind(&code)
                .bind(now_ms),
            )
            .await
            .map_err(store_err)?;
        Ok(self.redeem_code(&code).await?.map(code_record))
    }

    async fn redeem(
        &self,
        code: &str,
        user: UserId,
        _ledger: &dyn Ledger,
    ) -> Result<RedeemOutcome, RedeemFailure> {
        // The claim and the credit commit in one transaction of this store's own journal.
        match SqlStore::redeem(self, code, user).await {
            Ok(Redeemed::Balance { amount, balance }) => {
                Ok(RedeemOutcome::Balance { amount, balance })
            }
            Ok(Redeemed::Plan { subscription }) => Ok(RedeemOutcome::Plan {
                subscription: subscription_record(subscription),
            }),
            Err(RedeemError::NotFound) => Err(RedeemFailure::NotFound),
            Err(RedeemError::AlreadyUsed) => Err(RedeemFailure::AlreadyUsed),
            Err(RedeemError::Expired) => Err(RedeemFailure::Expired),
            Err(RedeemError::Disabled) => Err(RedeemFailure::Disabled),
            Err(RedeemError::UnknownUser(u)) => Err(RedeemFailure::Store(StoreError::NotFound(
                format!("user {u}"),
            ))),
            Err(RedeemError::Store(e)) => Err(RedeemFailure::Store(e)),
        }
    }

    async fn order_views(&self, user: Option<UserId>) -> Result<Vec<OrderView>, StoreError> {
        let rows = self
            .shared()
            .pool
            .all(
                Q::new(
                    "SELECT id, out_trade_no, user_id, provider, amount_minor, currency, credit, status, kind, plan_id,
                            created_at, paid_at
                     FROM payment_orders WHERE $1 IS NULL OR user_id = $1 ORDER BY created_at DESC, id DESC",
                )
                .bind(user.map(|u| u.0)),
            )
            .await
            .map_err(store_err)?;
        all(&rows, order_from_row)
    }

    async fn usage_summary(
        &self,
        query: &UsageQuery,
        by: UsageGroupBy,
    ) -> Result<Option<Vec<UsageBucket>>, StoreError> {
        let key = match by {
            UsageGroupBy::Day => "created_at / 86400000",
            UsageGroupBy::Model => "model",
            UsageGroupBy::User => "user_id",
            UsageGroupBy::Key => "key_id",
            UsageGroupBy::Account => "account_id",
        };
        let mut sql = format!(
            "SELECT {key} AS k, COUNT(*) AS n,
                    CAST(SUM(input_tokens) AS BIGINT) AS input_tokens,
                    CAST(SUM(output_tokens) AS BIGINT) AS output_tokens,
                    CAST(SUM(cache_creation_5m_tokens + cache_creation_1h_tokens) AS BIGINT) AS cache_creation_tokens,
                    CAST(SUM(cache_read_tokens) AS BIGINT) AS cache_read_tokens,
                    CAST(SUM(cost) AS BIGINT) AS cost
             FROM usage_log WHERE 1 = 1"
        );
        let mut args: Vec<Arg> = Vec::new();
        let mut cond = |sql: &mut String, c: &str, a: Arg| {
            args.push(a);
            sql.push_str(&format!(" AND {c} ${}", args.len()));
        };
        if let Some(u) = query.user_id {
            cond(&mut sql, "user_id =", u.0.into());
        }
        if let Some(k) = query.key_id {
            cond(&mut sql, "key_id =", k.0.into());
        }
        if let Some(a) = query.account_id {
            cond(&mut sql, "account_id =", a.0.into());
        }
        if let Some(m) = &query.model {
            cond(&mut sql, "model =", m.clone().into());
        }
        if let Some(f) = query.from_ms {
            cond(&mut sql, "created_at >=", f.into());
        }
        if let Some(t) = query.to_ms {
            cond(&mut sql, "created_at <", t.into());
        }
        sql.push_str(" GROUP BY k ORDER BY k");
        let mut q = Q::built(sql);
        for a in args {
            q = q.bind(a);
        }
        let rows = self.shared().pool.all(q).await.map_err(store_err)?;
        let buckets = all(&rows, |r| {
            let key = match by {
                UsageGroupBy::Model => r.text("k")?,
                UsageGroupBy::Day => {
                    let day = r.i64("k")?;
                    let (y, m, d) = sub2api_core::subscription::civil_from_days(day);
                    format!("{y:04}-{m:02}-{d:02}")
                }
                _ => r
                    .opt_i64("k")?
                    .map_or_else(|| "none".to_owned(), |v| v.to_string()),
            };
            let u = |c: &str| r.opt_i64(c).map(|v| v.unwrap_or(0).max(0) as u64);
            Ok(UsageBucket {
                key,
                requests: u("n")?,
                input_tokens: u("input_tokens")?,
                output_tokens: u("output_tokens")?,
                cache_creation_tokens: u("cache_creation_tokens")?,
                cache_read_tokens: u("cache_read_tokens")?,
                cost: Money::from_nanos(r.opt_i64("cost")?.unwrap_or(0)),
            })
        })?;
        Ok(Some(buckets))
    }
}

#[async_trait]
impl KeyQuotas for SqlStore {
    async fn hold_quota(
        &self,
        key: KeyId,
        request_id: &str,
        amount: Money,
        quota: Money,
    ) -> Result<QuotaHold, StoreError> {
        let now = self.now_ms();
        let expires = now.saturating_add(self.shared().hold_ttl_ms);
        let pool = &self.shared().pool;
        in_tx!(pool, |tx| {
            let lock = if tx.is_pg() {
                "SELECT quota_used FROM api_keys WHERE id = $1 FOR UPDATE"
            } else {
                "SELECT quota_used FROM api_keys WHERE id = $1"
            };
            let used = match tx.opt(Q::new(lock).bind(key.0)).await? {
                Some(r) => r.i64("quota_used")?,
                None => 0,
            };
            tx.exec(Q::new("DELETE FROM key_quota_holds WHERE key_id = $1 AND expires_at <= $2").bind(key.0).bind(now)).await?;
            let held = tx
                .one(
                    Q::new("SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) AS held FROM key_quota_holds WHERE key_id = $1")
                        .bind(key.0),
                )
                .await?
                .i64("held")?;
            let remaining = Money::from_nanos(quota.nanos().saturating_sub(used).saturating_sub(held).max(0));
            if amount > remaining {
                QuotaHold::Exhausted { remaining }
            } else {
                tx.exec(
                    Q::new("INSERT INTO key_quota_holds (request_id, key_id, amount, expires_at) VALUES ($1, $2, $3, $4)")
                        .bind(request_id)
                        .bind(key.0)
                        .bind(amount.nanos())
                        .bind(expires),
                )
                .await?;
                QuotaHold::Held
            }
        })
        .map_err(store_err)
        .inspect(|r| {
            if *r == QuotaHold::Held {
                self.remember_quota_hold(request_id);
            }
        })
    }

    async fn settle_quota(&self, request_id: &str, charged: Money) -> Result<(), StoreError> {
        // Most requests have no quota hold, and this process knows which ones do.
        if !self.forget_quota_hold(request_id) {
            return Ok(());
        }
        let pool = &self.shared().pool;
        if pool
            .opt(
                Q::new("SELECT key_id FROM key_quota_holds WHERE request_id = $1").bind(request_id),
            )
            .await
            .map_err(store_err)?
            .is_none()
        {
            return Ok(());
        }
        in_tx!(pool, |tx| {
            if let Some(r) = tx
                .opt(
                    Q::new("DELETE FROM key_quota_holds WHERE request_id = $1 RETURNING key_id")
                        .bind(request_id),
                )
                .await?
            {
                tx.exec(
                    Q::new("UPDATE api_keys SET quota_used = quota_used + $2 WHERE id = $1")
                        .bind(r.i64("key_id")?)
                        .bind(charged.nanos()),
                )
                .await?;
            }
        })
        .map_err(store_err)
    }

    async fn release_quota(&self, request_id: &str) -> Result<(), StoreError> {
        if !self.forget_quota_hold(request_id) {
            return Ok(());
        }
        let pool = &self.shared().pool;
        if pool
            .opt(
                Q::new("SELECT key_id FROM key_quota_holds WHERE request_id = $1").bind(request_id),
            )
            .await
            .map_err(store_err)?
            .is_none()
        {
            return Ok(());
        }
        pool.exec(Q::new("DELETE FROM key_quota_holds WHERE request_id = $1").bind(request_id))
            .await
            .map_err(store_err)?;
        Ok(())
    }
}
