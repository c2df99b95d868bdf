//! The actix adapter against the axum adapter: the same relay configuration, the same mock
//! vendor, the same load, in one run (issue "sub2api-actix and the examples": within 10%).
//!
//! ```sh
//! cargo run --release -p sub2api-actix --example adapter_bench -- [SECS] [CONCURRENCY]
//! ```
//!
//! Both servers run in this process with the mock and the load generator, so each takes turns
//! (axum, actix, axum, actix, ...) and a change in background load hits both alike. Every request
//! is billed (memory ledger, strict holds).

use std::time::{Duration, Instant};

use sub2api_axum::boot::boot;
use sub2api_axum::mock::MockVendor;
use sub2api_core::config::{AccountSeed, Config, GroupSeed, KeySeed, UserSeed};
use sub2api_core::money::{Money, Multiplier};

const KEY: &str = "sk-bench";

fn config(vendor: &str) -> Config {
    let mut accounts = Vec::new();
    for i in 0..4 {
        let mut a = AccountSeed::new(
            format!("a{i}"),
            sub2api_core::domain::Platform::Anthropic,
            sub2api_core::domain::AccountKind::Apikey,
        );
        a.api_key = Some(format!("acct-{i}"));
        a.base_url = Some(vendor.to_owned());
        a.concurrency = 1024;
        a.groups = vec!["default".into()];
        accounts.push(a);
    }
    Config {
        database_url: Some("memory".into()),
        groups: vec![GroupSeed {
            name: "default".into(),
            platform: sub2api_core::domain::Platform::Anthropic,
            rate_multiplier: Multiplier::ONE,
        }],
        accounts,
        users: vec![UserSeed {
            email: "bench@example.com".into(),
            balance_usd: Money::usd(1_000_000),
            password: None,
        }],
        keys: vec![KeySeed {
            user: "bench@example.com".into(),
            group: "default".into(),
            key: Some(KEY.into()),
            name: Some("bench".into()),
            concurrency: None,
            rpm: None,
        }],
        ..Config::default()
    }
}

/// Closed-loop load for `secs`: returns (ok requests, sorted latencies in µs).
async fn load(
    client: &reqwest::Client,
    url: &str,
    conc: usize,
    secs: f64,
    stream: bool,
) -> (usize, Vec<u64>) {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for w in 0..conc {
        let client = client.clone();
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let body = serde_json::json!({
                    "model": "claude-haiku-4-5", "max_tokens": 64, "stream": stream,
                    "messages": [{"role": "user", "content": format!("w{w} n{n}")}],
                });
                let t = Instant::now();
                let Ok(res) = client
                    .post(&url)
                    .header("x-api-key", KEY)
                    .body(body.to_string())
                    .send()
                    .await
                else {
                    continue;
                };
                let ok = res.status() == 200;
                if res.bytes().await.is_ok() && ok {
                    lat.push(t.elapsed().as_micros() as u64);
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    (all.len(), all)
}

fn pct(v: &[u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let conc: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let rounds = 3;
    let vendor = MockVendor::start_with(
        "127.0.0.1:0".parse().unwrap(),
        sub2api_axum::mock::MockState::with_record_capacity(256),
    )
    .await
    .unwrap();

    let axum_booted = boot(config(&vendor.base_url())).await.unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let axum_url = format!("http://{}/v1/messages", l.local_addr().unwrap());
    let router = sub2api_axum::router(&axum_booted.relay);
    tokio::spawn(async move { axum::serve(sub2api_axum::no_delay(l), router).await });

    let actix_booted = boot(config(&vendor.base_url())).await.unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let actix_url = format!("http://{}/v1/messages", l.local_addr().unwrap());
    let actix = sub2api_actix::spawn(actix_booted.relay.clone(), l).unwrap();

    let client = sub2api_core::layer::upstream::Upstream::default_client();
    println!(
        "| mode | c | axum req/s | actix req/s | actix/axum | axum p50/p99 ms | actix p50/p99 ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for stream in [false, true] {
        // Warm both up.
        load(&client, &axum_url, conc, 0.5, stream).await;
        load(&client, &actix_url, conc, 0.5, stream).await;
        let (mut ax, mut ac) = ((0, Vec::new()), (0, Vec::new()));
        for _ in 0..rounds {
            let (n, l) = load(&client, &axum_url, conc, secs / rounds as f64, stream).await;
            ax.0 += n;
            ax.1.extend(l);
            let (n, l) = load(&client, &actix_url, conc, secs / rounds as f64, stream).await;
            ac.0 += n;
            ac.1.extend(l);
        }
        ax.1.sort_unstable();
        ac.1.sort_unstable();
        let (rx, rc) = (ax.0 as f64 / secs, ac.0 as f64 / secs);
        println!(
            "| {} | {conc} | {rx:.0} | {rc:.0} | {:.0}% | {:.2} / {:.2} | {:.2} / {:.2} |",
            if stream { "stream" } else { "non-stream" },
            100.0 * rc / rx,
            pct(&ax.1, 0.5),
            pct(&ax.1, 0.99),
            pct(&ac.1, 0.5),
            pct(&ac.1, 0.99),
        );
    }
    actix.stop(true).await;
    axum_booted.shutdown().await;
    actix_booted.shutdown().await;
}
