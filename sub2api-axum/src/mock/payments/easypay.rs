//! EasyPay (epay): `POST /mapi.php` (MD5-signed order creation), `POST /api.php` with
//! `act=order` (query) and `act=refund` (both authenticated by the merchant key); notifications
//! are GET requests whose MD5-signed parameters are in the query string.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, Method, Uri};
use serde_json::json;
use sub2api_core::payment::config::{major_string, parse_major};
use sub2api_core::payment::easypay::{signed, verify};
use sub2api_core::payment::util::{form_decode, form_encode, param};

use super::{
    Forge, Notification, PayCall, PayMockState, PayRequest, QueryAnswer, RecordedRefund, Served,
};

pub struct MockEasyPay {
    served: Served,
    state: PayMockState,
    pid: String,
    key: String,
}
super::deref_state!(MockEasyPay);

#[derive(Clone)]
struct St {
    state: PayMockState,
    pid: String,
    key: String,
}

impl MockEasyPay {
    /// Serves EasyPay for merchant `pid` with MD5 key `key`.
    pub async fn start(pid: &str, key: &str) -> MockEasyPay {
        let state = PayMockState::default();
        let st = St {
            state: state.clone(),
            pid: pid.into(),
            key: key.into(),
        };
        let app = Router::new().fallback(handle).with_state(st);
        MockEasyPay {
            served: Served::start(app).await,
            state,
            pid: pid.into(),
            key: key.into(),
        }
    }

    /// The `api_base` to configure.
    pub fn base_url(&self) -> String {
        self.served.base_url()
    }

    pub fn trade_no(out_trade_no: &str) -> String {
        format!("E{out_trade_no}")
    }

    pub fn notification(&self, out_trade_no: &str) -> Notification {
        self.notification_with(out_trade_no, &Forge::default())
    }

    /// A `TRADE_SUCCESS` notification, delivered by GET with the parameters in the query.
    pub fn notification_with(&self, out_trade_no: &str, forge: &Forge) -> Notification {
        let money = major_string(self.amount_for(out_trade_no, forge), "CNY");
        let p = signed(
            super::pairs(&[
                ("pid", &self.pid),
                ("trade_no", &Self::trade_no(out_trade_no)),
                ("out_trade_no", out_trade_no),
                ("type", "alipay"),
                ("name", "Balance top-up"),
                ("money", &money),
                ("trade_status", "TRADE_SUCCESS"),
            ]),
            if forge.bad_signature {
                "not-the-merchant-key"
            } else {
                &self.key
            },
        );
        Notification {
            method: Method::GET,
            query: Some(form_encode(p.iter().map(|(k, v)| (k.as_str(), v.as_str())))),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub async fn shutdown(self) {
        self.served.shutdown().await;
    }
}

async fn handle(
    State(st): State<St>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut p = form_decode(&body);
    if p.is_empty() {
        p = form_decode(uri.query().unwrap_or("").as_bytes());
    }
    let (call, verified) = match (uri.path(), param(&p, "act")) {
        ("/mapi.php", _) | ("/submit.php", _) => (PayCall::Create, verify(&p, &st.key)),
        ("/api.php", Some("order")) => (PayCall::Query, param(&p, "key") == Some(st.key.as_str())),
        ("/api.php", Some("refund")) => {
            (PayCall::Refund, param(&p, "key") == Some(st.key.as_str()))
        }
        _ => (PayCall::Other, false),
    };
    let verified = verified && param(&p, "pid") == Some(st.pid.as_str());
    let out = param(&p, "out_trade_no").map(str::to_owned);
    st.state.record(PayRequest {
        call,
        method,
        path: uri
            .path_and_query()
            .map(|x| x.to_string())
            .unwrap_or_default(),
        headers,
        body,
        verified,
        out_trade_no: out.clone(),
    });
    if !verified {
        return axum::Json(json!({"code": -1, "msg": "签名错误"})).into_response();
    }
    let out = out.unwrap_or_default();
    match call {
        PayCall::Create => {
            let Some(amount) = param(&p, "money").and_then(|m| parse_major(m, "CNY")) else {
                return axum::Json(json!({"code": -1, "msg": "money"})).into_response();
            };
            st.state.remember(&out, amount, "CNY");
            axum::Json(
                json!({"code": 1, "msg": "ok", "trade_no": MockEasyPay::trade_no(&out),
                "payurl": format!("https://pay.easypay.test/pay/{out}"),
                "qrcode": format!("https://qr.easypay.test/{out}")}),
            )
            .into_response()
        }
        PayCall::Query => {
            let answer = st.state.query_answer();
            if answer == QueryAnswer::Unreachable {
                return super::unreachable_answer();
            }
            let Some((amount, _)) = st.state.order(&out) else {
                return axum::Json(json!({"code": -1, "msg": "订单不存在"})).into_response();
            };
            let status = i64::from(answer == QueryAnswer::Paid);
            axum::Json(json!({"code": 1, "msg": "ok", "pid": st.pid, "trade_no": MockEasyPay::trade_no(&out),
                "out_trade_no": out, "type": "alipay", "money": major_string(amount, "CNY"), "status": status}))
            .into_response()
        }
        PayCall::Refund => {
            let amount = param(&p, "money")
                .and_then(|m| parse_major(m, "CNY"))
                .unwrap_or(0);
            st.state.refunded(RecordedRefund {
                out_trade_no: out,
                amount_minor: amount,
                refund_no: None,
            });
            axum::Json(json!({"code": 1, "msg": "退款成功"})).into_response()
        }
        PayCall::Other => axum::Json(json!({"code": -1, "msg": "unknown"})).into_response(),
    }
}
