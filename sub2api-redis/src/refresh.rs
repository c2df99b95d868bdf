//! Cluster-wide single flight for OAuth token refreshes: of all the nodes that find an account's
//! access token expired at once, one refreshes it; the others wait for its lock and then find the
//! new token in the Directory (core's `MemoryAccountProvider` re-reads the stored credentials
//! after taking the lock), instead of spending a rotating refresh token a second time.
//!
//! The lock is `SET P:refresh:<id> <token> NX PX <ttl>`: a holder that dies frees it after the
//! TTL. Its release is announced on the release channel, so waiters on every node wake at once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sub2api_core::domain::AccountId;
use sub2api_core::oauth::{RefreshGuard, RefreshLock as CoreRefreshLock};
use tokio::time::Instant;

use crate::Error;
use crate::hub::{Hub, wait};
use crate::leases::LeaseKeeper;

/// The held lock; dropping it releases it (if this node still owns it) and wakes the waiters.
pub struct RefreshLock {
    keeper: Arc<LeaseKeeper>,
    key: String,
    token: String,
    name: String,
}

impl std::fmt::Debug for RefreshLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshLock")
            .field("scope", &self.name)
            .finish()
    }
}

impl Drop for RefreshLock {
    fn drop(&mut self) {
        self.keeper.unlock(
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.token),
            std::mem::take(&mut self.name),
        );
    }
}

impl RefreshGuard for RefreshLock {}

/// Why the lock could not be had.
#[derive(Debug, thiserror::Error)]
pub enum RefreshLockError {
    /// Another node still held it after the whole wait.
    #[error("another node held the refresh lock for the whole wait")]
    TimedOut,
    #[error(transparent)]
    Redis(#[from] Error),
}

impl Hub {
    /// Takes the refresh lock of `account` for at most `ttl` (a holder that dies frees it then),
    /// waiting up to `max_wait` for the node that holds it. After taking it, re-read the stored
    /// credentials: the previous holder may have refreshed them already.
    pub async fn acquire_refresh_lock(
        &self,
        account: AccountId,
        ttl: Duration,
        max_wait: Duration,
    ) -> Result<RefreshLock, RefreshLockError> {
        let key = self.key(&format!("refresh:{account}"));
        let token = self.member();
        let deadline = Instant::now() + max_wait;
        let released = self.keeper.released.clone();
        loop {
            let notified = released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut c = self.conn.clone();
            let set: Option<String> = self
                .run(
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl.as_millis() as u64)
                        .query_async(&mut c),
                )
                .await?;
            if set.is_some() {
                let name = format!("refresh:{account}");
                return Ok(RefreshLock {
                    keeper: self.keeper.clone(),
                    key,
                    token,
                    name,
                });
            }
            let mut c = self.conn.clone();
            let pttl: i64 = self
                .run(redis::cmd("PTTL").arg(&key).query_async(&mut c))
                .await?;
            if !wait(notified, pttl, deadline).await {
                return Err(RefreshLockError::TimedOut);
            }
        }
    }
}

/// Core's [`RefreshLock`](sub2api_core::oauth::RefreshLock) on Redis: hand it to
/// `MemoryAccountProvider::with_refresh_lock`. When Redis is unreachable `lock` fails at once and
/// the provider refreshes without the cluster lock (fail open, still single-flight per process).
#[derive(Clone)]
pub struct RedisRefreshLock {
    hub: Arc<Hub>,
    /// How long a holder may take before the lock frees itself.
    pub ttl: Duration,
    /// How long a node waits for another node's refresh.
    pub max_wait: Duration,
}

impl RedisRefreshLock {
    pub fn new(hub: Arc<Hub>) -> Self {
        RedisRefreshLock {
            hub,
            ttl: Duration::from_secs(30),
            max_wait: Duration::from_secs(30),
        }
    }
}

#[async_trait]
impl CoreRefreshLock for RedisRefreshLock {
    async fn lock(&self, account: AccountId) -> Result<Box<dyn RefreshGuard>, String> {
        match self
            .hub
            .acquire_refresh_lock(account, self.ttl, self.max_wait)
            .await
        {
            Ok(l) => Ok(Box::new(l)),
            Err(e) => Err(e.to_string()),
        }
    }
}
