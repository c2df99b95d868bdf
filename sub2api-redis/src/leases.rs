//! Concurrency leases: members of a Redis sorted set scored by their expiry. A node renews the
//! leases it holds on a heartbeat and removes them when their guard drops; a node that dies
//! stops renewing, and its leases expire by themselves within the TTL.
//!
//! Dropping a [`LeaseGuard`] needs no runtime: it only takes a mutex and sends on an unbounded
//! channel. One background task (the keeper) does all release and renew I/O, in order, on the
//! shared multiplexed connection. That order is what makes renewing safe: a renewal batch is
//! built from the leases still held when it is sent, and a release queued after that is sent
//! after it, so a released lease is never brought back by a late heartbeat.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::ConnectionManager;
use sub2api_core::scheduler::SlotGuard;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::scripts;

/// Most leases released or renewed in one script call.
const BATCH: usize = 256;

/// Most failed releases kept for retry; beyond that they are left to expire with their TTL.
const MAX_RETRY: usize = 100_000;

struct Release {
    key: String,
    member: String,
    capacity: u32,
    /// Scope announced on the release channel when it had been full; empty: announce nothing.
    name: String,
}

enum Cmd {
    Release(Release),
    Unlock {
        key: String,
        token: String,
        name: String,
    },
    Flush(oneshot::Sender<()>),
}

pub(crate) struct LeaseKeeper {
    held: Mutex<HashMap<u64, (String, String)>>,
    next: AtomicU64,
    tx: mpsc::UnboundedSender<Cmd>,
    abandoned: AtomicBool,
    stop: CancellationToken,
    /// Woken when an account slot may have been freed anywhere in the cluster.
    pub(crate) released_accounts: Arc<Notify>,
    /// Woken when any other lease scope (keys, users, refresh locks) may have room.
    pub(crate) released: Arc<Notify>,
}

impl LeaseKeeper {
    pub(crate) fn start(
        conn: ConnectionManager,
        prefix: &str,
        ttl: Duration,
        every: Duration,
    ) -> Arc<LeaseKeeper> {
        let (tx, rx) = mpsc::unbounded_channel();
        let keeper = Arc::new(LeaseKeeper {
            held: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            tx,
            abandoned: AtomicBool::new(false),
            stop: CancellationToken::new(),
            released_accounts: Arc::new(Notify::new()),
            released: Arc::new(Notify::new()),
        });
        let channel = format!("{prefix}:ev:released");
        tokio::spawn(run(
            Arc::downgrade(&keeper),
            rx,
            conn,
            channel,
            ttl,
            every,
            keeper.stop.clone(),
        ));
        keeper
    }

    /// A lease that may or may not have been taken by a script still in flight: unless it is
    /// turned into a [`LeaseGuard`] or defused, dropping it removes `member` from every key (so a
    /// select cancelled mid-flight, or whose reply was lost, leaves nothing behind).
    pub(crate) fn pending(self: &Arc<Self>, keys: Vec<String>, member: String) -> Pending {
        Pending {
            keeper: self.clone(),
            keys,
            member,
            armed: true,
        }
    }

    pub(crate) fn unlock(&self, key: String, token: String, name: String) {
        let _ = self.tx.send(Cmd::Unlock { key, token, name });
    }

    pub(crate) fn held(&self) -> usize {
        self.held.lock().unwrap().len()
    }

    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    pub(crate) fn abandon(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
        self.stop.cancel();
    }

    fn release(&self, r: Release) {
        if !self.abandoned.load(Ordering::SeqCst) {
            let _ = self.tx.send(Cmd::Release(r));
        }
    }
}

pub(crate) struct Pending {
    keeper: Arc<LeaseKeeper>,
    keys: Vec<String>,
    member: String,
    armed: bool,
}

impl Pending {
    /// The script took the lease on `key`: from now on it is renewed and released by its guard.
    pub(crate) fn into_lease(mut self, key: String, capacity: u32, name: String) -> LeaseGuard {
        self.armed = false;
        let id = self.keeper.next.fetch_add(1, Ordering::Relaxed);
        let member = std::mem::take(&mut self.member);
        self.keeper
            .held
            .lock()
            .unwrap()
            .insert(id, (key.clone(), member.clone()));
        LeaseGuard {
            keeper: self.keeper.clone(),
            id,
            key,
            member,
            capacity,
            name,
        }
    }

    /// The script took a lease under the same member in each of `leases` (`(key, capacity,
    /// scope name)`): one guard per lease.
    pub(crate) fn into_leases(mut self, leases: Vec<(String, u32, String)>) -> Vec<LeaseGuard> {
        self.armed = false;
        let member = std::mem::take(&mut self.member);
        let mut held = self.keeper.held.lock().unwrap();
        leases
            .into_iter()
            .map(|(key, capacity, name)| {
                let id = self.keeper.next.fetch_add(1, Ordering::Relaxed);
                held.insert(id, (key.clone(), member.clone()));
                LeaseGuard {
                    keeper: self.keeper.clone(),
                    id,
                    key,
                    member: member.clone(),
                    capacity,
                    name,
                }
            })
            .collect()
    }

    /// The script answered that it took nothing.
    pub(crate) fn defuse(mut self) {
        self.armed = false;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.armed {
            for key in self.keys.drain(..) {
                self.keeper.release(Release {
                    key,
                    member: self.member.clone(),
                    capacity: 0,
                    name: String::new(),
                });
            }
        }
    }
}

/// One held lease. Dropping it frees the slot (from any thread, with or without a runtime).
pub struct LeaseGuard {
    keeper: Arc<LeaseKeeper>,
    id: u64,
    key: String,
    member: String,
    capacity: u32,
    name: String,
}

impl LeaseGuard {
    /// The lease's scope, e.g. `acct:7`.
    pub fn scope(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseGuard")
            .field("scope", &self.name)
            .field("member", &self.member)
            .finish()
    }
}

impl SlotGuard for LeaseGuard {}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.keeper.held.lock().unwrap().remove(&self.id);
        self.keeper.release(Release {
            key: std::mem::take(&mut self.key),
            member: std::mem::take(&mut self.member),
            capacity: self.capacity,
            name: std::mem::take(&mut self.name),
        });
    }
}

async fn run(
    keeper: Weak<LeaseKeeper>,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    mut conn: ConnectionManager,
    channel: String,
    ttl: Duration,
    every: Duration,
    stop: CancellationToken,
) {
    let ttl_ms = ttl.as_millis() as u64;
    let op_timeout = ttl.min(Duration::from_secs(2));
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Releases that failed (Redis unreachable), retried until their lease would have expired anyway.
    let mut retry: Vec<(Release, Instant)> = Vec::new();
    let mut buf = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            n = rx.recv_many(&mut buf, BATCH) => {
                if n == 0 {
                    return;
                }
                handle(&mut conn, &channel, buf.drain(..), &mut retry, ttl, op_timeout).await;
            }
            _ = tick.tick() => {
                // Releases queued before the renewal go first.
                while let Ok(cmd) = rx.try_recv() {
                    buf.push(cmd);
                }
                handle(&mut conn, &channel, buf.drain(..), &mut retry, ttl, op_timeout).await;
                let now = Instant::now();
                retry.retain(|(_, until)| *until > now);
                if !retry.is_empty() {
                    let again: Vec<Release> = retry.drain(..).map(|(r, _)| r).collect();
                    release(&mut conn, &channel, again, &mut retry, ttl, op_timeout).await;
                }
                let Some(k) = keeper.upgrade() else { return };
                let held: Vec<(String, String)> = k.held.lock().unwrap().values().cloned().collect();
                drop(k);
                for chunk in held.chunks(BATCH) {
                    let mut inv = scripts::RENEW.prepare_invoke();
                    inv.arg(ttl_ms);
                    for (key, member) in chunk {
                        inv.key(key).arg(member);
                    }
                    match tokio::time::timeout(op_timeout, inv.invoke_async::<i64>(&mut conn)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, leases = chunk.len(), "lease heartbeat failed; retrying next tick"),
                        Err(_) => tracing::warn!(leases = chunk.len(), "lease heartbeat timed out; retrying next tick"),
                    }
                }
            }
        }
    }
}

async fn handle(
    conn: &mut ConnectionManager,
    channel: &str,
    cmds: impl Iterator<Item = Cmd>,
    retry: &mut Vec<(Release, Instant)>,
    ttl: Duration,
    op_timeout: Duration,
) {
    let mut batch = Vec::new();
    for cmd in cmds {
        match cmd {
            Cmd::Release(r) => batch.push(r),
            Cmd::Unlock { key, token, name } => {
                release(
                    conn,
                    channel,
                    std::mem::take(&mut batch),
                    retry,
                    ttl,
                    op_timeout,
                )
                .await;
                let mut inv = scripts::UNLOCK.prepare_invoke();
                inv.key(key).arg(token).arg(channel).arg(name);
                if !matches!(
                    tokio::time::timeout(op_timeout, inv.invoke_async::<i64>(conn)).await,
                    Ok(Ok(_))
                ) {
                    tracing::warn!("refresh lock release failed; the lock expires by itself");
                }
            }
            Cmd::Flush(done) => {
                release(
                    conn,
                    channel,
                    std::mem::take(&mut batch),
                    retry,
                    ttl,
                    op_timeout,
                )
                .await;
                let _ = done.send(());
            }
        }
    }
    release(conn, channel, batch, retry, ttl, op_timeout).await;
}

async fn release(
    conn: &mut ConnectionManager,
    channel: &str,
    batch: Vec<Release>,
    retry: &mut Vec<(Release, Instant)>,
    ttl: Duration,
    op_timeout: Duration,
) {
    let mut batch = batch.into_iter().peekable();
    while batch.peek().is_some() {
        let chunk: Vec<Release> = batch.by_ref().take(BATCH).collect();
        let mut inv = scripts::RELEASE.prepare_invoke();
        inv.arg(channel);
        for r in &chunk {
            inv.key(&r.key).arg(&r.member).arg(r.capacity).arg(&r.name);
        }
        let ok = matches!(
            tokio::time::timeout(op_timeout, inv.invoke_async::<i64>(conn)).await,
            Ok(Ok(_))
        );
        if !ok {
            tracing::warn!(
                leases = chunk.len(),
                "lease release failed; retrying until the lease TTL"
            );
            let until = Instant::now() + ttl;
            let room = MAX_RETRY.saturating_sub(retry.len());
            retry.extend(chunk.into_iter().take(room).map(|r| (r, until)));
        }
    }
}
