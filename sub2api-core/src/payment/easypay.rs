//! EasyPay (epay): `sign` = lowercase hex MD5 of the sorted non-empty parameters except `sign` and
//! `sign_type`, joined `k=v&...`, with the merchant key appended. `mapi.php` (API: JSON
//! `code == 1` with `payurl`/`qrcode`), `submit.php` (redirect), `api.php?act=order` (query),
//! `api.php?act=refund`. Notifications by GET or POST; paid when `trade_status == TRADE_SUCCESS`;
//! the answer is plain `success`.

use async_trait::async_trait;
use md5::{Digest, Md5};
use serde_json::Value;

use super::config::{EasyPayConfig, major_string, parse_major};
use super::util::{ct_eq, form_decode, form_encode, param, sign_content, transport};
use super::{
    Checkout, PaymentError, PaymentEvent, PaymentGateway, PaymentOrder, PaymentStatus,
    QueryRequest, RefundRequest,
};

pub struct EasyPayGateway {
    config: EasyPayConfig,
    http: reqwest::Client,
}

/// The MD5 signature of a parameter list.
pub fn sign(params: &[(String, String)], key: &str) -> String {
    let content = sign_content(params, &["sign", "sign_type"]);
    let mut h = Md5::new();
    h.update(content.as_bytes());
    h.update(key.as_bytes());
    hex::encode(h.finalize())
}

/// Appends `sign` and `sign_type`.
pub fn signed(mut params: Vec<(String, String)>, key: &str) -> Vec<(String, String)> {
    params.retain(|(k, _)| k != "sign" && k != "sign_type");
    let s = sign(&params, key);
    params.push(("sign".into(), s));
    params.push(("sign_type".into(), "MD5".into()));
    params
}

pub fn verify(params: &[(String, String)], key: &str) -> bool {
    match param(params, "sign") {
        Some(s) => ct_eq(
            s.to_ascii_lowercase().as_bytes(),
            sign(params, key).as_bytes(),
        ),
        None => false,
    }
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl EasyPayGateway {
    pub fn new(config: EasyPayConfig, http: reqwest::Client) -> Self {
        EasyPayGateway { config, http }
    }

    fn url(&self, file: &str) -> String {
        format!("{}/{file}", self.config.api_base.trim_end_matches('/'))
    }

    async fn api(&self, params: &[(String, String)]) -> Result<Value, PaymentError> {
        let body = form_encode(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let res = self
            .http
            .post(self.url("api.php"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        let text = res.text().await.map_err(transport)?;
        serde_json::from_str(&text)
            .map_err(|e| PaymentError::Malformed(format!("easypay answer: {e}")))
    }
}

#[async_trait]
impl PaymentGateway for EasyPayGateway {
    fn provider(&self) -> &'static str {
        "easypay"
    }

    async fn create_checkout(&self, order: &PaymentOrder) -> Result<Checkout, PaymentError> {
        let money = major_string(order.amount_minor, &order.currency);
        let ret = order
            .return_url
            .clone()
            .unwrap_or_else(|| order.notify_url.clone());
        let params = signed(
            pairs(&[
                ("pid", &self.config.pid),
                ("type", &self.config.pay_type),
                ("out_trade_no", &order.out_trade_no),
                ("notify_url", &order.notify_url),
                ("return_url", &ret),
                ("name", &order.subject),
                ("money", &money),
            ]),
            self.config.key.expose(),
        );
        let form = form_encode(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if self.config.mode == "submit" {
            return Ok(Checkout {
                pay_url: Some(format!("{}?{form}", self.url("submit.php"))),
                ..Checkout::default()
            });
        }
        let res = self
            .http
            .post(self.url("mapi.php"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(transport)?;
        let text = res.text().await.map_err(transport)?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| PaymentError::Malformed(format!("easypay answer: {e}")))?;
        if v["code"].as_i64() != Some(1) && v["code"].as_str() != Some("1") {
            return Err(PaymentError::Provider(
                v["msg"].as_str().unwrap_or("refused").to_owned(),
            ));
        }
        Ok(Checkout {
            provider_order_id: v["trade_no"].as_str().map(str::to_owned),
            pay_url: v["payurl"].as_str().map(str::to_owned),
            qr_code: v["qrcode"]
                .as_str()
                .or(v["urlscheme"].as_str())
                .map(str::to_owned),
            client_secret: None,
        })
    }

    fn verify_notification(
        &self,
        _headers: &http::HeaderMap,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<PaymentEvent, PaymentError> {
        // GET notifications carry the parameters in the query; POST ones in the form body.
        let p = if body.iter().all(u8::is_ascii_whitespace) {
            form_decode(query.unwrap_or("").as_bytes())
        } else {
            form_decode(body)
        };
        if !verify(&p, self.config.key.expose()) {
            return Err(PaymentError::BadSignature);
        }
        let get = |k: &str| {
            param(&p, k)
                .map(str::to_owned)
                .ok_or_else(|| PaymentError::Malformed(format!("missing {k}")))
        };
        let status = if get("trade_status")? == "TRADE_SUCCESS" {
            PaymentStatus::Paid
        } else {
            PaymentStatus::Pending
        };
        Ok(PaymentEvent {
            out_trade_no: get("out_trade_no")?,
            provider_trade_no: get("trade_no")?,
            amount_minor: parse_major(&get("money")?, &self.config.currency)
                .ok_or_else(|| PaymentError::Malformed("money".into()))?,
            currency: self.config.currency.clone(),
            status,
            merchant_id: param(&p, "pid").map(str::to_owned),
        })
    }

    fn acknowledgement(&self) -> (http::StatusCode, &'static str) {
        (http::StatusCode::OK, "success")
    }

    async fn query(&self, order: &QueryRequest) -> Result<PaymentEvent, PaymentError> {
        let v = self
            .api(&pairs(&[
                ("act", "order"),
                ("pid", &self.config.pid),
                ("key", self.config.key.expose()),
                ("out_trade_no", &order.out_trade_no),
            ]))
            .await?;
        if v["code"].as_i64() != Some(1) {
            // epay answers a negative code for an order it does not know: never paid.
            return Ok(super::service::unpaid(order));
        }
        let paid = v["status"].as_i64() == Some(1) || v["status"].as_str() == Some("1");
        if !paid {
            return Ok(super::service::unpaid(order));
        }
        Ok(PaymentEvent {
            out_trade_no: order.out_trade_no.clone(),
            provider_trade_no: v["trade_no"].as_str().unwrap_or("").to_owned(),
            amount_minor: v["money"]
                .as_str()
                .and_then(|m| parse_major(m, &self.config.currency))
                .ok_or_else(|| PaymentError::Malformed("money".into()))?,
            currency: self.config.currency.clone(),
            status: PaymentStatus::Paid,
            merchant_id: v["pid"]
                .as_str()
                .map(str::to_owned)
                .or(Some(self.config.pid.clone())),
        })
    }

    async fn refund(&self, refund: &RefundRequest) -> Result<(), PaymentError> {
        let money = major_string(refund.amount_minor, &refund.currency);
        let v = self
            .api(&pairs(&[
                ("act", "refund"),
                ("pid", &self.config.pid),
                ("key", self.config.key.expose()),
                ("trade_no", &refund.provider_trade_no),
                ("out_trade_no", &refund.out_trade_no),
                ("money", &money),
            ]))
            .await?;
        if v["code"].as_i64() != Some(1) {
            return Err(PaymentError::Provider(
                v["msg"].as_str().unwrap_or("refund refused").to_owned(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_signature_matches_the_documented_construction() {
        let p = pairs(&[
            ("pid", "1001"),
            ("money", "1.00"),
            ("name", "VIP"),
            ("sign_type", "MD5"),
            ("empty", ""),
        ]);
        // md5("money=1.00&name=VIP&pid=1001" + "KEY")
        let expected = hex::encode(Md5::digest(b"money=1.00&name=VIP&pid=1001KEY"));
        assert_eq!(sign(&p, "KEY"), expected);
        let s = signed(p, "KEY");
        assert!(verify(&s, "KEY"));
        assert!(!verify(&s, "OTHER"));
    }

    #[test]
    fn get_and_post_notifications() {
        let g = EasyPayGateway::new(
            EasyPayConfig {
                pid: "1001".into(),
                key: "KEY".into(),
                api_base: "http://127.0.0.1:1".into(),
                currency: "CNY".into(),
                usd_per_unit: "0.14".into(),
                pay_type: "alipay".into(),
                mode: "mapi".into(),
            },
            crate::layer::upstream::Upstream::default_client(),
        );
        let p = signed(
            pairs(&[
                ("pid", "1001"),
                ("trade_no", "E1"),
                ("out_trade_no", "o1"),
                ("type", "alipay"),
                ("name", "top up"),
                ("money", "10.00"),
                ("trade_status", "TRADE_SUCCESS"),
            ]),
            "KEY",
        );
        let q = form_encode(p.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let e = g
            .verify_notification(&Default::default(), Some(&q), b"")
            .unwrap();
        assert_eq!(
            (e.amount_minor, e.status, e.provider_trade_no.as_str()),
            (1000, PaymentStatus::Paid, "E1")
        );
        assert_eq!(
            g.verify_notification(&Default::default(), None, q.as_bytes())
                .unwrap(),
            e
        );
        let forged = q.replace("money=10.00", "money=99.00");
        assert_eq!(
            g.verify_notification(&Default::default(), Some(&forged), b""),
            Err(PaymentError::BadSignature)
        );
    }
}
