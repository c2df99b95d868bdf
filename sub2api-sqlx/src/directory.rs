//! The [`Directory`]: groups, accounts, users and API keys.
//!
//! Seeding applies the same declarations at every start, so every write here is an idempotent
//! upsert by a natural key (group/account name, user email, key hash). Creating a user creates its
//! empty wallet in the same transaction; a balance only ever changes through the ledger, so
//! re-applying a seed never resets it (the opening balance is a credit with key `seed:<email>`).
//!
//! API keys are stored as their SHA-256 only. [`Directory::principal`] is one indexed lookup on the
//! hash joining key, user and group, and finds nothing for disabled keys or users.

use std::sync::Arc;

use async_trait::async_trait;
use sub2api_core::account_provider::AccountStatus;
use sub2api_core::domain::{
    Account, AccountId, AccountKind, ApiKey, Credentials, Group, GroupId, KeyHash, KeyId,
    KeyLimits, Limits, Principal, User, UserId,
};
use sub2api_core::money::Multiplier;
use sub2api_core::store::{Directory, NewAccount, NewGroup, NewKey, StoreError};

use crate::crypto::{open_credentials, seal_credentials};
use crate::db::{Q, Row};
use crate::ledger::in_tx;
use crate::{SqlStore, store_err};

fn decode_err(what: &str, value: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("unknown {what} `{value}`").into())
}

fn group_from_row(r: &Row) -> Result<Group, sqlx::Error> {
    let platform = r.text("platform")?;
    Ok(Group {
        id: GroupId(r.i64("id")?),
        name: r.text("name")?,
        platform: platform
            .parse()
            .map_err(|_| decode_err("platform", &platform))?,
        rate_multiplier: Multiplier::from_ppm(r.i64("rate_multiplier_ppm")?),
    })
}

fn kind_str(k: AccountKind) -> &'static str {
    match k {
        AccountKind::Apikey => "apikey",
        AccountKind::Oauth => "oauth",
        AccountKind::SetupToken => "setup_token",
    }
}

fn parse_kind(s: &str) -> Result<AccountKind, sqlx::Error> {
    match s {
        "apikey" => Ok(AccountKind::Apikey),
        "oauth" => Ok(AccountKind::Oauth),
        "setup_token" => Ok(AccountKind::SetupToken),
        other => Err(decode_err("account kind", other)),
    }
}

fn user_from_row(r: &Row) -> Result<User, sqlx::Error> {
    Ok(User {
        id: UserId(r.i64("id")?),
        email: r.text("email")?,
        enabled: r.bool("enabled")?,
        limits: user_limits_from_row(r, "concurrency", "rpm")?,
    })
}

/// A user's limits from its `concurrency` and `rpm` columns (named as selected).
pub(crate) fn user_limits_from_row(
    r: &Row,
    concurrency: &str,
    rpm: &str,
) -> Result<Limits, sqlx::Error> {
    let read = |col: &str| -> Result<Option<u32>, sqlx::Error> {
        Ok(r.opt_i64(col)?.map(|v| v.clamp(0, u32::MAX as i64) as u32))
    };
    Ok(Limits {
        concurrency: read(concurrency)?,
        rpm: read(rpm)?,
    })
}

fn limit(v: Option<u32>) -> Option<i64> {
    v.map(i64::from)
}

fn key_from_row(r: &Row) -> Result<ApiKey, sqlx::Error> {
    Ok(ApiKey {
        id: KeyId(r.i64("id")?),
        user_id: UserId(r.i64("user_id")?),
        group_id: GroupId(r.i64("group_id")?),
        name: r.text("name")?,
        enabled: r.bool("enabled")?,
        limits: KeyLimits {
            concurrency: r
                .opt_i64("concurrency_limit")?
                .map(|v| v.clamp(0, u32::MAX as i64) as u32),
            rpm: r
                .opt_i64("rpm_limit")?
                .map(|v| v.clamp(0, u32::MAX as i64) as u32),
        },
    })
}

const GROUP_COLUMNS: &str = "id, name, platform, rate_multiplier_ppm";
const KEY_COLUMNS: &str = "id, user_id, group_id, name, enabled, concurrency_limit, rpm_limit";

impl SqlStore {
    async fn account_groups(&self, account: i64) -> Result<Vec<GroupId>, StoreError> {
        let rows = self
            .shared()
            .pool
            .all(
                Q::new(
                    "SELECT group_id FROM account_groups WHERE account_id = $1 ORDER BY group_id",
                )
                .bind(account),
            )
            .await
            .map_err(store_err)?;
        rows.iter()
            .map(|r| r.i64("group_id").map(GroupId))
            .collect::<Result<_, _>>()
            .map_err(store_err)
    }

    fn account_from_row(r: &Row, groups: Vec<GroupId>) -> Result<Account, sqlx::Error> {
        let platform = r.text("platform")?;
        Ok(Account {
            id: AccountId(r.i64("id")?),
            name: r.text("name")?,
            platform: platform
                .parse()
                .map_err(|_| decode_err("platform", &platform))?,
            kind: parse_kind(&r.text("kind")?)?,
            base_url: r.text("base_url")?,
            priority: r.i64("priority")?.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
            concurrency: r.i64("concurrency")?.clamp(0, u32::MAX as i64) as u32,
            groups,
            enabled: r.bool("enabled")?,
            options: match r.opt_text("options")? {
                Some(json) if !json.is_empty() => {
                    serde_json::from_str(&json).map_err(|_| decode_err("options", &json))?
                }
                _ => Default::default(),
            },
        })
    }

    /// Enables or disables a user (a disabled user's keys stop resolving).
    pub async fn set_user_enabled(&self, user: UserId, enabled: bool) -> Result<(), StoreError> {
        let n = self
            .shared()
            .pool
            .exec(
                Q::new("UPDATE users SET enabled = $2 WHERE id = $1")
                    .bind(user.0)
                    .bind(enabled),
            )
            .await
            .map_err(store_err)?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("user {user}")));
        }
        Ok(())
    }

    /// Enables or disables an account (operator switch, independent of its status).
    pub async fn set_account_enabled(
        &self,
        id: AccountId,
        enabled: bool,
    ) -> Result<(), StoreError> {
        let n = self
            .shared()
            .pool
            .exec(
                Q::new("UPDATE accounts SET enabled = $2, updated_at = $3 WHERE id = $1")
                    .bind(id.0)
                    .bind(enabled)
                    .bind(self.now_ms()),
            )
            .await
            .map_err(store_err)?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("account {id}")));
        }
        Ok(())
    }

    pub async fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        let row = self
            .shared()
            .pool
            .opt(
                Q::new("SELECT id, email, enabled, concurrency, rpm FROM users WHERE id = $1")
                    .bind(id.0),
            )
            .await
            .map_err(store_err)?;
        row.map(|r| user_from_row(&r))
            .transpose()
            .map_err(store_err)
    }
}

#[async_trait]
impl Directory for SqlStore {
    async fn upsert_group(&self, group: NewGroup) -> Result<Group, StoreError> {
        if group.name.trim().is_empty() {
            return Err(StoreError::Invalid("a group needs a name".into()));
        }
        let now = self.now_ms();
        let row = self
            .shared()
            .pool
            .one(
                Q::built(format!(
                    "INSERT INTO groups (name, platform, rate_multiplier_ppm, billing_mode, created_at, updated_at)
                     VALUES ($1, $2, $3, 'wallet', $4, $4)
                     ON CONFLICT (name) DO UPDATE
                     SET platform = excluded.platform, rate_multiplier_ppm = excluded.rate_multiplier_ppm,
                         updated_at = excluded.updated_at
                     RETURNING {GROUP_COLUMNS}"
                ))
                .bind(&group.name)
                .bind(group.platform.as_str())
                .bind(group.rate_multiplier.ppm())
                .bind(now),
            )
            .await
            .map_err(store_err)?;
        group_from_row(&row).map_err(store_err)
    }

    async fn groups(&self) -> Result<Vec<Group>, StoreError> {
        let rows = self
            .shared()
            .pool
            .all(Q::built(format!(
                "SELECT {GROUP_COLUMNS} FROM groups ORDER BY id"
            )))
            .await
            .map_err(store_err)?;
        rows.iter()
            .map(group_from_row)
            .collect::<Result<_, _>>()
            .map_err(store_err)
    }

    async fn group_by_name(&self, name: &str) -> Result<Option<Group>, StoreError> {
        let row = self
            .shared()
            .pool
            .opt(
                Q::built(format!(
                    "SELECT {GROUP_COLUMNS} FROM groups WHERE name = $1"
                ))
                .bind(name),
            )
            .await
            .map_err(store_err)?;
        row.map(|r| group_from_row(&r))
            .transpose()
            .map_err(store_err)
    }

    async fn upsert_account(&self, account: NewAccount) -> Result<Account, StoreError> {
        if account.name.trim().is_empty() {
            return Err(StoreError::Invalid("an account needs a name".into()));
        }
        let key = self.shared().master_key.as_ref().ok_or_else(|| {
            StoreError::Invalid("no master key configured: credentials cannot be stored".into())
        })?;
        let sealed = seal_credentials(key, &account.name, &account.credentials);
        let options_json = serde_json::to_string(&account.options)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let now = self.now_ms();
        let pool = &self.shared().pool;
        let result = in_tx!(pool, |tx| {
            let row = tx
                .one(
                    Q::new(
                        "INSERT INTO accounts (name, platform, kind, base_url, priority, concurrency, enabled, credentials,
                                               status, created_at, updated_at, options)
                         VALUES ($1, $2, $3, $4, $5, $6, TRUE, $7, 'ready', $8, $8, $9)
                         ON CONFLICT (name) DO UPDATE
                         SET platform = excluded.platform, kind = excluded.kind, base_url = excluded.base_url,
                             priority = excluded.priority, concurrency = excluded.concurrency,
                             credentials = excluded.credentials, updated_at = excluded.updated_at,
                             options = excluded.options
                         RETURNING id",
                    )
                    .bind(&account.name)
                    .bind(account.platform.as_str())
                    .bind(kind_str(account.kind))
                    .bind(&account.base_url)
                    .bind(i64::from(account.priority))
                    .bind(i64::from(account.concurrency))
                    .bind(sealed.clone())
                    .bind(now)
                    .bind(options_json.clone()),
                )
                .await?;
            let id = row.i64("id")?;
            tx.exec(Q::new("DELETE FROM account_groups WHERE account_id = $1").bind(id)).await?;
            let mut missing = None;
            for name in &account.groups {
                let g = tx.opt(Q::new("SELECT id FROM groups WHERE name = $1").bind(name)).await?;
                match g {
                    Some(g) => {
                        tx.exec(
                            Q::new(
                                "INSERT INTO account_groups (account_id, group_id) VALUES ($1, $2)
                                 ON CONFLICT (account_id, group_id) DO NOTHING",
                            )
                            .bind(id)
                            .bind(g.i64("id")?),
                        )
                        .await?;
                    }
                    None => {
                        missing = Some(name.clone());
                        break;
                    }
                }
            }
            match missing {
                // Rolled back: the transaction is dropped without commit below.
                Some(name) => return Ok(Err(StoreError::NotFound(format!("group `{name}`")))),
                None => Ok::<_, StoreError>(id),
            }
        })
        .map_err(store_err)?;
        let id = result?;
        let row = pool
            .one(Q::new("SELECT * FROM accounts WHERE id = $1").bind(id))
            .await
            .map_err(store_err)?;
        let groups = self.account_groups(id).await?;
        Self::account_from_row(&row, groups).map_err(store_err)
    }

    async fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        let pool = &self.shared().pool;
        let rows = pool
            .all(Q::new(
                "SELECT id, name, platform, kind, base_url, priority, concurrency, enabled, options FROM accounts ORDER BY id",
            ))
            .await
            .map_err(store_err)?;
        let links = pool
            .all(Q::new(
                "SELECT account_id, group_id FROM account_groups ORDER BY account_id, group_id",
            ))
            .await
            .map_err(store_err)?;
        let mut by_account: std::collections::HashMap<i64, Vec<GroupId>> =
            std::collections::HashMap::new();
        for l in &links {
            by_account
                .entry(l.i64("account_id").map_err(store_err)?)
                .or_default()
                .push(GroupId(l.i64("group_id").map_err(store_err)?));
        }
        rows.iter()
            .map(|r| {
                let id = r.i64("id")?;
                Self::account_from_row(r, by_account.remove(&id).unwrap_or_default())
            })
            .collect::<Result<_, _>>()
            .map_err(store_err)
    }

    async fn account_credentials(&self, id: AccountId) -> Result<Credentials, StoreError> {
        let key = self.shared().master_key.as_ref().ok_or_else(|| {
            StoreError::Invalid("no master key configured: credentials cannot be read".into())
        })?;
        let row = self
            .shared()
            .pool
            .opt(Q::new("SELECT name, credentials FROM accounts WHERE id = $1").bind(id.0))
            .await
            .map_err(store_err)?
            .ok_or_else(|| StoreError::NotFound(format!("account {id}")))?;
        let name = row.text("name").map_err(store_err)?;
        let blob = row.bytes("credentials").map_err(store_err)?;
        open_credentials(key, &name, &blob)
            .map_err(|e| StoreError::Invalid(format!("account {id}: {e}")))
    }

    async fn update_account_credentials(
        &self,
        id: AccountId,
        credentials: &Credentials,
    ) -> Result<(), StoreError> {
        let key = self.shared().master_key.as_ref().ok_or_else(|| {
            StoreError::Invalid("no master key configured: credentials cannot be stored".into())
        })?;
        let pool = &self.shared().pool;
        let row = pool
            .opt(Q::new("SELECT name FROM accounts WHERE id = $1").bind(id.0))
            .await
            .map_err(store_err)?
            .ok_or_else(|| StoreError::NotFound(format!("account {id}")))?;
        let name = row.text("name").map_err(store_err)?;
        let sealed = seal_credentials(key, &name, credentials);
        pool.exec(
            Q::new("UPDATE accounts SET credentials = $2, updated_at = $3 WHERE id = $1")
                .bind(id.0)
                .bind(sealed)
                .bind(self.now_ms()),
        )
        .await
        .map_err(store_err)?;
        Ok(())
    }

    async fn save_pending_authorization(
        &self,
        pending: &sub2api_core::oauth::PendingAuthorization,
    ) -> Result<(), StoreError> {
        let data =
            serde_json::to_string(pending).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let pool = &self.shared().pool;
        // Authorizations nobody completed are forgotten after a day.
        pool.exec(
            Q::new("DELETE FROM oauth_pending WHERE created_at < $1")
                .bind(self.now_ms() - 86_400_000),
        )
        .await
        .map_err(store_err)?;
        pool.exec(
            Q::new(
                "INSERT INTO oauth_pending (state, data, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (state) DO UPDATE SET data = excluded.data, created_at = excluded.created_at",
            )
            .bind(pending.state.clone())
            .bind(data)
            .bind(pending.created_at_ms),
        )
        .await
        .map_err(store_err)?;
        Ok(())
    }

    async fn take_pending_authorization(
        &self,
        state: Option<&str>,
    ) -> Result<Option<sub2api_core::oauth::PendingAuthorization>, StoreError> {
        let pool = &self.shared().pool;
        let row = match state {
            Some(st) => {
                pool.opt(
                    Q::new("SELECT state, data FROM oauth_pending WHERE state = $1")
                        .bind(st.to_owned()),
                )
                .await
            }
            None => {
                pool.opt(Q::new(
                    "SELECT state, data FROM oauth_pending ORDER BY created_at DESC LIMIT 1",
                ))
                .await
            }
        }
        .map_err(store_err)?;
        let Some(row) = row else { return Ok(None) };
        let st = row.text("state").map_err(store_err)?;
        // Taken once: whoever deletes the row completes the authorization.
        let n = pool
            .exec(Q::new("DELETE FROM oauth_pending WHERE state = $1").bind(st))
            .await
            .map_err(store_err)?;
        if n == 0 {
            return Ok(None);
        }
        let data = row.text("data").map_err(store_err)?;
        serde_json::from_str(&data)
            .map(Some)
            .map_err(|e| StoreError::Invalid(format!("stored OAuth authorization: {e}")))
    }

    async fn set_account_status(
        &self,
        id: AccountId,
        status: &AccountStatus,
    ) -> Result<(), StoreError> {
        let (s, until, reason): (&str, Option<i64>, Option<String>) = match status {
            AccountStatus::Ready => ("ready", None, None),
            AccountStatus::CoolingDown { until_ms, reason } => {
                ("cooling_down", Some(*until_ms), Some(reason.clone()))
            }
            AccountStatus::Disabled { reason } => ("disabled", None, Some(reason.clone())),
        };
        let n = self
            .shared()
            .pool
            .exec(
                Q::new(
                    "UPDATE accounts SET status = $2, cooldown_until = $3, status_reason = $4, updated_at = $5
                     WHERE id = $1",
                )
                .bind(id.0)
                .bind(s)
                .bind(until)
                .bind(reason)
                .bind(self.now_ms()),
            )
            .await
            .map_err(store_err)?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("account {id}")));
        }
        Ok(())
    }

    async fn account_statuses(&self) -> Result<Vec<(AccountId, AccountStatus)>, StoreError> {
        let rows = self
            .shared()
            .pool
            .all(Q::new(
                "SELECT id, status, cooldown_until, status_reason FROM accounts ORDER BY id",
            ))
            .await
            .map_err(store_err)?;
        rows.iter()
            .map(|r| {
                let reason = r.opt_text("status_reason")?.unwrap_or_default();
                let status = match r.text("status")?.as_str() {
                    "cooling_down" => AccountStatus::CoolingDown {
                        until_ms: r.opt_i64("cooldown_until")?.unwrap_or(0),
                        reason,
                    },
                    "disabled" => AccountStatus::Disabled { reason },
                    _ => AccountStatus::Ready,
                };
                Ok((AccountId(r.i64("id")?), status))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(store_err)
    }

    async fn ensure_user(&self, email: &str) -> Result<(User, bool), StoreError> {
        let email = email.trim();
        if email.is_empty() {
            return Err(StoreError::Invalid("a user needs an email".into()));
        }
        let now = self.now_ms();
        let pool = &self.shared().pool;
        in_tx!(pool, |tx| {
            let created = tx
                .opt(
                    Q::new(
                        "INSERT INTO users (email, enabled, created_at) VALUES ($1, TRUE, $2)
                         ON CONFLICT (email) DO NOTHING RETURNING id",
                    )
                    .bind(email)
                    .bind(now),
                )
                .await?;
            if let Some(r) = &created {
                tx.exec(
                    Q::new("INSERT INTO wallets (user_id, balance, held, updated_at) VALUES ($1, 0, 0, $2)")
                        .bind(r.i64("id")?)
                        .bind(now),
                )
                .await?;
            }
            let row = tx
                .one(Q::new("SELECT id, email, enabled, concurrency, rpm FROM users WHERE email = $1").bind(email))
                .await?;
            (user_from_row(&row)?, created.is_some())
        })
        .map_err(store_err)
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let row = self
            .shared()
            .pool
            .opt(
                Q::new("SELECT id, email, enabled, concurrency, rpm FROM users WHERE email = $1")
                    .bind(email.trim()),
            )
            .await
            .map_err(store_err)?;
        row.map(|r| user_from_row(&r))
            .transpose()
            .map_err(store_err)
    }

    async fn users(&self) -> Result<Vec<User>, StoreError> {
        let rows = self
            .shared()
            .pool
            .all(Q::new(
                "SELECT id, email, enabled, concurrency, rpm FROM users ORDER BY id",
            ))
            .await
            .map_err(store_err)?;
        rows.iter()
            .map(user_from_row)
            .collect::<Result<_, _>>()
            .map_err(store_err)
    }

    async fn set_user_limits(&self, user: UserId, limits: &Limits) -> Result<(), StoreError> {
        let n = self
            .shared()
            .pool
            .exec(
                Q::new("UPDATE users SET concurrency = $2, rpm = $3 WHERE id = $1")
                    .bind(user.0)
                    .bind(limit(limits.concurrency))
                    .bind(limit(limits.rpm)),
            )
            .await
            .map_err(store_err)?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("user {user}")));
        }
        Ok(())
    }

    async fn ensure_key(&self, key: NewKey) -> Result<ApiKey, StoreError> {
        if key.key.is_empty() {
            return Err(StoreError::Invalid("an API key must not be empty".into()));
        }
        let hash = KeyHash::of(key.key.expose()).0.to_vec();
        let pool = &self.shared().pool;
        let inserted = pool
            .opt(
                Q::built(format!(
                    "INSERT INTO api_keys (key_hash, user_id, group_id, name, enabled, concurrency_limit, rpm_limit, created_at)
                     VALUES ($1, $2, $3, $4, TRUE, $5, $6, $7)
                     ON CONFLICT (key_hash) DO NOTHING RETURNING {KEY_COLUMNS}"
                ))
                .bind(hash.clone())
                .bind(key.user_id.0)
                .bind(key.group_id.0)
                .bind(&key.name)
                .bind(limit(key.limits.concurrency))
                .bind(limit(key.limits.rpm))
                .bind(self.now_ms()),
            )
            .await
            .map_err(store_err)?;
        let row = match inserted {
            Some(r) => r,
            None => pool
                .one(
                    Q::built(format!(
                        "SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1"
                    ))
                    .bind(hash),
                )
                .await
                .map_err(store_err)?,
        };
        key_from_row(&row).map_err(store_err)
    }

    async fn keys_of(&self, user: UserId) -> Result<Vec<ApiKey>, StoreError> {
        let rows = self
            .shared()
            .pool
            .all(
                Q::built(format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY id"
                ))
                .bind(user.0),
            )
            .await
            .map_err(store_err)?;
        rows.iter()
            .map(key_from_row)
            .collect::<Result<_, _>>()
            .map_err(store_err)
    }

    async fn set_key_enabled(&self, id: KeyId, enabled: bool) -> Result<(), StoreError> {
        let n = self
            .shared()
            .pool
            .exec(
                Q::new("UPDATE api_keys SET enabled = $2 WHERE id = $1")
                    .bind(id.0)
                    .bind(enabled),
            )
            .await
            .map_err(store_err)?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("key {id}")));
        }
        Ok(())
    }

    async fn principal(&self, key: &KeyHash) -> Result<Option<Principal>, StoreError> {
        let row = self
            .shared()
            .pool
            .opt(
                Q::new(
                    "SELECT k.id AS key_id, k.user_id, k.concurrency_limit, k.rpm_limit,
                            u.concurrency AS user_concurrency, u.rpm AS user_rpm,
                            k.quota, k.expires_at, k.ip_allowlist,
                            g.id, g.name, g.platform,
                            COALESCE(r.rate_multiplier_ppm, g.rate_multiplier_ppm) AS rate_multiplier_ppm
                     FROM api_keys k
                     JOIN users u ON u.id = k.user_id
                     JOIN groups g ON g.id = k.group_id
                     LEFT JOIN group_user_rates r ON r.group_id = k.group_id AND r.user_id = k.user_id
                     WHERE k.key_hash = $1 AND k.enabled AND u.enabled",
                )
                .bind(key.0.to_vec()),
            )
            .await
            .map_err(store_err)?;
        let Some(r) = row else { return Ok(None) };
        (|| -> Result<Principal, sqlx::Error> {
            Ok(Principal {
                user: UserId(r.i64("user_id")?),
                key: KeyId(r.i64("key_id")?),
                group: Arc::new(group_from_row(&r)?),
                limits: KeyLimits {
                    concurrency: r
                        .opt_i64("concurrency_limit")?
                        .map(|v| v.clamp(0, u32::MAX as i64) as u32),
                    rpm: r
                        .opt_i64("rpm_limit")?
                        .map(|v| v.clamp(0, u32::MAX as i64) as u32),
                },
                user_limits: user_limits_from_row(&r, "user_concurrency", "user_rpm")?,
                rules: crate::admin::key_rules_from_row(&r)?,
            })
        })()
        .map(Some)
        .map_err(store_err)
    }

    fn key_quotas(self: Arc<Self>) -> Option<Arc<dyn sub2api_core::api::quota::KeyQuotas>> {
        Some(self)
    }
}
