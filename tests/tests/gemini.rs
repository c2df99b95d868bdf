//! Gemini generateContent / streamGenerateContent / countTokens and Code Assist OAuth accounts,
//! end to end through both HTTP stacks against the mock vendor.

mod support;

use std::time::SystemTime;

use serde_json::{Value, json};
use sub2api_core::account_provider::AccountStatus;
use sub2api_core::config::AccountSeed;
use sub2api_core::domain::{AccountKind, Platform};
use sub2api_core::money::Money;
use sub2api_tests::mock::{Fault, Knob, MockVendor};
use sub2api_tests::*;
use support::*;

async fn start(adapter: Adapter, accounts: impl FnOnce(&str) -> Vec<AccountSeed>) -> Harness {
    let vendor = MockVendor::start().await;
    let mut cfg = config(
        Platform::Gemini,
        accounts(&vendor.base_url()),
        Money::usd(10),
    );
    cfg.oauth.google.token_url = Some(format!("{}/token", vendor.base_url()));
    Harness::start_with_config(adapter, cfg, vendor).await
}

fn content() -> Value {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    json!({"contents": [{"role": "user", "parts": [{"text": format!("hello #{n}")}]}]})
}

async fn post_as(h: &Harness, path: &str, body: &Value, auth: (&str, String)) -> (u16, String) {
    let res = h
        .client
        .post(h.url(path))
        .header(auth.0, auth.1)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    text(res).await
}

async fn post(h: &Harness, path: &str, body: &Value) -> (u16, String) {
    post_as(h, path, body, ("x-goog-api-key", KEY.to_owned())).await
}

#[tokio::test]
async fn gemini_charges_exactly_with_cached_and_thought_tokens_stream_and_non_stream() {
    for &adapter in ADAPTERS {
        let h = start(adapter, |url| {
            vec![apikey("g1", Platform::Gemini, "gk-1", url)]
        })
        .await;
        // 80 output tokens: 20 of them thoughts, billed as output.
        h.vendor.set("gk-1", Knob::Usage(mock_usage(500, 1500, 80)));
        let each = price("gemini-2.5-flash", 500, 1500, 80);

        let (status, body) = post(
            &h,
            "/v1beta/models/gemini-2.5-flash:generateContent",
            &content(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["usageMetadata"]["thoughtsTokenCount"], 20);
        assert_eq!(v["usageMetadata"]["cachedContentTokenCount"], 1500);

        let (status, body) = post(
            &h,
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            &content(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let chunks = sse_data(&body);
        assert!(chunks.len() > 2);
        assert_eq!(
            chunks.last().unwrap()["candidates"][0]["finishReason"],
            "STOP"
        );
        // Upstream got the model in its path and no client key in the query.
        let sent = h.vendor.last_request().unwrap();
        assert_eq!(
            sent.path,
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(sent.header("x-goog-api-key"), Some("gk-1"));

        // Newer SDKs: /v1/models/...; keys as ?key= and Bearer.
        let (status, body) = post_as(
            &h,
            &format!("/v1/models/gemini-2.5-flash:generateContent?key={KEY}"),
            &content(),
            ("content-type", "application/json".into()),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(
            !h.vendor.last_request().unwrap().path.contains(KEY),
            "the client's key never goes upstream"
        );
        let (status, body) = post_as(
            &h,
            "/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            &content(),
            ("authorization", format!("Bearer {KEY}")),
        )
        .await;
        assert_eq!(status, 200, "{body}");

        assert_eq!(spent(&h).await, 4 * each);
        let records = h.usage_records().await;
        assert_eq!(records.len(), 4);
        assert!(records.iter().all(|r| (
            r.usage.input_tokens,
            r.usage.cache_read_tokens,
            r.usage.output_tokens
        ) == (500, 1500, 80)));

        // countTokens is relayed, never billed.
        let (status, body) = post(
            &h,
            "/v1beta/models/gemini-2.5-flash:countTokens",
            &content(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(
            serde_json::from_str::<Value>(&body).unwrap()["totalTokens"]
                .as_u64()
                .unwrap()
                > 0
        );
        assert_eq!(spent(&h).await, 4 * each);
        h.stop().await;
    }
}

#[tokio::test]
async fn gemini_errors_come_in_google_shape() {
    for &adapter in ADAPTERS {
        let h = start(adapter, |url| {
            vec![apikey("g1", Platform::Gemini, "gk-1", url)]
        })
        .await;
        for bad in [json!("not an object"), json!({"contents": "x"}), json!({})] {
            let (status, body) =
                post(&h, "/v1beta/models/gemini-2.5-flash:generateContent", &bad).await;
            assert_eq!(status, 400, "{body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
            assert_eq!(v["error"]["code"], 400);
        }
        let res = h
            .client
            .post(h.url("/v1beta/models/gemini-2.5-flash:generateContent"))
            .body("{oops")
            .send()
            .await
            .unwrap();
        let (status, body) = text(res).await;
        assert_eq!(status, 401, "no key first: {body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["error"]["status"],
            "UNAUTHENTICATED"
        );
        let (status, body) = post(
            &h,
            "/v1beta/models/gemini-2.5-flash:generateContent",
            &json!(null),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(
            h.vendor.request_count(),
            0,
            "nothing malformed went upstream"
        );
        let res = h
            .client
            .get(h.url(&format!("/v1beta/models?key={KEY}")))
            .send()
            .await
            .unwrap();
        let v: Value = res.json().await.unwrap();
        assert!(
            v["models"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == "models/gemini-2.5-flash")
        );
        h.stop().await;
    }
}

#[tokio::test]
async fn gemini_retry_info_parks_the_account_until_the_delay() {
    let h = start(Adapter::Axum, |url| {
        vec![
            apikey("g1", Platform::Gemini, "gk-1", url),
            apikey("g2", Platform::Gemini, "gk-2", url),
        ]
    })
    .await;
    h.vendor.set(
        "gk-1",
        Knob::Fault(Fault::RateLimited {
            retry_after_secs: Some(600),
            reset_at: None,
        }),
    );
    for _ in 0..4 {
        assert_eq!(
            post(
                &h,
                "/v1beta/models/gemini-2.5-pro:generateContent",
                &content()
            )
            .await
            .0,
            200
        );
    }
    assert_eq!(h.vendor.count("gk-1"), 1);
    let id = h.account("g1").await.id;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    match h.relay().parts().accounts.status(id) {
        AccountStatus::CoolingDown { until_ms, .. } => {
            assert!((until_ms - (now + 600_000)).abs() < 5_000)
        }
        other => panic!("{other:?}"),
    }
    h.stop().await;
}

fn code_assist(name: &str, url: &str, refresh: &str) -> AccountSeed {
    AccountSeed {
        refresh_token: Some(refresh.into()),
        base_url: Some(url.into()),
        project_id: Some("proj-42".into()),
        ..AccountSeed::new(name, Platform::Gemini, AccountKind::Oauth)
    }
}

#[tokio::test]
async fn code_assist_accounts_wrap_requests_unwrap_responses_and_bill_exactly() {
    for &adapter in ADAPTERS {
        let vendor = MockVendor::start().await;
        vendor.oauth().grant("google-refresh-1");
        let mut cfg = config(
            Platform::Gemini,
            vec![code_assist("ca1", &vendor.base_url(), "google-refresh-1")],
            Money::usd(10),
        );
        cfg.oauth.google.token_url = Some(format!("{}/token", vendor.base_url()));
        let h = Harness::start_with_config(adapter, cfg, vendor).await;
        let (status, body) = post(
            &h,
            "/v1beta/models/gemini-2.5-pro:generateContent",
            &content(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v.get("response").is_none(), "unwrapped: {body}");
        assert_eq!(v["candidates"][0]["finishReason"], "STOP");
        let sent = h.vendor.last_request().unwrap();
        assert_eq!(sent.path, "/v1internal:generateContent");
        let j = sent.json().unwrap();
        assert_eq!(
            (j["model"].as_str(), j["project"].as_str()),
            (Some("gemini-2.5-pro"), Some("proj-42"))
        );
        assert!(j["request"]["contents"].is_array());
        assert_eq!(
            sent.header("authorization"),
            Some("Bearer mock-access-1"),
            "refreshed before first use"
        );

        let (status, body) = post(
            &h,
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
            &content(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let chunks = sse_data(&body);
        assert!(
            chunks
                .iter()
                .all(|c| c.get("response").is_none() && c.get("candidates").is_some()),
            "{body}"
        );
        assert_eq!(
            h.vendor.last_request().unwrap().path,
            "/v1internal:streamGenerateContent?alt=sse"
        );
        assert_eq!(h.vendor.oauth().refreshes(), 1);

        let mut want = 0;
        for r in h
            .vendor
            .requests()
            .iter()
            .filter(|r| r.path.starts_with("/v1internal"))
        {
            let u = r.usage.clone().unwrap();
            want += price("gemini-2.5-pro", u.input_tokens, 0, u.output_tokens);
        }
        assert_eq!(spent(&h).await, want);
        h.stop().await;
    }
}

#[tokio::test]
async fn model_mapping_round_trips_for_gemini() {
    let h = start(Adapter::Axum, |url| {
        let mut a = apikey("g1", Platform::Gemini, "gk-1", url);
        a.model_mapping
            .insert("gemini-2.5-pro".into(), "gemini-2.5-flash".into());
        vec![a]
    })
    .await;
    let (status, body) = post(
        &h,
        "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
        &content(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        sse_data(&body)
            .iter()
            .all(|c| c["modelVersion"] == "gemini-2.5-pro"),
        "{body}"
    );
    assert_eq!(
        h.vendor.last_request().unwrap().path,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    h.stop().await;
}
