//! # sub2api-redis
//!
//! Cluster-shared scheduler state on Redis: any number of `sub2api` processes sharing one
//! Postgres and one Redis behave as one relay (DESIGN §5).
//!
//! - [`RedisScheduler`]: the [`Scheduler`](sub2api_core::scheduler::Scheduler). Concurrency slots
//!   are leases in sorted sets scored by expiry (server time), taken by one Lua script that also
//!   reads and renews the session's sticky binding and skips parked accounts; held leases are
//!   renewed by a heartbeat, so a crashed node's slots free themselves within the lease TTL.
//!   A request that finds every slot busy waits (bounded in time, and in waiters per node) for a
//!   release announced over pub/sub, or for the soonest lease to expire by itself.
//! - [`RedisAccountProvider`]: the [`AccountProvider`](sub2api_core::account_provider::AccountProvider)
//!   and the admin API's [`PoolControl`](sub2api_core::api::PoolControl). Accounts and
//!   credentials from a wrapped `MemoryAccountProvider`; cooldowns and disablements shared
//!   through Redis and read from a local cache kept current by pub/sub; an operator's reload or
//!   clear reaches every node.
//! - [`RedisLimiter`]: core's [`Limiter`](sub2api_core::layer::limit::Limiter): per-key and
//!   per-user RPM and concurrency across the cluster (`RelayParts::limiter`).
//! - [`RedisRefreshLock`]: core's `oauth::RefreshLock` (single-flight OAuth refresh across nodes).
//! - [`Hub`]: the connection; also [`Hub::acquire_lease`] for any other scope (per user, ...)
//!   and key-cache invalidation ([`Hub::publish_key_invalidation`], [`Hub::on_key_invalidation`]).
//!
//! ```no_run
//! # async fn demo(accounts: std::sync::Arc<sub2api_core::memory::MemoryAccountProvider>) -> Result<(), sub2api_redis::Error> {
//! use sub2api_redis::{RedisOptions, connect};
//! let cluster = connect("redis://127.0.0.1:6379", accounts, RedisOptions::default()).await?;
//! // RelayParts { accounts: cluster.accounts.clone(), scheduler: cluster.scheduler.clone(), .. }
//! # let _ = cluster;
//! # Ok(()) }
//! ```
//!
//! ## When Redis is unreachable
//!
//! Every operation is bounded by [`RedisOptions::op_timeout`] (1 s); the command connection and
//! the subscriber reconnect by themselves, and everything below recovers on the first operation
//! after Redis answers again. Tested by stopping and restarting a real `redis-server`
//! (`tests/redis_down.rs`).
//!
//! | function | while Redis is down | when it is back |
//! |---|---|---|
//! | select (account concurrency lease) | **fails closed**: `ScheduleError::Busy { retry_after: 1 s }` -> 503 `overloaded_error` in the caller's dialect with `retry-after: 1`, at once (within the operation timeout); nothing goes upstream | the next request schedules normally |
//! | waiting requests | woken as soon as the subscriber loses Redis; their next try fails closed as above | - |
//! | sticky binding | read and renewed inside the select script (so down with it); **fails open** when Redis lost its data: the session is re-bound and served | re-made on use |
//! | lease heartbeat | retried every tick | a lease a restarted Redis lost is added back by the next heartbeat (its request is still upstream): at most one renew interval (10 s) of under-counting |
//! | lease release | retried every tick until the lease's TTL (then it has expired anyway) | - |
//! | `status()` (per candidate, per request) | never touches Redis: the last cached value | the cache is reloaded whole when the subscriber reconnects |
//! | `report()` (429 / 529 / 401 ...) | applied to this node at once and persisted to the Directory; the shared write is kept | pushed on reconnect; statuses still in force that a restarted Redis lost (new `run_id`) are pushed again by the nodes that know them |
//! | operator reload / clear ([`PoolControl`](sub2api_core::api::PoolControl)) | done on this node; the announcement is lost | every node reloads accounts when its subscriber reconnects |
//! | key and user RPM / concurrency ([`RedisLimiter`]) | **fails closed** for limited keys and users: 503 in the caller's dialect (`overloaded_error` for Anthropic), `retry-after: 1`; requests with no limit at all never touch Redis here | the next request is counted normally; leases a restarted Redis lost come back with the heartbeat |
//! | refresh lock ([`RedisRefreshLock`]) | **fails open**: `lock` errs at once and core's provider refreshes without the cluster lock (still single-flight in the process) | - |
//! | key-cache invalidation | publishing returns the error (the key cache's own TTL, 30 s, bounds staleness) | subscribers are told [`KeyInvalidation::All`] on reconnect |
//! | [`connect`] at boot | fails: a node does not start without the Redis it was told to use | - |

mod accounts;
mod hub;
mod leases;
mod limiter;
mod refresh;
mod scheduler;
pub mod scripts;

use std::sync::Arc;
use std::time::Duration;

use sub2api_core::memory::{MemoryAccountProvider, SchedulerConfig};

pub use accounts::RedisAccountProvider;
pub use hub::{Event, Hub, KeyInvalidation};
pub use leases::LeaseGuard;
pub use limiter::{RedisKeyLimiter, RedisLimiter};
pub use refresh::{RedisRefreshLock, RefreshLock, RefreshLockError};
pub use scheduler::RedisScheduler;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
}

/// Knobs of the Redis state. Every node of one relay must use the same `prefix` (and should use
/// the same TTLs).
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Every key and channel lives under `<prefix>:`; separate relays can share one Redis.
    pub prefix: String,
    /// How long a lease lives without a heartbeat: the longest a crashed node's slots stay taken.
    pub lease_ttl: Duration,
    /// How often held leases are renewed (well below `lease_ttl`).
    pub renew_every: Duration,
    /// Bound on every Redis operation (and on connecting).
    pub op_timeout: Duration,
    /// Sticky TTL, sticky wait and queue wait, as for the in-process scheduler.
    pub scheduler: SchedulerConfig,
    /// Requests that may wait for a slot on one node; more get 503 at once.
    pub max_waiting: usize,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: "sub2api".into(),
            lease_ttl: Duration::from_secs(30),
            renew_every: Duration::from_secs(10),
            op_timeout: Duration::from_secs(1),
            scheduler: SchedulerConfig::default(),
            max_waiting: 4096,
        }
    }
}

/// One node's Redis-backed parts.
#[derive(Clone)]
pub struct RedisCluster {
    pub hub: Arc<Hub>,
    pub accounts: Arc<RedisAccountProvider>,
    pub scheduler: Arc<RedisScheduler>,
}

impl RedisCluster {
    /// The provider and scheduler over an existing hub (connect the hub first when the
    /// `MemoryAccountProvider` needs it too, e.g. for [`RedisRefreshLock`]).
    pub async fn new(
        hub: Arc<Hub>,
        accounts: Arc<MemoryAccountProvider>,
    ) -> Result<RedisCluster, Error> {
        let accounts = Arc::new(RedisAccountProvider::new(hub.clone(), accounts).await?);
        let scheduler = Arc::new(RedisScheduler::new(hub.clone(), accounts.clone()));
        Ok(RedisCluster {
            hub,
            accounts,
            scheduler,
        })
    }

    /// Sends every pending lease release; call after the relay finished its responses at
    /// shutdown (what is not sent expires with the lease TTL anyway).
    pub async fn shutdown(&self) {
        self.hub.flush().await;
    }

    /// The per-key and per-user limiter on the same connection (for `RelayParts::limiter`).
    pub fn limiter(&self) -> RedisLimiter {
        RedisLimiter::new(self.hub.clone())
    }
}

/// Connects to Redis at `url` and builds the shared account provider (over `accounts`, which
/// keeps supplying accounts and credentials) and the scheduler. Must run inside a tokio runtime
/// that outlives the relay (it starts the heartbeat and the subscriber).
pub async fn connect(
    url: &str,
    accounts: Arc<MemoryAccountProvider>,
    options: RedisOptions,
) -> Result<RedisCluster, Error> {
    RedisCluster::new(Hub::connect(url, options).await?, accounts).await
}
