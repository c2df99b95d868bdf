//! The scheduler alone, without HTTP: how many select + release cycles per second the in-process
//! and the Redis scheduler sustain with `--concurrency` tasks, and what each costs this process
//! in CPU. Every task is one sticky session over a pool of 4 accounts x 32 slots.
//!
//! ```sh
//! cargo run --release -p sub2api-redis --example select-bench -- [--secs 4] [--concurrency 64] [--redis redis://127.0.0.1:6379]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use sub2api_core::domain::{Account, Credentials, Group, Secret};
use sub2api_core::memory::{MemoryAccountProvider, MemoryScheduler};
use sub2api_core::scheduler::{Scheduler, SelectRequest, SessionKey};

fn account(id: i64) -> (Account, Credentials) {
    let a: Account = serde_json::from_value(serde_json::json!({
        "id": id, "name": format!("a{id}"), "platform": "anthropic", "kind": "apikey",
        "base_url": "http://127.0.0.1:1", "priority": 50, "concurrency": 32, "groups": [1], "enabled": true,
    }))
    .unwrap();
    (a, Credentials::ApiKey(Secret::new("k")))
}

/// User + system CPU of this process, in seconds (Linux).
fn cpu_secs() -> f64 {
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
async fn redis_cpu(url: &str) -> f64 {
    let Ok(client) = redis::Client::open(url) else {
        return 0.0;
    };
    let Ok(mut c) = client.get_multiplexed_async_connection().await else {
        return 0.0;
    };
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    info.lines()
        .filter(|l| l.starts_with("used_cpu_user:") || l.starts_with("used_cpu_sys:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum()
}

async fn run(
    scheduler: Arc<dyn Scheduler>,
    label: &str,
    concurrency: usize,
    dur: Duration,
    redis: &str,
) {
    let group: Group = serde_json::from_value(serde_json::json!({
        "id": 1, "name": "g", "platform": "anthropic", "rate_multiplier": "1",
    }))
    .unwrap();
    let group = Arc::new(group);
    let end = Instant::now() + dur;
    let (cpu, rcpu) = (cpu_secs(), redis_cpu(redis).await);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (s, g) = (scheduler.clone(), group.clone());
        tasks.push(tokio::spawn(async move {
            let session = SessionKey(format!("k:bench-{w}"));
            let mut n = 0u64;
            while Instant::now() < end {
                let req = SelectRequest {
                    group: &g,
                    model: "claude-haiku-4-5",
                    session: Some(&session),
                    excluded: &[],
                };
                let lease = s.select(req).await.expect("a slot");
                tokio::task::yield_now().await;
                drop(lease);
                n += 1;
            }
            n
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += t.await.unwrap();
    }
    let (cpu, rcpu) = (cpu_secs() - cpu, redis_cpu(redis).await - rcpu);
    let n = n.max(1) as f64;
    println!(
        "| {label} | {:.0} | {:.1} | {:.1} |",
        n / dur.as_secs_f64(),
        cpu * 1e6 / n,
        rcpu * 1e6 / n
    );
}

#[tokio::main]
async fn main() {
    let (mut secs, mut concurrency, mut redis) =
        (4u64, 64usize, "redis://127.0.0.1:6379".to_owned());
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        match (pair[0].as_str(), pair.get(1)) {
            ("--secs", Some(v)) => secs = v.parse().expect("--secs N"),
            ("--concurrency", Some(v)) => concurrency = v.parse().expect("--concurrency N"),
            ("--redis", Some(v)) => redis = v.clone(),
            (other, _) => panic!("unknown argument {other}"),
        }
    }
    let dur = Duration::from_secs(secs);
    let pool = || Arc::new(MemoryAccountProvider::new((1..=4).map(account).collect()));
    println!("c={concurrency} secs={secs} pool=4x32, sticky sessions");
    println!(
        "| scheduler | select+release / s | process CPU µs per cycle | Redis CPU µs per cycle |"
    );
    println!("|---|---:|---:|---:|");
    let accounts = pool();
    run(
        Arc::new(MemoryScheduler::new(accounts)),
        "in-process",
        concurrency,
        dur,
        &redis,
    )
    .await;
    let prefix = format!("selbench{:08x}", rand::random::<u32>());
    let options = sub2api_redis::RedisOptions {
        prefix,
        ..Default::default()
    };
    let cluster = sub2api_redis::connect(&redis, pool(), options)
        .await
        .expect("redis reachable");
    run(cluster.scheduler.clone(), "redis", concurrency, dur, &redis).await;
    cluster.hub.flush().await;
    let _ = cluster.hub.purge().await;
}
