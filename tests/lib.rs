//! Test harness for the end-to-end suites in `tests/`: a mock vendor, a relay booted through
//! the same path as the `sub2api` binary, served on an ephemeral port, and helpers to talk to it.

use serde_json::{Value, json};
use std::net::SocketAddr;
use sub2api_axum::boot::{Booted, boot_with};
use sub2api_axum::mock::MockVendor;
use sub2api_core::config::{AccountSeed, Config, GroupSeed, KeySeed, RelaySection, UserSeed};
use sub2api_core::domain::{Account, AccountKind, Platform, UsageRecord};
use sub2api_core::ledger::Balance;
use sub2api_core::money::{Money, Multiplier};
use sub2api_core::relay::Relay;
use sub2api_core::store::UsageQuery;

pub use sub2api_axum::mock;

/// Which HTTP stack serves the relay. Every end-to-end test runs on each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adapter {
    Axum,
    Actix,
}

pub const ADAPTERS: &[Adapter] = &[Adapter::Axum, Adapter::Actix];

/// One upstream account of the test pool; its key is what the mock sees.
#[derive(Clone, Debug)]
pub struct AccountSpec {
    pub name: String,
    pub key: String,
    pub priority: i32,
    pub concurrency: u32,
}

impl AccountSpec {
    pub fn new(i: usize) -> Self {
        AccountSpec {
            name: format!("a{i}"),
            key: format!("acct-{i}"),
            priority: 50,
            concurrency: 4,
        }
    }
}

/// What to seed.
#[derive(Clone, Debug)]
pub struct Spec {
    pub accounts: Vec<AccountSpec>,
    pub balance: Money,
    pub multiplier: Multiplier,
    pub relay: RelaySection,
    pub database_url: String,
    pub key_concurrency: Option<u32>,
    pub key_rpm: Option<u32>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            accounts: (1..=3).map(AccountSpec::new).collect(),
            balance: Money::usd(10),
            multiplier: Multiplier::ONE,
            relay: RelaySection::default(),
            database_url: "memory".into(),
            key_concurrency: None,
            key_rpm: None,
        }
    }
}

pub const USER: &str = "alice@example.com";
pub const KEY: &str = "sk-test-alice";

/// A running relay in front of a running mock vendor.
pub struct Harness {
    pub vendor: MockVendor,
    pub booted: Booted,
    pub base: String,
    pub client: reqwest::Client,
    pub adapter: Adapter,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    actix: Option<sub2api_actix::ActixServer>,
}

pub fn config_for(spec: &Spec, vendor_url: &str) -> Config {
    Config {
        database_url: Some(spec.database_url.clone()),
        relay: spec.relay.clone(),
        groups: vec![GroupSeed {
            name: "default".into(),
            platform: Platform::Anthropic,
            rate_multiplier: spec.multiplier,
        }],
        accounts: spec
            .accounts
            .iter()
            .map(|a| AccountSeed {
                name: a.name.clone(),
                platform: Platform::Anthropic,
                kind: AccountKind::Apikey,
                api_key: Some(a.key.clone()),
                access_token: None,
                base_url: Some(vendor_url.to_owned()),
                priority: a.priority,
                concurrency: a.concurrency,
                groups: vec!["default".into()],
                ..AccountSeed::new(&a.name, Platform::Anthropic, AccountKind::Apikey)
            })
            .collect(),
        users: vec![UserSeed {
            email: USER.into(),
            balance_usd: spec.balance,
            password: None,
            concurrency: None,
            rpm: None,
        }],
        keys: vec![KeySeed {
            user: USER.into(),
            group: "default".into(),
            key: Some(KEY.into()),
            name: Some("test".into()),
            concurrency: spec.key_concurrency,
            rpm: spec.key_rpm,
        }],
        ..Config::default()
    }
}

impl Harness {
    pub async fn start(adapter: Adapter, spec: Spec) -> Harness {
        let vendor = MockVendor::start().await;
        Self::start_with_vendor(adapter, spec, vendor).await
    }

    pub async fn start_with_vendor(adapter: Adapter, spec: Spec, vendor: MockVendor) -> Harness {
        let config = config_for(&spec, &vendor.base_url());
        Self::start_with_config(adapter, config, vendor).await
    }

    /// A relay booted from any `config` (groups and accounts of every platform) in front of `vendor`.
    pub async fn start_with_config(
        adapter: Adapter,
        config: Config,
        vendor: MockVendor,
    ) -> Harness {
        let key = sub2api_sqlx::MasterKey::new([7u8; 32]);
        let booted = boot_with(config, Some(key)).await.expect("relay boots");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (server, actix) = match adapter {
            Adapter::Axum => {
                let router = sub2api_axum::router(&booted.relay);
                let server = tokio::spawn(async move {
                    axum::serve(sub2api_axum::no_delay(listener), router)
                        .with_graceful_shutdown(async move {
                            let _ = stopped.await;
                        })
                        .await
                        .unwrap();
                });
                (Some(server), None)
            }
            Adapter::Actix => {
                let std_listener = listener.into_std().unwrap();
                std_listener.set_nonblocking(false).unwrap();
                let server =
                    sub2api_actix::spawn(booted.relay.clone(), std_listener).expect("actix starts");
                (None, Some(server))
            }
        };
        Harness {
            vendor,
            booted,
            base: format!("http://{addr}"),
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            adapter,
            stop: Some(stop),
            server,
            actix,
        }
    }

    pub fn relay(&self) -> &Relay {
        &self.booted.relay
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// POSTs a Messages body with the test key.
    pub async fn messages(&self, body: &Value) -> reqwest::Response {
        self.messages_as(KEY, body).await
    }

    pub async fn messages_as(&self, key: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/messages"))
            .header("x-api-key", key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("relay answers")
    }

    pub async fn user_id(&self) -> sub2api_core::domain::UserId {
        self.booted
            .relay
            .parts()
            .directory
            .user_by_email(USER)
            .await
            .unwrap()
            .unwrap()
            .id
    }

    pub async fn balance(&self) -> Balance {
        let id = self.user_id().await;
        self.booted.relay.parts().ledger.balance(id).await.unwrap()
    }

    pub async fn usage_records(&self) -> Vec<UsageRecord> {
        let log = &self.booted.relay.parts().usage_log;
        log.flush().await.unwrap();
        log.query(&UsageQuery {
            limit: 10_000,
            ..Default::default()
        })
        .await
        .unwrap()
    }

    pub async fn account(&self, name: &str) -> Account {
        let accounts = self
            .booted
            .relay
            .parts()
            .directory
            .accounts()
            .await
            .unwrap();
        accounts
            .into_iter()
            .find(|a| a.name == name)
            .expect("account exists")
    }

    /// Stops accepting, lets open responses finish, then waits for every drain and settlement.
    pub async fn stop(mut self) -> Booted {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.server.take() {
            let _ = h.await;
        }
        if let Some(a) = self.actix.take() {
            a.stop(true).await;
        }
        self.booted.shutdown().await;
        self.booted
    }
}

/// The test user's wallet in a relay that has been stopped (settlements all committed).
pub async fn wallet(booted: &Booted) -> Balance {
    let parts = booted.relay.parts();
    let user = parts
        .directory
        .user_by_email(USER)
        .await
        .unwrap()
        .unwrap()
        .id;
    parts.ledger.balance(user).await.unwrap()
}

/// A minimal valid Messages body. Each call gets a different first message, so requests without
/// a session id are not tied together by the relay's prefix-hash stickiness.
pub fn body(model: &str, max_tokens: u64, stream: bool) -> Value {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    json!({
        "model": model,
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": [{"role": "user", "content": format!("Hello there #{n}")}],
    })
}

/// A body carrying Claude Code's session id in the JSON `metadata.user_id` form.
pub fn session_body(session: &str, stream: bool) -> Value {
    let mut b = body("claude-sonnet-4-5", 256, stream);
    b["metadata"] = json!({"user_id": json!({"device_id": "dev", "account_uuid": "", "session_id": session}).to_string()});
    b
}

/// Reads a whole response body.
pub async fn text(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    (status, res.text().await.unwrap_or_default())
}

/// The mock's usage override with every billable field.
pub fn usage(
    input: u64,
    write_5m: u64,
    write_1h: u64,
    read: u64,
    output: u64,
) -> mock::usage::Usage {
    mock::usage::Usage {
        input_tokens: input,
        output_tokens: output,
        cache_creation_input_tokens: write_5m + write_1h,
        cache_read_input_tokens: read,
        cache_creation: mock::usage::CacheCreation {
            ephemeral_5m_input_tokens: write_5m,
            ephemeral_1h_input_tokens: write_1h,
        },
        server_tool_use: None,
    }
}

/// Parses SSE text into (event, data) pairs.
pub fn sse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|frame| {
            let mut event = None;
            let mut data = None;
            for line in frame.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = Some(e.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).ok();
                }
            }
            Some((event?, data?))
        })
        .collect()
}

/// Where a durable test keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    Memory,
    Sqlite,
    Postgres,
}

pub const DURABLE: &[Storage] = &[Storage::Sqlite, Storage::Postgres];

/// The Postgres server the tests use (trust auth); override with `SUB2API_TEST_PG_URL`.
pub fn pg_base_url() -> String {
    std::env::var("SUB2API_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh database for one test: a SQLite file in its own temp folder, or a Postgres schema of
/// its own (selected through `search_path`), removed on drop.
pub struct TestDb {
    pub url: String,
    dir: Option<std::path::PathBuf>,
    schema: Option<String>,
}

impl TestDb {
    pub async fn new(storage: Storage) -> TestDb {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        match storage {
            Storage::Memory => TestDb {
                url: "memory".into(),
                dir: None,
                schema: None,
            },
            Storage::Sqlite => {
                let dir = std::env::temp_dir().join(format!("sub2api-e2e-{suffix}"));
                TestDb {
                    url: format!("sqlite://{}/sub2api.db", dir.display()),
                    dir: Some(dir),
                    schema: None,
                }
            }
            Storage::Postgres => {
                let schema = format!("e2e_{}", &suffix[..16]);
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&pg_base_url())
                    .await
                    .expect("Postgres must be running for the tests (see .ci/run)");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                let url = format!("{}?options=-csearch_path%3D{schema}", pg_base_url());
                TestDb {
                    url,
                    dir: None,
                    schema: Some(schema),
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(schema) = self.schema.take() {
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    if let Ok(mut conn) =
                        <sqlx::PgConnection as sqlx::Connection>::connect(&pg_base_url()).await
                    {
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                            "DROP SCHEMA {schema} CASCADE"
                        )))
                        .execute(&mut conn)
                        .await;
                    }
                });
            })
            .join();
        }
    }
}
