//! Redeem codes: exactly once under concurrency, expiry, disabling, plan codes.

mod common;

use std::sync::Arc;

use common::{TestDb, assert_books_balance, funded_user, group, usd};
use sub2api_core::ledger::Ledger;
use sub2api_core::money::Money;
use sub2api_core::subscription::{DAY_MS, WindowSpec};
use sub2api_sqlx::{
    ManualClock, NewPlan, RedeemBatch, RedeemError, RedeemStatus, RedeemValue, Redeemed,
};

async fn one_code_from_twenty_tasks_credits_once(db: &TestDb) {
    let a = db.open().await;
    let b = db.open().await;
    let batch = a
        .generate_redeem_codes(RedeemBatch {
            value: RedeemValue::Balance { amount: usd("5") },
            count: 3,
            expires_at_ms: None,
        })
        .await
        .unwrap();
    assert_eq!(batch.codes.len(), 3);
    let code = batch.codes[0].clone();
    let mut users = Vec::new();
    for i in 0..10 {
        users.push(funded_user(&a, &format!("r{i}@example.com"), Money::ZERO).await);
    }
    let mut tasks = Vec::new();
    for i in 0..20 {
        // Two attempts per user, from two pools, with the code typed in lower case half the time.
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let user = users[i / 2];
        let code = if i % 4 == 0 {
            code.to_lowercase()
        } else {
            code.clone()
        };
        tasks.push(tokio::spawn(async move {
            (user, store.redeem(&code, user).await)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            (u, Ok(Redeemed::Balance { amount, balance })) => {
                assert_eq!((amount, balance), (usd("5"), usd("5")));
                winners.push(u);
            }
            (_, Err(RedeemError::AlreadyUsed)) => {}
            (_, other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1);
    let mut total = Money::ZERO;
    for u in &users {
        total = total.saturating_add(a.balance(*u).await.unwrap().total);
    }
    assert_eq!(total, usd("5"));
    let stored = a.redeem_code(&code).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.used_by),
        (RedeemStatus::Used, Some(winners[0]))
    );
    assert_eq!(
        a.redeem_codes_of_batch(&batch.batch_id)
            .await
            .unwrap()
            .len(),
        3
    );

    assert_eq!(
        a.redeem("NOPE-NOPE-NOPE-NOPE", users[0]).await.unwrap_err(),
        RedeemError::NotFound
    );
    assert!(a.disable_redeem_code(&batch.codes[1]).await.unwrap());
    assert_eq!(
        a.redeem(&batch.codes[1], users[0]).await.unwrap_err(),
        RedeemError::Disabled
    );
    assert_books_balance(&a).await;
    a.close().await;
    b.close().await;
}
both!(
    one_code_from_twenty_tasks_credits_once,
    super::one_code_from_twenty_tasks_credits_once
);

async fn codes_expire_and_plan_codes_extend(db: &TestDb) {
    let t0 = 1_750_000_000_000;
    let clock = Arc::new(ManualClock::new(t0));
    let store = db.open_with_clock(clock.clone()).await;
    let u = funded_user(&store, "p@example.com", Money::ZERO).await;
    let expiring = store
        .generate_redeem_codes(RedeemBatch {
            value: RedeemValue::Balance { amount: usd("1") },
            count: 2,
            expires_at_ms: Some(t0 + 1000),
        })
        .await
        .unwrap();
    store.redeem(&expiring.codes[0], u).await.unwrap();
    clock.set(t0 + 1000);
    assert_eq!(
        store.redeem(&expiring.codes[1], u).await.unwrap_err(),
        RedeemError::Expired
    );

    let g = group(&store, "pro").await;
    let plan = store
        .upsert_plan(NewPlan {
            name: "monthly".into(),
            group_id: g,
            duration_days: 30,
            price_minor: None,
            currency: None,
            windows: vec![WindowSpec::daily(usd("5"))],
        })
        .await
        .unwrap();
    let codes = store
        .generate_redeem_codes(RedeemBatch {
            value: RedeemValue::Plan {
                plan_id: plan.id,
                days: 30,
            },
            count: 2,
            expires_at_ms: None,
        })
        .await
        .unwrap();
    let Redeemed::Plan { subscription: s1 } = store.redeem(&codes.codes[0], u).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (s1.starts_at_ms, s1.expires_at_ms),
        (t0 + 1000, t0 + 1000 + 30 * DAY_MS)
    );
    let Redeemed::Plan { subscription: s2 } = store.redeem(&codes.codes[1], u).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(s2.id, s1.id, "a second code extends the subscription");
    assert_eq!(s2.expires_at_ms, t0 + 1000 + 60 * DAY_MS);
    assert_eq!(store.subscriptions_of(u).await.unwrap().len(), 1);
    assert_eq!(store.balance(u).await.unwrap().total, usd("1"));
    assert!(
        store
            .generate_redeem_codes(RedeemBatch {
                value: RedeemValue::Balance { amount: usd("0") },
                count: 1,
                expires_at_ms: None
            })
            .await
            .is_err()
    );
    store.close().await;
}
both!(
    codes_expire_and_plan_codes_extend,
    super::codes_expire_and_plan_codes_extend
);
