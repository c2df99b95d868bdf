//! Metering: pure, synchronous usage scanners fed the same `Bytes` that go to the client, and the
//! [`Meter`] trait that turns usage into money.
//!
//! Scanners never copy or re-frame the stream: they look at each chunk once, keep only the tail of
//! an incomplete line (bounded), and parse just the frames that carry usage.

mod anthropic;
mod gemini;
mod json;
mod openai;
pub mod sse;
#[cfg(test)]
mod testing;

pub use anthropic::{AnthropicJsonScanner, AnthropicSseScanner};
pub use gemini::{GeminiSseScanner, gemini_usage};
pub use json::{JsonBodyScanner, JsonShape};
pub use openai::{ChatSseScanner, ResponsesSseScanner, chat_usage, responses_usage};

use serde::{Deserialize, Serialize};

use crate::dialect::Dialect;
use crate::domain::Usage;
use crate::money::{Money, Multiplier};
use crate::pricing::{PriceTable, PricingError};
use crate::request::Endpoint;

/// How a response ended: one row of the settlement table each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// Upstream sent its final usage; exactly that is charged.
    Complete,
    /// The client left; upstream was drained to its final usage, which is charged.
    ClientGoneDrained,
    /// The client left and the drain bound hit: input known + output counted so far.
    ClientGoneTimedOut,
    /// Upstream ended without final usage: input known + output seen; the client got an error event.
    UpstreamCut,
    /// Upstream failed before any output: nothing charged, the hold released.
    UpstreamError,
}

/// A usage scanner for one response.
pub trait UsageScanner: Send + 'static {
    /// Looks at the next chunk, exactly as it is sent to the client.
    fn feed(&mut self, chunk: &[u8]);

    /// True once the vendor's final usage has been seen, so the charge can be settled before the
    /// last bytes are released to the client.
    fn is_final(&self) -> bool;

    /// Usage metered so far (final when [`UsageScanner::is_final`]). For bodies that can only be
    /// read whole (non-stream JSON) this parses what was fed.
    fn usage(&mut self) -> Usage;

    /// True if the vendor sent an error in-band (an SSE `error` event).
    fn saw_error(&self) -> bool;

    /// The model the vendor says answered, if seen.
    fn model(&self) -> Option<&str>;
}

/// What a request may cost at most, estimated before it goes upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CostEstimate {
    pub model: String,
    /// Bytes of the request body: an upper bound on prompt tokens for byte-level tokenizers.
    pub body_bytes: u64,
    /// The longest cache TTL the body marks (`cache_control`), which prices the input side.
    pub cache_ttl: Option<CacheTtl>,
    /// The request's output cap (`max_tokens`, `max_output_tokens`, `maxOutputTokens`...);
    /// `None` when the body sets none, and the model's own limit applies.
    pub max_output_tokens: Option<u64>,
    /// Models the request may be billed as when `model` itself has no price: what the accounts
    /// that may serve it map it to (an alias an operator maps to a real model). The hold takes
    /// the dearest of them.
    pub alternatives: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CacheTtl {
    FiveMinutes,
    OneHour,
}

/// How holds are sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldPolicy {
    /// Every body byte counts as a prompt token at the highest input-side price the body can incur
    /// (the default). A byte-level tokenizer never produces more tokens than bytes, so the hold is an
    /// upper bound and the balance never goes below zero.
    Strict,
    /// `bytes_per_token` bytes per prompt token: smaller holds, at the price of a possible dip below
    /// zero by the estimation error (counted, and the key refused until the balance is positive).
    Estimated { bytes_per_token: u32 },
}

/// Extra prompt tokens the vendor adds around a body (tool-use system prompt, message framing).
pub const PROMPT_OVERHEAD_TOKENS: u64 = 1024;

/// The output cap assumed for a hold when neither the request nor the price table names one.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 128_000;

/// The standard scanner for an endpoint's responses.
pub fn scanner_for(endpoint: Endpoint, stream: bool) -> Box<dyn UsageScanner> {
    match (endpoint, stream) {
        (Endpoint::Messages | Endpoint::CountTokens, true) => Box::new(AnthropicSseScanner::new()),
        (Endpoint::Messages | Endpoint::CountTokens, false) => {
            Box::new(AnthropicJsonScanner::new())
        }
        (Endpoint::ChatCompletions, true) => Box::new(ChatSseScanner::new()),
        (Endpoint::ChatCompletions, false) => Box::new(JsonBodyScanner::new(JsonShape::Chat)),
        (Endpoint::Responses, true) => Box::new(ResponsesSseScanner::new()),
        (Endpoint::Responses, false) => Box::new(JsonBodyScanner::new(JsonShape::Responses)),
        (Endpoint::StreamGenerateContent, _) | (Endpoint::GenerateContent, true) => {
            Box::new(GeminiSseScanner::new())
        }
        (Endpoint::GenerateContent | Endpoint::GeminiCountTokens, false)
        | (Endpoint::GeminiCountTokens, true) => Box::new(JsonBodyScanner::new(JsonShape::Gemini)),
    }
}

/// Usage in, money out.
pub trait Meter: Send + Sync + 'static {
    /// A fresh scanner for a response in this dialect (its main endpoint: Messages, Chat
    /// Completions, generateContent). Prefer [`Meter::endpoint_scanner`], which knows Responses.
    fn scanner(&self, dialect: Dialect, stream: bool) -> Box<dyn UsageScanner> {
        let endpoint = match dialect {
            Dialect::Anthropic => Endpoint::Messages,
            Dialect::OpenAi => Endpoint::ChatCompletions,
            Dialect::Gemini => Endpoint::GenerateContent,
        };
        scanner_for(endpoint, stream)
    }

    /// A fresh scanner for a response of this endpoint (its wire format), stream or not. The
    /// meter layer asks this one.
    fn endpoint_scanner(&self, endpoint: Endpoint, stream: bool) -> Box<dyn UsageScanner> {
        scanner_for(endpoint, stream)
    }

    /// Exact cost of a usage, times the multiplier, rounded up to the nano-USD.
    fn cost(
        &self,
        model: &str,
        usage: &Usage,
        multiplier: Multiplier,
    ) -> Result<Money, PricingError>;

    /// The hold for a request: its worst-case cost under the hold policy.
    fn hold(&self, estimate: &CostEstimate, multiplier: Multiplier) -> Result<Money, PricingError>;
}

/// The standard [`Meter`]: the dialect scanners over a [`PriceTable`].
#[derive(Clone, Debug)]
pub struct PricedMeter {
    prices: std::sync::Arc<PriceTable>,
    policy: HoldPolicy,
}

impl PricedMeter {
    pub fn new(prices: std::sync::Arc<PriceTable>) -> Self {
        PricedMeter {
            prices,
            policy: HoldPolicy::Strict,
        }
    }

    pub fn with_policy(mut self, policy: HoldPolicy) -> Self {
        self.policy = policy;
        self
    }

    pub fn prices(&self) -> &std::sync::Arc<PriceTable> {
        &self.prices
    }
}

impl Meter for PricedMeter {
    fn cost(
        &self,
        model: &str,
        usage: &Usage,
        multiplier: Multiplier,
    ) -> Result<Money, PricingError> {
        self.prices.cost(model, usage, multiplier)
    }

    fn hold(&self, estimate: &CostEstimate, multiplier: Multiplier) -> Result<Money, PricingError> {
        let prompt_tokens = match self.policy {
            HoldPolicy::Strict => estimate.body_bytes,
            HoldPolicy::Estimated { bytes_per_token } => {
                estimate.body_bytes.div_ceil(bytes_per_token.max(1) as u64)
            }
        } + PROMPT_OVERHEAD_TOKENS;
        let hold_for = |model: &str| {
            let max_output = match estimate.max_output_tokens {
                Some(n) => n,
                None => self
                    .prices
                    .lookup(model)
                    .and_then(|p| p.max_output_tokens)
                    .unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS),
            };
            self.prices.worst_case(
                model,
                prompt_tokens,
                estimate.cache_ttl,
                max_output,
                multiplier,
            )
        };
        match hold_for(&estimate.model) {
            Err(PricingError::UnknownModel(m)) => estimate
                .alternatives
                .iter()
                .filter_map(|alt| hold_for(alt).ok())
                .max()
                .ok_or(PricingError::UnknownModel(m)),
            other => other,
        }
    }
}
