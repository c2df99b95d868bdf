//! A SQLite file's WAL under steady writes: the background checkpoints never catch up with the
//! ledger writer on their own, so the writer finishes them (see `checkpoint.rs`), and the WAL
//! must start over from its beginning instead of growing for as long as the load lasts.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Kind, TestDb, assert_books_balance, funded_user, group, usd};
use sub2api_core::domain::{GroupId, UserId};
use sub2api_core::ledger::{Charge, HoldRequest, Ledger};
use sub2api_sqlx::SqlStore;

/// The WAL header's checkpoint sequence number: SQLite adds one each time the log starts over.
fn wal_restarts(wal: &std::path::Path) -> Option<u32> {
    let bytes = std::fs::read(wal).ok()?;
    Some(u32::from_be_bytes(bytes.get(12..16)?.try_into().ok()?))
}

/// What one billed request asks of the ledger: a hold, then its settlement.
async fn billed_request(store: &SqlStore, user: UserId, group: GroupId, id: String) {
    let hold = store
        .reserve(HoldRequest {
            request_id: id,
            user_id: user,
            group_id: group,
            amount: usd("0.01"),
        })
        .await
        .unwrap();
    store
        .settle(Charge {
            request_id: hold.request_id,
            user_id: user,
            group_id: group,
            amount: usd("0.005"),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_starts_over_under_steady_writes() {
    let db = TestDb::new(Kind::Sqlite).await;
    let store = db.open().await;
    let g = group(&store, "wal").await;
    let user = funded_user(&store, "wal@example.com", usd("1000000")).await;
    let wal = std::path::PathBuf::from(format!("{}-wal", db.url.trim_start_matches("sqlite://")));

    // 64 requests in flight at all times, so the writer never idles long enough for a background
    // checkpoint to catch up on its own.
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..64)
        .map(|w| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    billed_request(&store, user, g, format!("wal-{w}-{n}")).await;
                }
            })
        })
        .collect();
    // Each round of the writer is a signal: wait on them (through a settlement of our own) and
    // look at the WAL header after each.
    let started = Instant::now();
    let mut seen = None;
    let mut grown = 0u64;
    let mut n = 0u64;
    loop {
        n += 1;
        billed_request(&store, user, g, format!("probe-{n}")).await;
        let len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        grown = grown.max(len);
        match (seen, wal_restarts(&wal)) {
            (None, Some(seq)) => seen = Some(seq),
            // Started over once it had grown past the checkpointer's threshold (8,192 pages).
            (Some(first), Some(seq)) if seq != first && grown > 8192 * 4096 => break,
            _ => {}
        }
        assert!(
            len < 1 << 30 && started.elapsed() < Duration::from_secs(120),
            "the WAL never started over ({len} bytes)"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_books_balance(&store).await;
    assert_eq!(store.writer_stats().fallbacks, 0);
    store.close().await;
}
