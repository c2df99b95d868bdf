//! [`RedisScheduler`]: the [`Scheduler`] whose state every node shares. Selection is the same as
//! the in-process [`MemoryScheduler`](sub2api_core::memory::MemoryScheduler) (DESIGN §4): the
//! session's sticky account first, waiting briefly when it is busy; else the lowest priority
//! number, then the lowest load (live leases / concurrency), then the least recently used, random
//! among ties; a request that finds every slot busy waits for one (bounded in time, and in how
//! many may wait per node).
//!
//! One select is one Lua script ([`scripts::SELECT`]): it reads the sticky binding, skips accounts
//! another node parked, ranks the candidates, takes the lease and renews the binding, atomically
//! and by the server's clock. Waiting needs no polling: a release that frees a full account is
//! announced on a channel, and the script tells a waiter when the soonest lease would expire by
//! itself (a dead node's), so it wakes for whichever comes first.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rand::seq::SliceRandom;
use sub2api_core::account_provider::{AccountProvider, AccountStatus, now_ms};
use sub2api_core::domain::{Account, AccountId};
use sub2api_core::memory::SchedulerConfig;
use sub2api_core::scheduler::{Lease, ScheduleError, Scheduler, SelectRequest, SessionKey};
use tokio::time::Instant;

use crate::hub::{Hub, wait};
use crate::{Error, scripts};

/// How long a refused request is told to wait when Redis cannot be reached or the pool stays busy.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The Redis-backed [`Scheduler`]. Cheap to share: hold it in an `Arc`.
pub struct RedisScheduler {
    hub: Arc<Hub>,
    accounts: Arc<dyn AccountProvider>,
    config: SchedulerConfig,
    max_waiting: usize,
    waiting: Arc<AtomicUsize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    StickyFirst,
    StickyOnly(AccountId),
    General,
}

enum Attempt {
    Leased(Lease),
    StickyBusy { account: AccountId, wake_ms: i64 },
    StickyGone,
    Busy { wake_ms: i64 },
    Empty(Option<Duration>),
}

struct Waiter(Arc<AtomicUsize>);

impl Drop for Waiter {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RedisScheduler {
    /// A scheduler over `accounts` (usually a [`RedisAccountProvider`](crate::RedisAccountProvider)
    /// on the same hub, so statuses are shared too).
    pub fn new(hub: Arc<Hub>, accounts: Arc<dyn AccountProvider>) -> Self {
        let config = hub.options.scheduler.clone();
        let max_waiting = hub.options.max_waiting;
        RedisScheduler {
            hub,
            accounts,
            config,
            max_waiting,
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Live leases on an account across the cluster (by the server clock).
    pub async fn in_use(&self, account: AccountId) -> Result<u32, Error> {
        self.hub.lease_count(&format!("acct:{account}")).await
    }

    /// The account a session is bound to, if the binding is live.
    pub async fn sticky_account(&self, session: &SessionKey) -> Result<Option<AccountId>, Error> {
        let mut c = self.hub.conn.clone();
        let key = self.sticky_key(Some(session));
        let v: Option<i64> = self
            .hub
            .run(redis::cmd("GET").arg(key).query_async(&mut c))
            .await?;
        Ok(v.map(AccountId))
    }

    /// Requests waiting for a slot on this node right now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    fn sticky_key(&self, session: Option<&SessionKey>) -> String {
        match session {
            Some(s) => self.hub.key(&format!("sticky:{}", s.0)),
            None => self.hub.key("sticky:-"),
        }
    }

    fn enter_queue(&self) -> Option<Waiter> {
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Waiter(self.waiting.clone()))
    }

    async fn attempt(&self, req: &SelectRequest<'_>, mode: Mode) -> Result<Attempt, Error> {
        let pool = self.accounts.pool(req.group.id);
        let now = now_ms();
        let mut soonest: Option<i64> = None;
        let mut candidates: Vec<&Arc<Account>> = Vec::with_capacity(pool.len());
        for a in pool.iter() {
            if req.excluded.contains(&a.id)
                || a.platform != req.group.platform
                || !a.serves_model(req.model)
            {
                continue;
            }
            match self.accounts.status(a.id) {
                s if s.is_ready(now) => candidates.push(a),
                AccountStatus::CoolingDown { until_ms, .. } => {
                    soonest = Some(soonest.map_or(until_ms, |s| s.min(until_ms)));
                }
                AccountStatus::Disabled { .. } | AccountStatus::Ready => {}
            }
        }
        let in_ms = |t: i64| Duration::from_millis((t - now).max(0) as u64);
        if candidates.is_empty() {
            return Ok(Attempt::Empty(soonest.map(in_ms)));
        }
        if let Mode::StickyOnly(id) = mode
            && !candidates.iter().any(|a| a.id == id)
        {
            return Ok(Attempt::StickyGone);
        }
        candidates.shuffle(&mut rand::rng());
        let keys: Vec<String> = candidates
            .iter()
            .map(|a| self.hub.key(&format!("lease:acct:{}", a.id)))
            .collect();
        let member = self.hub.member();
        let (mode_arg, sticky_arg) = match mode {
            Mode::StickyFirst => ("0", String::new()),
            Mode::StickyOnly(id) => ("1", id.to_string()),
            Mode::General => ("2", String::new()),
        };
        let mut inv = scripts::SELECT.prepare_invoke();
        inv.key(self.sticky_key(req.session))
            .key(self.hub.key("acct"));
        for k in &keys {
            inv.key(k);
        }
        inv.arg(mode_arg)
            .arg(sticky_arg)
            .arg(if req.session.is_some() { "1" } else { "0" })
            .arg(self.hub.options.lease_ttl.as_millis() as u64)
            .arg(self.config.sticky_ttl.as_millis() as u64)
            .arg(&member);
        for a in &candidates {
            inv.arg(a.id.0).arg(a.concurrency.max(1)).arg(a.priority);
        }
        let pending = self.hub.keeper.pending(keys.clone(), member);
        let mut conn = self.hub.conn.clone();
        let reply: Vec<i64> = self.hub.run(inv.invoke_async(&mut conn)).await?;
        match *reply.as_slice() {
            [1, id, sticky, _expiry] => {
                let Some(i) = candidates.iter().position(|a| a.id.0 == id) else {
                    return Err(Error::Protocol(format!("select chose {id}, no candidate")));
                };
                let account = candidates[i].clone();
                let guard = pending.into_lease(
                    keys[i].clone(),
                    account.concurrency.max(1),
                    format!("acct:{}", account.id),
                );
                Ok(Attempt::Leased(Lease::new(
                    account,
                    sticky == 1,
                    Box::new(guard),
                )))
            }
            [2, id, wake_ms] => {
                pending.defuse();
                Ok(Attempt::StickyBusy {
                    account: AccountId(id),
                    wake_ms,
                })
            }
            [3, wake_ms] => {
                pending.defuse();
                Ok(Attempt::Busy { wake_ms })
            }
            [0, retry_ms] => {
                pending.defuse();
                let shared = (retry_ms >= 0).then(|| now + retry_ms);
                let soonest = match (soonest, shared) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                Ok(Attempt::Empty(soonest.map(in_ms)))
            }
            [4] => {
                pending.defuse();
                Ok(Attempt::StickyGone)
            }
            _ => Err(Error::Protocol(format!("select replied {reply:?}"))),
        }
    }
}

#[async_trait]
impl Scheduler for RedisScheduler {
    async fn select(&self, req: SelectRequest<'_>) -> Result<Lease, ScheduleError> {
        let mut mode = if req.session.is_some() {
            Mode::StickyFirst
        } else {
            Mode::General
        };
        let mut sticky_deadline: Option<Instant> = None;
        let mut queue_deadline: Option<Instant> = None;
        let mut waiter: Option<Waiter> = None;
        let released = self.hub.keeper.released_accounts.clone();
        loop {
            // Registered before the try, so a release between the try and the wait is not missed.
            let notified = released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let attempt = match self.attempt(&req, mode).await {
                Ok(a) => a,
                Err(e) => {
                    // Fail closed: without Redis no node can know how many requests an account
                    // already has upstream.
                    tracing::warn!(error = %e, "redis unreachable: refusing to schedule (leases fail closed)");
                    return Err(ScheduleError::Busy {
                        retry_after: RETRY_AFTER,
                    });
                }
            };
            match attempt {
                Attempt::Leased(lease) => return Ok(lease),
                Attempt::Empty(retry_after) => {
                    return Err(ScheduleError::NoAccount { retry_after });
                }
                Attempt::StickyGone => mode = Mode::General,
                Attempt::StickyBusy { account, wake_ms } => {
                    if waiter.is_none() {
                        waiter = Some(self.enter_queue().ok_or(ScheduleError::Busy {
                            retry_after: RETRY_AFTER,
                        })?);
                    }
                    let deadline = *sticky_deadline
                        .get_or_insert_with(|| Instant::now() + self.config.sticky_wait);
                    mode = Mode::StickyOnly(account);
                    if !wait(notified, wake_ms, deadline).await {
                        mode = Mode::General;
                    }
                }
                Attempt::Busy { wake_ms } => {
                    if waiter.is_none() {
                        waiter = Some(self.enter_queue().ok_or(ScheduleError::Busy {
                            retry_after: RETRY_AFTER,
                        })?);
                    }
                    mode = Mode::General;
                    let deadline = *queue_deadline
                        .get_or_insert_with(|| Instant::now() + self.config.queue_wait);
                    if !wait(notified, wake_ms, deadline).await {
                        return Err(ScheduleError::Busy {
                            retry_after: RETRY_AFTER,
                        });
                    }
                }
            }
        }
    }
}
