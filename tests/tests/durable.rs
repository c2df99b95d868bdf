//! The relay on durable storage (SQLite, the embedded default, and Postgres): exact charges,
//! concurrency against one balance, and restarts that keep every balance and usage row.

use sub2api_core::money::Money;
use sub2api_tests::mock::{Knob, MockVendor, Scope};
use sub2api_tests::*;

#[tokio::test]
async fn charges_are_exact_and_survive_a_restart() {
    for &storage in DURABLE {
        let db = TestDb::new(storage).await;
        let spec = Spec {
            database_url: db.url.clone(),
            ..Spec::default()
        };
        let h = Harness::start(Adapter::Axum, spec.clone()).await;
        h.vendor.set(
            Scope::AllKeys,
            Knob::Usage(usage(1000, 2000, 3000, 4000, 500)),
        );
        for stream in [false, true] {
            let (status, text) =
                text(h.messages(&body("claude-sonnet-4-5", 1024, stream)).await).await;
            assert_eq!(status, 200, "{storage:?}: {text}");
        }
        let after_two = Money::usd(10)
            .checked_sub(Money::parse_usd("0.0744").unwrap())
            .unwrap();
        assert_eq!(h.balance().await.total, after_two, "{storage:?}");
        let booted = h.stop().await;
        drop(booted);

        // Restart on the same database with the same seed file: nothing is reset or lost.
        let h = Harness::start_with_vendor(Adapter::Axum, spec, MockVendor::start().await).await;
        let b = h.balance().await;
        assert_eq!(
            (b.total, b.held),
            (after_two, Money::ZERO),
            "{storage:?}: seeding reset a changed balance"
        );
        let recs = h.usage_records().await;
        assert_eq!(recs.len(), 2, "{storage:?}: usage rows kept");
        assert!(
            recs.iter()
                .all(|r| r.cost == Money::parse_usd("0.0372").unwrap())
        );
        // And the key still works.
        assert_eq!(
            h.messages(&body("claude-haiku-4-5", 16, false))
                .await
                .status(),
            200
        );
        h.stop().await;
    }
}

#[tokio::test]
async fn concurrent_requests_against_one_durable_balance_never_overdraw() {
    for &storage in DURABLE {
        let db = TestDb::new(storage).await;
        let spec = Spec {
            database_url: db.url.clone(),
            balance: Money::parse_usd("0.005").unwrap(),
            ..Spec::default()
        };
        let h = Harness::start(Adapter::Axum, spec).await;
        let mut tasks = Vec::new();
        for i in 0..40 {
            let client = h.client.clone();
            let url = h.url("/v1/messages");
            let b = body("claude-haiku-4-5", 64, i % 2 == 0);
            tasks.push(tokio::spawn(async move {
                let res = client
                    .post(url)
                    .header("x-api-key", KEY)
                    .body(b.to_string())
                    .send()
                    .await
                    .unwrap();
                let status = res.status().as_u16();
                let _ = res.bytes().await;
                status
            }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                200 => ok += 1,
                402 => {}
                other => panic!("{storage:?}: unexpected {other}"),
            }
        }
        // Every response was read to its end, and a response's last bytes wait for its settlement.
        let b = h.balance().await;
        assert!(
            !b.total.is_negative() && b.held == Money::ZERO,
            "{storage:?}: {b:?}"
        );
        let recs = h.usage_records().await;
        assert_eq!(recs.len(), ok, "{storage:?}");
        let sum = recs
            .iter()
            .fold(Money::ZERO, |a, r| a.checked_add(r.cost).unwrap());
        assert_eq!(
            Money::parse_usd("0.005").unwrap().checked_sub(sum).unwrap(),
            b.total,
            "{storage:?}"
        );
        let store = h.booted.store.as_ref().unwrap();
        assert!(
            store.verify_ledger().await.unwrap().is_empty(),
            "{storage:?}: journal and wallets disagree"
        );
        h.stop().await;
    }
}

/// `SUB2API_REDIS_URL` (here `redis_url`) switches the binary's boot to the shared scheduler:
/// two relays over one database and one Redis keep a session on one account and bill exactly.
#[tokio::test]
async fn two_relays_booted_with_redis_share_sessions_and_one_balance() {
    let db = TestDb::new(Storage::Sqlite).await;
    let vendor = MockVendor::start().await;
    let mut config = config_for(
        &Spec {
            database_url: db.url.clone(),
            ..Spec::default()
        },
        &vendor.base_url(),
    );
    config.redis_url = Some(
        std::env::var("SUB2API_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
    );
    config.relay.sticky_ttl_secs = 60;
    let a = Harness::start_with_config(Adapter::Axum, config.clone(), vendor).await;
    assert!(
        a.booted.cluster.is_some(),
        "redis_url selects the Redis scheduler"
    );
    let b = Harness::start_with_config(Adapter::Axum, config, MockVendor::start().await).await;
    let session = format!("redis-e2e-{}", uuid::Uuid::new_v4());
    for i in 0..6 {
        let node = if i % 2 == 0 { &a } else { &b };
        let res = node.messages(&session_body(&session, i % 3 == 0)).await;
        assert_eq!(res.status(), 200);
        let _ = res.bytes().await;
    }
    // Both nodes forwarded to accounts on the first vendor (node b's accounts point there too).
    let keys: std::collections::HashSet<_> = a
        .vendor
        .requests()
        .iter()
        .map(|r| r.api_key.clone())
        .collect();
    assert_eq!(
        keys.len(),
        1,
        "the session stayed on one account across nodes: {keys:?}"
    );
    assert_eq!(a.vendor.request_count(), 6);
    b.usage_records().await; // flushes node b's batched usage rows into the shared database
    let recs = a.usage_records().await;
    let sum = recs
        .iter()
        .fold(Money::ZERO, |s, r| s.checked_add(r.cost).unwrap());
    assert_eq!(recs.len(), 6);
    assert_eq!(
        Money::usd(10).checked_sub(sum).unwrap(),
        a.balance().await.total
    );

    // An operator disabling the key through node A's admin API is obeyed by node B at once
    // (node B cached the key when it served it).
    let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    b.booted
        .cluster
        .as_ref()
        .unwrap()
        .hub
        .on_key_invalidation(move |i| {
            let _ = tx.send(i);
        });
    let (status, keys) = a
        .booted
        .api
        .admin_call(
            http::Method::GET,
            "/api/v1/admin/keys",
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200, "{keys}");
    let id = keys["items"][0]["id"].as_i64().unwrap();
    let (status, v) = a
        .booted
        .api
        .admin_call(
            http::Method::POST,
            &format!("/api/v1/admin/keys/{id}/disable"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    tokio::time::timeout(std::time::Duration::from_secs(5), heard.recv())
        .await
        .expect("node B hears of the change")
        .unwrap();
    assert_eq!(
        b.messages(&body("claude-haiku-4-5", 16, false))
            .await
            .status(),
        401
    );
    b.stop().await;
    a.stop().await;
}
