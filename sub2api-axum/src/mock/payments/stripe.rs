//! Stripe: `POST /v1/checkout/sessions` (bearer secret required, `Idempotency-Key` honoured),
//! `GET /v1/checkout/sessions/{id}`, `POST /v1/refunds`; notifications signed with the webhook
//! secret (`Stripe-Signature: t=..,v1=..`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{Value, json};
use sub2api_core::payment::stripe::sign_header;
use sub2api_core::payment::util::{form_decode, now_secs, param};

use super::{
    Forge, Notification, PayCall, PayMockState, PayRequest, QueryAnswer, RecordedRefund, Served,
};

pub struct MockStripe {
    served: Served,
    state: PayMockState,
    webhook_secret: String,
}
super::deref_state!(MockStripe);

#[derive(Clone)]
struct St {
    state: PayMockState,
    secret: Arc<str>,
    /// Idempotency-Key -> the answer first given for it.
    idem: Arc<Mutex<HashMap<String, Value>>>,
}

impl MockStripe {
    /// Serves a mock that accepts `secret_key` and signs notifications with `webhook_secret`.
    pub async fn start(secret_key: &str, webhook_secret: &str) -> MockStripe {
        let state = PayMockState::default();
        let st = St {
            state: state.clone(),
            secret: secret_key.into(),
            idem: Arc::default(),
        };
        let app = Router::new().fallback(handle).with_state(st);
        MockStripe {
            served: Served::start(app).await,
            state,
            webhook_secret: webhook_secret.to_owned(),
        }
    }

    /// The `api_base` to configure.
    pub fn base_url(&self) -> String {
        self.served.base_url()
    }

    /// The PaymentIntent id the mock gives an order (the relay's credit key).
    pub fn trade_no(out_trade_no: &str) -> String {
        format!("pi_{out_trade_no}")
    }

    /// Idempotency keys of the session creations, in order.
    pub fn idempotency_keys(&self) -> Vec<Option<String>> {
        self.calls(PayCall::Create)
            .iter()
            .map(|r| {
                r.headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })
            .collect()
    }

    pub fn notification(&self, out_trade_no: &str) -> Notification {
        self.notification_with(out_trade_no, &Forge::default())
    }

    /// A `checkout.session.completed` event for the order.
    pub fn notification_with(&self, out_trade_no: &str, forge: &Forge) -> Notification {
        let amount = self.amount_for(out_trade_no, forge);
        let currency = self
            .order(out_trade_no)
            .map(|o| o.1)
            .unwrap_or_else(|| "usd".into());
        let body = json!({
            "id": format!("evt_{out_trade_no}"),
            "object": "event",
            "type": "checkout.session.completed",
            "data": {"object": session(out_trade_no, amount, &currency, true)},
        })
        .to_string()
        .into_bytes();
        let secret = if forge.bad_signature {
            "whsec_attacker"
        } else {
            self.webhook_secret.as_str()
        };
        let t = now_secs() + forge.timestamp_offset_secs;
        Notification {
            method: Method::POST,
            query: None,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("stripe-signature".into(), sign_header(secret, t, &body)),
            ],
            body,
        }
    }

    pub async fn shutdown(self) {
        self.served.shutdown().await;
    }
}

fn session(out: &str, amount: i64, currency: &str, paid: bool) -> Value {
    json!({
        "id": format!("cs_{out}"),
        "object": "checkout.session",
        "client_reference_id": out,
        "metadata": {"out_trade_no": out},
        "amount_total": amount,
        "currency": currency,
        "payment_intent": if paid { Value::from(MockStripe::trade_no(out)) } else { Value::Null },
        "payment_status": if paid { "paid" } else { "unpaid" },
        "status": if paid { "complete" } else { "open" },
        "url": format!("https://checkout.stripe.test/c/pay/cs_{out}"),
    })
}

fn error(status: StatusCode, msg: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"message": msg, "type": "invalid_request_error"}})),
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
    let path = uri.path().to_owned();
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|k| k == &*st.secret);
    let form = form_decode(&body);
    let call = match (&method, path.as_str()) {
        (&Method::POST, "/v1/checkout/sessions") => PayCall::Create,
        (&Method::GET, p) if p.starts_with("/v1/checkout/sessions/") => PayCall::Query,
        (&Method::POST, "/v1/refunds") => PayCall::Refund,
        _ => PayCall::Other,
    };
    let out = match call {
        PayCall::Create | PayCall::Refund => {
            param(&form, "metadata[out_trade_no]").map(str::to_owned)
        }
        PayCall::Query => path
            .strip_prefix("/v1/checkout/sessions/cs_")
            .map(str::to_owned),
        PayCall::Other => None,
    };
    st.state.record(PayRequest {
        call,
        method: method.clone(),
        path: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or(path.clone()),
        headers: headers.clone(),
        body: body.clone(),
        verified: authorized,
        out_trade_no: out.clone(),
    });
    if !authorized {
        return error(StatusCode::UNAUTHORIZED, "Invalid API Key provided");
    }
    match call {
        PayCall::Create => {
            let key = headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if let Some(k) = &key
                && let Some(v) = st.idem.lock().unwrap_or_else(|e| e.into_inner()).get(k)
            {
                return axum::Json(v.clone()).into_response();
            }
            let (Some(out), Some(amount), Some(currency)) = (
                out,
                param(&form, "line_items[0][price_data][unit_amount]")
                    .and_then(|a| a.parse::<i64>().ok()),
                param(&form, "line_items[0][price_data][currency]"),
            ) else {
                return error(StatusCode::BAD_REQUEST, "missing parameters");
            };
            st.state.remember(&out, amount, currency);
            let v = session(&out, amount, currency, false);
            if let Some(k) = key {
                st.idem
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(k, v.clone());
            }
            axum::Json(v).into_response()
        }
        PayCall::Query => {
            let Some((amount, currency)) = out.as_deref().and_then(|o| st.state.order(o)) else {
                return error(StatusCode::NOT_FOUND, "No such checkout.session");
            };
            let out = out.unwrap_or_default();
            match st.state.query_answer() {
                QueryAnswer::Unreachable => super::unreachable_answer(),
                QueryAnswer::Paid => {
                    axum::Json(session(&out, amount, &currency, true)).into_response()
                }
                QueryAnswer::Unpaid => {
                    axum::Json(session(&out, amount, &currency, false)).into_response()
                }
            }
        }
        PayCall::Refund => {
            let amount = param(&form, "amount")
                .and_then(|a| a.parse().ok())
                .unwrap_or(0);
            let pi = param(&form, "payment_intent").unwrap_or("").to_owned();
            let out = out.unwrap_or_else(|| pi.trim_start_matches("pi_").to_owned());
            st.state.refunded(RecordedRefund {
                out_trade_no: out,
                amount_minor: amount,
                refund_no: headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            });
            axum::Json(
                json!({"id": format!("re_{pi}"), "object": "refund", "amount": amount,
                "payment_intent": pi, "status": "succeeded"}),
            )
            .into_response()
        }
        PayCall::Other => error(StatusCode::NOT_FOUND, "Unrecognized request URL"),
    }
}
