use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;

use crate::account_provider::{
    AccountProvider, AccountStatus, Outcome, ProviderError, fingerprint, now_ms,
};
use crate::domain::{Account, AccountId, Credentials, GroupId, OAuthTokens};
use crate::oauth::{ProcessRefreshLock, RefreshLock, TokenClient};
use crate::store::{Directory, StoreError};

struct Snapshot {
    by_group: HashMap<GroupId, Arc<[Arc<Account>]>>,
}

/// OAuth access tokens are renewed this long before they expire.
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);

struct Refresher {
    client: TokenClient,
}

/// An [`AccountProvider`] over an in-memory snapshot of the accounts, with account status kept in
/// process. Hand it a [`Directory`] and cooldowns and disablements are also written through, so
/// they survive restarts and show in the admin API, and [`MemoryAccountProvider::reload`] picks up
/// accounts an operator added.
///
/// With [`MemoryAccountProvider::with_oauth`] it renews OAuth access tokens: before they expire
/// (within [`REFRESH_BEFORE_EXPIRY`]) and once after a 401. Renewal is single-flight per account
/// (a mutex per account here, a [`RefreshLock`] across processes), and the rotated tokens are
/// written back to the directory before they are used.
pub struct MemoryAccountProvider {
    snapshot: RwLock<Arc<Snapshot>>,
    credentials: RwLock<HashMap<AccountId, Credentials>>,
    status: RwLock<HashMap<AccountId, AccountStatus>>,
    directory: Option<Arc<dyn Directory>>,
    refresher: Option<Refresher>,
    refresh_lock: Arc<dyn RefreshLock>,
    refresh_locks: Mutex<HashMap<AccountId, Arc<tokio::sync::Mutex<()>>>>,
}

impl MemoryAccountProvider {
    pub fn new(accounts: Vec<(Account, Credentials)>) -> Self {
        let p = MemoryAccountProvider {
            snapshot: RwLock::new(Arc::new(Snapshot {
                by_group: HashMap::new(),
            })),
            credentials: RwLock::new(HashMap::new()),
            status: RwLock::new(HashMap::new()),
            directory: None,
            refresher: None,
            refresh_lock: Arc::new(ProcessRefreshLock),
            refresh_locks: Mutex::new(HashMap::new()),
        };
        p.replace(accounts);
        p
    }

    /// Loads accounts, credentials and persisted statuses from a directory.
    pub async fn from_directory(directory: Arc<dyn Directory>) -> Result<Self, StoreError> {
        let mut p = MemoryAccountProvider::new(Vec::new());
        p.directory = Some(directory);
        p.reload().await?;
        Ok(p)
    }

    /// Renews OAuth tokens through `client` (single-flight in this process).
    pub fn with_oauth(mut self, client: TokenClient) -> Self {
        self.refresher = Some(Refresher { client });
        self
    }

    /// Makes renewal single-flight across processes too (e.g. a Redis lock); in either order with
    /// [`MemoryAccountProvider::with_oauth`].
    pub fn with_refresh_lock(mut self, lock: Arc<dyn RefreshLock>) -> Self {
        self.refresh_lock = lock;
        self
    }

    /// Re-reads accounts and statuses from the directory (no-op without one).
    pub async fn reload(&self) -> Result<(), StoreError> {
        let Some(dir) = &self.directory else {
            return Ok(());
        };
        let mut accounts = Vec::new();
        for a in dir.accounts().await? {
            let creds = dir.account_credentials(a.id).await?;
            accounts.push((a, creds));
        }
        let statuses = dir.account_statuses().await?;
        self.replace(accounts);
        let mut st = self.status.write().unwrap();
        for (id, s) in statuses {
            st.insert(id, s);
        }
        Ok(())
    }

    /// Swaps in a new set of accounts atomically; in-flight leases keep their old `Arc<Account>`.
    pub fn replace(&self, accounts: Vec<(Account, Credentials)>) {
        let mut by_group: HashMap<GroupId, Vec<Arc<Account>>> = HashMap::new();
        let mut credentials = HashMap::new();
        for (a, c) in accounts {
            credentials.insert(a.id, c);
            if !a.enabled {
                continue;
            }
            let a = Arc::new(a);
            for g in &a.groups {
                by_group.entry(*g).or_default().push(a.clone());
            }
        }
        let by_group = by_group
            .into_iter()
            .map(|(g, v)| (g, Arc::from(v)))
            .collect();
        *self.snapshot.write().unwrap() = Arc::new(Snapshot { by_group });
        *self.credentials.write().unwrap() = credentials;
    }

    /// Puts an account back into service (operator action).
    pub async fn clear_status(&self, id: AccountId) {
        self.set(id, AccountStatus::Ready).await;
    }

    /// Updates the in-process status at once (the very next selection sees it) and persists it
    /// in the background, so a slow database never delays failover.
    async fn set(&self, id: AccountId, status: AccountStatus) {
        self.status.write().unwrap().insert(id, status.clone());
        if let Some(dir) = self.directory.clone() {
            tokio::spawn(async move {
                if let Err(e) = dir.set_account_status(id, &status).await {
                    tracing::warn!(account = %id, error = %e, "could not persist account status");
                }
            });
        }
    }

    fn current(&self, id: AccountId) -> Option<Credentials> {
        self.credentials.read().unwrap().get(&id).cloned()
    }

    fn lock_for(&self, id: AccountId) -> Arc<tokio::sync::Mutex<()>> {
        self.refresh_locks
            .lock()
            .unwrap()
            .entry(id)
            .or_default()
            .clone()
    }

    /// Renews the account's token unless someone already did: `rejected` names the token a 401
    /// refused; without it the token is renewed only while it is close to expiry.
    async fn refresh(
        &self,
        account: &Account,
        rejected: Option<u64>,
    ) -> Result<Credentials, ProviderError> {
        let none = || ProviderError::NoCredentials(account.id);
        let Some(refresher) = &self.refresher else {
            return self.current(account.id).ok_or_else(none);
        };
        let skew = REFRESH_BEFORE_EXPIRY.as_millis() as i64;
        let needed = |c: &Credentials| match (c, rejected) {
            (_, Some(fp)) => c.bearer().map(fingerprint) == Some(fp),
            (Credentials::OAuth(t), None) => t.expires_within(now_ms(), skew),
            _ => false,
        };
        let lock = self.lock_for(account.id);
        let _local = lock.lock().await;
        let current = self.current(account.id).ok_or_else(none)?;
        if !needed(&current) {
            return Ok(current);
        }
        let _cluster = match self.refresh_lock.lock(account.id).await {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::warn!(account = %account.name, error = %e, "refresh lock unavailable; refreshing without it");
                None
            }
        };
        // Another node may have rotated the tokens while this one waited.
        let mut current = current;
        if let Some(dir) = &self.directory
            && let Ok(stored) = dir.account_credentials(account.id).await
            && stored != current
        {
            self.credentials
                .write()
                .unwrap()
                .insert(account.id, stored.clone());
            if !needed(&stored) {
                return Ok(stored);
            }
            current = stored;
        }
        let Credentials::OAuth(tokens) = &current else {
            return Ok(current);
        };
        match refresher
            .client
            .refresh(account, &tokens.refresh_token)
            .await
        {
            Ok(set) => {
                let fresh = Credentials::OAuth(OAuthTokens {
                    access_token: set.access_token,
                    refresh_token: set
                        .refresh_token
                        .unwrap_or_else(|| tokens.refresh_token.clone()),
                    expires_at_ms: set.expires_in.map(|s| now_ms() + s as i64 * 1000),
                });
                if let Some(dir) = &self.directory
                    && let Err(e) = dir.update_account_credentials(account.id, &fresh).await
                {
                    // The rotated refresh token lives only in memory now: a restart before the
                    // next successful write loses the account.
                    tracing::error!(account = %account.name, error = %e, "could not store refreshed OAuth tokens");
                }
                self.credentials
                    .write()
                    .unwrap()
                    .insert(account.id, fresh.clone());
                tracing::info!(account = %account.name, "OAuth access token refreshed");
                Ok(fresh)
            }
            Err(e) if e.is_permanent() => {
                tracing::warn!(account = %account.name, error = %e, "OAuth refresh refused; account disabled");
                self.set(
                    account.id,
                    AccountStatus::Disabled {
                        reason: format!("OAuth refresh refused: {e}"),
                    },
                )
                .await;
                Err(none())
            }
            Err(e) => {
                tracing::warn!(account = %account.name, error = %e, "OAuth refresh failed");
                if tokens.expires_within(now_ms(), 0) || rejected.is_some() {
                    Err(ProviderError::Unavailable(e.to_string()))
                } else {
                    Ok(current)
                }
            }
        }
    }
}

#[async_trait]
impl AccountProvider for MemoryAccountProvider {
    fn pool(&self, group: GroupId) -> Arc<[Arc<Account>]> {
        let snap = self.snapshot.read().unwrap().clone();
        snap.by_group
            .get(&group)
            .cloned()
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }

    fn status(&self, account: AccountId) -> AccountStatus {
        self.status
            .read()
            .unwrap()
            .get(&account)
            .cloned()
            .unwrap_or(AccountStatus::Ready)
    }

    async fn credentials(&self, account: &Account) -> Result<Credentials, ProviderError> {
        let creds = self
            .current(account.id)
            .ok_or(ProviderError::NoCredentials(account.id))?;
        match &creds {
            Credentials::OAuth(t)
                if self.refresher.is_some()
                    && t.expires_within(now_ms(), REFRESH_BEFORE_EXPIRY.as_millis() as i64) =>
            {
                self.refresh(account, None).await
            }
            _ => Ok(creds),
        }
    }

    async fn credentials_rejected(&self, account: &Account, used: u64) -> bool {
        if self.refresher.is_none() {
            return false;
        }
        match self.current(account.id) {
            Some(Credentials::OAuth(_)) => {}
            // A token refreshed since the attempt was sent: try again with it.
            Some(c) => return c.bearer().map(fingerprint).is_some_and(|fp| fp != used),
            None => return false,
        }
        match self.refresh(account, Some(used)).await {
            Ok(c) => c.bearer().map(fingerprint).is_some_and(|fp| fp != used),
            Err(_) => false,
        }
    }

    async fn report(&self, account: &Account, outcome: Outcome) {
        let now = now_ms();
        let next = match outcome {
            Outcome::Success => {
                // Only touch shared state when something changes: success is the hot path.
                let stale = matches!(self.status(account.id), AccountStatus::CoolingDown { until_ms, .. } if until_ms <= now);
                if !stale {
                    return;
                }
                AccountStatus::Ready
            }
            Outcome::RateLimited { until_ms } => {
                tracing::info!(account = %account.name, until_ms, "account rate limited; parked until reset");
                AccountStatus::CoolingDown {
                    until_ms,
                    reason: "rate limited".into(),
                }
            }
            Outcome::Overloaded { cooldown } => AccountStatus::CoolingDown {
                until_ms: now + cooldown.as_millis() as i64,
                reason: "overloaded".into(),
            },
            Outcome::Unreachable { cooldown } => AccountStatus::CoolingDown {
                until_ms: now + cooldown.as_millis() as i64,
                reason: "unreachable".into(),
            },
            Outcome::AuthFailed { reason } => {
                tracing::warn!(account = %account.name, %reason, "account disabled: credentials refused");
                AccountStatus::Disabled { reason }
            }
        };
        self.set(account.id, next).await;
    }
}
