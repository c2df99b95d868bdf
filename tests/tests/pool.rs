//! Pooling, failover and sticky scheduling, end to end through the HTTP stack.

use std::time::{Duration, SystemTime};

use sub2api_core::account_provider::AccountStatus;
use sub2api_tests::mock::{Fault, Knob};
use sub2api_tests::*;

#[tokio::test]
async fn a_429_parks_the_account_until_its_reset_and_clients_see_no_error() {
    for &adapter in ADAPTERS {
        let h = Harness::start(adapter, Spec::default()).await;
        let reset = SystemTime::now() + Duration::from_secs(3600);
        h.vendor
            .set("acct-2", Knob::Fault(Fault::rate_limited_until(reset)));
        for i in 0..12 {
            let (status, body) =
                text(h.messages(&body("claude-sonnet-4-5", 64, i % 2 == 0)).await).await;
            assert_eq!(status, 200, "request {i}: {body}");
        }
        assert_eq!(h.vendor.count("acct-2"), 1, "parked after one hit");
        assert_eq!(h.vendor.count("acct-1") + h.vendor.count("acct-3"), 12);
        let a2 = h.account("a2").await;
        match h.relay().parts().accounts.status(a2.id) {
            AccountStatus::CoolingDown { until_ms, .. } => {
                let want = reset
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i64;
                assert!(
                    (until_ms - want).abs() <= 1000,
                    "parked until {until_ms}, reset {want}"
                );
            }
            other => panic!("a2 should be cooling down, is {other:?}"),
        }
        // Only the attempt that produced a response was charged.
        let records = h.usage_records().await;
        assert_eq!(records.len(), 12);
        assert!(records.iter().all(|r| r.account_id != Some(a2.id)));
        h.stop().await;
    }
}

#[tokio::test]
async fn overloaded_and_revoked_accounts_fail_over_invisibly() {
    for &adapter in ADAPTERS {
        let h = Harness::start(adapter, Spec::default()).await;
        h.vendor.set("acct-1", Knob::Fault(Fault::Overloaded));
        h.vendor.set("acct-3", Knob::Fault(Fault::Unauthorized));
        for _ in 0..6 {
            let (status, body) =
                text(h.messages(&body("claude-sonnet-4-5", 64, false)).await).await;
            assert_eq!(status, 200, "{body}");
        }
        assert_eq!(h.vendor.count("acct-2"), 6);
        let a3 = h.account("a3").await;
        assert!(matches!(
            h.relay().parts().accounts.status(a3.id),
            AccountStatus::Disabled { .. }
        ));
        h.stop().await;
    }
}

#[tokio::test]
async fn client_faults_are_returned_as_is_without_failover() {
    for &adapter in ADAPTERS {
        let h = Harness::start(adapter, Spec::default()).await;
        // A body the relay accepts but the vendor refuses (the mock requires `messages` entries to be objects).
        let mut b = body("claude-sonnet-4-5", 64, false);
        b["messages"] = serde_json::json!(["not an object"]);
        let res = h.messages(&b).await;
        let (status, text) = text(res).await;
        assert_eq!(
            h.vendor.total().requests,
            1,
            "no failover on a client fault"
        );
        assert_eq!(status, 400, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("messages.0")
        );
        assert_eq!(
            h.balance().await.total,
            sub2api_core::money::Money::usd(10),
            "nothing charged"
        );
        h.stop().await;
    }
}

#[tokio::test]
async fn sessions_stick_to_one_account_and_distinct_sessions_spread() {
    for &adapter in ADAPTERS {
        let h = Harness::start(adapter, Spec::default()).await;
        // JSON form (Claude Code 2.1.78+).
        for _ in 0..6 {
            assert_eq!(
                h.messages(&session_body("session-json", false))
                    .await
                    .status(),
                200
            );
        }
        // Legacy form.
        let mut legacy = body("claude-sonnet-4-5", 64, true);
        legacy["metadata"] = serde_json::json!({
            "user_id": format!("user_{}_account__session_0b7c1d2e-aaaa-bbbb-cccc-111122223333", "ab".repeat(32))
        });
        for _ in 0..6 {
            let (status, _) = text(h.messages(&legacy).await).await;
            assert_eq!(status, 200);
        }
        let reqs = h.vendor.requests();
        let keys: Vec<_> = reqs.iter().map(|r| r.api_key.clone().unwrap()).collect();
        assert!(
            keys[..6].iter().all(|k| *k == keys[0]),
            "json session moved: {keys:?}"
        );
        assert!(
            keys[6..12].iter().all(|k| *k == keys[6]),
            "legacy session moved: {keys:?}"
        );
        // Many distinct sessions use the whole pool.
        for i in 0..12 {
            assert_eq!(
                h.messages(&session_body(&format!("s-{i}"), false))
                    .await
                    .status(),
                200
            );
        }
        let used: std::collections::HashSet<_> = h.vendor.requests()[12..]
            .iter()
            .map(|r| r.api_key.clone().unwrap())
            .collect();
        assert_eq!(used.len(), 3, "distinct sessions spread over the pool");
        h.stop().await;
    }
}

#[tokio::test]
async fn account_concurrency_is_never_exceeded_and_waiters_are_served() {
    for &adapter in ADAPTERS {
        let spec = Spec {
            accounts: vec![AccountSpec {
                concurrency: 2,
                ..AccountSpec::new(1)
            }],
            ..Spec::default()
        };
        let h = Harness::start(adapter, spec).await;
        h.vendor.close_gate("acct-1");
        let mut tasks = Vec::new();
        for i in 0..8 {
            let client = h.client.clone();
            let url = h.url("/v1/messages");
            let b = body("claude-haiku-4-5", 32, i % 2 == 0);
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
        h.vendor.wait_for_in_flight("acct-1", 2).await;
        assert_eq!(h.vendor.max_in_flight("acct-1"), 2);
        h.vendor.open_gate("acct-1");
        for t in tasks {
            assert_eq!(t.await.unwrap(), 200);
        }
        assert_eq!(h.vendor.count("acct-1"), 8);
        assert_eq!(
            h.vendor.max_in_flight("acct-1"),
            2,
            "the limit held all the way"
        );
        h.stop().await;
    }
}
