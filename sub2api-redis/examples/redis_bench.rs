//! Relay throughput and latency with the Redis scheduler against the in-process one, in one run,
//! against the same mock vendor, on the same HTTP stack (axum), with the same in-memory ledger.
//!
//! ```sh
//! cargo run --release -p sub2api-redis --example redis-bench -- [--secs 8] [--concurrency 64] [--rounds 2] [--redis redis://127.0.0.1:6379]
//! ```
//!
//! Each round runs every variant once (in-process, then Redis) for `--secs` after a short warm
//! up; the figures are the per-variant medians over the rounds. Every client is one conversation
//! (its own session id, so stickiness is exercised), sending non-streaming and streaming
//! requests alternately. The pool has enough slots for every client (4 accounts x 32), so the
//! numbers measure scheduling cost, not queueing; `--slots N` makes the pool smaller to measure
//! the wait queue too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sub2api_axum::mock::{MockState, MockVendor};
use sub2api_core::account_provider::AccountProvider;
use sub2api_core::config::{Config, apply_seed};
use sub2api_core::memory::{MemoryAccountProvider, MemoryDirectory, MemoryLedger, MemoryScheduler, MemoryUsageLog};
use sub2api_core::meter::PricedMeter;
use sub2api_core::pricing::PriceTable;
use sub2api_core::relay::{Relay, RelayConfig, RelayParts};
use sub2api_core::scheduler::Scheduler;
use sub2api_core::store::Directory;
use sub2api_redis::RedisOptions;

const KEY: &str = "sk-bench";

struct Args {
    secs: u64,
    concurrency: usize,
    rounds: usize,
    slots: u32,
    redis: String,
}

fn args() -> Args {
    let mut a = Args { secs: 8, concurrency: 64, rounds: 2, slots: 32, redis: "redis://127.0.0.1:6379".into() };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < v.len() {
        match v[i].as_str() {
            "--secs" => a.secs = v[i + 1].parse().expect("--secs N"),
            "--concurrency" => a.concurrency = v[i + 1].parse().expect("--concurrency N"),
            "--rounds" => a.rounds = v[i + 1].parse().expect("--rounds N"),
            "--slots" => a.slots = v[i + 1].parse().expect("--slots N (per account)"),
            "--redis" => a.redis = v[i + 1].clone(),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

fn seed(vendor: &str, slots: u32) -> Config {
    let mut toml = String::from("[[groups]]\nname = \"default\"\nplatform = \"anthropic\"\n\n");
    for i in 1..=4 {
        toml.push_str(&format!(
            "[[accounts]]\nname = \"b{i}\"\napi_key = \"acct-b{i}\"\nbase_url = \"{vendor}\"\nconcurrency = {slots}\ngroups = [\"default\"]\n\n"
        ));
    }
    toml.push_str(&format!(
        "[[users]]\nemail = \"bench@example.com\"\nbalance_usd = \"1000000\"\n\n[[keys]]\nuser = \"bench@example.com\"\ngroup = \"default\"\nkey = \"{KEY}\"\n"
    ));
    toml::from_str(&toml).unwrap()
}

struct Served {
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
}

async fn serve(relay: &Relay) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let router = sub2api_axum::router(relay);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Served { base: format!("http://{addr}"), stop }
}

#[derive(Clone, Copy, Debug)]
struct Figures {
    rps: f64,
    /// p50 and p99 (ms) of the non-streaming requests, then of the streaming ones.
    json: (f64, f64),
    stream: (f64, f64),
    /// p99 (ms) over all requests.
    p99: f64,
    errors: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

async fn load(base: &str, concurrency: usize, dur: Duration, warmup: Duration) -> Figures {
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(concurrency).build().unwrap();
    let url = format!("{base}/v1/messages");
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + dur;
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let session = format!("bench-session-{w}-{:x}", rand::random::<u32>());
            // [non-streaming, streaming]
            let mut lat: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
            let mut errors = 0;
            let mut n = 0usize;
            while Instant::now() < end {
                n += 1;
                let stream = n % 2;
                let body = json!({
                    "model": "claude-haiku-4-5",
                    "max_tokens": 64,
                    "stream": stream == 1,
                    "metadata": {"user_id": json!({"device_id": "bench", "account_uuid": "", "session_id": session}).to_string()},
                    "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
                });
                let t = Instant::now();
                let ok = match client.post(&url).header("x-api-key", KEY).body(body.to_string()).send().await {
                    Ok(res) => {
                        let ok = res.status().is_success();
                        ok & res.bytes().await.is_ok()
                    }
                    Err(_) => false,
                };
                if t >= measure_from && Instant::now() <= end {
                    if ok {
                        lat[stream].push(t.elapsed());
                    } else {
                        errors += 1;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let (mut json, mut stream) = (Vec::new(), Vec::new());
    let mut errors = 0;
    for t in tasks {
        let ([j, s], e) = t.await.unwrap();
        json.extend(j);
        stream.extend(s);
        errors += e;
    }
    json.sort();
    stream.sort();
    let mut all: Vec<Duration> = json.iter().chain(&stream).copied().collect();
    all.sort();
    Figures {
        rps: all.len() as f64 / dur.as_secs_f64(),
        json: (percentile(&json, 0.5), percentile(&json, 0.99)),
        stream: (percentile(&stream, 0.5), percentile(&stream, 0.99)),
        p99: percentile(&all, 0.99),
        errors,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let args = args();
    let vendor =
        MockVendor::start_with("127.0.0.1:0".parse().unwrap(), MockState::with_record_capacity(100)).await.unwrap();
    let directory = Arc::new(MemoryDirectory::new());
    let ledger = Arc::new(MemoryLedger::new());
    apply_seed(&seed(&vendor.base_url(), args.slots), directory.as_ref(), ledger.as_ref()).await.unwrap();
    let prices = Arc::new(PriceTable::bundled());
    let dir: Arc<dyn Directory> = directory.clone();
    let relay_for = |accounts: Arc<dyn AccountProvider>, scheduler: Arc<dyn Scheduler>| {
        let parts = RelayParts {
            directory: dir.clone(),
            accounts,
            scheduler,
            ledger: ledger.clone(),
            usage_log: Arc::new(MemoryUsageLog::default()),
            prices: prices.clone(),
            meter: Arc::new(PricedMeter::new(prices.clone())),
        };
        Relay::new(parts, RelayConfig::default())
    };

    let mem_accounts = Arc::new(MemoryAccountProvider::from_directory(dir.clone()).await.unwrap());
    let memory = relay_for(mem_accounts.clone(), Arc::new(MemoryScheduler::new(mem_accounts)));
    let prefix = format!("bench{:08x}", rand::random::<u32>());
    let redis_accounts = Arc::new(MemoryAccountProvider::from_directory(dir.clone()).await.unwrap());
    let cluster = sub2api_redis::connect(
        &args.redis,
        redis_accounts,
        RedisOptions { prefix: prefix.clone(), ..Default::default() },
    )
    .await
    .expect("redis reachable");
    let redis = relay_for(cluster.accounts.clone(), cluster.scheduler.clone());
    let variants = [("in-process", serve(&memory).await), ("redis", serve(&redis).await)];

    let dur = Duration::from_secs(args.secs);
    let warmup = Duration::from_secs(2);
    let mut results: Vec<Vec<Figures>> = vec![Vec::new(); variants.len()];
    for round in 0..args.rounds {
        // Alternate the order, so neither variant always runs on a warmer (or hotter) machine.
        let order: Vec<usize> = if round % 2 == 0 { vec![0, 1] } else { vec![1, 0] };
        for i in order {
            let (name, served) = &variants[i];
            let f = load(&served.base, args.concurrency, dur, warmup).await;
            eprintln!(
                "round {round} {name:>10}: {:7.0} req/s  json p50 {:6.2} p99 {:6.2}  stream p50 {:6.2} p99 {:6.2}  all p99 {:6.2} ms  errors {}",
                f.rps, f.json.0, f.json.1, f.stream.0, f.stream.1, f.p99, f.errors
            );
            results[i].push(f);
        }
    }
    let med = |r: &[Figures], f: fn(&Figures) -> f64| median(r.iter().map(f).collect());
    println!(
        "c={} secs={} rounds={} pool=4x{} (median over rounds; latency in ms)",
        args.concurrency, args.secs, args.rounds, args.slots
    );
    println!("| scheduler | req/s | json p50 | json p99 | stream p50 | stream p99 | all p99 | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for ((name, _), r) in variants.iter().zip(&results) {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            med(r, |f| f.rps),
            med(r, |f| f.json.0),
            med(r, |f| f.json.1),
            med(r, |f| f.stream.0),
            med(r, |f| f.stream.1),
            med(r, |f| f.p99),
            r.iter().map(|f| f.errors).sum::<usize>()
        );
    }
    // Rounds are paired (both variants back to back), so the per-round ratio cancels most of the
    // drift of a shared machine; its median is the headline.
    let ratios: Vec<f64> = results[0].iter().zip(&results[1]).map(|(m, r)| r.rps / m.rps * 100.0).collect();
    println!(
        "redis / in-process throughput: {:.1}% (median of per-round ratios {})",
        median(ratios.clone()),
        ratios.iter().map(|r| format!("{r:.0}%")).collect::<Vec<_>>().join(", ")
    );

    for (_, served) in variants {
        let _ = served.stop.send(());
    }
    // Leave nothing behind in Redis.
    cluster.hub.flush().await;
    let _ = cluster.hub.purge().await;
    vendor.shutdown().await;
}
