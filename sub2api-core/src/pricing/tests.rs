use super::*;

fn usd(s: &str) -> Money {
    Money::parse_usd(s).unwrap()
}

fn per_m(s: &str) -> TokenPrice {
    TokenPrice::per_million_usd(s).unwrap()
}

fn usage(input: u64, m5: u64, h1: u64, read: u64, output: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        cache_creation_5m_tokens: m5,
        cache_creation_1h_tokens: h1,
        cache_read_tokens: read,
        web_search_requests: 0,
    }
}

/// USD per million: input / 5m write / 1h write / cache read / output. `-` = the fallback.
const REFERENCE: &[(&str, [&str; 5])] = &[
    ("claude-opus-4-5", ["5", "6.25", "10", "0.5", "25"]),
    ("claude-opus-4-5-20251101", ["5", "6.25", "10", "0.5", "25"]),
    ("claude-opus-4-1", ["15", "18.75", "30", "1.5", "75"]),
    (
        "claude-opus-4-1-20250805",
        ["15", "18.75", "30", "1.5", "75"],
    ),
    ("claude-opus-4", ["15", "18.75", "30", "1.5", "75"]),
    ("claude-opus-4-20250514", ["15", "18.75", "30", "1.5", "75"]),
    ("claude-sonnet-4-5", ["3", "3.75", "6", "0.3", "15"]),
    (
        "claude-sonnet-4-5-20250929",
        ["3", "3.75", "6", "0.3", "15"],
    ),
    ("claude-sonnet-4", ["3", "3.75", "6", "0.3", "15"]),
    ("claude-sonnet-4-20250514", ["3", "3.75", "6", "0.3", "15"]),
    (
        "claude-3-7-sonnet-20250219",
        ["3", "3.75", "6", "0.3", "15"],
    ),
    ("claude-haiku-4-5", ["1", "1.25", "2", "0.1", "5"]),
    ("claude-haiku-4-5-20251001", ["1", "1.25", "2", "0.1", "5"]),
    (
        "claude-3-5-haiku-20241022",
        ["0.8", "1", "1.6", "0.08", "4"],
    ),
    (
        "claude-3-haiku-20240307",
        ["0.25", "0.3", "0.5", "0.03", "1.25"],
    ),
    ("gpt-5", ["1.25", "-", "-", "0.125", "10"]),
    ("gpt-5-mini", ["0.25", "-", "-", "0.025", "2"]),
    ("gpt-5-nano", ["0.05", "-", "-", "0.005", "0.4"]),
    ("gpt-5-codex", ["1.25", "-", "-", "0.125", "10"]),
    ("gpt-5.1", ["1.25", "-", "-", "0.125", "10"]),
    ("gpt-5.1-codex", ["1.25", "-", "-", "0.125", "10"]),
    ("gpt-4.1", ["2", "-", "-", "0.5", "8"]),
    ("gpt-4.1-mini", ["0.4", "-", "-", "0.1", "1.6"]),
    ("gpt-4o", ["2.5", "-", "-", "1.25", "10"]),
    ("gpt-4o-mini", ["0.15", "-", "-", "0.075", "0.6"]),
    ("o3", ["2", "-", "-", "0.5", "8"]),
    ("o4-mini", ["1.1", "-", "-", "0.275", "4.4"]),
    ("gemini-2.5-pro", ["1.25", "-", "-", "0.125", "10"]),
    ("gemini-2.5-flash", ["0.3", "-", "-", "0.03", "2.5"]),
    ("gemini-2.5-flash-lite", ["0.1", "-", "-", "0.01", "0.4"]),
    ("gemini-2.0-flash", ["0.1", "-", "-", "0.025", "0.4"]),
    ("gemini-3-pro-preview", ["2", "-", "-", "0.2", "12"]),
];

#[test]
fn bundled_prices_match_the_reference() {
    let t = PriceTable::bundled();
    for (id, [input, w5, w1, read, output]) in REFERENCE {
        let p = t.lookup(id).unwrap_or_else(|| panic!("{id} missing"));
        let input = per_m(input);
        let or_fallback = |s: &str, ppm| {
            if s == "-" {
                input.scaled_ppm(ppm)
            } else {
                per_m(s)
            }
        };
        assert_eq!(p.input, input, "{id} input");
        assert_eq!(
            p.cache_write_5m,
            or_fallback(w5, FALLBACK_WRITE_5M_PPM),
            "{id} 5m"
        );
        assert_eq!(
            p.cache_write_1h,
            or_fallback(w1, FALLBACK_WRITE_1H_PPM),
            "{id} 1h"
        );
        assert_eq!(p.cache_read, per_m(read), "{id} read");
        assert_eq!(p.output, per_m(output), "{id} output");
        assert!(p.is_chat(), "{id} mode");
        assert!(p.platform().is_some(), "{id} provider");
    }
}

#[test]
fn bundled_limits_and_tiers() {
    let t = PriceTable::bundled();
    let max_out = |id: &str| t.lookup(id).unwrap().max_output_tokens;
    assert_eq!(max_out("claude-sonnet-4-5"), Some(64_000));
    assert_eq!(max_out("claude-haiku-4-5"), Some(64_000));
    assert_eq!(max_out("claude-opus-4-5"), Some(64_000));
    assert_eq!(max_out("claude-opus-4-1"), Some(32_000));
    assert_eq!(max_out("claude-opus-4"), Some(32_000));
    assert_eq!(max_out("gpt-5"), Some(128_000));
    assert_eq!(max_out("gemini-2.5-pro"), Some(65_536));
    assert_eq!(max_out("gemini-2.5-flash"), Some(65_536));

    let tier = t
        .lookup("claude-sonnet-4-5-20250929")
        .unwrap()
        .above_200k
        .unwrap();
    assert_eq!(
        tier,
        Rates {
            input: per_m("6"),
            output: per_m("22.5"),
            cache_write_5m: per_m("7.5"),
            cache_write_1h: per_m("12"),
            cache_read: per_m("0.6"),
        }
    );
    let tier = t.lookup("gemini-2.5-pro").unwrap().above_200k.unwrap();
    assert_eq!(
        (tier.input, tier.output, tier.cache_read),
        (per_m("2.5"), per_m("15"), per_m("0.25"))
    );
    let tier = t
        .lookup("gemini-3-pro-preview")
        .unwrap()
        .above_200k
        .unwrap();
    assert_eq!(
        (tier.input, tier.output, tier.cache_read),
        (per_m("4"), per_m("18"), per_m("0.4"))
    );
    assert!(t.lookup("claude-haiku-4-5").unwrap().above_200k.is_none());
    assert!(t.lookup("gpt-5").unwrap().above_200k.is_none());
}

#[test]
fn exact_costs_with_cache_writes_and_reads() {
    let t = PriceTable::bundled();
    // 0.003 + 0.0075 + 0.018 + 0.0012 + 0.0075
    let u = usage(1000, 2000, 3000, 4000, 500);
    assert_eq!(
        t.cost("claude-sonnet-4-5", &u, Multiplier::ONE).unwrap(),
        usd("0.0372")
    );
    assert_eq!(
        t.cost("claude-sonnet-4-5-20250929", &u, Multiplier::ONE)
            .unwrap(),
        usd("0.0372")
    );
    // 0.001 + 0.0025 + 0.006 + 0.0004 + 0.0025
    assert_eq!(
        t.cost("claude-haiku-4-5", &u, Multiplier::ONE).unwrap(),
        usd("0.0124")
    );
    // 0.005 + 0.0125 + 0.03 + 0.002 + 0.0125
    assert_eq!(
        t.cost("claude-opus-4-5", &u, Multiplier::ONE).unwrap(),
        usd("0.062")
    );
    // 0.015 + 0.0375 + 0.09 + 0.006 + 0.0375
    assert_eq!(
        t.cost("claude-opus-4-1", &u, Multiplier::ONE).unwrap(),
        usd("0.186")
    );
    // 0.00025 + 0.0006 + 0.0015 + 0.00012 + 0.000625
    assert_eq!(
        t.cost("claude-3-haiku-20240307", &u, Multiplier::ONE)
            .unwrap(),
        usd("0.003095")
    );

    // OpenAI: 1M uncached input + 1M cached + 1M output on gpt-5 = 1.25 + 0.125 + 10.
    let u = usage(1_000_000, 0, 0, 1_000_000, 1_000_000);
    assert_eq!(t.cost("gpt-5", &u, Multiplier::ONE).unwrap(), usd("11.375"));
    assert_eq!(t.cost("gpt-4o", &u, Multiplier::ONE).unwrap(), usd("13.75"));
    assert_eq!(
        t.cost("gemini-2.5-flash", &u, Multiplier::ONE).unwrap(),
        usd("2.83")
    );
}

#[test]
fn web_searches_are_billed_per_request() {
    let t = PriceTable::bundled();
    let mut u = usage(0, 0, 0, 0, 0);
    u.web_search_requests = 3;
    assert_eq!(
        t.cost("claude-sonnet-4-5", &u, Multiplier::ONE).unwrap(),
        usd("0.03")
    );
    assert_eq!(t.cost("gpt-5", &u, Multiplier::ONE).unwrap(), Money::ZERO);
}

#[test]
fn multiplier_applies_once_and_rounds_up() {
    let t = PriceTable::bundled();
    let u = usage(1000, 2000, 3000, 4000, 500);
    let m = |s: &str| Multiplier::parse(s).unwrap();
    assert_eq!(
        t.cost("claude-sonnet-4-5", &u, m("1.5")).unwrap(),
        usd("0.0558")
    );
    assert_eq!(
        t.cost("claude-sonnet-4-5", &u, m("0.85")).unwrap(),
        usd("0.03162")
    );
    assert_eq!(
        t.cost("claude-sonnet-4-5", &u, m("0")).unwrap(),
        Money::ZERO
    );

    // One token at $0.05/M is 50 nano-USD; at a 0.001x multiplier, 0.05 nano-USD: charged as
    // 1 nano-USD, never 0.
    let tiny = Multiplier::from_ppm(1000);
    let nano = |u: Usage, m| t.cost("gpt-5-nano", &u, m).unwrap().nanos();
    assert_eq!(nano(usage(1, 0, 0, 0, 0), Multiplier::ONE), 50);
    assert_eq!(nano(usage(1, 0, 0, 0, 0), tiny), 1);
    // Rounding happens once on the sum, not per category: 0.05 + 0.4 nano -> 1, not 2.
    assert_eq!(nano(usage(1, 0, 0, 0, 1), tiny), 1);
    // 1 cache read (5 nano) at 1/3: 1.666665 -> 2.
    assert_eq!(nano(usage(0, 0, 0, 1, 0), Multiplier::from_ppm(333_333)), 2);
    assert_eq!(nano(Usage::default(), Multiplier::ONE), 0);
    // A LiteLLM price finer than a nano-USD per token (1e-15 USD) still rounds up.
    let t = PriceTable::from_litellm_json(
        r#"{"m": {"input_cost_per_token": 1e-15, "output_cost_per_token": 1e-15}}"#,
    )
    .unwrap();
    assert_eq!(
        t.cost("m", &usage(1, 0, 0, 0, 0), Multiplier::ONE)
            .unwrap()
            .nanos(),
        1
    );
    assert_eq!(
        t.cost("m", &usage(1_000_000, 0, 0, 0, 0), Multiplier::ONE)
            .unwrap()
            .nanos(),
        1
    );
    assert_eq!(
        t.cost("m", &usage(1_000_001, 0, 0, 0, 0), Multiplier::ONE)
            .unwrap()
            .nanos(),
        2
    );
}

#[test]
fn unknown_model_is_an_error() {
    let t = PriceTable::bundled();
    let err = PricingError::UnknownModel("claude-nonexistent-9".into());
    assert_eq!(
        t.cost("claude-nonexistent-9", &Usage::default(), Multiplier::ONE),
        Err(err.clone())
    );
    assert_eq!(
        t.worst_case("claude-nonexistent-9", 1, None, 1, Multiplier::ONE),
        Err(err)
    );
    assert!(PriceTable::default().lookup("gpt-5").is_none());
}

#[test]
fn long_context_tier_switches_above_200k_prompt_tokens() {
    let t = PriceTable::bundled();
    // Exactly 200k prompt tokens (mixed categories): base prices.
    let at = usage(100_000, 50_000, 0, 50_000, 1000);
    assert_eq!(at.prompt_tokens(), 200_000);
    // 0.3 + 0.1875 + 0.015 + 0.015
    assert_eq!(
        t.cost("claude-sonnet-4-5", &at, Multiplier::ONE).unwrap(),
        usd("0.5175")
    );
    // One more token: every category at the tier.
    let above = usage(100_001, 50_000, 0, 50_000, 1000);
    // 0.600006 + 0.375 + 0.03 + 0.0225
    assert_eq!(
        t.cost("claude-sonnet-4-5", &above, Multiplier::ONE)
            .unwrap(),
        usd("1.027506")
    );
    // 1h writes above 200k: 12/M.
    let u = usage(0, 0, 300_000, 0, 0);
    assert_eq!(
        t.cost("claude-sonnet-4-5", &u, Multiplier::ONE).unwrap(),
        usd("3.6")
    );

    // Gemini 2.5 Pro: 250k prompt (50k cached) + 10k output.
    let u = usage(200_000, 0, 0, 50_000, 10_000);
    // 200k*2.5 + 50k*0.25 + 10k*15 = 0.5 + 0.0125 + 0.15
    assert_eq!(
        t.cost("gemini-2.5-pro", &u, Multiplier::ONE).unwrap(),
        usd("0.6625")
    );
    // Models without a tier keep their price.
    let u = usage(300_000, 0, 0, 0, 0);
    assert_eq!(
        t.cost("claude-haiku-4-5", &u, Multiplier::ONE).unwrap(),
        usd("0.3")
    );
}

#[test]
fn lookup_normalises_prefixes_dates_and_latest() {
    let t = PriceTable::bundled();
    let id_of = |model: &str| {
        let p = t.lookup(model)?;
        Some(
            REFERENCE
                .iter()
                .find(|(id, _)| t.lookup(id) == Some(p))
                .unwrap()
                .0,
        )
    };
    let sonnet = t.lookup("claude-sonnet-4-5").unwrap();
    for alias in [
        "anthropic/claude-sonnet-4-5",
        "anthropic/claude-sonnet-4-5-20250929",
        "claude-sonnet-4-5@20250929",
        "vertex_ai/claude-sonnet-4-5@20250929",
        "claude-sonnet-4-5-latest",
        "claude-sonnet-4-5-20991231",
    ] {
        assert_eq!(t.lookup(alias), Some(sonnet), "{alias}");
    }
    // Ids that exist only with a date resolve from the bare name.
    assert_eq!(
        id_of("claude-3-7-sonnet-latest"),
        Some("claude-3-7-sonnet-20250219")
    );
    assert_eq!(
        id_of("claude-3-5-haiku-latest"),
        Some("claude-3-5-haiku-20241022")
    );
    assert_eq!(id_of("claude-3-haiku"), Some("claude-3-haiku-20240307"));
    assert_eq!(t.lookup("openai/gpt-5-2025-08-07"), t.lookup("gpt-5"));
    assert_eq!(t.lookup("gpt-4o-2024-08-06"), t.lookup("gpt-4o"));
    assert_eq!(
        t.lookup("gemini/gemini-2.5-pro"),
        t.lookup("gemini-2.5-pro")
    );
    // Normalisation never turns one model into a different one.
    assert_eq!(
        t.lookup("claude-opus-4-5"),
        t.lookup("claude-opus-4-5-20251101")
    );
    assert_ne!(t.lookup("claude-opus-4-5"), t.lookup("claude-opus-4"));
    assert!(t.lookup("claude-sonnet-4-6").is_none());
    assert!(t.lookup("gpt-5-20250807x").is_none());
    assert!(t.lookup("").is_none());

    assert_eq!(normalize("claude-3-7-sonnet-20250219"), "claude-3-7-sonnet");
    assert_eq!(
        normalize("x/claude-sonnet-4-5@20250929"),
        "claude-sonnet-4-5"
    );
    assert_eq!(normalize("gpt-4o-2024-08-06"), "gpt-4o");
    assert_eq!(normalize("claude-3-5-haiku-latest"), "claude-3-5-haiku");
    assert_eq!(normalize("o3"), "o3");
    assert_eq!(normalize("gemini-2.5-flash-lite"), "gemini-2.5-flash-lite");
}

const SNIPPET: &str = r#"{
    "sample_spec": {
        "input_cost_per_token": 0.0,
        "litellm_provider": "one of https://docs.litellm.ai/docs/providers",
        "max_input_tokens": "max input tokens, if the provider specifies it. if not default to max_tokens",
        "max_output_tokens": "max output tokens, if the provider specifies it. if not default to max_tokens",
        "max_tokens": "LEGACY parameter. set to max_output_tokens if provider specifies it. IF not set to max_input_tokens, if provider specifies it.",
        "mode": "one of: chat, embedding, completion, image_generation, audio_transcription, audio_speech",
        "output_cost_per_token": 0.0,
        "supports_vision": true
    },
    "text-embedding-3-small": {
        "input_cost_per_token": 2e-08,
        "litellm_provider": "openai",
        "max_input_tokens": 8191,
        "max_tokens": 8191,
        "mode": "embedding",
        "output_vector_size": 1536
    },
    "dall-e-3": {
        "input_cost_per_pixel": 3.81469e-08,
        "litellm_provider": "openai",
        "mode": "image_generation",
        "output_cost_per_pixel": 0.0
    },
    "null-priced": {"input_cost_per_token": null, "output_cost_per_token": 1e-06, "mode": "chat"},
    "broken": {"input_cost_per_token": "not a number", "output_cost_per_token": 1e-06},
    "negative": {"input_cost_per_token": -1e-06, "output_cost_per_token": 1e-06},
    "odd-value": [1, 2, 3],
    "claude-sonnet-4-5": {
        "cache_creation_input_token_cost": 3.75e-06,
        "cache_creation_input_token_cost_above_1hr": 6e-06,
        "cache_read_input_token_cost": 3e-07,
        "input_cost_per_token": 3e-06,
        "input_cost_per_token_above_200k_tokens": 6e-06,
        "output_cost_per_token_above_200k_tokens": 2.25e-05,
        "cache_creation_input_token_cost_above_200k_tokens": 7.5e-06,
        "cache_read_input_token_cost_above_200k_tokens": 6e-07,
        "litellm_provider": "anthropic",
        "max_input_tokens": 200000,
        "max_output_tokens": 64000,
        "max_tokens": 64000,
        "mode": "chat",
        "output_cost_per_token": 1.5e-05,
        "search_context_cost_per_query": {
            "search_context_size_high": 0.01,
            "search_context_size_low": 0.01,
            "search_context_size_medium": 0.01
        },
        "supports_computer_use": true,
        "tool_use_system_prompt_tokens": 346
    },
    "anthropic/claude-sonnet-4-5": {
        "input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
        "litellm_provider": "anthropic", "mode": "chat"
    },
    "gemini/gemini-2.5-flash": {
        "input_cost_per_token": 3e-07, "output_cost_per_token": 2.5e-06, "cache_read_input_token_cost": 3e-08,
        "litellm_provider": "gemini", "mode": "chat", "max_tokens": 65535
    },
    "gemini-2.5-flash": {
        "input_cost_per_token": 3e-07, "output_cost_per_token": 2.5e-06, "cache_read_input_token_cost": 7.5e-08,
        "litellm_provider": "vertex_ai-language-models", "mode": "chat"
    },
    "exotic": {
        "input_cost_per_token": "1.875e-05", "output_cost_per_token": 0.000075,
        "litellm_provider": "openrouter", "mode": "chat", "max_output_tokens": 4096.5
    },
    "bare": {"input_cost_per_token": 2e-06, "output_cost_per_token": 8e-06, "litellm_provider": "openai", "mode": "chat"}
}"#;

#[test]
fn loads_litellm_and_skips_what_it_cannot_price() {
    let t = PriceTable::from_litellm_json(SNIPPET).unwrap();
    for skipped in [
        "sample_spec",
        "text-embedding-3-small",
        "dall-e-3",
        "null-priced",
        "broken",
        "negative",
        "odd-value",
    ] {
        assert!(
            !t.inner.models.contains_key(skipped),
            "{skipped} should be skipped"
        );
    }
    assert_eq!(t.len(), 6);

    let p = t.lookup("claude-sonnet-4-5").unwrap();
    assert_eq!(
        p.base_rates(),
        PriceTable::bundled()
            .lookup("claude-sonnet-4-5")
            .unwrap()
            .base_rates()
    );
    assert_eq!(p.provider, "anthropic");
    assert_eq!(p.mode, "chat");
    assert_eq!(
        (p.max_input_tokens, p.max_output_tokens),
        (Some(200_000), Some(64_000))
    );
    assert_eq!(p.web_search, TokenPrice::per_token_usd("0.01").unwrap());
    // The snippet has no 1h-above-200k field: derived as 2x the tier input (12/M).
    assert_eq!(p.above_200k.unwrap().cache_write_1h, per_m("12"));

    let p = t.lookup("exotic").unwrap();
    assert_eq!((p.input, p.output), (per_m("18.75"), per_m("75")));
    assert_eq!(p.max_output_tokens, None);
    assert_eq!(
        t.lookup("gemini/gemini-2.5-flash")
            .unwrap()
            .max_output_tokens,
        Some(65_535)
    );
    // An exact id wins over the normalised one.
    assert_eq!(
        t.lookup("gemini-2.5-flash").unwrap().cache_read,
        per_m("0.075")
    );
    assert_eq!(
        t.lookup("gemini/gemini-2.5-flash").unwrap().cache_read,
        per_m("0.03")
    );

    assert!(matches!(
        PriceTable::from_litellm_json("[1]"),
        Err(PricingError::Malformed(_))
    ));
    assert!(matches!(
        PriceTable::from_litellm_json("{"),
        Err(PricingError::Malformed(_))
    ));
    assert!(PriceTable::from_litellm_json("{}").unwrap().is_empty());
}

#[test]
fn missing_cache_prices_fall_back_to_ratios_of_input() {
    let t = PriceTable::from_litellm_json(SNIPPET).unwrap();
    let p = t.lookup("bare").unwrap();
    assert_eq!(p.cache_write_5m, per_m("2.5"));
    assert_eq!(p.cache_write_1h, per_m("4"));
    assert_eq!(p.cache_read, per_m("0.2"));
    // 1000 * (2 + 2.5 + 4 + 0.2 + 8) / 1M
    let u = usage(1000, 1000, 1000, 1000, 1000);
    assert_eq!(t.cost("bare", &u, Multiplier::ONE).unwrap(), usd("0.0167"));
    // Explicit fields are never replaced by the ratios.
    let p = t.lookup("gemini-2.5-flash").unwrap();
    assert_eq!(
        (p.cache_read, p.cache_write_5m),
        (per_m("0.075"), per_m("0.375"))
    );
    // Ratios round up on sub-femto results.
    let tiny = r#"{"m": {"input_cost_per_token": 1e-15, "output_cost_per_token": 1e-15}}"#;
    let p = PriceTable::from_litellm_json(tiny)
        .unwrap()
        .lookup("m")
        .unwrap()
        .clone();
    assert_eq!(p.cache_read.femto_per_token(), 1);
    assert_eq!(p.cache_write_5m.femto_per_token(), 2);
}

#[test]
fn worst_case_prices_the_dearest_input_side() {
    let t = PriceTable::bundled();
    let w = |model, prompt, ttl, out| {
        t.worst_case(model, prompt, ttl, out, Multiplier::ONE)
            .unwrap()
    };
    // 100k prompt + 8k output on sonnet-4-5.
    assert_eq!(w("claude-sonnet-4-5", 100_000, None, 8000), usd("0.42")); // 0.3 + 0.12
    assert_eq!(
        w(
            "claude-sonnet-4-5",
            100_000,
            Some(CacheTtl::FiveMinutes),
            8000
        ),
        usd("0.495")
    );
    assert_eq!(
        w("claude-sonnet-4-5", 100_000, Some(CacheTtl::OneHour), 8000),
        usd("0.72")
    );
    // Above 200k: tier prices (12/M 1h writes, 22.5/M output).
    assert_eq!(
        w(
            "claude-sonnet-4-5",
            300_000,
            Some(CacheTtl::OneHour),
            10_000
        ),
        usd("3.825")
    );
    assert_eq!(w("gemini-2.5-pro", 300_000, None, 10_000), usd("0.9"));
    let m = Multiplier::parse("2").unwrap();
    assert_eq!(
        t.worst_case("gpt-5", 1000, None, 1000, m).unwrap(),
        usd("0.0225")
    );
}

/// For every usage a request can produce (prompt within the estimate, output within max_tokens,
/// cache writes only where the TTL allows), the worst case is an upper bound on the real cost.
#[test]
fn worst_case_bounds_every_consistent_usage() {
    let t = PriceTable::bundled();
    let mut snippet = PriceTable::from_litellm_json(SNIPPET).unwrap();
    // A model whose tier is cheaper in one category than the base must still be bounded.
    snippet.insert(
        "weird-tier",
        ModelPrice {
            input: per_m("3"),
            output: per_m("15"),
            cache_write_5m: per_m("3.75"),
            cache_write_1h: per_m("6"),
            cache_read: per_m("0.3"),
            above_200k: Some(Rates {
                input: per_m("2"),
                output: per_m("10"),
                cache_write_5m: per_m("9"),
                cache_write_1h: per_m("5"),
                cache_read: per_m("0.1"),
            }),
            ..ModelPrice::default()
        },
    );
    let splits = [0u64, 1, 3, 7, 10];
    let mut checked = 0u32;
    for (table, models) in [
        (
            &t,
            vec![
                "claude-sonnet-4-5",
                "claude-opus-4-1",
                "claude-haiku-4-5",
                "gpt-5",
                "gemini-2.5-pro",
                "gemini-3-pro-preview",
            ],
        ),
        (&snippet, vec!["weird-tier", "bare", "claude-sonnet-4-5"]),
    ] {
        for model in models {
            for prompt in [0u64, 1, 999, 150_000, 200_000, 200_001, 250_000, 1_000_000] {
                for ttl in [None, Some(CacheTtl::FiveMinutes), Some(CacheTtl::OneHour)] {
                    for max_out in [0u64, 1, 4096, 64_000] {
                        for m in [
                            Multiplier::ONE,
                            Multiplier::from_ppm(850_000),
                            Multiplier::from_ppm(3_333_333),
                        ] {
                            let bound = table.worst_case(model, prompt, ttl, max_out, m).unwrap();
                            for used in [
                                prompt,
                                prompt / 2,
                                prompt.saturating_sub(1),
                                200_000.min(prompt),
                            ] {
                                // Split `used` prompt tokens into input / 5m / 1h / read by tenths.
                                for &a in &splits {
                                    for &b in &splits {
                                        for &c in &splits {
                                            if a + b + c > 10 {
                                                continue;
                                            }
                                            let m5 = if ttl.is_some() { used * b / 10 } else { 0 };
                                            let h1 = if ttl == Some(CacheTtl::OneHour) {
                                                used * c / 10
                                            } else {
                                                0
                                            };
                                            let read = used * a / 10;
                                            let input = used - m5 - h1 - read;
                                            for out in [0, max_out / 3, max_out] {
                                                let u = usage(input, m5, h1, read, out);
                                                let cost = table.cost(model, &u, m).unwrap();
                                                assert!(
                                                    cost <= bound,
                                                    "{model}: {u:?} costs {cost} > worst case {bound} ({prompt}, {ttl:?}, {max_out})"
                                                );
                                                checked += 1;
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 100_000);
}

#[test]
fn models_lists_chat_models_per_platform() {
    let t = PriceTable::bundled();
    let anthropic = t.models(Platform::Anthropic);
    assert!(anthropic.contains(&"claude-sonnet-4-5".to_owned()));
    assert!(anthropic.contains(&"claude-3-haiku-20240307".to_owned()));
    assert!(anthropic.iter().all(|id| id.starts_with("claude-")));
    assert!(
        anthropic.windows(2).all(|w| w[0] < w[1]),
        "sorted and unique"
    );
    assert_eq!(anthropic.len(), 15);

    let openai = t.models(Platform::Openai);
    for id in [
        "gpt-5",
        "gpt-5-codex",
        "gpt-5.1-codex",
        "gpt-4o-mini",
        "o3",
        "o4-mini",
    ] {
        assert!(openai.contains(&id.to_owned()), "{id}");
    }
    assert_eq!(openai.len(), 12);
    assert_eq!(
        t.models(Platform::Gemini),
        [
            "gemini-2.0-flash",
            "gemini-2.5-flash",
            "gemini-2.5-flash-lite",
            "gemini-2.5-pro",
            "gemini-3-pro-preview"
        ]
    );

    // From a LiteLLM file: embeddings are not listed, provider prefixes are dropped, duplicates merge.
    let s = PriceTable::from_litellm_json(SNIPPET).unwrap();
    assert_eq!(s.models(Platform::Openai), ["bare"]);
    assert_eq!(s.models(Platform::Gemini), ["gemini-2.5-flash"]);
    assert_eq!(s.models(Platform::Anthropic), ["claude-sonnet-4-5"]);
}

#[test]
fn insert_overrides_a_price() {
    let mut t = PriceTable::bundled();
    let before = PriceTable::bundled().lookup("gpt-5").cloned();
    let mut p = t.lookup("gpt-5").unwrap().clone();
    p.output = per_m("20");
    t.insert("gpt-5", p);
    assert_eq!(t.lookup("gpt-5-2025-08-07").unwrap().output, per_m("20"));
    // The shared bundled table is untouched.
    assert_eq!(PriceTable::bundled().lookup("gpt-5").cloned(), before);
    t.insert(
        "my-model-20250101",
        ModelPrice {
            input: per_m("1"),
            output: per_m("2"),
            ..ModelPrice::default()
        },
    );
    assert!(t.lookup("my-model").is_some());
}
