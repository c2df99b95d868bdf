//! Giving back the holds of requests that will never settle.
//!
//! A hold belongs to a request in flight. If the process serving it dies (kill -9, power loss),
//! nobody will settle or release it, and the money would stay set aside forever. Every hold
//! therefore records the store instance that took it (`instance_id`, random per
//! [`crate::SqlStore`] unless configured) and an expiry (`created_at + hold_ttl`).
//!
//! The rule:
//! - **Every backend:** a hold past its `expires_at` is released — by [`SqlStore::recover`] at
//!   startup and by the periodic sweeper (every `sweep_interval`). The TTL must exceed the longest
//!   request; a request that outlives its hold still settles (settling without a hold charges the
//!   exact cost), the sweep only stops the money being set aside.
//! - **SQLite, additionally:** at startup [`SqlStore::recover`] releases every hold taken by any
//!   other instance. A SQLite file is served by one relay process, so at startup every existing
//!   hold belongs to a dead process. (Do not call `recover` while another process is serving the
//!   same file.)
//! - **Postgres:** several relays share the database and a starting node cannot tell a dead
//!   peer's holds from a live one's, so only expired holds are released automatically; an operator
//!   who knows a node is gone can release its holds at once with
//!   [`SqlStore::release_holds_of_instance`].
//!
//! Settled charges need no recovery: a settlement is acknowledged only after its transaction
//! committed, and it is idempotent by request id, so a restart neither loses nor repeats one.

use sub2api_core::store::StoreError;

use crate::db::{Backend, Q};
use crate::ledger::{HoldRow, in_tx, lock_wallet, release_taken_hold};
use crate::{Shared, SqlStore, store_err};

/// Which holds a sweep releases.
#[derive(Clone, Debug)]
pub(crate) enum Sweep {
    Expired,
    /// Holds taken by any instance but this one (SQLite startup).
    NotInstance(String),
    Instance(String),
}

/// What [`SqlStore::recover`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RecoveryReport {
    pub released_holds: u64,
}

const ROUND: i64 = 500;

/// Releases the holds `which` selects, in rounds of a bounded size, one transaction per round.
pub(crate) async fn sweep(shared: &Shared, which: Sweep) -> Result<u64, sqlx::Error> {
    let now = shared.clock.now_ms();
    // The selecting condition, with its one parameter numbered `$p`.
    let (op, arg): (&str, crate::db::Arg) = match &which {
        Sweep::Expired => ("expires_at <=", now.into()),
        Sweep::NotInstance(i) => ("instance_id <>", i.clone().into()),
        Sweep::Instance(i) => ("instance_id =", i.clone().into()),
    };
    let cond = |p: usize| format!("{op} ${p}");
    let memo = match &which {
        Sweep::Expired => "hold expired",
        _ => "holder instance gone",
    };
    let mut released = 0u64;
    loop {
        let candidates = shared
            .pool
            .all(
                Q::built(format!(
                    "SELECT request_id, user_id FROM holds WHERE {} ORDER BY user_id, request_id LIMIT {ROUND}",
                    cond(1)
                ))
                .bind(arg.clone()),
            )
            .await?;
        if candidates.is_empty() {
            break;
        }
        let mut ids = Vec::with_capacity(candidates.len());
        for c in &candidates {
            ids.push((c.text("request_id")?, c.i64("user_id")?));
        }
        let pool = &shared.pool;
        let round = in_tx!(pool, |tx| {
            let mut n = 0u64;
            for (request_id, user) in &ids {
                if lock_wallet(&mut tx, *user).await?.is_none() {
                    continue;
                }
                let row = tx
                    .opt(
                        Q::built(format!(
                            "DELETE FROM holds WHERE request_id = $1 AND {}
                             RETURNING request_id, user_id, group_id, amount, wallet_amount, subscription_id, subscription_amount",
                            cond(2)
                        ))
                        .bind(request_id)
                        .bind(arg.clone()),
                    )
                    .await?;
                if let Some(r) = row {
                    let hold = HoldRow::from_row(&r)?;
                    release_taken_hold(&mut tx, &hold, now, memo).await?;
                    n += 1;
                }
            }
            n
        })?;
        released += round;
        if round == 0 || (candidates.len() as i64) < ROUND {
            break;
        }
    }
    if released > 0 {
        tracing::info!(released, ?which, "released holds");
    }
    Ok(released)
}

impl SqlStore {
    /// The startup sweep (see the module docs for the rule). Call once before serving.
    pub async fn recover(&self) -> Result<RecoveryReport, StoreError> {
        let shared = self.shared();
        let mut released = sweep(shared, Sweep::Expired).await.map_err(store_err)?;
        if shared.pool.backend() == Backend::Sqlite {
            released += sweep(shared, Sweep::NotInstance(shared.instance_id.clone()))
                .await
                .map_err(store_err)?;
        }
        Ok(RecoveryReport {
            released_holds: released,
        })
    }

    /// Releases every hold past its expiry (what the periodic sweeper does).
    pub async fn release_expired_holds(&self) -> Result<u64, StoreError> {
        sweep(self.shared(), Sweep::Expired)
            .await
            .map_err(store_err)
    }

    /// Releases every hold taken by a store instance known to be gone (e.g. a dead Postgres node).
    pub async fn release_holds_of_instance(&self, instance_id: &str) -> Result<u64, StoreError> {
        sweep(self.shared(), Sweep::Instance(instance_id.to_owned()))
            .await
            .map_err(store_err)
    }
}
