//! Group commit for the ledger's hot path: holds, settlements, releases (and, on SQLite, usage
//! log rows).
//!
//! Every billed request writes twice: a hold before it goes upstream and a settlement when it
//! ends. One transaction per write would make the database's commit (an fsync on SQLite, where
//! one writer at a time is allowed) the relay's throughput limit, and on SQLite many pooled
//! connections competing for the write lock spend their time in the busy handler's sleeps. So
//! one background writer per store does all of it: each round takes whatever is queued (up to a
//! batch limit) and applies it in one transaction, settlements first (they free money for the
//! holds of the same round): a snapshot read of what the round touches, decisions in Rust, then
//! the writes. On Postgres those are a few set-based statements sized to the batch; on a SQLite
//! file the writer runs its own connection in place (see [`crate::direct`]), where a statement
//! costs no round trip, so they are cached one-row statements ([`sqlite`]). Each caller is answered
//! only after the commit: a caller never hears "held" or "settled" for something that is not
//! committed.
//!
//! # Durability without holding the lock through an fsync
//!
//! Only a settlement must be durable before its caller hears of it. On a SQLite file with the
//! default `synchronous = FULL`, SQLite would fsync inside `COMMIT`, holding the database's
//! single write lock, so every hold would queue behind every settlement's fsync. Instead the
//! writer keeps its own connection (and thread) at `synchronous = NORMAL` (safe against a
//! process crash) and a syncer task fsyncs the WAL file after the commit, once for everything
//! committed since its last sync, and only then answers the settlements'
//! callers: the same guarantee (their commit frames are on disk first), with the lock free
//! meanwhile. A hold or release lost to power loss belonged to a process that died with it, and
//! recovery gives such holds back anyway (see [`crate::recovery`]). Postgres commits everything
//! synchronously: a hold lost by the database server while the relay lives on could be settled
//! without it.
//!
//! # Never overdrawn, never doubled
//!
//! Each round first reads the wallets it touches under the write lock (SQLite's single writer;
//! `SELECT … ORDER BY user_id FOR UPDATE` on Postgres, so concurrent batches of several nodes lock
//! in one order and cannot deadlock), decides every hold against those balances in arrival order,
//! and writes the result. Nobody can change those wallets between the read and the write, so a
//! batch is exactly as safe as one conditional statement per hold. Idempotency is unchanged: a
//! request id holds once and settles once (`UNIQUE (kind, ref)` on the journal; replays are found
//! by one lookup per batch and answered with the first result).
//!
//! Requests in a group that bills subscriptions take the general per-request path
//! (`ledger::reserve_tx`, `ledger::settle_tx`) inside the same transaction.
//! If a round's transaction fails, each of its items is retried in its own transaction, so one
//! bad item cannot fail its neighbours (usage rows go back to the usage writer, which retries).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sub2api_core::domain::UsageRecord;
use sub2api_core::ledger::{Charge, Hold, HoldRequest, LedgerError, Settlement};
use sub2api_core::money::Money;
use sub2api_core::subscription::{BillingMode, split_charge};
use tokio::sync::{mpsc, oneshot};

use crate::Shared;
use crate::db::{Q, Stmt, TxOf};
use crate::direct::Direct;

mod sqlite;
use crate::ledger::{
    HoldRow, in_tx, release_one, release_taken_hold, reserve_one, reserve_tx, settle_tx, take_hold,
    unavailable, unhold_subscription,
};

type HoldReply = oneshot::Sender<Result<Hold, LedgerError>>;
type SettleReply = oneshot::Sender<Result<Settlement, LedgerError>>;
type ReleaseReply = oneshot::Sender<Result<(), LedgerError>>;

enum Msg {
    Hold(HoldRequest, HoldReply),
    Settle(Charge, SettleReply),
    Release(Hold, ReleaseReply),
    /// Answered once everything queued before it has been committed.
    Barrier(oneshot::Sender<()>),
    /// Like a barrier, then the writer closes its connection and stops.
    Close(oneshot::Sender<()>),
    /// Copy what is left of the WAL into the database after this round (see
    /// [`crate::checkpoint`]).
    Checkpoint,
    /// Usage log rows (see [`crate::usage_log`]); answered with the rows back on failure so the
    /// usage writer can retry them.
    Usage(Vec<UsageRecord>, UsageReply),
}

type UsageReply = oneshot::Sender<(Result<(), sqlx::Error>, Vec<UsageRecord>)>;

/// Rows per multi-row INSERT (at most 10 parameters each: well below both databases' limits).
const ROWS_PER_STATEMENT: usize = 500;

/// What the ledger writer has done since the store opened: how well group commit works (items
/// per transaction) and whether batches fail (each failure falls back to one transaction per
/// item, which is correct but slow, so a growing `fallbacks` deserves a look at the logs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WriterStats {
    /// Batch transactions committed.
    pub transactions: u64,
    /// Holds, settlements and releases applied by those transactions.
    pub items: u64,
    /// Batches that failed and were applied one item at a time.
    pub fallbacks: u64,
}

#[derive(Default)]
struct Counters {
    transactions: AtomicU64,
    items: AtomicU64,
    fallbacks: AtomicU64,
}

impl Counters {
    fn committed(&self, items: usize) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
        self.items.fetch_add(items as u64, Ordering::Relaxed);
    }
}

/// The queue in front of the ledger writer.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Msg>,
    counters: Arc<Counters>,
}

impl Writer {
    pub(crate) fn spawn(shared: Arc<Shared>, max_batch: usize) -> Writer {
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 4);
        let counters = Arc::new(Counters::default());
        let (max_batch, counters_in) = (max_batch.max(1), counters.clone());
        if shared.writer_file.is_some() {
            // On a SQLite file the writer gets a thread of its own and runs its connection on it
            // (see `crate::direct`): its rounds block in SQLite, so they must not run on the
            // relay's runtime. (Running them as a task there, next to the requests that wake
            // them, measured no better.)
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the ledger writer");
            std::thread::Builder::new()
                .name("sub2api-ledger".into())
                .spawn(move || run_on_thread(rt, shared, rx, max_batch, counters_in))
                .expect("a thread for the ledger writer");
        } else {
            tokio::spawn(run(shared, rx, max_batch, counters_in));
        }
        Writer { tx, counters }
    }

    pub(crate) fn stats(&self) -> WriterStats {
        WriterStats {
            transactions: self.counters.transactions.load(Ordering::Relaxed),
            items: self.counters.items.load(Ordering::Relaxed),
            fallbacks: self.counters.fallbacks.load(Ordering::Relaxed),
        }
    }

    async fn ask<T>(
        &self,
        msg: impl FnOnce(oneshot::Sender<Result<T, LedgerError>>) -> Msg,
    ) -> Result<T, LedgerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(msg(reply))
            .await
            .map_err(|_| LedgerError::Unavailable("the ledger is closed".into()))?;
        rx.await
            .map_err(|_| LedgerError::Unavailable("the ledger writer stopped".into()))?
    }

    /// Queues a hold and waits until its transaction has committed.
    pub(crate) async fn hold(&self, req: HoldRequest) -> Result<Hold, LedgerError> {
        self.ask(|r| Msg::Hold(req, r)).await
    }

    /// Queues a settlement and waits until its transaction has committed (durably).
    pub(crate) async fn settle(&self, charge: Charge) -> Result<Settlement, LedgerError> {
        self.ask(|r| Msg::Settle(charge, r)).await
    }

    /// Queues a release and waits until its transaction has committed.
    pub(crate) async fn release(&self, hold: Hold) -> Result<(), LedgerError> {
        self.ask(|r| Msg::Release(hold, r)).await
    }

    /// Writes usage rows in a transaction of their own on the writer's connection; on failure the
    /// rows come back with the error.
    pub(crate) async fn usage(
        &self,
        rows: Vec<UsageRecord>,
    ) -> (Result<(), sqlx::Error>, Vec<UsageRecord>) {
        let (reply, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(Msg::Usage(rows, _))) =
            self.tx.send(Msg::Usage(rows, reply)).await
        {
            return (Err(sqlx::Error::PoolClosed), rows);
        }
        rx.await
            .unwrap_or_else(|_| (Err(sqlx::Error::PoolClosed), Vec::new()))
    }

    /// Asks the writer to finish a WAL checkpoint between two rounds (see [`crate::checkpoint`]).
    pub(crate) async fn finish_checkpoint(&self) {
        let _ = self.tx.send(Msg::Checkpoint).await;
    }

    /// Waits until every write queued so far has committed.
    pub(crate) async fn drain(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Barrier(reply)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Commits everything queued so far, then stops the writer and closes its connection; later
    /// writes fail as unavailable.
    pub(crate) async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Close(reply)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The writer's connection: its own on a SQLite file (it runs with `synchronous = NORMAL`, which
/// must not leak to the pool's other users), the pool's otherwise.
/// Where a round's transaction runs: the writer's own connection on a SQLite file, the pool
/// otherwise.
struct Link {
    conn: Option<Direct>,
}

impl Link {
    async fn begin<'a>(&'a mut self, shared: &Shared) -> Result<TxOf<'a>, sqlx::Error> {
        let Some(file) = &shared.writer_file else {
            return shared.pool.begin().await;
        };
        if self.conn.as_ref().is_some_and(Direct::in_transaction) {
            // A round failed half-way: its transaction dies with the connection.
            self.conn = None;
        }
        if self.conn.is_none() {
            self.conn = Some(Direct::open(file, WRITER_BUSY_TIMEOUT)?);
        }
        Ok(TxOf::Direct {
            conn: self.conn.as_mut().expect("just set"),
            begun: false,
        })
    }

    /// After a failed transaction: start from a fresh connection next time.
    fn reset(&mut self) {
        self.conn = None;
    }

    async fn close(&mut self) {
        self.conn = None;
    }
}

/// How long usage rows wait for a ledger round to ride with (see [`run`]).
const USAGE_RIDE_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

/// As long as the pool's: another process may hold SQLite's write lock for a while.
const WRITER_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What the writer keeps from one round to the next.
struct State {
    shared: Arc<Shared>,
    link: Link,
    syncer: Option<Syncer>,
    counters: Arc<Counters>,
    msgs: Vec<Msg>,
    max_batch: usize,
}

/// The writer as a task of the relay's runtime (Postgres, SQLite in memory).
async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Msg>,
    max_batch: usize,
    counters: Arc<Counters>,
) {
    let mut state = State::new(shared, max_batch, counters);
    while let Some(first) = rx.recv().await {
        if !state.step(first, &mut rx).await {
            return;
        }
    }
}

/// The writer on a thread of its own (a SQLite file): between rounds it sleeps in the channel
/// (a futex), not in a runtime's I/O driver, and `rt` only drives a round's few awaits.
fn run_on_thread(
    rt: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Msg>,
    max_batch: usize,
    counters: Arc<Counters>,
) {
    let mut state = State::new(shared, max_batch, counters);
    while let Some(first) = rx.blocking_recv() {
        if !rt.block_on(state.step(first, &mut rx)) {
            return;
        }
    }
}

impl State {
    fn new(shared: Arc<Shared>, max_batch: usize, counters: Arc<Counters>) -> State {
        State {
            syncer: shared.wal_sync.clone().map(Syncer::spawn),
            shared,
            link: Link { conn: None },
            counters,
            msgs: Vec::with_capacity(max_batch),
            max_batch,
        }
    }

    /// One round: `first` and whatever is queued behind it. False once the writer has closed.
    async fn step(&mut self, first: Msg, rx: &mut mpsc::Receiver<Msg>) -> bool {
        let State {
            shared,
            link,
            syncer,
            counters,
            msgs,
            max_batch,
        } = self;
        let (shared, max_batch) = (&**shared, *max_batch);
        msgs.push(first);
        take_queued(rx, msgs, max_batch);
        if msgs.iter().all(|m| matches!(m, Msg::Usage(..))) {
            // Usage rows alone would cost a commit of their own (one in eight rounds at full
            // load); they wait a moment for a hold or a settlement to ride with instead.
            if let Ok(Some(m)) = tokio::time::timeout(USAGE_RIDE_WAIT, rx.recv()).await {
                msgs.push(m);
                take_queued(rx, msgs, max_batch);
            }
        }
        let mut holds = Vec::new();
        let mut releases = Vec::new();
        let mut settles = Vec::new();
        let mut barriers = Vec::new();
        let mut close = None;
        let mut checkpoint = false;
        let mut usage = Vec::new();
        for m in msgs.drain(..) {
            match m {
                Msg::Hold(h, r) => holds.push((h, r)),
                Msg::Settle(c, r) => settles.push((c, r)),
                Msg::Release(h, r) => releases.push((h, r)),
                Msg::Barrier(b) => barriers.push(b),
                Msg::Close(b) => close = Some(b),
                Msg::Checkpoint => checkpoint = true,
                Msg::Usage(rows, r) => usage.push((rows, r)),
            }
        }
        if !holds.is_empty() || !releases.is_empty() || !settles.is_empty() || !usage.is_empty() {
            round(
                shared,
                link,
                counters,
                syncer.as_ref(),
                Round {
                    holds,
                    releases,
                    settles,
                    usage,
                },
            )
            .await;
        }
        if checkpoint && let Some(d) = link.conn.as_mut() {
            if let Err(e) = d.run(Q::new("PRAGMA wal_checkpoint(PASSIVE)")) {
                tracing::warn!(error = %e, "WAL checkpoint by the ledger writer failed");
            }
        }
        for b in barriers {
            match &*syncer {
                // Answered once the settlements before it are durable.
                Some(s) => s.barrier(b).await,
                None => {
                    let _ = b.send(());
                }
            }
        }
        if let Some(b) = close {
            link.close().await;
            if let Some(s) = &*syncer {
                let (tx, rx) = oneshot::channel();
                s.barrier(tx).await;
                let _ = rx.await;
            }
            rx.close();
            // Whatever was queued after the close message is refused, not left hanging.
            while let Ok(m) = rx.try_recv() {
                drop(m);
            }
            let _ = b.send(());
            return false;
        }
        true
    }
}

/// Moves what is queued into `msgs`, up to `max` in all, without waiting.
fn take_queued(rx: &mut mpsc::Receiver<Msg>, msgs: &mut Vec<Msg>, max: usize) {
    while msgs.len() < max {
        match rx.try_recv() {
            Ok(m) => msgs.push(m),
            Err(_) => break,
        }
    }
}

fn sorted_unique(ids: impl Iterator<Item = i64>) -> Vec<i64> {
    let mut v: Vec<i64> = ids.collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Makes committed settlements durable off the writer's path: fsyncs the WAL file (once for
/// everything committed since the last sync) and only then answers the settlements' callers.
/// SQLite's own `synchronous = FULL` would fsync inside `COMMIT`, while holding the database's
/// single write lock, so every hold would wait behind every settlement's fsync; syncing the same
/// WAL after the lock is released gives the callers the same guarantee (their commit frames are on
/// disk before they hear of it) while the writer goes on. A checkpoint cannot undercut it: in
/// NORMAL mode SQLite syncs the WAL before and the database after each checkpoint, before the WAL
/// is reused.
struct Syncer {
    tx: mpsc::UnboundedSender<SyncMsg>,
}

enum SyncMsg {
    Settled(Vec<(SettleReply, Result<Settlement, LedgerError>)>),
    Barrier(oneshot::Sender<()>),
}

impl Syncer {
    fn spawn(wal: std::path::PathBuf) -> Syncer {
        let (tx, mut rx) = mpsc::unbounded_channel::<SyncMsg>();
        // A thread of its own: the fsync blocks, and the writer's runtime only runs during its
        // rounds.
        std::thread::Builder::new()
            .name("sub2api-walsync".into())
            .spawn(move || {
                let mut msgs = Vec::new();
                while let Some(m) = rx.blocking_recv() {
                    msgs.push(m);
                    while let Ok(m) = rx.try_recv() {
                        msgs.push(m);
                    }
                    let synced = std::fs::File::open(&wal).and_then(|f| f.sync_data());
                    if let Err(e) = &synced {
                        tracing::error!(error = %e, "fsync of the SQLite WAL failed; settlements are committed but may not survive power loss");
                    }
                    for m in msgs.drain(..) {
                        match m {
                            SyncMsg::Settled(answers) => {
                                for (reply, r) in answers {
                                    let r = match (&synced, r) {
                                        (Err(e), Ok(_)) => Err(LedgerError::Unavailable(format!(
                                            "the settlement committed but could not be made durable: {e}"
                                        ))),
                                        (_, r) => r,
                                    };
                                    let _ = reply.send(r);
                                }
                            }
                            SyncMsg::Barrier(b) => {
                                let _ = b.send(());
                            }
                        }
                    }
                }
            })
            .expect("a thread for the WAL syncer");
        Syncer { tx }
    }

    async fn settled(&self, answers: Vec<(SettleReply, Result<Settlement, LedgerError>)>) {
        let _ = self.tx.send(SyncMsg::Settled(answers));
    }

    async fn barrier(&self, b: oneshot::Sender<()>) {
        let _ = self.tx.send(SyncMsg::Barrier(b));
    }
}

/// Applies per-user `(balance, held)` deltas in one statement.
fn update_wallets(pg: bool, deltas: &HashMap<i64, (i64, i64)>, now: i64) -> Option<Stmt> {
    let mut changed: Vec<(i64, i64, i64)> = deltas
        .iter()
        .filter(|(_, d)| **d != (0, 0))
        .map(|(u, (b, h))| (*u, *b, *h))
        .collect();
    if changed.is_empty() {
        return None;
    }
    changed.sort_unstable();
    let mut st = Stmt::new(pg, "UPDATE wallets SET balance = balance + CASE user_id");
    for (u, b, _) in &changed {
        st.sql(" WHEN ").arg(*u).sql(" THEN ").arg(*b);
    }
    st.sql(" ELSE 0 END, held = held + CASE user_id");
    for (u, _, h) in &changed {
        st.sql(" WHEN ").arg(*u).sql(" THEN ").arg(*h);
    }
    st.sql(" ELSE 0 END, updated_at = ")
        .arg(now)
        .sql(" WHERE user_id IN ")
        .list(changed.iter().map(|c| c.0));
    Some(st)
}

/// One journal row of a batch.
struct Entry {
    user_id: i64,
    kind: &'static str,
    request_id: String,
    amount: i64,
    balance_delta: i64,
    held_delta: i64,
    balance_after: Option<i64>,
    group_id: i64,
}

fn insert_entries(pg: bool, entries: &[Entry], now: i64) -> Vec<Stmt> {
    entries
        .chunks(ROWS_PER_STATEMENT)
        .map(|chunk| {
            let mut st = Stmt::new(
                pg,
                "INSERT INTO ledger_entries (user_id, kind, ref, amount, balance_delta, held_delta, \
                 balance_after, group_id, subscription_amount, memo, created_at) VALUES ",
            );
            for (i, e) in chunk.iter().enumerate() {
                st.sql(if i == 0 { "(" } else { ", (" })
                    .arg(e.user_id)
                    .sql(", ")
                    .arg(e.kind)
                    .sql(", ")
                    .arg(e.request_id.as_str())
                    .sql(", ")
                    .arg(e.amount)
                    .sql(", ")
                    .arg(e.balance_delta)
                    .sql(", ")
                    .arg(e.held_delta)
                    .sql(", ")
                    .arg(e.balance_after)
                    .sql(", ")
                    .arg(e.group_id)
                    .sql(", 0, '', ")
                    .arg(now)
                    .sql(")");
            }
            st
        })
        .collect()
}

fn insert_holds(pg: bool, shared: &Shared, holds: &[&HoldRequest], now: i64) -> Vec<Stmt> {
    let expires = now.saturating_add(shared.hold_ttl_ms);
    holds
        .chunks(ROWS_PER_STATEMENT)
        .map(|chunk| {
            let mut st = Stmt::new(
                pg,
                "INSERT INTO holds (request_id, user_id, group_id, amount, wallet_amount, \
                 subscription_amount, instance_id, created_at, expires_at) VALUES ",
            );
            for (i, h) in chunk.iter().enumerate() {
                st.sql(if i == 0 { "(" } else { ", (" })
                    .arg(h.request_id.as_str())
                    .sql(", ")
                    .arg(h.user_id.0)
                    .sql(", ")
                    .arg(h.group_id.0)
                    .sql(", ")
                    .arg(h.amount.nanos())
                    .sql(", ")
                    .arg(h.amount.nanos())
                    .sql(", 0, ")
                    .arg(shared.instance_id.as_str())
                    .sql(", ")
                    .arg(now)
                    .sql(", ")
                    .arg(expires)
                    .sql(")");
            }
            st
        })
        .collect()
}

/// What a round reads before deciding: wallets, billing modes, journal refs that already exist,
/// and the open holds of the requests settling.
#[derive(Default)]
struct Snapshot {
    wallets: HashMap<i64, (i64, i64)>,
    modes: HashMap<i64, BillingMode>,
    held_refs: HashSet<String>,
    settled_refs: HashMap<String, i64>,
    holds: HashMap<String, HoldRow>,
}

/// Reads a [`Snapshot`] in one round trip (two on Postgres, where the wallets are locked `FOR
/// UPDATE`, which a `UNION` cannot carry). Every part is one `SELECT` of a `UNION ALL` with the
/// same columns: `t` names the part.
async fn snapshot(
    tx: &mut TxOf<'_>,
    users: &[i64],
    groups: &[i64],
    hold_refs: &[&str],
    settle_refs: &[(&str, i64)],
) -> Result<Snapshot, sqlx::Error> {
    if let Some(d) = tx.direct()? {
        return sqlite::snapshot(d, users, groups, hold_refs, settle_refs);
    }
    let pg = tx.is_pg();
    let mut snap = Snapshot::default();
    const COLS: &str = "CAST(NULL AS TEXT) AS k, CAST(NULL AS BIGINT) AS a, \
        CAST(NULL AS BIGINT) AS b, CAST(NULL AS BIGINT) AS c, CAST(NULL AS BIGINT) AS d, \
        CAST(NULL AS BIGINT) AS e, CAST(NULL AS BIGINT) AS f";
    let mut parts: Vec<Stmt> = Vec::new();
    if !users.is_empty() && pg {
        let mut st = Stmt::new(
            pg,
            "SELECT user_id, balance, held FROM wallets WHERE user_id IN ",
        );
        st.list(users.iter().copied())
            .sql(" ORDER BY user_id FOR UPDATE");
        for r in tx.all(st.q()).await? {
            snap.wallets
                .insert(r.i64("user_id")?, (r.i64("balance")?, r.i64("held")?));
        }
    }
    let part = |sql: &str, keys: &mut dyn Iterator<Item = crate::db::Arg>| {
        let mut st = Stmt::new(pg, sql);
        st.list(keys);
        st
    };
    if !users.is_empty() && !pg {
        // SQLite (in memory) has a single writer: no lock to take, the wallets are one more part.
        parts.push(part(
            "SELECT 'w', NULL, user_id, balance, held, NULL, NULL, NULL FROM wallets \
             WHERE user_id IN ",
            &mut users.iter().map(|&u| u.into()),
        ));
    }
    if !groups.is_empty() {
        parts.push(part(
            "SELECT 'g', billing_mode, id, NULL, NULL, NULL, NULL, NULL FROM groups WHERE id IN ",
            &mut groups.iter().map(|&g| g.into()),
        ));
    }
    if !hold_refs.is_empty() {
        parts.push(part(
            "SELECT 'h', ref, NULL, NULL, NULL, NULL, NULL, NULL FROM ledger_entries \
             WHERE kind = 'hold' AND ref IN ",
            &mut hold_refs.iter().map(|&r| r.into()),
        ));
    }
    if !settle_refs.is_empty() {
        parts.push(part(
            "SELECT 's', ref, amount, NULL, NULL, NULL, NULL, NULL FROM ledger_entries \
             WHERE kind = 'settle' AND ref IN ",
            &mut settle_refs.iter().map(|&(r, _)| r.into()),
        ));
        let mut st = Stmt::new(
            pg,
            "SELECT 'x', request_id, user_id, group_id, amount, wallet_amount, subscription_id, \
             subscription_amount FROM holds WHERE (request_id, user_id) IN (VALUES ",
        );
        for (i, (r, u)) in settle_refs.iter().enumerate() {
            st.sql(if i == 0 { "(" } else { ", (" })
                .arg(*r)
                .sql(", ")
                .arg(*u)
                .sql(")");
        }
        st.sql(")");
        parts.push(st);
    }
    if parts.is_empty() {
        return Ok(snap);
    }
    // The first part names and types the columns (Postgres takes a UNION's types from it).
    let mut q = Stmt::new(
        pg,
        &format!("SELECT CAST('-' AS TEXT) AS t, {COLS} WHERE 1 = 0"),
    );
    for p in parts {
        q.sql(" UNION ALL ").append(p);
    }
    let rows = tx.all(q.q()).await?;
    read_snapshot(&mut snap, rows)?;
    Ok(snap)
}

fn read_snapshot(snap: &mut Snapshot, rows: Vec<crate::db::Row>) -> Result<(), sqlx::Error> {
    for r in rows {
        match r.text("t")?.as_str() {
            "w" => {
                snap.wallets.insert(r.i64("a")?, (r.i64("b")?, r.i64("c")?));
            }
            "g" => {
                snap.modes
                    .insert(r.i64("a")?, r.text("k")?.parse().unwrap_or_default());
            }
            "h" => {
                snap.held_refs.insert(r.text("k")?);
            }
            "s" => {
                snap.settled_refs.insert(r.text("k")?, r.i64("a")?);
            }
            _ => {
                let h = HoldRow {
                    request_id: r.text("k")?,
                    user_id: r.i64("a")?,
                    group_id: r.i64("b")?,
                    amount: r.i64("c")?,
                    wallet_amount: r.i64("d")?,
                    subscription_id: r.opt_i64("e")?,
                    subscription_amount: r.i64("f")?,
                };
                snap.holds.insert(h.request_id.clone(), h);
            }
        }
    }
    Ok(())
}

type RoundResults = (
    Vec<Result<Hold, LedgerError>>,
    Vec<Result<(), LedgerError>>,
    Vec<Result<Settlement, LedgerError>>,
);

/// Everything one round commits together.
struct Round {
    holds: Vec<(HoldRequest, HoldReply)>,
    releases: Vec<(Hold, ReleaseReply)>,
    settles: Vec<(Charge, SettleReply)>,
    /// Usage log rows ride along (see [`crate::usage_log`]): one transaction, one round trip.
    usage: Vec<(Vec<UsageRecord>, UsageReply)>,
}

async fn round(
    shared: &Shared,
    link: &mut Link,
    counters: &Counters,
    syncer: Option<&Syncer>,
    Round {
        holds,
        releases,
        mut settles,
        usage,
    }: Round,
) {
    // Per-request paths lock wallets one by one; sorting keeps every batch's lock order the same.
    settles.sort_by(|a, b| (a.0.user_id, &a.0.request_id).cmp(&(b.0.user_id, &b.0.request_id)));
    let now = shared.clock.now_ms();
    let reqs: Vec<&HoldRequest> = holds.iter().map(|(h, _)| h).collect();
    let rels: Vec<&Hold> = releases.iter().map(|(h, _)| h).collect();
    let charges: Vec<&Charge> = settles.iter().map(|(c, _)| c).collect();
    let r: Result<RoundResults, sqlx::Error> = async {
        let mut tx = link.begin(shared).await?;
        let (out, pending) = apply(&mut tx, shared, &reqs, &rels, &charges, now).await?;
        let rows: Vec<&[UsageRecord]> = usage.iter().map(|(r, _)| r.as_slice()).collect();
        if let Some(d) = tx.direct()? {
            sqlite::write(d, &pending, shared, now, &rows)?;
            tx.commit().await?;
        } else {
            let pg = tx.is_pg();
            let mut writes = pending.stmts(pg, shared, now);
            for rows in rows {
                writes.extend(crate::usage_log::insert_stmts(pg, rows));
            }
            for st in writes {
                tx.exec(st.q()).await?;
            }
            tx.commit().await?;
        }
        Ok(out)
    }
    .await;
    match r {
        Ok((hr, rr, sr)) => {
            counters.committed(hr.len() + rr.len() + sr.len());
            for (_, reply) in usage {
                let _ = reply.send((Ok(()), Vec::new()));
            }
            for ((_, reply), r) in holds.into_iter().zip(hr) {
                let _ = reply.send(r);
            }
            for ((_, reply), r) in releases.into_iter().zip(rr) {
                let _ = reply.send(r);
            }
            let answers = settles.into_iter().map(|(_, reply)| reply).zip(sr);
            match syncer {
                Some(s) => s.settled(answers.collect()).await,
                None => {
                    for (reply, r) in answers {
                        let _ = reply.send(r);
                    }
                }
            }
        }
        Err(e) => {
            link.reset();
            counters.fallbacks.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, holds = holds.len(), releases = releases.len(),
                settlements = settles.len(), "ledger batch failed; applying one by one");
            // The usage writer retries its rows on its own.
            for (rows, reply) in usage {
                let _ = reply.send((Err(sqlx::Error::Protocol(e.to_string())), rows));
            }
            // Settlements first: they never wait for money, and they free some.
            let pool = &shared.pool;
            for (charge, reply) in settles {
                let r = in_tx!(pool, |tx| settle_tx(&mut tx, &charge, now).await?);
                let r = r.map_err(unavailable).and_then(|r| r);
                if let Err(e) = &r {
                    tracing::error!(request_id = %charge.request_id, error = %e, "settlement failed");
                }
                let _ = reply.send(r);
            }
            for (hold, reply) in releases {
                let _ = reply.send(release_one(shared, &hold, now).await);
            }
            for (req, reply) in holds {
                let _ = reply.send(reserve_one(shared, &req, now).await);
            }
        }
    }
}

/// One round in the caller's transaction: settlements, then releases, then holds (so money a
/// round frees is available to the holds of the same round).
/// Returns the results and the writes that make them so; the caller runs the writes and commits.
async fn apply<'h>(
    tx: &mut TxOf<'_>,
    shared: &Shared,
    holds: &[&'h HoldRequest],
    releases: &[&Hold],
    charges: &[&Charge],
    now: i64,
) -> Result<(RoundResults, Pending<'h>), sqlx::Error> {
    let users = sorted_unique(
        holds
            .iter()
            .map(|h| h.user_id.0)
            .chain(releases.iter().map(|h| h.user_id.0))
            .chain(charges.iter().map(|c| c.user_id.0)),
    );
    let groups = sorted_unique(
        holds
            .iter()
            .map(|h| h.group_id.0)
            .chain(charges.iter().map(|c| c.group_id.0)),
    );
    let hold_refs: Vec<&str> = holds.iter().map(|h| h.request_id.as_str()).collect();
    let settle_refs: Vec<(&str, i64)> = charges
        .iter()
        .map(|c| (c.request_id.as_str(), c.user_id.0))
        .collect();
    let mut snap = snapshot(tx, &users, &groups, &hold_refs, &settle_refs).await?;
    let mode_of =
        |modes: &HashMap<i64, BillingMode>, g: i64| modes.get(&g).copied().unwrap_or_default();

    // The general paths (groups that bill subscriptions, releases) read and write for themselves;
    // they run first, and the snapshot is read again after them.
    let general_settle: Vec<bool> = charges
        .iter()
        .map(|c| mode_of(&snap.modes, c.group_id.0).uses_subscription())
        .collect();
    let general_hold: Vec<bool> = holds
        .iter()
        .map(|h| mode_of(&snap.modes, h.group_id.0).uses_subscription())
        .collect();
    let mut settle_results: Vec<Option<Result<Settlement, LedgerError>>> =
        vec![None; charges.len()];
    let mut hold_results: Vec<Option<Result<Hold, LedgerError>>> = vec![None; holds.len()];
    let mut release_results = Vec::with_capacity(releases.len());
    if !releases.is_empty() || general_settle.contains(&true) || general_hold.contains(&true) {
        for (i, c) in charges.iter().enumerate() {
            if general_settle[i] {
                settle_results[i] = Some(settle_tx(tx, c, now).await?);
            }
        }
        for h in releases {
            release_results.push(match take_hold(tx, &h.request_id, h.user_id.0).await? {
                Some(row) => {
                    release_taken_hold(tx, &row, now, "released").await?;
                    Ok(())
                }
                None => Ok(()),
            });
        }
        for (i, h) in holds.iter().enumerate() {
            if general_hold[i] {
                hold_results[i] = Some(reserve_tx(tx, shared, h, now).await?);
            }
        }
        let fast_refs: Vec<(&str, i64)> = charges
            .iter()
            .zip(&general_settle)
            .filter(|(_, g)| !**g)
            .map(|(c, _)| (c.request_id.as_str(), c.user_id.0))
            .collect();
        let modes = std::mem::take(&mut snap.modes);
        snap = snapshot(tx, &users, &[], &hold_refs, &fast_refs).await?;
        snap.modes = modes;
    }

    let mut deltas: HashMap<i64, (i64, i64)> = HashMap::new();
    let mut entries = Vec::new();
    let mut taken_ids: Vec<String> = Vec::new();

    // Settlements.
    for (i, c) in charges.iter().enumerate() {
        if settle_results[i].is_some() {
            continue;
        }
        let user = c.user_id.0;
        if let Some(first) = snap.settled_refs.get(c.request_id.as_str()) {
            settle_results[i] = Some(Ok(Settlement {
                request_id: c.request_id.clone(),
                charged: Money::from_nanos(*first),
                replayed: true,
            }));
            continue;
        }
        let Some((balance, held)) = snap.wallets.get_mut(&user) else {
            settle_results[i] = Some(Err(LedgerError::UnknownUser(c.user_id)));
            continue;
        };
        let released = match snap.holds.remove(c.request_id.as_str()) {
            Some(h) => {
                if h.subscription_amount > 0 {
                    // The group stopped billing subscriptions while this request ran: give the
                    // subscription part back (the wallet pays the whole charge, as the mode now
                    // says).
                    unhold_subscription(tx, &h).await?;
                }
                taken_ids.push(h.request_id);
                h.wallet_amount
            }
            None => 0,
        };
        let split = split_charge(mode_of(&snap.modes, c.group_id.0), None, c.amount);
        let wallet_charge = split.wallet.nanos();
        let before = *balance;
        *balance -= wallet_charge;
        *held -= released;
        let d = deltas.entry(user).or_default();
        d.0 -= wallet_charge;
        d.1 -= released;
        if before >= 0 && *balance < 0 {
            tracing::warn!(
                user = user,
                request_id = %c.request_id,
                "settlement exceeded the available balance (hold estimate below the vendor's count)"
            );
        }
        entries.push(Entry {
            user_id: user,
            kind: "settle",
            request_id: c.request_id.clone(),
            amount: c.amount.nanos(),
            balance_delta: -wallet_charge,
            held_delta: -released,
            balance_after: Some(*balance),
            group_id: c.group_id.0,
        });
        snap.settled_refs
            .insert(c.request_id.clone(), c.amount.nanos());
        settle_results[i] = Some(Ok(Settlement {
            request_id: c.request_id.clone(),
            charged: c.amount,
            replayed: false,
        }));
    }

    // Holds, in arrival order: who comes first gets the last of a balance.
    let mut taken: Vec<&HoldRequest> = Vec::new();
    for (i, h) in holds.iter().enumerate() {
        if hold_results[i].is_some() {
            continue;
        }
        let user = h.user_id.0;
        let r = if !snap.held_refs.insert(h.request_id.clone()) {
            Err(LedgerError::DuplicateHold(h.request_id.clone()))
        } else if let Some((balance, held)) = snap.wallets.get_mut(&user) {
            let amount = h.amount.nanos();
            let available = *balance - *held;
            if available >= amount {
                *held += amount;
                deltas.entry(user).or_default().1 += amount;
                entries.push(Entry {
                    user_id: user,
                    kind: "hold",
                    request_id: h.request_id.clone(),
                    amount,
                    balance_delta: 0,
                    held_delta: amount,
                    balance_after: None,
                    group_id: h.group_id.0,
                });
                taken.push(h);
                Ok(Hold {
                    request_id: h.request_id.clone(),
                    user_id: h.user_id,
                    group_id: h.group_id,
                    amount: h.amount,
                })
            } else {
                // The hold is refused whole: nothing of it is written.
                snap.held_refs.remove(&h.request_id);
                Err(LedgerError::InsufficientBalance {
                    available: Money::from_nanos(available.max(0)),
                    required: h.amount,
                })
            }
        } else {
            snap.held_refs.remove(&h.request_id);
            Err(LedgerError::UnknownUser(h.user_id))
        };
        hold_results[i] = Some(r);
    }

    let pending = Pending {
        taken_ids,
        deltas,
        taken,
        entries,
    };

    Ok((
        (
            hold_results
                .into_iter()
                .map(|r| r.expect("every hold decided"))
                .collect(),
            release_results,
            settle_results
                .into_iter()
                .map(|r| r.expect("every settlement decided"))
                .collect(),
        ),
        pending,
    ))
}
/// The writes a round decided on, not yet run.
struct Pending<'h> {
    /// Holds taken by the settlements (deleted).
    taken_ids: Vec<String>,
    /// Per-user `(balance, held)` changes.
    deltas: HashMap<i64, (i64, i64)>,
    /// Holds granted (inserted).
    taken: Vec<&'h HoldRequest>,
    entries: Vec<Entry>,
}

impl Pending<'_> {
    /// The writes as statements sized to the batch (Postgres; SQLite in memory).
    fn stmts(&self, pg: bool, shared: &Shared, now: i64) -> Vec<Stmt> {
        let mut writes = Vec::new();
        if !self.taken_ids.is_empty() {
            let mut st = Stmt::new(pg, "DELETE FROM holds WHERE request_id IN ");
            st.list(self.taken_ids.iter().map(String::as_str));
            writes.push(st);
        }
        writes.extend(update_wallets(pg, &self.deltas, now));
        writes.extend(insert_holds(pg, shared, &self.taken, now));
        writes.extend(insert_entries(pg, &self.entries, now));
        writes
    }
}
