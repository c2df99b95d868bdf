//! The directory (groups, accounts with encrypted credentials, users, hashed keys, principals),
//! payment orders and usage queries.

mod common;

use common::{TestDb, funded_user, group, usd};
use sub2api_core::account_provider::AccountStatus;
use sub2api_core::domain::{
    AccountId, AccountKind, Credentials, GroupId, KeyHash, KeyId, KeyLimits, Platform, Secret,
    Usage, UsageRecord, UserId,
};
use sub2api_core::meter::Ending;
use sub2api_core::money::{Money, Multiplier};
use sub2api_core::payment::PaymentStatus;
use sub2api_core::store::{
    Directory, NewAccount, NewGroup, NewKey, StoreError, UsageLog, UsageQuery,
};
use sub2api_sqlx::{MasterKey, NewOrder, OrderKind, SqlStore, StoreOptions};

fn account(name: &str, secret: &str, groups: &[&str]) -> NewAccount {
    NewAccount {
        name: name.into(),
        platform: Platform::Anthropic,
        kind: AccountKind::Apikey,
        base_url: "http://127.0.0.1:9".into(),
        priority: 50,
        concurrency: 4,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        credentials: Credentials::ApiKey(Secret::new(secret)),
        options: Default::default(),
    }
}

async fn directory_roundtrip(db: &TestDb) {
    let store = db.open().await;
    let g = store
        .upsert_group(NewGroup {
            name: "default".into(),
            platform: Platform::Anthropic,
            rate_multiplier: Multiplier::parse("1.5").unwrap(),
        })
        .await
        .unwrap();
    let g2 = store
        .upsert_group(NewGroup {
            name: "default".into(),
            platform: Platform::Anthropic,
            rate_multiplier: Multiplier::parse("0.85").unwrap(),
        })
        .await
        .unwrap();
    assert_eq!(g2.id, g.id);
    assert_eq!(g2.rate_multiplier, Multiplier::parse("0.85").unwrap());
    let other = group(&store, "other").await;
    assert_eq!(store.groups().await.unwrap().len(), 2);
    assert_eq!(
        store.group_by_name("other").await.unwrap().unwrap().id,
        other
    );
    assert!(store.group_by_name("nope").await.unwrap().is_none());

    let a = store
        .upsert_account(account("a1", "sk-ant-very-secret-1", &["default"]))
        .await
        .unwrap();
    assert_eq!(a.groups, vec![g.id]);
    let a2 = store
        .upsert_account(account("a1", "sk-ant-very-secret-2", &["default", "other"]))
        .await
        .unwrap();
    assert_eq!(a2.id, a.id);
    assert_eq!(a2.groups, vec![g.id, other]);
    assert_eq!(
        store.account_credentials(a.id).await.unwrap(),
        Credentials::ApiKey(Secret::new("sk-ant-very-secret-2"))
    );
    assert!(matches!(
        store.upsert_account(account("a2", "x", &["missing"])).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        store.accounts().await.unwrap().len(),
        1,
        "the failed upsert rolled back"
    );

    let cool = AccountStatus::CoolingDown {
        until_ms: 1_800_000_000_000,
        reason: "429".into(),
    };
    store.set_account_status(a.id, &cool).await.unwrap();

    let (alice, _) = store.ensure_user("alice@example.com").await.unwrap();
    let key = NewKey {
        user_id: alice.id,
        group_id: g.id,
        name: "laptop".into(),
        key: Secret::new("sk-alice-0123456789"),
        limits: KeyLimits {
            concurrency: Some(3),
            rpm: None,
        },
    };
    let k = store.ensure_key(key.clone()).await.unwrap();
    assert_eq!(
        store.ensure_key(key).await.unwrap(),
        k,
        "same hash, same key"
    );
    assert_eq!(store.keys_of(alice.id).await.unwrap(), vec![k.clone()]);
    let p = store
        .principal(&KeyHash::of("sk-alice-0123456789"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (p.user, p.key, p.group.id, p.limits.concurrency),
        (alice.id, k.id, g.id, Some(3))
    );
    assert_eq!(p.multiplier(), Multiplier::parse("0.85").unwrap());
    assert!(
        store
            .principal(&KeyHash::of("sk-wrong"))
            .await
            .unwrap()
            .is_none()
    );
    store.set_key_enabled(k.id, false).await.unwrap();
    assert!(
        store
            .principal(&KeyHash::of("sk-alice-0123456789"))
            .await
            .unwrap()
            .is_none()
    );
    store.set_key_enabled(k.id, true).await.unwrap();
    store.set_user_enabled(alice.id, false).await.unwrap();
    assert!(
        store
            .principal(&KeyHash::of("sk-alice-0123456789"))
            .await
            .unwrap()
            .is_none()
    );
    store.set_user_enabled(alice.id, true).await.unwrap();
    assert!(store.set_key_enabled(KeyId(987_654), false).await.is_err());
    store.close().await;

    // After a restart: status persisted; credentials readable with the key, not without it.
    let store = db.open().await;
    assert_eq!(store.account_statuses().await.unwrap(), vec![(a.id, cool)]);
    assert!(
        store
            .principal(&KeyHash::of("sk-alice-0123456789"))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(store.users().await.unwrap().len(), 1);
    store.close().await;
    let wrong = SqlStore::connect_with(&db.url, StoreOptions::new(MasterKey::new([9; 32])))
        .await
        .unwrap();
    assert!(matches!(
        wrong.account_credentials(a.id).await,
        Err(StoreError::Invalid(_))
    ));
    wrong.close().await;
    let keyless = SqlStore::connect(&db.url).await.unwrap();
    assert!(keyless.account_credentials(a.id).await.is_err());
    assert!(keyless.account_credentials(AccountId(12345)).await.is_err());
    keyless.close().await;
}
both!(directory_roundtrip, super::directory_roundtrip);

async fn credentials_are_not_stored_in_clear(db: &TestDb) {
    let store = db.open().await;
    group(&store, "default").await;
    store
        .upsert_account(account("plain", "sk-ant-find-me-if-you-can", &["default"]))
        .await
        .unwrap();
    store.close().await;
    let needle = b"find-me-if-you-can";
    match db.kind {
        common::Kind::Sqlite => {
            // Every byte of the database files.
            let path = db.url.trim_start_matches("sqlite://");
            let dir = std::path::Path::new(path).parent().unwrap();
            for entry in std::fs::read_dir(dir).unwrap() {
                let bytes = std::fs::read(entry.unwrap().path()).unwrap();
                assert!(!bytes.windows(needle.len()).any(|w| w == needle));
            }
        }
        common::Kind::Postgres => {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
                .await
                .unwrap();
            let blob: Vec<u8> =
                sqlx::query_scalar("SELECT credentials FROM accounts WHERE name = 'plain'")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
            assert!(!blob.windows(needle.len()).any(|w| w == needle));
        }
    }
}
both!(
    credentials_are_not_stored_in_clear,
    super::credentials_are_not_stored_in_clear
);

async fn orders_cas_exactly_once(db: &TestDb) {
    let store = db.open().await;
    let u = funded_user(&store, "o@example.com", Money::ZERO).await;
    let order = NewOrder {
        out_trade_no: "ord-1".into(),
        user_id: u,
        provider: "stripe".into(),
        amount_minor: 1000,
        currency: "usd".into(),
        credit: usd("10"),
        kind: OrderKind::Balance,
        plan_id: None,
        expires_at_ms: Some(1_900_000_000_000),
    };
    let o = store.insert_order(order.clone()).await.unwrap();
    assert_eq!(
        (o.status, o.credit, o.provider_trade_no.clone()),
        (PaymentStatus::Pending, usd("10"), None)
    );
    assert!(matches!(
        store.insert_order(order.clone()).await,
        Err(StoreError::Conflict(_))
    ));

    let mut tasks = Vec::new();
    for _ in 0..10 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.transition_order(
                "ord-1",
                PaymentStatus::Pending,
                PaymentStatus::Paid,
                Some("pi_123"),
            )
            .await
            .unwrap()
        }));
    }
    let mut won = 0;
    for t in tasks {
        won += usize::from(t.await.unwrap());
    }
    assert_eq!(won, 1);
    let paid = store.order("ord-1").await.unwrap().unwrap();
    assert_eq!(
        (paid.status, paid.provider_trade_no.as_deref()),
        (PaymentStatus::Paid, Some("pi_123"))
    );
    assert!(paid.paid_at_ms.is_some());
    assert_eq!(
        store
            .order_by_provider_trade_no("pi_123")
            .await
            .unwrap()
            .unwrap()
            .id,
        paid.id
    );

    // A provider trade number belongs to one order.
    store
        .insert_order(NewOrder {
            out_trade_no: "ord-2".into(),
            ..order
        })
        .await
        .unwrap();
    assert!(matches!(
        store
            .transition_order(
                "ord-2",
                PaymentStatus::Pending,
                PaymentStatus::Paid,
                Some("pi_123")
            )
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(
        store
            .transition_order("ord-2", PaymentStatus::Pending, PaymentStatus::Closed, None)
            .await
            .unwrap()
    );
    assert!(
        !store
            .transition_order("ord-2", PaymentStatus::Pending, PaymentStatus::Paid, None)
            .await
            .unwrap()
    );
    assert_eq!(store.orders_of(u).await.unwrap().len(), 2);
    store.close().await;
}
both!(orders_cas_exactly_once, super::orders_cas_exactly_once);

async fn usage_query_filters(db: &TestDb) {
    let store = db.open().await;
    for i in 0..25i64 {
        store
            .record(UsageRecord {
                request_id: format!("q{i}"),
                user_id: UserId(1 + i % 2),
                key_id: KeyId(10 + i % 3),
                group_id: GroupId(1),
                account_id: if i % 5 == 0 { None } else { Some(AccountId(7)) },
                model: if i < 10 {
                    "claude-opus-4".into()
                } else {
                    "claude-haiku".into()
                },
                usage: Usage {
                    input_tokens: i as u64,
                    cache_read_tokens: 3,
                    ..Usage::default()
                },
                cost: Money::from_nanos(i * 1000),
                stream: true,
                ending: if i == 3 {
                    Ending::UpstreamCut
                } else {
                    Ending::Complete
                },
                duration_ms: 5,
                created_at: 1000 + i,
            })
            .await;
    }
    // A replayed row is ignored.
    store
        .record(UsageRecord {
            request_id: "q0".into(),
            user_id: UserId(1),
            key_id: KeyId(10),
            group_id: GroupId(1),
            account_id: None,
            model: "dup".into(),
            usage: Usage::default(),
            cost: Money::ZERO,
            stream: false,
            ending: Ending::Complete,
            duration_ms: 0,
            created_at: 0,
        })
        .await;
    store.flush().await.unwrap();
    let q = |f: UsageQuery| {
        let s = store.clone();
        async move { s.query(&f).await.unwrap() }
    };
    assert_eq!(q(UsageQuery::default()).await.len(), 25);
    assert_eq!(
        q(UsageQuery {
            user_id: Some(UserId(1)),
            ..Default::default()
        })
        .await
        .len(),
        13
    );
    assert_eq!(
        q(UsageQuery {
            key_id: Some(KeyId(10)),
            ..Default::default()
        })
        .await
        .len(),
        9
    );
    assert_eq!(
        q(UsageQuery {
            account_id: Some(AccountId(7)),
            ..Default::default()
        })
        .await
        .len(),
        20
    );
    assert_eq!(
        q(UsageQuery {
            model: Some("claude-opus-4".into()),
            ..Default::default()
        })
        .await
        .len(),
        10
    );
    let window = q(UsageQuery {
        from_ms: Some(1005),
        to_ms: Some(1010),
        ..Default::default()
    })
    .await;
    assert_eq!(
        window.iter().map(|r| r.created_at).collect::<Vec<_>>(),
        vec![1009, 1008, 1007, 1006, 1005]
    );
    let page = q(UsageQuery {
        limit: 2,
        offset: 1,
        ..Default::default()
    })
    .await;
    assert_eq!(
        page.iter()
            .map(|r| r.request_id.as_str())
            .collect::<Vec<_>>(),
        vec!["q23", "q22"]
    );
    let cut = q(UsageQuery {
        user_id: Some(UserId(2)),
        from_ms: Some(1003),
        to_ms: Some(1004),
        ..Default::default()
    })
    .await;
    assert_eq!(cut[0].ending, Ending::UpstreamCut);
    assert_eq!(cut[0].model, "claude-opus-4");
    store.close().await;
}
both!(usage_query_filters, super::usage_query_filters);

async fn user_limits_reach_the_principal(db: &TestDb) {
    use sub2api_core::api::AdminStore;
    use sub2api_core::api::store::{NewUser, UserPatch};
    use sub2api_core::domain::Limits;
    let store = db.open().await;
    let g = group(&store, "default").await;
    let (u, _) = store.ensure_user("limited@example.com").await.unwrap();
    assert_eq!(u.limits, Limits::default(), "no limits until set");
    store
        .ensure_key(NewKey {
            user_id: u.id,
            group_id: g,
            name: "k".into(),
            key: Secret::new("sk-limited"),
            limits: KeyLimits {
                concurrency: Some(9),
                rpm: None,
            },
        })
        .await
        .unwrap();
    let limits = Limits {
        concurrency: Some(2),
        rpm: Some(30),
    };
    store.set_user_limits(u.id, &limits).await.unwrap();
    let p = store
        .principal(&KeyHash::of("sk-limited"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.user_limits, limits);
    assert_eq!(p.limits.concurrency, Some(9), "the key keeps its own");
    assert_eq!(
        store
            .user_by_email("limited@example.com")
            .await
            .unwrap()
            .unwrap()
            .limits,
        limits
    );
    // Through the admin store: created with limits, patched, cleared.
    let r = store
        .create_user(NewUser {
            email: "made@example.com".into(),
            password_hash: None,
            is_admin: false,
            limits: Limits {
                concurrency: None,
                rpm: Some(5),
            },
        })
        .await
        .unwrap();
    assert_eq!(r.limits.rpm, Some(5));
    let r = store
        .update_user(
            u.id,
            UserPatch {
                limits: Some(Limits::default()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.limits, Limits::default());
    let p = store
        .principal(&KeyHash::of("sk-limited"))
        .await
        .unwrap()
        .unwrap();
    assert!(p.user_limits.is_unlimited());
    assert!(matches!(
        store.set_user_limits(UserId(9999), &limits).await,
        Err(StoreError::NotFound(_))
    ));
    store.close().await;
}
both!(
    user_limits_reach_the_principal,
    super::user_limits_reach_the_principal
);
