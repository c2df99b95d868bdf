//! Payments end to end over real HTTP, against mock Stripe, Alipay, WeChat Pay and EasyPay servers
//! (`sub2api_axum::mock::payments`), on memory, SQLite and Postgres: each order is created through
//! the API and reaches its provider correctly signed; a genuine notification delivered five times,
//! or ten at once, credits exactly once; forged, stale, tampered and wrong-amount notifications
//! are refused and credit nothing; an unpaid order expires only once its provider says it is
//! unpaid (and one the provider says is paid is credited instead); a refund reverses exactly the
//! credited amount and reaches the provider; users never see each other's orders.

#[path = "../api_support.rs"]
mod api_support;

use api_support::*;
use serde_json::{Value, json};
use sub2api_axum::mock::payments::{
    Forge, MockAlipay, MockEasyPay, MockStripe, MockWechat, Notification, PayCall, PayMockState,
    QueryAnswer,
};
use sub2api_core::money::Money;
use sub2api_core::payment::PaymentsConfig;
use sub2api_core::payment::config::{AlipayConfig, EasyPayConfig, StripeConfig, WechatConfig};
use sub2api_core::payment::test_keys::{
    ALIPAY_APP_PRIVATE, ALIPAY_PLATFORM_PUBLIC, WECHAT_MERCHANT_PRIVATE, WECHAT_PLATFORM_PUBLIC,
};
use sub2api_tests::{Adapter, Spec, Storage};

const STRIPE_SECRET: &str = "sk_test_mock_0123456789";
const STRIPE_WHSEC: &str = "whsec_mock_0123456789";
const ALIPAY_APP_ID: &str = "2021000000000001";
const WECHAT_MCHID: &str = "1900000001";
const WECHAT_APPID: &str = "wx0123456789abcdef";
const WECHAT_APIV3: &str = "0123456789abcdef0123456789abcdef";
const WECHAT_SERIAL: &str = "PUB_KEY_ID_0001";
const EASYPAY_PID: &str = "1001";
const EASYPAY_KEY: &str = "easypay-merchant-key";

const PAY_SETUPS: &[(Adapter, Storage)] = &[
    (Adapter::Axum, Storage::Memory),
    (Adapter::Axum, Storage::Sqlite),
    (Adapter::Axum, Storage::Postgres),
    (Adapter::Actix, Storage::Sqlite),
];

fn plus(a: Money, b: Money) -> Money {
    Money::from_nanos(a.nanos() + b.nanos())
}

fn usd(s: &str) -> Money {
    Money::parse_usd(s).unwrap()
}

struct Mocks {
    stripe: MockStripe,
    alipay: MockAlipay,
    wechat: MockWechat,
    easypay: MockEasyPay,
}

impl Mocks {
    async fn start() -> Mocks {
        Mocks {
            stripe: MockStripe::start(STRIPE_SECRET, STRIPE_WHSEC).await,
            alipay: MockAlipay::start(ALIPAY_APP_ID).await,
            wechat: MockWechat::start(WECHAT_MCHID, WECHAT_APPID, WECHAT_APIV3, WECHAT_SERIAL)
                .await,
            easypay: MockEasyPay::start(EASYPAY_PID, EASYPAY_KEY).await,
        }
    }

    fn config(&self) -> PaymentsConfig {
        PaymentsConfig {
            public_base_url: Some("https://relay.example.test".into()),
            min_amount: 100,
            max_amount: 1_000_000,
            max_pending_per_user: 20,
            // Every unpaid order is due at once; only the sweep endpoint expires them.
            order_timeout_secs: 0,
            sweep_interval_secs: 3600,
            stripe: Some(StripeConfig {
                secret_key: STRIPE_SECRET.into(),
                webhook_secret: STRIPE_WHSEC.into(),
                api_base: self.stripe.base_url(),
                currency: "usd".into(),
                usd_per_unit: "1".into(),
            }),
            alipay: Some(AlipayConfig {
                app_id: ALIPAY_APP_ID.into(),
                app_private_key: ALIPAY_APP_PRIVATE.into(),
                alipay_public_key: ALIPAY_PLATFORM_PUBLIC.into(),
                gateway: self.alipay.gateway_url(),
                currency: "CNY".into(),
                usd_per_unit: "0.14".into(),
                mode: "precreate".into(),
            }),
            wechat: Some(WechatConfig {
                mchid: WECHAT_MCHID.into(),
                appid: WECHAT_APPID.into(),
                merchant_serial: "MERCHANT_SERIAL_1".into(),
                merchant_private_key: WECHAT_MERCHANT_PRIVATE.into(),
                apiv3_key: WECHAT_APIV3.into(),
                platform_public_key: WECHAT_PLATFORM_PUBLIC.into(),
                platform_public_key_id: WECHAT_SERIAL.into(),
                api_base: self.wechat.base_url(),
                currency: "CNY".into(),
                usd_per_unit: "0.14".into(),
            }),
            easypay: Some(EasyPayConfig {
                pid: EASYPAY_PID.into(),
                key: EASYPAY_KEY.into(),
                api_base: self.easypay.base_url(),
                currency: "CNY".into(),
                usd_per_unit: "0.14".into(),
                pay_type: "alipay".into(),
                mode: "mapi".into(),
            }),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum P {
    Stripe,
    Alipay,
    Wechat,
    EasyPay,
}

impl P {
    const ALL: [P; 4] = [P::Stripe, P::Alipay, P::Wechat, P::EasyPay];

    fn name(self) -> &'static str {
        match self {
            P::Stripe => "stripe",
            P::Alipay => "alipay",
            P::Wechat => "wechat",
            P::EasyPay => "easypay",
        }
    }

    fn state(self, m: &Mocks) -> &PayMockState {
        match self {
            P::Stripe => &m.stripe,
            P::Alipay => &m.alipay,
            P::Wechat => &m.wechat,
            P::EasyPay => &m.easypay,
        }
    }

    fn notification(self, m: &Mocks, out: &str, forge: &Forge) -> Notification {
        match self {
            P::Stripe => m.stripe.notification_with(out, forge),
            P::Alipay => m.alipay.notification_with(out, forge),
            P::Wechat => m.wechat.notification_with(out, forge),
            P::EasyPay => m.easypay.notification_with(out, forge),
        }
    }

    fn trade_no(self, out: &str) -> String {
        match self {
            P::Stripe => MockStripe::trade_no(out),
            P::Alipay => MockAlipay::trade_no(out),
            P::Wechat => MockWechat::trade_no(out),
            P::EasyPay => MockEasyPay::trade_no(out),
        }
    }

    /// The balance `amount` minor units buy (exact).
    fn credit(self, amount: i64) -> Money {
        match self {
            // 1 USD per dollar: cents -> USD.
            P::Stripe => Money::from_nanos(amount * 10_000_000),
            // 0.14 USD per yuan: 1 fen -> 0.0014 USD = 1_400_000 nano-USD.
            _ => Money::from_nanos(amount * 1_400_000),
        }
    }

    /// What the provider must be answered once a notification is handled.
    fn ack(self) -> (u16, &'static str) {
        match self {
            P::Stripe => (200, ""),
            P::Wechat => (204, ""),
            P::Alipay | P::EasyPay => (200, "success"),
        }
    }
}

async fn deliver(h: &ApiHarness, p: P, n: &Notification) -> (u16, String) {
    let mut url = h.url(&format!("/api/v1/payments/webhook/{}", p.name()));
    if let Some(q) = &n.query {
        url = format!("{url}?{q}");
    }
    let method = reqwest::Method::from_bytes(n.method.as_str().as_bytes()).unwrap();
    let mut rb = h.client.request(method, url);
    for (k, v) in &n.headers {
        rb = rb.header(k.as_str(), v.as_str());
    }
    if !n.body.is_empty() {
        rb = rb.body(n.body.clone());
    }
    let res = rb.send().await.expect("relay answers");
    let status = res.status().as_u16();
    (status, res.text().await.unwrap_or_default())
}

/// When the user's first subscription expires (ms).
async fn subscription_expiry(h: &ApiHarness, session: &str) -> i64 {
    let subs = h
        .user_ok(session, "GET", "/api/v1/subscriptions", Value::Null)
        .await;
    sub2api_core::api::schema::parse_time_str(subs["items"][0]["expires_at"].as_str().unwrap())
        .unwrap()
}

async fn balance(h: &ApiHarness, token: &str) -> Money {
    let me = h.user_ok(token, "GET", "/api/v1/me", Value::Null).await;
    usd(me["balance_usd"]
        .as_str()
        .unwrap_or_else(|| panic!("no balance in {me}")))
}

async fn order(h: &ApiHarness, token: &str, id: i64) -> Value {
    h.user_ok(
        token,
        "GET",
        &format!("/api/v1/payments/orders/{id}"),
        Value::Null,
    )
    .await
}

/// Creates an order over HTTP: `(id, out_trade_no)`, after checking the provider saw a correctly
/// signed creation request for it.
async fn create(h: &ApiHarness, m: &Mocks, p: P, token: &str, amount: i64) -> (i64, String) {
    let a = h
        .call(
            "POST",
            "/api/v1/payments/orders",
            Some(token),
            json!({"provider": p.name(), "amount": amount}),
        )
        .await;
    assert_eq!(a.status, 201, "{:?} {p:?}: {}", h.setup, a.text);
    assert_eq!(a.body["status"], "PENDING");
    assert_eq!(a.body["amount"], amount);
    assert!(
        a.body["pay_url"].is_string() || a.body["qr_code"].is_string(),
        "{p:?}: something to pay with: {}",
        a.text
    );
    let out = a.body["out_trade_no"].as_str().unwrap().to_owned();
    let creates = p.state(m).calls(PayCall::Create);
    let last = creates.last().expect("the provider saw the creation");
    assert_eq!(last.out_trade_no.as_deref(), Some(out.as_str()), "{p:?}");
    assert!(
        last.verified,
        "{p:?}: the creation request is correctly signed"
    );
    assert_eq!(p.state(m).order(&out).map(|o| o.0), Some(amount), "{p:?}");
    if p == P::Stripe {
        assert_eq!(
            m.stripe
                .idempotency_keys()
                .last()
                .cloned()
                .flatten()
                .as_deref(),
            Some(out.as_str()),
            "the Stripe request carries the order number as its Idempotency-Key"
        );
    }
    (a.body["id"].as_i64().unwrap(), out)
}

async fn sweep(h: &ApiHarness) -> Value {
    h.admin_ok("POST", "/api/v1/admin/payments/sweep", Value::Null)
        .await
}

async fn scenario(h: &ApiHarness, m: &Mocks, p: P, alice: &str, bob: &str) {
    let setup = h.setup;
    let start = balance(h, alice).await;

    // 1. Refused notifications change nothing.
    let (id1, out1) = create(h, m, p, alice, 1000).await;
    let mut bad: Vec<(&str, Forge)> = vec![
        (
            "forged",
            Forge {
                bad_signature: true,
                ..Forge::default()
            },
        ),
        (
            "wrong amount",
            Forge {
                amount_minor: Some(1),
                ..Forge::default()
            },
        ),
    ];
    if matches!(p, P::Stripe | P::Wechat) {
        bad.push((
            "stale",
            Forge {
                timestamp_offset_secs: -600,
                ..Forge::default()
            },
        ));
    }
    if p == P::Wechat {
        bad.push((
            "tampered",
            Forge {
                tamper_ciphertext: true,
                ..Forge::default()
            },
        ));
    }
    for (what, forge) in &bad {
        let (status, text) = deliver(h, p, &p.notification(m, &out1, forge)).await;
        assert_eq!(status, 400, "{setup:?} {p:?} {what}: {text}");
        assert_eq!(
            balance(h, alice).await,
            start,
            "{setup:?} {p:?} {what}: nothing credited"
        );
        assert_eq!(
            order(h, alice, id1).await["status"],
            "PENDING",
            "{p:?} {what}"
        );
    }

    // 2. The genuine notification, delivered five times, credits exactly once.
    let genuine = p.notification(m, &out1, &Forge::default());
    for i in 0..5 {
        let (status, text) = deliver(h, p, &genuine).await;
        assert_eq!(
            (status, text.as_str()),
            p.ack(),
            "{setup:?} {p:?} delivery {i}"
        );
    }
    let credit1 = p.credit(1000);
    assert_eq!(
        balance(h, alice).await,
        plus(start, credit1),
        "{setup:?} {p:?}: credited once"
    );
    let o1 = order(h, alice, id1).await;
    assert_eq!(o1["status"], "COMPLETED");
    assert_eq!(o1["provider_trade_no"], p.trade_no(&out1));
    assert_eq!(o1["credit_usd"], credit1.to_string());

    // 3. Ten concurrent deliveries of another order's notification credit once.
    let (id2, out2) = create(h, m, p, alice, 2000).await;
    let n2 = p.notification(m, &out2, &Forge::default());
    let answers = futures_util::future::join_all((0..10).map(|_| deliver(h, p, &n2))).await;
    for (status, text) in &answers {
        assert_eq!(
            (*status, text.as_str()),
            p.ack(),
            "{setup:?} {p:?} concurrent"
        );
    }
    let after2 = plus(plus(start, credit1), p.credit(2000));
    assert_eq!(
        balance(h, alice).await,
        after2,
        "{setup:?} {p:?}: concurrent credit once"
    );
    assert_eq!(order(h, alice, id2).await["status"], "COMPLETED");

    // 4. An unpaid order expires only once the provider says it is unpaid.
    let (id3, out3) = create(h, m, p, alice, 1500).await;
    let queries_before = p.state(m).calls(PayCall::Query).len();
    p.state(m).set_query(QueryAnswer::Unreachable);
    let r = sweep(h).await;
    assert_eq!(r["expired"], 0, "{p:?}: {r}");
    assert_eq!(
        order(h, alice, id3).await["status"],
        "PENDING",
        "{p:?}: kept while the provider cannot be asked"
    );
    p.state(m).set_query(QueryAnswer::Unpaid);
    let r = sweep(h).await;
    assert_eq!(r["expired"], 1, "{p:?}: {r}");
    assert_eq!(order(h, alice, id3).await["status"], "EXPIRED", "{p:?}");
    let queries: Vec<_> = p.state(m).calls(PayCall::Query)[queries_before..]
        .iter()
        .filter(|q| {
            q.out_trade_no.as_deref() == Some(out3.as_str())
                || (p == P::Stripe && q.path.contains(&out3))
        })
        .cloned()
        .collect();
    assert!(
        queries.len() >= 2,
        "{p:?}: the provider was asked twice: {queries:?}"
    );
    assert!(
        queries.iter().all(|q| q.verified),
        "{p:?}: queries are signed"
    );
    assert_eq!(
        balance(h, alice).await,
        after2,
        "{p:?}: expiry credits nothing"
    );

    // 5. One the provider reports paid (its notification lost) is credited by the sweep, once.
    let (id4, out4) = create(h, m, p, alice, 1000).await;
    p.state(m).set_query(QueryAnswer::Paid);
    let r = sweep(h).await;
    p.state(m).set_query(QueryAnswer::Unpaid);
    assert_eq!(r["completed"], 1, "{p:?}: {r}");
    let after4 = plus(after2, p.credit(1000));
    assert_eq!(
        balance(h, alice).await,
        after4,
        "{setup:?} {p:?}: paid per the query"
    );
    let (status, _) = deliver(h, p, &p.notification(m, &out4, &Forge::default())).await;
    assert_eq!(status, p.ack().0);
    assert_eq!(
        balance(h, alice).await,
        after4,
        "{p:?}: the late notification credits nothing more"
    );
    assert_eq!(order(h, alice, id4).await["status"], "COMPLETED");

    // 6. Bob never sees Alice's orders.
    let a = h
        .call(
            "GET",
            &format!("/api/v1/payments/orders/{id1}"),
            Some(bob),
            Value::Null,
        )
        .await;
    assert_eq!(a.status, 404, "{p:?}: {}", a.text);
    let mine = h
        .user_ok(bob, "GET", "/api/v1/payments/orders", Value::Null)
        .await;
    assert!(
        mine["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["out_trade_no"] != out1.as_str()),
        "{p:?}: {mine}"
    );
    let a = h
        .call(
            "POST",
            &format!("/api/v1/payments/orders/{id3}/cancel"),
            Some(bob),
            Value::Null,
        )
        .await;
    assert_eq!(a.status, 404, "{p:?}: {}", a.text);

    // 7. A refund reverses exactly the credited amount and reaches the provider; once.
    let refunded = h
        .admin_ok(
            "POST",
            &format!("/api/v1/admin/payments/orders/{id1}/refund"),
            json!({"reason": "requested by customer"}),
        )
        .await;
    assert_eq!(refunded["status"], "REFUNDED", "{p:?}: {refunded}");
    assert_eq!(
        balance(h, alice).await,
        plus(after4, Money::from_nanos(-credit1.nanos())),
        "{setup:?} {p:?}: refund reverses the credit"
    );
    let refunds = p.state(m).refunds();
    assert!(
        refunds
            .iter()
            .any(|r| r.out_trade_no == out1 && r.amount_minor == 1000),
        "{p:?}: {refunds:?}"
    );
    assert!(
        p.state(m).calls(PayCall::Refund).iter().all(|r| r.verified),
        "{p:?}: refund signed"
    );
    let again = h
        .admin(
            "POST",
            &format!("/api/v1/admin/payments/orders/{id1}/refund"),
            json!({}),
        )
        .await;
    assert_eq!(again.status, 409, "{p:?}: {}", again.text);
    assert_eq!(
        balance(h, alice).await,
        plus(after4, Money::from_nanos(-credit1.nanos())),
        "{p:?}: refunded once"
    );
    // A replayed notification for the refunded order credits nothing.
    let (status, _) = deliver(h, p, &genuine).await;
    assert_eq!(status, p.ack().0);
    assert_eq!(
        balance(h, alice).await,
        plus(after4, Money::from_nanos(-credit1.nanos())),
        "{p:?}: no credit after refund"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_provider_credits_exactly_once_refuses_forgeries_expires_and_refunds() {
    for &setup in PAY_SETUPS {
        let mocks = Mocks::start().await;
        let pc = mocks.config();
        let h = ApiHarness::start_configured(setup, Spec::default(), move |c| {
            c.payments = Some(pc);
        })
        .await;
        let (_, alice) = h.user_session("payer@example.com", "5.00").await;
        let (_, bob) = h.user_session("other@example.com", "5.00").await;
        let providers = h
            .user_ok(&alice, "GET", "/api/v1/payments/providers", Value::Null)
            .await;
        assert_eq!(
            providers["items"].as_array().unwrap().len(),
            4,
            "{providers}"
        );
        for p in P::ALL {
            scenario(&h, &mocks, p, &alice, &bob).await;
        }
        // Refused notifications are audited.
        let audit = h
            .admin_ok("GET", "/api/v1/admin/payments/audit", Value::Null)
            .await;
        assert!(!audit["items"].as_array().unwrap().is_empty(), "{audit}");
        // Bob was never credited or debited.
        assert_eq!(balance(&h, &bob).await, usd("5.00"));
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mocks_refuse_badly_signed_requests() {
    let m = Mocks::start().await;
    // The relay's client installs the process's TLS crypto provider first.
    let _ = sub2api_core::layer::upstream::Upstream::default_client();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    // Stripe without the secret.
    let r = client
        .post(format!("{}/v1/checkout/sessions", m.stripe.base_url()))
        .bearer_auth("sk_wrong")
        .body("mode=payment")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Alipay with a broken signature.
    let r = client
        .post(m.alipay.gateway_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body("app_id=1&method=alipay.trade.query&biz_content=%7B%7D&sign=AAAA")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["alipay_trade_query_response"]["sub_code"],
        "isv.invalid-signature"
    );
    // WeChat without an Authorization.
    let r = client
        .post(format!(
            "{}/v3/pay/transactions/native",
            m.wechat.base_url()
        ))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // EasyPay with a wrong MD5.
    let r = client
        .post(format!("{}/mapi.php", m.easypay.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("pid={EASYPAY_PID}&money=1.00&sign=00"))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], -1);
    for s in [&*m.stripe, &*m.alipay, &*m.wechat, &*m.easypay] {
        let rs = s.requests();
        assert_eq!(rs.len(), 1);
        assert!(!rs[0].verified);
    }
}

/// Plan purchases: an order for a priced plan takes its amount from the plan and credits nothing;
/// its genuine notification, delivered three times, grants the subscription once; a second
/// purchase extends it. Unpriced plans and a provider in another currency are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paid_plan_order_grants_the_subscription_exactly_once() {
    const DAY_MS: i64 = 86_400_000;
    for &setup in PAY_SETUPS {
        let m = Mocks::start().await;
        let pc = m.config();
        let h = ApiHarness::start_configured(setup, Spec::default(), move |c| {
            c.payments = Some(pc);
        })
        .await;
        let windows = json!([{"kind": "day", "limit_usd": "2"}]);
        let plan = h
            .admin_ok(
                "POST",
                "/api/v1/admin/plans",
                json!({"name": "weekly", "group": "default", "windows": windows,
                       "duration_days": 7, "price_minor": 1500, "currency": "USD"}),
            )
            .await;
        assert_eq!(plan["price_minor"], 1500, "{plan}");
        assert_eq!(plan["currency"], "USD", "{plan}");
        let plan_id = plan["id"].as_i64().unwrap();
        let free = h
            .admin_ok(
                "POST",
                "/api/v1/admin/plans",
                json!({"name": "free", "group": "default", "windows": windows}),
            )
            .await;
        let (_, alice) = h.user_session("planner@example.com", "5.00").await;
        let start = balance(&h, &alice).await;

        // Refused: an unpriced plan, a provider in another currency, both amount and plan.
        for (body, field) in [
            (
                json!({"provider": "stripe", "plan_id": free["id"]}),
                "plan_id",
            ),
            (
                json!({"provider": "easypay", "plan_id": plan_id}),
                "provider",
            ),
            (
                json!({"provider": "stripe", "plan_id": plan_id, "amount": 1500}),
                "plan_id",
            ),
            (json!({"provider": "stripe", "plan_id": 999_999}), "plan_id"),
        ] {
            let a = h
                .call(
                    "POST",
                    "/api/v1/payments/orders",
                    Some(&alice),
                    body.clone(),
                )
                .await;
            assert_eq!(a.status, 400, "{setup:?} {body}: {}", a.text);
            assert_eq!(a.field(), Some(field), "{setup:?} {body}: {}", a.text);
        }

        let mut expected_expiry = None;
        let mut orders = Vec::new();
        for purchase in 0..2 {
            let t0 = sub2api_core::account_provider::now_ms();
            let a = h
                .call(
                    "POST",
                    "/api/v1/payments/orders",
                    Some(&alice),
                    json!({"provider": "stripe", "plan_id": plan_id}),
                )
                .await;
            assert_eq!(a.status, 201, "{setup:?}: {}", a.text);
            assert_eq!(a.body["amount"], 1500, "{}", a.text);
            assert_eq!(a.body["plan_id"], plan_id, "{}", a.text);
            assert_eq!(usd(a.body["credit_usd"].as_str().unwrap()), Money::ZERO);
            let id = a.body["id"].as_i64().unwrap();
            let out = a.body["out_trade_no"].as_str().unwrap().to_owned();
            assert_eq!(m.stripe.order(&out).map(|o| o.0), Some(1500));
            orders.push((id, out.clone()));

            let genuine = m.stripe.notification(&out);
            for i in 0..3 {
                let (status, text) = deliver(&h, P::Stripe, &genuine).await;
                assert_eq!(
                    (status, text.as_str()),
                    P::Stripe.ack(),
                    "{setup:?} delivery {i}"
                );
            }
            let t1 = sub2api_core::account_provider::now_ms();
            let o = order(&h, &alice, id).await;
            assert_eq!(o["status"], "COMPLETED", "{o}");
            assert_eq!(o["provider_trade_no"], MockStripe::trade_no(&out), "{o}");

            let subs = h
                .user_ok(&alice, "GET", "/api/v1/subscriptions", Value::Null)
                .await;
            let items = subs["items"].as_array().unwrap();
            assert_eq!(items.len(), 1, "{setup:?} one subscription: {subs}");
            assert_eq!(items[0]["plan_id"], plan_id, "{subs}");
            assert_eq!(items[0]["status"], "active", "{subs}");
            let expires =
                sub2api_core::api::schema::parse_time_str(items[0]["expires_at"].as_str().unwrap())
                    .unwrap();
            match expected_expiry {
                // The first purchase starts the subscription now, for the plan's 7 days.
                None => assert!(
                    (t0 + 7 * DAY_MS..=t1 + 7 * DAY_MS).contains(&expires),
                    "{setup:?} expiry {expires} not 7 days after [{t0}, {t1}]"
                ),
                // The second extends it by exactly 7 days more.
                Some(e) => assert_eq!(expires, e + 7 * DAY_MS, "{setup:?} extended once"),
            }
            expected_expiry = Some(expires);
            assert_eq!(
                balance(&h, &alice).await,
                start,
                "{setup:?} purchase {purchase}: the wallet is not credited"
            );
        }

        // A refunded plan order takes back exactly the days it added, once; the provider refunds
        // the price; the wallet is untouched.
        let two_purchases = expected_expiry.unwrap();
        let refund_path = |id: i64| format!("/api/v1/admin/payments/orders/{id}/refund");
        let refunded = h
            .admin_ok(
                "POST",
                &refund_path(orders[1].0),
                json!({"reason": "changed my mind"}),
            )
            .await;
        assert_eq!(refunded["status"], "REFUNDED", "{setup:?}: {refunded}");
        assert_eq!(
            subscription_expiry(&h, &alice).await,
            two_purchases - 7 * DAY_MS,
            "{setup:?}: the second order's 7 days taken back"
        );
        let again = h
            .admin(
                "POST",
                &refund_path(orders[1].0),
                json!({"reason": "twice"}),
            )
            .await;
        assert_eq!(again.status, 409, "{setup:?}: {}", again.text);
        assert_eq!(
            subscription_expiry(&h, &alice).await,
            two_purchases - 7 * DAY_MS,
            "{setup:?}: nothing taken twice"
        );
        let t0 = sub2api_core::account_provider::now_ms();
        h.admin_ok(
            "POST",
            &refund_path(orders[0].0),
            json!({"reason": "all of it"}),
        )
        .await;
        let t1 = sub2api_core::account_provider::now_ms();
        let ended = subscription_expiry(&h, &alice).await;
        assert!(
            (t0..=t1).contains(&ended),
            "{setup:?}: the first order's grant ends the subscription now ({ended} not in [{t0}, {t1}])"
        );
        let refunds = m.stripe.refunds();
        for (_, out) in &orders {
            assert!(
                refunds
                    .iter()
                    .any(|r| &r.out_trade_no == out && r.amount_minor == 1500),
                "{setup:?}: {refunds:?}"
            );
        }
        assert_eq!(
            balance(&h, &alice).await,
            start,
            "{setup:?}: wallet untouched"
        );
        h.stop().await;
    }
}
