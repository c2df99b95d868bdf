//! Subscriptions inside the ledger: a daily window crossing UTC midnight and a 5-hour window at
//! its exact end, with the clock moved by hand.

mod common;

use std::sync::Arc;

use common::{TestDb, assert_books_balance, funded_user, group, usd};
use sub2api_core::domain::{GroupId, UserId};
use sub2api_core::ledger::{Charge, HoldRequest, Ledger, LedgerError};
use sub2api_core::money::Money;
use sub2api_core::subscription::{BillingMode, HOUR_MS, WindowSpec, utc_ms};
use sub2api_sqlx::{ManualClock, NewPlan, SqlStore};

async fn hold(
    s: &SqlStore,
    id: &str,
    u: UserId,
    g: GroupId,
    amount: Money,
) -> Result<(), LedgerError> {
    s.reserve(HoldRequest {
        request_id: id.into(),
        user_id: u,
        group_id: g,
        amount,
    })
    .await
    .map(|_| ())
}

async fn settle(s: &SqlStore, id: &str, u: UserId, g: GroupId, amount: Money) {
    let r = s
        .settle(Charge {
            request_id: id.into(),
            user_id: u,
            group_id: g,
            amount,
        })
        .await
        .unwrap();
    assert!(!r.replayed);
}

async fn daily_window_resets_exactly_at_utc_midnight(db: &TestDb) {
    let clock = Arc::new(ManualClock::new(utc_ms(2025, 3, 14, 23, 0, 0)));
    let store = db.open_with_clock(clock.clone()).await;
    let g = group(&store, "pro").await;
    store
        .set_group_billing_mode(g, BillingMode::Subscription)
        .await
        .unwrap();
    assert_eq!(
        store.group_billing_mode(g).await.unwrap(),
        BillingMode::Subscription
    );
    // Plenty of wallet money: a subscription-only group must not touch it.
    let u = funded_user(&store, "sub@example.com", usd("100")).await;

    // Without a subscription, a subscription-only group refuses.
    assert!(matches!(
        hold(&store, "nosub", u, g, usd("1")).await,
        Err(LedgerError::InsufficientBalance { available, .. }) if available == Money::ZERO
    ));

    let plan = store
        .upsert_plan(NewPlan {
            name: "daily10".into(),
            group_id: g,
            duration_days: 30,
            price_minor: None,
            currency: None,
            windows: vec![WindowSpec::daily(usd("10"))],
        })
        .await
        .unwrap();
    let sub = store.grant_plan(u, plan.id, 30).await.unwrap();
    assert_eq!(sub.expires_at_ms - sub.starts_at_ms, 30 * 24 * HOUR_MS);

    hold(&store, "a", u, g, usd("6")).await.unwrap();
    // Headroom is held: 4 left while "a" is in flight.
    assert!(hold(&store, "b", u, g, usd("4.01")).await.is_err());
    settle(&store, "a", u, g, usd("6")).await;
    assert_eq!(
        hold(&store, "c", u, g, usd("5")).await,
        Err(LedgerError::InsufficientBalance {
            available: usd("4"),
            required: usd("5")
        })
    );
    clock.set(utc_ms(2025, 3, 14, 23, 59, 59) + 999);
    assert!(
        hold(&store, "c", u, g, usd("5")).await.is_err(),
        "still the same day"
    );
    let usage = store.subscription_usage(u, g).await.unwrap().unwrap();
    assert_eq!(usage.windows[0].used, usd("6"));
    assert_eq!(usage.windows[0].remaining, usd("4"));
    assert_eq!(
        usage.windows[0].resets_at_ms,
        Some(utc_ms(2025, 3, 15, 0, 0, 0))
    );

    clock.set(utc_ms(2025, 3, 15, 0, 0, 0));
    hold(&store, "c", u, g, usd("5")).await.unwrap();
    // Charged above its hold: the vendor's count wins, even past the window limit.
    settle(&store, "c", u, g, usd("10.5")).await;
    let usage = store.subscription_usage(u, g).await.unwrap().unwrap();
    assert_eq!(usage.windows[0].used, usd("10.5"));
    assert_eq!(usage.windows[0].remaining, Money::ZERO);
    assert!(hold(&store, "d", u, g, Money::from_nanos(1)).await.is_err());

    // The wallet never moved.
    let bal = store.balance(u).await.unwrap();
    assert_eq!((bal.total, bal.held), (usd("100"), Money::ZERO));
    assert_books_balance(&store).await;
    store.close().await;
}
both!(
    daily_window_resets_exactly_at_utc_midnight,
    super::daily_window_resets_exactly_at_utc_midnight
);

async fn five_hour_window_then_wallet(db: &TestDb) {
    let t0 = utc_ms(2025, 6, 1, 10, 17, 3);
    let clock = Arc::new(ManualClock::new(t0));
    let store = db.open_with_clock(clock.clone()).await;
    let g = group(&store, "max").await;
    store
        .set_group_billing_mode(g, BillingMode::Both)
        .await
        .unwrap();
    let u = funded_user(&store, "both@example.com", usd("10")).await;
    let plan = store
        .upsert_plan(NewPlan {
            name: "5h".into(),
            group_id: g,
            duration_days: 30,
            price_minor: None,
            currency: None,
            windows: vec![
                WindowSpec::five_hour(usd("4")),
                WindowSpec::weekly(usd("100")),
            ],
        })
        .await
        .unwrap();
    store
        .assign_subscription(u, plan.id, t0 - 1000, t0 + 30 * 24 * HOUR_MS)
        .await
        .unwrap();

    hold(&store, "r1", u, g, usd("3")).await.unwrap();
    assert_eq!(
        store.balance(u).await.unwrap().held,
        Money::ZERO,
        "all from the subscription"
    );
    settle(&store, "r1", u, g, usd("3")).await;

    clock.set(t0 + 5 * HOUR_MS - 1);
    // 1 of headroom left: 1 from the subscription, 1 from the wallet.
    hold(&store, "r2", u, g, usd("2")).await.unwrap();
    assert_eq!(store.balance(u).await.unwrap().held, usd("1"));
    settle(&store, "r2", u, g, usd("2")).await;
    let bal = store.balance(u).await.unwrap();
    assert_eq!((bal.total, bal.held), (usd("9"), Money::ZERO));

    clock.set(t0 + 5 * HOUR_MS);
    let usage = store.subscription_usage(u, g).await.unwrap().unwrap();
    assert_eq!(
        usage.windows[0].used,
        Money::ZERO,
        "the 5h window ended exactly now"
    );
    assert_eq!(
        usage.windows[0].resets_at_ms, None,
        "and starts again with the next charge"
    );
    assert_eq!(
        usage.windows[1].used,
        usd("4"),
        "the weekly window keeps counting"
    );
    hold(&store, "r3", u, g, usd("4")).await.unwrap();
    assert_eq!(store.balance(u).await.unwrap().held, Money::ZERO);
    let later = t0 + 5 * HOUR_MS + 60_000;
    clock.set(later);
    settle(&store, "r3", u, g, usd("1")).await;
    let usage = store.subscription_usage(u, g).await.unwrap().unwrap();
    assert_eq!(usage.windows[0].used, usd("1"));
    assert_eq!(usage.windows[0].resets_at_ms, Some(later + 5 * HOUR_MS));

    // An expired subscription bills nothing: the wallet pays.
    clock.set(t0 + 31 * 24 * HOUR_MS);
    assert!(store.subscription_usage(u, g).await.unwrap().is_none());
    hold(&store, "r4", u, g, usd("2")).await.unwrap();
    assert_eq!(store.balance(u).await.unwrap().held, usd("2"));
    settle(&store, "r4", u, g, usd("0.5")).await;
    assert_eq!(store.balance(u).await.unwrap().total, usd("8.5"));
    assert_books_balance(&store).await;
    store.close().await;
}
both!(
    five_hour_window_then_wallet,
    super::five_hour_window_then_wallet
);

async fn released_and_expired_holds_give_headroom_back(db: &TestDb) {
    let t0 = utc_ms(2025, 6, 1, 12, 0, 0);
    let clock = Arc::new(ManualClock::new(t0));
    let store = db.open_with_clock(clock.clone()).await;
    let g = group(&store, "pro").await;
    store
        .set_group_billing_mode(g, BillingMode::Subscription)
        .await
        .unwrap();
    let u = funded_user(&store, "h@example.com", Money::ZERO).await;
    let plan = store
        .upsert_plan(NewPlan {
            name: "d".into(),
            group_id: g,
            duration_days: 1,
            price_minor: None,
            currency: None,
            windows: vec![WindowSpec::daily(usd("1"))],
        })
        .await
        .unwrap();
    store.grant_plan(u, plan.id, 1).await.unwrap();
    let h = store
        .reserve(HoldRequest {
            request_id: "x".into(),
            user_id: u,
            group_id: g,
            amount: usd("1"),
        })
        .await
        .unwrap();
    assert!(hold(&store, "y", u, g, usd("0.5")).await.is_err());
    store.release(&h).await.unwrap();
    hold(&store, "y", u, g, usd("0.5")).await.unwrap();
    clock.advance(16 * 60_000);
    assert_eq!(store.release_expired_holds().await.unwrap(), 1);
    assert_eq!(
        store
            .subscription_usage(u, g)
            .await
            .unwrap()
            .unwrap()
            .windows[0]
            .held,
        Money::ZERO
    );
    hold(&store, "z", u, g, usd("1")).await.unwrap();
    assert_books_balance(&store).await;
    store.close().await;
}
both!(
    released_and_expired_holds_give_headroom_back,
    super::released_and_expired_holds_give_headroom_back
);

async fn plan_prices_and_grants_once_per_key(db: &TestDb) {
    let t0 = utc_ms(2025, 6, 1, 12, 0, 0);
    let clock = Arc::new(ManualClock::new(t0));
    let store = db.open_with_clock(clock.clone()).await;
    let g = group(&store, "pro").await;
    let u = funded_user(&store, "buyer@example.com", Money::ZERO).await;
    let plan = store
        .upsert_plan(NewPlan {
            name: "weekly".into(),
            group_id: g,
            duration_days: 7,
            price_minor: Some(1500),
            currency: Some("USD".into()),
            windows: vec![WindowSpec::daily(usd("1"))],
        })
        .await
        .unwrap();
    assert_eq!(plan.price_minor, Some(1500));
    assert_eq!(plan.currency.as_deref(), Some("USD"));
    assert_eq!(
        store.plan(plan.id).await.unwrap().unwrap().price_minor,
        Some(1500)
    );
    // A price without a currency is refused.
    assert!(
        store
            .upsert_plan(NewPlan {
                name: "odd".into(),
                group_id: g,
                duration_days: 7,
                price_minor: Some(1),
                currency: None,
                windows: vec![],
            })
            .await
            .is_err()
    );

    // Ten concurrent grants with one key extend once.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let s = store.clone();
        let p = plan.id;
        tasks.push(tokio::spawn(async move {
            s.grant_plan_once(u, p, 7, "order:A").await
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        if let Ok(sub) = t.await.unwrap() {
            ids.push(sub.id);
        }
    }
    assert!(!ids.is_empty());
    assert!(ids.iter().all(|i| *i == ids[0]));
    let subs = store.subscriptions_of(u).await.unwrap();
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].expires_at_ms, t0 + 7 * 24 * HOUR_MS);
    // Repeated: nothing more. Another key extends the same subscription.
    let again = store
        .grant_plan_once(u, plan.id, 7, "order:A")
        .await
        .unwrap();
    assert_eq!(again.expires_at_ms, t0 + 7 * 24 * HOUR_MS);
    let b = store
        .grant_plan_once(u, plan.id, 7, "order:B")
        .await
        .unwrap();
    assert_eq!(b.id, ids[0]);
    assert_eq!(b.expires_at_ms, t0 + 14 * 24 * HOUR_MS);
    assert_eq!(store.subscriptions_of(u).await.unwrap().len(), 1);
    // An unknown plan grants nothing and leaves its key free.
    assert!(
        store
            .grant_plan_once(u, sub2api_sqlx::PlanId(999), 7, "order:C")
            .await
            .is_err()
    );
    assert!(
        store
            .grant_plan_once(u, plan.id, 7, "order:C")
            .await
            .is_ok()
    );
    store.close().await;
}
both!(
    plan_prices_and_grants_once_per_key,
    super::plan_prices_and_grants_once_per_key
);
