//! The `[payments]` section of the configuration file. Every provider is optional; a provider
//! whose cargo feature is not compiled in is a configuration error at boot.
//!
//! ```toml
//! [payments]
//! public_base_url = "https://relay.example.com"   # notify and return URLs are built from it
//! min_amount = 100            # in the provider currency's minor unit (cents, fen)
//! max_amount = 1000000
//! max_pending_per_user = 3
//! order_timeout_secs = 1800
//!
//! [payments.stripe]
//! secret_key = "sk_live_..."
//! webhook_secret = "whsec_..."
//! currency = "usd"
//! usd_per_unit = "1"          # USD credited per major unit (1 USD -> 1 USD of balance)
//! ```

use std::fmt;

use serde::Deserialize;

use crate::money::{Money, NANOS_PER_USD};

/// A configured secret: deserialized from a string, never printed.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct ConfigSecret(pub String);

impl ConfigSecret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ConfigSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl From<&str> for ConfigSecret {
    fn from(s: &str) -> Self {
        ConfigSecret(s.to_owned())
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentsConfig {
    /// The relay's public URL: `<public_base_url>/api/v1/payments/webhook/<provider>` is the
    /// notify URL given to providers.
    #[serde(default)]
    pub public_base_url: Option<String>,
    /// Smallest and largest order, in the provider currency's minor unit.
    #[serde(default = "default_min")]
    pub min_amount: i64,
    #[serde(default = "default_max")]
    pub max_amount: i64,
    /// Unpaid orders a user may have open at once.
    #[serde(default = "default_pending")]
    pub max_pending_per_user: u32,
    /// An unpaid order expires after this long (once the provider confirms it unpaid).
    #[serde(default = "default_timeout")]
    pub order_timeout_secs: u64,
    /// How often the expiry job looks for due orders.
    #[serde(default = "default_sweep")]
    pub sweep_interval_secs: u64,
    #[serde(default)]
    pub stripe: Option<StripeConfig>,
    #[serde(default)]
    pub easypay: Option<EasyPayConfig>,
    #[serde(default)]
    pub alipay: Option<AlipayConfig>,
    #[serde(default)]
    pub wechat: Option<WechatConfig>,
}

fn default_min() -> i64 {
    100
}
fn default_max() -> i64 {
    100_000_000
}
fn default_pending() -> u32 {
    3
}
fn default_timeout() -> u64 {
    1800
}
fn default_sweep() -> u64 {
    60
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        PaymentsConfig {
            public_base_url: None,
            min_amount: default_min(),
            max_amount: default_max(),
            max_pending_per_user: default_pending(),
            order_timeout_secs: default_timeout(),
            sweep_interval_secs: default_sweep(),
            stripe: None,
            easypay: None,
            alipay: None,
            wechat: None,
        }
    }
}

impl PaymentsConfig {
    pub fn any_provider(&self) -> bool {
        self.stripe.is_some()
            || self.easypay.is_some()
            || self.alipay.is_some()
            || self.wechat.is_some()
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripeConfig {
    pub secret_key: ConfigSecret,
    pub webhook_secret: ConfigSecret,
    #[serde(default = "stripe_base")]
    pub api_base: String,
    #[serde(default = "usd")]
    pub currency: String,
    /// USD credited per major unit of `currency`, as an exact decimal string.
    #[serde(default = "one")]
    pub usd_per_unit: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EasyPayConfig {
    pub pid: String,
    pub key: ConfigSecret,
    pub api_base: String,
    #[serde(default = "cny")]
    pub currency: String,
    pub usd_per_unit: String,
    /// Payment type passed to the provider (`alipay`, `wxpay`, ...).
    #[serde(default = "alipay_type")]
    pub pay_type: String,
    /// `mapi` (API call, QR code / pay URL in the answer) or `submit` (redirect URL).
    #[serde(default = "mapi")]
    pub mode: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlipayConfig {
    pub app_id: String,
    /// PEM (PKCS#8 or PKCS#1), or the bare base64 Alipay's tools print.
    pub app_private_key: ConfigSecret,
    pub alipay_public_key: String,
    #[serde(default = "alipay_gateway")]
    pub gateway: String,
    #[serde(default = "cny")]
    pub currency: String,
    pub usd_per_unit: String,
    /// `precreate` (QR code) or `page` (redirect to the cashier page).
    #[serde(default = "precreate")]
    pub mode: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WechatConfig {
    pub mchid: String,
    pub appid: String,
    pub merchant_serial: String,
    pub merchant_private_key: ConfigSecret,
    pub apiv3_key: ConfigSecret,
    pub platform_public_key: String,
    pub platform_public_key_id: String,
    #[serde(default = "wechat_base")]
    pub api_base: String,
    #[serde(default = "cny")]
    pub currency: String,
    pub usd_per_unit: String,
}

fn stripe_base() -> String {
    "https://api.stripe.com".into()
}
fn alipay_gateway() -> String {
    "https://openapi.alipay.com/gateway.do".into()
}
fn wechat_base() -> String {
    "https://api.mch.weixin.qq.com".into()
}
fn usd() -> String {
    "usd".into()
}
fn cny() -> String {
    "CNY".into()
}
fn one() -> String {
    "1".into()
}
fn alipay_type() -> String {
    "alipay".into()
}
fn mapi() -> String {
    "mapi".into()
}
fn precreate() -> String {
    "precreate".into()
}

/// Digits after the decimal point of a currency's major unit (ISO 4217; the zero-decimal ones
/// Stripe lists, two otherwise).
pub fn minor_digits(currency: &str) -> u32 {
    match currency.to_ascii_uppercase().as_str() {
        "JPY" | "KRW" | "VND" | "CLP" | "ISK" | "UGX" | "XAF" | "XOF" | "PYG" | "RWF" | "KMF"
        | "GNF" | "DJF" | "BIF" | "MGA" | "VUV" | "XPF" => 0,
        "BHD" | "KWD" | "OMR" | "JOD" | "TND" => 3,
        _ => 2,
    }
}

/// The balance an order of `amount_minor` buys: `amount x usd_per_unit`, exact in nano-USD
/// (rounded down to a whole nano-USD when a rate has more digits than that). No floats.
pub fn credit_for(amount_minor: i64, currency: &str, usd_per_unit: &str) -> Result<Money, String> {
    let per_major = Money::parse_usd(usd_per_unit)
        .map_err(|e| format!("usd_per_unit `{usd_per_unit}`: {e}"))?;
    if !per_major.is_positive() {
        return Err("usd_per_unit must be positive".into());
    }
    let scale = 10i128.pow(minor_digits(currency));
    let nanos = i128::from(amount_minor) * i128::from(per_major.nanos()) / scale;
    let nanos = i64::try_from(nanos).map_err(|_| "amount out of range".to_owned())?;
    let _ = NANOS_PER_USD;
    Ok(Money::from_nanos(nanos))
}

/// `1234` minor units as the provider's decimal major-unit string (`"12.34"`).
pub fn major_string(amount_minor: i64, currency: &str) -> String {
    let d = minor_digits(currency);
    if d == 0 {
        return amount_minor.to_string();
    }
    let scale = 10i64.pow(d);
    let sign = if amount_minor < 0 { "-" } else { "" };
    let a = amount_minor.unsigned_abs();
    format!(
        "{sign}{}.{:0width$}",
        a / scale as u64,
        a % scale as u64,
        width = d as usize
    )
}

/// Parses a provider's decimal major-unit string (`"12.34"`, `"12.3"`, `"12"`) exactly; more
/// digits than the currency has is an error.
pub fn parse_major(s: &str, currency: &str) -> Option<i64> {
    let d = minor_digits(currency) as usize;
    let s = s.trim();
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > d
    {
        return None;
    }
    let mut v: i64 = int.parse().ok()?;
    for _ in 0..d {
        v = v.checked_mul(10)?;
    }
    if !frac.is_empty() {
        let f: i64 = format!("{frac:0<d$}").parse().ok()?;
        v = v.checked_add(f)?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_is_exact() {
        assert_eq!(credit_for(1000, "usd", "1").unwrap(), Money::usd(10));
        assert_eq!(
            credit_for(1000, "CNY", "0.14").unwrap(),
            Money::parse_usd("1.4").unwrap()
        );
        assert_eq!(
            credit_for(500, "JPY", "0.0067").unwrap(),
            Money::parse_usd("3.35").unwrap()
        );
        assert!(credit_for(1, "usd", "0").is_err());
        assert!(credit_for(1, "usd", "abc").is_err());
    }

    #[test]
    fn major_strings_round_trip() {
        assert_eq!(major_string(1234, "CNY"), "12.34");
        assert_eq!(major_string(5, "CNY"), "0.05");
        assert_eq!(major_string(500, "JPY"), "500");
        assert_eq!(parse_major("12.34", "CNY"), Some(1234));
        assert_eq!(parse_major("12.3", "CNY"), Some(1230));
        assert_eq!(parse_major("12", "CNY"), Some(1200));
        assert_eq!(parse_major("12.345", "CNY"), None);
        assert_eq!(parse_major("-1", "CNY"), None);
        assert_eq!(parse_major("", "CNY"), None);
    }
}
