//! Two relay nodes in one process, sharing one Postgres schema and one Redis prefix, in front of
//! one mock vendor: they must behave as one relay.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use sub2api_axum::mock::{Fault, Knob, Scope};
use sub2api_core::account_provider::{AccountProvider, AccountStatus};
use sub2api_core::money::Money;
use sub2api_core::scheduler::{ScheduleError, Scheduler, SelectRequest};
use sub2api_core::store::UsageQuery;

async fn two_nodes(
    accounts: &[AccountSpec],
    balance: &str,
) -> (sub2api_axum::mock::MockVendor, Schema, Node, Node) {
    let vendor = vendor().await;
    let schema = Schema::new().await;
    seed_schema(&schema.url, &seed(&vendor.base_url(), accounts, balance)).await;
    let prefix = random_prefix();
    let a = Node::start(&schema.url, &redis_url(), options(&prefix)).await;
    let b = Node::start(&schema.url, &redis_url(), options(&prefix)).await;
    (vendor, schema, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_with_concurrency_two_never_has_more_than_two_upstream_across_nodes() {
    let (vendor, _schema, a, b) = two_nodes(&[("solo", 50, 2)], "10.00").await;
    let key = mock_key("solo");
    vendor.close_gate(key.as_str());
    let mut tasks = Vec::new();
    for i in 0..12 {
        let node = if i % 2 == 0 { &a } else { &b };
        let (client, url) = (node.client.clone(), node.url("/v1/messages"));
        let body = body("claude-haiku-4-5", 32, i % 3 == 0);
        tasks.push(tokio::spawn(async move {
            let res = client
                .post(url)
                .header("x-api-key", KEY)
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (status, res.text().await.unwrap_or_default())
        }));
    }
    vendor.wait_for_in_flight(&key, 2).await;
    // The other ten wait in the nodes' queues (not refused).
    let id = a.account_id("solo").await;
    let queued = eventually(Duration::from_secs(10), async || {
        a.cluster.scheduler.waiting() + b.cluster.scheduler.waiting() == 10
    })
    .await;
    assert!(queued.is_some(), "ten requests wait for a slot");
    assert!(
        a.cluster.scheduler.waiting() > 0 && b.cluster.scheduler.waiting() > 0,
        "both nodes have waiters"
    );
    assert_eq!(a.cluster.scheduler.in_use(id).await.unwrap(), 2);
    assert_eq!(vendor.max_in_flight(&key), 2);
    vendor.open_gate(key.as_str());
    for t in tasks {
        let (status, text) = t.await.unwrap();
        assert_eq!(status, 200, "{text}");
    }
    assert_eq!(vendor.count(&key), 12, "all twelve were served");
    assert_eq!(
        vendor.max_in_flight(&key),
        2,
        "never more than two upstream at once"
    );
    let a = a.stop().await;
    b.stop().await;
    assert_eq!(
        a.cluster.scheduler.in_use(id).await.unwrap(),
        0,
        "every lease released"
    );
    a.cluster.hub.purge().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_seen_by_one_node_parks_the_account_for_the_other() {
    // `first` is preferred by both nodes (lower priority number) until it is parked.
    let (vendor, _schema, a, b) = two_nodes(&[("first", 10, 4), ("second", 50, 4)], "10.00").await;
    let reset = SystemTime::now() + Duration::from_secs(3600);
    vendor.set(
        mock_key("first"),
        Knob::Fault(Fault::rate_limited_until(reset)),
    );
    let first = a.account_id("first").await;
    let mut b_changes = b.cluster.accounts.changes();

    let (status, text, _) = a.send(&body("claude-sonnet-4-5", 32, false)).await;
    assert_eq!(status, 200, "node A failed over invisibly: {text}");
    assert_eq!(vendor.count(&mock_key("first")), 1);

    // Node B never sends to the parked account, from its very next request on.
    for i in 0..6 {
        let (status, text, _) = b.send(&body("claude-sonnet-4-5", 32, i % 2 == 0)).await;
        assert_eq!(status, 200, "{text}");
    }
    assert_eq!(vendor.count(&mock_key("first")), 1, "parked for node B too");
    assert_eq!(vendor.count(&mock_key("second")), 7);

    // And B's own view (status(), read from its cache) shows the vendor's reset.
    let want = reset
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let seen = tokio::time::timeout(
        Duration::from_secs(5),
        b_changes.wait_for(|_| {
            matches!(
                b.cluster.accounts.status(first),
                AccountStatus::CoolingDown { .. }
            )
        }),
    )
    .await;
    assert!(seen.is_ok(), "node B's cache heard of the cooldown");
    match b.cluster.accounts.status(first) {
        AccountStatus::CoolingDown { until_ms, .. } => assert!((until_ms - want).abs() <= 1000),
        other => panic!("{other:?}"),
    }
    a.stop().await;
    b.stop().await.cluster.hub.purge().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_alternating_between_nodes_stays_on_one_account() {
    let names = [("s1", 50, 4), ("s2", 50, 4), ("s3", 50, 4)];
    let (vendor, _schema, a, b) = two_nodes(&names, "10.00").await;
    for i in 0..10 {
        let node = if i % 2 == 0 { &a } else { &b };
        let (status, text, _) = node
            .send(&session_body("session-alternating", i % 3 == 0))
            .await;
        assert_eq!(status, 200, "{text}");
    }
    let counts: Vec<u64> = names
        .iter()
        .map(|(n, _, _)| vendor.count(&mock_key(n)))
        .collect();
    assert_eq!(
        counts.iter().filter(|c| **c > 0).count(),
        1,
        "one account served the session: {counts:?}"
    );
    assert_eq!(counts.iter().sum::<u64>(), 10);

    // Distinct sessions still spread over the pool.
    for i in 0..24 {
        let node = if i % 2 == 0 { &a } else { &b };
        let (status, _, _) = node.send(&session_body(&format!("other-{i}"), false)).await;
        assert_eq!(status, 200);
    }
    let used = names
        .iter()
        .filter(|(n, _, _)| vendor.count(&mock_key(n)) > 0)
        .count();
    assert!(used >= 2, "distinct sessions use more than one account");
    a.stop().await;
    b.stop().await.cluster.hub.purge().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_balance_spent_from_both_nodes_at_once_never_goes_negative_and_sums_exactly() {
    // Each request holds about 0.0015 USD; 0.005 USD covers three holds at once, not four.
    let accounts = [("p1", 50, 8), ("p2", 50, 8), ("p3", 50, 8)];
    let (vendor, _schema, a, b) = two_nodes(&accounts, "0.005").await;
    vendor.close_gate(Scope::AllKeys);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let node = if i % 2 == 0 { &a } else { &b };
        let (client, url) = (node.client.clone(), node.url("/v1/messages"));
        let body = body("claude-haiku-4-5", 64, i % 3 == 0);
        tasks.push(tokio::spawn(async move {
            let res = client
                .post(url)
                .header("x-api-key", KEY)
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (status, res.text().await.unwrap_or_default())
        }));
    }
    // Every request either holds (and waits at the vendor's gate) or was refused.
    vendor.wait_for_requests(3).await;
    let user = a.user_id().await;
    let mid = a.relay.parts().ledger.balance(user).await.unwrap();
    assert!(
        !mid.available().is_negative() && mid.held <= mid.total,
        "{mid:?}"
    );
    vendor.open_all_gates();
    let mut ok = 0;
    for t in tasks {
        let (status, text) = t.await.unwrap();
        match status {
            200 => ok += 1,
            402 => {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["error"]["type"], "billing_error");
            }
            other => panic!("unexpected {other}: {text}"),
        }
    }
    let a = a.stop().await;
    let b = b.stop().await;
    let balance = a.relay.parts().ledger.balance(user).await.unwrap();
    assert!(
        !balance.total.is_negative(),
        "balance went negative: {balance:?}"
    );
    assert_eq!(balance.held, Money::ZERO);
    let records = b
        .relay
        .parts()
        .usage_log
        .query(&UsageQuery {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    let charged = records
        .iter()
        .fold(Money::ZERO, |s, r| s.checked_add(r.cost).unwrap());
    assert_eq!(
        Money::parse_usd("0.005")
            .unwrap()
            .checked_sub(charged)
            .unwrap(),
        balance.total,
        "charges sum exactly"
    );
    assert_eq!(records.len(), ok, "one usage row per served request");
    assert!(ok >= 3, "at least three were served (got {ok})");
    assert_eq!(
        vendor.total().requests as usize,
        ok,
        "nothing refused went upstream"
    );
    b.cluster.hub.purge().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_leases_free_themselves_within_the_lease_ttl() {
    let vendor = vendor().await;
    let schema = Schema::new().await;
    seed_schema(
        &schema.url,
        &seed(&vendor.base_url(), &[("k1", 50, 2)], "10.00"),
    )
    .await;
    let prefix = random_prefix();
    let ttl = Duration::from_millis(1500);
    let short = sub2api_redis::RedisOptions {
        lease_ttl: ttl,
        renew_every: Duration::from_millis(300),
        ..options(&prefix)
    };
    let doomed = Node::start(&schema.url, &redis_url(), short.clone()).await;
    let survivor = Node::start(&schema.url, &redis_url(), short).await;
    let id = survivor.account_id("k1").await;
    let group = survivor
        .relay
        .parts()
        .directory
        .group_by_name("default")
        .await
        .unwrap()
        .unwrap();
    let req = || SelectRequest {
        group: &group,
        model: "claude-haiku-4-5",
        session: None,
        excluded: &[],
    };

    // The doomed node takes both slots, and keeps them past the TTL by its heartbeat.
    let l1 = doomed.cluster.scheduler.select(req()).await.unwrap();
    let l2 = doomed.cluster.scheduler.select(req()).await.unwrap();
    let held_since = tokio::time::Instant::now();
    let renewed = eventually(ttl * 3, async || held_since.elapsed() > ttl * 2).await;
    assert!(renewed.is_some());
    assert_eq!(
        survivor.cluster.scheduler.in_use(id).await.unwrap(),
        2,
        "heartbeat keeps live leases past the TTL"
    );

    // It dies holding them: no release, no heartbeat.
    doomed.cluster.hub.abandon();
    std::mem::forget(l1);
    std::mem::forget(l2);
    let died = tokio::time::Instant::now();

    // A request on the survivor waits for a slot and gets one when the dead leases expire
    // (woken by the expiry the select script reported, not by polling or a release).
    let lease = survivor
        .cluster
        .scheduler
        .select(req())
        .await
        .expect("slot usable again");
    let waited = died.elapsed();
    assert!(
        waited <= ttl + Duration::from_millis(700),
        "slot usable again after {waited:?} (TTL {ttl:?})"
    );
    assert_eq!(lease.account.id, id);
    drop(lease);
    let freed = eventually(ttl * 2, async || {
        survivor.cluster.scheduler.in_use(id).await.unwrap() == 0
    })
    .await;
    assert!(freed.is_some(), "the dead node's second lease expired too");
    survivor.stop().await.cluster.hub.purge().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_with_every_slot_parked_answers_no_account_and_a_cleared_account_comes_back_everywhere()
 {
    let (vendor, _schema, a, b) = two_nodes(&[("only", 50, 2)], "10.00").await;
    vendor.set(mock_key("only"), Knob::Fault(Fault::Unauthorized));
    let (status, text, _) = a.send(&body("claude-sonnet-4-5", 32, false)).await;
    assert_eq!(
        status, 401,
        "the vendor's refusal is returned when nothing is left: {text}"
    );
    let id = a.account_id("only").await;
    let group = b
        .relay
        .parts()
        .directory
        .group_by_name("default")
        .await
        .unwrap()
        .unwrap();
    let req = SelectRequest {
        group: &group,
        model: "claude-haiku-4-5",
        session: None,
        excluded: &[],
    };
    match b.cluster.scheduler.select(req.clone()).await {
        Err(ScheduleError::NoAccount { .. }) => {}
        other => panic!("node B must not schedule a disabled account: {other:?}"),
    }
    vendor.clear_fault(mock_key("only"));
    let mut changes = b.cluster.accounts.changes();
    a.cluster.accounts.clear_status(id).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        changes.wait_for(|_| b.cluster.accounts.status(id) == AccountStatus::Ready),
    )
    .await
    .expect("node B hears the operator's clear")
    .unwrap();
    let (status, text, _) = b.send(&body("claude-sonnet-4-5", 32, false)).await;
    assert_eq!(status, 200, "{text}");
    a.stop().await;
    b.stop().await.cluster.hub.purge().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_over_rpm_gets_429_in_anthropic_shape_from_any_node() {
    let vendor = vendor().await;
    let schema = Schema::new().await;
    let config = seed_with_user(&vendor.base_url(), &[("u1", 50, 8)], "10.00", "rpm = 2");
    seed_schema(&schema.url, &config).await;
    let prefix = random_prefix();
    let a = Node::start(&schema.url, &redis_url(), options(&prefix)).await;
    let b = Node::start(&schema.url, &redis_url(), options(&prefix)).await;
    let minute = || sub2api_core::account_provider::now_ms() / 60_000;
    let mut refused = None;
    let mut served = 0;
    for _ in 0..2 {
        let start = minute();
        for node in [&a, &b] {
            let (status, text, _) = node.send(&body("claude-haiku-4-5", 16, false)).await;
            assert_eq!(status, 200, "{text}");
            served += 1;
        }
        let third = b.send(&body("claude-haiku-4-5", 16, true)).await;
        if minute() == start {
            refused = Some(third);
            break;
        }
        // The minute turned mid-sequence (the count restarted): run it again in the new one.
        served += (third.0 == 200) as u64;
    }
    let (status, text, headers) = refused.expect("a sequence within one minute");
    assert_eq!(status, 429, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("user"),
        "{text}"
    );
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    assert_eq!(
        vendor.count(&mock_key("u1")),
        served,
        "the refused request never went upstream"
    );
    a.stop().await;
    b.stop().await.cluster.hub.purge().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_key_and_user_changes_on_one_node_apply_on_the_other_at_once() {
    let (_vendor, _schema, a, b) = two_nodes(&[("c1", 50, 8)], "10.00").await;
    // Node B caches the key (for 30 s) by serving it.
    let (status, text, _) = b.send(&body("claude-haiku-4-5", 16, false)).await;
    assert_eq!(status, 200, "{text}");
    let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    b.cluster.hub.on_key_invalidation(move |i| {
        let _ = tx.send(i);
    });
    let user = a.user_id().await;

    // A user limit set through node A's admin API binds on node B at once.
    let (status, v) = a
        .api
        .admin_call(
            reqwest::Method::PATCH,
            &format!("/api/v1/admin/users/{user}"),
            serde_json::json!({"concurrency": 1, "rpm": 1000}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["concurrency"].as_u64(), v["rpm"].as_u64()),
        (Some(1), Some(1000))
    );
    tokio::time::timeout(Duration::from_secs(5), heard.recv())
        .await
        .expect("node B hears of the change")
        .unwrap();
    let principal = b
        .relay
        .key_cache()
        .lookup(KEY)
        .await
        .unwrap()
        .expect("the key still works");
    assert_eq!(principal.user_limits.concurrency, Some(1));

    // A key disabled through node A is refused by node B at once.
    let (status, keys) = a
        .api
        .admin_call(
            reqwest::Method::GET,
            "/api/v1/admin/keys",
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200, "{keys}");
    let id = keys["items"][0]["id"].as_i64().unwrap();
    let (status, v) = a
        .api
        .admin_call(
            reqwest::Method::POST,
            &format!("/api/v1/admin/keys/{id}/disable"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    tokio::time::timeout(Duration::from_secs(5), heard.recv())
        .await
        .expect("node B hears of the change")
        .unwrap();
    let (status, text, _) = b.send(&body("claude-haiku-4-5", 16, false)).await;
    assert_eq!(status, 401, "{text}");
    a.stop().await;
    b.stop().await.cluster.hub.purge().await.unwrap();
}
