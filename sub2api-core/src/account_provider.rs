//! [`AccountProvider`]: which upstream accounts exist, how to authenticate as each, and what their
//! recent upstream results say about them (cooling down until a reset, disabled, healthy).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::{Account, AccountId, Credentials, GroupId};

/// Unix time in milliseconds: the clock every node agrees on (cooldowns are shared state).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Whether an account may be scheduled now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AccountStatus {
    Ready,
    /// Parked until the vendor's reset time (unix ms).
    CoolingDown {
        until_ms: i64,
        reason: String,
    },
    Disabled {
        reason: String,
    },
}

impl AccountStatus {
    pub fn is_ready(&self, now_ms: i64) -> bool {
        match self {
            AccountStatus::Ready => true,
            AccountStatus::CoolingDown { until_ms, .. } => *until_ms <= now_ms,
            AccountStatus::Disabled { .. } => false,
        }
    }
}

/// What an upstream attempt taught us about the account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Rate limited: park until `until_ms` (from the vendor's reset headers or body).
    RateLimited {
        until_ms: i64,
    },
    /// Overloaded or transient server trouble: a short cooldown.
    Overloaded {
        cooldown: Duration,
    },
    /// Credentials refused: stop using the account until an operator looks at it.
    AuthFailed {
        reason: String,
    },
    /// Connection failed or timed out before any byte.
    Unreachable {
        cooldown: Duration,
    },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    #[error("account {0} has no usable credentials")]
    NoCredentials(AccountId),
    #[error("account store unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait AccountProvider: Send + Sync + 'static {
    /// The enabled accounts of a group. Cheap: called on every request.
    fn pool(&self, group: GroupId) -> Arc<[Arc<Account>]>;

    /// Current status of an account. Cheap: called for every candidate on every request.
    fn status(&self, account: AccountId) -> AccountStatus;

    /// Credentials to send upstream for this account.
    async fn credentials(&self, account: &Account) -> Result<Credentials, ProviderError>;

    /// Turns an upstream result into account state.
    async fn report(&self, account: &Account, outcome: Outcome);

    /// The vendor refused the credentials whose [`fingerprint`] is `used` (a 401). A provider
    /// that can renew them (OAuth) refreshes once, single-flight, and returns true when fresh
    /// credentials are in place (refreshed now or by a concurrent request), so the request may be
    /// tried again; false disables the account as before.
    async fn credentials_rejected(&self, account: &Account, used: u64) -> bool {
        let _ = (account, used);
        false
    }
}

/// A short fingerprint of a secret, to compare credentials without carrying them around.
pub fn fingerprint(secret: &crate::domain::Secret) -> u64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(secret.expose().as_bytes());
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}
