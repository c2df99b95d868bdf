//! The cluster-wide half of single-flight refresh. Within a process the account provider keeps a
//! mutex per account; across processes a [`RefreshLock`] (Redis in `sub2api-redis`) makes sure
//! only one node refreshes an account at a time, and the provider re-reads the stored credentials
//! after taking it (another node may have rotated them meanwhile).

use async_trait::async_trait;

use crate::domain::AccountId;

/// Held while refreshing; dropping it releases the lock.
pub trait RefreshGuard: Send + Sync {}

impl RefreshGuard for () {}

/// A lock per account across every relay process.
#[async_trait]
pub trait RefreshLock: Send + Sync + 'static {
    /// Waits (bounded) for the account's refresh lock. Implementations expire the lock on their
    /// own so a crashed holder cannot block refreshes forever; an `Err` means the lock could not
    /// be had and the caller refreshes anyway (a lost race costs a re-sign-in, a stuck account
    /// costs more).
    async fn lock(&self, account: AccountId) -> Result<Box<dyn RefreshGuard>, String>;
}

/// One process alone: the provider's per-account mutex is already single-flight.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessRefreshLock;

#[async_trait]
impl RefreshLock for ProcessRefreshLock {
    async fn lock(&self, _account: AccountId) -> Result<Box<dyn RefreshGuard>, String> {
        Ok(Box::new(()))
    }
}
