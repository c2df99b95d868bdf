//! A round's reads and writes on the writer's own SQLite connection ([`Direct`]).
//!
//! On that connection a statement costs no round trip, only SQLite's own work, so a round is
//! one cached single-row statement per key and per row: no batch text to parse, no JSON to
//! build in Rust and pick apart again in SQLite (together a fifth of the writer's CPU when the
//! round was two statements fed JSON arrays through sqlx's worker thread).

use rusqlite::{OptionalExtension, params};
use sub2api_core::domain::UsageRecord;

use super::{Pending, Snapshot};
use crate::Shared;
use crate::direct::{self, Direct};
use crate::ledger::HoldRow;

/// Reads the round's [`Snapshot`], one indexed lookup per key.
pub(super) fn snapshot(
    d: &Direct,
    users: &[i64],
    groups: &[i64],
    hold_refs: &[&str],
    settle_refs: &[(&str, i64)],
) -> Result<Snapshot, sqlx::Error> {
    let c = d.conn();
    let read = || -> rusqlite::Result<Snapshot> {
        let mut snap = Snapshot::default();
        let mut st = c.prepare_cached("SELECT balance, held FROM wallets WHERE user_id = ?1")?;
        for &u in users {
            if let Some(w) = st
                .query_row([u], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
            {
                snap.wallets.insert(u, w);
            }
        }
        let mut st = c.prepare_cached("SELECT billing_mode FROM groups WHERE id = ?1")?;
        for &g in groups {
            if let Some(mode) = st.query_row([g], |r| r.get::<_, String>(0)).optional()? {
                snap.modes.insert(g, mode.parse().unwrap_or_default());
            }
        }
        let mut st =
            c.prepare_cached("SELECT amount FROM ledger_entries WHERE kind = ?1 AND ref = ?2")?;
        for &r in hold_refs {
            if st.exists(params!["hold", r])? {
                snap.held_refs.insert(r.to_owned());
            }
        }
        for &(r, _) in settle_refs {
            if let Some(amount) = st
                .query_row(params!["settle", r], |row| row.get(0))
                .optional()?
            {
                snap.settled_refs.insert(r.to_owned(), amount);
            }
        }
        let mut st = c.prepare_cached(
            "SELECT group_id, amount, wallet_amount, subscription_id, subscription_amount \
             FROM holds WHERE request_id = ?1 AND user_id = ?2",
        )?;
        for &(r, u) in settle_refs {
            let hold = st
                .query_row(params![r, u], |row| {
                    Ok(HoldRow {
                        request_id: r.to_owned(),
                        user_id: u,
                        group_id: row.get(0)?,
                        amount: row.get(1)?,
                        wallet_amount: row.get(2)?,
                        subscription_id: row.get(3)?,
                        subscription_amount: row.get(4)?,
                    })
                })
                .optional()?;
            if let Some(h) = hold {
                snap.holds.insert(h.request_id.clone(), h);
            }
        }
        Ok(snap)
    };
    read().map_err(direct::error)
}

/// Runs the writes a round decided on, and the round's usage rows.
pub(super) fn write(
    d: &Direct,
    pending: &Pending<'_>,
    shared: &Shared,
    now: i64,
    usage: &[&[UsageRecord]],
) -> Result<(), sqlx::Error> {
    let c = d.conn();
    let expires = now.saturating_add(shared.hold_ttl_ms);
    let run = || -> rusqlite::Result<()> {
        let mut st = c.prepare_cached("DELETE FROM holds WHERE request_id = ?1")?;
        for id in &pending.taken_ids {
            st.execute([id])?;
        }
        let mut deltas: Vec<(i64, i64, i64)> = pending
            .deltas
            .iter()
            .filter(|(_, d)| **d != (0, 0))
            .map(|(u, (b, h))| (*u, *b, *h))
            .collect();
        deltas.sort_unstable();
        let mut st = c.prepare_cached(
            "UPDATE wallets SET balance = balance + ?2, held = held + ?3, updated_at = ?4 \
             WHERE user_id = ?1",
        )?;
        for (u, b, h) in deltas {
            st.execute(params![u, b, h, now])?;
        }
        let mut st = c.prepare_cached(
            "INSERT INTO holds (request_id, user_id, group_id, amount, wallet_amount, \
             subscription_amount, instance_id, created_at, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?4, 0, ?5, ?6, ?7)",
        )?;
        for h in &pending.taken {
            st.execute(params![
                h.request_id,
                h.user_id.0,
                h.group_id.0,
                h.amount.nanos(),
                shared.instance_id,
                now,
                expires
            ])?;
        }
        let mut st = c.prepare_cached(
            "INSERT INTO ledger_entries (user_id, kind, ref, amount, balance_delta, held_delta, \
             balance_after, group_id, subscription_amount, memo, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, '', ?9)",
        )?;
        for e in &pending.entries {
            st.execute(params![
                e.user_id,
                e.kind,
                e.request_id,
                e.amount,
                e.balance_delta,
                e.held_delta,
                e.balance_after,
                e.group_id,
                now
            ])?;
        }
        let mut st = c.prepare_cached(crate::usage_log::insert_one_sql())?;
        for r in usage.iter().flat_map(|rows| rows.iter()) {
            for (i, v) in crate::usage_log::values(r).iter().enumerate() {
                st.raw_bind_parameter(i + 1, v)?;
            }
            st.raw_execute()?;
        }
        Ok(())
    };
    run().map_err(direct::error)
}
