//! [`Hub`]: one process's link to Redis. It owns the multiplexed command connection (a
//! [`ConnectionManager`], which reconnects by itself), the lease keeper (heartbeats and
//! releases), and one subscriber connection that turns the cluster's announcements (a slot was
//! freed, an account's status changed, an API key changed) into local events.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sub2api_core::account_provider::AccountStatus;
use sub2api_core::domain::{AccountId, KeyHash};
use tokio_util::sync::CancellationToken;

use crate::leases::{LeaseGuard, LeaseKeeper};
use crate::{Error, RedisOptions, scripts};

/// Something another node (or this one) announced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Lease scopes that went from full to having room (e.g. `acct:7`, `key:3`, `refresh:7`).
    Released(Vec<String>),
    /// An account's shared status: `None` when it was cleared.
    Status(AccountId, Option<AccountStatus>),
    /// An API key changed; drop it from the key cache (`None`: every key).
    Key(Option<KeyHash>),
    /// An operator changed accounts: reload them.
    PoolChanged,
    /// Announcements may have been missed (the subscriber just (re)connected): reload whatever
    /// is cached, retry whatever waits.
    Resync,
}

/// What a key-cache subscriber is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyInvalidation {
    /// One key changed.
    Key(KeyHash),
    /// Announcements may have been lost while Redis was unreachable: forget every cached key.
    All,
}

type Listener = Arc<dyn Fn(&Event) + Send + Sync>;

/// The shared Redis link of one process. Create it with [`Hub::connect`]; the scheduler, the
/// account provider and the key limiter all hang off one hub.
pub struct Hub {
    pub(crate) conn: ConnectionManager,
    pub(crate) prefix: String,
    pub(crate) options: RedisOptions,
    pub(crate) keeper: Arc<LeaseKeeper>,
    node: String,
    seq: AtomicU64,
    listeners: Mutex<Vec<Listener>>,
    healthy: AtomicBool,
    subscribed: tokio::sync::watch::Sender<u64>,
    stop: CancellationToken,
}

impl Hub {
    /// Connects (failing if Redis does not answer `PING` within the operation timeout), starts the
    /// subscriber and the lease keeper on the current tokio runtime.
    pub async fn connect(url: &str, options: RedisOptions) -> Result<Arc<Hub>, Error> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.op_timeout))
            .set_response_timeout(Some(options.op_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        let prefix = options.prefix.clone();
        let node = format!("{:016x}", rand::random::<u64>());
        let keeper = LeaseKeeper::start(
            conn.clone(),
            &prefix,
            options.lease_ttl,
            options.renew_every,
        );
        let hub = Arc::new(Hub {
            conn,
            prefix,
            options,
            keeper,
            node,
            seq: AtomicU64::new(0),
            listeners: Mutex::new(Vec::new()),
            healthy: AtomicBool::new(true),
            subscribed: tokio::sync::watch::channel(0).0,
            stop: CancellationToken::new(),
        });
        let (accounts, others) = (
            hub.keeper.released_accounts.clone(),
            hub.keeper.released.clone(),
        );
        hub.listen(move |e| match e {
            Event::Released(scopes) => {
                if scopes.is_empty() || scopes.iter().any(|s| s.starts_with("acct:")) {
                    accounts.notify_waiters();
                }
                if scopes.is_empty() || scopes.iter().any(|s| !s.starts_with("acct:")) {
                    others.notify_waiters();
                }
            }
            Event::Resync => {
                accounts.notify_waiters();
                others.notify_waiters();
            }
            _ => {}
        });
        let mut c = hub.conn.clone();
        let pong: String = hub.run(redis::cmd("PING").query_async(&mut c)).await?;
        if pong != "PONG" {
            return Err(Error::Protocol(format!("PING answered {pong}")));
        }
        tokio::spawn(subscriber(Arc::downgrade(&hub), client, hub.stop.clone()));
        // Wait for the first subscription, so nothing announced after connect() returns is lost.
        let mut rx = hub.subscribed.subscribe();
        let _ = tokio::time::timeout(hub.options.op_timeout, rx.wait_for(|n| *n > 0)).await;
        Ok(hub)
    }

    /// The key prefix every key and channel of this hub lives under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn options(&self) -> &RedisOptions {
        &self.options
    }

    /// Whether the last command reached Redis (for `/readyz` and metrics).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn key(&self, suffix: &str) -> String {
        format!("{}:{}", self.prefix, suffix)
    }

    pub(crate) fn channel(&self, name: &str) -> String {
        format!("{}:ev:{}", self.prefix, name)
    }

    /// A lease member unique across the cluster.
    pub(crate) fn member(&self) -> String {
        format!("{}:{}", self.node, self.seq.fetch_add(1, Ordering::Relaxed))
    }

    /// Runs one Redis operation, bounded by the operation timeout, and tracks health.
    pub(crate) async fn run<T>(
        &self,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Error> {
        let r = match tokio::time::timeout(self.options.op_timeout, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Error::Redis(e)),
            Err(_) => Err(Error::Timeout(self.options.op_timeout)),
        };
        self.healthy.store(r.is_ok(), Ordering::Relaxed);
        r
    }

    /// Calls `listener` for every event, from the subscriber task (keep it short, never block).
    pub fn listen(&self, listener: impl Fn(&Event) + Send + Sync + 'static) {
        self.listeners.lock().unwrap().push(Arc::new(listener));
    }

    fn emit(&self, event: &Event) {
        let listeners: Vec<Listener> = self.listeners.lock().unwrap().clone();
        for l in listeners {
            l(event);
        }
    }

    /// The Redis server's `run_id`: it changes when Redis restarts (and may have lost its data).
    pub(crate) async fn server_run_id(&self) -> Result<String, Error> {
        let mut c = self.conn.clone();
        let info: String = self
            .run(redis::cmd("INFO").arg("server").query_async(&mut c))
            .await?;
        info.lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|s| s.trim().to_owned())
            .ok_or_else(|| Error::Protocol("INFO server has no run_id".into()))
    }

    /// Announces that an API key changed, so every node drops it from its key cache.
    pub async fn publish_key_invalidation(&self, key: &KeyHash) -> Result<(), Error> {
        let mut c = self.conn.clone();
        let ch = self.channel("keys");
        let _: i64 = self
            .run(
                redis::cmd("PUBLISH")
                    .arg(ch)
                    .arg(key.to_hex())
                    .query_async(&mut c),
            )
            .await?;
        Ok(())
    }

    /// Announces that every cached API key must be dropped (bulk changes).
    pub async fn publish_key_invalidation_all(&self) -> Result<(), Error> {
        let mut c = self.conn.clone();
        let ch = self.channel("keys");
        let _: i64 = self
            .run(redis::cmd("PUBLISH").arg(ch).arg("*").query_async(&mut c))
            .await?;
        Ok(())
    }

    /// Announces that accounts changed, so every node reloads them.
    pub async fn publish_pool_changed(&self) -> Result<(), Error> {
        let mut c = self.conn.clone();
        let ch = self.channel("pool");
        let _: i64 = self
            .run(
                redis::cmd("PUBLISH")
                    .arg(ch)
                    .arg("reload")
                    .query_async(&mut c),
            )
            .await?;
        Ok(())
    }

    /// Calls `callback` for every key invalidation any node publishes, and with
    /// [`KeyInvalidation::All`] whenever announcements may have been missed (after Redis was
    /// unreachable). Wire it to `KeyCache::invalidate` / `KeyCache::clear`.
    pub fn on_key_invalidation(&self, callback: impl Fn(KeyInvalidation) + Send + Sync + 'static) {
        self.listen(move |e| match e {
            Event::Key(Some(h)) => callback(KeyInvalidation::Key(*h)),
            Event::Key(None) | Event::Resync => callback(KeyInvalidation::All),
            _ => {}
        });
    }

    /// Takes a lease on any scope (`user:<id>`, ...): `capacity` holders at once across the
    /// cluster, each lease renewed by this node's heartbeat and freed when the guard drops (or,
    /// if the node dies, when its TTL runs out). Waits up to `max_wait` for room.
    ///
    /// `Ok(None)`: still full after `max_wait`. `Err`: Redis unreachable.
    pub async fn acquire_lease(
        self: &Arc<Self>,
        scope: &str,
        capacity: u32,
        max_wait: Duration,
    ) -> Result<Option<LeaseGuard>, Error> {
        let key = self.key(&format!("lease:{scope}"));
        let deadline = tokio::time::Instant::now() + max_wait;
        let released = self.keeper.released.clone();
        loop {
            let notified = released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let member = self.member();
            let pending = self.keeper.pending(vec![key.clone()], member.clone());
            let mut c = self.conn.clone();
            let reply: Vec<i64> = self
                .run(
                    scripts::ACQUIRE
                        .key(&key)
                        .arg(capacity.max(1))
                        .arg(&member)
                        .arg(self.options.lease_ttl.as_millis() as u64)
                        .invoke_async(&mut c),
                )
                .await?;
            match reply.as_slice() {
                [1, ..] => {
                    return Ok(Some(pending.into_lease(
                        key,
                        capacity.max(1),
                        scope.to_owned(),
                    )));
                }
                [0, wake, ..] => {
                    pending.defuse();
                    if !wait(notified, *wake, deadline).await {
                        return Ok(None);
                    }
                }
                other => return Err(Error::Protocol(format!("acquire replied {other:?}"))),
            }
        }
    }

    /// Waits until every release queued so far reached Redis (or failed). For graceful shutdown
    /// and tests.
    pub async fn flush(&self) {
        self.keeper.flush().await;
    }

    /// Number of live leases on a scope (`acct:<id>`, `key:<id>`, ...), by the server clock.
    pub async fn lease_count(&self, scope: &str) -> Result<u32, Error> {
        let mut c = self.conn.clone();
        let key = self.key(&format!("lease:{scope}"));
        self.run(scripts::COUNT.key(key).invoke_async(&mut c)).await
    }

    /// Deletes every key under this hub's prefix (SCAN + UNLINK). For tests and benchmarks that
    /// used a throwaway prefix; never on a prefix live relays use.
    pub async fn purge(&self) -> Result<u64, Error> {
        let mut c = self.conn.clone();
        let pattern = format!("{}:*", self.prefix);
        let mut cursor: u64 = 0;
        let mut n = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .run(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c),
                )
                .await?;
            if !keys.is_empty() {
                n += self
                    .run(redis::cmd("UNLINK").arg(&keys).query_async::<u64>(&mut c))
                    .await?;
            }
            if next == 0 {
                return Ok(n);
            }
            cursor = next;
        }
    }

    /// Leases this node holds (and renews) right now.
    pub fn held_leases(&self) -> usize {
        self.keeper.held()
    }

    /// Stops the subscriber and the heartbeat without releasing anything: what a crashed node
    /// leaves behind. Its leases free themselves when their TTL runs out. For tests and for a
    /// process that is about to exit anyway.
    pub fn abandon(&self) {
        self.stop.cancel();
        self.keeper.abandon();
    }
}

/// Wired to the admin API ([`ApiParts::on_keys_changed`](sub2api_core::api::ApiParts)): an
/// operator's change to a key, user or group empties every node's key cache, not only the
/// cache of the node that served the admin request.
#[async_trait::async_trait]
impl sub2api_core::api::KeysChanged for Hub {
    async fn keys_changed(&self) {
        if let Err(e) = self.publish_key_invalidation_all().await {
            tracing::warn!(error = %e, "cannot announce a key change to the other nodes; their caches expire it within the key cache TTL");
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Waits for a release announcement, for the soonest lease to expire by itself (`wake_ms`, -1:
/// none known), or for `deadline`. Returns false when the deadline passed.
pub(crate) async fn wait(
    notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    wake_ms: i64,
    deadline: tokio::time::Instant,
) -> bool {
    let now = tokio::time::Instant::now();
    if now >= deadline {
        return false;
    }
    let until = if wake_ms >= 0 {
        deadline.min(now + Duration::from_millis(wake_ms as u64 + 1))
    } else {
        deadline
    };
    tokio::select! {
        _ = notified => {}
        _ = tokio::time::sleep_until(until) => {}
    }
    true
}

/// The subscriber: one dedicated connection, reconnected with backoff whenever it drops; a ping
/// every few seconds notices a dead link that never closed.
async fn subscriber(hub: Weak<Hub>, client: redis::Client, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(h) = hub.upgrade() else { return };
        let channels = [
            h.channel("released"),
            h.channel("status"),
            h.channel("keys"),
            h.channel("pool"),
        ];
        let timeout = h.options.op_timeout;
        drop(h);
        let connect = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channels).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        let ps = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(timeout, connect) => r,
        };
        let ps = match ps {
            Ok(Ok(ps)) => ps,
            other => {
                let err = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_owned(),
                };
                tracing::debug!(error = %err, "redis subscriber cannot connect; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        {
            let Some(h) = hub.upgrade() else { return };
            h.subscribed.send_modify(|n| *n += 1);
            h.emit(&Event::Resync);
        }
        let (mut sink, mut stream) = ps.split();
        let mut ping = tokio::time::interval(Duration::from_secs(3));
        ping.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let Some(h) = hub.upgrade() else { return };
                    if let Some(event) = parse(&h, msg.get_channel_name(), msg.get_payload_bytes()) {
                        h.emit(&event);
                    }
                }
                _ = ping.tick() => {
                    let alive = tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await;
                    if !matches!(alive, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        tracing::warn!("redis subscriber connection lost; reconnecting");
        // Wake waiters at once: their next try reports Redis trouble instead of waiting it out.
        if let Some(h) = hub.upgrade() {
            h.emit(&Event::Released(Vec::new()));
        }
    }
}

fn parse(hub: &Hub, channel: &str, payload: &[u8]) -> Option<Event> {
    let text = std::str::from_utf8(payload).ok()?;
    let name = channel.strip_prefix(&hub.prefix)?.strip_prefix(":ev:")?;
    match name {
        "released" => Some(Event::Released(
            text.split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        )),
        "status" => {
            let (id, json) = match text.split_once(' ') {
                Some((id, json)) => (id, Some(json)),
                None => (text, None),
            };
            let id = AccountId(id.parse().ok()?);
            let status = match json {
                Some(j) => Some(serde_json::from_str::<AccountStatus>(j).ok()?),
                None => None,
            };
            Some(Event::Status(id, status))
        }
        "pool" => Some(Event::PoolChanged),
        "keys" if text == "*" => Some(Event::Key(None)),
        "keys" => {
            let mut h = [0u8; 32];
            hex::decode_to_slice(text, &mut h).ok()?;
            Some(Event::Key(Some(KeyHash(h))))
        }
        _ => None,
    }
}
