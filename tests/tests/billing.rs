//! Exact money, end to end: charges, holds, and every row of the settlement table.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use sub2api_core::meter::Ending;
use sub2api_core::money::Money;
use sub2api_tests::mock::{Fault, Knob, Outcome, Scope};
use sub2api_tests::*;

/// claude-sonnet-4-5: 1000 in, 2000 5m writes, 3000 1h writes, 4000 reads, 500 out
/// = 0.003 + 0.0075 + 0.018 + 0.0012 + 0.0075 USD.
const SONNET_MIXED: &str = "0.0372";

#[tokio::test]
async fn exact_charges_for_stream_and_non_stream_with_cache_writes_and_reads() {
    for &adapter in ADAPTERS {
        for stream in [false, true] {
            let h = Harness::start(adapter, Spec::default()).await;
            h.vendor.set(
                Scope::AllKeys,
                Knob::Usage(usage(1000, 2000, 3000, 4000, 500)),
            );
            let (status, text) =
                text(h.messages(&body("claude-sonnet-4-5", 1024, stream)).await).await;
            assert_eq!(status, 200, "{text}");
            let expected = Money::parse_usd(SONNET_MIXED).unwrap();
            let b = h.balance().await;
            assert_eq!(
                b.total,
                Money::usd(10).checked_sub(expected).unwrap(),
                "stream={stream}"
            );
            assert_eq!(b.held, Money::ZERO, "hold released");
            let recs = h.usage_records().await;
            assert_eq!(recs.len(), 1);
            assert_eq!(recs[0].cost, expected);
            assert_eq!(recs[0].usage.cache_creation_1h_tokens, 3000);
            assert_eq!(recs[0].usage.cache_creation_5m_tokens, 2000);
            assert_eq!(recs[0].ending, Ending::Complete);
            // The client got exactly what the vendor sent.
            let sent = h.vendor.last_request().unwrap();
            assert_eq!(sent.outcome, Outcome::Completed);
            if stream {
                let events = sse_events(&text);
                assert_eq!(events.first().unwrap().0, "message_start");
                assert_eq!(events.last().unwrap().0, "message_stop");
            } else {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(
                    v["usage"]["cache_creation"]["ephemeral_1h_input_tokens"],
                    3000
                );
            }
            h.stop().await;
        }
    }
}

#[tokio::test]
async fn the_group_multiplier_scales_the_charge_exactly() {
    for &adapter in ADAPTERS {
        let spec = Spec {
            multiplier: sub2api_core::money::Multiplier::parse("1.5").unwrap(),
            ..Spec::default()
        };
        let h = Harness::start(adapter, spec).await;
        h.vendor.set(
            Scope::AllKeys,
            Knob::Usage(usage(1000, 2000, 3000, 4000, 500)),
        );
        assert_eq!(
            h.messages(&body("claude-sonnet-4-5", 1024, true))
                .await
                .bytes()
                .await
                .is_ok(),
            true
        );
        let charged = Money::usd(10).checked_sub(h.balance().await.total).unwrap();
        assert_eq!(charged, Money::parse_usd("0.0558").unwrap());
        h.stop().await;
    }
}

#[tokio::test]
async fn fifty_concurrent_requests_never_overdraw_and_charges_sum_exactly() {
    for &adapter in ADAPTERS {
        // Each request holds about 0.00148 USD ((body bytes + 1024 overhead) at $1/M in, 64 out at
        // $5/M); 0.005 USD covers three holds at once, not four.
        let spec = Spec {
            balance: Money::parse_usd("0.005").unwrap(),
            ..Spec::default()
        };
        let h = Harness::start(adapter, spec).await;
        h.vendor.close_gate(Scope::AllKeys);
        let mut tasks = Vec::new();
        for i in 0..50 {
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
                (status, res.text().await.unwrap())
            }));
        }
        // Every request either holds (and waits at the vendor's gate) or was refused.
        h.vendor.wait_for_requests(3).await;
        let mid = h.balance().await;
        assert!(
            !mid.available().is_negative() && mid.held <= mid.total,
            "{mid:?}"
        );
        h.vendor.open_all_gates();
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
        let after = h.stop().await;
        let b = wallet(&after).await;
        assert!(!b.total.is_negative(), "balance went negative: {b:?}");
        assert_eq!(b.held, Money::ZERO);
        let recs = after
            .relay
            .parts()
            .usage_log
            .query(&Default::default())
            .await
            .unwrap();
        let sum = recs
            .iter()
            .fold(Money::ZERO, |a, r| a.checked_add(r.cost).unwrap());
        assert_eq!(
            Money::parse_usd("0.005").unwrap().checked_sub(sum).unwrap(),
            b.total,
            "charges sum exactly"
        );
        assert_eq!(recs.len(), ok);
        assert!(ok >= 3, "at least the first three were served (got {ok})");
    }
}

#[tokio::test]
async fn a_hold_larger_than_the_balance_is_refused_before_any_upstream_call() {
    for &adapter in ADAPTERS {
        let spec = Spec {
            balance: Money::parse_usd("0.01").unwrap(),
            ..Spec::default()
        };
        let h = Harness::start(adapter, spec).await;
        // 64000 output tokens at $15/M = 0.96 USD worst case.
        let res = h.messages(&body("claude-sonnet-4-5", 64000, true)).await;
        assert_eq!(res.status(), 402);
        let v: serde_json::Value = res.json().await.unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "billing_error");
        assert_eq!(h.vendor.request_count(), 0, "nothing went upstream");
        let b = h.balance().await;
        assert_eq!(
            (b.total, b.held),
            (Money::parse_usd("0.01").unwrap(), Money::ZERO)
        );
        h.stop().await;
    }
}

#[tokio::test]
async fn client_hanging_up_mid_stream_is_charged_the_full_drained_usage() {
    for &adapter in ADAPTERS {
        let h = Harness::start(adapter, Spec::default()).await;
        h.vendor
            .set(Scope::AllKeys, Knob::Usage(usage(1000, 0, 0, 0, 500)));
        h.vendor
            .set(Scope::AllKeys, Knob::EventDelay(Duration::from_millis(5)));
        let res = h.messages(&body("claude-sonnet-4-5", 1024, true)).await;
        let mut stream = res.bytes_stream();
        let first = stream.next().await.unwrap().unwrap();
        assert!(first.starts_with(b"event: message_start"));
        drop(stream); // hang up
        let rec = h.vendor.wait_for_outcome(0).await.unwrap();
        assert_eq!(
            rec.outcome,
            Outcome::Completed,
            "the relay kept reading upstream"
        );
        let after = h.stop().await; // waits for the drain's settlement
        let b = wallet(&after).await;
        // 1000 in at $3/M + 500 out at $15/M.
        assert_eq!(
            Money::usd(10).checked_sub(b.total).unwrap(),
            Money::parse_usd("0.0105").unwrap()
        );
        let recs = after
            .relay
            .parts()
            .usage_log
            .query(&Default::default())
            .await
            .unwrap();
        assert_eq!(recs[0].ending, Ending::ClientGoneDrained);
    }
}

#[tokio::test]
async fn client_hanging_up_with_a_drain_bound_charges_what_was_metered() {
    for &adapter in ADAPTERS {
        let mut spec = Spec::default();
        spec.relay.drain_timeout_secs = 0;
        let h = Harness::start(adapter, spec).await;
        h.vendor
            .set(Scope::AllKeys, Knob::Usage(usage(1000, 0, 0, 0, 500)));
        h.vendor
            .set(Scope::AllKeys, Knob::EventDelay(Duration::from_millis(50)));
        let res = h.messages(&body("claude-sonnet-4-5", 1024, true)).await;
        let mut stream = res.bytes_stream();
        let _ = stream.next().await.unwrap().unwrap();
        drop(stream);
        let after = h.stop().await;
        let recs = after
            .relay
            .parts()
            .usage_log
            .query(&Default::default())
            .await
            .unwrap();
        assert_eq!(recs[0].ending, Ending::ClientGoneTimedOut);
        assert_eq!(
            recs[0].usage.input_tokens, 1000,
            "input known from message_start"
        );
        assert!(recs[0].usage.output_tokens < 500, "output only as counted");
        let b = wallet(&after).await;
        assert_eq!(b.held, Money::ZERO);
        assert_eq!(Money::usd(10).checked_sub(b.total).unwrap(), recs[0].cost);
        assert!(recs[0].cost >= Money::parse_usd("0.003").unwrap());
    }
}

#[tokio::test]
async fn upstream_cut_gives_the_client_an_error_event_and_charges_input_plus_output_seen() {
    for &adapter in ADAPTERS {
        let h = Harness::start(adapter, Spec::default()).await;
        h.vendor
            .set(Scope::AllKeys, Knob::Usage(usage(1000, 0, 0, 0, 500)));
        // message_start, ping, content_block_start, then 4 deltas: cut.
        h.vendor
            .set(Scope::AllKeys, Knob::Fault(Fault::CutAfter(7)));
        let (status, text) = text(h.messages(&body("claude-sonnet-4-5", 1024, true)).await).await;
        assert_eq!(status, 200);
        let events = sse_events(&text);
        let (last, data) = events.last().unwrap();
        assert_eq!(last, "error", "never a silent truncation: {text}");
        assert_eq!(data["error"]["type"], "api_error");
        let recs = h.usage_records().await;
        assert_eq!(recs[0].ending, Ending::UpstreamCut);
        assert_eq!(
            (recs[0].usage.input_tokens, recs[0].usage.output_tokens),
            (1000, 4)
        );
        // 1000 in at $3/M + 4 out at $15/M.
        assert_eq!(recs[0].cost, Money::parse_usd("0.00306").unwrap());
        assert_eq!(
            Money::usd(10).checked_sub(h.balance().await.total).unwrap(),
            recs[0].cost
        );
        h.stop().await;
    }
}

#[tokio::test]
async fn an_error_event_mid_stream_passes_through_once_and_bills_what_was_seen() {
    for &adapter in ADAPTERS {
        let h = Harness::start(adapter, Spec::default()).await;
        h.vendor
            .set(Scope::AllKeys, Knob::Usage(usage(2000, 0, 0, 0, 500)));
        h.vendor
            .set(Scope::AllKeys, Knob::Fault(Fault::ErrorEventAfter(5)));
        let (status, text) = text(h.messages(&body("claude-haiku-4-5", 1024, true)).await).await;
        assert_eq!(status, 200);
        let errors: Vec<_> = sse_events(&text)
            .into_iter()
            .filter(|(e, _)| e == "error")
            .collect();
        assert_eq!(errors.len(), 1, "{text}");
        assert_eq!(errors[0].1["error"]["type"], "overloaded_error");
        let recs = h.usage_records().await;
        assert_eq!(recs[0].ending, Ending::UpstreamCut);
        // 2000 in at $1/M + 2 deltas at $5/M.
        assert_eq!(recs[0].cost, Money::parse_usd("0.00201").unwrap());
        h.stop().await;
    }
}

#[tokio::test]
async fn upstream_errors_before_output_charge_nothing() {
    for &adapter in ADAPTERS {
        let spec = Spec {
            accounts: vec![AccountSpec::new(1)],
            ..Spec::default()
        };
        let h = Harness::start(adapter, spec).await;
        h.vendor.set(Scope::AllKeys, Knob::Fault(Fault::Overloaded));
        let res = h.messages(&body("claude-sonnet-4-5", 64, false)).await;
        assert_eq!(res.status().as_u16(), 529);
        let b = h.balance().await;
        assert_eq!((b.total, b.held), (Money::usd(10), Money::ZERO));
        assert!(h.usage_records().await.is_empty());
        // With the only account parked, the next request is refused by the relay itself.
        let res = h.messages(&body("claude-sonnet-4-5", 64, false)).await;
        assert_eq!(res.status().as_u16(), 503);
        assert!(res.headers().get("retry-after").is_some());
        let v: serde_json::Value = res.json().await.unwrap();
        assert_eq!(v["error"]["type"], "overloaded_error");
        let b = h.balance().await;
        assert_eq!((b.total, b.held), (Money::usd(10), Money::ZERO));
        h.stop().await;
    }
}

#[tokio::test]
async fn bad_input_gets_anthropic_errors_charges_nothing_and_sends_nothing() {
    for &adapter in ADAPTERS {
        let mut spec = Spec::default();
        spec.relay.max_body_bytes = 4096;
        let h = Harness::start(adapter, spec).await;
        let post = |key: &'static str, body: String| {
            h.client
                .post(h.url("/v1/messages"))
                .header("x-api-key", key)
                .body(body)
                .send()
        };
        let cases: Vec<(&str, String, u16, &str)> = vec![
            (KEY, "{not json".into(), 400, "invalid_request_error"),
            (KEY, json!({"max_tokens": 10, "messages": []}).to_string(), 400, "invalid_request_error"),
            (KEY, json!({"model": "claude-sonnet-4-5", "messages": [{"role":"user","content":"x"}]}).to_string(), 400, "invalid_request_error"),
            (KEY, json!({"model": "no-such-model", "max_tokens": 10, "messages": [{"role":"user","content":"x"}]}).to_string(), 400, "invalid_request_error"),
            (KEY, json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role":"user","content":"x".repeat(5000)}]}).to_string(), 413, "request_too_large"),
            ("sk-unknown", body("claude-sonnet-4-5", 10, false).to_string(), 401, "authentication_error"),
        ];
        for (key, b, status, ty) in cases {
            let res = post(key, b.clone()).await.unwrap();
            assert_eq!(res.status().as_u16(), status, "{b:.80}");
            assert!(res.headers().get("x-request-id").is_some());
            let v: serde_json::Value = res.json().await.unwrap();
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], ty, "{b:.80}");
            assert!(!v["error"]["message"].as_str().unwrap().is_empty());
        }
        // No key at all.
        let res = h
            .client
            .post(h.url("/v1/messages"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
        assert_eq!(h.vendor.request_count(), 0);
        let b = h.balance().await;
        assert_eq!((b.total, b.held), (Money::usd(10), Money::ZERO));
        h.stop().await;
    }
}

#[tokio::test]
async fn count_tokens_is_relayed_never_billed_and_headers_follow_the_policy() {
    for &adapter in ADAPTERS {
        let h = Harness::start(adapter, Spec::default()).await;
        let res = h
            .client
            .post(h.url("/v1/messages/count_tokens"))
            .header("authorization", format!("Bearer {KEY}"))
            .header("cookie", "session=secret")
            .header("anthropic-beta", "token-counting-2024-11-01")
            .body(json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let v: serde_json::Value = res.json().await.unwrap();
        assert!(v["input_tokens"].as_u64().unwrap() > 0);
        assert_eq!(h.balance().await.total, Money::usd(10));
        let sent = h.vendor.last_request().unwrap();
        assert_eq!(sent.path, "/v1/messages/count_tokens");
        assert!(
            sent.api_key.as_deref().unwrap().starts_with("acct-"),
            "the account's key, never the client's"
        );
        assert!(sent.header("authorization").is_none());
        assert!(sent.header("cookie").is_none());
        assert_eq!(
            sent.header("anthropic-version"),
            Some("2023-06-01"),
            "added when missing"
        );
        assert_eq!(
            sent.header("anthropic-beta"),
            Some("token-counting-2024-11-01")
        );
        // ?beta=true is kept, as Claude Code sends it.
        let res = h
            .client
            .post(h.url("/v1/messages?beta=true"))
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01")
            .body(body("claude-sonnet-4-5", 16, false).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(
            h.vendor.last_request().unwrap().path,
            "/v1/messages?beta=true"
        );
        h.stop().await;
    }
}

#[tokio::test]
async fn models_usage_health_and_metrics() {
    for &adapter in ADAPTERS {
        let h = Harness::start(adapter, Spec::default()).await;
        let v: serde_json::Value = h
            .client
            .get(h.url("/v1/models"))
            .header("x-api-key", KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ids: Vec<_> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect();
        assert!(ids.iter().any(|m| m == "claude-sonnet-4-5"));
        assert!(ids.iter().all(|m| m.starts_with("claude")));
        let v: serde_json::Value = h
            .client
            .get(h.url("/v1/usage"))
            .header("x-api-key", KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["isValid"], true);
        assert_eq!(v["planName"], "default");
        assert_eq!(v["unit"], "USD");
        assert_eq!(v["balance_usd"], "10.00");
        assert_eq!(v["remaining"], 10.0);
        let res = h
            .client
            .get(h.url("/v1/usage"))
            .header("x-api-key", "nope")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
        assert_eq!(
            h.client
                .get(h.url("/healthz"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        let m = h
            .client
            .get(h.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(m.contains("sub2api_settlements_total 0"));
        h.stop().await;
    }
}

#[tokio::test]
async fn graceful_shutdown_finishes_open_streams_and_settles_them() {
    for &adapter in ADAPTERS {
        let h = Harness::start(adapter, Spec::default()).await;
        h.vendor
            .set(Scope::AllKeys, Knob::Usage(usage(1000, 0, 0, 0, 500)));
        h.vendor
            .set(Scope::AllKeys, Knob::EventDelay(Duration::from_millis(10)));
        let res = h.messages(&body("claude-sonnet-4-5", 1024, true)).await;
        let reader = tokio::spawn(async move { res.text().await.unwrap() });
        h.vendor.wait_for_requests(1).await;
        let after = h.stop().await;
        let text = reader.await.unwrap();
        assert_eq!(sse_events(&text).last().unwrap().0, "message_stop");
        let b = wallet(&after).await;
        assert_eq!(
            Money::usd(10).checked_sub(b.total).unwrap(),
            Money::parse_usd("0.0105").unwrap()
        );
    }
}
