//! (being written)
use crate::domain::{Platform, Usage};
use crate::meter::CacheTtl;
use crate::money::{Money, Multiplier, TokenPrice};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    #[error("model `{0}` has no price configured")]
    UnknownModel(String),
    #[error("price table malformed: {0}")]
    Malformed(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelPrice {
    pub input: TokenPrice,
    pub output: TokenPrice,
    pub cache_write_5m: TokenPrice,
    pub cache_write_1h: TokenPrice,
    pub cache_read: TokenPrice,
}

#[derive(Clone, Debug, Default)]
pub struct PriceTable;

impl PriceTable {
    pub fn bundled() -> PriceTable { todo!() }
    pub fn from_litellm_json(_text: &str) -> Result<PriceTable, PricingError> { todo!() }
    pub fn lookup(&self, _model: &str) -> Option<&ModelPrice> { todo!() }
    pub fn cost(&self, _model: &str, _usage: &Usage, _m: Multiplier) -> Result<Money, PricingError> { todo!() }
    pub fn worst_case(&self, _model: &str, _prompt_tokens: u64, _ttl: Option<CacheTtl>, _max_out: u64, _m: Multiplier) -> Result<Money, PricingError> { todo!() }
    pub fn models(&self, _platform: Platform) -> Vec<String> { todo!() }
}
