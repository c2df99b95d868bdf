//! Stripe: Checkout Sessions (`POST /v1/checkout/sessions`, `Idempotency-Key` = the order
//! number), webhooks verified by `Stripe-Signature` (HMAC-SHA256 over `"<t>.<raw body>"`, any
//! `v1` matching in constant time, `t` within 300 s), query by session, refunds on the payment
//! intent.

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::config::StripeConfig;
use super::util::{ct_eq, form_encode, now_secs, transport};
use super::{
    Checkout, PaymentError, PaymentEvent, PaymentGateway, PaymentOrder, PaymentStatus,
    QueryRequest, RefundRequest,
};

/// Largest accepted distance between a signature's timestamp and now.
pub const TOLERANCE_SECS: i64 = 300;

pub struct StripeGateway {
    config: StripeConfig,
    http: reqwest::Client,
}

impl StripeGateway {
    pub fn new(config: StripeConfig, http: reqwest::Client) -> Self {
        StripeGateway { config, http }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        form: Option<String>,
        idempotency_key: Option<&str>,
    ) -> Result<Value, PaymentError> {
        let url = format!("{}{}", self.config.api_base.trim_end_matches('/'), path);
        let mut req = self
            .http
            .request(method, url)
            .bearer_auth(self.config.secret_key.expose());
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(f) = form {
            req = req
                .header("content-type", "application/x-www-form-urlencoded")
                .body(f);
        }
        let res = req.send().await.map_err(transport)?;
        let status = res.status();
        let bytes = res.bytes().await.map_err(transport)?;
        let body: Value = serde_json::from_slice(&bytes)
            .map_err(|e| PaymentError::Malformed(format!("stripe answer: {e}")))?;
        if !status.is_success() {
            let msg = body["error"]["message"].as_str().unwrap_or("error");
            return Err(PaymentError::Provider(format!("{status}: {msg}")));
        }
        Ok(body)
    }
}

/// `t=<unix>,v1=<hex>` for `body` (what Stripe sends; tests and the mock use it too).
pub fn sign_header(secret: &str, t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", hex::encode(mac(secret, t, body)))
}

fn mac(secret: &str, t: i64, body: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m.finalize().into_bytes().to_vec()
}

/// Verifies a `Stripe-Signature` header against the raw body at `now`.
pub fn verify_signature(
    secret: &str,
    header: &str,
    body: &[u8],
    now: i64,
) -> Result<(), PaymentError> {
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => sigs.push(v.to_owned()),
            _ => {}
        }
    }
    let t = t.ok_or(PaymentError::BadSignature)?;
    if sigs.is_empty() {
        return Err(PaymentError::BadSignature);
    }
    let expected = mac(secret, t, body);
    let ok = sigs
        .iter()
        .filter_map(|s| hex::decode(s).ok())
        .any(|s| ct_eq(&s, &expected));
    if !ok {
        return Err(PaymentError::BadSignature);
    }
    if (now - t).abs() > TOLERANCE_SECS {
        return Err(PaymentError::StaleTimestamp);
    }
    Ok(())
}

fn str_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("id").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// Reads the order number, trade id and amount out of a Checkout Session or a PaymentIntent.
fn event_of(obj: &Value, status: PaymentStatus) -> Result<PaymentEvent, PaymentError> {
    let out_trade_no = obj["metadata"]["out_trade_no"]
        .as_str()
        .or_else(|| obj["client_reference_id"].as_str())
        .ok_or_else(|| PaymentError::Malformed("no out_trade_no in metadata".into()))?
        .to_owned();
    let is_session = obj["object"].as_str() == Some("checkout.session");
    let trade = if is_session {
        str_of(&obj["payment_intent"]).or_else(|| str_of(&obj["id"]))
    } else {
        str_of(&obj["id"])
    }
    .ok_or_else(|| PaymentError::Malformed("no object id".into()))?;
    let amount = obj["amount_total"]
        .as_i64()
        .or_else(|| obj["amount_received"].as_i64())
        .or_else(|| obj["amount"].as_i64())
        .ok_or_else(|| PaymentError::Malformed("no amount".into()))?;
    Ok(PaymentEvent {
        out_trade_no,
        provider_trade_no: trade,
        amount_minor: amount,
        currency: obj["currency"].as_str().unwrap_or("").to_owned(),
        status,
        merchant_id: None,
    })
}

/// Parses a verified event body.
pub fn parse_event(body: &[u8]) -> Result<PaymentEvent, PaymentError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| PaymentError::Malformed(e.to_string()))?;
    let obj = &v["data"]["object"];
    let status = match v["type"].as_str().unwrap_or("") {
        "checkout.session.completed" => {
            if obj["payment_status"].as_str() == Some("paid") {
                PaymentStatus::Paid
            } else {
                PaymentStatus::Pending
            }
        }
        "checkout.session.async_payment_succeeded" | "payment_intent.succeeded" => {
            PaymentStatus::Paid
        }
        "checkout.session.async_payment_failed" | "payment_intent.payment_failed" => {
            PaymentStatus::Failed
        }
        "checkout.session.expired" => PaymentStatus::Closed,
        other => {
            return Err(PaymentError::Malformed(format!(
                "event type `{other}` is not handled"
            )));
        }
    };
    event_of(obj, status)
}

#[async_trait]
impl PaymentGateway for StripeGateway {
    fn provider(&self) -> &'static str {
        "stripe"
    }

    async fn create_checkout(&self, order: &PaymentOrder) -> Result<Checkout, PaymentError> {
        let amount = order.amount_minor.to_string();
        let success = order
            .return_url
            .clone()
            .unwrap_or_else(|| order.notify_url.clone());
        let currency = order.currency.to_ascii_lowercase();
        let form = form_encode([
            ("mode", "payment"),
            ("client_reference_id", order.out_trade_no.as_str()),
            ("metadata[out_trade_no]", order.out_trade_no.as_str()),
            (
                "payment_intent_data[metadata][out_trade_no]",
                order.out_trade_no.as_str(),
            ),
            ("line_items[0][quantity]", "1"),
            ("line_items[0][price_data][currency]", currency.as_str()),
            ("line_items[0][price_data][unit_amount]", amount.as_str()),
            (
                "line_items[0][price_data][product_data][name]",
                order.subject.as_str(),
            ),
            ("success_url", success.as_str()),
            ("cancel_url", success.as_str()),
        ]);
        let v = self
            .call(
                reqwest::Method::POST,
                "/v1/checkout/sessions",
                Some(form),
                Some(&order.out_trade_no),
            )
            .await?;
        Ok(Checkout {
            provider_order_id: v["id"].as_str().map(str::to_owned),
            pay_url: v["url"].as_str().map(str::to_owned),
            qr_code: None,
            client_secret: v["client_secret"].as_str().map(str::to_owned),
        })
    }

    fn verify_notification(
        &self,
        headers: &http::HeaderMap,
        _query: Option<&str>,
        body: &[u8],
    ) -> Result<PaymentEvent, PaymentError> {
        let header = headers
            .get("stripe-signature")
            .and_then(|v| v.to_str().ok())
            .ok_or(PaymentError::BadSignature)?;
        verify_signature(
            self.config.webhook_secret.expose(),
            header,
            body,
            now_secs(),
        )?;
        parse_event(body)
    }

    fn acknowledgement(&self) -> (http::StatusCode, &'static str) {
        (http::StatusCode::OK, "")
    }

    async fn query(&self, order: &QueryRequest) -> Result<PaymentEvent, PaymentError> {
        let Some(session) = &order.provider_order_id else {
            // Never created at Stripe: nothing can have been paid.
            return Ok(super::service::unpaid(order));
        };
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/checkout/sessions/{session}"),
                None,
                None,
            )
            .await?;
        let status = match (v["payment_status"].as_str(), v["status"].as_str()) {
            (Some("paid"), _) => PaymentStatus::Paid,
            (_, Some("expired")) => PaymentStatus::Closed,
            _ => PaymentStatus::Pending,
        };
        if status != PaymentStatus::Paid {
            return Ok(PaymentEvent {
                status,
                ..super::service::unpaid(order)
            });
        }
        event_of(&v, status)
    }

    async fn refund(&self, refund: &RefundRequest) -> Result<(), PaymentError> {
        let amount = refund.amount_minor.to_string();
        let form = form_encode([
            ("payment_intent", refund.provider_trade_no.as_str()),
            ("amount", amount.as_str()),
            ("metadata[out_trade_no]", refund.out_trade_no.as_str()),
        ]);
        self.call(
            reqwest::Method::POST,
            "/v1/refunds",
            Some(form),
            Some(&refund.refund_no),
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"id":"evt_1","type":"checkout.session.completed","data":{"object":{"object":"checkout.session","id":"cs_1","payment_intent":"pi_1","payment_status":"paid","amount_total":1000,"currency":"usd","client_reference_id":"o1","metadata":{"out_trade_no":"o1"}}}}"#;

    #[test]
    fn genuine_signature_verifies_and_parses() {
        let now = 1_700_000_000;
        let h = sign_header("whsec_x", now, BODY);
        verify_signature("whsec_x", &h, BODY, now + 10).unwrap();
        // Several v1 entries: any match is enough (secret rotation).
        let h2 = format!(
            "t={now},v1={},{}",
            "00".repeat(32),
            &h[h.find("v1").unwrap()..]
        );
        verify_signature("whsec_x", &h2, BODY, now).unwrap();
        let e = parse_event(BODY).unwrap();
        assert_eq!(
            (
                e.out_trade_no.as_str(),
                e.provider_trade_no.as_str(),
                e.amount_minor,
                e.status
            ),
            ("o1", "pi_1", 1000, PaymentStatus::Paid)
        );
    }

    #[test]
    fn forged_tampered_and_stale_are_refused() {
        let now = 1_700_000_000;
        let h = sign_header("whsec_x", now, BODY);
        assert_eq!(
            verify_signature("whsec_other", &h, BODY, now),
            Err(PaymentError::BadSignature)
        );
        let mut tampered = BODY.to_vec();
        let i = tampered.windows(4).position(|w| w == b"1000").unwrap();
        tampered[i] = b'9';
        assert_eq!(
            verify_signature("whsec_x", &h, &tampered, now),
            Err(PaymentError::BadSignature)
        );
        assert_eq!(
            verify_signature("whsec_x", &h, BODY, now + 301),
            Err(PaymentError::StaleTimestamp)
        );
        assert_eq!(
            verify_signature("whsec_x", "v1=abc", BODY, now),
            Err(PaymentError::BadSignature)
        );
    }
}
