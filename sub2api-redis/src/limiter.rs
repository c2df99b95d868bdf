//! [`RedisLimiter`]: per-key and per-user requests per minute and concurrency, shared by every
//! node: core's [`Limiter`] with the counts in Redis. The same contract as core's in-process
//! `KeyLimiter`: over an RPM -> 429 with `retry-after` = time until the minute turns; over a
//! concurrency -> wait in a bounded queue (per node, bounded in length and time), then 429.
//! Redis unreachable -> 503 (fail closed: a limit that cannot be checked is not waived, or one
//! Redis outage would hand every user the whole pool).
//!
//! A request takes its key's and its user's lease in one script, or neither (see
//! [`scripts::ADMIT`]), so a waiter never holds one while waiting for the other. The minute is a
//! fixed window on the Redis clock (`floor(now / 60 s)`), one counter per key and per user, so
//! every node counts against the same window.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sub2api_core::domain::{KeyId, Limits, Principal};
use sub2api_core::error::RelayError;
use sub2api_core::layer::limit::{Limiter, Permit, Scope};
use tokio::time::Instant;

use crate::hub::{Hub, wait};
use crate::scripts;

/// Cluster-wide per-key and per-user limits.
pub struct RedisLimiter {
    hub: Arc<Hub>,
    waiting: Arc<Mutex<HashMap<Scope, u32>>>,
    /// Requests of one key (or one user) that may wait for a slot on this node.
    pub max_waiting: u32,
    /// How long one may wait.
    pub max_wait: Duration,
}

/// The name [`RedisLimiter`] had when it only limited keys.
pub type RedisKeyLimiter = RedisLimiter;

/// A place in this node's wait queues of some scopes; left on drop.
struct Queued {
    waiting: Arc<Mutex<HashMap<Scope, u32>>>,
    scopes: Vec<Scope>,
}

impl Drop for Queued {
    fn drop(&mut self) {
        let mut w = self.waiting.lock().unwrap();
        for s in &self.scopes {
            if let Some(n) = w.get_mut(s) {
                *n -= 1;
                if *n == 0 {
                    w.remove(s);
                }
            }
        }
    }
}

/// The Redis names of one scope: its RPM counter, its lease set and its lease scope name.
fn names(hub: &Hub, scope: Scope) -> (String, String, String) {
    let name = scope.to_string();
    let rpm = match scope {
        // Keys keep the counter name they had before users were limited.
        Scope::Key(id) => hub.key(&format!("rpm:{id}")),
        Scope::User(_) => hub.key(&format!("rpm:{name}")),
    };
    (rpm, hub.key(&format!("lease:{name}")), name)
}

impl RedisLimiter {
    pub fn new(hub: Arc<Hub>) -> Self {
        RedisLimiter {
            hub,
            waiting: Arc::new(Mutex::new(HashMap::new())),
            max_waiting: 64,
            max_wait: Duration::from_secs(60),
        }
    }

    /// Joins the wait queue of every scope with a concurrency limit, or none when one is full.
    fn enter_queue(&self, scopes: &[(Scope, &Limits)]) -> Result<Queued, RelayError> {
        let limited: Vec<(Scope, u32)> = scopes
            .iter()
            .filter_map(|(s, l)| l.concurrency.map(|c| (*s, c)))
            .collect();
        let mut w = self.waiting.lock().unwrap();
        if let Some((full, cap)) = limited
            .iter()
            .find(|(s, _)| w.get(s).copied().unwrap_or(0) >= self.max_waiting)
        {
            return Err(full.queue_full(*cap));
        }
        for (s, _) in &limited {
            *w.entry(*s).or_insert(0) += 1;
        }
        Ok(Queued {
            waiting: self.waiting.clone(),
            scopes: limited.into_iter().map(|(s, _)| s).collect(),
        })
    }

    /// Admits a request of `scopes` (see [`Scope::of`]): counts it against every RPM, then takes
    /// a lease in every scope with a concurrency limit (waiting if needed).
    pub async fn admit_scopes(&self, scopes: &[(Scope, &Limits)]) -> Result<Permit, RelayError> {
        if scopes.iter().all(|(_, l)| l.is_unlimited()) {
            return Ok(Permit::none());
        }
        let names: Vec<(String, String, String)> =
            scopes.iter().map(|(s, _)| names(&self.hub, *s)).collect();
        let mut count_rpm = true;
        let mut deadline = None;
        let mut queued = None;
        let released = self.hub.keeper.released.clone();
        loop {
            let notified = released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let member = self.hub.member();
            let pending = self.hub.keeper.pending(
                names.iter().map(|(_, lease, _)| lease.clone()).collect(),
                member.clone(),
            );
            let mut inv = scripts::ADMIT.prepare_invoke();
            inv.arg(if count_rpm { "1" } else { "0" })
                .arg(&member)
                .arg(self.hub.options.lease_ttl.as_millis() as u64);
            for ((rpm, lease, _), (_, limits)) in names.iter().zip(scopes) {
                inv.key(rpm)
                    .key(lease)
                    .arg(limits.rpm.unwrap_or(0))
                    .arg(limits.concurrency.unwrap_or(0));
            }
            let mut c = self.hub.conn.clone();
            let reply: Vec<i64> = self
                .hub
                .run(inv.invoke_async(&mut c))
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "redis unreachable: refusing requests of limited keys and users (fail closed)");
                    RelayError::overloaded("rate limiting is temporarily unavailable", Some(Duration::from_secs(1)))
                })?;
            count_rpm = false;
            let scope_at = |i: i64| {
                usize::try_from(i - 1)
                    .ok()
                    .and_then(|i| scopes.get(i))
                    .ok_or_else(|| RelayError::internal(format!("rate limiter replied {reply:?}")))
            };
            match *reply.as_slice() {
                [-1, retry_ms, i] => {
                    pending.defuse();
                    let (scope, limits) = scope_at(i)?;
                    return Err(scope.over_rpm(
                        limits.rpm.unwrap_or(0),
                        Duration::from_millis(retry_ms.max(0) as u64),
                    ));
                }
                [1, _] => {
                    let leases = names
                        .iter()
                        .zip(scopes)
                        .filter_map(|((_, lease, name), (_, l))| {
                            l.concurrency.map(|cap| (lease.clone(), cap, name.clone()))
                        })
                        .collect();
                    return Ok(Permit::new(pending.into_leases(leases)));
                }
                [2] => {
                    pending.defuse();
                    return Ok(Permit::none());
                }
                [0, wake_ms, i] => {
                    pending.defuse();
                    let (scope, _) = scope_at(i)?;
                    if queued.is_none() {
                        queued = Some(self.enter_queue(scopes)?);
                    }
                    let d = *deadline.get_or_insert_with(|| Instant::now() + self.max_wait);
                    if !wait(notified, wake_ms, d).await {
                        return Err(scope.wait_timed_out());
                    }
                }
                _ => {
                    return Err(RelayError::internal(format!(
                        "rate limiter replied {reply:?}"
                    )));
                }
            }
        }
    }

    /// Admits a request of one key with `limits` (no user limits).
    pub async fn admit(&self, key: KeyId, limits: &Limits) -> Result<Permit, RelayError> {
        self.admit_scopes(&[(Scope::Key(key), limits)]).await
    }

    /// Requests of this node waiting for a slot of `scope` now.
    pub fn waiting(&self, scope: Scope) -> u32 {
        self.waiting
            .lock()
            .unwrap()
            .get(&scope)
            .copied()
            .unwrap_or(0)
    }
}

#[async_trait]
impl Limiter for RedisLimiter {
    async fn admit(&self, principal: &Principal) -> Result<Permit, RelayError> {
        self.admit_scopes(&Scope::of(principal)).await
    }
}
