//! Mock payment providers for end-to-end tests: Stripe ([`MockStripe`]), the Alipay open-API
//! gateway ([`MockAlipay`]), WeChat Pay v3 ([`MockWechat`]) and EasyPay ([`MockEasyPay`]), each a
//! small axum server on an ephemeral port.
//!
//! Each mock checks the relay's requests the way its provider does (Stripe's bearer secret,
//! Alipay's RSA2 request signature, WeChat's `WECHATPAY2-SHA256-RSA2048` Authorization, EasyPay's
//! MD5 signature or merchant key), signs its answers as the provider does, records every request
//! and whether it verified ([`PayRequest`]), remembers the orders it was asked to create, answers
//! queries as told ([`QueryAnswer`]) and records refunds. It also produces genuine (or deliberately
//! broken, see [`Forge`]) signed notifications for an order, for a test to deliver to the relay's
//! webhook (`/api/v1/payments/webhook/<provider>`).

mod alipay;
mod easypay;
mod stripe;
mod wechat;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Method};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use alipay::MockAlipay;
pub use easypay::MockEasyPay;
pub use stripe::MockStripe;
pub use wechat::MockWechat;

/// What a mock answers to an order query.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueryAnswer {
    /// Paid: with the trade id and the amount the order was created with.
    Paid,
    /// Not paid (the default).
    #[default]
    Unpaid,
    /// A 503 that is not the provider's format: the relay cannot tell.
    Unreachable,
}

/// What a request was, as the mock understood it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayCall {
    Create,
    Query,
    Refund,
    Other,
}

/// One request a mock received.
#[derive(Clone, Debug)]
pub struct PayRequest {
    pub call: PayCall,
    pub method: Method,
    /// Path and query.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Whether its signature (or credential) verified.
    pub verified: bool,
    /// The order it was about, when the mock could tell.
    pub out_trade_no: Option<String>,
}

/// A refund a mock accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRefund {
    pub out_trade_no: String,
    pub amount_minor: i64,
    /// The refund's idempotency key / request number, when the protocol has one.
    pub refund_no: Option<String>,
}

/// How to break a notification (the default builds a genuine one).
#[derive(Clone, Debug, Default)]
pub struct Forge {
    /// Claim this amount instead of the order's (still genuinely signed).
    pub amount_minor: Option<i64>,
    /// Sign with a key or secret the relay does not trust.
    pub bad_signature: bool,
    /// Added to the signature timestamp (Stripe, WeChat): `-600` makes it stale.
    pub timestamp_offset_secs: i64,
    /// Flip a ciphertext byte after encryption, then sign the result (WeChat).
    pub tamper_ciphertext: bool,
}

/// A notification as the provider would send it.
#[derive(Clone, Debug)]
pub struct Notification {
    pub method: Method,
    /// For a GET notification (EasyPay): the query string.
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Default)]
struct Book {
    requests: Vec<PayRequest>,
    query: QueryAnswer,
    /// out_trade_no -> (amount in minor units, currency)
    orders: HashMap<String, (i64, String)>,
    refunds: Vec<RecordedRefund>,
}

/// The records and knobs every payment mock shares (the mocks deref to it).
#[derive(Clone, Default)]
pub struct PayMockState {
    book: Arc<Mutex<Book>>,
}

impl PayMockState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every request received, oldest first.
    pub fn requests(&self) -> Vec<PayRequest> {
        self.lock().requests.clone()
    }

    /// The requests of one kind.
    pub fn calls(&self, call: PayCall) -> Vec<PayRequest> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.call == call)
            .cloned()
            .collect()
    }

    /// How queries are answered from now on.
    pub fn set_query(&self, answer: QueryAnswer) {
        self.lock().query = answer;
    }

    pub fn query_answer(&self) -> QueryAnswer {
        self.lock().query
    }

    /// The amount (minor units) and currency an order was created with.
    pub fn order(&self, out_trade_no: &str) -> Option<(i64, String)> {
        self.lock().orders.get(out_trade_no).cloned()
    }

    pub fn refunds(&self) -> Vec<RecordedRefund> {
        self.lock().refunds.clone()
    }

    fn record(&self, r: PayRequest) {
        self.lock().requests.push(r);
    }

    fn remember(&self, out_trade_no: &str, amount_minor: i64, currency: &str) {
        self.lock()
            .orders
            .insert(out_trade_no.to_owned(), (amount_minor, currency.to_owned()));
    }

    fn refunded(&self, r: RecordedRefund) {
        self.lock().refunds.push(r);
    }

    /// The order's amount, or the forged one.
    fn amount_for(&self, out_trade_no: &str, forge: &Forge) -> i64 {
        forge
            .amount_minor
            .or_else(|| self.order(out_trade_no).map(|o| o.0))
            .unwrap_or_else(|| panic!("the mock never saw order {out_trade_no}"))
    }
}

/// A mock's server task; dropping it stops the server.
struct Served {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Served {
    async fn start(app: Router) -> Served {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .expect("bind a payment mock on 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(crate::no_delay(listener), app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Served {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn unreachable_answer() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        http::StatusCode::SERVICE_UNAVAILABLE,
        "upstream connect error",
    )
        .into_response()
}

macro_rules! deref_state {
    ($t:ty) => {
        impl std::ops::Deref for $t {
            type Target = super::PayMockState;
            fn deref(&self) -> &super::PayMockState {
                &self.state
            }
        }
    };
}
use deref_state;
