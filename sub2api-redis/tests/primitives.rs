//! The Redis primitives on their own (no HTTP, no database): selection order, sticky bindings,
//! wait queues, key limits, the refresh lock and key-cache invalidation, each across two hubs
//! ("nodes") sharing one prefix.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, options, random_prefix, redis_url};
use sub2api_core::account_provider::{AccountProvider, AccountStatus, Outcome, now_ms};
use sub2api_core::domain::{
    Account, AccountId, Credentials, Group, KeyHash, KeyId, KeyLimits, KeyRules, Limits, Principal,
    Secret, UserId,
};
use sub2api_core::layer::limit::{Limiter, Scope};
use sub2api_core::memory::MemoryAccountProvider;
use sub2api_core::oauth::RefreshLock as CoreRefreshLock;
use sub2api_core::scheduler::{ScheduleError, Scheduler, SelectRequest, SessionKey};
use sub2api_redis::{
    KeyInvalidation, RedisCluster, RedisLimiter, RedisOptions, RedisRefreshLock, RefreshLockError,
    connect,
};

fn account(id: i64, priority: i32, concurrency: u32) -> (Account, Credentials) {
    let a: Account = serde_json::from_value(serde_json::json!({
        "id": id, "name": format!("a{id}"), "platform": "anthropic", "kind": "apikey",
        "base_url": "http://127.0.0.1:1", "priority": priority, "concurrency": concurrency,
        "groups": [1], "enabled": true,
    }))
    .unwrap();
    (a, Credentials::ApiKey(Secret::new("k")))
}

fn group() -> Group {
    serde_json::from_value(
        serde_json::json!({"id": 1, "name": "g", "platform": "anthropic", "rate_multiplier": "1"}),
    )
    .unwrap()
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

async fn node(
    prefix: &str,
    accounts: Vec<(Account, Credentials)>,
    opts: impl FnOnce(&mut RedisOptions),
) -> RedisCluster {
    let mut o = options(prefix);
    opts(&mut o);
    connect(
        &redis_url(),
        Arc::new(MemoryAccountProvider::new(accounts)),
        o,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn selection_prefers_priority_then_load_across_nodes() {
    let prefix = random_prefix();
    let pool = || vec![account(1, 10, 2), account(2, 20, 2)];
    let a = node(&prefix, pool(), |_| {}).await;
    let b = node(&prefix, pool(), |_| {}).await;
    let g = group();
    let x = a.scheduler.select(req(&g, None, &[])).await.unwrap();
    let y = b.scheduler.select(req(&g, None, &[])).await.unwrap();
    let z = a.scheduler.select(req(&g, None, &[])).await.unwrap();
    assert_eq!(
        (x.account.id, y.account.id, z.account.id),
        (AccountId(1), AccountId(1), AccountId(2))
    );
    // Excluded accounts are skipped, even when preferred.
    drop(x);
    b.hub.flush().await;
    a.hub.flush().await;
    let w = b
        .scheduler
        .select(req(&g, None, &[AccountId(1)]))
        .await
        .unwrap();
    assert_eq!(w.account.id, AccountId(2));
}

#[tokio::test]
async fn equal_accounts_share_by_load_then_least_recently_used() {
    let prefix = random_prefix();
    let pool = || vec![account(1, 50, 4), account(2, 50, 4), account(3, 50, 4)];
    let a = node(&prefix, pool(), |_| {}).await;
    let g = group();
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(a.scheduler.select(req(&g, None, &[])).await.unwrap());
    }
    let mut per = [0; 3];
    for l in &held {
        per[(l.account.id.0 - 1) as usize] += 1;
    }
    assert_eq!(per, [2, 2, 2], "lowest load first");
    drop(held);
    a.hub.flush().await;
    // Sequential, with nothing held: least recently used rotates through all three.
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(
            a.scheduler
                .select(req(&g, None, &[]))
                .await
                .unwrap()
                .account
                .id,
        );
        a.hub.flush().await;
    }
    seen.sort();
    assert_eq!(seen, vec![AccountId(1), AccountId(2), AccountId(3)]);
}

#[tokio::test]
async fn a_sticky_session_waits_briefly_for_its_busy_account_then_moves() {
    let prefix = random_prefix();
    let pool = || vec![account(1, 50, 1), account(2, 50, 1)];
    let a = node(&prefix, pool(), |o| {
        o.scheduler.sticky_wait = Duration::from_millis(300)
    })
    .await;
    let b = node(&prefix, pool(), |o| {
        o.scheduler.sticky_wait = Duration::from_millis(300)
    })
    .await;
    let g = group();
    let s = SessionKey("k:sess".into());
    let first = a.scheduler.select(req(&g, Some(&s), &[])).await.unwrap();
    let bound = first.account.id;
    assert_eq!(b.scheduler.sticky_account(&s).await.unwrap(), Some(bound));
    // Busy sticky account: node B's request waits, and gets it when node A releases.
    let b2 = b.scheduler.clone();
    let g2 = g.clone();
    let s2 = s.clone();
    let waiter = tokio::spawn(async move {
        let l = b2.select(req(&g2, Some(&s2), &[])).await.unwrap();
        (l.account.id, l.sticky)
    });
    eventually(Duration::from_secs(5), async || b.scheduler.waiting() == 1)
        .await
        .unwrap();
    drop(first);
    assert_eq!(
        waiter.await.unwrap(),
        (bound, true),
        "the session kept its account"
    );
    // Held past the sticky wait: the session moves and is re-bound.
    let hold = a.scheduler.select(req(&g, Some(&s), &[])).await.unwrap();
    assert_eq!(hold.account.id, bound);
    let moved = b.scheduler.select(req(&g, Some(&s), &[])).await.unwrap();
    assert_ne!(moved.account.id, bound);
    assert!(!moved.sticky);
    assert_eq!(
        a.scheduler.sticky_account(&s).await.unwrap(),
        Some(moved.account.id)
    );
}

#[tokio::test]
async fn a_full_pool_waits_in_a_bounded_queue_and_times_out_with_busy() {
    let prefix = random_prefix();
    let a = node(&prefix, vec![account(1, 50, 1)], |o| {
        o.scheduler.queue_wait = Duration::from_millis(300);
        o.max_waiting = 1;
    })
    .await;
    let g = group();
    let held = a.scheduler.select(req(&g, None, &[])).await.unwrap();
    let s = a.scheduler.clone();
    let g2 = g.clone();
    let first =
        tokio::spawn(async move { s.select(req(&g2, None, &[])).await.map(|l| l.account.id) });
    eventually(Duration::from_secs(5), async || a.scheduler.waiting() == 1)
        .await
        .unwrap();
    // The queue (one place) is full: refused at once.
    let start = tokio::time::Instant::now();
    assert!(matches!(
        a.scheduler.select(req(&g, None, &[])).await,
        Err(ScheduleError::Busy { .. })
    ));
    assert!(start.elapsed() < Duration::from_millis(250));
    // The waiter times out after queue_wait.
    assert!(matches!(
        first.await.unwrap(),
        Err(ScheduleError::Busy { .. })
    ));
    drop(held);
}

#[tokio::test]
async fn cooldowns_reported_on_one_node_park_the_account_on_the_other_and_report_the_reset() {
    let prefix = random_prefix();
    let pool = || vec![account(1, 50, 1)];
    let a = node(&prefix, pool(), |_| {}).await;
    let b = node(&prefix, pool(), |_| {}).await;
    let g = group();
    let (acct, _) = account(1, 50, 1);
    let until = now_ms() + 30_000;
    a.accounts
        .report(&acct, Outcome::RateLimited { until_ms: until })
        .await;
    // B's cache may not have heard yet, but the select script has.
    match b.scheduler.select(req(&g, None, &[])).await {
        Err(ScheduleError::NoAccount {
            retry_after: Some(d),
        }) => assert!(d > Duration::from_secs(25), "{d:?}"),
        other => panic!("{other:?}"),
    }
    let mut changes = b.accounts.changes();
    tokio::time::timeout(
        Duration::from_secs(5),
        changes.wait_for(|_| !b.accounts.status(AccountId(1)).is_ready(now_ms())),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        b.accounts.status(AccountId(1)),
        AccountStatus::CoolingDown {
            until_ms: until,
            reason: "rate limited".into()
        }
    );
    // A new node starting now loads it too.
    let c = node(&prefix, pool(), |_| {}).await;
    assert!(!c.accounts.status(AccountId(1)).is_ready(now_ms()));
}

#[tokio::test]
async fn key_limits_hold_across_nodes() {
    let prefix = random_prefix();
    let a = node(&prefix, vec![], |_| {}).await;
    let b = node(&prefix, vec![], |_| {}).await;
    let mut la = RedisLimiter::new(a.hub.clone());
    la.max_wait = Duration::from_millis(200);
    let mut lb = RedisLimiter::new(b.hub.clone());
    lb.max_wait = Duration::from_secs(5);
    let lb = Arc::new(lb);
    // Concurrency 1 across both nodes.
    let limits = KeyLimits {
        concurrency: Some(1),
        rpm: None,
    };
    let p1 = la.admit(KeyId(9), &limits).await.unwrap();
    assert!(p1.is_held(), "a lease");
    let e = la.admit(KeyId(9), &limits).await.unwrap_err(); // waits 200 ms, times out
    assert!(e.retry_after.is_some());
    // A waiter on node B gets the slot when node A's request ends.
    let (lb2, l2) = (lb.clone(), limits.clone());
    let waiter = tokio::spawn(async move { lb2.admit(KeyId(9), &l2).await.map(|p| p.is_held()) });
    tokio::task::yield_now().await;
    drop(p1);
    assert!(waiter.await.unwrap().unwrap());
    // Three requests a minute across both nodes: the fourth is refused until the minute turns.
    // (Retried once with a fresh key if the minute turned during the sequence.)
    let rpm = KeyLimits {
        concurrency: None,
        rpm: Some(3),
    };
    for key in [KeyId(11), KeyId(12)] {
        let minute = now_ms() / 60_000;
        for l in [&la, &lb, &la] {
            assert!(
                !l.admit(key, &rpm).await.unwrap().is_held(),
                "admitted without a lease"
            );
        }
        let fourth = lb.admit(key, &rpm).await;
        if now_ms() / 60_000 != minute {
            continue;
        }
        let e = fourth.unwrap_err();
        assert!(e.retry_after.unwrap() <= Duration::from_secs(60));
        break;
    }
    // No limits: admitted without touching anything.
    assert!(
        !la.admit(KeyId(10), &KeyLimits::default())
            .await
            .unwrap()
            .is_held()
    );
}

fn principal(user: i64, key: i64, limits: Limits, user_limits: Limits) -> Principal {
    Principal {
        user: UserId(user),
        key: KeyId(key),
        group: Arc::new(group()),
        limits,
        user_limits,
        rules: KeyRules::default(),
    }
}

fn concurrency(n: u32) -> Limits {
    Limits {
        concurrency: Some(n),
        rpm: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_with_concurrency_two_never_has_more_than_two_in_flight_across_nodes() {
    let prefix = random_prefix();
    let a = node(&prefix, vec![], |_| {}).await;
    let b = node(&prefix, vec![], |_| {}).await;
    let la = Arc::new(RedisLimiter::new(a.hub.clone()));
    let lb = Arc::new(RedisLimiter::new(b.hub.clone()));
    let user = Scope::User(UserId(5));
    // Six requests of one user through six keys (each allowing 4), three on each node.
    let current = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let go = Arc::new(tokio::sync::Semaphore::new(0));
    let mut tasks = Vec::new();
    for i in 0..6 {
        let l = if i % 2 == 0 { la.clone() } else { lb.clone() };
        let p = principal(5, 100 + i, concurrency(4), concurrency(2));
        let (current, peak, go) = (current.clone(), peak.clone(), go.clone());
        tasks.push(tokio::spawn(async move {
            let permit = Limiter::admit(l.as_ref(), &p).await?;
            let now = current.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
            go.acquire().await.unwrap().forget();
            current.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            drop(permit);
            Ok::<_, sub2api_core::error::RelayError>(())
        }));
    }
    let settled = eventually(Duration::from_secs(10), async || {
        la.waiting(user) + lb.waiting(user) == 4
            && current.load(std::sync::atomic::Ordering::SeqCst) == 2
    })
    .await;
    assert!(settled.is_some(), "two run, four wait (not refused)");
    assert_eq!(a.hub.lease_count("user:5").await.unwrap(), 2);
    // Waiting requests hold no key slot meanwhile.
    let mut key_leases = 0;
    for i in 0..6 {
        key_leases += b
            .hub
            .lease_count(&format!("key:{}", 100 + i))
            .await
            .unwrap();
    }
    assert_eq!(
        key_leases, 2,
        "only the two running requests hold key slots"
    );
    go.add_permits(6);
    for t in tasks {
        t.await.unwrap().expect("every request is admitted in turn");
    }
    assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 2);
    a.hub.flush().await;
    b.hub.flush().await;
    assert_eq!(a.hub.lease_count("user:5").await.unwrap(), 0);
    a.hub.purge().await.unwrap();
}

#[tokio::test]
async fn a_user_rpm_is_shared_by_the_users_keys_and_by_every_node() {
    let prefix = random_prefix();
    let a = node(&prefix, vec![], |_| {}).await;
    let b = node(&prefix, vec![], |_| {}).await;
    let (la, lb) = (
        RedisLimiter::new(a.hub.clone()),
        RedisLimiter::new(b.hub.clone()),
    );
    let rpm = |n| Limits {
        concurrency: None,
        rpm: Some(n),
    };
    for user in [21, 22] {
        let minute = now_ms() / 60_000;
        let k1 = principal(user, 1000 + user, rpm(10), rpm(3));
        let k2 = principal(user, 2000 + user, Limits::default(), rpm(3));
        for (l, p) in [(&la, &k1), (&lb, &k2), (&lb, &k1)] {
            assert!(!Limiter::admit(l, p).await.unwrap().is_held());
        }
        let fourth = Limiter::admit(&la, &k2).await;
        if now_ms() / 60_000 != minute {
            continue; // the minute turned mid-sequence: try again with a fresh user
        }
        let e = fourth.unwrap_err();
        assert_eq!(e.class, sub2api_core::dialect::ErrorClass::RateLimited);
        assert!(e.message.contains("user"), "{}", e.message);
        assert!(e.retry_after.unwrap() <= Duration::from_secs(60));
        break;
    }
    a.hub.purge().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_user_lease_frees_itself_within_the_lease_ttl() {
    let prefix = random_prefix();
    let ttl = Duration::from_millis(1500);
    let short = |o: &mut RedisOptions| {
        o.lease_ttl = ttl;
        o.renew_every = Duration::from_millis(300);
    };
    let doomed = node(&prefix, vec![], short).await;
    let survivor = node(&prefix, vec![], short).await;
    let p = principal(31, 310, Limits::default(), concurrency(1));
    let held = Limiter::admit(&RedisLimiter::new(doomed.hub.clone()), &p)
        .await
        .unwrap();
    assert!(held.is_held());
    // The heartbeat keeps it past the TTL while the node lives.
    let since = tokio::time::Instant::now();
    assert!(
        eventually(ttl * 3, async || since.elapsed() > ttl * 2)
            .await
            .is_some()
    );
    assert_eq!(survivor.hub.lease_count("user:31").await.unwrap(), 1);
    // It dies holding it: no release, no heartbeat.
    doomed.hub.abandon();
    std::mem::forget(held);
    let died = tokio::time::Instant::now();
    let mut l = RedisLimiter::new(survivor.hub.clone());
    l.max_wait = ttl * 4;
    let permit = Limiter::admit(&l, &p)
        .await
        .expect("the user's slot is usable again");
    let waited = died.elapsed();
    assert!(permit.is_held());
    assert!(
        waited <= ttl + Duration::from_millis(700),
        "usable again after {waited:?} (TTL {ttl:?})"
    );
    drop(permit);
    survivor.hub.flush().await;
    survivor.hub.purge().await.unwrap();
}

#[tokio::test]
async fn one_node_refreshes_a_token_while_the_others_wait_for_it() {
    let prefix = random_prefix();
    let a = node(&prefix, vec![], |_| {}).await;
    let b = node(&prefix, vec![], |_| {}).await;
    let ttl = Duration::from_secs(10);
    let lock = a
        .hub
        .acquire_refresh_lock(AccountId(5), ttl, Duration::from_secs(5))
        .await
        .unwrap();
    // Core's trait on node B: waits for node A's refresh.
    let core_lock: Arc<dyn CoreRefreshLock> = Arc::new(RedisRefreshLock::new(b.hub.clone()));
    let waiter = tokio::spawn(async move {
        core_lock
            .lock(AccountId(5))
            .await
            .map(|_| tokio::time::Instant::now())
    });
    // Someone who cannot wait that long gives up (and would refresh without the lock).
    let e = b
        .hub
        .acquire_refresh_lock(AccountId(5), ttl, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(e, RefreshLockError::TimedOut), "{e}");
    assert!(!waiter.is_finished(), "waits for the holder");
    let released = tokio::time::Instant::now();
    drop(lock);
    let got = waiter
        .await
        .unwrap()
        .expect("node B takes the lock after node A");
    assert!(got >= released);
    // Other accounts are independent.
    assert!(
        a.hub
            .acquire_refresh_lock(AccountId(6), ttl, Duration::ZERO)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn key_invalidations_reach_every_node() {
    let prefix = random_prefix();
    let a = node(&prefix, vec![], |_| {}).await;
    let b = node(&prefix, vec![], |_| {}).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    {
        let seen = seen.clone();
        b.hub.on_key_invalidation(move |inv| {
            seen.lock().unwrap().push(inv);
            let _ = tx.send(());
        });
    }
    let hash = KeyHash::of("sk-some-key");
    a.hub.publish_key_invalidation(&hash).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap();
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        &[KeyInvalidation::Key(hash)]
    );
    a.hub.publish_key_invalidation_all().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap().last(), Some(&KeyInvalidation::All));
}

#[tokio::test]
async fn generic_leases_cap_any_scope_and_a_cancelled_select_leaves_nothing_behind() {
    let prefix = random_prefix();
    let a = node(&prefix, vec![account(1, 50, 1)], |_| {}).await;
    let b = node(&prefix, vec![account(1, 50, 1)], |_| {}).await;
    let l = a
        .hub
        .acquire_lease("user:1", 1, Duration::ZERO)
        .await
        .unwrap()
        .expect("room");
    assert!(
        b.hub
            .acquire_lease("user:1", 1, Duration::from_millis(50))
            .await
            .unwrap()
            .is_none()
    );
    let hub = b.hub.clone();
    let waiter =
        tokio::spawn(async move { hub.acquire_lease("user:1", 1, Duration::from_secs(5)).await });
    tokio::task::yield_now().await;
    drop(l);
    assert!(
        waiter.await.unwrap().unwrap().is_some(),
        "woken by the release on the other node"
    );

    // Selects cancelled at every point: no lease may survive them.
    let g = group();
    for i in 0..50u64 {
        let s = a.scheduler.clone();
        let g2 = g.clone();
        let t = tokio::spawn(async move { s.select(req(&g2, None, &[])).await.map(drop) });
        if i % 2 == 0 {
            tokio::task::yield_now().await;
        }
        t.abort();
        let _ = t.await;
    }
    a.hub.flush().await;
    assert_eq!(a.scheduler.in_use(AccountId(1)).await.unwrap(), 0);
    assert_eq!(a.hub.held_leases(), 0);
}

#[tokio::test]
async fn an_operator_change_on_one_node_reloads_accounts_on_every_node() {
    use sub2api_core::api::PoolControl;
    use sub2api_core::memory::{MemoryDirectory, MemoryLedger};
    use sub2api_core::store::Directory;
    let directory = Arc::new(MemoryDirectory::new());
    let ledger = MemoryLedger::new();
    let seed = |n: usize| {
        common::seed(
            "http://127.0.0.1:9",
            &[("x1", 50, 2), ("x2", 50, 2)][..n],
            "1.00",
        )
    };
    sub2api_core::config::apply_seed(&seed(1), directory.as_ref(), &ledger)
        .await
        .unwrap();
    let dir: Arc<dyn Directory> = directory.clone();
    let prefix = random_prefix();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let accounts = Arc::new(
            MemoryAccountProvider::from_directory(dir.clone())
                .await
                .unwrap(),
        );
        nodes.push(
            connect(&redis_url(), accounts, options(&prefix))
                .await
                .unwrap(),
        );
    }
    let group = dir.group_by_name("default").await.unwrap().unwrap();
    assert_eq!(nodes[1].accounts.pool(group.id).len(), 1);
    // The operator adds an account through node 0's admin API.
    sub2api_core::config::apply_seed(&seed(2), directory.as_ref(), &ledger)
        .await
        .unwrap();
    PoolControl::reload(nodes[0].accounts.as_ref())
        .await
        .unwrap();
    assert_eq!(nodes[0].accounts.pool(group.id).len(), 2);
    let seen = eventually(Duration::from_secs(5), async || {
        nodes[1].accounts.pool(group.id).len() == 2
    })
    .await;
    assert!(seen.is_some(), "node 1 reloaded on node 0's announcement");
}
