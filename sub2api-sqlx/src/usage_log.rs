//! The usage log: one row per billed request, written in batches off the request path.
//!
//! [`UsageLog::record`] only enqueues (a bounded queue: if the database falls far behind, callers
//! wait instead of memory growing without bound). A background writer gathers rows for up to
//! 10 ms and inserts them in one transaction. Rows are keyed by request id (`ON CONFLICT DO
//! NOTHING`), so a batch retried after an ambiguous failure never duplicates a row.
//! [`UsageLog::flush`] returns once everything recorded before it is committed; shutdown calls it.
//!
//! Money does not depend on this log (the ledger journal is the record of what was charged), so a
//! batch that still fails after retries is logged and dropped rather than blocking the relay.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sub2api_core::domain::{AccountId, GroupId, KeyId, Usage, UsageRecord, UserId};
use sub2api_core::meter::Ending;
use sub2api_core::money::Money;
use sub2api_core::store::{StoreError, UsageLog, UsageQuery};
use tokio::sync::{mpsc, oneshot};

use crate::batch::Writer;
use crate::db::{Arg, Q, Row, Stmt, TxOf};
use crate::{Shared, SqlStore, store_err};

const COLUMNS: &str = "request_id, user_id, key_id, group_id, account_id, model, input_tokens, output_tokens, \
    cache_creation_5m_tokens, cache_creation_1h_tokens, cache_read_tokens, web_search_requests, cost, stream, \
    ending, duration_ms, created_at";
const NCOLS: usize = 17;
/// How long the first row of a batch waits for others (see [`run`]).
const GATHER: Duration = Duration::from_millis(10);
/// Rows per INSERT statement (17 parameters each; well below both databases' limits).
const ROWS_PER_STATEMENT: usize = 200;

enum Msg {
    Record(Box<UsageRecord>),
    Flush(oneshot::Sender<Result<(), StoreError>>),
}

pub(crate) struct UsageWriter {
    tx: mpsc::Sender<Msg>,
}

impl UsageWriter {
    /// With `ledger`, batches are written by the ledger writer on its own connection (SQLite: two
    /// writers in one process would meet in SQLite's busy handler, which sleeps for milliseconds).
    pub(crate) fn spawn(
        shared: Arc<Shared>,
        ledger: Option<Writer>,
        max_batch: usize,
        queue: usize,
    ) -> UsageWriter {
        let (tx, rx) = mpsc::channel(queue.max(1));
        tokio::spawn(run(shared, ledger, rx, max_batch.max(1)));
        UsageWriter { tx }
    }

    async fn record(&self, r: UsageRecord) {
        if self.tx.send(Msg::Record(Box::new(r))).await.is_err() {
            tracing::warn!("usage log closed; a usage row was dropped");
        }
    }

    pub(crate) async fn flush(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Flush(reply))
            .await
            .map_err(|_| StoreError::Unavailable("the usage log is closed".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the usage writer stopped".into()))?
    }
}

async fn run(
    shared: Arc<Shared>,
    ledger: Option<Writer>,
    mut rx: mpsc::Receiver<Msg>,
    max_batch: usize,
) {
    // Whether a batch was dropped since the last flush: the next flush reports it.
    let mut lost: Option<String> = None;
    let mut rows = Vec::with_capacity(max_batch);
    let mut flushes = Vec::new();
    while let Some(first) = rx.recv().await {
        // Rows gather for a moment before they are written (unless a flush asks for them): on
        // SQLite every batch adds a page of each of the log's five B-trees to the ledger commit
        // it rides with, so fewer, larger batches take a tenth of the relay's commit work off.
        let deadline = tokio::time::Instant::now() + GATHER;
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                Msg::Record(r) => rows.push(*r),
                Msg::Flush(f) => flushes.push(f),
            }
            if rows.len() < max_batch {
                next = match rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(_) if flushes.is_empty() => tokio::time::timeout_at(deadline, rx.recv())
                        .await
                        .ok()
                        .flatten(),
                    Err(_) => None,
                };
            }
        }
        if !rows.is_empty() {
            if let Err(e) = write_with_retries(&shared, ledger.as_ref(), &mut rows).await {
                tracing::error!(error = %e, rows = rows.len(), "usage log batch dropped after retries");
                lost = Some(e.to_string());
            }
            rows.clear();
        }
        for f in flushes.drain(..) {
            let _ = f.send(match lost.take() {
                Some(e) => Err(StoreError::Unavailable(format!(
                    "usage rows were lost: {e}"
                ))),
                None => Ok(()),
            });
        }
    }
}

async fn write_with_retries(
    shared: &Shared,
    ledger: Option<&Writer>,
    rows: &mut Vec<UsageRecord>,
) -> Result<(), sqlx::Error> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let written = match ledger {
            Some(w) => {
                let (r, back) = w.usage(std::mem::take(rows)).await;
                *rows = back;
                r
            }
            None => write_batch(shared, rows).await,
        };
        match written {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 6 => {
                tracing::warn!(error = %e, attempt, "usage log write failed; retrying");
                tokio::time::sleep(Duration::from_millis(20u64 << attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn ending_str(e: Ending) -> String {
    serde_json::to_value(e)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{e:?}"))
}

fn parse_ending(s: &str) -> Ending {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).unwrap_or(Ending::Complete)
}

fn tokens(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

async fn write_batch(shared: &Shared, rows: &[UsageRecord]) -> Result<(), sqlx::Error> {
    let mut tx = shared.pool.begin().await?;
    insert_usage(&mut tx, rows).await?;
    tx.commit().await
}

/// Inserts usage rows (multi-row statements) in the caller's transaction.
pub(crate) async fn insert_usage(
    tx: &mut TxOf<'_>,
    rows: &[UsageRecord],
) -> Result<(), sqlx::Error> {
    for st in insert_stmts(tx.is_pg(), rows) {
        tx.exec(st.q()).await?;
    }
    Ok(())
}

/// One usage row's values, in [`COLUMNS`] order.
pub(crate) fn values(r: &UsageRecord) -> [Arg; NCOLS] {
    [
        r.request_id.as_str().into(),
        r.user_id.0.into(),
        r.key_id.0.into(),
        r.group_id.0.into(),
        r.account_id.map(|a| a.0).into(),
        r.model.as_str().into(),
        tokens(r.usage.input_tokens).into(),
        tokens(r.usage.output_tokens).into(),
        tokens(r.usage.cache_creation_5m_tokens).into(),
        tokens(r.usage.cache_creation_1h_tokens).into(),
        tokens(r.usage.cache_read_tokens).into(),
        tokens(r.usage.web_search_requests).into(),
        r.cost.nanos().into(),
        r.stream.into(),
        ending_str(r.ending).into(),
        i64::try_from(r.duration_ms).unwrap_or(i64::MAX).into(),
        r.created_at.into(),
    ]
}

/// The one-row `INSERT` of [`values`] (`?1` to `?17`), for the ledger writer's own SQLite
/// connection; a row already logged is skipped, as in [`insert_stmts`].
pub(crate) fn insert_one_sql() -> &'static str {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let slots: Vec<String> = (1..=NCOLS).map(|i| format!("?{i}")).collect();
        format!(
            "INSERT INTO usage_log ({COLUMNS}) VALUES ({}) ON CONFLICT (request_id) DO NOTHING",
            slots.join(", ")
        )
    });
    &SQL
}

/// The multi-row `INSERT`s of `rows`; a row already logged (same request id) is skipped, so a
/// batch retried after an ambiguous failure never duplicates one.
pub(crate) fn insert_stmts(pg: bool, rows: &[UsageRecord]) -> Vec<Stmt> {
    rows.chunks(ROWS_PER_STATEMENT)
        .map(|chunk| {
            let mut st = Stmt::new(pg, &format!("INSERT INTO usage_log ({COLUMNS}) VALUES "));
            for (i, r) in chunk.iter().enumerate() {
                st.sql(if i == 0 { "(" } else { ", (" });
                let values = values(r);
                for (c, v) in values.into_iter().enumerate() {
                    if c > 0 {
                        st.sql(", ");
                    }
                    st.arg(v);
                }
                st.sql(")");
            }
            st.sql(" ON CONFLICT (request_id) DO NOTHING");
            st
        })
        .collect()
}

fn record_from_row(r: &Row) -> Result<UsageRecord, sqlx::Error> {
    let u = |c: &str| r.i64(c).map(|v| v.max(0) as u64);
    Ok(UsageRecord {
        request_id: r.text("request_id")?,
        user_id: UserId(r.i64("user_id")?),
        key_id: KeyId(r.i64("key_id")?),
        group_id: GroupId(r.i64("group_id")?),
        account_id: r.opt_i64("account_id")?.map(AccountId),
        model: r.text("model")?,
        usage: Usage {
            input_tokens: u("input_tokens")?,
            output_tokens: u("output_tokens")?,
            cache_creation_5m_tokens: u("cache_creation_5m_tokens")?,
            cache_creation_1h_tokens: u("cache_creation_1h_tokens")?,
            cache_read_tokens: u("cache_read_tokens")?,
            web_search_requests: u("web_search_requests")?,
        },
        cost: Money::from_nanos(r.i64("cost")?),
        stream: r.bool("stream")?,
        ending: parse_ending(&r.text("ending")?),
        duration_ms: u("duration_ms")?,
        created_at: r.i64("created_at")?,
    })
}

#[async_trait]
impl UsageLog for SqlStore {
    async fn record(&self, record: UsageRecord) {
        self.inner.usage.record(record).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.inner.usage.flush().await
    }

    /// Newest first. `limit` 0 means 100; at most 10 000 rows per call.
    async fn query(&self, query: &UsageQuery) -> Result<Vec<UsageRecord>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM usage_log WHERE 1 = 1");
        let mut n = 0;
        let mut next = |sql: &mut String, cond: &str| {
            n += 1;
            sql.push_str(&format!(" AND {cond} ${n}"));
        };
        let mut args: Vec<crate::db::Arg> = Vec::new();
        if let Some(u) = query.user_id {
            next(&mut sql, "user_id =");
            args.push(u.0.into());
        }
        if let Some(k) = query.key_id {
            next(&mut sql, "key_id =");
            args.push(k.0.into());
        }
        if let Some(a) = query.account_id {
            next(&mut sql, "account_id =");
            args.push(a.0.into());
        }
        if let Some(m) = &query.model {
            next(&mut sql, "model =");
            args.push(m.clone().into());
        }
        if let Some(f) = query.from_ms {
            next(&mut sql, "created_at >=");
            args.push(f.into());
        }
        if let Some(t) = query.to_ms {
            next(&mut sql, "created_at <");
            args.push(t.into());
        }
        let limit = match query.limit {
            0 => 100,
            l => l.min(10_000),
        };
        sql.push_str(&format!(
            " ORDER BY created_at DESC, id DESC LIMIT {limit} OFFSET {}",
            query.offset
        ));
        let mut q = Q::built(sql);
        for a in args {
            q = q.bind(a);
        }
        let rows = self.shared().pool.all(q).await.map_err(store_err)?;
        rows.iter()
            .map(record_from_row)
            .collect::<Result<_, _>>()
            .map_err(store_err)
    }
}
