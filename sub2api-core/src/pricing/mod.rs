//! Model prices and exact costs.
//!
//! Prices come in LiteLLM's `model_prices_and_context_window.json` format (the bundled
//! `model_prices.json` is a hand-kept subset of it; operators can load the full upstream file).
//! Every price is an exact [`TokenPrice`] parsed from the JSON text, and every cost is an integer
//! sum of `tokens x price` rounded up once ([`CostAccumulator`]), so a bill is reproducible to the
//! nano-USD.
//!
//! Two rules beyond a flat price per category:
//! - Long context: when a request's prompt (uncached + cache writes + cache reads) exceeds
//!   [`LONG_CONTEXT_THRESHOLD`] tokens and the model lists `*_above_200k_tokens` prices, the whole
//!   request is priced at that tier.
//! - Missing cache prices fall back to 1.25x (5m write), 2x (1h write) and 0.1x (read) of input,
//!   logged at load time, since cache ratios differ per model and must come from the table.

mod litellm;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, LazyLock};

use crate::domain::{Platform, Usage};
use crate::meter::CacheTtl;
use crate::money::{CostAccumulator, Money, Multiplier, TokenPrice};

pub use litellm::{FALLBACK_READ_PPM, FALLBACK_WRITE_1H_PPM, FALLBACK_WRITE_5M_PPM};

/// Prompts longer than this many tokens use a model's long-context tier.
pub const LONG_CONTEXT_THRESHOLD: u64 = 200_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    #[error("model `{0}` has no price configured")]
    UnknownModel(String),
    #[error("price table malformed: {0}")]
    Malformed(String),
}

/// One price per token category, all resolved (fallbacks applied).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rates {
    pub input: TokenPrice,
    pub output: TokenPrice,
    pub cache_write_5m: TokenPrice,
    pub cache_write_1h: TokenPrice,
    pub cache_read: TokenPrice,
}

impl Rates {
    /// The per-category maximum of two rate sets.
    fn max(self, other: Rates) -> Rates {
        Rates {
            input: self.input.max(other.input),
            output: self.output.max(other.output),
            cache_write_5m: self.cache_write_5m.max(other.cache_write_5m),
            cache_write_1h: self.cache_write_1h.max(other.cache_write_1h),
            cache_read: self.cache_read.max(other.cache_read),
        }
    }
}

/// A model's prices and the facts about it the relay uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelPrice {
    pub input: TokenPrice,
    pub output: TokenPrice,
    pub cache_write_5m: TokenPrice,
    pub cache_write_1h: TokenPrice,
    pub cache_read: TokenPrice,
    /// Prices once the prompt exceeds [`LONG_CONTEXT_THRESHOLD`] tokens, if the model has a tier.
    pub above_200k: Option<Rates>,
    /// Per server-side web search (a flat fee per request, `TokenPrice` used as "per unit").
    pub web_search: TokenPrice,
    /// LiteLLM's `litellm_provider` (`anthropic`, `openai`, `gemini`, ...).
    pub provider: String,
    /// LiteLLM's `mode` (`chat`, `responses`, `embedding`, ...).
    pub mode: String,
    pub max_input_tokens: Option<u64>,
    /// `max_output_tokens`, else the legacy `max_tokens`.
    pub max_output_tokens: Option<u64>,
}

impl ModelPrice {
    /// The base (short-context) rates.
    pub fn base_rates(&self) -> Rates {
        Rates {
            input: self.input,
            output: self.output,
            cache_write_5m: self.cache_write_5m,
            cache_write_1h: self.cache_write_1h,
            cache_read: self.cache_read,
        }
    }

    /// The rates a request with this many prompt tokens is billed at.
    pub fn rates_for(&self, prompt_tokens: u64) -> Rates {
        match self.above_200k {
            Some(tier) if prompt_tokens > LONG_CONTEXT_THRESHOLD => tier,
            _ => self.base_rates(),
        }
    }

    /// The platform whose `/v1/models` lists this model, from `litellm_provider`.
    pub fn platform(&self) -> Option<Platform> {
        match self.provider.as_str() {
            "anthropic" => Some(Platform::Anthropic),
            "openai" => Some(Platform::Openai),
            "gemini" | "vertex_ai-language-models" => Some(Platform::Gemini),
            _ => None,
        }
    }

    /// Whether clients talk to it through a chat-style API (Messages, Chat Completions,
    /// Responses, generateContent).
    pub fn is_chat(&self) -> bool {
        matches!(self.mode.as_str(), "chat" | "responses")
    }

    /// Exact cost of a usage, times the multiplier, rounded up to the nano-USD.
    pub fn cost(&self, usage: &Usage, multiplier: Multiplier) -> Money {
        let r = self.rates_for(usage.prompt_tokens());
        let mut acc = CostAccumulator::default();
        acc.add(usage.input_tokens, r.input);
        acc.add(usage.cache_creation_5m_tokens, r.cache_write_5m);
        acc.add(usage.cache_creation_1h_tokens, r.cache_write_1h);
        acc.add(usage.cache_read_tokens, r.cache_read);
        acc.add(usage.output_tokens, r.output);
        acc.add(usage.web_search_requests, self.web_search);
        acc.total(multiplier)
    }

    /// An upper bound on [`ModelPrice::cost`] for any usage with at most `prompt_tokens` prompt
    /// tokens, at most `max_output_tokens` output tokens, cache writes only as `ttl` allows, and no
    /// web searches (their number is not bounded by the request).
    pub fn worst_case(
        &self,
        prompt_tokens: u64,
        ttl: Option<CacheTtl>,
        max_output_tokens: u64,
        multiplier: Multiplier,
    ) -> Money {
        // A prompt over the threshold may still be billed below it (the estimate is an upper
        // bound), so take the dearer of both tiers per category.
        let r = match self.above_200k {
            Some(tier) if prompt_tokens > LONG_CONTEXT_THRESHOLD => self.base_rates().max(tier),
            _ => self.base_rates(),
        };
        let mut input_side = r.input.max(r.cache_read);
        if ttl >= Some(CacheTtl::FiveMinutes) {
            input_side = input_side.max(r.cache_write_5m);
        }
        if ttl == Some(CacheTtl::OneHour) {
            input_side = input_side.max(r.cache_write_1h);
        }
        let mut acc = CostAccumulator::default();
        acc.add(prompt_tokens, input_side);
        acc.add(max_output_tokens, r.output);
        acc.total(multiplier)
    }
}

/// Model id -> price, with lookup that tolerates provider prefixes, dates and `-latest`.
/// Cloning is cheap (shared).
#[derive(Clone, Debug, Default)]
pub struct PriceTable {
    inner: Arc<Inner>,
}

#[derive(Clone, Debug, Default)]
struct Inner {
    models: HashMap<String, ModelPrice>,
    /// Normalised id -> table id, for ids only present with a date (e.g. `claude-3-7-sonnet`
    /// -> `claude-3-7-sonnet-20250219`).
    aliases: HashMap<String, String>,
}

static BUNDLED: LazyLock<PriceTable> = LazyLock::new(|| {
    PriceTable::from_litellm_json(include_str!("model_prices.json"))
        .expect("bundled model_prices.json is a valid LiteLLM price file")
});

impl PriceTable {
    /// The prices shipped with the relay (`model_prices.json`), parsed once.
    pub fn bundled() -> PriceTable {
        BUNDLED.clone()
    }

    /// Loads LiteLLM's `model_prices_and_context_window.json` (or any subset of it).
    pub fn from_litellm_json(text: &str) -> Result<PriceTable, PricingError> {
        let models = litellm::parse(text)?;
        Ok(PriceTable::from_models(models))
    }

    fn from_models(models: HashMap<String, ModelPrice>) -> PriceTable {
        let mut aliases: HashMap<String, String> = HashMap::new();
        // Only provider-less ids become aliases: a prefixed id may be a reseller's price.
        for id in models.keys().filter(|id| !id.contains('/')) {
            let norm = normalize(id);
            if norm != *id && !models.contains_key(&norm) {
                // Several dated ids share a name: the latest date wins, deterministically.
                let entry = aliases.entry(norm).or_insert_with(|| id.clone());
                if id > entry {
                    *entry = id.clone();
                }
            }
        }
        PriceTable {
            inner: Arc::new(Inner { models, aliases }),
        }
    }

    /// Adds or replaces one model's price (operator overrides).
    pub fn insert(&mut self, id: impl Into<String>, price: ModelPrice) {
        let mut models = std::mem::take(&mut Arc::make_mut(&mut self.inner).models);
        models.insert(id.into(), price);
        *self = PriceTable::from_models(models);
    }

    pub fn len(&self) -> usize {
        self.inner.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.models.is_empty()
    }

    /// The price of `model`: the exact id first, then without a provider prefix (`anthropic/`),
    /// a date (`-20250929`, `@20250929`, `-2025-08-07`) or `-latest`, then an id that normalises
    /// to the same name.
    pub fn lookup(&self, model: &str) -> Option<&ModelPrice> {
        let models = &self.inner.models;
        if let Some(p) = models.get(model) {
            return Some(p);
        }
        let bare = strip_provider(model);
        if let Some(p) = models.get(bare) {
            return Some(p);
        }
        let norm = normalize(bare);
        models
            .get(&norm)
            .or_else(|| self.inner.aliases.get(&norm).and_then(|id| models.get(id)))
    }

    fn price(&self, model: &str) -> Result<&ModelPrice, PricingError> {
        self.lookup(model)
            .ok_or_else(|| PricingError::UnknownModel(model.to_owned()))
    }

    /// Exact cost of `usage` on `model`, times `m`, rounded up to the nano-USD.
    pub fn cost(&self, model: &str, usage: &Usage, m: Multiplier) -> Result<Money, PricingError> {
        Ok(self.price(model)?.cost(usage, m))
    }

    /// The most a request can cost: `prompt_tokens` at the dearest input-side price it can incur
    /// (1h write for a 1h TTL, 5m write for 5m, else plain input; long-context tier above the
    /// threshold) plus `max_out` output tokens. See [`ModelPrice::worst_case`].
    pub fn worst_case(
        &self,
        model: &str,
        prompt_tokens: u64,
        ttl: Option<CacheTtl>,
        max_out: u64,
        m: Multiplier,
    ) -> Result<Money, PricingError> {
        Ok(self
            .price(model)?
            .worst_case(prompt_tokens, ttl, max_out, m))
    }

    /// Chat model ids served by `platform`, sorted and without provider prefixes, for
    /// `GET /v1/models`.
    pub fn models(&self, platform: Platform) -> Vec<String> {
        let ids: BTreeSet<&str> = self
            .inner
            .models
            .iter()
            .filter(|(_, p)| p.is_chat() && p.platform() == Some(platform))
            .map(|(id, _)| strip_provider(id))
            .collect();
        ids.into_iter().map(str::to_owned).collect()
    }
}

/// `anthropic/claude-x` -> `claude-x` (the part after the last `/`).
fn strip_provider(model: &str) -> &str {
    model.rsplit_once('/').map_or(model, |(_, id)| id)
}

/// Drops `-latest` and a trailing date (`-YYYYMMDD`, `@YYYYMMDD`, `-YYYY-MM-DD`).
fn normalize(model: &str) -> String {
    let mut s = strip_provider(model);
    loop {
        let before = s.len();
        s = s.strip_suffix("-latest").unwrap_or(s);
        s = strip_date(s);
        if s.len() == before {
            return s.to_owned();
        }
    }
}

fn strip_date(s: &str) -> &str {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let n = b.len();
    if n > 9 && matches!(b[n - 9], b'-' | b'@') && digits(n - 8..n) {
        return &s[..n - 9];
    }
    if n > 11
        && b[n - 11] == b'-'
        && b[n - 6] == b'-'
        && b[n - 3] == b'-'
        && digits(n - 10..n - 6)
        && digits(n - 5..n - 3)
        && digits(n - 2..n)
    {
        return &s[..n - 11];
    }
    s
}

#[cfg(test)]
mod tests;
