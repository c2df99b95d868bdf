//! Storage traits for everything besides money: the directory of groups, accounts, users and keys,
//! and the usage log. The memory implementations live in [`crate::memory`]; durable ones in
//! `sub2api-sqlx`.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::account_provider::AccountStatus;
use crate::domain::{
    Account, AccountId, AccountKind, AccountOptions, ApiKey, Credentials, Group, GroupId, KeyHash,
    KeyId, KeyLimits, Limits, Platform, Principal, UsageRecord, User, UserId,
};
use crate::money::Multiplier;
use crate::oauth::PendingAuthorization;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// A group as declared by an operator (seed file, CLI, admin API).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewGroup {
    pub name: String,
    pub platform: Platform,
    pub rate_multiplier: Multiplier,
}

/// An account as declared by an operator; `groups` are group names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAccount {
    pub name: String,
    pub platform: Platform,
    pub kind: AccountKind,
    pub base_url: String,
    pub priority: i32,
    pub concurrency: u32,
    pub groups: Vec<String>,
    pub credentials: Credentials,
    /// Model mapping and allowlist, proxy, vendor account ids.
    pub options: AccountOptions,
}

/// A key as declared by an operator. `key` is the plaintext: only its hash is stored.
#[derive(Clone, Debug)]
pub struct NewKey {
    pub user_id: UserId,
    pub group_id: GroupId,
    pub name: String,
    pub key: crate::domain::Secret,
    pub limits: KeyLimits,
}

/// Groups, accounts, users and keys.
///
/// The `ensure_*`/`upsert_*` methods are what seeding uses: applying the same declaration twice
/// changes nothing, and a user's balance is only ever touched through the [`crate::ledger::Ledger`].
#[async_trait]
pub trait Directory: Send + Sync + 'static {
    /// Creates the group or updates its platform and multiplier, by name.
    async fn upsert_group(&self, group: NewGroup) -> Result<Group, StoreError>;
    async fn groups(&self) -> Result<Vec<Group>, StoreError>;
    async fn group_by_name(&self, name: &str) -> Result<Option<Group>, StoreError>;

    /// Creates the account or updates it (credentials included), by name.
    async fn upsert_account(&self, account: NewAccount) -> Result<Account, StoreError>;
    async fn accounts(&self) -> Result<Vec<Account>, StoreError>;
    async fn account_credentials(&self, id: AccountId) -> Result<Credentials, StoreError>;
    /// Persists a cooldown or disablement so it survives restarts.
    async fn set_account_status(
        &self,
        id: AccountId,
        status: &AccountStatus,
    ) -> Result<(), StoreError>;
    async fn account_statuses(&self) -> Result<Vec<(AccountId, AccountStatus)>, StoreError>;
    /// Replaces an account's credentials (an OAuth refresh rotated them). Everything else about
    /// the account stays as it is.
    async fn update_account_credentials(
        &self,
        id: AccountId,
        credentials: &Credentials,
    ) -> Result<(), StoreError> {
        let _ = (id, credentials);
        Err(StoreError::Invalid(
            "this directory cannot update account credentials".into(),
        ))
    }
    /// Keeps an OAuth authorization that was started (its PKCE verifier) until it is exchanged.
    async fn save_pending_authorization(
        &self,
        pending: &PendingAuthorization,
    ) -> Result<(), StoreError> {
        let _ = pending;
        Err(StoreError::Invalid(
            "this directory cannot keep OAuth authorizations".into(),
        ))
    }
    /// Removes and returns a pending authorization by its `state` (`None`: the newest one).
    async fn take_pending_authorization(
        &self,
        state: Option<&str>,
    ) -> Result<Option<PendingAuthorization>, StoreError> {
        let _ = state;
        Err(StoreError::Invalid(
            "this directory cannot keep OAuth authorizations".into(),
        ))
    }

    /// Returns the user with this email, creating it if missing; `created` tells which.
    async fn ensure_user(&self, email: &str) -> Result<(User, bool), StoreError>;
    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError>;
    async fn users(&self) -> Result<Vec<User>, StoreError>;
    /// Replaces a user's own limits (over all of their keys).
    async fn set_user_limits(&self, user: UserId, limits: &Limits) -> Result<(), StoreError> {
        let _ = (user, limits);
        Err(StoreError::Invalid(
            "this directory cannot keep user limits".into(),
        ))
    }

    /// Stores the key's hash; an existing key with the same hash is returned unchanged.
    async fn ensure_key(&self, key: NewKey) -> Result<ApiKey, StoreError>;
    async fn keys_of(&self, user: UserId) -> Result<Vec<ApiKey>, StoreError>;
    async fn set_key_enabled(&self, id: KeyId, enabled: bool) -> Result<(), StoreError>;

    /// The hot-path lookup: an enabled key of an enabled user, with its group.
    async fn principal(&self, key: &KeyHash) -> Result<Option<Principal>, StoreError>;

    /// The key quota accounting of this directory, if it keeps one (see [`crate::api::quota`]).
    /// A key with a quota is refused on a relay whose directory keeps none.
    fn key_quotas(
        self: std::sync::Arc<Self>,
    ) -> Option<std::sync::Arc<dyn crate::api::quota::KeyQuotas>> {
        None
    }
}

/// Filters for reading the usage log back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageQuery {
    pub user_id: Option<UserId>,
    pub key_id: Option<KeyId>,
    pub account_id: Option<AccountId>,
    pub model: Option<String>,
    /// Unix ms, inclusive.
    pub from_ms: Option<i64>,
    /// Unix ms, exclusive.
    pub to_ms: Option<i64>,
    pub limit: u32,
    pub offset: u32,
}

/// Where each request's usage detail goes. Writes may be batched; [`UsageLog::flush`] makes them
/// durable (called on shutdown).
#[async_trait]
pub trait UsageLog: Send + Sync + 'static {
    async fn record(&self, record: UsageRecord);
    async fn flush(&self) -> Result<(), StoreError>;
    async fn query(&self, query: &UsageQuery) -> Result<Vec<UsageRecord>, StoreError>;
}
