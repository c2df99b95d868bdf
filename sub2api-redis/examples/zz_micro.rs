use std::sync::Arc;
use std::time::{Duration, Instant};
use sub2api_core::domain::{Account, Credentials, Group, Secret};
use sub2api_core::memory::{MemoryAccountProvider, MemoryScheduler};
use sub2api_core::scheduler::{Scheduler, SelectRequest, SessionKey};

fn account(id: i64) -> (Account, Credentials) {
    let a: Account = serde_json::from_value(serde_json::json!({"id": id, "name": format!("a{id}"), "platform": "anthropic", "kind": "apikey",
        "base_url": "http://127.0.0.1:1", "priority": 50, "concurrency": 32, "groups": [1], "enabled": true})).unwrap();
    (a, Credentials::ApiKey(Secret::new("k")))
}
fn cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}
async fn run(s: Arc<dyn Scheduler>, label: &str) {
    let g: Group = serde_json::from_value(serde_json::json!({"id": 1, "name": "g", "platform": "anthropic", "rate_multiplier": "1"})).unwrap();
    let g = Arc::new(g);
    let end = Instant::now() + Duration::from_secs(4);
    let c0 = cpu();
    let mut tasks = vec![];
    for w in 0..64 {
        let (s, g) = (s.clone(), g.clone());
        tasks.push(tokio::spawn(async move {
            let sess = SessionKey(format!("k:s{w}"));
            let mut n = 0u64;
            while Instant::now() < end {
                let l = s.select(SelectRequest { group: &g, model: "claude-haiku-4-5", session: Some(&sess), excluded: &[] }).await.unwrap();
                tokio::task::yield_now().await;
                drop(l);
                n += 1;
            }
            n
        }));
    }
    let mut n = 0;
    for t in tasks { n += t.await.unwrap(); }
    let c = cpu() - c0;
    println!("{label}: {:.0} selects/s, {:.1} us process CPU per select", n as f64 / 4.0, c * 1e6 / n as f64);
}
#[tokio::main]
async fn main() {
    let accts = || Arc::new(MemoryAccountProvider::new((1..=4).map(account).collect()));
    let p = accts();
    run(Arc::new(MemoryScheduler::new(p)), "memory").await;
    let c = sub2api_redis::connect("redis://127.0.0.1:6379", accts(), sub2api_redis::RedisOptions { prefix: "micro".into(), ..Default::default() }).await.unwrap();
    run(c.scheduler.clone(), "redis").await;
    c.hub.flush().await;
    c.hub.purge().await.unwrap();
}
