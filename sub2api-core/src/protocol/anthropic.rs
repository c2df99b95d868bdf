//! The Anthropic Messages API as the relay needs it (PROTOCOLS.md, "Anthropic Messages").

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::RelayError;
use crate::meter::CacheTtl;
use crate::request::Endpoint;

/// The default `anthropic-version`, added when a client leaves it out.
pub const DEFAULT_VERSION: &str = "2023-06-01";

/// Client headers that may go upstream. Everything else (cookies, the client's own credentials,
/// proxy headers, `accept-encoding` which would hide usage from the meter) stays behind.
pub const FORWARDED_HEADERS: &[&str] = &[
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
    "content-type",
    "accept",
    "user-agent",
    "x-app",
    "x-stainless-lang",
    "x-stainless-package-version",
    "x-stainless-os",
    "x-stainless-arch",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-retry-count",
    "x-stainless-timeout",
    "x-stainless-helper-method",
];

/// Upstream response headers a client may see.
pub const RETURNED_HEADERS: &[&str] =
    &["content-type", "request-id", "retry-after", "cache-control"];

pub use super::ParsedBody;

#[derive(Deserialize)]
struct Body<'a> {
    model: Option<serde_json::Value>,
    max_tokens: Option<serde_json::Value>,
    #[serde(borrow)]
    messages: Option<&'a RawValue>,
    stream: Option<serde_json::Value>,
    #[serde(borrow)]
    system: Option<&'a RawValue>,
    metadata: Option<Metadata>,
}

#[derive(Deserialize)]
struct Metadata {
    user_id: Option<serde_json::Value>,
}

/// Upper bound accepted for `max_tokens`; anything above is surely a mistake and would make an
/// absurd hold.
pub const MAX_TOKENS_LIMIT: u64 = 1_000_000;

/// Validates a body and extracts what scheduling and billing need, without building a full DOM
/// of the (possibly large) conversation.
pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<ParsedBody, RelayError> {
    if body.is_empty() {
        return Err(RelayError::invalid(
            "request body is empty; expected a JSON object",
        ));
    }
    let b: Body<'_> = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            RelayError::invalid(format!("request body must be a JSON object: {e}"))
        } else {
            RelayError::invalid(format!("malformed JSON in request body: {e}"))
        }
    })?;
    let model = match b.model {
        Some(serde_json::Value::String(m)) if !m.trim().is_empty() => m,
        Some(_) => return Err(RelayError::invalid("model: must be a non-empty string")),
        None => return Err(RelayError::invalid("model: field required")),
    };
    let messages = b
        .messages
        .ok_or_else(|| RelayError::invalid("messages: field required"))?;
    let messages: Vec<&RawValue> = serde_json::from_str(messages.get())
        .map_err(|_| RelayError::invalid("messages: must be an array"))?;
    if messages.is_empty() && endpoint == Endpoint::Messages {
        return Err(RelayError::invalid(
            "messages: at least one message is required",
        ));
    }
    let max_tokens = match (endpoint, b.max_tokens) {
        (_, Some(serde_json::Value::Number(n))) => match n.as_u64() {
            Some(v) if v >= 1 && v <= MAX_TOKENS_LIMIT => v,
            _ => {
                return Err(RelayError::invalid(format!(
                    "max_tokens: must be an integer between 1 and {MAX_TOKENS_LIMIT}"
                )));
            }
        },
        (Endpoint::Messages, Some(_)) => {
            return Err(RelayError::invalid("max_tokens: must be an integer"));
        }
        (Endpoint::Messages, None) => {
            return Err(RelayError::invalid("max_tokens: field required"));
        }
        (_, _) => 0,
    };
    let stream = match b.stream {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Bool(s)) => s,
        Some(_) => return Err(RelayError::invalid("stream: must be a boolean")),
    };
    let session = b
        .metadata
        .and_then(|m| m.user_id)
        .and_then(|u| u.as_str().and_then(session_from_user_id))
        .or_else(|| {
            super::prefix_hash(
                b.system.map(RawValue::get),
                messages.first().map(|m| m.get()),
            )
        });
    let cache_ttl = if memfind(body, b"\"cache_control\"") {
        longest_cache_ttl(body)
    } else {
        None
    };
    Ok(ParsedBody {
        model,
        stream: stream && endpoint == Endpoint::Messages,
        max_tokens: Some(max_tokens),
        session,
        cache_ttl,
        include_usage: true,
    })
}

/// Claude Code's session id from `metadata.user_id`: the legacy
/// `user_<hex>_account_<uuid>_session_<uuid>` form or the JSON form (2.1.78+)
/// `{"device_id":..,"account_uuid":..,"session_id":..}`.
pub fn session_from_user_id(user_id: &str) -> Option<String> {
    let s = user_id.trim();
    if s.starts_with('{') {
        #[derive(Deserialize)]
        struct J {
            session_id: Option<String>,
        }
        return serde_json::from_str::<J>(s)
            .ok()?
            .session_id
            .filter(|x| !x.is_empty());
    }
    let (_, session) = s.rsplit_once("_session_")?;
    (!session.is_empty()).then(|| session.to_owned())
}

fn memfind(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The longest TTL among the body's `cache_control` marks (the default TTL is 5 minutes).
fn longest_cache_ttl(body: &[u8]) -> Option<CacheTtl> {
    fn walk(v: &serde_json::Value, best: &mut Option<CacheTtl>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(cc) = m.get("cache_control").and_then(|c| c.as_object()) {
                    let ttl = match cc.get("ttl").and_then(|t| t.as_str()) {
                        Some("1h") => CacheTtl::OneHour,
                        _ => CacheTtl::FiveMinutes,
                    };
                    *best = (*best).max(Some(ttl));
                }
                m.values().for_each(|x| walk(x, best));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, best)),
            _ => {}
        }
    }
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut best = None;
    walk(&v, &mut best);
    best
}

/// Copies the whitelisted client headers and adds `anthropic-version` when missing.
pub fn upstream_headers(client: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(FORWARDED_HEADERS.len());
    for name in FORWARDED_HEADERS {
        if let Some(v) = client.get(*name) {
            out.insert(HeaderName::from_static(name), v.clone());
        }
    }
    out.entry("anthropic-version")
        .or_insert(HeaderValue::from_static(DEFAULT_VERSION));
    out.entry(http::header::CONTENT_TYPE)
        .or_insert(HeaderValue::from_static("application/json"));
    out
}

/// The static `/v1/models` listing for a set of model ids.
pub fn models_listing(ids: &[String]) -> Bytes {
    let data: Vec<_> = ids
        .iter()
        .map(|id| {
            serde_json::json!({
                "type": "model",
                "id": id,
                "display_name": id,
                "created_at": "2025-01-01T00:00:00Z",
            })
        })
        .collect();
    let v = serde_json::json!({
        "data": data,
        "has_more": false,
        "first_id": ids.first(),
        "last_id": ids.last(),
    });
    Bytes::from(serde_json::to_vec(&v).expect("static JSON shape"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_from_both_user_id_forms() {
        let legacy = format!(
            "user_{}_account__session_7f0e9c1a-1111-2222-3333-444455556666",
            "a".repeat(64)
        );
        assert_eq!(
            session_from_user_id(&legacy).as_deref(),
            Some("7f0e9c1a-1111-2222-3333-444455556666")
        );
        let json = r#"{"device_id":"d1","account_uuid":"acc","session_id":"s-42"}"#;
        assert_eq!(session_from_user_id(json).as_deref(), Some("s-42"));
        assert_eq!(session_from_user_id("plain"), None);
    }

    #[test]
    fn validates_and_extracts() {
        let body = br#"{"model":"claude-sonnet-4-5","max_tokens":100,"stream":true,
            "system":[{"type":"text","text":"sys","cache_control":{"type":"ephemeral","ttl":"1h"}}],
            "messages":[{"role":"user","content":"hi"}]}"#;
        let p = parse(Endpoint::Messages, body).unwrap();
        assert_eq!(p.model, "claude-sonnet-4-5");
        assert!(p.stream);
        assert_eq!(p.max_tokens, Some(100));
        assert_eq!(p.cache_ttl, Some(CacheTtl::OneHour));
        assert!(p.session.unwrap().starts_with('h'));
    }

    #[test]
    fn rejects_bad_bodies_clearly() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b"{not json", "malformed JSON"),
            (b"[1,2]", "JSON object"),
            (
                br#"{"max_tokens":1,"messages":[]}"#,
                "model: field required",
            ),
            (
                br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#,
                "max_tokens: field required",
            ),
            (
                br#"{"model":"m","max_tokens":1}"#,
                "messages: field required",
            ),
            (
                br#"{"model":"m","max_tokens":0,"messages":[{}]}"#,
                "max_tokens: must be",
            ),
            (
                br#"{"model":"m","max_tokens":1,"messages":[{}],"stream":"yes"}"#,
                "stream: must be",
            ),
        ];
        for (body, want) in cases {
            let e = parse(Endpoint::Messages, body).unwrap_err();
            assert!(e.message.contains(want), "{want}: {}", e.message);
        }
        assert!(parse(Endpoint::CountTokens, br#"{"model":"m","messages":[]}"#).is_ok());
    }

    #[test]
    fn header_policy_drops_credentials_and_adds_version() {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "sk-client".parse().unwrap());
        h.insert("authorization", "Bearer sk-client".parse().unwrap());
        h.insert("cookie", "a=b".parse().unwrap());
        h.insert("anthropic-beta", "claude-code-20250219".parse().unwrap());
        let out = upstream_headers(&h);
        assert!(
            out.get("x-api-key").is_none()
                && out.get("authorization").is_none()
                && out.get("cookie").is_none()
        );
        assert_eq!(out["anthropic-version"], DEFAULT_VERSION);
        assert_eq!(out["anthropic-beta"], "claude-code-20250219");
    }
}
