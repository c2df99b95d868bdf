//! The two backends behind one small query interface.
//!
//! Business logic (the ledger, subscriptions, redeem codes) is written once against [`Pool`], [`Tx`]
//! and [`Row`]; only statements whose SQL differs (locking clauses, the Postgres single-statement
//! hold) are spelled per backend. Placeholders are `$1, $2, …` in both dialects: SQLite binds
//! `$N` by number, which sqlx supports.
//!
//! Write transactions on SQLite begin with `BEGIN IMMEDIATE`: the write lock is taken up front, so
//! a transaction that reads a balance and then writes it can never interleave with another writer
//! (in this process or another one) and never fails with a lock upgrade deadlock. On Postgres
//! transactions run at READ COMMITTED and lock the user's wallet row first (`FOR UPDATE`), which
//! serialises everything that touches one user's money across any number of processes.

use std::borrow::Cow;

use sqlx::postgres::{PgPool, PgRow};
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{AssertSqlSafe, Postgres, Row as _, Sqlite};

/// Which database a store talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A bound parameter.
#[derive(Clone, Debug)]
pub(crate) enum Arg {
    I64(i64),
    OptI64(Option<i64>),
    Text(String),
    OptText(Option<String>),
    Bytes(Vec<u8>),
    Bool(bool),
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::I64(v)
    }
}
impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Self {
        Arg::OptI64(v)
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(v)
    }
}
impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(v.to_owned())
    }
}
impl From<&String> for Arg {
    fn from(v: &String) -> Self {
        Arg::Text(v.clone())
    }
}
impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Self {
        Arg::OptText(v)
    }
}
impl From<Vec<u8>> for Arg {
    fn from(v: Vec<u8>) -> Self {
        Arg::Bytes(v)
    }
}
impl From<bool> for Arg {
    fn from(v: bool) -> Self {
        Arg::Bool(v)
    }
}

/// A statement and its parameters.
#[derive(Clone, Debug)]
pub(crate) struct Q {
    sql: Cow<'static, str>,
    args: Vec<Arg>,
}

impl Q {
    pub(crate) fn new(sql: &'static str) -> Q {
        Q {
            sql: Cow::Borrowed(sql),
            args: Vec::new(),
        }
    }

    /// A statement built at run time. Only ever from fixed fragments and `$N` placeholders, never
    /// from input.
    pub(crate) fn built(sql: String) -> Q {
        Q {
            sql: Cow::Owned(sql),
            args: Vec::new(),
        }
    }

    pub(crate) fn bind(mut self, arg: impl Into<Arg>) -> Q {
        self.args.push(arg.into());
        self
    }
}

macro_rules! sqlx_query {
    ($q:expr) => {{
        let q: Q = $q;
        let mut query = match q.sql {
            Cow::Borrowed(s) => sqlx::query(s),
            Cow::Owned(s) => sqlx::query(AssertSqlSafe(s)),
        };
        for a in q.args {
            query = match a {
                Arg::I64(v) => query.bind(v),
                Arg::OptI64(v) => query.bind(v),
                Arg::Text(v) => query.bind(v),
                Arg::OptText(v) => query.bind(v),
                Arg::Bytes(v) => query.bind(v),
                Arg::Bool(v) => query.bind(v),
            };
        }
        query
    }};
}

/// A connection pool of either backend.
#[derive(Clone, Debug)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Pg(PgPool),
}

/// A transaction of either backend. Dropped without [`Tx::commit`], it rolls back.
pub(crate) enum Tx {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Pg(sqlx::Transaction<'static, Postgres>),
}

/// A result row of either backend.
pub(crate) enum Row {
    Sqlite(SqliteRow),
    Pg(PgRow),
}

impl Pool {
    pub(crate) fn backend(&self) -> Backend {
        match self {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Pg(_) => Backend::Postgres,
        }
    }

    /// Begins a write transaction (`BEGIN IMMEDIATE` on SQLite).
    pub(crate) async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Pool::Sqlite(p) => Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            Pool::Pg(p) => Tx::Pg(p.begin().await?),
        })
    }

    /// Begins a read-only transaction (a consistent snapshot; takes no write lock on SQLite).
    pub(crate) async fn begin_read(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Pool::Sqlite(p) => Tx::Sqlite(p.begin().await?),
            Pool::Pg(p) => Tx::Pg(p.begin().await?),
        })
    }

    pub(crate) async fn exec(&self, q: Q) -> Result<u64, sqlx::Error> {
        Ok(match self {
            Pool::Sqlite(p) => sqlx_query!(q).execute(p).await?.rows_affected(),
            Pool::Pg(p) => sqlx_query!(q).execute(p).await?.rows_affected(),
        })
    }

    pub(crate) async fn opt(&self, q: Q) -> Result<Option<Row>, sqlx::Error> {
        Ok(match self {
            Pool::Sqlite(p) => sqlx_query!(q).fetch_optional(p).await?.map(Row::Sqlite),
            Pool::Pg(p) => sqlx_query!(q).fetch_optional(p).await?.map(Row::Pg),
        })
    }

    pub(crate) async fn one(&self, q: Q) -> Result<Row, sqlx::Error> {
        Ok(match self {
            Pool::Sqlite(p) => Row::Sqlite(sqlx_query!(q).fetch_one(p).await?),
            Pool::Pg(p) => Row::Pg(sqlx_query!(q).fetch_one(p).await?),
        })
    }

    pub(crate) async fn all(&self, q: Q) -> Result<Vec<Row>, sqlx::Error> {
        Ok(match self {
            Pool::Sqlite(p) => sqlx_query!(q)
                .fetch_all(p)
                .await?
                .into_iter()
                .map(Row::Sqlite)
                .collect(),
            Pool::Pg(p) => sqlx_query!(q)
                .fetch_all(p)
                .await?
                .into_iter()
                .map(Row::Pg)
                .collect(),
        })
    }

    pub(crate) async fn close(&self) {
        match self {
            Pool::Sqlite(p) => p.close().await,
            Pool::Pg(p) => p.close().await,
        }
    }
}

impl Tx {
    pub(crate) fn backend(&self) -> Backend {
        match self {
            Tx::Sqlite(_) => Backend::Sqlite,
            Tx::Pg(_) => Backend::Postgres,
        }
    }

    pub(crate) fn is_pg(&self) -> bool {
        self.backend() == Backend::Postgres
    }

    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(t) => t.commit().await,
            Tx::Pg(t) => t.commit().await,
        }
    }

    pub(crate) async fn exec(&mut self, q: Q) -> Result<u64, sqlx::Error> {
        Ok(match self {
            Tx::Sqlite(t) => sqlx_query!(q).execute(&mut **t).await?.rows_affected(),
            Tx::Pg(t) => sqlx_query!(q).execute(&mut **t).await?.rows_affected(),
        })
    }

    pub(crate) async fn opt(&mut self, q: Q) -> Result<Option<Row>, sqlx::Error> {
        Ok(match self {
            Tx::Sqlite(t) => sqlx_query!(q)
                .fetch_optional(&mut **t)
                .await?
                .map(Row::Sqlite),
            Tx::Pg(t) => sqlx_query!(q).fetch_optional(&mut **t).await?.map(Row::Pg),
        })
    }

    pub(crate) async fn one(&mut self, q: Q) -> Result<Row, sqlx::Error> {
        Ok(match self {
            Tx::Sqlite(t) => Row::Sqlite(sqlx_query!(q).fetch_one(&mut **t).await?),
            Tx::Pg(t) => Row::Pg(sqlx_query!(q).fetch_one(&mut **t).await?),
        })
    }

    pub(crate) async fn all(&mut self, q: Q) -> Result<Vec<Row>, sqlx::Error> {
        Ok(match self {
            Tx::Sqlite(t) => sqlx_query!(q)
                .fetch_all(&mut **t)
                .await?
                .into_iter()
                .map(Row::Sqlite)
                .collect(),
            Tx::Pg(t) => sqlx_query!(q)
                .fetch_all(&mut **t)
                .await?
                .into_iter()
                .map(Row::Pg)
                .collect(),
        })
    }
}

impl Row {
    pub(crate) fn i64(&self, col: &str) -> Result<i64, sqlx::Error> {
        match self {
            Row::Sqlite(r) => r.try_get(col),
            Row::Pg(r) => r.try_get(col),
        }
    }

    pub(crate) fn opt_i64(&self, col: &str) -> Result<Option<i64>, sqlx::Error> {
        match self {
            Row::Sqlite(r) => r.try_get(col),
            Row::Pg(r) => r.try_get(col),
        }
    }

    pub(crate) fn text(&self, col: &str) -> Result<String, sqlx::Error> {
        match self {
            Row::Sqlite(r) => r.try_get(col),
            Row::Pg(r) => r.try_get(col),
        }
    }

    pub(crate) fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error> {
        match self {
            Row::Sqlite(r) => r.try_get(col),
            Row::Pg(r) => r.try_get(col),
        }
    }

    pub(crate) fn bytes(&self, col: &str) -> Result<Vec<u8>, sqlx::Error> {
        match self {
            Row::Sqlite(r) => r.try_get(col),
            Row::Pg(r) => r.try_get(col),
        }
    }

    pub(crate) fn bool(&self, col: &str) -> Result<bool, sqlx::Error> {
        match self {
            Row::Sqlite(r) => r.try_get(col),
            Row::Pg(r) => r.try_get(col),
        }
    }
}

/// A unique constraint refused the write.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

/// Errors worth retrying the whole transaction for: Postgres deadlocks and serialization
/// failures, SQLite's busy/locked (when the busy timeout ran out), and dropped connections.
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            let code = d.code();
            let code = code.as_deref().unwrap_or("");
            matches!(code, "40001" | "40P01" | "5" | "6" | "261" | "262" | "517")
                || d.message().contains("database is locked")
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => true,
        _ => false,
    }
}
