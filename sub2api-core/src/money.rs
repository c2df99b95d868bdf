//! Exact money.
//!
//! Every amount on the billing path is an `i64` count of nano-USD (1e-9 USD). Prices are kept finer,
//! as femto-USD per token (1e-15 USD, i.e. nano-USD per million tokens), because vendor prices such
//! as $0.01875 per million tokens are not whole nano-USD per token. Costs are summed in `i128` and
//! rounded up to the nano-USD once per request, so the operator never undercharges by rounding and
//! the error is below one nano-USD per request.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Nano-USD per USD.
pub const NANOS_PER_USD: i64 = 1_000_000_000;

/// An exact amount of USD, in nano-USD.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(i64);

/// Why a decimal string is not an amount of money.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("`{0}` is not a decimal number")]
    NotDecimal(String),
    #[error("`{0}` has more than 9 decimal places (the smallest unit is 1e-9 USD)")]
    TooPrecise(String),
    #[error("`{0}` is out of range")]
    OutOfRange(String),
}

impl Money {
    pub const ZERO: Money = Money(0);

    pub const fn from_nanos(nanos: i64) -> Self {
        Money(nanos)
    }

    pub const fn nanos(self) -> i64 {
        self.0
    }

    /// Whole USD, for tests and seeds.
    pub const fn usd(usd: i64) -> Self {
        Money(usd * NANOS_PER_USD)
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).map(Money)
    }

    pub fn saturating_add(self, other: Money) -> Money {
        Money(self.0.saturating_add(other.0))
    }

    pub fn saturating_sub(self, other: Money) -> Money {
        Money(self.0.saturating_sub(other.0))
    }

    pub fn is_negative(self) -> bool {
        self.0 < 0
    }

    pub fn is_positive(self) -> bool {
        self.0 > 0
    }

    /// Parses an exact decimal USD amount such as `"10.00"` or `"-0.000000001"`.
    pub fn parse_usd(s: &str) -> Result<Money, MoneyError> {
        let d = Decimal::from_str(s.trim()).map_err(|_| MoneyError::NotDecimal(s.to_owned()))?;
        Self::from_decimal(d, s)
    }

    fn from_decimal(d: Decimal, original: &str) -> Result<Money, MoneyError> {
        let scaled = d
            .checked_mul(Decimal::from(NANOS_PER_USD))
            .ok_or_else(|| MoneyError::OutOfRange(original.to_owned()))?;
        if !scaled.fract().is_zero() {
            return Err(MoneyError::TooPrecise(original.to_owned()));
        }
        let nanos: i64 = scaled
            .trunc()
            .try_into()
            .map_err(|_| MoneyError::OutOfRange(original.to_owned()))?;
        Ok(Money(nanos))
    }

    /// Lossy conversion for display-only fields (e.g. `remaining` in `/v1/usage`). Never use the
    /// result for arithmetic on money.
    pub fn as_f64_for_display(self) -> f64 {
        self.0 as f64 / NANOS_PER_USD as f64
    }
}

impl fmt::Display for Money {
    /// Exact decimal USD with at least two decimals: `10.00`, `0.000123456`, `-1.50`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let neg = self.0 < 0;
        let abs = self.0.unsigned_abs();
        let whole = abs / NANOS_PER_USD as u64;
        let frac = abs % NANOS_PER_USD as u64;
        let mut frac_s = format!("{frac:09}");
        while frac_s.len() > 2 && frac_s.ends_with('0') {
            frac_s.pop();
        }
        write!(f, "{}{}.{}", if neg { "-" } else { "" }, whole, frac_s)
    }
}

impl FromStr for Money {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Money::parse_usd(s)
    }
}

/// Serialized as an exact decimal string (`"10.00"`), never as a float.
impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Accepts a decimal string. A bare JSON/TOML number is accepted only when it is an integer, so a
/// float can never sneak imprecision into a balance.
impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Str(String),
            Int(i64),
        }
        match Repr::deserialize(d)? {
            Repr::Str(s) => Money::parse_usd(&s).map_err(serde::de::Error::custom),
            Repr::Int(i) => i
                .checked_mul(NANOS_PER_USD)
                .map(Money)
                .ok_or_else(|| serde::de::Error::custom("amount out of range")),
        }
    }
}

/// A price in femto-USD per token (= nano-USD per million tokens).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenPrice(i64);

impl TokenPrice {
    pub const ZERO: TokenPrice = TokenPrice(0);

    pub const fn from_femto_per_token(v: i64) -> Self {
        TokenPrice(v)
    }

    pub const fn femto_per_token(self) -> i64 {
        self.0
    }

    /// `"3"` USD per million tokens.
    pub fn per_million_usd(s: &str) -> Result<Self, MoneyError> {
        // nano-USD per million tokens == femto-USD per token.
        Money::parse_usd(s).map(|m| TokenPrice(m.nanos()))
    }

    /// A per-token USD price as written in LiteLLM's table, e.g. `3e-06` or `0.000003`. Parsed from
    /// its text, never through a float.
    pub fn per_token_usd(s: &str) -> Result<Self, MoneyError> {
        let d = Decimal::from_scientific(s.trim())
            .or_else(|_| Decimal::from_str(s.trim()))
            .map_err(|_| MoneyError::NotDecimal(s.to_owned()))?;
        let scaled = d
            .checked_mul(Decimal::from(1_000_000_000_000_000i64))
            .ok_or_else(|| MoneyError::OutOfRange(s.to_owned()))?;
        if !scaled.fract().is_zero() {
            return Err(MoneyError::TooPrecise(s.to_owned()));
        }
        let v: i64 = scaled
            .trunc()
            .try_into()
            .map_err(|_| MoneyError::OutOfRange(s.to_owned()))?;
        Ok(TokenPrice(v))
    }

    /// Scales by a ratio in parts per million (1.25x = 1_250_000), rounding up.
    pub fn scaled_ppm(self, ppm: i64) -> TokenPrice {
        let v = (self.0 as i128 * ppm as i128 + 999_999) / 1_000_000;
        TokenPrice(v as i64)
    }
}

impl fmt::Display for TokenPrice {
    /// USD per million tokens.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Money(self.0).fmt(f)
    }
}

/// A rate multiplier (a group's price factor), exact to parts per million.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Multiplier(i64);

impl Default for Multiplier {
    fn default() -> Self {
        Multiplier::ONE
    }
}

impl Multiplier {
    pub const ONE: Multiplier = Multiplier(1_000_000);

    pub const fn from_ppm(ppm: i64) -> Self {
        Multiplier(ppm)
    }

    pub const fn ppm(self) -> i64 {
        self.0
    }

    pub fn parse(s: &str) -> Result<Self, MoneyError> {
        let d = Decimal::from_str(s.trim()).map_err(|_| MoneyError::NotDecimal(s.to_owned()))?;
        if d.is_sign_negative() {
            return Err(MoneyError::OutOfRange(s.to_owned()));
        }
        let scaled = d
            .checked_mul(Decimal::from(1_000_000))
            .ok_or_else(|| MoneyError::OutOfRange(s.to_owned()))?;
        if !scaled.fract().is_zero() {
            return Err(MoneyError::TooPrecise(s.to_owned()));
        }
        let v: i64 = scaled
            .trunc()
            .try_into()
            .map_err(|_| MoneyError::OutOfRange(s.to_owned()))?;
        Ok(Multiplier(v))
    }
}

impl fmt::Display for Multiplier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut frac = format!("{:06}", self.0 % 1_000_000);
        while frac.len() > 1 && frac.ends_with('0') {
            frac.pop();
        }
        write!(f, "{}.{}", self.0 / 1_000_000, frac)
    }
}

impl Serialize for Multiplier {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Multiplier {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Str(String),
            Int(i64),
        }
        match Repr::deserialize(d)? {
            Repr::Str(s) => Multiplier::parse(&s).map_err(serde::de::Error::custom),
            Repr::Int(i) if i >= 0 => Ok(Multiplier(i * 1_000_000)),
            Repr::Int(_) => Err(serde::de::Error::custom("multiplier must not be negative")),
        }
    }
}

/// Sum of `tokens x price` terms in femto-USD, converted to money once.
#[derive(Clone, Copy, Debug, Default)]
pub struct CostAccumulator {
    femto: i128,
}

impl CostAccumulator {
    pub fn add(&mut self, tokens: u64, price: TokenPrice) {
        self.femto += tokens as i128 * price.femto_per_token() as i128;
    }

    /// Applies the multiplier and rounds up to the nano-USD.
    pub fn total(self, multiplier: Multiplier) -> Money {
        let denom: i128 = 1_000_000 * 1_000_000; // femto->nano, ppm->1
        let num = self.femto * multiplier.ppm() as i128;
        let nanos = (num + denom - 1).div_euclid(denom);
        Money(nanos.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_exactly() {
        assert_eq!(Money::parse_usd("10.00").unwrap(), Money::usd(10));
        assert_eq!(Money::parse_usd("0.000000001").unwrap().nanos(), 1);
        assert_eq!(Money::usd(10).to_string(), "10.00");
        assert_eq!(Money::from_nanos(123_456_789).to_string(), "0.123456789");
        assert_eq!(Money::from_nanos(-1_500_000_000).to_string(), "-1.50");
        assert!(matches!(
            Money::parse_usd("0.0000000001"),
            Err(MoneyError::TooPrecise(_))
        ));
        assert!(matches!(
            Money::parse_usd("abc"),
            Err(MoneyError::NotDecimal(_))
        ));
    }

    #[test]
    fn token_prices_from_litellm_text() {
        assert_eq!(
            TokenPrice::per_token_usd("3e-06")
                .unwrap()
                .femto_per_token(),
            3_000_000_000
        );
        assert_eq!(
            TokenPrice::per_token_usd("1.875e-08")
                .unwrap()
                .femto_per_token(),
            18_750_000
        );
        assert_eq!(
            TokenPrice::per_token_usd("0.0000003").unwrap(),
            TokenPrice::per_million_usd("0.30").unwrap()
        );
    }

    #[test]
    fn cost_rounds_up_once() {
        let mut c = CostAccumulator::default();
        c.add(1, TokenPrice::per_million_usd("0.01875").unwrap()); // 18.75 nano-USD
        assert_eq!(c.total(Multiplier::ONE).nanos(), 19);
        let mut c = CostAccumulator::default();
        c.add(1_000_000, TokenPrice::per_million_usd("3").unwrap());
        assert_eq!(
            c.total(Multiplier::parse("1.5").unwrap()),
            Money::parse_usd("4.5").unwrap()
        );
    }

    #[test]
    fn multiplier_roundtrip() {
        assert_eq!(Multiplier::parse("0.85").unwrap().to_string(), "0.85");
        assert_eq!(Multiplier::parse("1").unwrap(), Multiplier::ONE);
        assert!(Multiplier::parse("-1").is_err());
    }
}
