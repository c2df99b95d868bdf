//! Concurrency and requests-per-minute of the calling key ([`Principal::limits`]) and of its
//! owner across all of their keys ([`Principal::user_limits`]). A request over a concurrency
//! limit waits in a bounded queue (bounded in length and time) instead of being refused at once;
//! over an RPM limit it gets 429 with `retry-after` = the time until the minute turns. The
//! concurrency slots travel in the response body, so a stream counts until it ends.
//!
//! A request needs a slot of its key *and* one of its user. Both are taken together or not at
//! all, so a waiting request never sits on one of them while it waits for the other (which
//! could starve the user's other keys, or deadlock two requests holding one each).
//!
//! The policy is the [`Limiter`] trait: [`KeyLimiter`] keeps the counts in this process;
//! `sub2api_redis::RedisLimiter` shares them among every node of a cluster.
//!
//! ```
//! use std::sync::Arc;
//! use sub2api_core::layer::limit::{KeyLimiter, LimitLayer};
//! let layer = LimitLayer::new(Arc::new(KeyLimiter::default()));
//! # let _ = layer;
//! ```

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use tokio::sync::Notify;
use tower::{Layer, Service};

use crate::body::{GuardedBody, RelayBody, boxed};
use crate::domain::{KeyId, Limits, Principal, UserId};
use crate::error::RelayError;

/// Admits relay requests against the limits of their key and user.
///
/// Implementations must take the key's and the user's slot together (never hold one while
/// waiting for the other), bound every wait in time and in waiters, and count a request against
/// an RPM only once however long it waits.
#[async_trait]
pub trait Limiter: Send + Sync + 'static {
    /// Admits one request, waiting (bounded) for free slots. The returned [`Permit`] must live as
    /// long as the response body: dropping it frees the slots.
    ///
    /// Errors: 429 (`rate_limited`) over an RPM, with a full queue or after the wait; 503
    /// (`overloaded`) when the limiter cannot decide (a shared store is unreachable).
    async fn admit(&self, principal: &Principal) -> Result<Permit, RelayError>;
}

/// The concurrency slots an admitted request holds; dropping it frees them.
#[derive(Default)]
pub struct Permit(Option<Box<dyn Send + Sync>>);

impl Permit {
    /// Nothing held: the request counts against no concurrency limit.
    pub fn none() -> Self {
        Permit(None)
    }

    /// Holds `guard` until the permit is dropped.
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        Permit(Some(Box::new(guard)))
    }

    /// Whether dropping this frees anything.
    pub fn is_held(&self) -> bool {
        self.0.is_some()
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Permit").field(&self.is_held()).finish()
    }
}

/// What one limit applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    Key(KeyId),
    User(UserId),
}

impl Scope {
    /// The scope and its limits for a request: the key's first, then the user's. Scopes without
    /// any limit are left out.
    pub fn of(p: &Principal) -> Vec<(Scope, &Limits)> {
        [
            (Scope::Key(p.key), &p.limits),
            (Scope::User(p.user), &p.user_limits),
        ]
        .into_iter()
        .filter(|(_, l)| !l.is_unlimited())
        .collect()
    }

    /// `key` or `user`, for messages.
    pub fn noun(&self) -> &'static str {
        match self {
            Scope::Key(_) => "key",
            Scope::User(_) => "user",
        }
    }

    /// The refusal of a request over this scope's RPM.
    pub fn over_rpm(&self, rpm: u32, retry_after: Duration) -> RelayError {
        RelayError::rate_limited(
            format!(
                "this {} is limited to {rpm} requests per minute",
                self.noun()
            ),
            retry_after,
        )
    }

    /// The refusal of a request that found this scope busy and its queue full.
    pub fn queue_full(&self, capacity: u32) -> RelayError {
        RelayError::rate_limited(
            format!(
                "this {} already has {capacity} requests in flight and a full queue",
                self.noun()
            ),
            Duration::from_secs(1),
        )
    }

    /// The refusal of a request that waited its whole bound for this scope.
    pub fn wait_timed_out(&self) -> RelayError {
        RelayError::rate_limited(
            format!("timed out waiting for a free slot on this {}", self.noun()),
            Duration::from_secs(1),
        )
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Key(id) => write!(f, "key:{id}"),
            Scope::User(id) => write!(f, "user:{id}"),
        }
    }
}

struct ScopeState {
    in_flight: u32,
    waiting: u32,
    window_start: Instant,
    window_count: u32,
    /// Woken whenever a slot of this scope is freed.
    released: Arc<Notify>,
}

impl ScopeState {
    fn new(now: Instant) -> Self {
        ScopeState {
            in_flight: 0,
            waiting: 0,
            window_start: now,
            window_count: 0,
            released: Arc::new(Notify::new()),
        }
    }

    fn idle(&self, now: Instant) -> bool {
        self.in_flight == 0
            && self.waiting == 0
            && now.duration_since(self.window_start) >= Duration::from_secs(60)
    }
}

#[derive(Default)]
struct Scopes {
    map: HashMap<Scope, ScopeState>,
    /// Size after the last sweep of idle scopes: sweeping when the map doubles keeps the cost
    /// amortised and the map bounded by twice the scopes that are busy.
    swept_at: usize,
}

impl Scopes {
    fn get(&mut self, scope: Scope, now: Instant) -> &mut ScopeState {
        if self.map.len() >= 2 * self.swept_at.max(512) {
            self.map.retain(|_, s| !s.idle(now));
            self.swept_at = self.map.len();
        }
        self.map
            .entry(scope)
            .or_insert_with(|| ScopeState::new(now))
    }
}

/// The in-process [`Limiter`]: counts for every key and user in this process.
pub struct KeyLimiter {
    scopes: Arc<Mutex<Scopes>>,
    /// Requests that may wait for a slot per key (and per user).
    pub max_waiting: u32,
    /// How long one may wait.
    pub max_wait: Duration,
}

impl Default for KeyLimiter {
    fn default() -> Self {
        KeyLimiter::new(64, Duration::from_secs(60))
    }
}

/// The concurrency slots of one admitted request.
struct Slots {
    scopes: Arc<Mutex<Scopes>>,
    held: Vec<Scope>,
}

impl Drop for Slots {
    fn drop(&mut self) {
        let mut s = self.scopes.lock().unwrap();
        for scope in &self.held {
            if let Some(st) = s.map.get_mut(scope) {
                st.in_flight = st.in_flight.saturating_sub(1);
                st.released.notify_waiters();
            }
        }
    }
}

/// A place in the wait queues of the scopes a request waits on; left on drop (the wait ended,
/// timed out or was cancelled).
struct Queued {
    scopes: Arc<Mutex<Scopes>>,
    queued: Vec<Scope>,
}

impl Drop for Queued {
    fn drop(&mut self) {
        let mut s = self.scopes.lock().unwrap();
        for scope in &self.queued {
            if let Some(st) = s.map.get_mut(scope) {
                st.waiting = st.waiting.saturating_sub(1);
            }
        }
    }
}

impl KeyLimiter {
    /// At most `max_waiting` requests of one key (and of one user) wait for a slot, each for at
    /// most `max_wait`.
    pub fn new(max_waiting: u32, max_wait: Duration) -> Self {
        KeyLimiter {
            scopes: Arc::new(Mutex::new(Scopes::default())),
            max_waiting,
            max_wait,
        }
    }

    /// Counts the request against every RPM of `scopes`, or against none when one is exhausted.
    fn count_rpm(&self, scopes: &[(Scope, &Limits)]) -> Result<(), RelayError> {
        let mut s = self.scopes.lock().unwrap();
        let now = Instant::now();
        for (scope, limits) in scopes {
            let Some(rpm) = limits.rpm else { continue };
            let st = s.get(*scope, now);
            if now.duration_since(st.window_start) >= Duration::from_secs(60) {
                st.window_start = now;
                st.window_count = 0;
            }
            if st.window_count >= rpm {
                let retry =
                    Duration::from_secs(60).saturating_sub(now.duration_since(st.window_start));
                return Err(scope.over_rpm(rpm, retry));
            }
        }
        for (scope, limits) in scopes {
            if limits.rpm.is_some() {
                s.get(*scope, now).window_count += 1;
            }
        }
        Ok(())
    }

    /// Admits a request of `scopes` (see [`Scope::of`]).
    pub async fn admit_scopes(&self, scopes: &[(Scope, &Limits)]) -> Result<Permit, RelayError> {
        self.count_rpm(scopes)?;
        let limited: Vec<(Scope, u32)> = scopes
            .iter()
            .filter_map(|(s, l)| l.concurrency.map(|c| (*s, c)))
            .collect();
        if limited.is_empty() {
            return Ok(Permit::none());
        }
        let mut queued: Option<Queued> = None;
        let deadline = tokio::time::Instant::now() + self.max_wait;
        loop {
            let (blocker, mut released) = {
                let mut s = self.scopes.lock().unwrap();
                let now = Instant::now();
                let blocker = limited
                    .iter()
                    .find(|(scope, cap)| s.get(*scope, now).in_flight >= *cap)
                    .map(|(scope, _)| *scope);
                let Some(blocker) = blocker else {
                    for (scope, _) in &limited {
                        s.get(*scope, now).in_flight += 1;
                    }
                    return Ok(Permit::new(Slots {
                        scopes: self.scopes.clone(),
                        held: limited.into_iter().map(|(s, _)| s).collect(),
                    }));
                };
                if queued.is_none() {
                    if let Some((full, cap)) = limited
                        .iter()
                        .find(|(scope, _)| s.get(*scope, now).waiting >= self.max_waiting)
                    {
                        return Err(full.queue_full(*cap));
                    }
                    for (scope, _) in &limited {
                        s.get(*scope, now).waiting += 1;
                    }
                    queued = Some(Queued {
                        scopes: self.scopes.clone(),
                        queued: limited.iter().map(|(s, _)| *s).collect(),
                    });
                }
                // Registered before the lock is released, so a slot freed right after cannot
                // be missed.
                let mut released = Box::pin(s.get(blocker, now).released.clone().notified_owned());
                released.as_mut().enable();
                (blocker, released)
            };
            let woken: Pin<&mut _> = released.as_mut();
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return Err(blocker.wait_timed_out());
            }
        }
    }

    /// Admits a request of one key with `limits` (no user limits).
    pub async fn admit(&self, key: KeyId, limits: &Limits) -> Result<Permit, RelayError> {
        if limits.is_unlimited() {
            return Ok(Permit::none());
        }
        self.admit_scopes(&[(Scope::Key(key), limits)]).await
    }

    /// Requests holding a slot of `scope` now.
    pub fn in_flight(&self, scope: Scope) -> u32 {
        self.scopes
            .lock()
            .unwrap()
            .map
            .get(&scope)
            .map_or(0, |s| s.in_flight)
    }
}

#[async_trait]
impl Limiter for KeyLimiter {
    async fn admit(&self, principal: &Principal) -> Result<Permit, RelayError> {
        let scopes = Scope::of(principal);
        if scopes.is_empty() {
            return Ok(Permit::none());
        }
        self.admit_scopes(&scopes).await
    }
}

#[derive(Clone)]
pub struct LimitLayer {
    limiter: Arc<dyn Limiter>,
}

impl LimitLayer {
    pub fn new(limiter: Arc<dyn Limiter>) -> Self {
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
    limiter: Arc<dyn Limiter>,
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
            let permit = limiter.admit(&p).await?;
            let res = inner.call(req).await?;
            Ok(if permit.is_held() {
                res.map(|b| boxed(GuardedBody::new(b, permit)))
            } else {
                res
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Group, GroupId, KeyRules, Platform};

    fn principal(user: i64, key: i64, limits: Limits, user_limits: Limits) -> Principal {
        Principal {
            user: UserId(user),
            key: KeyId(key),
            group: Arc::new(Group {
                id: GroupId(1),
                name: "g".into(),
                platform: Platform::Anthropic,
                rate_multiplier: Default::default(),
            }),
            limits,
            user_limits,
            rules: KeyRules::default(),
        }
    }

    fn conc(n: u32) -> Limits {
        Limits {
            concurrency: Some(n),
            rpm: None,
        }
    }

    #[tokio::test]
    async fn rpm_and_concurrency() {
        let l = KeyLimiter {
            max_wait: Duration::from_millis(20),
            ..Default::default()
        };
        let limits = Limits {
            concurrency: Some(1),
            rpm: Some(3),
        };
        let p1 = l.admit(KeyId(1), &limits).await.unwrap();
        assert!(l.admit(KeyId(1), &limits).await.is_err()); // waits 20ms, times out
        drop(p1);
        assert!(l.admit(KeyId(1), &limits).await.unwrap().is_held());
        let e = l.admit(KeyId(1), &limits).await.unwrap_err(); // 4th in the minute
        assert!(e.retry_after.unwrap() <= Duration::from_secs(60));
    }

    #[tokio::test]
    async fn a_user_limit_spans_all_of_the_users_keys() {
        let l = Arc::new(KeyLimiter {
            max_wait: Duration::from_secs(30),
            ..Default::default()
        });
        // Two keys of one user, each allowing 5, the user 2.
        let k1 = principal(7, 1, conc(5), conc(2));
        let k2 = principal(7, 2, conc(5), conc(2));
        let a = Limiter::admit(l.as_ref(), &k1).await.unwrap();
        let b = Limiter::admit(l.as_ref(), &k2).await.unwrap();
        assert_eq!(l.in_flight(Scope::User(UserId(7))), 2);
        // A third waits (it neither fails nor takes the key slot meanwhile) ...
        let (l2, k) = (l.clone(), k2.clone());
        let waiter = tokio::spawn(async move { Limiter::admit(l2.as_ref(), &k).await });
        let queued = async {
            while l.scopes.lock().unwrap().map[&Scope::User(UserId(7))].waiting == 0 {
                tokio::task::yield_now().await;
            }
        };
        queued.await;
        assert_eq!(
            l.in_flight(Scope::Key(KeyId(2))),
            1,
            "no key slot taken while waiting"
        );
        // ... and gets both slots once one of the user's requests ends.
        drop(a);
        let c = waiter.await.unwrap().unwrap();
        assert!(c.is_held());
        assert_eq!(l.in_flight(Scope::User(UserId(7))), 2);
        assert_eq!(l.in_flight(Scope::Key(KeyId(2))), 2);
        assert_eq!(l.in_flight(Scope::Key(KeyId(1))), 0);
        drop((b, c));
        assert_eq!(l.in_flight(Scope::User(UserId(7))), 0);
        assert_eq!(l.in_flight(Scope::Key(KeyId(2))), 0);
        // Another user is not affected by user 7.
        let other = principal(8, 3, Limits::default(), conc(1));
        assert!(Limiter::admit(l.as_ref(), &other).await.unwrap().is_held());
    }

    #[tokio::test]
    async fn a_user_rpm_counts_every_key_and_a_refusal_counts_nowhere() {
        let l = KeyLimiter::default();
        let rpm = |n| Limits {
            concurrency: None,
            rpm: Some(n),
        };
        let k1 = principal(1, 1, rpm(2), rpm(3));
        let k2 = principal(1, 2, Limits::default(), rpm(3));
        for p in [&k1, &k2, &k2] {
            assert!(!Limiter::admit(&l, p).await.unwrap().is_held());
        }
        let e = Limiter::admit(&l, &k1).await.unwrap_err();
        assert!(e.message.contains("user"), "{}", e.message);
        assert!(e.retry_after.unwrap() <= Duration::from_secs(60));
        // The refused request was not counted against the key: it still has one left.
        assert_eq!(
            l.scopes.lock().unwrap().map[&Scope::Key(KeyId(1))].window_count,
            1
        );
    }

    #[tokio::test]
    async fn full_queues_and_timeouts_name_the_scope_and_leave_nothing_behind() {
        let p = principal(3, 4, Limits::default(), conc(1));
        let waiting =
            |l: &KeyLimiter| l.scopes.lock().unwrap().map[&Scope::User(UserId(3))].waiting;
        let l = KeyLimiter {
            max_wait: Duration::from_millis(30),
            ..Default::default()
        };
        let held = Limiter::admit(&l, &p).await.unwrap();
        let e = Limiter::admit(&l, &p).await.unwrap_err();
        assert!(e.message.contains("timed out") && e.message.contains("user"));
        assert_eq!(waiting(&l), 0, "the timed-out waiter left the queue");
        drop(held);

        // One waiter fills a queue of one; the next is refused at once.
        let l = Arc::new(KeyLimiter {
            max_waiting: 1,
            max_wait: Duration::from_secs(30),
            ..Default::default()
        });
        let held = Limiter::admit(l.as_ref(), &p).await.unwrap();
        let (l2, p2) = (l.clone(), p.clone());
        let first = tokio::spawn(async move { Limiter::admit(l2.as_ref(), &p2).await });
        while waiting(&l) == 0 {
            tokio::task::yield_now().await;
        }
        let e = Limiter::admit(l.as_ref(), &p).await.unwrap_err();
        assert!(e.message.contains("full queue"), "{}", e.message);
        drop(held);
        assert!(first.await.unwrap().unwrap().is_held());
        assert_eq!(waiting(&l), 0);
        // A cancelled waiter leaves the queue too.
        let held = Limiter::admit(l.as_ref(), &p).await.unwrap();
        let (l2, p2) = (l.clone(), p.clone());
        let cancelled = tokio::spawn(async move { Limiter::admit(l2.as_ref(), &p2).await });
        while waiting(&l) == 0 {
            tokio::task::yield_now().await;
        }
        cancelled.abort();
        let _ = cancelled.await;
        assert_eq!(waiting(&l), 0);
        drop(held);
    }
}
