//! Upgrading a SQLite file across the migrations that rebuild tables (0070 `holds`, 0080
//! `ledger_entries`): every row and id survives, the books still balance, and the new keys hold.

mod common;

use common::{Kind, TestDb};
use sqlx::Row as _;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

/// Journal rows as `(id, user, kind, ref, amount, balance_delta, held_delta)`.
type Entries = Vec<(i64, i64, String, String, i64, i64, i64)>;

async fn entries(pool: &sqlx::SqlitePool, up_to: i64) -> Entries {
    sqlx::query(
        "SELECT id, user_id, kind, ref, amount, balance_delta, held_delta FROM ledger_entries \
         WHERE id <= ? ORDER BY id",
    )
    .bind(up_to)
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get(0),
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
            r.get(5),
            r.get(6),
        )
    })
    .collect()
}

#[tokio::test]
async fn rebuilt_tables_keep_every_row() {
    let db = TestDb::new(Kind::Sqlite).await;
    let file = db.url.trim_start_matches("sqlite://").to_owned();
    std::fs::create_dir_all(std::path::Path::new(&file).parent().unwrap()).unwrap();
    let opts = SqliteConnectOptions::new()
        .filename(&file)
        .create_if_missing(true)
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .connect_with(opts.clone())
        .await
        .unwrap();
    sqlx::migrate!("./migrations/sqlite")
        .run_to(60, &pool)
        .await
        .unwrap();
    // A book as an older version left it: a credit, a settled request, and one in flight.
    sqlx::raw_sql(
        "INSERT INTO users (id, email, created_at) VALUES (1, 'old@example.com', 1);
         INSERT INTO groups (id, name, platform, rate_multiplier_ppm, created_at, updated_at)
             VALUES (1, 'g', 'anthropic', 1000000, 1, 1);
         INSERT INTO wallets (user_id, balance, held, updated_at) VALUES (1, 995, 100, 1);
         INSERT INTO ledger_entries (id, user_id, kind, ref, amount, balance_delta, held_delta,
                                     balance_after, group_id, memo, created_at) VALUES
             (7, 1, 'credit', 'seed:old', 1000, 1000, 0, 1000, NULL, 'seed', 1),
             (8, 1, 'hold', 'req-a', 50, 0, 50, NULL, 1, '', 2),
             (9, 1, 'settle', 'req-a', 5, -5, -50, 995, 1, '', 3),
             (12, 1, 'hold', 'req-b', 100, 0, 100, NULL, 1, '', 4);
         INSERT INTO holds (request_id, user_id, group_id, amount, wallet_amount,
                            subscription_amount, instance_id, created_at, expires_at)
             VALUES ('req-b', 1, 1, 100, 100, 0, 'inst-old', 4, 9999999999999);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let before = entries(&pool, 12).await;
    pool.close().await;

    let store = db.open().await;
    assert!(store.verify_ledger().await.unwrap().is_empty());
    store.close().await;

    let pool = SqlitePoolOptions::new().connect_with(opts).await.unwrap();
    assert_eq!(
        entries(&pool, 12).await,
        before,
        "journal rows and ids unchanged"
    );
    let schema: Vec<String> = sqlx::query_scalar(
        "SELECT sql FROM sqlite_master WHERE name IN ('holds', 'ledger_entries') ORDER BY name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(schema[0].contains("WITHOUT ROWID"), "{}", schema[0]);
    assert!(schema[1].contains("UNIQUE (ref, kind)"), "{}", schema[1]);
    // The idempotency key still refuses a second settlement of one request.
    let dup = sqlx::query(
        "INSERT INTO ledger_entries (user_id, kind, ref, amount, balance_delta, held_delta, \
         created_at) VALUES (1, 'settle', 'req-a', 5, -5, 0, 5)",
    )
    .execute(&pool)
    .await
    .unwrap_err();
    assert!(
        dup.as_database_error()
            .is_some_and(|e| e.is_unique_violation()),
        "{dup}"
    );
    pool.close().await;
}
