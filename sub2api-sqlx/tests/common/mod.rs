//! Test support: every test runs once on SQLite (a fresh temp file) and once on Postgres (a fresh
//! schema in the `test` database, selected through the connection's `search_path`), so tests run
//! in parallel without seeing each other. Both are removed when the [`TestDb`] drops, even if the
//! test panicked.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use sub2api_core::domain::{GroupId, Platform, UserId};
use sub2api_core::ledger::{Credit, EntryKind, Ledger};
use sub2api_core::money::{Money, Multiplier};
use sub2api_core::store::{Directory, NewGroup};
use sub2api_sqlx::{Clock, MasterKey, SqlStore, StoreOptions};

pub const TEST_KEY: [u8; 32] = [7u8; 32];

/// The Postgres server tests use (trust auth); override with `SUB2API_TEST_PG_URL`.
pub fn pg_base_url() -> String {
    std::env::var("SUB2API_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

pub struct TestDb {
    pub kind: Kind,
    pub url: String,
    dir: Option<PathBuf>,
    schema: Option<String>,
}

fn random_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl TestDb {
    pub async fn new(kind: Kind) -> TestDb {
        match kind {
            Kind::Sqlite => {
                let dir = std::env::temp_dir().join(format!("sub2api-sqlx-{}", random_suffix()));
                // A nested folder that does not exist yet: connect must create it.
                let url = format!("sqlite://{}/nested/sub2api.db", dir.display());
                TestDb {
                    kind,
                    url,
                    dir: Some(dir),
                    schema: None,
                }
            }
            Kind::Postgres => {
                let schema = format!("t_{}", random_suffix());
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&pg_base_url())
                    .await
                    .expect("Postgres must be running for the tests (see .ci/run)");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                let url = format!("{}?options=-csearch_path%3D{schema}", pg_base_url());
                TestDb {
                    kind,
                    url,
                    dir: None,
                    schema: Some(schema),
                }
            }
        }
    }

    pub fn options(&self) -> StoreOptions {
        let mut o = StoreOptions::new(MasterKey::new(TEST_KEY));
        o.sweep_interval = None;
        o
    }

    pub async fn open(&self) -> SqlStore {
        self.open_with(self.options()).await
    }

    pub async fn open_with(&self, opts: StoreOptions) -> SqlStore {
        SqlStore::connect_with(&self.url, opts)
            .await
            .expect("connect")
    }

    pub async fn open_with_clock(&self, clock: Arc<dyn Clock>) -> SqlStore {
        let mut o = self.options();
        o.clock = clock;
        self.open_with(o).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(schema) = self.schema.take() {
            // Drop runs inside the test's runtime: do the async cleanup on a thread of its own.
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

/// Runs a test body once per backend: `both!(name, body_fn)` makes `name::sqlite` and
/// `name::postgres`.
#[macro_export]
macro_rules! both {
    ($name:ident, $body:path) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = super::common::TestDb::new(super::common::Kind::Sqlite).await;
                $body(&db).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let db = super::common::TestDb::new(super::common::Kind::Postgres).await;
                $body(&db).await;
            }
        }
    };
}

pub fn usd(s: &str) -> Money {
    Money::parse_usd(s).unwrap()
}

pub async fn group(store: &SqlStore, name: &str) -> GroupId {
    store
        .upsert_group(NewGroup {
            name: name.into(),
            platform: Platform::Anthropic,
            rate_multiplier: Multiplier::ONE,
        })
        .await
        .unwrap()
        .id
}

/// A user with an opening balance credited the way seeding does it.
pub async fn funded_user(store: &SqlStore, email: &str, balance: Money) -> UserId {
    let (user, _) = store.ensure_user(email).await.unwrap();
    if balance != Money::ZERO {
        store
            .credit(Credit {
                user_id: user.id,
                amount: balance,
                idempotency_key: format!("seed:{email}"),
                kind: EntryKind::Credit,
                memo: "seed".into(),
            })
            .await
            .unwrap();
    }
    user.id
}

pub async fn assert_books_balance(store: &SqlStore) {
    let bad = store.verify_ledger().await.unwrap();
    assert!(bad.is_empty(), "ledger mismatches: {bad:?}");
    let bad = store.verify_subscription_holds().await.unwrap();
    assert!(bad.is_empty(), "subscription hold mismatches: {bad:?}");
}
