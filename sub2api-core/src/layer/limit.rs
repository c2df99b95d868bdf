//! Per-key concurrency and requests-per-minute, from the key's [`KeyLimits`]. A request over the
//! concurrency limit waits in a bounded queue (bounded in length and time) instead of being
//! refused at once; over the RPM limit it gets 429 with `retry-after` = the seconds until the
//! minute turns. The concurrency permit travels in the response body, so a stream counts until it
//! ends.
//!
//! ```
//! use std::sync::Arc;
//! use sub2api_core::layer::limit::{KeyLimiter, LimitLayer};
//! let layer = LimitLayer::new(Arc::new(KeyLimiter::default()));
//! # let _ = layer;
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use crate::body::{GuardedBody, RelayBody, boxed};
use crate::domain::{KeyId, KeyLimits, Principal};
use crate::error::RelayError;

struct KeyState {
    semaphore: Arc<Semaphore>,
    capacity: u32,
    waiting: u32,
    window_start: Instant,
    window_count: u32,
}

/// In-process limiter state for all keys.
pub struct KeyLimiter {
    keys: Mutex<HashMap<KeyId, KeyState>>,
    /// Requests that may wait for a slot per key.
    pub max_waiting: u32,
    /// How long one may wait.
    pub max_wait: Duration,
}

impl Default for KeyLimiter {
    fn default() -> Self {
        KeyLimiter {
            keys: Mutex::new(HashMap::new()),
            max_waiting: 64,
            max_wait: Duration::from_secs(60),
        }
    }
}

struct WaitGuard<'a>(&'a KeyLimiter, KeyId);
impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.0.keys.lock().unwrap().get_mut(&self.1) {
            s.waiting = s.waiting.saturating_sub(1);
        }
    }
}

impl KeyLimiter {
    /// Admits a request: checks RPM, then takes a concurrency permit (waiting if needed).
    pub async fn admit(
        &self,
        key: KeyId,
        limits: &KeyLimits,
    ) -> Result<Option<OwnedSemaphorePermit>, RelayError> {
        let semaphore = {
            let mut keys = self.keys.lock().unwrap();
            let now = Instant::now();
            let capacity = limits.concurrency.unwrap_or(0);
            let st = keys.entry(key).or_insert_with(|| KeyState {
                semaphore: Arc::new(Semaphore::new(capacity as usize)),
                capacity,
                waiting: 0,
                window_start: now,
                window_count: 0,
            });
            if let Some(rpm) = limits.rpm {
                if now.duration_since(st.window_start) >= Duration::from_secs(60) {
                    st.window_start = now;
                    st.window_count = 0;
                }
                if st.window_count >= rpm {
                    let retry =
                        Duration::from_secs(60).saturating_sub(now.duration_since(st.window_start));
                    return Err(RelayError::rate_limited(
                        format!("this key is limited to {rpm} requests per minute"),
                        retry,
                    ));
                }
                st.window_count += 1;
            }
            let Some(cap) = limits.concurrency else {
                return Ok(None);
            };
            if cap != st.capacity {
                // Limit changed by an operator: start a fresh semaphore; old permits drain away.
                st.semaphore = Arc::new(Semaphore::new(cap as usize));
                st.capacity = cap;
            }
            if st.semaphore.available_permits() == 0 && st.waiting >= self.max_waiting {
                return Err(RelayError::rate_limited(
                    format!("this key already has {cap} requests in flight and a full queue"),
                    Duration::from_secs(1),
                ));
            }
            // Counted until the permit is granted (or the wait gives up); see `WaitGuard`.
            st.waiting += 1;
            st.semaphore.clone()
        };
        let _waiting = WaitGuard(self, key);
        match tokio::time::timeout(self.max_wait, semaphore.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Some(permit)),
            _ => Err(RelayError::rate_limited(
                "timed out waiting for a free slot on this key",
                Duration::from_secs(1),
            )),
        }
    }
}

#[derive(Clone)]
pub struct LimitLayer {
    limiter: Arc<KeyLimiter>,
}

impl LimitLayer {
    pub fn new(limiter: Arc<KeyLimiter>) -> Self {
        LimitLayer { limiter }
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Limit {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Limit<S> {
    inner: S,
    limiter: Arc<KeyLimiter>,
}

impl<S> Service<Request<Bytes>> for Limit<S>
where
    S: Service<Request<Bytes>, Response = Response<RelayBody>, Error = RelayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<RelayBody>;
    type Error = RelayError;
    type Future = BoxFuture<'static, Result<Response<RelayBody>, RelayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RelayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let mut inner = super::take_ready(&mut self.inner);
        let limiter = self.limiter.clone();
        Box::pin(async move {
            let Some(p) = req.extensions().get::<Principal>().cloned() else {
                return inner.call(req).await;
            };
            let permit = limiter.admit(p.key, &p.limits).await?;
            let res = inner.call(req).await?;
            Ok(match permit {
                Some(permit) => res.map(|b| boxed(GuardedBody::new(b, permit))),
                None => res,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rpm_and_concurrency() {
        let l = KeyLimiter {
            max_wait: Duration::from_millis(20),
            ..Default::default()
        };
        let limits = KeyLimits {
            concurrency: Some(1),
            rpm: Some(3),
        };
        let p1 = l.admit(KeyId(1), &limits).await.unwrap();
        assert!(l.admit(KeyId(1), &limits).await.is_err()); // waits 20ms, times out
        drop(p1);
        assert!(l.admit(KeyId(1), &limits).await.unwrap().is_some());
        let e = l.admit(KeyId(1), &limits).await.unwrap_err(); // 4th in the minute
        assert!(e.retry_after.unwrap() <= Duration::from_secs(60));
    }
}
