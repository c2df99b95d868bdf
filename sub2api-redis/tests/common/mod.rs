//! Test support: relay nodes that share one Postgres schema and one Redis prefix, each served on
//! its own ephemeral port, in front of one mock vendor. Every test gets a fresh schema and a
//! random key prefix, so tests run in parallel without seeing each other.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sub2api_axum::mock::MockVendor;
use sub2api_core::api::{Api, ApiConfig, ApiParts};
use sub2api_core::config::{Config, apply_seed};
use sub2api_core::domain::{Account, AccountId};
use sub2api_core::memory::{MemoryAccountProvider, SchedulerConfig};
use sub2api_core::meter::PricedMeter;
use sub2api_core::pricing::PriceTable;
use sub2api_core::relay::{Relay, RelayConfig, RelayParts};
use sub2api_core::store::Directory;
use sub2api_redis::{RedisCluster, RedisOptions};
use sub2api_sqlx::{MasterKey, SqlStore, StoreOptions};

pub const KEY: &str = "sk-test-alice";
pub const USER: &str = "alice@example.com";

pub fn redis_url() -> String {
    std::env::var("SUB2API_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn pg_base_url() -> String {
    std::env::var("SUB2API_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn random_prefix() -> String {
    format!("t{:016x}", rand::random::<u64>())
}

/// Options for one test: a fresh prefix, short waits where a test needs them.
pub fn options(prefix: &str) -> RedisOptions {
    RedisOptions {
        prefix: prefix.to_owned(),
        scheduler: SchedulerConfig {
            sticky_wait: Duration::from_millis(500),
            ..SchedulerConfig::default()
        },
        ..RedisOptions::default()
    }
}

/// A fresh Postgres schema, dropped when this is dropped.
pub struct Schema {
    pub url: String,
    name: String,
}

impl Schema {
    pub async fn new() -> Schema {
        let name = format!("r_{:016x}", rand::random::<u64>());
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&pg_base_url())
            .await
            .expect("Postgres must be running for the tests (see .ci/run)");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        Schema {
            url: format!("{}?options=-csearch_path%3D{name}", pg_base_url()),
            name,
        }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(mut conn) =
                    <sqlx::PgConnection as sqlx::Connection>::connect(&pg_base_url()).await
                {
                    let _ =
                        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {name} CASCADE")))
                            .execute(&mut conn)
                            .await;
                }
            });
        })
        .join();
    }
}

/// One upstream account of the pool: `(name, priority, concurrency)`; its mock key is `acct-<name>`.
pub type AccountSpec = (&'static str, i32, u32);

/// The seed file: one group, the accounts pointed at the mock, one user with `balance_usd`, one key.
pub fn seed(vendor_url: &str, accounts: &[AccountSpec], balance_usd: &str) -> Config {
    seed_with_user(vendor_url, accounts, balance_usd, "")
}

/// [`seed`] with more TOML lines for the user (e.g. `concurrency = 2`).
pub fn seed_with_user(
    vendor_url: &str,
    accounts: &[AccountSpec],
    balance_usd: &str,
    user_lines: &str,
) -> Config {
    let mut toml = String::from("[[groups]]\nname = \"default\"\nplatform = \"anthropic\"\n\n");
    for (name, priority, concurrency) in accounts {
        toml.push_str(&format!(
            "[[accounts]]\nname = \"{name}\"\nplatform = \"anthropic\"\ntype = \"apikey\"\napi_key = \"acct-{name}\"\n\
             base_url = \"{vendor_url}\"\npriority = {priority}\nconcurrency = {concurrency}\ngroups = [\"default\"]\n\n"
        ));
    }
    toml.push_str(&format!(
        "[[users]]\nemail = \"{USER}\"\nbalance_usd = \"{balance_usd}\"\n{user_lines}\n\n[[keys]]\nuser = \"{USER}\"\ngroup = \"default\"\nkey = \"{KEY}\"\nname = \"test\"\n"
    ));
    toml::from_str(&toml).expect("seed parses")
}

pub fn master_key() -> MasterKey {
    MasterKey::new([7u8; 32])
}

pub async fn open_store(url: &str) -> SqlStore {
    let mut o = StoreOptions::new(master_key());
    o.sweep_interval = None;
    SqlStore::connect_with(url, o).await.expect("connect")
}

/// Seeds the schema once (through its own connection), before any node loads accounts.
pub async fn seed_schema(db_url: &str, config: &Config) {
    let store = open_store(db_url).await;
    apply_seed(config, &store, &store).await.expect("seed");
    store.close().await;
}

/// A relay process: its own SQL pool, Redis hub, relay and HTTP server, and the admin API over
/// the same store (called in process), wired to announce key changes to the other nodes.
pub struct Node {
    pub relay: Relay,
    pub api: Api,
    pub cluster: RedisCluster,
    pub store: SqlStore,
    pub base: String,
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// The seeded user ([`USER`]).
    pub async fn user_id(&self) -> sub2api_core::domain::UserId {
        self.relay
            .parts()
            .directory
            .user_by_email(USER)
            .await
            .unwrap()
            .unwrap()
            .id
    }

    pub async fn start(db_url: &str, redis_url: &str, options: RedisOptions) -> Node {
        let store = open_store(db_url).await;
        let directory: Arc<dyn Directory> = Arc::new(store.clone());
        let accounts = Arc::new(
            MemoryAccountProvider::from_directory(directory.clone())
                .await
                .expect("accounts load"),
        );
        let cluster = sub2api_redis::connect(redis_url, accounts, options)
            .await
            .expect("redis connects");
        let prices = Arc::new(PriceTable::bundled());
        let meter = Arc::new(PricedMeter::new(prices.clone()));
        let parts = RelayParts {
            directory,
            accounts: cluster.accounts.clone(),
            scheduler: cluster.scheduler.clone(),
            ledger: Arc::new(store.clone()),
            usage_log: Arc::new(store.clone()),
            prices,
            meter,
            limiter: Some(Arc::new(cluster.limiter())),
        };
        let relay = Relay::new(parts, RelayConfig::default());
        let cache = relay.key_cache().clone();
        cluster.hub.on_key_invalidation(move |inv| match inv {
            sub2api_redis::KeyInvalidation::Key(h) => cache.invalidate(&h),
            sub2api_redis::KeyInvalidation::All => cache.clear(),
        });
        let mut api_parts = ApiParts::for_relay(&relay, Arc::new(store.clone()));
        api_parts.on_keys_changed = Some(cluster.hub.clone());
        let api = Api::new(api_parts, ApiConfig::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let router = sub2api_axum::router(&relay);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Node {
            relay,
            api,
            cluster,
            store,
            base: format!("http://{addr}"),
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            stop: Some(stop),
            server: Some(server),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// POSTs a Messages body with the test key; returns the status and the whole body.
    pub async fn send(&self, body: &Value) -> (u16, String, reqwest::header::HeaderMap) {
        let res = self
            .client
            .post(self.url("/v1/messages"))
            .header("x-api-key", KEY)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("relay answers");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        (status, res.text().await.unwrap_or_default(), headers)
    }

    pub async fn account(&self, name: &str) -> Account {
        let accounts = self.relay.parts().directory.accounts().await.unwrap();
        accounts
            .into_iter()
            .find(|a| a.name == name)
            .expect("account exists")
    }

    pub async fn account_id(&self, name: &str) -> AccountId {
        self.account(name).await.id
    }

    /// Stops accepting, lets open responses finish, waits for settlements, flushes the usage log.
    pub async fn stop(mut self) -> Node {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.server.take() {
            let _ = h.await;
        }
        self.relay.shutdown().await;
        self.cluster.hub.flush().await;
        self
    }
}

/// A minimal valid Messages body; each call differs, so requests are not tied together by the
/// relay's prefix-hash stickiness.
pub fn body(model: &str, max_tokens: u64, stream: bool) -> Value {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    json!({
        "model": model,
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": [{"role": "user", "content": format!("Hello there #{n} {:x}", rand::random::<u32>())}],
    })
}

/// A body carrying Claude Code's session id (JSON `metadata.user_id` form).
pub fn session_body(session: &str, stream: bool) -> Value {
    let mut b = body("claude-sonnet-4-5", 64, stream);
    b["metadata"] = json!({"user_id": json!({"device_id": "dev", "account_uuid": "", "session_id": session}).to_string()});
    b
}

/// Polls `check` until it holds or `limit` passes; returns how long it took. For effects that
/// have no signal to await (a lease expiring in Redis by itself).
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let start = tokio::time::Instant::now();
    loop {
        if check().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn mock_key(name: &str) -> String {
    format!("acct-{name}")
}

pub async fn vendor() -> MockVendor {
    MockVendor::start().await
}
