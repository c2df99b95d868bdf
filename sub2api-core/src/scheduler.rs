//! [`Scheduler`]: picks the account for a request and hands out a [`Lease`] on one of its
//! concurrency slots. The lease travels inside the response body and frees the slot when the body
//! ends, so a long stream holds its slot for exactly as long as it runs.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::{Account, AccountId, Group};

/// The sticky key of a conversation, already namespaced by API key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey(pub String);

/// What the scheduler needs to know about a request.
#[derive(Clone, Debug)]
pub struct SelectRequest<'a> {
    pub group: &'a Group,
    pub model: &'a str,
    pub session: Option<&'a SessionKey>,
    /// Accounts already tried for this request (failover).
    pub excluded: &'a [AccountId],
}

/// Something that frees a concurrency slot when dropped.
pub trait SlotGuard: Send + Sync + 'static {}

/// An account chosen for one request, with one of its concurrency slots.
pub struct Lease {
    pub account: Arc<Account>,
    /// Whether the account came from the session's sticky binding.
    pub sticky: bool,
    _slot: Box<dyn SlotGuard>,
}

impl Lease {
    pub fn new(account: Arc<Account>, sticky: bool, slot: Box<dyn SlotGuard>) -> Self {
        Lease {
            account,
            sticky,
            _slot: slot,
        }
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("account", &self.account.name)
            .field("sticky", &self.sticky)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// Nothing in the pool can take the request (all cooling down, disabled or excluded).
    #[error("no account available in this group")]
    NoAccount { retry_after: Option<Duration> },
    /// Every slot stayed busy for the whole wait.
    #[error("all accounts are busy")]
    Busy { retry_after: Duration },
}

#[async_trait]
pub trait Scheduler: Send + Sync + 'static {
    /// Chooses an account, waiting (bounded) for a slot when the pool is busy.
    async fn select(&self, req: SelectRequest<'_>) -> Result<Lease, ScheduleError>;
}
