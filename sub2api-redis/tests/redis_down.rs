//! Redis goes away and comes back: a real `redis-server` of this test's own (on an ephemeral
//! port, so no other test is disturbed) is shut down and started again, empty.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use common::*;
use sub2api_axum::mock::{Fault, Knob};
use sub2api_core::account_provider::{AccountProvider, AccountStatus};
use sub2api_core::scheduler::{Scheduler, SelectRequest};
use tokio::process::{Child, Command};

struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    async fn start(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed");
        let r = OwnRedis {
            port,
            child: Some(child),
        };
        let up = eventually(Duration::from_secs(10), async || r.ping().await).await;
        assert!(up.is_some(), "redis-server on port {port} came up");
        r
    }

    async fn ping(&self) -> bool {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "ping"])
            .output()
            .await;
        matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).trim() == "PONG")
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli shutdown nosave`, then waits for the process to exit.
    async fn shutdown(&mut self) {
        let _ = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown", "nosave"])
            .output()
            .await;
        if let Some(mut child) = self.child.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_fails_closed_with_503_and_everything_recovers_when_it_returns() {
    let mut redis = OwnRedis::start(OwnRedis::free_port()).await;
    let vendor = vendor().await;
    let schema = Schema::new().await;
    seed_schema(
        &schema.url,
        &seed(&vendor.base_url(), &[("p", 10, 4), ("q", 50, 4)], "10.00"),
    )
    .await;
    let opts = sub2api_redis::RedisOptions {
        renew_every: Duration::from_millis(300),
        op_timeout: Duration::from_millis(500),
        ..options(&random_prefix())
    };
    let node = Node::start(&schema.url, &redis.url(), opts).await;
    let resets = Arc::new(AtomicUsize::new(0));
    {
        let resets = resets.clone();
        node.cluster.hub.on_key_invalidation(move |inv| {
            if inv == sub2api_redis::KeyInvalidation::All {
                resets.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let resets_before = resets.load(Ordering::SeqCst);

    // Healthy: `p` gets a 429 and is parked (shared in Redis), `q` serves.
    vendor.set(
        mock_key("p"),
        Knob::Fault(Fault::rate_limited_until(
            SystemTime::now() + Duration::from_secs(3600),
        )),
    );
    let (status, text, _) = node.send(&session_body("sess-1", false)).await;
    assert_eq!(status, 200, "{text}");
    let p = node.account_id("p").await;
    let q = node.account_id("q").await;
    assert!(matches!(
        node.cluster.accounts.status(p),
        AccountStatus::CoolingDown { .. }
    ));
    // A lease held across the outage (a long stream still running).
    let group = node
        .relay
        .parts()
        .directory
        .group_by_name("default")
        .await
        .unwrap()
        .unwrap();
    let held = node
        .cluster
        .scheduler
        .select(SelectRequest {
            group: &group,
            model: "claude-haiku-4-5",
            session: None,
            excluded: &[],
        })
        .await
        .unwrap();
    assert_eq!(held.account.id, q);

    redis.shutdown().await;

    // Down: requests are refused at once with a clear 503 in the caller's dialect; nothing goes
    // upstream.
    let upstream_before = vendor.total().requests;
    for stream in [false, true] {
        let start = tokio::time::Instant::now();
        let (status, text, headers) = node.send(&body("claude-sonnet-4-5", 32, stream)).await;
        assert_eq!(status, 503, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("a JSON error body");
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "overloaded_error");
        assert!(
            headers.get("retry-after").is_some(),
            "503 carries retry-after"
        );
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "refused within the operation timeout, took {:?}",
            start.elapsed()
        );
    }
    assert_eq!(
        vendor.total().requests,
        upstream_before,
        "nothing went upstream while leases could not be taken"
    );
    // Key and user limits fail closed the same way (a limit that cannot be checked is not
    // waived); a request limited by nothing never needs Redis there.
    {
        use sub2api_core::domain::{KeyId, Limits, Principal, UserId};
        use sub2api_core::layer::limit::Limiter;
        let limiter = node.cluster.limiter();
        let principal = |user_limits| Principal {
            user: UserId(1),
            key: KeyId(1),
            group: Arc::new(group.clone()),
            limits: Limits::default(),
            user_limits,
            rules: Default::default(),
        };
        let limited = Limits {
            concurrency: Some(4),
            rpm: None,
        };
        let e = Limiter::admit(&limiter, &principal(limited))
            .await
            .expect_err("fails closed");
        assert_eq!(e.class, sub2api_core::dialect::ErrorClass::Overloaded);
        assert!(e.retry_after.is_some());
        assert!(
            !Limiter::admit(&limiter, &principal(Limits::default()))
                .await
                .unwrap()
                .is_held()
        );
    }
    // Status reads never touch Redis: the last known value.
    assert!(matches!(
        node.cluster.accounts.status(p),
        AccountStatus::CoolingDown { .. }
    ));
    assert!(!node.cluster.hub.is_healthy());

    // Back, empty (it lost everything).
    let redis = OwnRedis::start(redis.port).await;
    let back = eventually(Duration::from_secs(15), async || {
        node.send(&body("claude-sonnet-4-5", 32, false)).await.0 == 200
    })
    .await;
    assert!(back.is_some(), "the relay recovered by itself");
    assert!(node.cluster.hub.is_healthy());

    // The lease still held is counted again (the heartbeat re-adds it), and so is the cooldown
    // (pushed again by the node that knew it), so `p` is still never used.
    let recounted = eventually(Duration::from_secs(5), async || {
        node.cluster.scheduler.in_use(q).await.unwrap_or(0) >= 1
    })
    .await;
    assert!(
        recounted.is_some(),
        "the held lease is counted again after the restart"
    );
    for i in 0..4 {
        let (status, text, _) = node
            .send(&session_body(&format!("after-{i}"), i % 2 == 0))
            .await;
        assert_eq!(status, 200, "{text}");
    }
    assert_eq!(
        vendor.count(&mock_key("p")),
        1,
        "the parked account stayed parked across the restart"
    );
    assert!(
        resets.load(Ordering::SeqCst) > resets_before,
        "key caches were told to drop everything"
    );
    drop(held);
    node.cluster.hub.flush().await;
    let freed = eventually(Duration::from_secs(5), async || {
        node.cluster.scheduler.in_use(q).await.unwrap_or(1) == 0
    })
    .await;
    assert!(freed.is_some());
    node.stop().await;
    drop(redis);
}
