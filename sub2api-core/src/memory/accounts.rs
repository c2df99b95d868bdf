use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use crate::account_provider::{AccountProvider, AccountStatus, Outcome, ProviderError, now_ms};
use crate::domain::{Account, AccountId, Credentials, GroupId};
use crate::store::{Directory, StoreError};

struct Snapshot {
    by_group: HashMap<GroupId, Arc<[Arc<Account>]>>,
    credentials: HashMap<AccountId, Credentials>,
}

/// An [`AccountProvider`] over an in-memory snapshot of the accounts, with account status kept in
/// process. Hand it a [`Directory`] and cooldowns and disablements are also written through, so
/// they survive restarts and show in the admin API, and [`MemoryAccountProvider::reload`] picks up
/// accounts an operator added.
pub struct MemoryAccountProvider {
    snapshot: RwLock<Arc<Snapshot>>,
    status: RwLock<HashMap<AccountId, AccountStatus>>,
    directory: Option<Arc<dyn Directory>>,
}

impl MemoryAccountProvider {
    pub fn new(accounts: Vec<(Account, Credentials)>) -> Self {
        let p = MemoryAccountProvider {
            snapshot: RwLock::new(Arc::new(Snapshot { by_group: HashMap::new(), credentials: HashMap::new() })),
            status: RwLock::new(HashMap::new()),
            directory: None,
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

    /// Re-reads accounts and statuses from the directory (no-op without one).
    pub async fn reload(&self) -> Result<(), StoreError> {
        let Some(dir) = &self.directory else { return Ok(()) };
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
        let by_group = by_group.into_iter().map(|(g, v)| (g, Arc::from(v))).collect();
        *self.snapshot.write().unwrap() = Arc::new(Snapshot { by_group, credentials });
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
}

#[async_trait]
impl AccountProvider for MemoryAccountProvider {
    fn pool(&self, group: GroupId) -> Arc<[Arc<Account>]> {
        let snap = self.snapshot.read().unwrap().clone();
        snap.by_group.get(&group).cloned().unwrap_or_else(|| Arc::from(Vec::new()))
    }

    fn status(&self, account: AccountId) -> AccountStatus {
        self.status.read().unwrap().get(&account).cloned().unwrap_or(AccountStatus::Ready)
    }

    async fn credentials(&self, account: &Account) -> Result<Credentials, ProviderError> {
        let snap = self.snapshot.read().unwrap().clone();
        snap.credentials.get(&account.id).cloned().ok_or(ProviderError::NoCredentials(account.id))
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
                AccountStatus::CoolingDown { until_ms, reason: "rate limited".into() }
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
