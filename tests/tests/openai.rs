//! OpenAI Chat Completions and Responses, and Codex OAuth accounts, end to end through both HTTP
//! stacks against the mock vendor.

mod support;

use std::time::{Duration, SystemTime};

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
    let cfg = config(
        Platform::Openai,
        accounts(&vendor.base_url()),
        Money::usd(10),
    );
    Harness::start_with_config(adapter, cfg, vendor).await
}

async fn post(h: &Harness, path: &str, body: &Value) -> (u16, String) {
    let res = h
        .client
        .post(h.url(path))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    text(res).await
}

fn chat(model: &str, stream: bool) -> Value {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": format!("hello #{n}")}]})
}

fn responses(model: &str, stream: bool) -> Value {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    json!({"model": model, "stream": stream, "input": [{"role": "user", "content": format!("hi #{n}")}]})
}

#[tokio::test]
async fn chat_charges_exactly_with_cached_tokens_stream_and_non_stream() {
    for &adapter in ADAPTERS {
        let h = start(adapter, |url| {
            vec![apikey("o1", Platform::Openai, "sk-openai-1", url)]
        })
        .await;
        h.vendor
            .set("sk-openai-1", Knob::Usage(mock_usage(1000, 3000, 200)));
        let each = price("gpt-4o", 1000, 3000, 200);

        let (status, body) = post(&h, "/v1/chat/completions", &chat("gpt-4o", false)).await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["usage"]["prompt_tokens"], 4000);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 3000);
        assert_eq!(v["model"], "gpt-4o");

        let mut b = chat("gpt-4o", true);
        b["stream_options"] = json!({"include_usage": true});
        let (status, body) = post(&h, "/v1/chat/completions", &b).await;
        assert_eq!(status, 200, "{body}");
        let data = sse_data(&body);
        assert_eq!(data.last().unwrap(), &Value::String("[DONE]".into()));
        let usage: Vec<&Value> = data.iter().filter(|d| d["usage"].is_object()).collect();
        assert_eq!(usage.len(), 1, "a client that asked for usage sees it once");
        assert_eq!(usage[0]["usage"]["completion_tokens"], 200);

        assert_eq!(spent(&h).await, 2 * each, "two exact charges");
        let records = h.usage_records().await;
        assert_eq!(records.len(), 2);
        for r in &records {
            assert_eq!(
                (
                    r.usage.input_tokens,
                    r.usage.cache_read_tokens,
                    r.usage.output_tokens
                ),
                (1000, 3000, 200)
            );
            assert_eq!(r.cost.nanos(), each);
            assert_eq!(r.model, "gpt-4o");
        }
        h.stop().await;
    }
}

#[tokio::test]
async fn a_client_that_did_not_ask_for_usage_never_sees_the_usage_chunk_but_is_billed() {
    for &adapter in ADAPTERS {
        let h = start(adapter, |url| {
            vec![apikey("o1", Platform::Openai, "sk-openai-1", url)]
        })
        .await;
        let (status, body) = post(&h, "/v1/chat/completions", &chat("gpt-4o-mini", true)).await;
        assert_eq!(status, 200, "{body}");
        let data = sse_data(&body);
        assert!(
            data.iter().all(|d| !d["usage"].is_object()),
            "no usage chunk: {body}"
        );
        assert!(
            data.iter()
                .all(|d| d["choices"].as_array().is_none_or(|c| !c.is_empty())),
            "no empty-choices chunk"
        );
        assert_eq!(data.last().unwrap(), &Value::String("[DONE]".into()));
        // The relay asked upstream anyway and billed what it reported.
        let sent = h.vendor.last_request().unwrap();
        assert_eq!(
            sent.json().unwrap()["stream_options"]["include_usage"],
            true
        );
        let usage = sent.usage.unwrap();
        let records = h.usage_records().await;
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].usage.input_tokens, usage.input_tokens);
        assert_eq!(records[0].usage.output_tokens, usage.output_tokens);
        assert_eq!(
            spent(&h).await,
            price("gpt-4o-mini", usage.input_tokens, 0, usage.output_tokens)
        );
        h.stop().await;
    }
}

#[tokio::test]
async fn responses_charge_exactly_from_completed_and_incomplete_stream_and_non_stream() {
    for &adapter in ADAPTERS {
        let h = start(adapter, |url| {
            vec![apikey("o1", Platform::Openai, "sk-openai-1", url)]
        })
        .await;
        h.vendor
            .set("sk-openai-1", Knob::Usage(mock_usage(700, 2048, 90)));
        let each = price("gpt-5", 700, 2048, 90);
        let (status, body) = post(&h, "/v1/responses", &responses("gpt-5", false)).await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "completed");
        assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 2048);

        let (status, body) = post(&h, "/v1/responses", &responses("gpt-5", true)).await;
        assert_eq!(status, 200, "{body}");
        let events = sse_events(&body);
        assert_eq!(events.last().unwrap().0, "response.completed");
        assert_eq!(spent(&h).await, 2 * each);

        // Capped output ends with response.incomplete, which carries the usage too.
        h.vendor.clear("sk-openai-1");
        let mut b = responses("gpt-5", true);
        b["max_output_tokens"] = json!(5);
        let before = h.balance().await.total;
        let (status, body) = post(&h, "/v1/responses", &b).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(sse_events(&body).last().unwrap().0, "response.incomplete");
        let usage = h.vendor.last_request().unwrap().usage.unwrap();
        assert_eq!(usage.output_tokens, 5);
        assert_eq!(
            before.nanos() - h.balance().await.total.nanos(),
            price("gpt-5", usage.input_tokens, 0, 5)
        );
        h.stop().await;
    }
}

#[tokio::test]
async fn openai_errors_come_in_openai_shape() {
    for &adapter in ADAPTERS {
        let h = start(adapter, |url| {
            vec![apikey("o1", Platform::Openai, "sk-openai-1", url)]
        })
        .await;
        let (status, body) = post(&h, "/v1/chat/completions", &json!({"model": "gpt-4o"})).await;
        assert_eq!(status, 400);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("messages"));
        assert!(v["error"].get("param").is_some() && v["error"].get("code").is_some());

        let res = h
            .client
            .post(h.url("/v1/responses"))
            .header("authorization", "Bearer nope")
            .body("{}")
            .send()
            .await
            .unwrap();
        let (status, body) = text(res).await;
        assert_eq!(status, 401);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
            "invalid_api_key"
        );

        // A hold above the balance: insufficient_quota, nothing sent upstream.
        let mut b = chat("gpt-4o", false);
        b["max_completion_tokens"] = json!(1_000_000);
        let (status, body) = post(&h, "/v1/chat/completions", &b).await;
        assert_eq!(status, 402, "{body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["error"]["type"],
            "insufficient_quota"
        );
        // Anthropic's route with an OpenAI key: refused in Anthropic's shape.
        let res = h.messages(&body_for_anthropic()).await;
        assert_eq!(res.status(), 400);
        assert_eq!(h.vendor.request_count(), 0);

        let res = h
            .client
            .get(h.url("/v1/models"))
            .header("authorization", format!("Bearer {KEY}"))
            .send()
            .await
            .unwrap();
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["object"], "list");
        assert!(
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["id"] == "gpt-4o")
        );
        h.stop().await;
    }
}

fn body_for_anthropic() -> Value {
    body("claude-sonnet-4-5", 16, false)
}

fn codex(name: &str, token: &str, url: &str) -> AccountSeed {
    AccountSeed {
        access_token: Some(token.into()),
        base_url: Some(url.into()),
        chatgpt_account_id: Some(format!("chatgpt-{name}")),
        ..AccountSeed::new(name, Platform::Openai, AccountKind::Oauth)
    }
}

#[tokio::test]
async fn codex_oauth_requests_reach_the_codex_backend_with_account_id_and_store_false() {
    for &adapter in ADAPTERS {
        let h = start(adapter, |url| vec![codex("c1", "codex-token-1", url)]).await;
        h.vendor
            .set("codex-token-1", Knob::Usage(mock_usage(300, 100, 40)));
        for (path, stream) in [
            ("/v1/responses", true),
            ("/backend-api/codex/responses", true),
            ("/v1/responses", false),
        ] {
            let mut b = responses("gpt-5-codex", stream);
            b["store"] = json!(true);
            let res = h
                .client
                .post(h.url(path))
                .header("authorization", format!("Bearer {KEY}"))
                .header("session_id", "codex-session-1")
                .header("originator", "codex_cli_rs")
                .body(b.to_string())
                .send()
                .await
                .unwrap();
            let (status, body) = text(res).await;
            assert_eq!(status, 200, "{path}: {body}");
            let sent = h.vendor.last_request().unwrap();
            assert_eq!(sent.path, "/backend-api/codex/responses");
            assert_eq!(sent.header("chatgpt-account-id"), Some("chatgpt-c1"));
            assert_eq!(sent.header("authorization"), Some("Bearer codex-token-1"));
            assert_eq!(sent.header("session_id"), Some("codex-session-1"));
            assert_eq!(sent.json().unwrap()["store"], false);
            // The backend only streams: a JSON client's request is streamed and collected.
            assert_eq!(sent.json().unwrap()["stream"], true);
            if !stream {
                let v: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(
                    (v["object"].as_str(), v["status"].as_str()),
                    (Some("response"), Some("completed"))
                );
                assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 100);
            }
        }
        assert_eq!(spent(&h).await, 3 * price("gpt-5-codex", 300, 100, 40));
        // Chat Completions cannot be served by a Codex account.
        let (status, body) = post(&h, "/v1/chat/completions", &chat("gpt-5-codex", false)).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(h.vendor.request_count(), 3);
        h.stop().await;
    }
}

fn parked_until(h: &Harness, id: sub2api_core::domain::AccountId) -> i64 {
    match h.relay().parts().accounts.status(id) {
        AccountStatus::CoolingDown { until_ms, .. } => until_ms,
        other => panic!("expected a cooldown, got {other:?}"),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn codex_usage_limits_and_openai_rate_limits_park_accounts_until_the_vendor_says() {
    for &adapter in ADAPTERS {
        let h = start(adapter, |url| {
            vec![
                codex("c1", "codex-token-1", url),
                codex("c2", "codex-token-2", url),
            ]
        })
        .await;
        h.vendor.set(
            "codex-token-1",
            Knob::Fault(Fault::RateLimited {
                retry_after_secs: Some(7200),
                reset_at: None,
            }),
        );
        h.vendor.set(
            "codex-token-2",
            Knob::FailTimes(
                Fault::RateLimited {
                    retry_after_secs: Some(7200),
                    reset_at: None,
                },
                0,
            ),
        );
        for _ in 0..4 {
            let (status, body) = post(&h, "/v1/responses", &responses("gpt-5-codex", true)).await;
            assert_eq!(status, 200, "{body}");
        }
        assert_eq!(
            h.vendor.count("codex-token-1"),
            1,
            "parked after its usage_limit_reached"
        );
        let until = parked_until(&h, h.account("c1").await.id);
        let want = now_ms() + 7_200_000;
        assert!(
            (until - want).abs() < 5_000,
            "parked until resets_in_seconds: {until} vs {want}"
        );
        h.stop().await;

        let h = start(adapter, |url| {
            vec![
                apikey("o1", Platform::Openai, "sk-o1", url),
                apikey("o2", Platform::Openai, "sk-o2", url),
            ]
        })
        .await;
        h.vendor.set(
            "sk-o1",
            Knob::Fault(Fault::rate_limited_for(Duration::from_secs(90))),
        );
        for _ in 0..3 {
            assert_eq!(
                post(&h, "/v1/chat/completions", &chat("gpt-4o", false))
                    .await
                    .0,
                200
            );
        }
        let until = parked_until(&h, h.account("o1").await.id);
        assert!(
            (until - (now_ms() + 90_000)).abs() < 5_000,
            "x-ratelimit-reset-requests honoured"
        );
        h.stop().await;
    }
}

#[tokio::test]
async fn openai_sessions_stick_by_header_then_prompt_cache_key() {
    let h = start(Adapter::Axum, |url| {
        (1..=3)
            .map(|i| apikey(&format!("o{i}"), Platform::Openai, &format!("sk-o{i}"), url))
            .collect()
    })
    .await;
    let send = |session: Option<&'static str>, cache_key: Option<&'static str>| {
        let client = h.client.clone();
        let url = h.url("/v1/responses");
        async move {
            let mut b = responses("gpt-5", false);
            if let Some(k) = cache_key {
                b["prompt_cache_key"] = json!(k);
            }
            let mut r = client
                .post(url)
                .header("authorization", format!("Bearer {KEY}"))
                .body(b.to_string());
            if let Some(s) = session {
                r = r.header("session_id", s);
            }
            assert_eq!(r.send().await.unwrap().status(), 200);
        }
    };
    for _ in 0..5 {
        send(Some("sess-a"), None).await;
    }
    for _ in 0..5 {
        send(None, Some("cache-b")).await;
    }
    let keys: Vec<String> = h
        .vendor
        .requests()
        .iter()
        .map(|r| r.api_key.clone().unwrap())
        .collect();
    assert!(
        keys[..5].iter().all(|k| *k == keys[0]),
        "session_id sticks: {keys:?}"
    );
    assert!(
        keys[5..].iter().all(|k| *k == keys[5]),
        "prompt_cache_key sticks: {keys:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn model_mapping_round_trips_for_openai() {
    for &adapter in ADAPTERS {
        let h = start(adapter, |url| {
            let mut a = apikey("o1", Platform::Openai, "sk-o1", url);
            a.model_mapping.insert("gpt-4o*".into(), "gpt-4.1".into());
            vec![a]
        })
        .await;
        let (status, body) = post(&h, "/v1/chat/completions", &chat("gpt-4o", false)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["model"],
            "gpt-4o"
        );
        assert_eq!(
            h.vendor.last_request().unwrap().model.as_deref(),
            Some("gpt-4.1")
        );
        let (_, body) = post(&h, "/v1/chat/completions", &chat("gpt-4o-mini", true)).await;
        let data = sse_data(&body);
        assert!(
            data.iter()
                .filter(|d| d.is_object())
                .all(|d| d["model"] == "gpt-4o-mini"),
            "{body}"
        );
        assert_eq!(
            h.vendor.last_request().unwrap().json().unwrap()["model"],
            "gpt-4.1"
        );
        let (_, body) = post(&h, "/v1/responses", &responses("gpt-4o", true)).await;
        assert!(
            sse_events(&body)
                .iter()
                .filter(|(_, d)| d.get("response").is_some())
                .all(|(_, d)| d["response"]["model"] == "gpt-4o")
        );
        // Billed at the model the client asked for.
        let records = h.usage_records().await;
        assert_eq!(
            records.iter().map(|r| r.model.as_str()).collect::<Vec<_>>(),
            ["gpt-4o", "gpt-4o-mini", "gpt-4o"]
        );
        h.stop().await;
    }
}

#[tokio::test]
async fn a_cut_chat_stream_ends_with_an_openai_error_event_and_bills_the_output_seen() {
    for &adapter in ADAPTERS {
        let h = start(adapter, |url| {
            vec![apikey("o1", Platform::Openai, "sk-openai-1", url)]
        })
        .await;
        h.vendor.set("sk-openai-1", Knob::Fault(Fault::CutAfter(4)));
        let res = h
            .client
            .post(h.url("/v1/chat/completions"))
            .header("authorization", format!("Bearer {KEY}"))
            .body(chat("gpt-4o", true).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let body = res.text().await.unwrap_or_default();
        let data = sse_data(&body);
        assert!(data.last().unwrap()["error"].is_object(), "{body}");
        let records = h.usage_records().await;
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].ending, sub2api_core::meter::Ending::UpstreamCut);
        // Four chunks seen (the role chunk and three words), one token each; no input reported.
        assert_eq!(records[0].usage.output_tokens, 4);
        assert_eq!(spent(&h).await, price("gpt-4o", 0, 0, 4));
        h.stop().await;
    }
}
