//! [`RedisKeyLimiter`]: per-API-key requests per minute and concurrency, shared by every node.
//! The same contract as core's in-process `KeyLimiter::admit`: over the RPM -> 429 with
//! `retry-after` = time until the minute turns; over the concurrency -> wait in a bounded queue
//! (per node, bounded in length and time), then 429. Redis unreachable -> 503 (fail closed).
//!
//! The minute is a fixed window on the Redis clock (`floor(now / 60 s)`), one counter per key,
//! so every node counts against the same window.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sub2api_core::domain::{KeyId, KeyLimits};
use sub2api_core::error::RelayError;
use tokio::time::Instant;

use crate::hub::{Hub, wait};
use crate::leases::LeaseGuard;
use crate::scripts;

/// Cluster-wide per-key limits.
pub struct RedisKeyLimiter {
    hub: Arc<Hub>,
    waiting: Mutex<HashMap<KeyId, u32>>,
    /// Requests of one key that may wait for a slot on this node.
    pub max_waiting: u32,
    /// How long one may wait.
    pub max_wait: Duration,
}

struct WaitSlot<'a>(&'a RedisKeyLimiter, KeyId);

impl Drop for WaitSlot<'_> {
    fn drop(&mut self) {
        let mut w = self.0.waiting.lock().unwrap();
        if let Some(n) = w.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                w.remove(&self.1);
            }
        }
    }
}

impl RedisKeyLimiter {
    pub fn new(hub: Arc<Hub>) -> Self {
        RedisKeyLimiter {
            hub,
            waiting: Mutex::new(HashMap::new()),
            max_waiting: 64,
            max_wait: Duration::from_secs(60),
        }
    }

    fn enter_queue(&self, key: KeyId) -> Option<WaitSlot<'_>> {
        let mut w = self.waiting.lock().unwrap();
        let n = w.entry(key).or_insert(0);
        if *n >= self.max_waiting {
            return None;
        }
        *n += 1;
        Some(WaitSlot(self, key))
    }

    /// Admits a request: counts it against the key's RPM, then takes a concurrency lease
    /// (waiting if needed). The lease (if any) must live as long as the response body.
    pub async fn admit(
        &self,
        key: KeyId,
        limits: &KeyLimits,
    ) -> Result<Option<LeaseGuard>, RelayError> {
        if limits.rpm.is_none() && limits.concurrency.is_none() {
            return Ok(None);
        }
        let rpm_key = self.hub.key(&format!("rpm:{key}"));
        let lease_key = self.hub.key(&format!("lease:key:{key}"));
        let cap = limits.concurrency.unwrap_or(0);
        let mut count_rpm = true;
        let mut deadline = None;
        let mut slot = None;
        let released = self.hub.keeper.released.clone();
        loop {
            let notified = released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let member = self.hub.member();
            let pending = self
                .hub
                .keeper
                .pending(vec![lease_key.clone()], member.clone());
            let mut c = self.hub.conn.clone();
            let reply: Vec<i64> = self
                .hub
                .run(
                    scripts::ADMIT
                        .key(&rpm_key)
                        .key(&lease_key)
                        .arg(limits.rpm.unwrap_or(0))
                        .arg(if count_rpm { "1" } else { "0" })
                        .arg(cap)
                        .arg(&member)
                        .arg(self.hub.options.lease_ttl.as_millis() as u64)
                        .invoke_async(&mut c),
                )
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "redis unreachable: refusing requests of limited keys (fail closed)");
                    RelayError::overloaded("rate limiting is temporarily unavailable", Some(Duration::from_secs(1)))
                })?;
            count_rpm = false;
            match *reply.as_slice() {
                [-1, retry_ms] => {
                    pending.defuse();
                    return Err(RelayError::rate_limited(
                        format!(
                            "this key is limited to {} requests per minute",
                            limits.rpm.unwrap_or(0)
                        ),
                        Duration::from_millis(retry_ms.max(0) as u64),
                    ));
                }
                [1, _] => {
                    return Ok(Some(pending.into_lease(
                        lease_key,
                        cap,
                        format!("key:{key}"),
                    )));
                }
                [2] => {
                    pending.defuse();
                    return Ok(None);
                }
                [0, wake_ms] => {
                    pending.defuse();
                    if slot.is_none() {
                        slot = Some(self.enter_queue(key).ok_or_else(|| {
                            RelayError::rate_limited(
                                format!(
                                    "this key already has {cap} requests in flight and a full queue"
                                ),
                                Duration::from_secs(1),
                            )
                        })?);
                    }
                    let d = *deadline.get_or_insert_with(|| Instant::now() + self.max_wait);
                    if !wait(notified, wake_ms, d).await {
                        return Err(RelayError::rate_limited(
                            "timed out waiting for a free slot on this key",
                            Duration::from_secs(1),
                        ));
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
}
