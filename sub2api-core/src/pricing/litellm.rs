//! Reading LiteLLM's `model_prices_and_context_window.json`.
//!
//! The file is one object: model id -> entry. Entries carry far more than prices (capabilities,
//! context windows, per-image and per-second prices for other modes) and the first one,
//! `sample_spec`, documents the schema with placeholder strings. We read only the per-token
//! prices and a few descriptive fields, skip entries that have no input or no output token price,
//! and parse every price from its JSON text (never through `f64`), so `3.75e-06` is exactly
//! 3.75 USD per million tokens.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{ModelPrice, PricingError, Rates};
use crate::money::TokenPrice;

/// Fallback cache prices, in parts per million of the input price, for entries that lack them
/// (Anthropic's published ratios: 5m write 1.25x, 1h write 2x, read 0.1x).
pub const FALLBACK_WRITE_5M_PPM: i64 = 1_250_000;
pub const FALLBACK_WRITE_1H_PPM: i64 = 2_000_000;
pub const FALLBACK_READ_PPM: i64 = 100_000;

/// The fields of one entry that we read; everything else is skipped.
#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(borrow)]
    input_cost_per_token: Option<&'a RawValue>,
    #[serde(borrow)]
    output_cost_per_token: Option<&'a RawValue>,
    #[serde(borrow)]
    cache_creation_input_token_cost: Option<&'a RawValue>,
    #[serde(borrow)]
    cache_creation_input_token_cost_above_1hr: Option<&'a RawValue>,
    #[serde(borrow)]
    cache_read_input_token_cost: Option<&'a RawValue>,
    #[serde(borrow)]
    input_cost_per_token_above_200k_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    output_cost_per_token_above_200k_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    cache_creation_input_token_cost_above_200k_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    cache_creation_input_token_cost_above_1hr_above_200k_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    cache_read_input_token_cost_above_200k_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    search_context_cost_per_query: Option<&'a RawValue>,
    #[serde(borrow)]
    litellm_provider: Option<&'a RawValue>,
    #[serde(borrow)]
    mode: Option<&'a RawValue>,
    #[serde(borrow)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    max_input_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    max_output_tokens: Option<&'a RawValue>,
}

/// Per-search prices by context size; Anthropic bills one flat price per search.
#[derive(Deserialize)]
struct SearchCost<'a> {
    #[serde(borrow)]
    search_context_size_medium: Option<&'a RawValue>,
}

/// Parses the whole document into model id -> price. Only a document that is not an object of
/// entries is an error; a bad entry is skipped with a warning so one typo upstream cannot take
/// every model offline.
pub(super) fn parse(text: &str) -> Result<HashMap<String, ModelPrice>, PricingError> {
    let entries: HashMap<String, &RawValue> =
        serde_json::from_str(text).map_err(|e| PricingError::Malformed(e.to_string()))?;
    let mut models = HashMap::with_capacity(entries.len());
    for (id, raw) in entries {
        if id == "sample_spec" {
            continue;
        }
        match parse_entry(&id, raw) {
            Ok(Some(price)) => {
                models.insert(id, price);
            }
            Ok(None) => {}
            Err(reason) => tracing::warn!(model = %id, %reason, "skipping malformed price entry"),
        }
    }
    Ok(models)
}

/// One entry; `Ok(None)` when it has no per-token input and output price (embeddings, images,
/// audio, unpriced placeholders).
fn parse_entry(id: &str, raw: &RawValue) -> Result<Option<ModelPrice>, String> {
    if !raw.get().trim_start().starts_with('{') {
        return Ok(None);
    }
    let e: Entry<'_> = serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
    let (Some(input), Some(output)) = (
        price(e.input_cost_per_token)?,
        price(e.output_cost_per_token)?,
    ) else {
        return Ok(None);
    };
    let mut missing = Vec::new();
    let base = Rates {
        input,
        output,
        cache_write_5m: price(e.cache_creation_input_token_cost)?
            .unwrap_or_else(|| fallback(&mut missing, "5m write", input, FALLBACK_WRITE_5M_PPM)),
        cache_write_1h: price(e.cache_creation_input_token_cost_above_1hr)?
            .unwrap_or_else(|| fallback(&mut missing, "1h write", input, FALLBACK_WRITE_1H_PPM)),
        cache_read: price(e.cache_read_input_token_cost)?
            .unwrap_or_else(|| fallback(&mut missing, "read", input, FALLBACK_READ_PPM)),
    };
    let above_200k = tier(&e, &base, &mut missing)?;
    if !missing.is_empty() {
        tracing::debug!(model = %id, missing = ?missing, "cache prices missing; using 1.25x / 2x / 0.1x of input");
    }
    Ok(Some(ModelPrice {
        input: base.input,
        output: base.output,
        cache_write_5m: base.cache_write_5m,
        cache_write_1h: base.cache_write_1h,
        cache_read: base.cache_read,
        above_200k,
        web_search: web_search_price(e.search_context_cost_per_query)?,
        provider: string(e.litellm_provider).unwrap_or_default(),
        mode: string(e.mode).unwrap_or_default(),
        max_input_tokens: count(e.max_input_tokens),
        max_output_tokens: count(e.max_output_tokens).or_else(|| count(e.max_tokens)),
    }))
}

/// The long-context tier, if the entry lists any `*_above_200k_tokens` price. A category the tier
/// leaves out is derived from the tier's input price when it has one (a cache price below the
/// tier's own input price would be wrong), else it is the base price.
fn tier(
    e: &Entry<'_>,
    base: &Rates,
    missing: &mut Vec<&'static str>,
) -> Result<Option<Rates>, String> {
    let t_input = price(e.input_cost_per_token_above_200k_tokens)?;
    let t_output = price(e.output_cost_per_token_above_200k_tokens)?;
    let t_5m = price(e.cache_creation_input_token_cost_above_200k_tokens)?;
    let t_1h = price(e.cache_creation_input_token_cost_above_1hr_above_200k_tokens)?;
    let t_read = price(e.cache_read_input_token_cost_above_200k_tokens)?;
    if [t_input, t_output, t_5m, t_1h, t_read]
        .iter()
        .all(Option::is_none)
    {
        return Ok(None);
    }
    let mut derive = |given: Option<TokenPrice>, what: &'static str, ppm: i64, base: TokenPrice| {
        given.unwrap_or_else(|| match t_input {
            Some(input) => fallback(missing, what, input, ppm),
            None => base,
        })
    };
    Ok(Some(Rates {
        input: t_input.unwrap_or(base.input),
        output: t_output.unwrap_or(base.output),
        cache_write_5m: derive(
            t_5m,
            ">200k 5m write",
            FALLBACK_WRITE_5M_PPM,
            base.cache_write_5m,
        ),
        cache_write_1h: derive(
            t_1h,
            ">200k 1h write",
            FALLBACK_WRITE_1H_PPM,
            base.cache_write_1h,
        ),
        cache_read: derive(t_read, ">200k read", FALLBACK_READ_PPM, base.cache_read),
    }))
}

fn fallback(
    missing: &mut Vec<&'static str>,
    what: &'static str,
    input: TokenPrice,
    ppm: i64,
) -> TokenPrice {
    missing.push(what);
    input.scaled_ppm(ppm)
}

/// A per-token USD price from its JSON text: a number (`3e-06`) or, leniently, a decimal string.
/// `null` and absent are "no price"; negative prices are refused.
fn price(raw: Option<&RawValue>) -> Result<Option<TokenPrice>, String> {
    let Some(raw) = raw else { return Ok(None) };
    let text = raw.get().trim();
    if text == "null" {
        return Ok(None);
    }
    let owned;
    let number = if text.starts_with('"') {
        owned = serde_json::from_str::<String>(text).map_err(|e| e.to_string())?;
        owned.as_str()
    } else {
        text
    };
    let p = TokenPrice::per_token_usd(number).map_err(|e| e.to_string())?;
    if p < TokenPrice::ZERO {
        return Err(format!("negative price {text}"));
    }
    Ok(Some(p))
}

/// Anthropic-style flat per-search price (`search_context_cost_per_query.search_context_size_medium`).
fn web_search_price(raw: Option<&RawValue>) -> Result<TokenPrice, String> {
    let Some(raw) = raw.filter(|r| r.get().trim_start().starts_with('{')) else {
        return Ok(TokenPrice::ZERO);
    };
    let cost: SearchCost<'_> = serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
    Ok(price(cost.search_context_size_medium)?.unwrap_or(TokenPrice::ZERO))
}

fn string(raw: Option<&RawValue>) -> Option<String> {
    raw.and_then(|r| serde_json::from_str::<String>(r.get()).ok())
}

/// A token count; `sample_spec`-style prose or floats are "unknown".
fn count(raw: Option<&RawValue>) -> Option<u64> {
    raw.and_then(|r| r.get().trim().parse::<u64>().ok())
}
