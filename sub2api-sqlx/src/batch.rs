//! Group commit for the ledger's hot path: holds, settlements and releases.
//!
//! Every billed request writes twice: a hold before it goes upstream and a settlement when it
//! ends. One transaction per write would make the database's commit (an fsync on SQLite, where
//! one writer at a time is allowed) the relay's throughput limit, and on SQLite many pooled
//! connections competing for the write lock spend their time in the busy handler's sleeps. So
//! one background writer per store does all of it: it takes whatever is queued (up to a batch
//! limit), applies it with a handful of set-based statements whatever the batch size, commits
//! once, and only then answers each caller through its oneshot. A caller never hears "held" or
//! "settled" for something that is not committed.
//!
//! # Durability without holding the lock through an fsync
//!
//! A round commits the holds and releases first (their requests are waiting to go upstream),
//! then the settlements, in separate transactions. Only a settlement must be durable before its
//! caller hears of it. On a SQLite file with the default `synchronous = FULL`, SQLite would fsync
//! inside `COMMIT`, holding the database's single write lock, so every hold would queue behind
//! every settlement's fsync. Instead the writer keeps its own connection at `synchronous =
//! NORMAL` (safe against a process crash) and a syncer task fsyncs the WAL file after the commit,
//! once for everything committed since its last sync, and only then answers the settlements'
//! callers: the same guarantee (their commit frames are on disk first), with the lock free
//! meanwhile. A hold or release lost to power loss belonged to a process that died with it, and
//! recovery gives such holds back anyway (see [`crate::recovery`]). Postgres commits everything
//! synchronously: a hold lost by the database server while the relay lives on could be settled
//! without it.
//!
//! # Never overdrawn, never doubled
//!
//! Each batch first reads the wallets it touches under the write lock (SQLite's single writer;
//! `SELECT … ORDER BY user_id FOR UPDATE` on Postgres, so concurrent batches of several nodes lock
//! in one order and cannot deadlock), decides every hold against those balances in arrival order,
//! and writes the result. Nobody can change those wallets between the read and the write, so a
//! batch is exactly as safe as one conditional statement per hold. Idempotency is unchanged: a
//! request id holds once and settles once (`UNIQUE (kind, ref)` on the journal; replays are found
//! by one lookup per batch and answered with the first result).
//!
//! Requests in a group that bills subscriptions take the general per-request path
//! ([`crate::ledger::reserve_tx`], [`crate::ledger::settle_tx`]) inside the same transaction.
//! If a batch transaction fails, each of its items is retried in its own transaction, so one bad
//! item cannot fail its neighbours.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sub2api_core::ledger::{Charge, Hold, HoldRequest, LedgerError, Settlement};
use sub2api_core::money::Money;
use sub2api_core::subscription::{BillingMode, split_charge};
use tokio::sync::{mpsc, oneshot};

use crate::Shared;
use crate::db::{Conn, Stmt, TxOf};
use crate::ledger::{
    in_tx, release_one, release_taken_hold, reserve_one, reserve_tx, settle_tx, take_hold,
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
}

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
pub(crate) struct Writer {
    tx: mpsc::Sender<Msg>,
    counters: Arc<Counters>,
}

impl Writer {
    pub(crate) fn spawn(shared: Arc<Shared>, max_batch: usize) -> Writer {
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 4);
        let counters = Arc::new(Counters::default());
        tokio::spawn(run(shared, rx, max_batch.max(1), counters.clone()));
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
struct Link {
    conn: Option<Conn>,
}

impl Link {
    async fn begin<'a>(&'a mut self, shared: &Shared) -> Result<TxOf<'a>, sqlx::Error> {
        if shared.wal_sync.is_none() {
            return shared.pool.begin().await;
        }
        if self.conn.is_none() {
            let mut conn = shared.pool.detach().await?;
            conn.exec("PRAGMA synchronous = NORMAL").await?;
            self.conn = Some(conn);
        }
        self.conn.as_mut().expect("just set").begin().await
    }

    /// After a failed transaction: start from a fresh connection next time.
    fn reset(&mut self) {
        self.conn = None;
    }

    async fn close(&mut self) {
        if let Some(c) = self.conn.take() {
            c.close().await;
        }
    }
}

async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Msg>,
    max_batch: usize,
    counters: Arc<Counters>,
) {
    let mut link = Link { conn: None };
    let syncer = shared.wal_sync.clone().map(Syncer::spawn);
    let mut msgs = Vec::with_capacity(max_batch);
    while let Some(first) = rx.recv().await {
        msgs.push(first);
        while msgs.len() < max_batch {
            match rx.try_recv() {
                Ok(m) => msgs.push(m),
                Err(_) => break,
            }
        }
        let mut holds = Vec::new();
        let mut releases = Vec::new();
        let mut settles = Vec::new();
        let mut barriers = Vec::new();
        let mut close = None;
        for m in msgs.drain(..) {
            match m {
                Msg::Hold(h, r) => holds.push((h, r)),
                Msg::Settle(c, r) => settles.push((c, r)),
                Msg::Release(h, r) => releases.push((h, r)),
                Msg::Barrier(b) => barriers.push(b),
                Msg::Close(b) => close = Some(b),
            }
        }
        // Holds first: they are cheap to commit and their requests are waiting to go upstream.
        if !holds.is_empty() || !releases.is_empty() {
            hold_round(&shared, &mut link, &counters, holds, releases).await;
        }
        if !settles.is_empty() {
            settle_round(&shared, &mut link, &counters, syncer.as_ref(), settles).await;
        }
        for b in barriers {
            match &syncer {
                // Answered once the settlements before it are durable.
                Some(s) => s.barrier(b).await,
                None => {
                    let _ = b.send(());
                }
            }
        }
        if let Some(b) = close {
            link.close().await;
            if let Some(s) = &syncer {
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
            return;
        }
    }
}

fn sorted_unique(ids: impl Iterator<Item = i64>) -> Vec<i64> {
    let mut v: Vec<i64> = ids.collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The billing modes of `groups` (a group that does not exist bills the wallet, as
/// [`crate::subscriptions::group_billing_mode`] does).
async fn billing_modes(
    tx: &mut TxOf<'_>,
    groups: &[i64],
) -> Result<HashMap<i64, BillingMode>, sqlx::Error> {
    let mut st = Stmt::new(tx.is_pg(), "SELECT id, billing_mode FROM groups WHERE id IN ");
    st.list(groups.iter().copied());
    let mut out = HashMap::with_capacity(groups.len());
    for r in tx.all(st.q()).await? {
        out.insert(
            r.i64("id")?,
            r.text("billing_mode")?.parse().unwrap_or_default(),
        );
    }
    Ok(out)
}

/// Reads (and on Postgres locks, in user id order) the wallets of `users`: `(balance, held)`.
async fn lock_wallets(
    tx: &mut TxOf<'_>,
    users: &[i64],
) -> Result<HashMap<i64, (i64, i64)>, sqlx::Error> {
    let mut st = Stmt::new(tx.is_pg(), "SELECT user_id, balance, held FROM wallets WHERE user_id IN ");
    st.list(users.iter().copied()).sql(" ORDER BY user_id");
    if tx.is_pg() {
        st.sql(" FOR UPDATE");
    }
    let mut out = HashMap::with_capacity(users.len());
    for r in tx.all(st.q()).await? {
        out.insert(r.i64("user_id")?, (r.i64("balance")?, r.i64("held")?));
    }
    Ok(out)
}

/// The journal refs of `kind` among `refs` that already exist, with their amounts.
async fn existing_refs(
    tx: &mut TxOf<'_>,
    kind: &'static str,
    refs: &[&str],
) -> Result<HashMap<String, i64>, sqlx::Error> {
    let mut st = Stmt::new(tx.is_pg(), "SELECT ref, amount FROM ledger_entries WHERE kind = ");
    st.arg(kind).sql(" AND ref IN ").list(refs.iter().copied());
    let mut out = HashMap::new();
    for r in tx.all(st.q()).await? {
        out.insert(r.text("ref")?, r.i64("amount")?);
    }
    Ok(out)
}

/// Applies per-user `(balance, held)` deltas in one statement.
async fn update_wallets(
    tx: &mut TxOf<'_>,
    deltas: &HashMap<i64, (i64, i64)>,
    now: i64,
) -> Result<(), sqlx::Error> {
    let changed: Vec<(i64, i64, i64)> = {
        let mut v: Vec<_> = deltas
            .iter()
            .filter(|(_, d)| **d != (0, 0))
            .map(|(u, (b, h))| (*u, *b, *h))
            .collect();
        v.sort_unstable();
        v
    };
    if changed.is_empty() {
        return Ok(());
    }
    let mut st = Stmt::new(tx.is_pg(), "UPDATE wallets SET balance = balance + CASE user_id");
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
    tx.exec(st.q()).await?;
    Ok(())
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

async fn insert_entries(tx: &mut TxOf<'_>, entries: &[Entry], now: i64) -> Result<(), sqlx::Error> {
    for chunk in entries.chunks(ROWS_PER_STATEMENT) {
        let mut st = Stmt::new(
            tx.is_pg(),
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
        tx.exec(st.q()).await?;
    }
    Ok(())
}

async fn insert_holds(
    tx: &mut TxOf<'_>,
    shared: &Shared,
    holds: &[&HoldRequest],
    now: i64,
) -> Result<(), sqlx::Error> {
    let expires = now.saturating_add(shared.hold_ttl_ms);
    for chunk in holds.chunks(ROWS_PER_STATEMENT) {
        let mut st = Stmt::new(
            tx.is_pg(),
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
        tx.exec(st.q()).await?;
    }
    Ok(())
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
        tokio::spawn(async move {
            let mut msgs = Vec::new();
            while rx.recv_many(&mut msgs, usize::MAX).await > 0 {
                let wal = wal.clone();
                let synced = tokio::task::spawn_blocking(move || {
                    std::fs::File::open(&wal).and_then(|f| f.sync_data())
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
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
        });
        Syncer { tx }
    }

    async fn settled(&self, answers: Vec<(SettleReply, Result<Settlement, LedgerError>)>) {
        let _ = self.tx.send(SyncMsg::Settled(answers));
    }

    async fn barrier(&self, b: oneshot::Sender<()>) {
        let _ = self.tx.send(SyncMsg::Barrier(b));
    }
}

type HoldResults = (Vec<Result<Hold, LedgerError>>, Vec<Result<(), LedgerError>>);

async fn hold_round(
    shared: &Shared,
    link: &mut Link,
    counters: &Counters,
    mut holds: Vec<(HoldRequest, HoldReply)>,
    releases: Vec<(Hold, ReleaseReply)>,
) {
    // Arrival order decides who gets the last of a balance; keep it.
    let now = shared.clock.now_ms();
    let reqs: Vec<&HoldRequest> = holds.iter().map(|(h, _)| h).collect();
    let rels: Vec<&Hold> = releases.iter().map(|(h, _)| h).collect();
    let r: Result<HoldResults, sqlx::Error> = async {
        let mut tx = link.begin(shared).await?;
        let out = hold_batch(&mut tx, shared, &reqs, &rels, now).await?;
        tx.commit().await?;
        Ok(out)
    }
    .await;
    match r {
        Ok((hr, rr)) => {
            counters.committed(hr.len() + rr.len());
            for ((_, reply), r) in holds.drain(..).zip(hr) {
                let _ = reply.send(r);
            }
            for ((_, reply), r) in releases.into_iter().zip(rr) {
                let _ = reply.send(r);
            }
        }
        Err(e) => {
            link.reset();
            counters.fallbacks.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, holds = holds.len(), releases = releases.len(),
                "hold batch failed; applying one by one");
            for (req, reply) in holds {
                let _ = reply.send(reserve_one(shared, &req, now).await);
            }
            for (hold, reply) in releases {
                let _ = reply.send(release_one(shared, &hold, now).await);
            }
        }
    }
}

async fn hold_batch(
    tx: &mut TxOf<'_>,
    shared: &Shared,
    holds: &[&HoldRequest],
    releases: &[&Hold],
    now: i64,
) -> Result<HoldResults, sqlx::Error> {
    let modes = if holds.is_empty() {
        HashMap::new()
    } else {
        billing_modes(tx, &sorted_unique(holds.iter().map(|h| h.group_id.0))).await?
    };
    let mode_of = |g: i64| modes.get(&g).copied().unwrap_or_default();
    let general = |h: &HoldRequest| mode_of(h.group_id.0).uses_subscription();
    let users = sorted_unique(
        holds
            .iter()
            .map(|h| h.user_id.0)
            .chain(releases.iter().map(|h| h.user_id.0)),
    );
    let any_general = !releases.is_empty() || holds.iter().any(|h| general(h));
    if any_general && tx.is_pg() {
        // Lock every wallet of the batch in one order before the per-request paths lock theirs.
        lock_wallets(tx, &users).await?;
    }

    let mut release_results = Vec::with_capacity(releases.len());
    for h in releases {
        release_results.push(match take_hold(tx, &h.request_id, h.user_id.0).await? {
            Some(row) => release_taken_hold(tx, &row, now, "released").await.map(|_| Ok(())),
            None => Ok(Ok(())),
        }?);
    }
    let mut results: Vec<Option<Result<Hold, LedgerError>>> = vec![None; holds.len()];
    for (i, h) in holds.iter().enumerate() {
        if general(h) {
            results[i] = Some(reserve_tx(tx, shared, h, now).await?);
        }
    }

    let fast: Vec<usize> = (0..holds.len()).filter(|i| results[*i].is_none()).collect();
    if !fast.is_empty() {
        let fast_users = sorted_unique(fast.iter().map(|i| holds[*i].user_id.0));
        let mut wallets = lock_wallets(tx, &fast_users).await?;
        let refs: Vec<&str> = fast.iter().map(|i| holds[*i].request_id.as_str()).collect();
        let mut seen: HashSet<String> = existing_refs(tx, "hold", &refs)
            .await?
            .into_keys()
            .collect();
        let mut deltas: HashMap<i64, (i64, i64)> = HashMap::new();
        let mut entries = Vec::new();
        let mut taken: Vec<&HoldRequest> = Vec::new();
        for i in fast {
            let h = holds[i];
            let user = h.user_id.0;
            let r = if !seen.insert(h.request_id.clone()) {
                Err(LedgerError::DuplicateHold(h.request_id.clone()))
            } else if let Some((balance, held)) = wallets.get_mut(&user) {
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
                    Err(LedgerError::InsufficientBalance {
                        available: Money::from_nanos(available.max(0)),
                        required: h.amount,
                    })
                }
            } else {
                Err(LedgerError::UnknownUser(h.user_id))
            };
            results[i] = Some(r);
        }
        update_wallets(tx, &deltas, now).await?;
        insert_holds(tx, shared, &taken, now).await?;
        insert_entries(tx, &entries, now).await?;
    }
    Ok((
        results
            .into_iter()
            .map(|r| r.expect("every hold decided"))
            .collect(),
        release_results,
    ))
}

async fn settle_round(
    shared: &Shared,
    link: &mut Link,
    counters: &Counters,
    syncer: Option<&Syncer>,
    mut jobs: Vec<(Charge, SettleReply)>,
) {
    // Per-request paths lock wallets one by one; sorting keeps every batch's lock order the same.
    jobs.sort_by(|a, b| (a.0.user_id, &a.0.request_id).cmp(&(b.0.user_id, &b.0.request_id)));
    let now = shared.clock.now_ms();
    let charges: Vec<&Charge> = jobs.iter().map(|(c, _)| c).collect();
    let r: Result<Vec<_>, sqlx::Error> = async {
        let mut tx = link.begin(shared).await?;
        let out = settle_batch(&mut tx, &charges, now).await?;
        tx.commit().await?;
        Ok(out)
    }
    .await;
    match r {
        Ok(results) => {
            counters.committed(results.len());
            let answers = jobs.into_iter().map(|(_, reply)| reply).zip(results);
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
            tracing::warn!(error = %e, size = jobs.len(), "settlement batch failed; settling one by one");
            let pool = &shared.pool;
            for (charge, reply) in jobs {
                let r = in_tx!(pool, |tx| settle_tx(&mut tx, &charge, now).await?);
                let r = r.map_err(unavailable).and_then(|r| r);
                if let Err(e) = &r {
                    tracing::error!(request_id = %charge.request_id, error = %e, "settlement failed");
                }
                let _ = reply.send(r);
            }
        }
    }
}

async fn settle_batch(
    tx: &mut TxOf<'_>,
    charges: &[&Charge],
    now: i64,
) -> Result<Vec<Result<Settlement, LedgerError>>, sqlx::Error> {
    let modes = billing_modes(tx, &sorted_unique(charges.iter().map(|c| c.group_id.0))).await?;
    let mode_of = |g: i64| modes.get(&g).copied().unwrap_or_default();
    let general = |c: &Charge| mode_of(c.group_id.0).uses_subscription();
    if tx.is_pg() && charges.iter().any(|c| general(c)) {
        lock_wallets(tx, &sorted_unique(charges.iter().map(|c| c.user_id.0))).await?;
    }
    let mut results: Vec<Option<Result<Settlement, LedgerError>>> = vec![None; charges.len()];
    for (i, c) in charges.iter().enumerate() {
        if general(c) {
            results[i] = Some(settle_tx(tx, c, now).await?);
        }
    }
    let fast: Vec<usize> = (0..charges.len())
        .filter(|i| results[*i].is_none())
        .collect();
    if fast.is_empty() {
        return Ok(results.into_iter().map(|r| r.expect("decided")).collect());
    }

    let users = sorted_unique(fast.iter().map(|i| charges[*i].user_id.0));
    let mut wallets = lock_wallets(tx, &users).await?;
    let refs: Vec<&str> = fast
        .iter()
        .map(|i| charges[*i].request_id.as_str())
        .collect();
    let mut settled = existing_refs(tx, "settle", &refs).await?;

    // Take the holds of the charges settling now (not of replays), matched by request and user.
    let fresh: Vec<usize> = {
        let mut seen = HashSet::new();
        fast.iter()
            .copied()
            .filter(|i| {
                let id = charges[*i].request_id.as_str();
                !settled.contains_key(id) && seen.insert(id)
            })
            .collect()
    };
    let mut taken: HashMap<String, crate::ledger::HoldRow> = HashMap::new();
    if !fresh.is_empty() {
        let mut st = Stmt::new(tx.is_pg(), "DELETE FROM holds WHERE (request_id, user_id) IN (VALUES ");
        for (n, i) in fresh.iter().enumerate() {
            st.sql(if n == 0 { "(" } else { ", (" })
                .arg(charges[*i].request_id.as_str())
                .sql(", ")
                .arg(charges[*i].user_id.0)
                .sql(")");
        }
        st.sql(
            ") RETURNING request_id, user_id, group_id, amount, wallet_amount, subscription_id, \
             subscription_amount",
        );
        let q = st.q();
        for r in tx.all(q).await? {
            let h = crate::ledger::HoldRow::from_row(&r)?;
            taken.insert(h.request_id.clone(), h);
        }
        for h in taken.values() {
            // The group stopped billing subscriptions while this request ran: give the
            // subscription part back (the wallet pays the whole charge, as the mode now says).
            if h.subscription_amount > 0 {
                unhold_subscription(tx, h).await?;
            }
        }
    }

    let mut deltas: HashMap<i64, (i64, i64)> = HashMap::new();
    let mut entries = Vec::new();
    for i in fast {
        let c = charges[i];
        let user = c.user_id.0;
        if let Some(first) = settled.get(c.request_id.as_str()) {
            results[i] = Some(Ok(Settlement {
                request_id: c.request_id.clone(),
                charged: Money::from_nanos(*first),
                replayed: true,
            }));
            continue;
        }
        let Some((balance, held)) = wallets.get_mut(&user) else {
            results[i] = Some(Err(LedgerError::UnknownUser(c.user_id)));
            continue;
        };
        let split = split_charge(mode_of(c.group_id.0), None, c.amount);
        let wallet_charge = split.wallet.nanos();
        let released = taken
            .remove(c.request_id.as_str())
            .map_or(0, |h| h.wallet_amount);
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
        settled.insert(c.request_id.clone(), c.amount.nanos());
        results[i] = Some(Ok(Settlement {
            request_id: c.request_id.clone(),
            charged: c.amount,
            replayed: false,
        }));
    }
    update_wallets(tx, &deltas, now).await?;
    insert_entries(tx, &entries, now).await?;
    Ok(results.into_iter().map(|r| r.expect("decided")).collect())
}
