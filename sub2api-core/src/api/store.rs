//! What the admin and user API needs from storage, beyond the relay's [`Directory`]: accounts of
//! people (password hash, admin flag), key quotas and rules, sessions, settings, group billing,
//! plans, subscriptions, redeem codes and payment orders.
//!
//! Implemented by [`crate::memory::MemoryDirectory`] and by `sub2api_sqlx::SqlStore` (SQLite and
//! Postgres). Every method is a plain data operation: the rules (who may do what, validation,
//! key generation, password hashing) live in [`crate::api`], once.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::{
    AccountId, AccountOptions, Credentials, Group, GroupId, KeyId, KeyLimits, KeyRules, Limits,
    Platform, Secret, UserId,
};
use crate::ledger::Ledger;
use crate::money::{Money, Multiplier};
use crate::store::{Directory, StoreError, UsageQuery};
use crate::subscription::{BillingMode, WindowSpec};

/// A person's account on the relay (never with its password hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: UserId,
    pub email: String,
    pub enabled: bool,
    pub is_admin: bool,
    pub created_at_ms: i64,
    /// Concurrency and RPM over all of the user's keys.
    #[serde(default)]
    pub limits: Limits,
}

#[derive(Clone, Debug)]
pub struct NewUser {
    pub email: String,
    /// An argon2 PHC string; `None` = the user cannot log in (keys only).
    pub password_hash: Option<String>,
    pub is_admin: bool,
    pub limits: Limits,
}

/// Fields to change; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct UserPatch {
    pub enabled: Option<bool>,
    pub is_admin: Option<bool>,
    pub password_hash: Option<String>,
    /// The user's limits, replaced whole.
    pub limits: Option<Limits>,
}

/// An API key as the API shows it: never its secret, only a hint (`sk-ab12…9f3c`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: KeyId,
    pub user_id: UserId,
    pub group_id: GroupId,
    pub name: String,
    pub enabled: bool,
    pub hint: String,
    pub limits: KeyLimits,
    pub rules: KeyRules,
    /// Charged against the quota so far (settled requests); only tracked while a quota is set.
    pub quota_used: Money,
    pub created_at_ms: i64,
}

#[derive(Clone, Debug)]
pub struct NewKeyRecord {
    pub user_id: UserId,
    pub group_id: GroupId,
    pub name: String,
    /// The plaintext: only its SHA-256 and [`KeyRecord::hint`] are stored.
    pub key: Secret,
    pub limits: KeyLimits,
    pub rules: KeyRules,
}

/// Fields of a key to change; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub enabled: Option<bool>,
    pub limits: Option<KeyLimits>,
    pub quota: Option<Option<Money>>,
    pub expires_at_ms: Option<Option<i64>>,
    pub ip_allowlist: Option<Vec<crate::domain::IpNet>>,
}

/// A per-user price multiplier for one group (overrides the group's own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRate {
    pub user_id: UserId,
    pub rate_multiplier: Multiplier,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub group: Group,
    pub billing_mode: BillingMode,
    pub user_rates: Vec<UserRate>,
}

#[derive(Clone, Debug, Default)]
pub struct GroupPatch {
    pub platform: Option<Platform>,
    pub rate_multiplier: Option<Multiplier>,
    pub billing_mode: Option<BillingMode>,
}

/// Fields of an account to change; `None` leaves a field as it is. The name is the account's
/// natural key (seeding upserts by it) and does not change.
#[derive(Clone, Debug, Default)]
pub struct AccountPatch {
    pub base_url: Option<String>,
    pub priority: Option<i32>,
    pub concurrency: Option<u32>,
    pub groups: Option<Vec<String>>,
    pub credentials: Option<Credentials>,
    pub options: Option<AccountOptions>,
}

/// A subscription plan: windows with USD limits, scoped to a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRecord {
    pub id: i64,
    pub name: String,
    pub group_id: GroupId,
    pub duration_days: i64,
    pub windows: Vec<WindowSpec>,
    pub enabled: bool,
    /// What one purchase costs, in `currency`'s minor unit; `None`: not for sale.
    #[serde(default)]
    pub price_minor: Option<i64>,
    #[serde(default)]
    pub currency: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPlanRecord {
    pub name: String,
    pub group_id: GroupId,
    pub duration_days: i64,
    pub windows: Vec<WindowSpec>,
    /// Set together with `currency`, or neither (the plan cannot be bought).
    pub price_minor: Option<i64>,
    pub currency: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    pub id: i64,
    pub user_id: UserId,
    pub plan_id: i64,
    pub group_id: GroupId,
    pub starts_at_ms: i64,
    pub expires_at_ms: i64,
    pub revoked: bool,
}

/// What a redeem code is worth.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CodeValue {
    Balance { amount: Money },
    Plan { plan_id: i64, days: i64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeStatus {
    Unused,
    Used,
    Disabled,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedeemCodeRecord {
    pub code: String,
    pub batch_id: String,
    pub value: CodeValue,
    pub status: CodeStatus,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub used_by: Option<UserId>,
    pub used_at_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeBatch {
    pub value: CodeValue,
    pub count: u32,
    pub expires_at_ms: Option<i64>,
}

/// What redeeming gave the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedeemOutcome {
    Balance { amount: Money, balance: Money },
    Plan { subscription: SubscriptionRecord },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RedeemFailure {
    #[error("no such redeem code")]
    NotFound,
    #[error("this redeem code has already been used")]
    AlreadyUsed,
    #[error("this redeem code has expired")]
    Expired,
    #[error("this redeem code has been disabled")]
    Disabled,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A payment order as a user or operator sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    pub id: i64,
    pub out_trade_no: String,
    pub user_id: UserId,
    pub provider: String,
    pub amount_minor: i64,
    pub currency: String,
    pub credit: Money,
    pub status: String,
    pub kind: String,
    pub plan_id: Option<i64>,
    pub created_at_ms: i64,
    pub paid_at_ms: Option<i64>,
}

/// How usage is aggregated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageGroupBy {
    /// UTC calendar day (`2025-03-14`).
    Day,
    Model,
    User,
    Key,
    Account,
}

impl UsageGroupBy {
    pub const ALL: &'static [&'static str] = &["day", "model", "user", "key", "account"];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "day" => UsageGroupBy::Day,
            "model" => UsageGroupBy::Model,
            "user" => UsageGroupBy::User,
            "key" => UsageGroupBy::Key,
            "account" => UsageGroupBy::Account,
            _ => return None,
        })
    }
}

/// One aggregate row.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageBucket {
    pub key: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_tokens: u64,
    pub cache_read_tokens: u64,
    pub cost: Money,
}

/// Storage for the admin and user API. Extends the relay's [`Directory`].
#[async_trait]
pub trait AdminStore: Directory {
    // --- users ---
    /// Creates a user and its (empty) wallet. An existing email is a [`StoreError::Conflict`].
    async fn create_user(&self, user: NewUser) -> Result<UserRecord, StoreError>;
    async fn user_record(&self, id: UserId) -> Result<Option<UserRecord>, StoreError>;
    async fn user_records(&self, offset: u32, limit: u32) -> Result<Vec<UserRecord>, StoreError>;
    /// The user with this email and its password hash (for login only).
    async fn user_login(
        &self,
        email: &str,
    ) -> Result<Option<(UserRecord, Option<String>)>, StoreError>;
    async fn password_hash(&self, id: UserId) -> Result<Option<String>, StoreError>;
    async fn update_user(&self, id: UserId, patch: UserPatch) -> Result<UserRecord, StoreError>;

    // --- keys ---
    /// Stores a new key (its hash). A key whose hash exists is a [`StoreError::Conflict`].
    async fn create_key(&self, key: NewKeyRecord) -> Result<KeyRecord, StoreError>;
    async fn key_record(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError>;
    /// Keys of one user, or all keys (newest last).
    async fn key_records(&self, user: Option<UserId>) -> Result<Vec<KeyRecord>, StoreError>;
    async fn update_key(&self, id: KeyId, patch: KeyPatch) -> Result<KeyRecord, StoreError>;

    // --- groups ---
    async fn group_record(&self, id: GroupId) -> Result<Option<GroupRecord>, StoreError>;
    async fn group_records(&self) -> Result<Vec<GroupRecord>, StoreError>;
    async fn update_group(&self, id: GroupId, patch: GroupPatch)
    -> Result<GroupRecord, StoreError>;
    /// Deletes a group nothing refers to (keys, plans); otherwise a [`StoreError::Conflict`].
    async fn delete_group(&self, id: GroupId) -> Result<(), StoreError>;
    /// Sets (`Some`) or removes (`None`) a user's own multiplier for a group.
    async fn set_user_rate(
        &self,
        group: GroupId,
        user: UserId,
        rate: Option<Multiplier>,
    ) -> Result<(), StoreError>;

    // --- accounts ---
    async fn update_account(
        &self,
        id: AccountId,
        patch: AccountPatch,
    ) -> Result<crate::domain::Account, StoreError>;
    async fn delete_account(&self, id: AccountId) -> Result<(), StoreError>;
    async fn set_account_enabled(&self, id: AccountId, enabled: bool) -> Result<(), StoreError>;

    // --- sessions ---
    async fn create_session(
        &self,
        token_hash: [u8; 32],
        user: UserId,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<(), StoreError>;
    /// The user of an unexpired session.
    async fn session_user(
        &self,
        token_hash: [u8; 32],
        now_ms: i64,
    ) -> Result<Option<UserId>, StoreError>;
    async fn delete_session(&self, token_hash: [u8; 32]) -> Result<(), StoreError>;
    async fn delete_sessions_of(&self, user: UserId) -> Result<(), StoreError>;

    // --- settings (JSON values by name) ---
    async fn settings(&self) -> Result<Vec<(String, String)>, StoreError>;
    async fn set_setting(&self, name: &str, value: &str) -> Result<(), StoreError>;

    // --- plans and subscriptions ---
    /// Creates the plan or replaces its group, duration and windows, by name.
    async fn upsert_plan(&self, plan: NewPlanRecord) -> Result<PlanRecord, StoreError>;
    async fn plan_records(&self) -> Result<Vec<PlanRecord>, StoreError>;
    async fn assign_subscription(
        &self,
        user: UserId,
        plan: i64,
        starts_at_ms: i64,
        expires_at_ms: i64,
    ) -> Result<SubscriptionRecord, StoreError>;
    /// Gives `user` `days` of a plan once per `grant_key` (a paid order): extends the user's
    /// latest unexpired subscription of the plan, or starts one now. A key already granted changes
    /// nothing and returns the subscription it granted.
    async fn grant_plan_once(
        &self,
        user: UserId,
        plan: i64,
        days: i64,
        grant_key: &str,
    ) -> Result<SubscriptionRecord, StoreError>;
    /// Takes back what the grant `grant_key` gave, once (a refunded order): the subscription's
    /// expiry moves back by the span the grant added (`fallback_days` for a grant that did not
    /// record it), but never before now nor later than it was. `None` when the key granted
    /// nothing or was taken back already.
    async fn take_back_plan_grant(
        &self,
        grant_key: &str,
        fallback_days: i64,
    ) -> Result<Option<SubscriptionRecord>, StoreError>;
    async fn subscription_record(&self, id: i64) -> Result<Option<SubscriptionRecord>, StoreError>;
    async fn subscription_records(
        &self,
        user: Option<UserId>,
    ) -> Result<Vec<SubscriptionRecord>, StoreError>;
    async fn set_subscription_expiry(
        &self,
        id: i64,
        expires_at_ms: i64,
    ) -> Result<SubscriptionRecord, StoreError>;
    async fn revoke_subscription(&self, id: i64) -> Result<SubscriptionRecord, StoreError>;

    // --- redeem codes ---
    async fn generate_codes(&self, batch: CodeBatch) -> Result<Vec<RedeemCodeRecord>, StoreError>;
    async fn code_records(
        &self,
        batch_id: Option<&str>,
    ) -> Result<Vec<RedeemCodeRecord>, StoreError>;
    /// Makes an unused code stop redeeming now. Returns the code, `None` if there is none.
    async fn expire_code(
        &self,
        code: &str,
        now_ms: i64,
    ) -> Result<Option<RedeemCodeRecord>, StoreError>;
    /// Redeems a code once, crediting through `ledger` (a store with its own journal may credit in
    /// the same transaction instead).
    async fn redeem(
        &self,
        code: &str,
        user: UserId,
        ledger: &dyn Ledger,
    ) -> Result<RedeemOutcome, RedeemFailure>;

    // --- orders ---
    async fn order_views(&self, user: Option<UserId>) -> Result<Vec<OrderView>, StoreError>;

    // --- usage ---
    /// Aggregates the usage log in the database; `None` when this store does not keep the usage
    /// log (the API then aggregates [`crate::store::UsageLog::query`] pages itself).
    async fn usage_summary(
        &self,
        query: &UsageQuery,
        by: UsageGroupBy,
    ) -> Result<Option<Vec<UsageBucket>>, StoreError> {
        let _ = (query, by);
        Ok(None)
    }
}

/// The first 6 and last 4 characters of a key: enough to recognise it, useless to use it.
pub fn key_hint(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 12 {
        return format!("{}…", chars.iter().take(3).collect::<String>());
    }
    let head: String = chars[..6].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

/// The expiry of a subscription once a grant of `span_ms` is taken back at `now`: back by the
/// span, but never before now (time already used stays used) nor later than it was.
pub fn taken_back_expiry(expires_at_ms: i64, span_ms: i64, now: i64) -> i64 {
    expires_at_ms
        .saturating_sub(span_ms.max(0))
        .max(now)
        .min(expires_at_ms)
}
