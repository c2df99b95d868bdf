//! `relay.stream_wait_pings_after_ms`: an Anthropic stream that waits for a slot is answered 200
//! at once and kept alive with SSE pings; the vendor's stream follows on the same body, and a
//! wait that ends badly arrives as an SSE `error` event. Billing is as without the pings.

use sub2api_core::money::Money;
use sub2api_tests::*;

fn spec(account_concurrency: u32, key_concurrency: Option<u32>, queue_wait_secs: u64) -> Spec {
    let mut s = Spec {
        accounts: vec![AccountSpec {
            concurrency: account_concurrency,
            ..AccountSpec::new(1)
        }],
        key_concurrency,
        ..Spec::default()
    };
    s.relay.stream_wait_pings_after_ms = 100;
    s.relay.queue_wait_secs = queue_wait_secs;
    s
}

async fn first_chunk(res: &mut reqwest::Response) -> String {
    let chunk = res.chunk().await.unwrap().expect("a first chunk");
    String::from_utf8(chunk.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_waiting_for_an_account_slot_gets_pings_then_its_answer() {
    for &adapter in ADAPTERS {
        let h = Harness::start(adapter, spec(1, None, 60)).await;
        let key = "acct-1";
        h.vendor.close_gate(key);
        // A takes the only slot and waits at the vendor (itself pinged meanwhile).
        let mut a = h.messages(&body("claude-haiku-4-5", 16, true)).await;
        h.vendor.wait_for_in_flight(key, 1).await;
        // B waits for the slot: it is answered 200 with a ping while A still holds it.
        let mut b = h.messages(&body("claude-haiku-4-5", 16, true)).await;
        assert_eq!(b.status(), 200, "{adapter:?}");
        assert!(
            b.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        assert!(b.headers().contains_key("x-request-id"));
        let first = first_chunk(&mut b).await;
        assert!(first.starts_with("event: ping\n"), "{adapter:?}: {first}");
        assert_eq!(h.vendor.count(key), 1, "B has not gone upstream yet");
        assert_eq!(a.status(), 200);
        let a_first = first_chunk(&mut a).await;
        h.vendor.open_gate(key);
        for (res, first) in [(a, a_first), (b, first)] {
            let text = first + &res.text().await.unwrap();
            let events = sse_events(&text);
            let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
            let start = names.iter().position(|e| *e == "message_start").unwrap();
            assert!(
                names[..start].iter().all(|e| *e == "ping"),
                "{adapter:?}: only pings before message_start: {names:?}"
            );
            assert_eq!(
                names.last(),
                Some(&"message_stop"),
                "{adapter:?}: {names:?}"
            );
            assert!(!names.contains(&"error"));
        }
        let records = h.usage_records().await;
        assert_eq!(records.len(), 2, "{adapter:?}: both billed once");
        let charged = records
            .iter()
            .fold(Money::ZERO, |s, r| s.checked_add(r.cost).unwrap());
        let b = h.balance().await;
        assert_eq!(b.held, Money::ZERO);
        assert_eq!(Money::usd(10).checked_sub(charged).unwrap(), b.total);
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_times_out_after_the_pings_is_an_sse_error_and_costs_nothing() {
    for &adapter in ADAPTERS {
        // The key allows one request at once; the second waits up to 1 s for it.
        let h = Harness::start(adapter, spec(4, Some(1), 1)).await;
        let key = "acct-1";
        h.vendor.close_gate(key);
        let mut a = h.messages(&body("claude-haiku-4-5", 16, true)).await;
        h.vendor.wait_for_in_flight(key, 1).await;
        let b = h.messages(&body("claude-haiku-4-5", 16, true)).await;
        assert_eq!(
            b.status(),
            200,
            "{adapter:?}: committed before the wait ended"
        );
        let text = b.text().await.unwrap();
        let events = sse_events(&text);
        let (last, data) = events.last().expect("events");
        assert_eq!(last, "error", "{adapter:?}: {text}");
        assert_eq!(data["type"], "error");
        assert_eq!(data["error"]["type"], "rate_limit_error", "{text}");
        assert!(
            events[..events.len() - 1].iter().all(|(e, _)| e == "ping"),
            "{adapter:?}: {text}"
        );
        assert_eq!(h.vendor.count(key), 1, "B never went upstream");
        h.vendor.open_gate(key);
        let _ = first_chunk(&mut a).await;
        let _ = a.text().await.unwrap();
        let records = h.usage_records().await;
        assert_eq!(records.len(), 1, "{adapter:?}: only A is billed");
        let balance = h.balance().await;
        assert_eq!(balance.held, Money::ZERO, "B's hold (if any) was released");
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_that_need_no_wait_keep_their_status() {
    let mut s = spec(4, None, 60);
    s.key_rpm = Some(1);
    let h = Harness::start(Adapter::Axum, s).await;
    // (In process, the key's minute starts with its first request.)
    let (status, _) = text(h.messages(&body("claude-haiku-4-5", 16, true)).await).await;
    assert_eq!(status, 200);
    let res = h.messages(&body("claude-haiku-4-5", 16, true)).await;
    assert_eq!(
        res.status(),
        429,
        "over the RPM is refused at once, as a status"
    );
    assert!(res.headers().contains_key("retry-after"));
    h.stop().await;
}
