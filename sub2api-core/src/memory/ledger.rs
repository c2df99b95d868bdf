use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;

use super::preallocated;
use crate::domain::UserId;
use crate::ledger::{
    Balance, Charge, Credit, CreditOutcome, EntryKind, Hold, HoldRequest, Ledger, LedgerError,
    Settlement,
};
use crate::money::Money;

/// One line of the memory journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    pub user_id: UserId,
    pub kind: EntryKind,
    /// Effect on the balance (holds and releases move `held`, not the balance, and record 0 here).
    pub amount: Money,
    /// Effect on the held amount.
    pub held_delta: Money,
    pub key: String,
}

#[derive(Default)]
struct State {
    wallets: HashMap<UserId, Balance>,
    holds: HashMap<String, Hold>,
    /// Settled request ids and what they were charged, for replays; the oldest are forgotten
    /// beyond `settled_keep` (see [`MemoryLedger::with_limits`]).
    settled: HashMap<String, Money>,
    settled_order: VecDeque<String>,
    credits: HashMap<String, CreditOutcome>,
    /// The most recent entries; older ones are folded into `folded`.
    journal: VecDeque<JournalEntry>,
    /// Per user, the sums `(balance, held)` of the entries folded out of `journal`.
    folded: HashMap<UserId, (i64, i64)>,
}

/// A [`Ledger`] in a mutex: every operation is one critical section, which is what makes holds
/// atomic. Users exist once they have been credited (or explicitly opened).
///
/// Its memory is bounded, so a long-running relay on the memory backend does not grow with every
/// request: the journal keeps its most recent entries and folds older ones into per-user sums
/// (which [`MemoryLedger::verify`] still checks), and replays of a settlement are recognised for
/// the most recent settlements only (65,536 by default: a settlement is only ever retried by the
/// request that made it, seconds later). Nothing survives a restart: for durable money use
/// `sub2api-sqlx`.
pub struct MemoryLedger {
    state: Mutex<State>,
    journal_keep: usize,
    settled_keep: usize,
}

impl Default for MemoryLedger {
    fn default() -> Self {
        Self::with_limits(65_536, 65_536)
    }
}

impl State {
    fn push(&mut self, e: JournalEntry, keep: usize) {
        self.journal.push_back(e);
        while self.journal.len() > keep.max(1) {
            let old = self.journal.pop_front().expect("non-empty");
            let v = self.folded.entry(old.user_id).or_default();
            v.0 += old.amount.nanos();
            v.1 += old.held_delta.nanos();
        }
    }

    fn remember_settled(&mut self, request_id: String, charged: Money, keep: usize) {
        self.settled_order.push_back(request_id.clone());
        self.settled.insert(request_id, charged);
        while self.settled_order.len() > keep.max(1) {
            let old = self.settled_order.pop_front().expect("non-empty");
            self.settled.remove(&old);
        }
    }
}

impl MemoryLedger {
    pub fn new() -> Self {
        Self::default()
    }

    /// A ledger that keeps `journal` recent journal entries and recognises replays of the last
    /// `settled` settlements.
    pub fn with_limits(journal: usize, settled: usize) -> Self {
        // Sized for their bounds up front (see `preallocated`).
        let state = State {
            journal: VecDeque::with_capacity(preallocated(journal)),
            settled: HashMap::with_capacity(preallocated(settled)),
            settled_order: VecDeque::with_capacity(preallocated(settled)),
            ..State::default()
        };
        MemoryLedger {
            state: Mutex::new(state),
            journal_keep: journal,
            settled_keep: settled,
        }
    }

    /// Opens an empty wallet so holds against it fail with "insufficient" rather than "unknown".
    pub fn open(&self, user: UserId) {
        self.state.lock().unwrap().wallets.entry(user).or_default();
    }

    /// The most recent journal entries (see the type's docs), oldest first.
    pub fn journal(&self) -> Vec<JournalEntry> {
        self.state.lock().unwrap().journal.iter().cloned().collect()
    }

    /// Checks that every balance equals the sum of its journal (and every held amount the sum of
    /// its open holds); returns the users where it does not.
    pub fn verify(&self) -> Vec<UserId> {
        let s = self.state.lock().unwrap();
        let mut sums: HashMap<UserId, (i64, i64)> = s.folded.clone();
        for e in &s.journal {
            let v = sums.entry(e.user_id).or_default();
            v.0 += e.amount.nanos();
            v.1 += e.held_delta.nanos();
        }
        s.wallets
            .iter()
            .filter(|(u, b)| {
                let (bal, held) = sums.get(u).copied().unwrap_or_default();
                b.total.nanos() != bal || b.held.nanos() != held
            })
            .map(|(u, _)| *u)
            .collect()
    }
}

#[async_trait]
impl Ledger for MemoryLedger {
    async fn reserve(&self, req: HoldRequest) -> Result<Hold, LedgerError> {
        let mut s = self.state.lock().unwrap();
        if s.holds.contains_key(&req.request_id) || s.settled.contains_key(&req.request_id) {
            return Err(LedgerError::DuplicateHold(req.request_id));
        }
        let wallet = s
            .wallets
            .get_mut(&req.user_id)
            .ok_or(LedgerError::UnknownUser(req.user_id))?;
        let available = wallet.available();
        if req.amount.is_negative() || available < req.amount || !available.is_positive() {
            return Err(LedgerError::InsufficientBalance {
                available,
                required: req.amount,
            });
        }
        wallet.held = wallet.held.saturating_add(req.amount);
        let hold = Hold {
            request_id: req.request_id.clone(),
            user_id: req.user_id,
            group_id: req.group_id,
            amount: req.amount,
        };
        s.push(
            JournalEntry {
                user_id: req.user_id,
                kind: EntryKind::Hold,
                amount: Money::ZERO,
                held_delta: req.amount,
                key: req.request_id.clone(),
            },
            self.journal_keep,
        );
        s.holds.insert(req.request_id, hold.clone());
        Ok(hold)
    }

    async fn settle(&self, charge: Charge) -> Result<Settlement, LedgerError> {
        let mut s = self.state.lock().unwrap();
        if let Some(charged) = s.settled.get(&charge.request_id) {
            return Ok(Settlement {
                request_id: charge.request_id,
                charged: *charged,
                replayed: true,
            });
        }
        let hold = s.holds.remove(&charge.request_id);
        let wallet = s
            .wallets
            .get_mut(&charge.user_id)
            .ok_or(LedgerError::UnknownUser(charge.user_id))?;
        let held = hold.as_ref().map(|h| h.amount).unwrap_or(Money::ZERO);
        wallet.held = wallet.held.saturating_sub(held);
        wallet.total = wallet.total.saturating_sub(charge.amount);
        s.push(
            JournalEntry {
                user_id: charge.user_id,
                kind: EntryKind::Settle,
                amount: Money::ZERO.saturating_sub(charge.amount),
                held_delta: Money::ZERO.saturating_sub(held),
                key: charge.request_id.clone(),
            },
            self.journal_keep,
        );
        s.remember_settled(charge.request_id.clone(), charge.amount, self.settled_keep);
        Ok(Settlement {
            request_id: charge.request_id,
            charged: charge.amount,
            replayed: false,
        })
    }

    async fn release(&self, hold: &Hold) -> Result<(), LedgerError> {
        let mut s = self.state.lock().unwrap();
        let Some(h) = s.holds.remove(&hold.request_id) else {
            return Ok(());
        };
        if let Some(w) = s.wallets.get_mut(&h.user_id) {
            w.held = w.held.saturating_sub(h.amount);
        }
        s.push(
            JournalEntry {
                user_id: h.user_id,
                kind: EntryKind::Release,
                amount: Money::ZERO,
                held_delta: Money::ZERO.saturating_sub(h.amount),
                key: h.request_id,
            },
            self.journal_keep,
        );
        Ok(())
    }

    async fn credit(&self, credit: Credit) -> Result<CreditOutcome, LedgerError> {
        let mut s = self.state.lock().unwrap();
        if let Some(done) = s.credits.get(&credit.idempotency_key) {
            return Ok(CreditOutcome {
                replayed: true,
                ..done.clone()
            });
        }
        let wallet = s.wallets.entry(credit.user_id).or_default();
        if credit.amount.is_negative()
            && wallet
                .available()
                .saturating_add(credit.amount)
                .is_negative()
        {
            return Err(LedgerError::WouldOverdraw {
                amount: credit.amount,
            });
        }
        wallet.total = wallet.total.saturating_add(credit.amount);
        let out = CreditOutcome {
            balance: wallet.total,
            replayed: false,
        };
        s.push(
            JournalEntry {
                user_id: credit.user_id,
                kind: credit.kind,
                amount: credit.amount,
                held_delta: Money::ZERO,
                key: credit.idempotency_key.clone(),
            },
            self.journal_keep,
        );
        s.credits.insert(credit.idempotency_key, out.clone());
        Ok(out)
    }

    async fn balance(&self, user: UserId) -> Result<Balance, LedgerError> {
        self.state
            .lock()
            .unwrap()
            .wallets
            .get(&user)
            .copied()
            .ok_or(LedgerError::UnknownUser(user))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::GroupId;

    fn credit(user: i64, usd: i64, key: &str) -> Credit {
        Credit {
            user_id: UserId(user),
            amount: Money::usd(usd),
            idempotency_key: key.into(),
            kind: EntryKind::Credit,
            memo: String::new(),
        }
    }

    fn hold(id: &str, nanos: i64) -> HoldRequest {
        HoldRequest {
            request_id: id.into(),
            user_id: UserId(1),
            group_id: GroupId(1),
            amount: Money::from_nanos(nanos),
        }
    }

    #[tokio::test]
    async fn holds_never_overdraw_under_concurrency() {
        let l = Arc::new(MemoryLedger::new());
        l.credit(credit(1, 1, "seed")).await.unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let l = l.clone();
                tokio::spawn(
                    async move { l.reserve(hold(&format!("r{i}"), 30_000_000)).await.is_ok() },
                )
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            ok += t.await.unwrap() as i64;
        }
        assert_eq!(ok, 33); // 33 * 0.03 <= 1.00 < 34 * 0.03
        let b = l.balance(UserId(1)).await.unwrap();
        assert_eq!(b.held, Money::from_nanos(33 * 30_000_000));
        assert!(!b.available().is_negative());
        assert!(l.verify().is_empty());
    }

    #[tokio::test]
    async fn settle_is_idempotent_and_releases_the_rest() {
        let l = MemoryLedger::new();
        l.credit(credit(1, 10, "seed")).await.unwrap();
        l.reserve(hold("r1", Money::usd(2).nanos())).await.unwrap();
        let c = Charge {
            request_id: "r1".into(),
            user_id: UserId(1),
            group_id: GroupId(1),
            amount: Money::usd(1),
        };
        let first = l.settle(c.clone()).await.unwrap();
        let second = l.settle(c).await.unwrap();
        assert!(!first.replayed && second.replayed);
        let b = l.balance(UserId(1)).await.unwrap();
        assert_eq!(
            b,
            Balance {
                total: Money::usd(9),
                held: Money::ZERO
            }
        );
        assert!(l.verify().is_empty());
    }

    #[tokio::test]
    async fn credits_are_idempotent_and_debits_cannot_overdraw() {
        let l = MemoryLedger::new();
        assert!(!l.credit(credit(1, 5, "pay_1")).await.unwrap().replayed);
        assert!(l.credit(credit(1, 5, "pay_1")).await.unwrap().replayed);
        assert_eq!(l.balance(UserId(1)).await.unwrap().total, Money::usd(5));
        let debit = Credit {
            amount: Money::usd(-6),
            ..credit(1, 0, "adj")
        };
        assert!(matches!(
            l.credit(debit).await,
            Err(LedgerError::WouldOverdraw { .. })
        ));
    }

    #[tokio::test]
    async fn memory_stays_bounded_and_the_books_still_balance() {
        let l = MemoryLedger::with_limits(16, 8);
        l.credit(credit(1, 100, "seed")).await.unwrap();
        for i in 0..100 {
            let id = format!("r{i}");
            l.reserve(hold(&id, 1_000)).await.unwrap();
            let c = Charge {
                request_id: id,
                user_id: UserId(1),
                group_id: GroupId(1),
                amount: Money::from_nanos(700),
            };
            assert!(!l.settle(c.clone()).await.unwrap().replayed);
            // A replay right away is recognised and moves nothing.
            assert!(l.settle(c).await.unwrap().replayed);
        }
        assert_eq!(l.journal().len(), 16);
        assert!(l.verify().is_empty(), "folded entries still count");
        let b = l.balance(UserId(1)).await.unwrap();
        assert_eq!(
            b.total,
            Money::usd(100).saturating_sub(Money::from_nanos(70_000))
        );
        assert_eq!(b.held, Money::ZERO);
        let s = l.state.lock().unwrap();
        assert_eq!((s.settled.len(), s.settled_order.len()), (8, 8));
    }
}
