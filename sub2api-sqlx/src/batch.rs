//! Group commit for settlements.
//!
//! Every finished request settles, and each settlement must be durable before the relay releases
//! the response's last bytes. Committing each in its own transaction would make the database's
//! fsync the relay's throughput limit (especially SQLite, one writer at a time). Instead
//! the settler hands settlements to one background worker, which takes whatever is queued (up to a
//! batch limit), settles all of it in one transaction, commits once, and only then answers each
//! caller through its oneshot. A caller therefore never hears "settled" for something that is not
//! committed, and a crash loses only settlements nobody was told about — whose requests' holds
//! are released by recovery.
//!
//! A batch is applied in (user, request id) order so that concurrent batches from several
//! processes lock wallets in the same order. If the batch transaction fails, each settlement is
//! retried in its own transaction, so one bad item cannot fail its neighbours; settling is
//! idempotent by request id, so a retry after an ambiguous commit failure never double-charges.

use std::sync::Arc;

use sub2api_core::ledger::{Charge, LedgerError, Settlement};
use tokio::sync::{mpsc, oneshot};

use crate::Shared;
use crate::ledger::{in_tx, settle_tx, unavailable};

type Reply = oneshot::Sender<Result<Settlement, LedgerError>>;

enum Msg {
    Settle(Charge, Reply),
    /// Answered once everything queued before it has been committed.
    Barrier(oneshot::Sender<()>),
}

/// The queue in front of the settlement worker.
pub(crate) struct Settler {
    tx: mpsc::Sender<Msg>,
}

impl Settler {
    pub(crate) fn spawn(shared: Arc<Shared>, max_batch: usize) -> Settler {
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 4);
        tokio::spawn(run(shared, rx, max_batch.max(1)));
        Settler { tx }
    }

    /// Queues a settlement and waits until its transaction has committed.
    pub(crate) async fn settle(&self, charge: Charge) -> Result<Settlement, LedgerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Settle(charge, reply))
            .await
            .map_err(|_| LedgerError::Unavailable("the ledger is closed".into()))?;
        rx.await
            .map_err(|_| LedgerError::Unavailable("the settlement worker stopped".into()))?
    }

    /// Waits until every settlement queued so far has committed.
    pub(crate) async fn drain(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Barrier(reply)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Msg>, max_batch: usize) {
    let mut msgs = Vec::with_capacity(max_batch);
    while let Some(first) = rx.recv().await {
        msgs.push(first);
        while msgs.len() < max_batch {
            match rx.try_recv() {
                Ok(m) => msgs.push(m),
                Err(_) => break,
            }
        }
        let mut jobs = Vec::with_capacity(msgs.len());
        let mut barriers = Vec::new();
        for m in msgs.drain(..) {
            match m {
                Msg::Settle(c, r) => jobs.push((c, r)),
                Msg::Barrier(b) => barriers.push(b),
            }
        }
        if !jobs.is_empty() {
            settle_batch(&shared, jobs).await;
        }
        for b in barriers {
            let _ = b.send(());
        }
    }
}

async fn settle_batch(shared: &Shared, mut jobs: Vec<(Charge, Reply)>) {
    jobs.sort_by(|a, b| (a.0.user_id, &a.0.request_id).cmp(&(b.0.user_id, &b.0.request_id)));
    let now = shared.clock.now_ms();
    let batch: Result<Vec<_>, sqlx::Error> = async {
        let mut tx = shared.pool.begin().await?;
        let mut results = Vec::with_capacity(jobs.len());
        for (charge, _) in &jobs {
            results.push(settle_tx(&mut tx, charge, now).await?);
        }
        tx.commit().await?;
        Ok(results)
    }
    .await;
    match batch {
        Ok(results) => {
            for ((_, reply), r) in jobs.into_iter().zip(results) {
                let _ = reply.send(r);
            }
        }
        Err(e) => {
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
