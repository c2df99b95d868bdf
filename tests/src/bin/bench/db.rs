//! Databases for the ledger comparison, fresh for each run and removed after it.
//!
//! SQLite: a file in a new temp folder (the relay creates the file and applies migrations).
//! Postgres: a new schema in the test database, selected through the connection's `search_path`
//! (as the sqlx suites do), so a run never sees another run's or a test's rows.

use std::path::PathBuf;
use std::time::Duration;

use sqlx::Connection;

fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_owned()
}

pub struct SqliteFile {
    pub url: String,
    dir: PathBuf,
}

impl SqliteFile {
    pub fn new() -> SqliteFile {
        let dir = std::env::temp_dir().join(format!("sub2api-bench-{}", suffix()));
        SqliteFile {
            url: format!("sqlite://{}/bench.db", dir.display()),
            dir,
        }
    }
}

impl Drop for SqliteFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct PgSchema {
    pub url: String,
    base: String,
    schema: String,
}

impl PgSchema {
    /// Creates the schema; an error (Postgres down, no such database) means the run skips Postgres.
    pub async fn create(base: &str) -> Result<PgSchema, String> {
        let schema = format!("bench_{}", suffix());
        let mut conn =
            tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(base))
                .await
                .map_err(|_| format!("{base} did not answer within 5 s"))?
                .map_err(|e| format!("{base} unreachable: {e}"))?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut conn)
            .await
            .map_err(|e| format!("CREATE SCHEMA: {e}"))?;
        let _ = conn.close().await;
        let sep = if base.contains('?') { '&' } else { '?' };
        Ok(PgSchema {
            url: format!("{base}{sep}options=-csearch_path%3D{schema}"),
            base: base.to_owned(),
            schema,
        })
    }

    /// Drops the schema (call after the server using it has stopped).
    pub async fn drop(self) {
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.base).await {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA {} CASCADE",
                self.schema
            )))
            .execute(&mut conn)
            .await;
            let _ = conn.close().await;
        }
    }
}
