//! The exactly-once properties of [`Payments`] over the memory store and ledger, with Stripe's
//! webhook verification and a provider whose query answer and refunds the test controls.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use http::{HeaderMap, StatusCode};

use super::service::{
    MemoryPaymentStore, NewPaymentOrder, OrderStatus, PaymentStore, Payments, Provider,
};
use super::stripe::{parse_event, sign_header, verify_signature};
use super::util::now_secs;
use super::*;
use crate::ledger::Ledger;
use crate::memory::MemoryLedger;

const SECRET: &str = "whsec_test";

/// Stripe's notification checks; query and refund answered from the test's state.
#[derive(Default)]
struct Fake {
    query: Mutex<Option<PaymentEvent>>,
    refunds: Mutex<Vec<RefundRequest>>,
}

#[async_trait]
impl PaymentGateway for Fake {
    fn provider(&self) -> &'static str {
        "stripe"
    }
    async fn create_checkout(&self, _o: &PaymentOrder) -> Result<Checkout, PaymentError> {
        Ok(Checkout::default())
    }
    fn verify_notification(
        &self,
        h: &HeaderMap,
        _q: Option<&str>,
        body: &[u8],
    ) -> Result<PaymentEvent, PaymentError> {
        let sig = h
            .get("stripe-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        verify_signature(SECRET, sig, body, now_secs())?;
        parse_event(body)
    }
    fn acknowledgement(&self) -> (StatusCode, &'static str) {
        (StatusCode::OK, "")
    }
    async fn query(&self, o: &QueryRequest) -> Result<PaymentEvent, PaymentError> {
        match self.query.lock().unwrap().clone() {
            Some(e) => Ok(e),
            None => Err(PaymentError::Transport(format!(
                "cannot reach the provider for {}",
                o.out_trade_no
            ))),
        }
    }
    async fn refund(&self, r: &RefundRequest) -> Result<(), PaymentError> {
        self.refunds.lock().unwrap().push(r.clone());
        Ok(())
    }
}

struct World {
    payments: Payments,
    store: Arc<MemoryPaymentStore>,
    ledger: Arc<MemoryLedger>,
    fake: Arc<Fake>,
}

fn world() -> World {
    let store = Arc::new(MemoryPaymentStore::new());
    let ledger = Arc::new(MemoryLedger::new());
    let fake = Arc::new(Fake::default());
    let payments = Payments::new(PaymentsConfig::default(), store.clone(), ledger.clone())
        .with_provider(Provider {
            gateway: fake.clone(),
            currency: "usd".into(),
            usd_per_unit: "1".into(),
            merchant_id: None,
        });
    World {
        payments,
        store,
        ledger,
        fake,
    }
}

async fn order(w: &World, no: &str, amount: i64) {
    w.store
        .insert_payment_order(NewPaymentOrder {
            out_trade_no: no.into(),
            user_id: crate::domain::UserId(7),
            provider: "stripe".into(),
            amount_minor: amount,
            currency: "usd".into(),
            credit: credit_for(amount, "usd", "1").unwrap(),
            plan_id: None,
            expires_at_ms: Some(0),
        })
        .await
        .unwrap();
}

fn event(no: &str, pi: &str, amount: i64) -> Vec<u8> {
    serde_json::json!({"id": "evt", "type": "checkout.session.completed", "data": {"object": {
        "object": "checkout.session", "id": "cs_1", "payment_intent": pi, "payment_status": "paid",
        "amount_total": amount, "currency": "usd", "metadata": {"out_trade_no": no}}}})
    .to_string()
    .into_bytes()
}

fn signed(body: &[u8], secret: &str, t: i64) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "stripe-signature",
        sign_header(secret, t, body).parse().unwrap(),
    );
    h
}

async fn balance(w: &World) -> Money {
    w.ledger
        .balance(crate::domain::UserId(7))
        .await
        .map(|b| b.total)
        .unwrap_or(Money::ZERO)
}

#[tokio::test]
async fn five_deliveries_credit_once_and_forgeries_nothing() {
    let w = world();
    order(&w, "o1", 1000).await;
    let body = event("o1", "pi_1", 1000);
    for _ in 0..5 {
        let (s, _) = w
            .payments
            .handle_notification("stripe", &signed(&body, SECRET, now_secs()), None, &body)
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    assert_eq!(balance(&w).await, Money::usd(10));
    let o = w.store.payment_order("o1").await.unwrap().unwrap();
    assert_eq!(
        (o.status, o.provider_trade_no.as_deref()),
        (OrderStatus::Completed, Some("pi_1"))
    );

    order(&w, "o2", 1000).await;
    let body = event("o2", "pi_2", 1000);
    let refused = [
        signed(&body, "whsec_forged", now_secs()),
        signed(&body, SECRET, now_secs() - 301),
        HeaderMap::new(),
    ];
    for h in refused {
        let (s, _) = w
            .payments
            .handle_notification("stripe", &h, None, &body)
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
    }
    // Genuine signature, wrong amount.
    let cheap = event("o2", "pi_2", 1);
    let (s, _) = w
        .payments
        .handle_notification("stripe", &signed(&cheap, SECRET, now_secs()), None, &cheap)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(balance(&w).await, Money::usd(10));
    assert_eq!(
        w.store.payment_order("o2").await.unwrap().unwrap().status,
        OrderStatus::Pending
    );
    let audits = w.store.payment_audits(10).await.unwrap();
    let outcomes: Vec<&str> = audits.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        [
            "wrong_amount",
            "bad_signature",
            "stale_timestamp",
            "bad_signature"
        ]
    );

    // Unknown orders are acknowledged and credit nothing.
    let ghost = event("nope", "pi_9", 1000);
    let (s, _) = w
        .payments
        .handle_notification("stripe", &signed(&ghost, SECRET, now_secs()), None, &ghost)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(balance(&w).await, Money::usd(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_credit_once() {
    let w = Arc::new(world());
    order(&w, "o1", 2500).await;
    let body = event("o1", "pi_1", 2500);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (w, body) = (w.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            w.payments
                .handle_notification("stripe", &signed(&body, SECRET, now_secs()), None, &body)
                .await
                .0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(balance(&w).await, Money::parse_usd("25").unwrap());
}

#[tokio::test]
async fn expiry_waits_for_the_provider_and_refund_reverses_the_credit() {
    let w = world();
    order(&w, "o1", 1000).await;
    // Provider unreachable: kept.
    let r = w.payments.sweep(i64::MAX).await.unwrap();
    assert_eq!((r.expired, r.kept), (0, 1));
    assert_eq!(
        w.store.payment_order("o1").await.unwrap().unwrap().status,
        OrderStatus::Pending
    );
    // Provider says paid: completed and credited instead of expired.
    *w.fake.query.lock().unwrap() = Some(PaymentEvent {
        out_trade_no: "o1".into(),
        provider_trade_no: "pi_1".into(),
        amount_minor: 1000,
        currency: "usd".into(),
        status: PaymentStatus::Paid,
        merchant_id: None,
    });
    assert_eq!(w.payments.sweep(i64::MAX).await.unwrap().completed, 1);
    assert_eq!(balance(&w).await, Money::usd(10));
    // Provider says unpaid: expired.
    order(&w, "o2", 500).await;
    *w.fake.query.lock().unwrap() = Some(service::unpaid(&QueryRequest {
        out_trade_no: "o2".into(),
        provider_order_id: None,
        amount_minor: 500,
        currency: "usd".into(),
    }));
    assert_eq!(w.payments.sweep(i64::MAX).await.unwrap().expired, 1);
    assert_eq!(
        w.store.payment_order("o2").await.unwrap().unwrap().status,
        OrderStatus::Expired
    );

    // Refund of the completed order: exactly the credit comes back out, once.
    let id = w.store.payment_order("o1").await.unwrap().unwrap().id;
    let o = w.payments.refund(id, "asked").await.unwrap();
    assert_eq!(o.status, OrderStatus::Refunded);
    assert_eq!(balance(&w).await, Money::ZERO);
    assert!(w.payments.refund(id, "again").await.is_err());
    assert_eq!(balance(&w).await, Money::ZERO);
    let refunds = w.fake.refunds.lock().unwrap().clone();
    assert_eq!(
        (
            refunds.len(),
            refunds[0].amount_minor,
            refunds[0].provider_trade_no.as_str()
        ),
        (1, 1000, "pi_1")
    );
}
