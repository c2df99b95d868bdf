//! Per-account settings end to end: model mapping (exact and `*`) with the model named back, the
//! model allowlist in selection, and upstream proxies (SOCKS5 and HTTP) that traffic really uses.

mod support;

use serde_json::Value;
use sub2api_core::domain::Platform;
use sub2api_core::money::Money;
use sub2api_tests::mock::MockVendor;
use sub2api_tests::*;
use support::*;

#[tokio::test]
async fn model_mapping_round_trips_for_anthropic_and_bills_the_asked_model() {
    for &adapter in ADAPTERS {
        let vendor = MockVendor::start().await;
        let mut a = apikey("a1", Platform::Anthropic, "sk-a1", &vendor.base_url());
        a.model_mapping
            .insert("claude-3-opus*".into(), "claude-opus-4-5".into());
        a.model_mapping.insert(
            "claude-sonnet-4-5".into(),
            "claude-sonnet-4-5-20250929".into(),
        );
        let cfg = config(Platform::Anthropic, vec![a], Money::usd(10));
        let h = Harness::start_with_config(adapter, cfg, vendor).await;
        for (asked, sent, stream) in [
            ("claude-3-opus-20240229", "claude-opus-4-5", false),
            ("claude-3-opus-latest", "claude-opus-4-5", true),
            ("claude-sonnet-4-5", "claude-sonnet-4-5-20250929", true),
            ("claude-haiku-4-5", "claude-haiku-4-5", false),
        ] {
            let (status, reply) = text(h.messages(&body(asked, 16, stream)).await).await;
            assert_eq!(status, 200, "{reply}");
            assert_eq!(
                h.vendor.last_request().unwrap().model.as_deref(),
                Some(sent)
            );
            let model = if stream {
                sse_events(&reply)
                    .into_iter()
                    .find(|(e, _)| e == "message_start")
                    .unwrap()
                    .1["message"]["model"]
                    .clone()
            } else {
                serde_json::from_str::<Value>(&reply).unwrap()["model"].clone()
            };
            assert_eq!(model, asked, "the client sees the model it asked for");
        }
        let records = h.usage_records().await;
        let models: Vec<_> = records.iter().map(|r| r.model.as_str()).collect();
        assert!(
            models.contains(&"claude-3-opus-20240229") && models.contains(&"claude-sonnet-4-5")
        );
        // An alias the price table does not know is billed exactly as the model it maps to.
        let prices = sub2api_core::pricing::PriceTable::bundled();
        for r in records
            .iter()
            .filter(|r| r.model.starts_with("claude-3-opus"))
        {
            let want = prices
                .cost(
                    "claude-opus-4-5",
                    &r.usage,
                    sub2api_core::money::Multiplier::ONE,
                )
                .unwrap();
            assert_eq!(r.cost, want);
        }
        let total: i64 = records.iter().map(|r| r.cost.nanos()).sum();
        assert_eq!(spent(&h).await, total);
        h.stop().await;
    }
}

#[tokio::test]
async fn the_model_allowlist_keeps_requests_off_accounts_that_do_not_serve_them() {
    let vendor = MockVendor::start().await;
    let url = vendor.base_url();
    let mut opus_only = apikey("opus", Platform::Anthropic, "sk-opus", &url);
    opus_only.models = vec!["claude-opus-*".into()];
    opus_only.priority = 1;
    let mut rest = apikey("rest", Platform::Anthropic, "sk-rest", &url);
    rest.models = vec!["claude-sonnet-4-5".into(), "claude-haiku-*".into()];
    let h = Harness::start_with_config(
        Adapter::Axum,
        config(Platform::Anthropic, vec![opus_only, rest], Money::usd(10)),
        vendor,
    )
    .await;
    for _ in 0..3 {
        assert_eq!(
            h.messages(&body("claude-haiku-4-5", 16, false))
                .await
                .status(),
            200
        );
        assert_eq!(
            h.messages(&body("claude-opus-4-5", 16, false))
                .await
                .status(),
            200
        );
    }
    assert!(
        h.vendor
            .requests_for("sk-opus")
            .iter()
            .all(|r| r.model.as_deref() == Some("claude-opus-4-5"))
    );
    assert!(
        h.vendor
            .requests_for("sk-rest")
            .iter()
            .all(|r| r.model.as_deref() == Some("claude-haiku-4-5"))
    );
    assert_eq!(h.vendor.count("sk-opus") + h.vendor.count("sk-rest"), 6);
    // No account serves it: refused before anything is held or sent.
    let res = h
        .messages(&body("claude-3-7-sonnet-20250219", 16, false))
        .await;
    let (status, reply) = text(res).await;
    assert_eq!(status, 400, "{reply}");
    assert!(reply.contains("not served"));
    assert_eq!(h.vendor.request_count(), 6);
    assert_eq!(h.balance().await.held, Money::ZERO);
    h.stop().await;
}

#[tokio::test]
async fn proxy_accounts_really_go_through_their_proxy() {
    for &adapter in ADAPTERS {
        let socks = socks5_proxy().await;
        let http = http_proxy().await;
        let vendor = MockVendor::start().await;
        let url = vendor.base_url();
        let mut via_socks = apikey("socks", Platform::Anthropic, "sk-socks", &url);
        via_socks.proxy = Some(socks.url.clone());
        let mut via_http = apikey("http", Platform::Anthropic, "sk-http", &url);
        via_http.proxy = Some(http.url.clone());
        via_http.priority = 60;
        let direct = AccountSpecLike::direct(&url);
        let h = Harness::start_with_config(
            adapter,
            config(
                Platform::Anthropic,
                vec![via_socks, via_http, direct],
                Money::usd(10),
            ),
            vendor,
        )
        .await;
        // Priority order: socks first; then, with it cooling down, http; the direct one last.
        for stream in [false, true] {
            let (status, reply) =
                text(h.messages(&body("claude-haiku-4-5", 16, stream)).await).await;
            assert_eq!(status, 200, "{reply}");
        }
        assert_eq!(h.vendor.count("sk-socks"), 2);
        assert!(socks.count() >= 1, "the SOCKS5 proxy carried the traffic");
        assert_eq!(http.count(), 0);
        h.vendor.set(
            "sk-socks",
            sub2api_tests::mock::Knob::Fault(sub2api_tests::mock::Fault::Overloaded),
        );
        let (status, reply) = text(h.messages(&body("claude-haiku-4-5", 16, false)).await).await;
        assert_eq!(status, 200, "{reply}");
        assert_eq!(h.vendor.count("sk-http"), 1);
        assert!(http.count() >= 1, "the HTTP proxy carried the traffic");
        assert_eq!(h.vendor.count("sk-direct"), 0);
        h.stop().await;
    }
}

struct AccountSpecLike;

impl AccountSpecLike {
    fn direct(url: &str) -> sub2api_core::config::AccountSeed {
        let mut a = apikey("direct", Platform::Anthropic, "sk-direct", url);
        a.priority = 99;
        a
    }
}
