//! WeChat Pay v3: verifies each request's `WECHATPAY2-SHA256-RSA2048` Authorization with the
//! merchant public key; answers native/query/refund signed with the platform key
//! (`Wechatpay-Timestamp|Nonce|Signature|Serial`); notifications signed with the platform key and
//! their `resource` encrypted with AES-256-GCM under the APIv3 key.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri};
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{Value, json};
use sub2api_core::payment::rsa_keys;
use sub2api_core::payment::test_keys::{
    ATTACKER_PRIVATE, WECHAT_MERCHANT_PUBLIC, WECHAT_PLATFORM_PRIVATE,
};
use sub2api_core::payment::util::{nonce, now_secs};
use sub2api_core::payment::wechat::{
    encrypt_resource, parse_authorization, platform_signature, verify_authorization,
};

use super::{
    Forge, Notification, PayCall, PayMockState, PayRequest, QueryAnswer, RecordedRefund, Served,
};

pub struct MockWechat {
    served: Served,
    state: PayMockState,
    mchid: String,
    appid: String,
    apiv3_key: String,
    serial: String,
}
super::deref_state!(MockWechat);

#[derive(Clone)]
struct St {
    state: PayMockState,
    mchid: String,
    appid: String,
    serial: String,
    merchant: RsaPublicKey,
    platform: RsaPrivateKey,
}

impl MockWechat {
    /// Serves WeChat Pay for merchant `mchid`/`appid`, trusting `test_keys::WECHAT_MERCHANT_PUBLIC`,
    /// signing with `test_keys::WECHAT_PLATFORM_PRIVATE` under `platform_serial`, encrypting
    /// notification resources with `apiv3_key` (32 bytes).
    pub async fn start(
        mchid: &str,
        appid: &str,
        apiv3_key: &str,
        platform_serial: &str,
    ) -> MockWechat {
        let state = PayMockState::default();
        let st = St {
            state: state.clone(),
            mchid: mchid.into(),
            appid: appid.into(),
            serial: platform_serial.into(),
            merchant: rsa_keys::public_key(WECHAT_MERCHANT_PUBLIC).expect("test key"),
            platform: rsa_keys::private_key(WECHAT_PLATFORM_PRIVATE).expect("test key"),
        };
        let app = Router::new().fallback(handle).with_state(st);
        MockWechat {
            served: Served::start(app).await,
            state,
            mchid: mchid.into(),
            appid: appid.into(),
            apiv3_key: apiv3_key.into(),
            serial: platform_serial.into(),
        }
    }

    /// The `api_base` to configure.
    pub fn base_url(&self) -> String {
        self.served.base_url()
    }

    pub fn trade_no(out_trade_no: &str) -> String {
        format!("4200{out_trade_no}")
    }

    pub fn notification(&self, out_trade_no: &str) -> Notification {
        self.notification_with(out_trade_no, &Forge::default())
    }

    /// A `TRANSACTION.SUCCESS` notification.
    pub fn notification_with(&self, out_trade_no: &str, forge: &Forge) -> Notification {
        let amount = self.amount_for(out_trade_no, forge);
        let tx = transaction(&self.mchid, &self.appid, out_trade_no, amount, "SUCCESS");
        let rnonce = "r3s0urc3n0nc";
        let mut ct = encrypt_resource(
            &self.apiv3_key,
            rnonce,
            "transaction",
            tx.to_string().as_bytes(),
        );
        if forge.tamper_ciphertext {
            let mut raw = B64.decode(&ct).expect("own base64");
            raw[3] ^= 0x20;
            ct = B64.encode(raw);
        }
        let body = json!({
            "id": format!("EV-{out_trade_no}"),
            "create_time": "2025-01-01T00:00:00+08:00",
            "resource_type": "encrypt-resource",
            "event_type": "TRANSACTION.SUCCESS",
            "summary": "支付成功",
            "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": ct, "associated_data": "transaction", "nonce": rnonce},
        })
        .to_string()
        .into_bytes();
        let key = rsa_keys::private_key(if forge.bad_signature {
            ATTACKER_PRIVATE
        } else {
            WECHAT_PLATFORM_PRIVATE
        })
        .expect("test key");
        let ts = now_secs() + forge.timestamp_offset_secs;
        let n = nonce();
        let sig = platform_signature(&key, ts, &n, &body);
        Notification {
            method: Method::POST,
            query: None,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("wechatpay-timestamp".into(), ts.to_string()),
                ("wechatpay-nonce".into(), n),
                ("wechatpay-signature".into(), sig),
                ("wechatpay-serial".into(), self.serial.clone()),
            ],
            body,
        }
    }

    pub async fn shutdown(self) {
        self.served.shutdown().await;
    }
}

fn transaction(mchid: &str, appid: &str, out: &str, amount: i64, state: &str) -> Value {
    json!({
        "mchid": mchid, "appid": appid, "out_trade_no": out,
        "transaction_id": MockWechat::trade_no(out),
        "trade_type": "NATIVE", "trade_state": state, "trade_state_desc": state,
        "amount": {"total": amount, "payer_total": amount, "currency": "CNY", "payer_currency": "CNY"},
    })
}

/// An answer signed with the platform key.
fn signed(st: &St, status: StatusCode, v: &Value) -> Response {
    let body = v.to_string();
    let ts = now_secs();
    let n = nonce();
    let sig = platform_signature(&st.platform, ts, &n, body.as_bytes());
    (
        status,
        [
            ("content-type", "application/json".to_owned()),
            ("wechatpay-timestamp", ts.to_string()),
            ("wechatpay-nonce", n),
            ("wechatpay-signature", sig),
            ("wechatpay-serial", st.serial.clone()),
        ],
        body,
    )
        .into_response()
}

async fn handle(
    State(st): State<St>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).into_owned();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let verified = verify_authorization(&st.merchant, auth, method.as_str(), &path, &text)
        && parse_authorization(auth)
            .and_then(|f| f.get("mchid").cloned())
            .as_deref()
            == Some(st.mchid.as_str());
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let (call, out) = match (&method, uri.path()) {
        (&Method::POST, "/v3/pay/transactions/native") => (
            PayCall::Create,
            v["out_trade_no"].as_str().map(str::to_owned),
        ),
        (&Method::GET, p) if p.starts_with("/v3/pay/transactions/out-trade-no/") => (
            PayCall::Query,
            p.strip_prefix("/v3/pay/transactions/out-trade-no/")
                .map(str::to_owned),
        ),
        (&Method::POST, "/v3/refund/domestic/refunds") => (
            PayCall::Refund,
            v["out_trade_no"].as_str().map(str::to_owned),
        ),
        _ => (PayCall::Other, None),
    };
    st.state.record(PayRequest {
        call,
        method,
        path,
        headers,
        body,
        verified,
        out_trade_no: out.clone(),
    });
    if !verified {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"code": "SIGN_ERROR", "message": "签名错误"})),
        )
            .into_response();
    }
    let out = out.unwrap_or_default();
    match call {
        PayCall::Create => {
            let amount = v["amount"]["total"].as_i64().unwrap_or(0);
            let currency = v["amount"]["currency"].as_str().unwrap_or("CNY");
            if v["mchid"].as_str() != Some(st.mchid.as_str())
                || v["appid"].as_str() != Some(st.appid.as_str())
                || amount <= 0
            {
                return signed(
                    &st,
                    StatusCode::BAD_REQUEST,
                    &json!({"code": "PARAM_ERROR", "message": "参数错误"}),
                );
            }
            st.state.remember(&out, amount, currency);
            signed(
                &st,
                StatusCode::OK,
                &json!({"code_url": format!("weixin://wxpay/bizpayurl?pr={out}")}),
            )
        }
        PayCall::Query => {
            let answer = st.state.query_answer();
            if answer == QueryAnswer::Unreachable {
                return super::unreachable_answer();
            }
            let Some((amount, _)) = st.state.order(&out) else {
                return signed(
                    &st,
                    StatusCode::NOT_FOUND,
                    &json!({"code": "ORDER_NOT_EXIST", "message": "订单不存在"}),
                );
            };
            let state = if answer == QueryAnswer::Paid {
                "SUCCESS"
            } else {
                "NOTPAY"
            };
            signed(
                &st,
                StatusCode::OK,
                &transaction(&st.mchid, &st.appid, &out, amount, state),
            )
        }
        PayCall::Refund => {
            let amount = v["amount"]["refund"].as_i64().unwrap_or(0);
            let refund_no = v["out_refund_no"].as_str().map(str::to_owned);
            st.state.refunded(RecordedRefund {
                out_trade_no: out.clone(),
                amount_minor: amount,
                refund_no: refund_no.clone(),
            });
            signed(
                &st,
                StatusCode::OK,
                &json!({"refund_id": format!("5030{out}"), "out_refund_no": refund_no, "out_trade_no": out,
                    "transaction_id": MockWechat::trade_no(&out), "status": "PROCESSING",
                    "amount": {"refund": amount, "total": v["amount"]["total"], "currency": "CNY"}}),
            )
        }
        PayCall::Other => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"code": "NOT_FOUND"})),
        )
            .into_response(),
    }
}
