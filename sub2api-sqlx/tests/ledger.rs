//! The ledger contract on both backends: restart durability, idempotent seeding, holds that
//! never overdraw under concurrency from two pools, idempotent settlement, expiry sweeps, and the
//! journal invariant after a random workload.

mod common;

use std::sync::Arc;

use common::{TestDb, assert_books_balance, funded_user, group, usd};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sub2api_core::domain::{GroupId, KeyId, Usage, UsageRecord, UserId};
use sub2api_core::ledger::{Charge, Credit, EntryKind, Hold, HoldRequest, Ledger, LedgerError};
use sub2api_core::meter::Ending;
use sub2api_core::money::Money;
use sub2api_core::store::{Directory, UsageLog, UsageQuery};
use sub2api_core::subscription::{BillingMode, WindowSpec};
use sub2api_sqlx::{ManualClock, NewPlan};

fn hold_req(id: &str, user: UserId, group: GroupId, amount: Money) -> HoldRequest {
    HoldRequest {
        request_id: id.into(),
        user_id: user,
        group_id: group,
        amount,
    }
}

fn charge(id: &str, user: UserId, group: GroupId, amount: Money) -> Charge {
    Charge {
        request_id: id.into(),
        user_id: user,
        group_id: group,
        amount,
    }
}

fn usage_row(i: usize, user: UserId, group: GroupId, cost: Money) -> UsageRecord {
    UsageRecord {
        request_id: format!("req-{i}"),
        user_id: user,
        key_id: KeyId(1),
        group_id: group,
        account_id: None,
        model: "claude-sonnet-4".into(),
        usage: Usage {
            input_tokens: 100 + i as u64,
            output_tokens: 50,
            ..Usage::default()
        },
        cost,
        stream: i.is_multiple_of(2),
        ending: Ending::Complete,
        duration_ms: 1234,
        created_at: 1_700_000_000_000 + i as i64,
    }
}

async fn restart_keeps_every_balance_and_usage_row(db: &TestDb) {
    let store = db.open().await;
    let g = group(&store, "default").await;
    let alice = funded_user(&store, "alice@example.com", usd("10")).await;
    let bob = funded_user(&store, "bob@example.com", usd("3")).await;
    for i in 0..30 {
        let cost = Money::from_nanos(1_000_001 * (i as i64 + 1));
        let id = format!("req-{i}");
        store
            .reserve(hold_req(&id, alice, g, usd("0.5")))
            .await
            .unwrap();
        store.settle(charge(&id, alice, g, cost)).await.unwrap();
        store.record(usage_row(i, alice, g, cost)).await;
    }
    // One hold left open across the restart.
    store
        .reserve(hold_req("open", bob, g, usd("1")))
        .await
        .unwrap();
    let a_before = store.balance(alice).await.unwrap();
    let b_before = store.balance(bob).await.unwrap();
    store.close().await;

    let store = db.open().await;
    assert_eq!(store.balance(alice).await.unwrap(), a_before);
    assert_eq!(store.balance(bob).await.unwrap(), b_before);
    let spent: i64 = (1..=30).map(|i| 1_000_001 * i).sum();
    assert_eq!(a_before.total, Money::from_nanos(usd("10").nanos() - spent));
    assert_eq!(b_before.held, usd("1"));
    let rows = store
        .query(&UsageQuery {
            user_id: Some(alice),
            limit: 1000,
            ..UsageQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 30);
    assert_eq!(
        rows[0],
        usage_row(29, alice, g, Money::from_nanos(1_000_001 * 30)),
        "newest first, exact"
    );
    assert_books_balance(&store).await;
    // After recovery (SQLite: every hold of the previous instance) the books still balance.
    store.recover().await.unwrap();
    assert_books_balance(&store).await;
    store.close().await;
}
both!(
    restart_keeps_every_balance_and_usage_row,
    super::restart_keeps_every_balance_and_usage_row
);

async fn seeding_never_resets_a_changed_balance(db: &TestDb) {
    let store = db.open().await;
    let g = group(&store, "default").await;
    let (u, created) = store.ensure_user("carol@example.com").await.unwrap();
    assert!(created);
    let seed = Credit {
        user_id: u.id,
        amount: usd("10.00"),
        idempotency_key: "seed:carol@example.com".into(),
        kind: EntryKind::Credit,
        memo: "seed".into(),
    };
    let first = store.credit(seed.clone()).await.unwrap();
    assert_eq!((first.balance, first.replayed), (usd("10"), false));
    store
        .reserve(hold_req("r1", u.id, g, usd("4")))
        .await
        .unwrap();
    store
        .settle(charge("r1", u.id, g, usd("2.5")))
        .await
        .unwrap();
    store.close().await;

    for _ in 0..2 {
        let store = db.open().await;
        let (again, created) = store.ensure_user("carol@example.com").await.unwrap();
        assert!(!created);
        assert_eq!(again.id, u.id);
        let replay = store.credit(seed.clone()).await.unwrap();
        assert!(replay.replayed);
        assert_eq!(
            replay.balance,
            usd("10"),
            "a replay returns the first result"
        );
        assert_eq!(store.balance(u.id).await.unwrap().total, usd("7.5"));
        assert_books_balance(&store).await;
        store.close().await;
    }
}
both!(
    seeding_never_resets_a_changed_balance,
    super::seeding_never_resets_a_changed_balance
);

async fn concurrent_holds_from_two_pools_never_overdraw(db: &TestDb) {
    let a = db.open().await;
    let b = db.open().await;
    let g = group(&a, "default").await;
    // Room for exactly 57 holds of 0.07 (57 * 0.07 = 3.99).
    let user = funded_user(&a, "dave@example.com", usd("4.0")).await;
    let amount = usd("0.07");
    let mut tasks = Vec::new();
    for i in 0..200 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            store
                .reserve(hold_req(&format!("h{i}"), user, g, amount))
                .await
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(h) => held.push(h),
            Err(LedgerError::InsufficientBalance {
                available,
                required,
            }) => {
                assert_eq!(required, amount);
                assert!(!available.is_negative());
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(held.len(), 57);
    let bal = a.balance(user).await.unwrap();
    assert_eq!(bal.total, usd("4"));
    assert_eq!(bal.held, Money::from_nanos(amount.nanos() * 57));
    assert_eq!(bal.available(), usd("0.01"));
    assert_books_balance(&a).await;

    // Settle half from one pool and release the rest from the other, concurrently.
    let mut tasks = Vec::new();
    for (i, h) in held.into_iter().enumerate() {
        let (a, b) = (a.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                a.settle(charge(&h.request_id, user, g, usd("0.03")))
                    .await
                    .map(|s| s.charged)
            } else {
                b.release(&h).await.map(|_| Money::ZERO)
            }
        }));
    }
    let mut charged = Money::ZERO;
    for t in tasks {
        charged = charged.saturating_add(t.await.unwrap().unwrap());
    }
    assert_eq!(charged, Money::from_nanos(usd("0.03").nanos() * 29));
    let bal = b.balance(user).await.unwrap();
    assert_eq!(bal.held, Money::ZERO);
    assert_eq!(
        bal.total,
        Money::from_nanos(usd("4").nanos() - charged.nanos())
    );
    assert_books_balance(&b).await;
    // Everything went through group commit (no batch fell back to one transaction per item),
    // and batches did hold several requests each.
    let (sa, sb) = (a.writer_stats(), b.writer_stats());
    assert_eq!((sa.fallbacks, sb.fallbacks), (0, 0));
    assert_eq!(sa.items + sb.items, 200 + 57);
    assert!(sa.transactions + sb.transactions < sa.items + sb.items);
    a.close().await;
    b.close().await;
}
both!(
    concurrent_holds_from_two_pools_never_overdraw,
    super::concurrent_holds_from_two_pools_never_overdraw
);

async fn settle_is_idempotent_and_exact(db: &TestDb) {
    let store = db.open().await;
    let g = group(&store, "default").await;
    let u = funded_user(&store, "erin@example.com", usd("10")).await;

    // Duplicate hold ids are refused.
    store.reserve(hold_req("r1", u, g, usd("5"))).await.unwrap();
    assert_eq!(
        store.reserve(hold_req("r1", u, g, usd("1"))).await,
        Err(LedgerError::DuplicateHold("r1".into()))
    );
    let first = store.settle(charge("r1", u, g, usd("3"))).await.unwrap();
    assert_eq!((first.charged, first.replayed), (usd("3"), false));
    let again = store.settle(charge("r1", u, g, usd("4"))).await.unwrap();
    assert_eq!(
        (again.charged, again.replayed),
        (usd("3"), true),
        "the replay returns the first result"
    );
    // Releasing a settled hold does nothing; so does re-reserving the same id.
    let h1 = Hold {
        request_id: "r1".into(),
        user_id: u,
        group_id: g,
        amount: usd("5"),
    };
    store.release(&h1).await.unwrap();
    assert!(matches!(
        store.reserve(hold_req("r1", u, g, usd("1"))).await,
        Err(LedgerError::DuplicateHold(_))
    ));
    assert_eq!(store.balance(u).await.unwrap().total, usd("7"));
    assert_eq!(store.balance(u).await.unwrap().held, Money::ZERO);

    // The vendor's count is the truth: above the hold is charged in full.
    store.reserve(hold_req("r2", u, g, usd("1"))).await.unwrap();
    assert_eq!(
        store
            .settle(charge("r2", u, g, usd("2")))
            .await
            .unwrap()
            .charged,
        usd("2")
    );
    // A settlement without a hold charges too.
    assert_eq!(
        store
            .settle(charge("r3", u, g, usd("0.5")))
            .await
            .unwrap()
            .charged,
        usd("0.5")
    );
    assert_eq!(
        store.balance(u).await.unwrap(),
        sub2api_core::ledger::Balance {
            total: usd("4.5"),
            held: Money::ZERO
        }
    );

    // Ten concurrent settlements of one request: exactly one moves money.
    store.reserve(hold_req("r4", u, g, usd("1"))).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.settle(charge("r4", u, g, usd("0.25"))).await.unwrap()
        }));
    }
    let mut fresh = 0;
    for t in tasks {
        let s = t.await.unwrap();
        assert_eq!(s.charged, usd("0.25"));
        fresh += usize::from(!s.replayed);
    }
    assert_eq!(fresh, 1);
    assert_eq!(store.balance(u).await.unwrap().total, usd("4.25"));

    // Release is idempotent and gives the hold back.
    let h5 = store.reserve(hold_req("r5", u, g, usd("4"))).await.unwrap();
    assert_eq!(store.balance(u).await.unwrap().available(), usd("0.25"));
    store.release(&h5).await.unwrap();
    store.release(&h5).await.unwrap();
    assert_eq!(store.balance(u).await.unwrap().available(), usd("4.25"));

    // Unknown users and negative amounts are refused.
    assert_eq!(
        store
            .reserve(hold_req("x", UserId(999_999), g, usd("1")))
            .await,
        Err(LedgerError::UnknownUser(UserId(999_999)))
    );
    assert!(
        store
            .reserve(hold_req("neg", u, g, usd("-1")))
            .await
            .is_err()
    );
    assert_books_balance(&store).await;
    assert_eq!(store.writer_stats().fallbacks, 0);
    store.close().await;
}
both!(
    settle_is_idempotent_and_exact,
    super::settle_is_idempotent_and_exact
);

async fn credits_are_idempotent_and_debits_never_overdraw(db: &TestDb) {
    let store = db.open().await;
    let g = group(&store, "default").await;
    let u = funded_user(&store, "fay@example.com", usd("5")).await;
    store.reserve(hold_req("h", u, g, usd("2"))).await.unwrap();
    let debit = |key: &str, amount: Money| Credit {
        user_id: u,
        amount,
        idempotency_key: key.into(),
        kind: EntryKind::Adjustment,
        memo: "admin".into(),
    };
    // 5 total, 2 held: a debit of 3.01 would overdraw the available balance.
    assert_eq!(
        store.credit(debit("d1", usd("-3.01"))).await,
        Err(LedgerError::WouldOverdraw {
            amount: usd("3.01")
        })
    );
    assert_eq!(
        store.credit(debit("d1", usd("-3"))).await.unwrap().balance,
        usd("2")
    );
    assert!(store.credit(debit("d1", usd("-3"))).await.unwrap().replayed);
    // The same key under another kind is another event.
    let refund = Credit {
        kind: EntryKind::Refund,
        amount: usd("1"),
        ..debit("d1", usd("1"))
    };
    assert_eq!(store.credit(refund).await.unwrap().balance, usd("3"));
    // Concurrent first-time credits with one key credit once.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let s = store.clone();
        let c = Credit {
            kind: EntryKind::Credit,
            ..debit("pay:T1", usd("1.5"))
        };
        tasks.push(tokio::spawn(async move { s.credit(c).await.unwrap() }));
    }
    let mut fresh = 0;
    for t in tasks {
        let o = t.await.unwrap();
        assert_eq!(o.balance, usd("4.5"));
        fresh += usize::from(!o.replayed);
    }
    assert_eq!(fresh, 1);
    assert_eq!(store.balance(u).await.unwrap().total, usd("4.5"));
    assert!(
        store
            .credit(Credit {
                kind: EntryKind::Settle,
                ..debit("z", usd("1"))
            })
            .await
            .is_err()
    );
    assert_books_balance(&store).await;
    store.close().await;
}
both!(
    credits_are_idempotent_and_debits_never_overdraw,
    super::credits_are_idempotent_and_debits_never_overdraw
);

async fn expired_holds_are_swept(db: &TestDb) {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let mut opts = db.options();
    opts.clock = clock.clone();
    opts.hold_ttl = std::time::Duration::from_secs(600);
    let store = db.open_with(opts).await;
    let g = group(&store, "default").await;
    let u = funded_user(&store, "gus@example.com", usd("1")).await;
    let h = store
        .reserve(hold_req("slow", u, g, usd("0.6")))
        .await
        .unwrap();
    store
        .reserve(hold_req("young", u, g, usd("0.1")))
        .await
        .unwrap();
    clock.advance(300_000);
    assert_eq!(store.release_expired_holds().await.unwrap(), 0);
    clock.advance(300_000);
    // "slow" is exactly at its expiry; "young" was taken at the same time, so both go.
    assert_eq!(store.release_expired_holds().await.unwrap(), 2);
    assert_eq!(store.balance(u).await.unwrap().held, Money::ZERO);
    // The request still settles after its hold expired: exactly its cost.
    assert_eq!(
        store
            .settle(charge("slow", u, g, usd("0.4")))
            .await
            .unwrap()
            .charged,
        usd("0.4")
    );
    store.release(&h).await.unwrap();
    assert_eq!(store.balance(u).await.unwrap().total, usd("0.6"));
    assert_books_balance(&store).await;
    store.close().await;
}
both!(expired_holds_are_swept, super::expired_holds_are_swept);

async fn books_balance_after_a_random_workload(db: &TestDb) {
    let a = db.open().await;
    let b = db.open().await;
    let g = group(&a, "default").await;
    let mut users = Vec::new();
    for i in 0..4 {
        users.push(funded_user(&a, &format!("u{i}@example.com"), usd("2")).await);
    }
    // Half the users also have a small subscription, used first (billing mode `both`).
    a.set_group_billing_mode(g, BillingMode::Both)
        .await
        .unwrap();
    let plan = a
        .upsert_plan(NewPlan {
            name: "small".into(),
            group_id: g,
            duration_days: 30,
            price_minor: None,
            currency: None,
            windows: vec![
                WindowSpec::five_hour(usd("0.5")),
                WindowSpec::daily(usd("0.8")),
            ],
        })
        .await
        .unwrap();
    for u in &users[..2] {
        a.grant_plan(*u, plan.id, 30).await.unwrap();
    }
    let seed: u64 = rand::random();
    let mut tasks = Vec::new();
    for worker in 0..6u64 {
        let store = if worker % 2 == 0 {
            a.clone()
        } else {
            b.clone()
        };
        let users = users.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ worker);
            let mut open: Vec<Hold> = Vec::new();
            for step in 0..60 {
                let u = users[rng.random_range(0..users.len())];
                match rng.random_range(0..10) {
                    0..=3 => {
                        let amt = Money::from_nanos(rng.random_range(1..300_000_000));
                        if let Ok(h) = store
                            .reserve(hold_req(&format!("w{worker}-{step}"), u, g, amt))
                            .await
                        {
                            open.push(h);
                        }
                    }
                    4..=6 if !open.is_empty() => {
                        let h = open.swap_remove(rng.random_range(0..open.len()));
                        // Sometimes above the hold (estimation error), usually below.
                        let cost =
                            Money::from_nanos(rng.random_range(0..h.amount.nanos() * 5 / 4 + 1));
                        store
                            .settle(charge(&h.request_id, h.user_id, g, cost))
                            .await
                            .unwrap();
                    }
                    7 if !open.is_empty() => {
                        let h = open.swap_remove(rng.random_range(0..open.len()));
                        store.release(&h).await.unwrap();
                    }
                    8 => {
                        let amt = Money::from_nanos(rng.random_range(-200_000_000..500_000_000));
                        let c = Credit {
                            user_id: u,
                            amount: amt,
                            idempotency_key: format!("c{worker}-{step}"),
                            kind: EntryKind::Adjustment,
                            memo: String::new(),
                        };
                        match store.credit(c).await {
                            Ok(_) | Err(LedgerError::WouldOverdraw { .. }) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                    _ => {
                        let bal = store.balance(u).await.unwrap();
                        assert!(!bal.held.is_negative());
                    }
                }
            }
            open
        }));
    }
    let mut leftovers = Vec::new();
    for t in tasks {
        leftovers.extend(t.await.unwrap());
    }
    assert_books_balance(&a).await;
    for h in leftovers {
        a.release(&h).await.unwrap();
    }
    for u in users {
        assert_eq!(a.balance(u).await.unwrap().held, Money::ZERO);
    }
    assert_books_balance(&b).await;
    assert_eq!(
        (a.writer_stats().fallbacks, b.writer_stats().fallbacks),
        (0, 0)
    );
    a.close().await;
    b.close().await;
}
both!(
    books_balance_after_a_random_workload,
    super::books_balance_after_a_random_workload
);
