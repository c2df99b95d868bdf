//! Alipay (RSA2): requests signed with the app private key over the sorted `k=v&...` of every
//! non-empty parameter except `sign`; answers verified with the Alipay public key over the raw
//! `<method>_response` JSON; async notifications verified over the sorted decoded parameters
//! without `sign` and `sign_type`. Methods: `alipay.trade.precreate` (QR code),
//! `alipay.trade.page.pay` (cashier redirect), `alipay.trade.query`, `alipay.trade.refund`.

use std::collections::HashMap;

use async_trait::async_trait;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::config::{AlipayConfig, major_string, parse_major};
use super::rsa_keys;
use super::util::{form_decode, form_encode, param, sign_content, transport};
use super::{
    Checkout, PaymentError, PaymentEvent, PaymentGateway, PaymentOrder, PaymentStatus,
    QueryRequest, RefundRequest,
};

pub struct AlipayGateway {
    config: AlipayConfig,
    key: RsaPrivateKey,
    alipay_key: RsaPublicKey,
    http: reqwest::Client,
}

/// Beijing time, as Alipay's `timestamp` parameter wants it.
fn timestamp() -> String {
    let now = time::OffsetDateTime::now_utc().to_offset(time::macros::offset!(+8));
    now.format(time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second]"
    ))
    .unwrap_or_default()
}

/// Signs a parameter list: returns it with `sign` appended.
pub fn sign_params(
    key: &RsaPrivateKey,
    mut params: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let content = sign_content(&params, &["sign"]);
    params.push(("sign".into(), rsa_keys::sign(key, content.as_bytes())));
    params
}

/// Verifies signed request parameters (what the mock gateway does with the relay's requests).
pub fn verify_request(key: &RsaPublicKey, params: &[(String, String)]) -> bool {
    let Some(sig) = param(params, "sign") else {
        return false;
    };
    rsa_keys::verify(key, sign_content(params, &["sign"]).as_bytes(), sig)
}

/// Verifies an async notification: `sign` over everything but `sign` and `sign_type`.
pub fn verify_notify(key: &RsaPublicKey, params: &[(String, String)]) -> bool {
    let Some(sig) = param(params, "sign") else {
        return false;
    };
    rsa_keys::verify(
        key,
        sign_content(params, &["sign", "sign_type"]).as_bytes(),
        sig,
    )
}

/// Signs a notification as Alipay does (the mock and tests).
pub fn sign_notify(
    key: &RsaPrivateKey,
    mut params: Vec<(String, String)>,
) -> Vec<(String, String)> {
    params.retain(|(k, _)| k != "sign");
    let content = sign_content(&params, &["sign", "sign_type"]);
    params.push(("sign".into(), rsa_keys::sign(key, content.as_bytes())));
    params
}

impl AlipayGateway {
    pub fn new(config: AlipayConfig, http: reqwest::Client) -> Result<Self, String> {
        let key = rsa_keys::private_key(config.app_private_key.expose())
            .map_err(|e| format!("payments.alipay.app_private_key: {e}"))?;
        let alipay_key = rsa_keys::public_key(&config.alipay_public_key)
            .map_err(|e| format!("payments.alipay.alipay_public_key: {e}"))?;
        Ok(AlipayGateway {
            config,
            key,
            alipay_key,
            http,
        })
    }

    fn params(&self, method: &str, biz: Value, notify_url: Option<&str>) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = vec![
            ("app_id".into(), self.config.app_id.clone()),
            ("method".into(), method.into()),
            ("format".into(), "JSON".into()),
            ("charset".into(), "utf-8".into()),
            ("sign_type".into(), "RSA2".into()),
            ("timestamp".into(), timestamp()),
            ("version".into(), "1.0".into()),
            ("biz_content".into(), biz.to_string()),
        ];
        if let Some(n) = notify_url {
            p.push(("notify_url".into(), n.into()));
        }
        sign_params(&self.key, p)
    }

    /// Calls a method and returns its verified `<method>_response` object.
    async fn call(
        &self,
        method: &str,
        biz: Value,
        notify_url: Option<&str>,
    ) -> Result<Value, PaymentError> {
        let params = self.params(method, biz, notify_url);
        let body = form_encode(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let res = self
            .http
            .post(&self.config.gateway)
            .header(
                "content-type",
                "application/x-www-form-urlencoded;charset=utf-8",
            )
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        let text = res.text().await.map_err(transport)?;
        let node = format!("{}_response", method.replace('.', "_"));
        let map: HashMap<String, Box<RawValue>> = serde_json::from_str(&text)
            .map_err(|e| PaymentError::Malformed(format!("alipay answer: {e}")))?;
        let raw = map
            .get(&node)
            .ok_or_else(|| PaymentError::Malformed(format!("no {node} in the answer")))?;
        let resp: Value =
            serde_json::from_str(raw.get()).map_err(|e| PaymentError::Malformed(e.to_string()))?;
        let code = resp["code"].as_str().unwrap_or("");
        // Alipay signs successful answers; an error answer may come unsigned.
        match map
            .get("sign")
            .and_then(|s| serde_json::from_str::<String>(s.get()).ok())
        {
            Some(sig) => {
                if !rsa_keys::verify(&self.alipay_key, raw.get().as_bytes(), &sig) {
                    return Err(PaymentError::BadSignature);
                }
            }
            None if code == "10000" => return Err(PaymentError::BadSignature),
            None => {}
        }
        Ok(resp)
    }

    fn event(
        &self,
        p: &[(String, String)],
        status: PaymentStatus,
    ) -> Result<PaymentEvent, PaymentError> {
        let get = |k: &str| {
            param(p, k)
                .map(str::to_owned)
                .ok_or_else(|| PaymentError::Malformed(format!("missing {k}")))
        };
        let amount = parse_major(&get("total_amount")?, &self.config.currency)
            .ok_or_else(|| PaymentError::Malformed("total_amount".into()))?;
        Ok(PaymentEvent {
            out_trade_no: get("out_trade_no")?,
            provider_trade_no: get("trade_no")?,
            amount_minor: amount,
            currency: self.config.currency.clone(),
            status,
            merchant_id: param(p, "app_id").map(str::to_owned),
        })
    }
}

fn trade_status(s: &str) -> PaymentStatus {
    match s {
        "TRADE_SUCCESS" | "TRADE_FINISHED" => PaymentStatus::Paid,
        "TRADE_CLOSED" => PaymentStatus::Closed,
        _ => PaymentStatus::Pending,
    }
}

#[async_trait]
impl PaymentGateway for AlipayGateway {
    fn provider(&self) -> &'static str {
        "alipay"
    }

    async fn create_checkout(&self, order: &PaymentOrder) -> Result<Checkout, PaymentError> {
        let amount = major_string(order.amount_minor, &order.currency);
        if self.config.mode == "page" {
            let biz = json!({
                "out_trade_no": order.out_trade_no,
                "total_amount": amount,
                "subject": order.subject,
                "product_code": "FAST_INSTANT_TRADE_PAY",
            });
            let mut params = self.params("alipay.trade.page.pay", biz, Some(&order.notify_url));
            if let Some(r) = &order.return_url {
                params.retain(|(k, _)| k != "sign");
                params.push(("return_url".into(), r.clone()));
                params = sign_params(&self.key, params);
            }
            let q = form_encode(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            return Ok(Checkout {
                pay_url: Some(format!("{}?{q}", self.config.gateway)),
                ..Checkout::default()
            });
        }
        let biz = json!({
            "out_trade_no": order.out_trade_no,
            "total_amount": amount,
            "subject": order.subject,
        });
        let r = self
            .call("alipay.trade.precreate", biz, Some(&order.notify_url))
            .await?;
        if r["code"].as_str() != Some("10000") {
            return Err(PaymentError::Provider(format!(
                "{} {}",
                r["sub_code"].as_str().unwrap_or(""),
                r["sub_msg"].as_str().unwrap_or("")
            )));
        }
        Ok(Checkout {
            qr_code: r["qr_code"].as_str().map(str::to_owned),
            ..Checkout::default()
        })
    }

    fn verify_notification(
        &self,
        _headers: &http::HeaderMap,
        _query: Option<&str>,
        body: &[u8],
    ) -> Result<PaymentEvent, PaymentError> {
        let p = form_decode(body);
        if !verify_notify(&self.alipay_key, &p) {
            return Err(PaymentError::BadSignature);
        }
        let status = trade_status(param(&p, "trade_status").unwrap_or(""));
        self.event(&p, status)
    }

    fn acknowledgement(&self) -> (http::StatusCode, &'static str) {
        (http::StatusCode::OK, "success")
    }

    async fn query(&self, order: &QueryRequest) -> Result<PaymentEvent, PaymentError> {
        let r = self
            .call(
                "alipay.trade.query",
                json!({"out_trade_no": order.out_trade_no}),
                None,
            )
            .await?;
        if r["code"].as_str() != Some("10000") {
            if r["sub_code"].as_str() == Some("ACQ.TRADE_NOT_EXIST") {
                return Ok(super::service::unpaid(order));
            }
            return Err(PaymentError::Provider(
                r["sub_code"].as_str().unwrap_or("query failed").to_owned(),
            ));
        }
        let status = trade_status(r["trade_status"].as_str().unwrap_or(""));
        if status != PaymentStatus::Paid {
            return Ok(PaymentEvent {
                status,
                ..super::service::unpaid(order)
            });
        }
        let pairs: Vec<(String, String)> = ["out_trade_no", "trade_no", "total_amount"]
            .iter()
            .filter_map(|k| Some((k.to_string(), r[*k].as_str()?.to_owned())))
            .chain([("app_id".to_string(), self.config.app_id.clone())])
            .collect();
        self.event(&pairs, status)
    }

    async fn refund(&self, refund: &RefundRequest) -> Result<(), PaymentError> {
        let biz = json!({
            "out_trade_no": refund.out_trade_no,
            "refund_amount": major_string(refund.amount_minor, &refund.currency),
            "out_request_no": refund.refund_no,
            "refund_reason": refund.reason,
        });
        let r = self.call("alipay.trade.refund", biz, None).await?;
        if r["code"].as_str() != Some("10000") {
            return Err(PaymentError::Provider(
                r["sub_msg"].as_str().unwrap_or("refund refused").to_owned(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_keys::*;
    use super::*;

    fn gateway() -> AlipayGateway {
        AlipayGateway::new(
            AlipayConfig {
                app_id: "2021000000".into(),
                app_private_key: ALIPAY_APP_PRIVATE.into(),
                alipay_public_key: ALIPAY_PLATFORM_PUBLIC.into(),
                gateway: "http://127.0.0.1:1/gateway.do".into(),
                currency: "CNY".into(),
                usd_per_unit: "0.14".into(),
                mode: "precreate".into(),
            },
            crate::layer::upstream::Upstream::default_client(),
        )
        .unwrap()
    }

    fn notify() -> Vec<(String, String)> {
        [
            ("app_id", "2021000000"),
            ("out_trade_no", "o1"),
            ("trade_no", "2024000001"),
            ("total_amount", "10.00"),
            ("trade_status", "TRADE_SUCCESS"),
            ("subject", "top up & more"),
            ("sign_type", "RSA2"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn notification_verifies_and_forgeries_do_not() {
        let g = gateway();
        let platform = rsa_keys::private_key(ALIPAY_PLATFORM_PRIVATE).unwrap();
        let signed = sign_notify(&platform, notify());
        let body = form_encode(signed.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let e = g
            .verify_notification(&Default::default(), None, body.as_bytes())
            .unwrap();
        assert_eq!(
            (
                e.amount_minor,
                e.provider_trade_no.as_str(),
                e.status,
                e.merchant_id.as_deref()
            ),
            (1000, "2024000001", PaymentStatus::Paid, Some("2021000000"))
        );
        // Signed by someone else.
        let attacker = rsa_keys::private_key(ATTACKER_PRIVATE).unwrap();
        let forged = sign_notify(&attacker, notify());
        let body = form_encode(forged.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(
            g.verify_notification(&Default::default(), None, body.as_bytes()),
            Err(PaymentError::BadSignature)
        );
        // Amount changed after signing.
        let body = form_encode(signed.iter().map(|(k, v)| {
            (
                k.as_str(),
                if k == "total_amount" {
                    "1000.00"
                } else {
                    v.as_str()
                },
            )
        }));
        assert_eq!(
            g.verify_notification(&Default::default(), None, body.as_bytes()),
            Err(PaymentError::BadSignature)
        );
    }

    #[test]
    fn requests_are_signed_with_the_app_key() {
        let g = gateway();
        let p = g.params("alipay.trade.query", json!({"out_trade_no": "o1"}), None);
        let app_pub = rsa_keys::public_key(ALIPAY_APP_PUBLIC).unwrap();
        assert!(verify_request(&app_pub, &p));
        let mut tampered = p.clone();
        tampered[0].1 = "other".into();
        assert!(!verify_request(&app_pub, &tampered));
    }
}
