//! [`RedisAccountProvider`]: accounts and credentials come from a wrapped
//! [`MemoryAccountProvider`] (loaded from the Directory, hot-reloadable); account status
//! (cooldowns, disablements) is shared through Redis.
//!
//! [`AccountProvider::status`] is called for every candidate of every request, so it never
//! touches Redis: it reads a local cache that the subscriber keeps current from the status
//! channel, and reloads whole whenever announcements may have been missed. The authoritative
//! check happens anyway inside the select script, which skips accounts parked in Redis even
//! before this node's cache has heard of it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use async_trait::async_trait;
use sub2api_core::account_provider::{
    AccountProvider, AccountStatus, Outcome, ProviderError, now_ms,
};
use sub2api_core::api::PoolControl;
use sub2api_core::domain::{Account, AccountId, Credentials, GroupId};
use sub2api_core::memory::MemoryAccountProvider;
use sub2api_core::store::StoreError;
use tokio::sync::watch;

use crate::hub::{Event, Hub};
use crate::{Error, scripts};

#[derive(Default)]
struct Cache {
    /// Statuses Redis told us about, with the sequence number of the update that set them.
    entries: HashMap<AccountId, (AccountStatus, u64)>,
}

struct Shared {
    cache: RwLock<Cache>,
    seq: AtomicU64,
    /// Writes that could not reach Redis, pushed again when it is back (latest per account).
    unsent: Mutex<HashMap<AccountId, AccountStatus>>,
    /// The Redis server instance last synced with; a new one may have lost every status.
    run_id: Mutex<Option<String>>,
    changed: watch::Sender<u64>,
}

impl Shared {
    fn put(&self, id: AccountId, status: AccountStatus) {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.cache
            .write()
            .unwrap()
            .entries
            .insert(id, (status, seq));
        self.changed.send_modify(|v| *v += 1);
    }
}

/// The Redis-backed [`AccountProvider`].
pub struct RedisAccountProvider {
    inner: Arc<MemoryAccountProvider>,
    hub: Arc<Hub>,
    shared: Arc<Shared>,
}

impl RedisAccountProvider {
    /// Wraps `inner` (accounts and credentials) and shares statuses through `hub`. Loads the
    /// statuses Redis already has before returning.
    pub async fn new(hub: Arc<Hub>, inner: Arc<MemoryAccountProvider>) -> Result<Self, Error> {
        let shared = Arc::new(Shared {
            cache: RwLock::new(Cache::default()),
            seq: AtomicU64::new(0),
            unsent: Mutex::new(HashMap::new()),
            run_id: Mutex::new(None),
            changed: watch::channel(0).0,
        });
        {
            let shared = shared.clone();
            let weak = Arc::downgrade(&hub);
            let inner = Arc::downgrade(&inner);
            hub.listen(move |e| match e {
                Event::Status(id, status) => shared.put(*id, status.clone().unwrap_or(AccountStatus::Ready)),
                Event::PoolChanged => {
                    let Some(inner) = inner.upgrade() else { return };
                    tokio::spawn(async move {
                        if let Err(e) = inner.reload().await {
                            tracing::warn!(error = %e, "could not reload accounts another node changed");
                        }
                    });
                }
                Event::Resync => {
                    let (shared, weak, inner) = (shared.clone(), weak.clone(), inner.upgrade());
                    tokio::spawn(async move {
                        // Account changes announced while we were not listening.
                        if let Some(inner) = inner
                            && let Err(e) = inner.reload().await
                        {
                            tracing::warn!(error = %e, "could not reload accounts after reconnecting");
                        }
                        if let Err(e) = resync(&weak, &shared).await {
                            tracing::warn!(error = %e, "account status resync failed; using cached statuses");
                        }
                    });
                }
                _ => {}
            });
        }
        resync(&Arc::downgrade(&hub), &shared).await?;
        Ok(RedisAccountProvider { inner, hub, shared })
    }

    /// The wrapped provider: call [`MemoryAccountProvider::reload`] on it to pick up accounts an
    /// operator added.
    pub fn inner(&self) -> &Arc<MemoryAccountProvider> {
        &self.inner
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Ticks whenever a status in the local cache changed (tests and admin views await it).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// Puts an account back into service on every node (operator action).
    pub async fn clear_status(&self, id: AccountId) -> Result<(), Error> {
        self.inner.clear_status(id).await;
        self.shared.put(id, AccountStatus::Ready);
        write(&self.hub, &self.shared, id, &AccountStatus::Ready, "clear").await
    }

    /// Reloads accounts here and tells every other node to do the same (operator action).
    pub async fn reload(&self) -> Result<(), StoreError> {
        self.inner.reload().await?;
        if let Err(e) = self.hub.publish_pool_changed().await {
            tracing::warn!(error = %e, "could not tell other nodes to reload accounts");
        }
        Ok(())
    }
}

/// Pushes what could not be written, then reloads the whole status hash. Updates that arrive
/// while the reload is in flight win over it.
async fn resync(hub: &Weak<Hub>, shared: &Shared) -> Result<(), Error> {
    let Some(hub) = hub.upgrade() else {
        return Ok(());
    };
    let unsent: Vec<(AccountId, AccountStatus)> = shared.unsent.lock().unwrap().drain().collect();
    for (id, status) in unsent {
        let op = if status == AccountStatus::Ready {
            "clear"
        } else {
            "set"
        };
        write(&hub, shared, id, &status, op).await?;
    }
    let run_id = hub.server_run_id().await?;
    let restarted = {
        let mut last = shared.run_id.lock().unwrap();
        let restarted = last.as_ref().is_some_and(|l| *l != run_id);
        *last = Some(run_id);
        restarted
    };
    let before = shared.seq.load(Ordering::SeqCst);
    let mut c = hub.conn.clone();
    let all: HashMap<i64, String> = hub
        .run(
            redis::cmd("HGETALL")
                .arg(hub.key("status"))
                .query_async(&mut c),
        )
        .await?;
    let now = now_ms();
    let mut repush = Vec::new();
    {
        let mut cache = shared.cache.write().unwrap();
        let mut seen = std::collections::HashSet::new();
        for (id, json) in all {
            let id = AccountId(id);
            seen.insert(id);
            let Ok(status) = serde_json::from_str::<AccountStatus>(&json) else {
                continue;
            };
            match cache.entries.get(&id) {
                Some((_, seq)) if *seq > before => {}
                _ => {
                    cache.entries.insert(id, (status, before));
                }
            }
        }
        for (id, (status, seq)) in cache.entries.iter_mut() {
            if seen.contains(id) || *seq > before || *status == AccountStatus::Ready {
                continue;
            }
            if restarted && !status.is_ready(now) {
                // Redis restarted and lost it: it still holds, so share it again.
                repush.push((*id, status.clone()));
            } else {
                // Same Redis, no status: it was cleared while we were not listening.
                *status = AccountStatus::Ready;
            }
        }
    }
    for (id, status) in repush {
        write(&hub, shared, id, &status, "set").await?;
    }
    shared.changed.send_modify(|v| *v += 1);
    Ok(())
}

async fn write(
    hub: &Hub,
    shared: &Shared,
    id: AccountId,
    status: &AccountStatus,
    op: &str,
) -> Result<(), Error> {
    let blocked = match status {
        AccountStatus::CoolingDown { until_ms, .. } => *until_ms,
        AccountStatus::Disabled { .. } => -1,
        AccountStatus::Ready => 0,
    };
    let json = serde_json::to_string(status).unwrap_or_default();
    let mut c = hub.conn.clone();
    let r: Result<i64, Error> = hub
        .run(
            scripts::STATUS
                .key(hub.key("acct"))
                .key(hub.key("status"))
                .arg(hub.channel("status"))
                .arg(op)
                .arg(id.0)
                .arg(blocked)
                .arg(json)
                .invoke_async(&mut c),
        )
        .await;
    if let Err(e) = r {
        if op == "clear_stale" {
            // The cooldown is over either way; stop asking.
            shared.put(id, AccountStatus::Ready);
        } else {
            shared.unsent.lock().unwrap().insert(id, status.clone());
        }
        return Err(e);
    }
    Ok(())
}

#[async_trait]
impl AccountProvider for RedisAccountProvider {
    fn pool(&self, group: GroupId) -> Arc<[Arc<Account>]> {
        self.inner.pool(group)
    }

    fn status(&self, account: AccountId) -> AccountStatus {
        if let Some((s, _)) = self.shared.cache.read().unwrap().entries.get(&account) {
            return s.clone();
        }
        // Never announced through Redis: what the directory said at load time (or since, on
        // this node).
        AccountProvider::status(self.inner.as_ref(), account)
    }

    async fn credentials(&self, account: &Account) -> Result<Credentials, ProviderError> {
        self.inner.credentials(account).await
    }

    async fn credentials_rejected(&self, account: &Account, used: u64) -> bool {
        self.inner.credentials_rejected(account, used).await
    }

    async fn report(&self, account: &Account, outcome: Outcome) {
        let now = now_ms();
        let (next, op) = match &outcome {
            Outcome::Success => {
                let stale = matches!(AccountProvider::status(self, account.id), AccountStatus::CoolingDown { until_ms, .. } if until_ms <= now);
                if !stale {
                    return;
                }
                (AccountStatus::Ready, "clear_stale")
            }
            Outcome::RateLimited { until_ms } => {
                tracing::info!(account = %account.name, until_ms, "account rate limited; parked until reset on every node");
                (
                    AccountStatus::CoolingDown {
                        until_ms: *until_ms,
                        reason: "rate limited".into(),
                    },
                    "set",
                )
            }
            Outcome::Overloaded { cooldown } => (
                AccountStatus::CoolingDown {
                    until_ms: now + cooldown.as_millis() as i64,
                    reason: "overloaded".into(),
                },
                "set",
            ),
            Outcome::Unreachable { cooldown } => (
                AccountStatus::CoolingDown {
                    until_ms: now + cooldown.as_millis() as i64,
                    reason: "unreachable".into(),
                },
                "set",
            ),
            Outcome::AuthFailed { reason } => (
                AccountStatus::Disabled {
                    reason: reason.clone(),
                },
                "set",
            ),
        };
        // This node sees it at once (and the directory keeps it across restarts)...
        self.inner.report(account, outcome).await;
        if op == "set" {
            self.shared.put(account.id, next.clone());
        }
        // ...every other node as soon as Redis has it. (Clearing an ended cooldown is left to
        // the script, which does not clear a newer one another node just set; its announcement
        // updates this cache too.)
        if let Err(e) = write(&self.hub, &self.shared, account.id, &next, op).await {
            tracing::warn!(account = %account.name, error = %e, "could not share account status; kept locally, pushed when redis is back");
        }
    }
}

/// The admin API's handle on the pool: clearing a status or reloading accounts reaches every node.
#[async_trait]
impl PoolControl for RedisAccountProvider {
    async fn reload(&self) -> Result<(), StoreError> {
        RedisAccountProvider::reload(self).await
    }

    async fn clear_status(&self, id: AccountId) {
        if let Err(e) = RedisAccountProvider::clear_status(self, id).await {
            tracing::warn!(account = %id, error = %e, "cleared on this node; other nodes follow when redis is back");
        }
    }

    fn status(&self, id: AccountId) -> AccountStatus {
        AccountProvider::status(self, id)
    }
}
