use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::Rng;
use tokio::sync::Notify;

use crate::account_provider::{AccountProvider, AccountStatus, now_ms};
use crate::domain::{Account, AccountId};
use crate::scheduler::{Lease, ScheduleError, Scheduler, SelectRequest, SessionKey, SlotGuard};

/// Knobs of the in-process scheduler.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// How long a session stays bound to its account without being used.
    pub sticky_ttl: Duration,
    /// How long a request waits for its sticky account's slot before moving (and rebinding).
    pub sticky_wait: Duration,
    /// How long a request waits for any slot when the whole pool is busy.
    pub queue_wait: Duration,
    /// The most session bindings kept. Every conversation without a client session id binds its
    /// prompt's prefix hash, so a relay serving many one-off prompts would otherwise keep one
    /// binding per request for `sticky_ttl`; beyond this, the least recently used are forgotten
    /// (such a session just picks an account afresh).
    pub max_sticky_sessions: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            sticky_ttl: Duration::from_secs(3600),
            sticky_wait: Duration::from_secs(3),
            queue_wait: Duration::from_secs(60),
            max_sticky_sessions: 262_144,
        }
    }
}

#[derive(Default)]
struct Load {
    in_use: u32,
    last_used: Option<Instant>,
}

#[derive(Default)]
struct State {
    load: HashMap<AccountId, Load>,
    sticky: HashMap<SessionKey, (AccountId, Instant)>,
    /// Sticky-map size at which the next sweep of expired bindings runs.
    prune_at: usize,
}

struct Inner {
    state: Mutex<State>,
    released: Notify,
}

/// The in-process [`Scheduler`] (DESIGN §4): sticky account first, else lowest priority number,
/// lowest load, least recently used, random among ties; a request that finds every slot busy
/// waits for one (bounded) instead of failing.
#[derive(Clone)]
pub struct MemoryScheduler {
    accounts: Arc<dyn AccountProvider>,
    inner: Arc<Inner>,
    config: SchedulerConfig,
}

struct MemorySlot {
    inner: Arc<Inner>,
    account: AccountId,
}

impl SlotGuard for MemorySlot {}

impl Drop for MemorySlot {
    fn drop(&mut self) {
        if let Some(l) = self.inner.state.lock().unwrap().load.get_mut(&self.account) {
            l.in_use = l.in_use.saturating_sub(1);
        }
        self.inner.released.notify_waiters();
    }
}

enum Attempt {
    Leased(Lease),
    /// Candidates exist but all their slots are taken.
    Busy,
    /// Nothing can serve; the soonest cooldown end, if any.
    Empty(Option<Duration>),
}

impl MemoryScheduler {
    pub fn new(accounts: Arc<dyn AccountProvider>) -> Self {
        Self::with_config(accounts, SchedulerConfig::default())
    }

    pub fn with_config(accounts: Arc<dyn AccountProvider>, config: SchedulerConfig) -> Self {
        MemoryScheduler {
            accounts,
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                released: Notify::new(),
            }),
            config,
        }
    }

    /// Slots in use per account (for metrics and tests).
    pub fn in_use(&self, account: AccountId) -> u32 {
        self.inner
            .state
            .lock()
            .unwrap()
            .load
            .get(&account)
            .map(|l| l.in_use)
            .unwrap_or(0)
    }

    /// The account a session is bound to, if the binding is live.
    pub fn sticky_account(&self, session: &SessionKey) -> Option<AccountId> {
        let s = self.inner.state.lock().unwrap();
        s.sticky
            .get(session)
            .filter(|(_, exp)| *exp > Instant::now())
            .map(|(a, _)| *a)
    }

    fn try_acquire(&self, state: &mut State, account: &Arc<Account>) -> Option<MemorySlot> {
        let load = state.load.entry(account.id).or_default();
        if load.in_use >= account.concurrency.max(1) {
            return None;
        }
        load.in_use += 1;
        load.last_used = Some(Instant::now());
        Some(MemorySlot {
            inner: self.inner.clone(),
            account: account.id,
        })
    }

    fn bind(&self, state: &mut State, session: Option<&SessionKey>, account: AccountId) {
        let Some(session) = session else { return };
        let now = Instant::now();
        state
            .sticky
            .insert(session.clone(), (account, now + self.config.sticky_ttl));
        // Sweep only when the map has doubled since the last sweep: an O(n) pause under the
        // scheduler lock every 1,024 binds would land on the hot path's p99; this way the sweep is
        // amortised O(1) per bind and runs rarely once the live session count is stable.
        let max = self.config.max_sticky_sessions.max(2);
        if state.sticky.len() >= state.prune_at.min(max) {
            state.sticky.retain(|_, (_, exp)| *exp > now);
            if state.sticky.len() > max / 2 {
                // Still too many live ones: keep the most recently used half of the bound (a
                // binding's expiry is renewed on every use, so the earliest are the least recent).
                let mut expiries: Vec<Instant> = state.sticky.values().map(|b| b.1).collect();
                let cut = expiries.len() - max / 2;
                let (_, &mut oldest_kept, _) = expiries.select_nth_unstable(cut);
                state.sticky.retain(|_, (_, exp)| *exp >= oldest_kept);
            }
            state.prune_at = (state.sticky.len() * 2).max(1024);
        }
    }

    fn attempt(&self, req: &SelectRequest<'_>, sticky_only: Option<AccountId>) -> Attempt {
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
                _ => {}
            }
        }
        if candidates.is_empty() {
            return Attempt::Empty(soonest.map(|t| Duration::from_millis((t - now).max(0) as u64)));
        }
        let mut state = self.inner.state.lock().unwrap();
        if let Some(id) = sticky_only {
            let Some(a) = candidates.iter().find(|a| a.id == id) else {
                return Attempt::Busy;
            };
            return match self.try_acquire(&mut state, a) {
                Some(slot) => {
                    self.bind(&mut state, req.session, a.id);
                    Attempt::Leased(Lease::new((*a).clone(), true, Box::new(slot)))
                }
                None => Attempt::Busy,
            };
        }
        // Rank: priority, then load ratio (in_use/capacity), then least recently used; random
        // among exact ties so equal accounts share the work.
        let mut rng = rand::rng();
        let mut ranked: Vec<(i32, u64, Option<Instant>, u32, &Arc<Account>)> = candidates
            .iter()
            .map(|a| {
                let l = state.load.get(&a.id);
                let in_use = l.map(|l| l.in_use).unwrap_or(0) as u64;
                let ratio = in_use * 1_000_000 / a.concurrency.max(1) as u64;
                (
                    a.priority,
                    ratio,
                    l.and_then(|l| l.last_used),
                    rng.random::<u32>(),
                    *a,
                )
            })
            .collect();
        ranked.sort_by(|x, y| (x.0, x.1, x.2, x.3).cmp(&(y.0, y.1, y.2, y.3)));
        for (_, _, _, _, a) in ranked {
            if let Some(slot) = self.try_acquire(&mut state, a) {
                self.bind(&mut state, req.session, a.id);
                return Attempt::Leased(Lease::new(a.clone(), false, Box::new(slot)));
            }
        }
        Attempt::Busy
    }

    /// Waits until `deadline` for `attempt` to lease. Registers for the release signal before
    /// each try, so a slot freed between the try and the wait is never missed.
    async fn wait_for(
        &self,
        req: &SelectRequest<'_>,
        sticky: Option<AccountId>,
        deadline: Instant,
    ) -> Attempt {
        loop {
            let notified = self.inner.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.attempt(req, sticky) {
                Attempt::Busy => {}
                other => return other,
            }
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                return Attempt::Busy;
            }
        }
    }
}

#[async_trait]
impl Scheduler for MemoryScheduler {
    async fn select(&self, req: SelectRequest<'_>) -> Result<Lease, ScheduleError> {
        if let Some(session) = req.session {
            let bound = self
                .sticky_account(session)
                .filter(|a| !req.excluded.contains(a));
            if let Some(account) = bound {
                let deadline = Instant::now() + self.config.sticky_wait;
                if let Attempt::Leased(lease) = self.wait_for(&req, Some(account), deadline).await {
                    return Ok(lease);
                }
            }
        }
        let deadline = Instant::now() + self.config.queue_wait;
        match self.wait_for(&req, None, deadline).await {
            Attempt::Leased(lease) => Ok(lease),
            Attempt::Empty(retry_after) => Err(ScheduleError::NoAccount { retry_after }),
            Attempt::Busy => Err(ScheduleError::Busy {
                retry_after: Duration::from_secs(1),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account_provider::Outcome;
    use crate::domain::{AccountKind, Credentials, Group, GroupId, Platform, Secret};
    use crate::memory::MemoryAccountProvider;
    use crate::money::Multiplier;

    fn account(id: i64, priority: i32, concurrency: u32) -> (Account, Credentials) {
        (
            Account {
                id: AccountId(id),
                name: format!("a{id}"),
                platform: Platform::Anthropic,
                kind: AccountKind::Apikey,
                base_url: "http://127.0.0.1:1".into(),
                priority,
                concurrency,
                groups: vec![GroupId(1)],
                enabled: true,
                options: Default::default(),
            },
            Credentials::ApiKey(Secret::new("k")),
        )
    }

    fn group() -> Group {
        Group {
            id: GroupId(1),
            name: "g".into(),
            platform: Platform::Anthropic,
            rate_multiplier: Multiplier::ONE,
        }
    }

    fn req<'a>(
        g: &'a Group,
        session: Option<&'a SessionKey>,
        excluded: &'a [AccountId],
    ) -> SelectRequest<'a> {
        SelectRequest {
            group: g,
            model: "claude-sonnet-4-5",
            session,
            excluded,
        }
    }

    #[tokio::test]
    async fn prefers_priority_then_load() {
        let p = Arc::new(MemoryAccountProvider::new(vec![
            account(1, 10, 2),
            account(2, 20, 2),
        ]));
        let s = MemoryScheduler::new(p);
        let g = group();
        let a = s.select(req(&g, None, &[])).await.unwrap();
        let b = s.select(req(&g, None, &[])).await.unwrap();
        let c = s.select(req(&g, None, &[])).await.unwrap();
        assert_eq!(
            (a.account.id, b.account.id, c.account.id),
            (AccountId(1), AccountId(1), AccountId(2))
        );
    }

    /// Accounts 1 and 2, same priority, `concurrency` slots each.
    fn two_accounts(concurrency: u32, config: SchedulerConfig) -> MemoryScheduler {
        let p = Arc::new(MemoryAccountProvider::new(vec![
            account(1, 10, concurrency),
            account(2, 10, concurrency),
        ]));
        MemoryScheduler::with_config(p, config)
    }

    #[tokio::test]
    async fn session_bindings_are_bounded_and_the_recent_ones_kept() {
        let s = two_accounts(
            100,
            SchedulerConfig {
                max_sticky_sessions: 64,
                ..Default::default()
            },
        );
        let g = group();
        let mut bound = Vec::new();
        for i in 0..1000 {
            let sess = SessionKey(format!("k:{i}"));
            let lease = s.select(req(&g, Some(&sess), &[])).await.unwrap();
            bound.push(lease.account.id);
            let held = s.inner.state.lock().unwrap().sticky.len();
            assert!(held <= 64, "{held} bindings kept, the bound is 64");
        }
        // The last sessions bound are still there, on the account they were given.
        let state = s.inner.state.lock().unwrap();
        for i in 990..1000 {
            let (account, _) = state.sticky[&SessionKey(format!("k:{i}"))];
            assert_eq!(account, bound[i]);
        }
    }

    #[tokio::test]
    async fn sessions_stick_and_busy_requests_wait() {
        let s = two_accounts(
            1,
            SchedulerConfig {
                sticky_wait: Duration::from_millis(50),
                ..Default::default()
            },
        );
        let g = group();
        let sess = SessionKey("k:s1".into());
        let first = s.select(req(&g, Some(&sess), &[])).await.unwrap();
        let bound = first.account.id;
        drop(first);
        for _ in 0..5 {
            assert_eq!(
                s.select(req(&g, Some(&sess), &[]))
                    .await
                    .unwrap()
                    .account
                    .id,
                bound
            );
        }
        // Pool full: a third request waits and gets the first slot released.
        let x = s.select(req(&g, None, &[])).await.unwrap();
        let y = s.select(req(&g, None, &[])).await.unwrap();
        let s2 = s.clone();
        let g2 = g.clone();
        let waiter =
            tokio::spawn(async move { s2.select(req(&g2, None, &[])).await.map(|l| l.account.id) });
        tokio::task::yield_now().await;
        let freed = x.account.id;
        drop(x);
        assert_eq!(waiter.await.unwrap().unwrap(), freed);
        drop(y);
    }

    #[tokio::test]
    async fn cooled_accounts_are_skipped_and_empty_pool_reports_reset() {
        let p = Arc::new(MemoryAccountProvider::new(vec![account(1, 10, 1)]));
        let s = MemoryScheduler::new(p.clone());
        let g = group();
        let (a, _) = account(1, 10, 1);
        p.report(
            &a,
            Outcome::RateLimited {
                until_ms: now_ms() + 30_000,
            },
        )
        .await;
        match s.select(req(&g, None, &[])).await {
            Err(ScheduleError::NoAccount {
                retry_after: Some(d),
            }) => assert!(d > Duration::from_secs(25)),
            other => panic!("{other:?}"),
        }
    }
}
