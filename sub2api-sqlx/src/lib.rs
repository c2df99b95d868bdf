//! # sub2api-sqlx
//!
//! The durable [`Ledger`](sub2api_core::Ledger), [`Directory`](sub2api_core::store::Directory) and
//! [`UsageLog`](sub2api_core::store::UsageLog) of sub2api-rs, on SQLite (the embedded default: one
//! file, no server) or Postgres (several relay processes sharing one database).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use sub2api_sqlx::{MasterKey, SqlStore, StoreOptions};
//! let store = SqlStore::connect_with(
//!     "sqlite://data/sub2api.db",
//!     StoreOptions::new(MasterKey::from_hex(&std::env::var("SUB2API_MASTER_KEY")?)?),
//! )
//! .await?;
//! store.recover().await?; // give back the holds of requests a previous process left behind
//! // ... serve ...
//! store.close().await; // flush usage rows, wait for queued settlements
//! # Ok(()) }
//! ```
//!
//! Modules, by domain concept: [`ledger`] (wallets, holds, the journal), [`batch`] (group commit of
//! holds and
//! settlements), [`recovery`] (holds of dead requests), [`subscriptions`] (plans and windows),
//! [`redeem`] (codes), [`orders`] (payment orders), [`directory`] (groups, accounts, users, keys),
//! [`usage_log`] (batched usage rows), [`crypto`] (credentials at rest).
//!
//! Migrations live in `migrations/sqlite` and `migrations/postgres` and are applied by
//! [`SqlStore::connect_with`].

pub mod admin;
pub mod batch;
mod checkpoint;
pub mod clock;
pub mod crypto;
mod db;
mod direct;
pub mod directory;
pub mod ledger;
pub mod orders;
pub mod recovery;
pub mod redeem;
pub mod subscriptions;
pub mod usage_log;

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sub2api_core::store::StoreError;
use tokio::task::JoinHandle;

pub use batch::WriterStats;
pub use clock::{Clock, ManualClock, SystemClock};
pub use crypto::{CryptoError, MasterKey};
pub use db::Backend;
pub use ledger::{LedgerMismatch, SubscriptionHoldMismatch};
pub use orders::{NewOrder, OrderKind, OrderRecord};
pub use recovery::RecoveryReport;
pub use redeem::{
    GeneratedCodes, RedeemBatch, RedeemCode, RedeemError, RedeemStatus, RedeemValue, Redeemed,
};
pub use subscriptions::{
    NewPlan, Plan, PlanId, Subscription, SubscriptionId, SubscriptionUsage, WindowUsage,
};

use batch::Writer;
use db::Pool;
use usage_log::UsageWriter;

/// How a [`SqlStore`] is set up. Build with [`StoreOptions::new`] and adjust fields.
#[derive(Clone)]
pub struct StoreOptions {
    /// Encrypts upstream credentials. Without one, accounts' credentials can be neither stored
    /// nor read (everything else works).
    pub master_key: Option<MasterKey>,
    /// How long a hold lives before the sweeper releases it. Must exceed the longest request.
    pub hold_ttl: Duration,
    /// How often expired holds are released; `None` disables the background sweeper.
    pub sweep_interval: Option<Duration>,
    /// Connection pool size (SQLite: readers; writes are serialised by the database anyway).
    pub max_connections: u32,
    /// The most holds, settlements and releases the ledger writer takes into one round.
    pub settle_batch: usize,
    /// The most usage rows written in one transaction.
    pub usage_batch: usize,
    /// Usage rows that may wait in memory before `record` waits for the writer.
    pub usage_queue: usize,
    /// This store's name on the holds it takes; random when `None`. Give each node a stable one
    /// on Postgres to be able to release a dead node's holds by name.
    pub instance_id: Option<String>,
    /// SQLite `synchronous`: `true` (FULL, the default) makes every commit survive power loss;
    /// `false` (NORMAL) survives process crashes only.
    pub sqlite_full_sync: bool,
    /// Where "now" comes from.
    pub clock: Arc<dyn Clock>,
}

impl StoreOptions {
    pub fn new(master_key: impl Into<MasterKey>) -> Self {
        StoreOptions {
            master_key: Some(master_key.into()),
            ..Self::without_master_key()
        }
    }

    /// Options for a store that holds no upstream credentials (tools, tests of the ledger).
    pub fn without_master_key() -> Self {
        StoreOptions {
            master_key: None,
            hold_ttl: Duration::from_secs(15 * 60),
            sweep_interval: Some(Duration::from_secs(60)),
            max_connections: 8,
            settle_batch: 256,
            usage_batch: 512,
            usage_queue: 16_384,
            instance_id: None,
            sqlite_full_sync: true,
            clock: Arc::new(SystemClock),
        }
    }
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field(
                "master_key",
                &self.master_key.as_ref().map(|_| "[redacted]"),
            )
            .field("hold_ttl", &self.hold_ttl)
            .field("sweep_interval", &self.sweep_interval)
            .field("max_connections", &self.max_connections)
            .field("settle_batch", &self.settle_batch)
            .field("usage_batch", &self.usage_batch)
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("unsupported database URL `{0}` (sqlite://path or postgres://...)")]
    UnsupportedUrl(String),
    #[error("cannot create the database folder: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot connect to the database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("cannot migrate the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// What the background workers share with the store.
pub(crate) struct Shared {
    pub(crate) pool: Pool,
    pub(crate) master_key: Option<MasterKey>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) instance_id: String,
    pub(crate) hold_ttl_ms: i64,
    /// On a SQLite file with `synchronous = FULL`, the WAL file: the ledger writer commits with
    /// `NORMAL` and fsyncs this file itself before answering settlements (see [`crate::batch`]).
    pub(crate) wal_sync: Option<std::path::PathBuf>,
    /// A SQLite file: the ledger writer keeps a connection of its own to it (see
    /// [`crate::direct`]) and also writes the usage log, so that no two writers of this process
    /// meet in SQLite's busy handler (which sleeps).
    pub(crate) writer_file: Option<std::path::PathBuf>,
}

struct Inner {
    shared: Arc<Shared>,
    writer: Writer,
    usage: UsageWriter,
    sweeper: Mutex<Option<JoinHandle<()>>>,
    checkpointer: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    /// Request ids this process holds key quota for. Settling and releasing quota is asked for on
    /// every request; the request that took a quota hold is always settled by the process that
    /// took it (a dead process's quota holds expire), so a miss here saves a database round trip
    /// per request for the keys that have no quota.
    pub(crate) quota_holds: Mutex<std::collections::HashSet<String>>,
}

impl Inner {
    fn stop_background(&self) {
        for task in [&self.sweeper, &self.checkpointer] {
            if let Some(h) = task.lock().unwrap_or_else(|e| e.into_inner()).take() {
                h.abort();
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_background();
    }
}

/// The SQL store: ledger, directory and usage log over one connection pool. Cheap to clone.
#[derive(Clone)]
pub struct SqlStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &self.backend())
            .field("instance_id", &self.instance_id())
            .finish()
    }
}

pub(crate) fn store_err(e: sqlx::Error) -> StoreError {
    if db::is_unique_violation(&e) {
        StoreError::Conflict(e.to_string())
    } else {
        StoreError::Unavailable(e.to_string())
    }
}

fn is_sqlite_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

async fn open_sqlite(url: &str, opts: &StoreOptions) -> Result<Pool, ConnectError> {
    let memory = is_sqlite_memory(url);
    let mut o = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(30))
        .synchronous(if opts.sqlite_full_sync {
            SqliteSynchronous::Full
        } else {
            SqliteSynchronous::Normal
        });
    if !memory {
        if let Some(parent) = o.get_filename().parent()
            && !parent.as_os_str().is_empty()
            && !Path::new(parent).exists()
        {
            std::fs::create_dir_all(parent)?;
        }
        o = o.journal_mode(SqliteJournalMode::Wal);
    }
    let pool = if memory {
        // One connection: every connection to `:memory:` would be a different database.
        SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(o)
            .await?
    } else {
        SqlitePoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .connect_with(o)
            .await?
    };
    sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
    Ok(Pool::Sqlite(pool))
}

async fn open_pg(url: &str, opts: &StoreOptions) -> Result<Pool, ConnectError> {
    let o = PgConnectOptions::from_str(url)?;
    let pool = PgPoolOptions::new()
        .max_connections(opts.max_connections.max(1))
        .connect_with(o)
        .await?;
    sqlx::migrate!("./migrations/postgres").run(&pool).await?;
    Ok(Pool::Pg(pool))
}

impl SqlStore {
    /// Connects with default options and no master key (see [`StoreOptions::without_master_key`]).
    pub async fn connect(url: &str) -> Result<SqlStore, ConnectError> {
        Self::connect_with(url, StoreOptions::without_master_key()).await
    }

    /// Opens `sqlite://path` (creating the file and its folder; WAL, busy timeout, foreign keys)
    /// or `postgres://…`, applies migrations, and starts the ledger writer, the usage writer
    /// and the hold sweeper. Must be called inside a Tokio runtime.
    pub async fn connect_with(url: &str, opts: StoreOptions) -> Result<SqlStore, ConnectError> {
        let pool = if url.starts_with("sqlite:") {
            open_sqlite(url, &opts).await?
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            open_pg(url, &opts).await?
        } else {
            return Err(ConnectError::UnsupportedUrl(url.to_owned()));
        };
        let wal_sync = match &pool {
            Pool::Sqlite(_) if opts.sqlite_full_sync && !is_sqlite_memory(url) => {
                let file = SqliteConnectOptions::from_str(url)?
                    .get_filename()
                    .to_owned();
                let mut wal = file.into_os_string();
                wal.push("-wal");
                Some(std::path::PathBuf::from(wal))
            }
            _ => None,
        };
        let writer_file = match &pool {
            Pool::Sqlite(_) if !is_sqlite_memory(url) => Some(
                SqliteConnectOptions::from_str(url)?
                    .get_filename()
                    .to_owned(),
            ),
            _ => None,
        };
        let instance_id = opts
            .instance_id
            .clone()
            .unwrap_or_else(|| format!("inst-{:016x}", rand::rng().random::<u64>()));
        let shared = Arc::new(Shared {
            pool,
            master_key: opts.master_key.clone(),
            clock: opts.clock.clone(),
            instance_id,
            hold_ttl_ms: i64::try_from(opts.hold_ttl.as_millis()).unwrap_or(i64::MAX),
            wal_sync,
            writer_file,
        });
        let writer = Writer::spawn(shared.clone(), opts.settle_batch);
        let usage = UsageWriter::spawn(
            shared.clone(),
            shared.writer_file.is_some().then(|| writer.clone()),
            opts.usage_batch,
            opts.usage_queue,
        );
        // The WAL is copied back into the database in the background (see `checkpoint`).
        let checkpointer = shared
            .writer_file
            .is_some()
            .then(|| checkpoint::spawn(shared.clone(), writer.clone()));
        let sweeper = opts.sweep_interval.map(|every| {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(e) = recovery::sweep(&shared, recovery::Sweep::Expired).await {
                        tracing::warn!(error = %e, "hold sweep failed");
                    }
                }
            })
        });
        Ok(SqlStore {
            inner: Arc::new(Inner {
                shared,
                writer,
                usage,
                sweeper: Mutex::new(sweeper),
                checkpointer: Mutex::new(checkpointer),
                closed: AtomicBool::new(false),
                quota_holds: Mutex::default(),
            }),
        })
    }

    /// Whether this process took a key quota hold for `request_id` (and forgets it).
    pub(crate) fn forget_quota_hold(&self, request_id: &str) -> bool {
        self.inner
            .quota_holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(request_id)
    }

    pub(crate) fn remember_quota_hold(&self, request_id: &str) {
        self.inner
            .quota_holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(request_id.to_owned());
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.inner.shared.clock.now_ms()
    }

    pub fn backend(&self) -> Backend {
        self.inner.shared.pool.backend()
    }

    /// The name this store puts on the holds it takes.
    pub fn instance_id(&self) -> &str {
        &self.inner.shared.instance_id
    }

    /// What the ledger writer has done so far (group commit efficiency, failed batches).
    pub fn writer_stats(&self) -> batch::WriterStats {
        self.inner.writer.stats()
    }

    /// Waits until every settlement queued so far has committed.
    pub async fn drain_settlements(&self) {
        self.inner.writer.drain().await
    }

    /// Shuts down: waits for queued settlements to commit, flushes the usage log, stops the
    /// sweeper and closes the pool. Later calls on any clone fail as unavailable.
    pub async fn close(&self) {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        // Usage rows first: on a SQLite file the ledger writer writes them.
        if let Err(e) = self.inner.usage.flush().await {
            tracing::error!(error = %e, "usage log flush failed at shutdown");
        }
        self.inner.writer.close().await;
        self.inner.stop_background();
        self.inner.shared.pool.close().await;
    }
}
