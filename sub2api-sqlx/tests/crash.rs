//! kill -9 with holds and settlements in flight: after a restart no acknowledged settlement is
//! lost or repeated, the dead process's holds are released, and the books balance.
//!
//! The child is this same test binary re-run with `SUB2API_CRASH_CHILD` set, executing only
//! [`crash_child`]: it takes holds and settles in a loop, printing each settlement after
//! `settle` returned. The parent kills it with SIGKILL mid-loop.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;

use common::{Kind, TestDb, assert_books_balance, funded_user, group, usd};
use sub2api_core::domain::{GroupId, UserId};
use sub2api_core::ledger::{Charge, HoldRequest, Ledger};
use sub2api_core::money::Money;
use sub2api_sqlx::{ManualClock, SqlStore, StoreOptions};
use tokio::io::{AsyncBufReadExt, BufReader};

const CHILD_ENV: &str = "SUB2API_CRASH_CHILD";

/// The child's body; a no-op in a normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return;
    };
    let user = UserId(std::env::var("CRASH_USER").unwrap().parse().unwrap());
    let group = GroupId(std::env::var("CRASH_GROUP").unwrap().parse().unwrap());
    let mut opts = StoreOptions::without_master_key();
    opts.instance_id = Some("crashed-child".into());
    opts.sweep_interval = None;
    let store = SqlStore::connect_with(&url, opts).await.unwrap();
    let mut out = std::io::stdout();
    for i in 0u64.. {
        let id = format!("c-{i}");
        let hold = HoldRequest {
            request_id: id.clone(),
            user_id: user,
            group_id: group,
            amount: usd("0.01"),
        };
        store.reserve(hold).await.unwrap();
        if i % 3 != 0 {
            // Two thirds settle, concurrently with the loop going on; one third stays held.
            let s = store.clone();
            let amount = Money::from_nanos(1_000 + i as i64);
            tokio::spawn(async move {
                let c = Charge {
                    request_id: id.clone(),
                    user_id: user,
                    group_id: group,
                    amount,
                };
                let done = s.settle(c).await.unwrap();
                let mut out = std::io::stdout().lock();
                writeln!(out, "SETTLED {id} {}", done.charged.nanos()).unwrap();
                out.flush().unwrap();
            });
        } else {
            writeln!(out, "HELD {id}").unwrap();
            out.flush().unwrap();
        }
    }
}

async fn killed_process_comes_back_with_holds_released(db: &TestDb) {
    let setup = db.open().await;
    let g = group(&setup, "default").await;
    let user = funded_user(&setup, "crash@example.com", usd("1000")).await;
    setup.close().await;

    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, &db.url)
        .env("CRASH_USER", user.0.to_string())
        .env("CRASH_GROUP", g.0.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut settled: HashMap<String, i64> = HashMap::new();
    let mut held = 0;
    while settled.len() < 40 {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("the child died early");
        if let Some(rest) = line.strip_prefix("SETTLED ") {
            let (id, amount) = rest.split_once(' ').unwrap();
            settled.insert(id.to_owned(), amount.parse().unwrap());
        } else if line.starts_with("HELD ") {
            held += 1;
        }
    }
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL");
    assert!(held > 0);

    // Postgres releases only expired holds at startup (other nodes may be alive): restart "later".
    let store = if db.kind == Kind::Postgres {
        let later = sub2api_core::account_provider::now_ms() + 16 * 60_000;
        db.open_with_clock(Arc::new(ManualClock::new(later))).await
    } else {
        db.open().await
    };
    let before = store.balance(user).await.unwrap();
    assert!(
        before.held.is_positive(),
        "the dead process left holds behind"
    );
    let report = store.recover().await.unwrap();
    assert!(report.released_holds >= held as u64);
    let after = store.balance(user).await.unwrap();
    assert_eq!(after.held, Money::ZERO);
    assert_eq!(after.total, before.total, "releasing holds moves no money");
    assert_books_balance(&store).await;

    // Every acknowledged settlement is there exactly once: replaying it moves nothing.
    let mut acknowledged = 0i64;
    for (id, amount) in &settled {
        let c = Charge {
            request_id: id.clone(),
            user_id: user,
            group_id: g,
            amount: Money::from_nanos(*amount + 7),
        };
        let s = store.settle(c).await.unwrap();
        assert!(s.replayed, "{id} was acknowledged, so it must be journaled");
        assert_eq!(s.charged.nanos(), *amount);
        acknowledged += amount;
    }
    let end = store.balance(user).await.unwrap();
    assert_eq!(end, after);
    assert!(end.total.nanos() <= usd("1000").nanos() - acknowledged);
    assert_books_balance(&store).await;
    store.close().await;
}
both!(
    killed_process_comes_back_with_holds_released,
    super::killed_process_comes_back_with_holds_released
);
