//! The relay served by actix-web, end to end against the mock vendor: the bytes the mock sent
//! reach the client unchanged (non-stream and SSE, flushed per event), the balance is charged,
//! the local endpoints answer, the `/ai` scope strips its prefix, and a client that hangs up
//! mid-stream (or a server stopped under an open stream) still gets its request settled.
//! No sleeps: every wait is on a signal (a response, the mock's records, `Relay::shutdown`).

use std::net::TcpListener;
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use bytes::Bytes;
use sub2api_actix::ActixServer;
use sub2api_axum::boot::boot;
use sub2api_axum::mock::{Knob, MockVendor, Outcome};
use sub2api_core::config::{AccountSeed, Config, GroupSeed, KeySeed, UserSeed};
use sub2api_core::domain::{AccountKind, Platform, UserId};
use sub2api_core::layer::upstream::Upstream;
use sub2api_core::ledger::Balance;
use sub2api_core::meter::Ending;
use sub2api_core::money::{Money, Multiplier};
use sub2api_core::relay::Relay;
use sub2api_core::store::UsageQuery;

const ACCOUNT_KEY: &str = "sk-mock-account-1";
const USER_KEY: &str = "sk-actix-test-user-key";
const EMAIL: &str = "actix@example.com";
const MODEL: &str = "claude-sonnet-4-5";

struct Fixture {
    vendor: MockVendor,
    relay: Relay,
    user: UserId,
    client: reqwest::Client,
}

async fn fixture() -> Fixture {
    let vendor = MockVendor::start().await;
    let config = Config {
        database_url: Some("memory".into()),
        groups: vec![GroupSeed {
            name: "g".into(),
            platform: Platform::Anthropic,
            rate_multiplier: Multiplier::ONE,
        }],
        accounts: vec![AccountSeed {
            name: "mock-1".into(),
            platform: Platform::Anthropic,
            kind: AccountKind::Apikey,
            api_key: Some(ACCOUNT_KEY.into()),
            access_token: None,
            base_url: Some(vendor.base_url()),
            priority: 50,
            concurrency: 4,
            groups: vec!["g".into()],
            ..AccountSeed::new("mock-1", Platform::Anthropic, AccountKind::Apikey)
        }],
        users: vec![UserSeed {
            email: EMAIL.into(),
            balance_usd: Money::usd(10),
            password: None,
            concurrency: None,
            rpm: None,
        }],
        keys: vec![KeySeed {
            user: EMAIL.into(),
            group: "g".into(),
            key: Some(USER_KEY.into()),
            name: None,
            concurrency: None,
            rpm: None,
        }],
        ..Config::default()
    };
    let booted = boot(config).await.expect("boot a memory relay");
    let user = booted
        .relay
        .parts()
        .directory
        .user_by_email(EMAIL)
        .await
        .unwrap()
        .expect("seeded user")
        .id;
    Fixture {
        vendor,
        relay: booted.relay,
        user,
        client: Upstream::default_client(),
    }
}

fn spawn(relay: &Relay) -> ActixServer {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    sub2api_actix::spawn(relay.clone(), listener).expect("spawn the actix server")
}

fn body(stream: bool) -> String {
    serde_json::json!({
        "model": MODEL,
        "max_tokens": 64,
        "stream": stream,
        "messages": [{ "role": "user", "content": "hello through actix" }],
    })
    .to_string()
}

impl Fixture {
    async fn balance(&self) -> Balance {
        self.relay.parts().ledger.balance(self.user).await.unwrap()
    }

    /// What the mock answers for `body` when asked directly (with the account's own key).
    async fn direct(&self, body: &str) -> (String, Bytes) {
        let res = self
            .client
            .post(format!("{}/v1/messages", self.vendor.base_url()))
            .header("x-api-key", ACCOUNT_KEY)
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let seq = self.vendor.last_request().unwrap().seq;
        (format!("msg_mock_{seq:08}"), res.bytes().await.unwrap())
    }

    fn relay_request(&self, base: &str, path: &str, body: String) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{base}{path}"))
            .header("x-api-key", USER_KEY)
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .body(body)
    }

    /// Asserts the relay's answer for the newest mock request equals the direct answer (the
    /// message id names the mock's request, so it is the one part that differs).
    fn assert_same_bytes(&self, direct: &(String, Bytes), relayed: &Bytes) {
        let seq = self.vendor.last_request().unwrap().seq;
        let expected = String::from_utf8(direct.1.to_vec())
            .unwrap()
            .replace(&direct.0, &format!("msg_mock_{seq:08}"));
        assert_eq!(String::from_utf8(relayed.to_vec()).unwrap(), expected);
    }

    /// Every settled request of the user, after the relay has flushed its usage log.
    async fn usage(&self) -> Vec<sub2api_core::domain::UsageRecord> {
        let q = UsageQuery {
            user_id: Some(self.user),
            limit: 100,
            ..Default::default()
        };
        self.relay.parts().usage_log.query(&q).await.unwrap()
    }

    /// The balance equals the opening balance less what the usage log says was charged, each
    /// charge being the priced usage, and nothing is still held.
    async fn assert_charged(&self, requests: usize) {
        let usage = self.usage().await;
        assert_eq!(usage.len(), requests, "{usage:?}");
        let mut spent = Money::ZERO;
        for r in &usage {
            assert!(r.usage.output_tokens > 0, "{r:?}");
            let cost = self
                .relay
                .parts()
                .meter
                .cost(&r.model, &r.usage, Multiplier::ONE)
                .unwrap();
            assert_eq!(r.cost, cost);
            assert!(cost.is_positive());
            spent = spent.checked_add(cost).unwrap();
        }
        let balance = self.balance().await;
        assert_eq!(balance.held, Money::ZERO);
        assert_eq!(balance.total, Money::usd(10).checked_sub(spent).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_stream_messages_relay_the_mock_bytes_and_charge() {
    let f = fixture().await;
    let server = spawn(&f.relay);
    let base = format!("http://{}", server.addr());
    let direct = f.direct(&body(false)).await;

    let res = f
        .relay_request(&base, "/v1/messages", body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert!(res.headers().contains_key("x-request-id"));
    let relayed = res.bytes().await.unwrap();
    f.assert_same_bytes(&direct, &relayed);
    // The settlement commits before the last byte leaves, so the charge is visible already.
    let balance = f.balance().await;
    assert!(balance.total < Money::usd(10));
    assert_eq!(balance.held, Money::ZERO);

    let last = f.vendor.last_request().unwrap();
    assert_eq!(
        last.api_key.as_deref(),
        Some(ACCOUNT_KEY),
        "the account's key goes upstream, not the user's"
    );
    assert_eq!(
        last.body,
        Bytes::from(body(false)),
        "the request body reaches the vendor unchanged"
    );

    server.stop(true).await;
    f.assert_charged(1).await;
}

/// A non-stream request goes upstream on its actix worker's own connection (no wake-up crosses
/// threads between the vendor's answer and the client's); a stream goes on the relay runtime's
/// shared connections, where its drain can outlive the worker. Two pools: the two kinds never
/// share a connection, while with one pool sequential requests reuse the same one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_stream_requests_use_the_workers_connection_streams_the_shared_one() {
    let f = fixture().await;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let options = sub2api_actix::ServeOptions {
        workers: 1,
        ..Default::default()
    };
    let server = sub2api_actix::spawn_with(f.relay.clone(), listener, options).unwrap();
    let base = format!("http://{}", server.addr());
    for _ in 0..3 {
        for stream in [false, true] {
            let res = f
                .relay_request(&base, "/v1/messages", body(stream))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            res.bytes().await.unwrap();
        }
    }
    let records = f.vendor.requests();
    assert_eq!(records.len(), 6);
    let peers = |stream: bool| -> std::collections::HashSet<_> {
        records
            .iter()
            .filter(|r| r.stream == stream)
            .map(|r| r.peer.expect("the mock notes each request's connection"))
            .collect()
    };
    let (local, shared) = (peers(false), peers(true));
    assert!(
        local.is_disjoint(&shared),
        "non-stream on {local:?}, streams on {shared:?}"
    );
    server.stop(true).await;
    f.assert_charged(6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_messages_relay_the_mock_bytes_and_charge() {
    let f = fixture().await;
    let server = spawn(&f.relay);
    let base = format!("http://{}", server.addr());
    let direct = f.direct(&body(true)).await;

    let res = f
        .relay_request(&base, "/v1/messages?beta=true", body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let relayed = res.bytes().await.unwrap();
    f.assert_same_bytes(&direct, &relayed);
    assert_eq!(
        f.vendor.last_request().unwrap().path,
        "/v1/messages?beta=true"
    );

    server.stop(true).await;
    f.assert_charged(1).await;
    assert_eq!(f.usage().await[0].ending, Ending::Complete);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_events_reach_the_client_while_the_vendor_still_streams() {
    let f = fixture().await;
    // ~18 events 100 ms apart: a buffering adapter would deliver nothing until the mock is done.
    f.vendor
        .set(ACCOUNT_KEY, Knob::EventDelay(Duration::from_millis(100)));
    let server = spawn(&f.relay);
    let base = format!("http://{}", server.addr());

    let mut res = f
        .relay_request(&base, "/v1/messages", body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let first = res.chunk().await.unwrap().expect("a first chunk");
    assert!(first.starts_with(b"event: message_start"), "{first:?}");
    let record = f.vendor.last_request().unwrap();
    assert_eq!(
        record.outcome,
        Outcome::InFlight,
        "the first event arrived only after the mock finished"
    );
    while res.chunk().await.unwrap().is_some() {}
    assert_eq!(
        f.vendor.wait_for_outcome(record.seq).await.unwrap().outcome,
        Outcome::Completed
    );

    server.stop(true).await;
    f.assert_charged(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hanging_up_mid_stream_is_drained_and_charged() {
    let f = fixture().await;
    f.vendor
        .set(ACCOUNT_KEY, Knob::EventDelay(Duration::from_millis(20)));
    let server = spawn(&f.relay);
    let base = format!("http://{}", server.addr());

    let mut res = f
        .relay_request(&base, "/v1/messages", body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let first = res.chunk().await.unwrap().expect("a first chunk");
    assert!(first.starts_with(b"event: message_start"));
    let seq = f.vendor.last_request().unwrap().seq;
    // Hang up: the connection closes, actix drops the response body, the relay drains upstream.
    drop(res);
    let outcome = f.vendor.wait_for_outcome(seq).await.unwrap().outcome;
    assert!(
        matches!(outcome, Outcome::Completed | Outcome::DroppedByClient),
        "{outcome:?}"
    );

    server.stop(true).await;
    f.assert_charged(1).await;
    let ending = f.usage().await[0].ending;
    assert!(
        matches!(
            ending,
            Ending::ClientGoneDrained | Ending::ClientGoneTimedOut
        ),
        "{ending:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_server_under_an_open_stream_still_settles_it() {
    let f = fixture().await;
    f.vendor
        .set(ACCOUNT_KEY, Knob::EventDelay(Duration::from_millis(20)));
    let server = spawn(&f.relay);
    let base = format!("http://{}", server.addr());

    let mut res = f
        .relay_request(&base, "/v1/messages", body(true))
        .send()
        .await
        .unwrap();
    let _first = res.chunk().await.unwrap().expect("a first chunk");
    // Not graceful: the open response is cut and the workers go away; the drain and the
    // settlement run on the relay's runtime and `stop` waits for them.
    server.stop(false).await;
    f.assert_charged(1).await;
    let ending = f.usage().await[0].ending;
    assert!(
        matches!(
            ending,
            Ending::ClientGoneDrained | Ending::ClientGoneTimedOut
        ),
        "{ending:?}"
    );
    drop(res);
}

/// A non-stream request is polled on its actix worker and goes upstream on the worker's own
/// connection; when a forced stop tears the worker down while the vendor has not answered, the
/// relay's call is dropped inside the relay runtime: its hold is released, nothing is charged,
/// and `stop` returns only after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_server_under_a_waiting_non_stream_request_releases_its_hold() {
    let f = fixture().await;
    f.vendor.close_gate(ACCOUNT_KEY);
    let server = spawn(&f.relay);
    let base = format!("http://{}", server.addr());
    let waiting = tokio::spawn(f.relay_request(&base, "/v1/messages", body(false)).send());
    f.vendor.wait_for_in_flight(ACCOUNT_KEY, 1).await;
    assert!(
        f.balance().await.held.is_positive(),
        "the request holds funds while it waits"
    );

    server.stop(false).await;
    let balance = f.balance().await;
    assert_eq!(balance.held, Money::ZERO, "the hold was released");
    assert_eq!(balance.total, Money::usd(10), "nothing was charged");
    assert!(
        waiting.await.unwrap().is_err(),
        "the client's connection was cut"
    );
    f.vendor.open_all_gates();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_endpoints_and_refusals_answer_through_actix() {
    let f = fixture().await;
    let server = spawn(&f.relay);
    let base = format!("http://{}", server.addr());

    let res = f
        .client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), r#"{"status":"ok"}"#);

    let res = f
        .client
        .get(format!("{base}/v1/usage"))
        .header("x-api-key", USER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let usage: serde_json::Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(usage["balance_usd"], "10.00");

    let res = f
        .client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // A wrong key is refused by the relay, in Anthropic's error shape.
    let res = f
        .client
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", "sk-nope")
        .body(body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let err: serde_json::Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(err["error"]["type"], "authentication_error");

    // A wrong method on a relay path is answered by the relay too.
    let res = f
        .client
        .get(format!("{base}/v1/messages"))
        .header("x-api-key", USER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(f.vendor.request_count(), 0, "nothing went upstream");

    server.stop(true).await;
    assert_eq!(f.balance().await.total, Money::usd(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_request_bodies_stream_through_the_channel() {
    let f = fixture().await;
    let server = spawn(&f.relay);
    let base = format!("http://{}", server.addr());
    let text = "lorem ipsum ".repeat(20_000);
    let big = serde_json::json!({
        "model": MODEL,
        "max_tokens": 16,
        "messages": [{ "role": "user", "content": text }],
    })
    .to_string();
    assert!(big.len() > 200_000);

    let res = f
        .relay_request(&base, "/v1/messages", big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();
    assert_eq!(f.vendor.last_request().unwrap().body, Bytes::from(big));

    server.stop(true).await;
    f.assert_charged(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_mounts_the_relay_under_a_prefix_next_to_the_apps_own_routes() {
    let f = fixture().await;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let relay = f.relay.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(move || {
                App::new()
                    .route("/hello", web::get().to(|| async { "hello from the app" }))
                    .service(sub2api_actix::scope("/ai", relay.clone()))
            })
            .workers(1)
            .disable_signals()
            .listen(listener)
            .unwrap()
            .run();
            ready_tx.send(server.handle()).unwrap();
            server.await
        })
    });
    let handle = ready_rx.recv().unwrap();
    let base = format!("http://{addr}");

    assert_eq!(
        f.client
            .get(format!("{base}/hello"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "hello from the app"
    );
    let res = f
        .client
        .get(format!("{base}/ai/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), r#"{"status":"ok"}"#);
    // Unprefixed relay paths are not mounted.
    assert_eq!(
        f.client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let direct = f.direct(&body(true)).await;
    let res = f
        .relay_request(&base, "/ai/v1/messages?beta=true", body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let relayed = res.bytes().await.unwrap();
    f.assert_same_bytes(&direct, &relayed);
    assert_eq!(
        f.vendor.last_request().unwrap().path,
        "/v1/messages?beta=true",
        "the prefix is not sent upstream"
    );

    handle.stop(true).await;
    thread.join().unwrap().unwrap();
    f.relay.shutdown().await;
    f.assert_charged(1).await;
}
