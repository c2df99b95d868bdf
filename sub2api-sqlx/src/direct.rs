//! The ledger writer's own SQLite connection, driven on the writer's thread.
//!
//! sqlx runs every SQLite connection on a worker thread of its own and ships each statement
//! there and each result row back over channels. For the pool that is right (callers are async
//! tasks), but the ledger writer is already a thread that does nothing else: the hops cost it
//! two thread wake-ups per statement and a channel message per row, about a third of the CPU a
//! billed request spent in SQLite. So the writer opens the database file itself (rusqlite, on the
//! same bundled SQLite that sqlx links) and runs the very same statement texts in place.
//!
//! The connection speaks the crate's small query interface ([`Q`], [`Row`], `sqlx::Error`), so the
//! ledger's general paths (subscriptions, releases) run on it unchanged inside a round's
//! transaction. Errors keep SQLite's extended result codes, so [`crate::db::is_unique_violation`]
//! and [`crate::db::is_transient`] read them as they read sqlx's.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::ToSql;
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use sqlx::error::{DatabaseError, ErrorKind};

use crate::db::{Arg, Q};

/// Statements cached per connection: the writer's fixed texts and the general paths' statements.
const STATEMENT_CACHE: usize = 128;

/// An open connection (see the module docs).
pub(crate) struct Direct {
    conn: rusqlite::Connection,
    /// Fixed multi-statement texts, split into their statements once.
    split: HashMap<&'static str, Arc<[String]>>,
}

impl Direct {
    /// Opens `path` with the pool's settings (foreign keys, WAL, busy timeout), but
    /// `synchronous = NORMAL` and no automatic checkpoints (see [`crate::batch`]).
    pub(crate) fn open(path: &Path, busy: Duration) -> Result<Direct, sqlx::Error> {
        let conn = rusqlite::Connection::open(path).map_err(error)?;
        conn.busy_timeout(busy).map_err(error)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.execute_batch(
            "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; \
             PRAGMA wal_autocheckpoint = 0; PRAGMA cache_size = -65536;",
        )
        .map_err(error)?;
        Ok(Direct {
            conn,
            split: HashMap::new(),
        })
    }

    /// Runs one of the connection's own fixed statements (`BEGIN IMMEDIATE`, `COMMIT`).
    pub(crate) fn run_fixed(&mut self, sql: &'static str) -> Result<(), sqlx::Error> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut st| st.raw_execute())
            .map(|_| ())
            .map_err(error)
    }

    /// Runs `q` (one statement or several separated by `;`) and returns every row any of them
    /// produced, and the rows they changed. Parameters bind as sqlx binds them: `$n` and `?n` by
    /// number, a bare `?` by position, counting across the statements of a text.
    pub(crate) fn run(&mut self, q: Q) -> Result<(Vec<Row>, u64), sqlx::Error> {
        let (sql, args, persistent) = q.into_parts();
        let parts: Arc<[String]> = match &sql {
            Cow::Borrowed(s) if persistent => self
                .split
                .entry(*s)
                .or_insert_with(|| split_statements(s).into())
                .clone(),
            _ => split_statements(&sql).into(),
        };
        let mut rows = Vec::new();
        let mut changed = 0u64;
        let mut position = 0usize;
        for part in parts.iter() {
            let mut run = |st: &mut rusqlite::Statement<'_>| -> rusqlite::Result<()> {
                for i in 1..=st.parameter_count() {
                    let index = match st.parameter_name(i) {
                        Some(name) => name[1..]
                            .parse::<usize>()
                            .map_err(|_| rusqlite::Error::InvalidParameterName(name.to_owned()))?,
                        None => {
                            position += 1;
                            position
                        }
                    };
                    let arg = args
                        .get(index - 1)
                        .ok_or(rusqlite::Error::InvalidParameterCount(index, args.len()))?;
                    st.raw_bind_parameter(i, arg)?;
                }
                let columns: Arc<[String]> =
                    st.column_names().into_iter().map(str::to_owned).collect();
                let mut it = st.raw_query();
                while let Some(r) = it.next()? {
                    let values = (0..columns.len())
                        .map(|c| r.get_ref(c).map(owned))
                        .collect::<rusqlite::Result<Vec<Value>>>()?;
                    rows.push(Row {
                        columns: columns.clone(),
                        values,
                    });
                }
                Ok(())
            };
            let before = self.conn.total_changes();
            if persistent {
                let mut st = self.conn.prepare_cached(part).map_err(error)?;
                run(&mut st).map_err(error)?;
            } else {
                let mut st = self.conn.prepare(part).map_err(error)?;
                run(&mut st).map_err(error)?;
            }
            changed += self.conn.total_changes() - before;
        }
        Ok((rows, changed))
    }

    pub(crate) fn conn(&self) -> &rusqlite::Connection {
        &self.conn
    }

    /// Whether a transaction is open (an unfinished round left one behind).
    pub(crate) fn in_transaction(&self) -> bool {
        !self.conn.is_autocommit()
    }
}

fn owned(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// Binds without copying: text and blobs are lent to SQLite, which copies them itself.
impl ToSql for Arg {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Arg::I64(v) => ToSqlOutput::Owned(Value::Integer(*v)),
            Arg::OptI64(v) => ToSqlOutput::Owned(v.map_or(Value::Null, Value::Integer)),
            Arg::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Arg::OptText(v) => ToSqlOutput::Borrowed(
                v.as_deref()
                    .map_or(ValueRef::Null, |t| ValueRef::Text(t.as_bytes())),
            ),
            Arg::Bytes(v) => ToSqlOutput::Borrowed(ValueRef::Blob(v)),
            Arg::Bool(v) => ToSqlOutput::Owned(Value::Integer(i64::from(*v))),
        })
    }
}

/// Splits a text of several statements at the semicolons outside quotes. The texts are the
/// crate's own (no comments, no triggers), so quotes are all that can hide a `;`.
fn split_statements(sql: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut quote: Option<char> = None;
    let mut start = 0;
    for (i, c) in sql.char_indices() {
        match (quote, c) {
            (None, '\'' | '"' | '`') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ';') => {
                parts.push(&sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&sql[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A result row: column names shared by the rows of one statement.
#[derive(Debug)]
pub(crate) struct Row {
    columns: Arc<[String]>,
    values: Vec<Value>,
}

impl Row {
    fn value(&self, col: &str) -> Result<&Value, sqlx::Error> {
        self.columns
            .iter()
            .position(|c| c == col)
            .map(|i| &self.values[i])
            .ok_or_else(|| sqlx::Error::ColumnNotFound(col.to_owned()))
    }

    fn mismatch(col: &str, want: &str, got: &Value) -> sqlx::Error {
        sqlx::Error::ColumnDecode {
            index: col.to_owned(),
            source: format!("expected {want}, found {:?}", got.data_type()).into(),
        }
    }

    pub(crate) fn opt_i64(&self, col: &str) -> Result<Option<i64>, sqlx::Error> {
        match self.value(col)? {
            Value::Null => Ok(None),
            Value::Integer(v) => Ok(Some(*v)),
            v => Err(Self::mismatch(col, "an integer", v)),
        }
    }

    pub(crate) fn i64(&self, col: &str) -> Result<i64, sqlx::Error> {
        self.opt_i64(col)?.ok_or_else(|| Self::null(col))
    }

    pub(crate) fn bool(&self, col: &str) -> Result<bool, sqlx::Error> {
        self.i64(col).map(|v| v != 0)
    }

    pub(crate) fn text(&self, col: &str) -> Result<String, sqlx::Error> {
        self.opt_text(col)?.ok_or_else(|| Self::null(col))
    }

    fn null(col: &str) -> sqlx::Error {
        sqlx::Error::ColumnDecode {
            index: col.to_owned(),
            source: "unexpected null".into(),
        }
    }

    pub(crate) fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error> {
        match self.value(col)? {
            Value::Null => Ok(None),
            Value::Text(v) => Ok(Some(v.clone())),
            v => Err(Self::mismatch(col, "text", v)),
        }
    }

    pub(crate) fn bytes(&self, col: &str) -> Result<Vec<u8>, sqlx::Error> {
        match self.value(col)? {
            Value::Blob(v) => Ok(v.clone()),
            Value::Text(v) => Ok(v.clone().into_bytes()),
            v => Err(Self::mismatch(col, "a blob", v)),
        }
    }
}

/// A SQLite error as sqlx reports one: the extended result code as `code()`, and its kind.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct DirectError {
    code: i32,
    message: String,
}

impl DatabaseError for DirectError {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(self.code.to_string().into())
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        use rusqlite::ffi;
        match self.code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                ErrorKind::UniqueViolation
            }
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => ErrorKind::ForeignKeyViolation,
            ffi::SQLITE_CONSTRAINT_NOTNULL => ErrorKind::NotNullViolation,
            ffi::SQLITE_CONSTRAINT_CHECK => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

pub(crate) fn error(e: rusqlite::Error) -> sqlx::Error {
    match e {
        rusqlite::Error::SqliteFailure(f, message) => {
            sqlx::Error::Database(Box::new(DirectError {
                code: f.extended_code,
                message: message.unwrap_or_else(|| f.to_string()),
            }))
        }
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_semicolons_outside_quotes() {
        assert_eq!(
            split_statements("BEGIN; SELECT 'a;b', \"c;\" ;\n\n UPDATE t SET x = 1;"),
            vec!["BEGIN", "SELECT 'a;b', \"c;\"", "UPDATE t SET x = 1"]
        );
    }

    #[test]
    fn binds_like_sqlx_and_keeps_sqlite_error_codes() {
        let dir = std::env::temp_dir().join(format!("sub2api-direct-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        let _ = std::fs::remove_file(&path);
        let mut d = Direct::open(&path, Duration::from_secs(1)).unwrap();
        d.run(Q::new(
            "CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER, b BLOB)",
        ))
        .unwrap();
        // `$n` and `?n` by number across the statements of a text.
        let (_, changed) = d
            .run(
                Q::new(
                    "INSERT INTO t VALUES ($2, $1, NULL); INSERT INTO t VALUES (?3, NULL, NULL)",
                )
                .bind(7)
                .bind("x")
                .bind("y"),
            )
            .unwrap();
        assert_eq!(changed, 2);
        let (rows, _) = d
            .run(
                Q::one_off("SELECT k, v FROM t WHERE k IN (?, ?) ORDER BY k".into())
                    .bind("x")
                    .bind("y"),
            )
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].opt_i64("v").unwrap(), Some(7));
        assert_eq!(rows[1].opt_i64("v").unwrap(), None);
        assert_eq!(rows[1].opt_text("k").unwrap().as_deref(), Some("y"));
        assert!(matches!(
            rows[0].opt_i64("nope"),
            Err(sqlx::Error::ColumnNotFound(_))
        ));
        let dup = d
            .run(Q::new("INSERT INTO t VALUES ($1, 1, NULL)").bind("x"))
            .unwrap_err();
        assert!(crate::db::is_unique_violation(&dup), "{dup}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
