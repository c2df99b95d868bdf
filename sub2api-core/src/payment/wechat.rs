//! WeChat Pay v3: requests signed SHA256withRSA over `METHOD\nURL\nTIMESTAMP\nNONCE\nBODY\n` in a
//! `WECHATPAY2-SHA256-RSA2048` Authorization header; answers and notifications verified with the
//! platform public key over `TIMESTAMP\nNONCE\nBODY\n` (notifications refused when the timestamp
//! is 300 s or more away); the notification `resource` decrypted with AES-256-GCM under the APIv3
//! key. Native pay (`code_url`), query by `out_trade_no`, domestic refunds. Amounts in fen.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{Value, json};

use super::config::WechatConfig;
use super::rsa_keys;
use super::util::{nonce, now_secs, transport};
use super::{
    Checkout, PaymentError, PaymentEvent, PaymentGateway, PaymentOrder, PaymentStatus,
    QueryRequest, RefundRequest,
};

pub const TOLERANCE_SECS: i64 = 300;

pub struct WechatGateway {
    config: WechatConfig,
    key: RsaPrivateKey,
    platform: RsaPublicKey,
    http: reqwest::Client,
}

/// The `Authorization` header of a request.
pub fn authorization(
    key: &RsaPrivateKey,
    mchid: &str,
    serial: &str,
    method: &str,
    url_path: &str,
    body: &str,
    timestamp: i64,
    nonce: &str,
) -> String {
    let msg = format!("{method}\n{url_path}\n{timestamp}\n{nonce}\n{body}\n");
    let sig = rsa_keys::sign(key, msg.as_bytes());
    format!(
        "WECHATPAY2-SHA256-RSA2048 mchid=\"{mchid}\",nonce_str=\"{nonce}\",timestamp=\"{timestamp}\",serial_no=\"{serial}\",signature=\"{sig}\""
    )
}

/// The fields of an Authorization header (what the mock checks).
pub fn parse_authorization(h: &str) -> Option<std::collections::HashMap<String, String>> {
    let rest = h.strip_prefix("WECHATPAY2-SHA256-RSA2048 ")?;
    let mut m = std::collections::HashMap::new();
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        m.insert(k.to_owned(), v.trim_matches('"').to_owned());
    }
    Some(m)
}

/// Verifies a request's Authorization header with the merchant's public key.
pub fn verify_authorization(
    key: &RsaPublicKey,
    header: &str,
    method: &str,
    url_path: &str,
    body: &str,
) -> bool {
    let Some(f) = parse_authorization(header) else {
        return false;
    };
    let (Some(ts), Some(n), Some(sig)) =
        (f.get("timestamp"), f.get("nonce_str"), f.get("signature"))
    else {
        return false;
    };
    let msg = format!("{method}\n{url_path}\n{ts}\n{n}\n{body}\n");
    rsa_keys::verify(key, msg.as_bytes(), sig)
}

/// `Wechatpay-Signature` of an answer or notification (the platform side: mock and tests).
pub fn platform_signature(key: &RsaPrivateKey, timestamp: i64, nonce: &str, body: &[u8]) -> String {
    let mut msg = format!("{timestamp}\n{nonce}\n").into_bytes();
    msg.extend_from_slice(body);
    msg.push(b'\n');
    rsa_keys::sign(key, &msg)
}

/// Encrypts a notification resource as WeChat does: base64(ciphertext || tag).
pub fn encrypt_resource(apiv3_key: &str, nonce: &str, aad: &str, plaintext: &[u8]) -> String {
    let cipher = Aes256Gcm::new_from_slice(apiv3_key.as_bytes()).expect("32-byte APIv3 key");
    let ct = cipher
        .encrypt(
            nonce_of(nonce.as_bytes()),
            Payload {
                msg: plaintext,
                aad: aad.as_bytes(),
            },
        )
        .expect("encrypt");
    B64.encode(ct)
}

pub fn decrypt_resource(
    apiv3_key: &str,
    nonce: &str,
    aad: &str,
    ciphertext_b64: &str,
) -> Result<Vec<u8>, PaymentError> {
    let cipher = Aes256Gcm::new_from_slice(apiv3_key.as_bytes())
        .map_err(|_| PaymentError::Malformed("the APIv3 key must be 32 bytes".into()))?;
    if nonce.len() != 12 {
        return Err(PaymentError::Malformed(
            "resource nonce must be 12 bytes".into(),
        ));
    }
    let ct = B64
        .decode(ciphertext_b64)
        .map_err(|_| PaymentError::Malformed("resource ciphertext is not base64".into()))?;
    cipher
        .decrypt(
            nonce_of(nonce.as_bytes()),
            Payload {
                msg: &ct,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| PaymentError::BadSignature)
}

#[allow(deprecated)]
fn nonce_of(b: &[u8]) -> &Nonce<aes_gcm::aes::cipher::consts::U12> {
    Nonce::from_slice(b)
}

fn header<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

impl WechatGateway {
    pub fn new(config: WechatConfig, http: reqwest::Client) -> Result<Self, String> {
        let key = rsa_keys::private_key(config.merchant_private_key.expose())
            .map_err(|e| format!("payments.wechat.merchant_private_key: {e}"))?;
        let platform = rsa_keys::public_key(&config.platform_public_key)
            .map_err(|e| format!("payments.wechat.platform_public_key: {e}"))?;
        if config.apiv3_key.expose().len() != 32 {
            return Err("payments.wechat.apiv3_key must be 32 bytes".into());
        }
        Ok(WechatGateway {
            config,
            key,
            platform,
            http,
        })
    }

    /// Verifies `Wechatpay-*` headers over a body; `window` also refuses stale timestamps.
    fn verify_signed(
        &self,
        h: &http::HeaderMap,
        body: &[u8],
        window: bool,
    ) -> Result<(), PaymentError> {
        let ts = header(h, "wechatpay-timestamp").ok_or(PaymentError::BadSignature)?;
        let n = header(h, "wechatpay-nonce").ok_or(PaymentError::BadSignature)?;
        let sig = header(h, "wechatpay-signature").ok_or(PaymentError::BadSignature)?;
        if let Some(serial) = header(h, "wechatpay-serial")
            && serial != self.config.platform_public_key_id
        {
            return Err(PaymentError::BadSignature);
        }
        let t: i64 = ts.parse().map_err(|_| PaymentError::BadSignature)?;
        let mut msg = format!("{ts}\n{n}\n").into_bytes();
        msg.extend_from_slice(body);
        msg.push(b'\n');
        if !rsa_keys::verify(&self.platform, &msg, sig) {
            return Err(PaymentError::BadSignature);
        }
        if window && (now_secs() - t).abs() >= TOLERANCE_SECS {
            return Err(PaymentError::StaleTimestamp);
        }
        Ok(())
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), PaymentError> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let auth = authorization(
            &self.key,
            &self.config.mchid,
            &self.config.merchant_serial,
            method.as_str(),
            path,
            &body,
            now_secs(),
            &nonce(),
        );
        let url = format!("{}{}", self.config.api_base.trim_end_matches('/'), path);
        let mut req = self
            .http
            .request(method, url)
            .header("authorization", auth)
            .header("accept", "application/json");
        if !body.is_empty() {
            req = req.header("content-type", "application/json").body(body);
        }
        let res = req.send().await.map_err(transport)?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.map_err(transport)?;
        if (200..300).contains(&status) {
            self.verify_signed(&headers, &bytes, false)?;
        }
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| PaymentError::Malformed(e.to_string()))?
        };
        Ok((status, v))
    }

    fn event_of(&self, t: &Value) -> Result<PaymentEvent, PaymentError> {
        let status = match t["trade_state"].as_str().unwrap_or("") {
            "SUCCESS" => PaymentStatus::Paid,
            "CLOSED" | "REVOKED" => PaymentStatus::Closed,
            "PAYERROR" => PaymentStatus::Failed,
            "REFUND" => PaymentStatus::Refunded,
            _ => PaymentStatus::Pending,
        };
        Ok(PaymentEvent {
            out_trade_no: t["out_trade_no"]
                .as_str()
                .ok_or_else(|| PaymentError::Malformed("no out_trade_no".into()))?
                .to_owned(),
            provider_trade_no: t["transaction_id"].as_str().unwrap_or("").to_owned(),
            amount_minor: t["amount"]["total"]
                .as_i64()
                .ok_or_else(|| PaymentError::Malformed("no amount.total".into()))?,
            currency: t["amount"]["currency"].as_str().unwrap_or("CNY").to_owned(),
            status,
            merchant_id: t["mchid"].as_str().map(str::to_owned),
        })
    }
}

#[async_trait]
impl PaymentGateway for WechatGateway {
    fn provider(&self) -> &'static str {
        "wechat"
    }

    async fn create_checkout(&self, order: &PaymentOrder) -> Result<Checkout, PaymentError> {
        let body = json!({
            "appid": self.config.appid,
            "mchid": self.config.mchid,
            "description": order.subject,
            "out_trade_no": order.out_trade_no,
            "notify_url": order.notify_url,
            "amount": {"total": order.amount_minor, "currency": order.currency},
        });
        let (status, v) = self
            .call(
                reqwest::Method::POST,
                "/v3/pay/transactions/native",
                Some(body),
            )
            .await?;
        match v["code_url"].as_str() {
            Some(code) if (200..300).contains(&status) => Ok(Checkout {
                qr_code: Some(code.to_owned()),
                ..Checkout::default()
            }),
            _ => Err(PaymentError::Provider(format!(
                "{status} {}",
                v["message"].as_str().unwrap_or("")
            ))),
        }
    }

    fn verify_notification(
        &self,
        headers: &http::HeaderMap,
        _query: Option<&str>,
        body: &[u8],
    ) -> Result<PaymentEvent, PaymentError> {
        self.verify_signed(headers, body, true)?;
        let v: Value =
            serde_json::from_slice(body).map_err(|e| PaymentError::Malformed(e.to_string()))?;
        let r = &v["resource"];
        let plain = decrypt_resource(
            self.config.apiv3_key.expose(),
            r["nonce"].as_str().unwrap_or(""),
            r["associated_data"].as_str().unwrap_or(""),
            r["ciphertext"].as_str().unwrap_or(""),
        )?;
        let t: Value =
            serde_json::from_slice(&plain).map_err(|e| PaymentError::Malformed(e.to_string()))?;
        let mut e = self.event_of(&t)?;
        if v["event_type"].as_str() != Some("TRANSACTION.SUCCESS")
            && e.status == PaymentStatus::Paid
        {
            e.status = PaymentStatus::Pending;
        }
        Ok(e)
    }

    fn acknowledgement(&self) -> (http::StatusCode, &'static str) {
        (http::StatusCode::NO_CONTENT, "")
    }

    async fn query(&self, order: &QueryRequest) -> Result<PaymentEvent, PaymentError> {
        let path = format!(
            "/v3/pay/transactions/out-trade-no/{}?mchid={}",
            order.out_trade_no, self.config.mchid
        );
        let (status, v) = self.call(reqwest::Method::GET, &path, None).await?;
        if status == 404 || v["code"].as_str() == Some("ORDER_NOT_EXIST") {
            return Ok(super::service::unpaid(order));
        }
        if !(200..300).contains(&status) {
            return Err(PaymentError::Provider(format!("query answered {status}")));
        }
        self.event_of(&v)
    }

    async fn refund(&self, refund: &RefundRequest) -> Result<(), PaymentError> {
        let body = json!({
            "out_trade_no": refund.out_trade_no,
            "out_refund_no": refund.refund_no,
            "reason": refund.reason,
            "amount": {"refund": refund.amount_minor, "total": refund.total_minor, "currency": refund.currency},
        });
        let (status, v) = self
            .call(
                reqwest::Method::POST,
                "/v3/refund/domestic/refunds",
                Some(body),
            )
            .await?;
        if !(200..300).contains(&status) {
            return Err(PaymentError::Provider(format!(
                "{status} {}",
                v["message"].as_str().unwrap_or("")
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_keys::*;
    use super::*;

    const APIV3: &str = "0123456789abcdef0123456789abcdef";

    fn gateway() -> WechatGateway {
        WechatGateway::new(
            WechatConfig {
                mchid: "1900000001".into(),
                appid: "wx123".into(),
                merchant_serial: "MSERIAL".into(),
                merchant_private_key: WECHAT_MERCHANT_PRIVATE.into(),
                apiv3_key: APIV3.into(),
                platform_public_key: WECHAT_PLATFORM_PUBLIC.into(),
                platform_public_key_id: "PUB_KEY_ID_1".into(),
                api_base: "http://127.0.0.1:1".into(),
                currency: "CNY".into(),
                usd_per_unit: "0.14".into(),
            },
            crate::layer::upstream::Upstream::default_client(),
        )
        .unwrap()
    }

    fn notification(key: &str, ts: i64, signer: &str) -> (http::HeaderMap, Vec<u8>) {
        let tx = json!({"mchid": "1900000001", "appid": "wx123", "out_trade_no": "o1",
            "transaction_id": "4200001", "trade_state": "SUCCESS",
            "amount": {"total": 1000, "payer_total": 1000, "currency": "CNY"}});
        let ct = encrypt_resource(
            key,
            "abcdefghijkl",
            "transaction",
            tx.to_string().as_bytes(),
        );
        let body = json!({"id": "n1", "event_type": "TRANSACTION.SUCCESS", "resource_type": "encrypt-resource",
            "resource": {"algorithm": "AEAD_AES_256_GCM", "ciphertext": ct, "nonce": "abcdefghijkl",
                "associated_data": "transaction", "original_type": "transaction"}})
        .to_string()
        .into_bytes();
        let k = rsa_keys::private_key(signer).unwrap();
        let sig = platform_signature(&k, ts, "n0nce", &body);
        let mut h = http::HeaderMap::new();
        h.insert("wechatpay-timestamp", ts.to_string().parse().unwrap());
        h.insert("wechatpay-nonce", "n0nce".parse().unwrap());
        h.insert("wechatpay-signature", sig.parse().unwrap());
        h.insert("wechatpay-serial", "PUB_KEY_ID_1".parse().unwrap());
        (h, body)
    }

    #[test]
    fn genuine_notification_decrypts() {
        let g = gateway();
        let (h, body) = notification(APIV3, now_secs(), WECHAT_PLATFORM_PRIVATE);
        let e = g.verify_notification(&h, None, &body).unwrap();
        assert_eq!(
            (
                e.out_trade_no.as_str(),
                e.provider_trade_no.as_str(),
                e.amount_minor,
                e.status
            ),
            ("o1", "4200001", 1000, PaymentStatus::Paid)
        );
        assert_eq!(e.merchant_id.as_deref(), Some("1900000001"));
    }

    #[test]
    fn forged_stale_and_tampered_are_refused() {
        let g = gateway();
        let (h, body) = notification(APIV3, now_secs(), ATTACKER_PRIVATE);
        assert_eq!(
            g.verify_notification(&h, None, &body),
            Err(PaymentError::BadSignature)
        );
        let (h, body) = notification(APIV3, now_secs() - 300, WECHAT_PLATFORM_PRIVATE);
        assert_eq!(
            g.verify_notification(&h, None, &body),
            Err(PaymentError::StaleTimestamp)
        );
        // Encrypted under another key but correctly signed: decryption fails.
        let (h, body) = notification(
            "ffffffffffffffffffffffffffffffff",
            now_secs(),
            WECHAT_PLATFORM_PRIVATE,
        );
        assert_eq!(
            g.verify_notification(&h, None, &body),
            Err(PaymentError::BadSignature)
        );
        // A flipped ciphertext byte fails the GCM tag.
        let ct = encrypt_resource(APIV3, "abcdefghijkl", "transaction", b"{}");
        let mut raw = B64.decode(&ct).unwrap();
        raw[0] ^= 1;
        assert!(decrypt_resource(APIV3, "abcdefghijkl", "transaction", &B64.encode(raw)).is_err());
        assert!(decrypt_resource(APIV3, "abcdefghijkl", "other-aad", &ct).is_err());
        assert_eq!(
            decrypt_resource(APIV3, "abcdefghijkl", "transaction", &ct).unwrap(),
            b"{}"
        );
    }

    #[test]
    fn requests_are_signed_with_the_merchant_key() {
        let k = rsa_keys::private_key(WECHAT_MERCHANT_PRIVATE).unwrap();
        let p = rsa_keys::public_key(WECHAT_MERCHANT_PUBLIC).unwrap();
        let h = authorization(
            &k,
            "1900000001",
            "MSERIAL",
            "POST",
            "/v3/pay/transactions/native",
            "{}",
            1,
            "N",
        );
        assert!(verify_authorization(
            &p,
            &h,
            "POST",
            "/v3/pay/transactions/native",
            "{}"
        ));
        assert!(!verify_authorization(
            &p,
            &h,
            "POST",
            "/v3/pay/transactions/native",
            "{ }"
        ));
        let f = parse_authorization(&h).unwrap();
        assert_eq!(
            (f["mchid"].as_str(), f["serial_no"].as_str()),
            ("1900000001", "MSERIAL")
        );
    }
}
