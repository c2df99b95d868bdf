//! The Alipay open-API gateway (`POST /gateway.do`): verifies each request's RSA2 signature with
//! the app public key, answers `alipay.trade.precreate|page.pay|query|refund` signed with the
//! Alipay private key; notifications signed the same way.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, Method, Uri};
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{Value, json};
use sub2api_core::payment::alipay::{sign_notify, verify_request};
use sub2api_core::payment::config::{major_string, parse_major};
use sub2api_core::payment::rsa_keys;
use sub2api_core::payment::test_keys::{
    ALIPAY_APP_PUBLIC, ALIPAY_PLATFORM_PRIVATE, ATTACKER_PRIVATE,
};
use sub2api_core::payment::util::{form_decode, form_encode, param};

use super::{
    Forge, Notification, PayCall, PayMockState, PayRequest, QueryAnswer, RecordedRefund, Served,
};

pub struct MockAlipay {
    served: Served,
    state: PayMockState,
    app_id: String,
}
super::deref_state!(MockAlipay);

#[derive(Clone)]
struct St {
    state: PayMockState,
    app_public: RsaPublicKey,
    platform: RsaPrivateKey,
}

impl MockAlipay {
    /// Serves a gateway for `app_id`, trusting `test_keys::ALIPAY_APP_PUBLIC` and signing with
    /// `test_keys::ALIPAY_PLATFORM_PRIVATE`.
    pub async fn start(app_id: &str) -> MockAlipay {
        let state = PayMockState::default();
        let st = St {
            state: state.clone(),
            app_public: rsa_keys::public_key(ALIPAY_APP_PUBLIC).expect("test key"),
            platform: rsa_keys::private_key(ALIPAY_PLATFORM_PRIVATE).expect("test key"),
        };
        let app = Router::new().fallback(handle).with_state(st);
        MockAlipay {
            served: Served::start(app).await,
            state,
            app_id: app_id.to_owned(),
        }
    }

    /// The `gateway` to configure.
    pub fn gateway_url(&self) -> String {
        format!("{}/gateway.do", self.served.base_url())
    }

    pub fn trade_no(out_trade_no: &str) -> String {
        format!("2025{out_trade_no}")
    }

    pub fn notification(&self, out_trade_no: &str) -> Notification {
        self.notification_with(out_trade_no, &Forge::default())
    }

    /// A `TRADE_SUCCESS` async notification (form POST).
    pub fn notification_with(&self, out_trade_no: &str, forge: &Forge) -> Notification {
        let amount = major_string(self.amount_for(out_trade_no, forge), "CNY");
        let trade = Self::trade_no(out_trade_no);
        let params = super::pairs(&[
            ("notify_type", "trade_status_sync"),
            ("notify_id", &format!("n{out_trade_no}")),
            ("app_id", &self.app_id),
            ("charset", "utf-8"),
            ("version", "1.0"),
            ("sign_type", "RSA2"),
            ("out_trade_no", out_trade_no),
            ("trade_no", &trade),
            ("total_amount", &amount),
            ("receipt_amount", &amount),
            ("trade_status", "TRADE_SUCCESS"),
            ("subject", "Balance top-up"),
        ]);
        let key = rsa_keys::private_key(if forge.bad_signature {
            ATTACKER_PRIVATE
        } else {
            ALIPAY_PLATFORM_PRIVATE
        })
        .expect("test key");
        let signed = sign_notify(&key, params);
        Notification {
            method: Method::POST,
            query: None,
            headers: vec![(
                "content-type".into(),
                "application/x-www-form-urlencoded; charset=utf-8".into(),
            )],
            body: form_encode(signed.iter().map(|(k, v)| (k.as_str(), v.as_str()))).into_bytes(),
        }
    }

    pub async fn shutdown(self) {
        self.served.shutdown().await;
    }
}

/// `{"<node>": <answer>, "sign": "<RSA2 over the raw answer>"}`.
fn signed_answer(key: &RsaPrivateKey, method: &str, answer: &Value) -> Response {
    let node = format!("{}_response", method.replace('.', "_"));
    let raw = answer.to_string();
    let sig = rsa_keys::sign(key, raw.as_bytes());
    let text = format!("{{\"{node}\":{raw},\"sign\":{}}}", Value::from(sig));
    ([("content-type", "application/json;charset=utf-8")], text).into_response()
}

async fn handle(
    State(st): State<St>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Requests come as a form body; page.pay URLs carry the parameters in the query.
    let mut params = form_decode(&body);
    if params.is_empty() {
        params = form_decode(uri.query().unwrap_or("").as_bytes());
    }
    let verified = verify_request(&st.app_public, &params);
    let api = param(&params, "method").unwrap_or("").to_owned();
    let biz: Value = param(&params, "biz_content")
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    let out = biz["out_trade_no"].as_str().map(str::to_owned);
    let call = match api.as_str() {
        "alipay.trade.precreate" | "alipay.trade.page.pay" => PayCall::Create,
        "alipay.trade.query" => PayCall::Query,
        "alipay.trade.refund" => PayCall::Refund,
        _ => PayCall::Other,
    };
    st.state.record(PayRequest {
        call,
        method,
        path: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers,
        body,
        verified,
        out_trade_no: out.clone(),
    });
    if !verified {
        // What Alipay answers to a bad signature: an unsigned error.
        let node = format!("{}_response", api.replace('.', "_"));
        return axum::Json(json!({node: {"code": "40002", "msg": "Invalid Arguments",
            "sub_code": "isv.invalid-signature", "sub_msg": "验签出错"}}))
        .into_response();
    }
    let out = out.unwrap_or_default();
    match call {
        PayCall::Create => {
            let Some(amount) = biz["total_amount"]
                .as_str()
                .and_then(|a| parse_major(a, "CNY"))
            else {
                return signed_answer(
                    &st.platform,
                    &api,
                    &json!({"code": "40004", "msg": "Business Failed",
                    "sub_code": "ACQ.INVALID_PARAMETER", "sub_msg": "total_amount"}),
                );
            };
            st.state.remember(&out, amount, "CNY");
            signed_answer(
                &st.platform,
                &api,
                &json!({"code": "10000", "msg": "Success", "out_trade_no": out,
                    "qr_code": format!("https://qr.alipay.test/{out}")}),
            )
        }
        PayCall::Query => {
            let answer = st.state.query_answer();
            if answer == QueryAnswer::Unreachable {
                return super::unreachable_answer();
            }
            let Some((amount, _)) = st.state.order(&out) else {
                return signed_answer(
                    &st.platform,
                    &api,
                    &json!({"code": "40004", "msg": "Business Failed",
                    "sub_code": "ACQ.TRADE_NOT_EXIST", "sub_msg": "交易不存在"}),
                );
            };
            let status = if answer == QueryAnswer::Paid {
                "TRADE_SUCCESS"
            } else {
                "WAIT_BUYER_PAY"
            };
            signed_answer(
                &st.platform,
                &api,
                &json!({"code": "10000", "msg": "Success", "out_trade_no": out,
                    "trade_no": MockAlipay::trade_no(&out), "total_amount": major_string(amount, "CNY"),
                    "trade_status": status}),
            )
        }
        PayCall::Refund => {
            let amount = biz["refund_amount"]
                .as_str()
                .and_then(|a| parse_major(a, "CNY"))
                .unwrap_or(0);
            st.state.refunded(RecordedRefund {
                out_trade_no: out.clone(),
                amount_minor: amount,
                refund_no: biz["out_request_no"].as_str().map(str::to_owned),
            });
            signed_answer(
                &st.platform,
                &api,
                &json!({"code": "10000", "msg": "Success", "out_trade_no": out,
                    "trade_no": MockAlipay::trade_no(&out), "refund_fee": major_string(amount, "CNY"),
                    "fund_change": "Y"}),
            )
        }
        PayCall::Other => {
            axum::Json(json!({"error_response": {"code": "40004", "msg": "unknown method"}}))
                .into_response()
        }
    }
}
