//! Assembles a complete relay from a [`Config`]: storage (SQLite by default, Postgres, or memory),
//! the master key, seeding, accounts, scheduler, pricing. Both server binaries boot through here.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sub2api_core::api::quota::QuotaLedger;
use sub2api_core::api::{AdminStore, Api, ApiConfig, KeysChanged, LiveMeter, PoolControl};
use sub2api_core::config::{Config, ConfigError, SeedReport, apply_seed};
use sub2api_core::domain::Secret;
use sub2api_core::layer::limit::{KeyLimiter, Limiter};
use sub2api_core::ledger::Ledger;
use sub2api_core::memory::{
    MemoryAccountProvider, MemoryDirectory, MemoryLedger, MemoryScheduler, MemoryUsageLog,
    SchedulerConfig,
};
use sub2api_core::pricing::PriceTable;
use sub2api_core::relay::{Relay, RelayParts};
use sub2api_core::store::{Directory, UsageLog};
use sub2api_sqlx::{MasterKey, SqlStore, StoreOptions};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("pricing file {0}: {1}")]
    Pricing(PathBuf, String),
    #[error("database: {0}")]
    Database(String),
    #[error("master key: {0}")]
    MasterKey(String),
    #[error("redis: {0}")]
    Redis(String),
}

/// A relay ready to serve, and what must be closed after it.
pub struct Booted {
    pub relay: Relay,
    /// The admin and user HTTP API over the same store (mount with `sub2api_axum::api::router`).
    pub api: Api,
    /// The admin key generated on this (first) start: show it once, only its hash is kept.
    pub generated_admin_key: Option<Secret>,
    /// The SQL store, when the database is not `memory`.
    pub store: Option<SqlStore>,
    pub seed: SeedReport,
    pub config: Config,
    /// The shared scheduler state, when `SUB2API_REDIS_URL` is set.
    pub cluster: Option<sub2api_redis::RedisCluster>,
}

impl Booted {
    /// Waits for drains and settlements, flushes the usage log and closes the database.
    pub async fn shutdown(&self) {
        self.relay.shutdown().await;
        if let Some(cluster) = &self.cluster {
            cluster.shutdown().await;
        }
        if let Some(store) = &self.store {
            store.close().await;
        }
    }
}

/// The master key: `SUB2API_MASTER_KEY`, else `master.key` in the data folder, else a new one
/// written there (with a loud warning: lose it and stored credentials cannot be decrypted).
pub fn master_key(data_dir: &Path) -> Result<MasterKey, BootError> {
    if let Ok(hex) = std::env::var("SUB2API_MASTER_KEY") {
        return MasterKey::from_hex(hex.trim())
            .map_err(|e| BootError::MasterKey(format!("SUB2API_MASTER_KEY: {e}")));
    }
    let path = data_dir.join("master.key");
    if let Ok(hex) = std::fs::read_to_string(&path) {
        return MasterKey::from_hex(hex.trim())
            .map_err(|e| BootError::MasterKey(format!("{}: {e}", path.display())));
    }
    std::fs::create_dir_all(data_dir).map_err(|e| BootError::MasterKey(e.to_string()))?;
    let key: [u8; 32] = rand::random();
    write_private(&path, &hex::encode(key))
        .map_err(|e| BootError::MasterKey(format!("{}: {e}", path.display())))?;
    tracing::warn!(
        path = %path.display(),
        "SUB2API_MASTER_KEY is not set: generated a new master key into {}. Back it up; without it the stored upstream credentials cannot be decrypted.",
        path.display()
    );
    MasterKey::from_hex(&hex::encode(key)).map_err(|e| BootError::MasterKey(e.to_string()))
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)?.write_all(text.as_bytes())
}

fn data_dir(database_url: &str) -> PathBuf {
    database_url
        .strip_prefix("sqlite://")
        .map(|p| p.split('?').next().unwrap_or(p))
        .and_then(|p| Path::new(p).parent().map(Path::to_path_buf))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("data"))
}

/// Builds the relay described by `config`.
pub async fn boot(config: Config) -> Result<Booted, BootError> {
    boot_with(config, None).await
}

/// [`boot`] with an explicit master key instead of `SUB2API_MASTER_KEY` / the key file (tests and
/// embedders that manage their own secrets).
pub async fn boot_with(config: Config, master: Option<MasterKey>) -> Result<Booted, BootError> {
    // Checked before anything touches the disk.
    let sqlite_full_sync = match config.sqlite_synchronous.as_deref() {
        None | Some("full" | "FULL") => true,
        Some("normal" | "NORMAL") => false,
        Some(other) => {
            return Err(BootError::Database(format!(
                "sqlite_synchronous is \"full\" or \"normal\", not {other:?}"
            )));
        }
    };
    let prices = match &config.pricing_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| BootError::Pricing(path.clone(), e.to_string()))?;
            PriceTable::from_litellm_json(&text)
                .map_err(|e| BootError::Pricing(path.clone(), e.to_string()))?
        }
        None => PriceTable::bundled(),
    };
    let prices = Arc::new(prices);
    let url = config.database_url().to_owned();
    let (admin, ledger, usage_log, store): (
        Arc<dyn AdminStore>,
        Arc<dyn Ledger>,
        Arc<dyn UsageLog>,
        _,
    ) = if url == "memory" || url == "memory://" {
        (
            Arc::new(MemoryDirectory::new()),
            Arc::new(MemoryLedger::new()),
            Arc::new(MemoryUsageLog::default()),
            None,
        )
    } else {
        let key = match master {
            Some(k) => k,
            None => master_key(&data_dir(&url))?,
        };
        let mut opts = StoreOptions::new(key);
        opts.sqlite_full_sync = sqlite_full_sync;
        let store = SqlStore::connect_with(&url, opts)
            .await
            .map_err(|e| BootError::Database(e.to_string()))?;
        let recovered = store
            .recover()
            .await
            .map_err(|e| BootError::Database(e.to_string()))?;
        tracing::info!(?recovered, "startup recovery done");
        (
            Arc::new(store.clone()),
            Arc::new(store.clone()),
            Arc::new(store.clone()),
            Some(store),
        )
    };
    let directory: Arc<dyn Directory> = admin.clone();
    let seed = apply_seed(&config, directory.as_ref(), ledger.as_ref()).await?;
    let api_config = ApiConfig::default();
    sub2api_core::api::setup::seed_passwords(&config, admin.as_ref(), api_config.password)
        .await
        .map_err(ConfigError::from)?;
    // Key quotas settle and release with the wallet holds.
    let ledger = QuotaLedger::wrap(ledger, directory.clone());
    // OAuth accounts renew their tokens through the `[oauth]` endpoints (single-flight per account).
    let token_client =
        sub2api_core::oauth::TokenClient::new(config.oauth.clone(), Default::default());
    let scheduler_config = SchedulerConfig {
        sticky_ttl: Duration::from_secs(config.relay.sticky_ttl_secs),
        max_sticky_sessions: config.relay.max_sticky_sessions,
        queue_wait: Duration::from_secs(config.relay.queue_wait_secs),
        ..Default::default()
    };
    let local_accounts = MemoryAccountProvider::from_directory(directory.clone())
        .await
        .map_err(ConfigError::from)?
        .with_oauth(token_client);
    // With Redis, sticky sessions, leases, cooldowns and the OAuth refresh lock are shared by every
    // node; without it they stay in process.
    let (accounts, scheduler, pool, cluster): (
        Arc<dyn sub2api_core::AccountProvider>,
        Arc<dyn sub2api_core::Scheduler>,
        Arc<dyn PoolControl>,
        Option<sub2api_redis::RedisCluster>,
    ) = match &config.redis_url {
        Some(url) => {
            let opts = sub2api_redis::RedisOptions {
                scheduler: scheduler_config,
                ..Default::default()
            };
            let hub = sub2api_redis::Hub::connect(url, opts)
                .await
                .map_err(|e| BootError::Redis(e.to_string()))?;
            let local = Arc::new(
                local_accounts
                    .with_refresh_lock(Arc::new(sub2api_redis::RedisRefreshLock::new(hub.clone()))),
            );
            let cluster = sub2api_redis::RedisCluster::new(hub, local)
                .await
                .map_err(|e| BootError::Redis(e.to_string()))?;
            tracing::info!("scheduler state shared through Redis");
            (
                cluster.accounts.clone(),
                cluster.scheduler.clone(),
                cluster.accounts.clone(),
                Some(cluster),
            )
        }
        None => {
            let local = Arc::new(local_accounts);
            let scheduler = Arc::new(MemoryScheduler::with_config(
                local.clone(),
                scheduler_config,
            ));
            (local.clone(), scheduler, local, None)
        }
    };
    // The price table can be replaced over the API; a replaced one outlives restarts.
    let live = Arc::new(LiveMeter::new(prices.clone(), config.relay.hold_policy()));
    if let Some(stored) = sub2api_core::api::setup::stored_prices(admin.as_ref())
        .await
        .map_err(ConfigError::from)?
    {
        live.replace(stored);
    }
    let meter: Arc<dyn sub2api_core::meter::Meter> = live.clone();
    // Key and user limits count across the cluster with Redis (a user limited to 2 must not get
    // 2 per node), in process without it; either way a busy slot is waited for as long as an
    // account slot.
    let queue_wait = Duration::from_secs(config.relay.queue_wait_secs);
    let limiter: Arc<dyn Limiter> = match &cluster {
        Some(c) => {
            let mut l = c.limiter();
            l.max_wait = queue_wait;
            Arc::new(l)
        }
        None => Arc::new(KeyLimiter::new(64, queue_wait)),
    };
    let parts = RelayParts {
        directory,
        accounts,
        scheduler,
        ledger,
        usage_log,
        prices,
        meter,
        limiter: Some(limiter),
    };
    let relay = Relay::new(parts, config.relay.relay_config());
    if let Some(cluster) = &cluster {
        // A key disabled on one node is forgotten by every node's cache at once.
        let cache = relay.key_cache().clone();
        cluster.hub.on_key_invalidation(move |i| match i {
            sub2api_redis::KeyInvalidation::Key(h) => cache.invalidate(&h),
            sub2api_redis::KeyInvalidation::All => cache.clear(),
        });
    }
    let admin_key =
        sub2api_core::api::setup::admin_key(admin.as_ref(), config.admin_key.as_deref())
            .await
            .map_err(ConfigError::from)?;
    // Top-ups: orders in the same store, credits through the relay's ledger; a background sweep
    // expires unpaid orders once their provider confirms them unpaid.
    let payments = match config.payments.clone().filter(|p| p.any_provider()) {
        Some(pc) => {
            let pay_store: Arc<dyn sub2api_core::payment::PaymentStore> = match &store {
                Some(s) => Arc::new(s.clone()),
                None => Arc::new(sub2api_core::payment::service::MemoryPaymentStore::new()),
            };
            let http = sub2api_core::layer::upstream::Upstream::default_client();
            // Plan orders grant (or extend) the subscription once per order, in the admin store.
            let p = sub2api_core::payment::Payments::from_config(
                pc,
                pay_store,
                relay.parts().ledger.clone(),
                http,
            )
            .map_err(ConfigError::Seed)?
            .with_plans(Arc::new(sub2api_core::api::payments::AdminPlans(
                admin.clone(),
            )));
            p.spawn_sweeper();
            Some(p)
        }
        None => None,
    };
    let mut api_parts = sub2api_core::api::setup::parts(&relay, admin, Some(pool), Some(live));
    // An operator's change on this node reaches every node's key cache.
    api_parts.on_keys_changed = cluster
        .as_ref()
        .map(|c| c.hub.clone() as Arc<dyn KeysChanged>);
    let api = Api::new(
        api_parts,
        ApiConfig {
            admin_key_sha256: Some(admin_key.sha256),
            payments,
            ..api_config
        },
    );
    Ok(Booted {
        relay,
        api,
        generated_admin_key: admin_key.generated,
        store,
        seed,
        config,
        cluster,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sub2api_core::domain::{GroupId, UserId};
    use sub2api_core::ledger::{Charge, HoldRequest};
    use sub2api_core::money::Money;

    fn config(dir: &Path, sync: Option<&str>) -> Config {
        Config {
            database_url: Some(format!("sqlite://{}/relay.db", dir.display())),
            sqlite_synchronous: sync.map(str::to_owned),
            ..Config::default()
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sub2api-boot-{name}-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn an_unknown_sqlite_synchronous_is_refused_before_anything_is_written() {
        let dir = temp_dir("bad-sync");
        let key = MasterKey::from_hex(&"11".repeat(32)).unwrap();
        let err = boot_with(config(&dir, Some("sometimes")), Some(key))
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("sqlite_synchronous"), "{err}");
        assert!(!dir.join("relay.db").exists(), "nothing was created");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn both_synchronous_levels_hold_and_settle_through_the_ledger_writer() {
        for sync in ["full", "normal"] {
            let dir = temp_dir(sync);
            let key = MasterKey::from_hex(&"22".repeat(32)).unwrap();
            let booted = boot_with(config(&dir, Some(sync)), Some(key))
                .await
                .unwrap();
            let store = booted.store.clone().expect("a SQL store");
            let user = store
                .create_user(sub2api_core::api::store::NewUser {
                    email: format!("{sync}@example.com"),
                    password_hash: None,
                    is_admin: false,
                    limits: Default::default(),
                })
                .await
                .unwrap()
                .id;
            credit(&store, user).await;
            let hold = store
                .reserve(HoldRequest {
                    request_id: format!("r-{sync}"),
                    user_id: user,
                    group_id: GroupId(1),
                    amount: Money::usd(1),
                })
                .await
                .unwrap();
            let s = store
                .settle(Charge {
                    request_id: hold.request_id,
                    user_id: user,
                    group_id: GroupId(1),
                    amount: Money::from_nanos(250_000_000),
                })
                .await
                .unwrap();
            assert!(!s.replayed);
            let b = store.balance(user).await.unwrap();
            assert_eq!(
                (b.total, b.held),
                (Money::from_nanos(1_750_000_000), Money::ZERO)
            );
            assert_eq!(store.writer_stats().fallbacks, 0);
            assert!(store.verify_ledger().await.unwrap().is_empty());
            booted.shutdown().await;
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    async fn credit(store: &SqlStore, user: UserId) {
        store
            .credit(sub2api_core::ledger::Credit {
                user_id: user,
                amount: Money::usd(2),
                idempotency_key: "seed".into(),
                kind: sub2api_core::ledger::EntryKind::Credit,
                memo: String::new(),
            })
            .await
            .unwrap();
    }
}
