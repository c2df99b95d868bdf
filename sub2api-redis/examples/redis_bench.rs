//! Relay throughput and latency with the Redis scheduler against the in-process one, in one run:
//! the same mock vendor, the same HTTP stack (axum), the same in-memory directory and ledger; only
//! the scheduler and the account provider differ.
//!
//! ```sh
//! cargo run --release -p sub2api-redis --example redis-bench -- [--secs 6] [--concurrency 64] \
//!     [--rounds 5] [--slots 32] [--redis redis://127.0.0.1:6379] [--nagle]
//! ```
//!
//! Each round runs both relays back to back (the order alternates between rounds) for `--secs`
//! after a 2 s warm-up; the throughput ratio is the median of the per-round ratios, so drift of a
//! shared machine cancels out. Every client is one conversation (its own session id, so
//! stickiness is exercised), sending non-streaming and streaming requests alternately. The pool
//! (4 accounts x `--slots`) has a slot for every client by default, so the numbers measure the
//! cost of scheduling, not queueing; `--slots 8` halves the slots to exercise the wait queue.
//!
//! Like the workspace bench (`sub2api-tests --bin bench`), every server sets `TCP_NODELAY`, or
//! each stream waits ~40 ms for delayed ACKs; `--nagle` serves the stock way. CPU per request is
//! this process's (relays, load generator and mock together: the same for both but for the
//! scheduler) and the Redis server's (from `INFO cpu`), per successful request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::serve::ListenerExt;
use serde_json::json;
use sub2api_axum::mock::MockState;
use sub2api_core::account_provider::AccountProvider;
use sub2api_core::config::{Config, apply_seed};
use sub2api_core::memory::{
    MemoryAccountProvider, MemoryDirectory, MemoryLedger, MemoryScheduler, MemoryUsageLog,
};
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
    nagle: bool,
}

fn args() -> Args {
    let mut a = Args {
        secs: 6,
        concurrency: 64,
        rounds: 5,
        slots: 32,
        redis: "redis://127.0.0.1:6379".into(),
        nagle: false,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let value = || {
            v.get(i + 1)
                .cloned()
                .unwrap_or_else(|| panic!("{} needs a value", v[i]))
        };
        match v[i].as_str() {
            "--secs" => a.secs = value().parse().expect("--secs N"),
            "--concurrency" => a.concurrency = value().parse().expect("--concurrency N"),
            "--rounds" => a.rounds = value().parse().expect("--rounds N"),
            "--slots" => a.slots = value().parse().expect("--slots N (per account)"),
            "--redis" => a.redis = value(),
            "--nagle" => {
                a.nagle = true;
                i += 1;
                continue;
            }
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

/// Serves `app` on a fresh `127.0.0.1` port (with `TCP_NODELAY` unless `nagle`); returns its URL.
async fn serve(app: axum::Router, nagle: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let listener = listener.tap_io(move |tcp| {
        if !nagle {
            let _ = tcp.set_nodelay(true);
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// User + system CPU of this process, in seconds (Linux).
fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// User + system CPU of the Redis server, in seconds.
async fn redis_cpu(conn: &mut redis::aio::MultiplexedConnection) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(conn)
        .await
        .unwrap_or_default();
    info.lines()
        .filter(|l| l.starts_with("used_cpu_user:") || l.starts_with("used_cpu_sys:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum()
}

#[derive(Clone, Copy, Debug)]
struct Figures {
    rps: f64,
    /// p50 and p99 (ms) of the non-streaming requests, then of the streaming ones.
    json: (f64, f64),
    stream: (f64, f64),
    /// p99 (ms) over all requests.
    p99: f64,
    /// CPU µs per successful request: this process, the Redis server.
    cpu_us: f64,
    redis_cpu_us: f64,
    errors: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

async fn load(base: &str, args: &Args, redis: &mut redis::aio::MultiplexedConnection) -> Figures {
    let dur = Duration::from_secs(args.secs);
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .unwrap();
    let url = format!("{base}/v1/messages");
    let measure_from = Instant::now() + Duration::from_secs(2);
    let end = measure_from + dur;
    let mut tasks = Vec::new();
    for w in 0..args.concurrency {
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
    tokio::time::sleep_until(measure_from.into()).await;
    let (cpu0, rcpu0) = (process_cpu(), redis_cpu(redis).await);
    tokio::time::sleep_until(end.into()).await;
    let (cpu1, rcpu1) = (process_cpu(), redis_cpu(redis).await);
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
    let n = all.len().max(1) as f64;
    Figures {
        rps: all.len() as f64 / dur.as_secs_f64(),
        json: (percentile(&json, 0.5), percentile(&json, 0.99)),
        stream: (percentile(&stream, 0.5), percentile(&stream, 0.99)),
        p99: percentile(&all, 0.99),
        cpu_us: (cpu1 - cpu0) * 1e6 / n,
        redis_cpu_us: (rcpu1 - rcpu0) * 1e6 / n,
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
    let vendor = serve(
        sub2api_axum::mock::router(MockState::with_record_capacity(256)),
        args.nagle,
    )
    .await;
    let directory = Arc::new(MemoryDirectory::new());
    let ledger = Arc::new(MemoryLedger::new());
    apply_seed(
        &seed(&vendor, args.slots),
        directory.as_ref(),
        ledger.as_ref(),
    )
    .await
    .unwrap();
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
            limiter: None,
        };
        Relay::new(parts, RelayConfig::default())
    };

    let mem_accounts = Arc::new(
        MemoryAccountProvider::from_directory(dir.clone())
            .await
            .unwrap(),
    );
    let memory = relay_for(
        mem_accounts.clone(),
        Arc::new(MemoryScheduler::new(mem_accounts)),
    );
    let prefix = format!("bench{:08x}", rand::random::<u32>());
    let redis_accounts = Arc::new(
        MemoryAccountProvider::from_directory(dir.clone())
            .await
            .unwrap(),
    );
    let cluster = sub2api_redis::connect(
        &args.redis,
        redis_accounts,
        RedisOptions {
            prefix,
            ..Default::default()
        },
    )
    .await
    .expect("redis reachable");
    let redis_relay = relay_for(cluster.accounts.clone(), cluster.scheduler.clone());
    let variants = [
        (
            "in-process",
            serve(sub2api_axum::router(&memory), args.nagle).await,
        ),
        (
            "redis",
            serve(sub2api_axum::router(&redis_relay), args.nagle).await,
        ),
    ];
    let mut info = redis::Client::open(args.redis.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("redis reachable");

    let mut results: Vec<Vec<Figures>> = vec![Vec::new(); variants.len()];
    for round in 0..args.rounds {
        // Alternate the order, so neither variant always runs on a warmer (or hotter) machine.
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (name, base) = &variants[i];
            let f = load(base, &args, &mut info).await;
            eprintln!(
                "round {round} {name:>10}: {:7.0} req/s  json p50 {:6.2} p99 {:6.2}  stream p50 {:6.2} p99 {:6.2}  all p99 {:6.2} ms  cpu {:5.0} µs + redis {:4.0} µs  errors {}",
                f.rps,
                f.json.0,
                f.json.1,
                f.stream.0,
                f.stream.1,
                f.p99,
                f.cpu_us,
                f.redis_cpu_us,
                f.errors
            );
            results[i].push(f);
        }
    }
    let med = |r: &[Figures], f: fn(&Figures) -> f64| median(r.iter().map(f).collect());
    println!(
        "c={} secs={} rounds={} pool=4x{} {} (medians over rounds; latency in ms, CPU in µs per request)",
        args.concurrency,
        args.secs,
        args.rounds,
        args.slots,
        if args.nagle { "nagle" } else { "nodelay" }
    );
    println!(
        "| scheduler | req/s | json p50 | json p99 | stream p50 | stream p99 | all p99 | process CPU | Redis CPU | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for ((name, _), r) in variants.iter().zip(&results) {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {} |",
            med(r, |f| f.rps),
            med(r, |f| f.json.0),
            med(r, |f| f.json.1),
            med(r, |f| f.stream.0),
            med(r, |f| f.stream.1),
            med(r, |f| f.p99),
            med(r, |f| f.cpu_us),
            med(r, |f| f.redis_cpu_us),
            r.iter().map(|f| f.errors).sum::<usize>()
        );
    }
    // Rounds are paired (both variants back to back), so the per-round ratio cancels most of the
    // drift of a shared machine; its median is the headline.
    let ratios: Vec<f64> = results[0]
        .iter()
        .zip(&results[1])
        .map(|(m, r)| r.rps / m.rps * 100.0)
        .collect();
    println!(
        "redis / in-process throughput: {:.1}% (median of per-round ratios: {})",
        median(ratios.clone()),
        ratios
            .iter()
            .map(|r| format!("{r:.0}%"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Leave nothing behind in Redis.
    cluster.hub.flush().await;
    let _ = cluster.hub.purge().await;
}
