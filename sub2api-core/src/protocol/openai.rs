//! OpenAI Chat Completions and Responses as the relay needs them (PROTOCOLS.md, "OpenAI"):
//! validation and what scheduling and billing read from a body, the sticky key, the per-account
//! body edits (model mapping, forced `stream_options.include_usage`, `store: false` on the Codex
//! backend) and the response-side removal of the usage chunk.

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use serde_json::value::RawValue;

use super::json::Object;
use super::{ParsedBody, prefix_hash};
use crate::error::RelayError;
use crate::meter::sse::has_object_key;
use crate::request::Endpoint;

/// Client headers that may go upstream. The client's own credentials, cookies, organisation and
/// project headers (they name the client's OpenAI account, not ours) and `accept-encoding` stay
/// behind.
pub const FORWARDED_HEADERS: &[&str] = &[
    "content-type",
    "accept",
    "user-agent",
    "openai-beta",
    "originator",
    "session_id",
    "conversation_id",
    "version",
    "x-stainless-lang",
    "x-stainless-package-version",
    "x-stainless-os",
    "x-stainless-arch",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-retry-count",
    "x-stainless-timeout",
];

/// Upstream response headers a client may see.
pub const RETURNED_HEADERS: &[&str] = &[
    "content-type",
    "retry-after",
    "cache-control",
    "openai-processing-ms",
];

/// The path on the vendor: the public API, or the ChatGPT backend for Codex OAuth accounts.
pub fn upstream_path(endpoint: Endpoint, codex_backend: bool) -> &'static str {
    match (endpoint, codex_backend) {
        (Endpoint::Responses, true) => "/backend-api/codex/responses",
        (Endpoint::Responses, false) => "/v1/responses",
        _ => "/v1/chat/completions",
    }
}

/// Upper bound accepted for an output cap.
const MAX_OUTPUT_LIMIT: u64 = 1_000_000;

fn opt_u64(o: &Object<'_>, key: &str) -> Result<Option<u64>, RelayError> {
    match o.get(key).map(RawValue::get) {
        None | Some("null") => Ok(None),
        Some(raw) => match raw.parse::<u64>() {
            Ok(v) if (1..=MAX_OUTPUT_LIMIT).contains(&v) => Ok(Some(v)),
            _ => Err(RelayError::invalid(format!(
                "{key}: must be an integer between 1 and {MAX_OUTPUT_LIMIT}"
            ))),
        },
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Validates a Chat Completions or Responses body and extracts what scheduling and billing need.
pub fn parse(
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<ParsedBody, RelayError> {
    if body.is_empty() {
        return Err(RelayError::invalid(
            "request body is empty; expected a JSON object",
        ));
    }
    let o = Object::parse(body).map_err(|e| {
        if e.is_data() {
            RelayError::invalid(format!("request body must be a JSON object: {e}"))
        } else {
            RelayError::invalid(format!("malformed JSON in request body: {e}"))
        }
    })?;
    let model = match o.get_as::<serde_json::Value>("model") {
        Some(serde_json::Value::String(m)) if !m.trim().is_empty() => m,
        Some(_) => return Err(RelayError::invalid("model: must be a non-empty string")),
        None => return Err(RelayError::invalid("model: field required")),
    };
    let stream = match o.get("stream").map(RawValue::get) {
        None | Some("null") | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(RelayError::invalid("stream: must be a boolean")),
    };
    let (max_tokens, first, system, include_usage) = match endpoint {
        Endpoint::ChatCompletions => {
            let messages: Vec<&RawValue> = o
                .get("messages")
                .ok_or_else(|| RelayError::invalid("messages: field required"))
                .and_then(|m| {
                    serde_json::from_str(m.get())
                        .map_err(|_| RelayError::invalid("messages: must be an array"))
                })?;
            if messages.is_empty() {
                return Err(RelayError::invalid(
                    "messages: at least one message is required",
                ));
            }
            let per_choice = match opt_u64(&o, "max_completion_tokens")? {
                Some(v) => Some(v),
                None => opt_u64(&o, "max_tokens")?,
            };
            let n = match o.get("n").map(RawValue::get) {
                None | Some("null") => 1,
                Some(raw) => match raw.parse::<u64>() {
                    Ok(v) if (1..=128).contains(&v) => v,
                    _ => {
                        return Err(RelayError::invalid(
                            "n: must be an integer between 1 and 128",
                        ));
                    }
                },
            };
            let include_usage = o
                .get_as::<serde_json::Value>("stream_options")
                .and_then(|s| s.get("include_usage").and_then(|v| v.as_bool()))
                .unwrap_or(false);
            let first = messages.first().map(|m| m.get().to_owned());
            // The first two messages are the stable prefix: usually a system prompt and the
            // opening user turn.
            let system = messages.get(1).map(|m| m.get().to_owned());
            (
                per_choice.map(|v| v * n),
                first,
                system,
                include_usage || !stream,
            )
        }
        _ => {
            if let Some(input) = o.get("input") {
                let t = input.get().trim_start();
                if !(t.starts_with('"') || t.starts_with('[')) {
                    return Err(RelayError::invalid("input: must be a string or an array"));
                }
            }
            let first = o.get("input").map(|i| {
                serde_json::from_str::<Vec<&RawValue>>(i.get())
                    .ok()
                    .and_then(|v| v.first().map(|x| x.get().to_owned()))
                    .unwrap_or_else(|| i.get().to_owned())
            });
            let instructions = o.get("instructions").map(|i| i.get().to_owned());
            (opt_u64(&o, "max_output_tokens")?, first, instructions, true)
        }
    };
    // Codex sends its conversation as headers; the Responses API names a cache key.
    let session = header(headers, "session_id")
        .or_else(|| header(headers, "conversation_id"))
        .map(|s| format!("s:{s}"))
        .or_else(|| {
            o.get_as::<String>("prompt_cache_key")
                .filter(|k| !k.is_empty())
                .map(|k| format!("k:{k}"))
        })
        .or_else(|| prefix_hash(system.as_deref(), first.as_deref()));
    Ok(ParsedBody {
        model,
        stream,
        max_tokens,
        session,
        cache_ttl: None,
        include_usage,
    })
}

/// The body for one account: the mapped model, `stream_options.include_usage` forced on a Chat
/// stream (so the meter always gets usage), `store: false` for the Codex backend (which keeps
/// nothing). `None` when nothing changes.
pub fn upstream_body(
    endpoint: Endpoint,
    body: &[u8],
    upstream_model: Option<&str>,
    stream: bool,
    codex_backend: bool,
) -> Result<Option<Bytes>, RelayError> {
    let force_usage = endpoint == Endpoint::ChatCompletions && stream;
    let store_false = endpoint == Endpoint::Responses && codex_backend;
    // The ChatGPT backend only streams: a non-stream request is streamed upstream and collected
    // back into one response object ([`collect_responses_sse`]).
    let force_stream = store_false && !stream;
    if upstream_model.is_none() && !force_usage && !store_false {
        return Ok(None);
    }
    let mut o = Object::parse(body)
        .map_err(|e| RelayError::invalid(format!("malformed JSON in request body: {e}")))?;
    if let Some(m) = upstream_model {
        o.set("model", &m);
    }
    if force_usage {
        let mut opts = o
            .get_as::<serde_json::Map<String, serde_json::Value>>("stream_options")
            .unwrap_or_default();
        if opts.get("include_usage") == Some(&serde_json::Value::Bool(true))
            && upstream_model.is_none()
            && !store_false
        {
            return Ok(None);
        }
        opts.insert("include_usage".into(), serde_json::Value::Bool(true));
        o.set("stream_options", &opts);
    }
    if store_false {
        o.set("store", &false);
    }
    if force_stream {
        o.set("stream", &true);
    }
    Ok(Some(Bytes::from(o.to_vec())))
}

/// Copies the whitelisted client headers.
pub fn upstream_headers(client: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(FORWARDED_HEADERS.len() + 4);
    for name in FORWARDED_HEADERS {
        if let Some(v) = client.get(*name) {
            out.insert(HeaderName::from_static(name), v.clone());
        }
    }
    out.entry(http::header::CONTENT_TYPE)
        .or_insert(http::HeaderValue::from_static("application/json"));
    out
}

/// A whole Responses SSE stream collected into the response object of its terminal event
/// (`response.completed`, `response.incomplete`, `response.failed`): what a non-stream client
/// expects. Without a terminal event, an OpenAI error body.
pub fn collect_responses_sse(sse: &[u8]) -> Option<Vec<u8>> {
    #[derive(serde::Deserialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        kind: Option<String>,
        #[serde(borrow)]
        response: Option<&'a RawValue>,
    }
    let text = String::from_utf8_lossy(sse)
        .replace("\r\n", "\n")
        .replace('\r', "\n");
    let mut found: Option<Vec<u8>> = None;
    for event in text.split("\n\n") {
        let Some(data) = super::reframe::event_data(event.as_bytes()) else {
            continue;
        };
        let Ok(e) = serde_json::from_slice::<Event<'_>>(&data) else {
            continue;
        };
        let terminal = matches!(
            e.kind.as_deref(),
            Some("response.completed" | "response.incomplete" | "response.failed")
        );
        if let (true, Some(r)) = (terminal, e.response) {
            found = Some(r.get().as_bytes().to_vec());
        }
    }
    Some(found.unwrap_or_else(|| {
        br#"{"error":{"message":"the upstream stream ended before the response was complete","type":"server_error","param":null,"code":null}}"#
            .to_vec()
    }))
}

/// `GET /v1/models` in OpenAI's list shape.
pub fn models_listing(ids: &[String]) -> Bytes {
    let data: Vec<_> = ids
        .iter()
        .map(|id| serde_json::json!({"id": id, "object": "model", "created": 1_735_689_600, "owned_by": "openai"}))
        .collect();
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({"object": "list", "data": data}))
            .expect("static JSON shape"),
    )
}

/// For a client that did not ask for usage: the Chat chunk with `choices: []` and a `usage`
/// object becomes nothing (an empty replacement), every other event is kept.
pub fn drop_usage_chunk(event: &[u8]) -> Option<Bytes> {
    if !has_object_key(event, "usage") {
        return None;
    }
    let data = super::reframe::event_data(event)?;
    #[derive(serde::Deserialize)]
    struct Chunk<'a> {
        #[serde(borrow)]
        choices: Option<Vec<&'a RawValue>>,
        usage: Option<serde_json::Value>,
    }
    let c: Chunk<'_> = serde_json::from_slice(&data).ok()?;
    let usage_only =
        c.choices.is_none_or(|c| c.is_empty()) && c.usage.is_some_and(|u| u.is_object());
    usage_only.then(Bytes::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h() -> HeaderMap {
        HeaderMap::new()
    }

    #[test]
    fn chat_parse() {
        let b = br#"{"model":"gpt-4o","stream":true,"max_completion_tokens":100,"n":2,"messages":[{"role":"system","content":"s"},{"role":"user","content":"hi"}]}"#;
        let p = parse(Endpoint::ChatCompletions, &h(), b).unwrap();
        assert_eq!(p.model, "gpt-4o");
        assert!(p.stream && !p.include_usage);
        assert_eq!(p.max_tokens, Some(200));
        assert!(p.session.unwrap().starts_with('h'));
        let b = br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}],"prompt_cache_key":"pk"}"#;
        let p = parse(Endpoint::ChatCompletions, &h(), b).unwrap();
        assert!(p.include_usage);
        assert_eq!(p.max_tokens, None);
        assert_eq!(p.session.as_deref(), Some("k:pk"));
        let mut hs = h();
        hs.insert("session_id", "abc".parse().unwrap());
        assert_eq!(
            parse(Endpoint::ChatCompletions, &hs, b)
                .unwrap()
                .session
                .as_deref(),
            Some("s:abc")
        );
    }

    #[test]
    fn rejects_bad_bodies() {
        let cases: &[(Endpoint, &[u8], &str)] = &[
            (Endpoint::ChatCompletions, b"", "empty"),
            (Endpoint::ChatCompletions, b"{x", "malformed JSON"),
            (Endpoint::ChatCompletions, b"[]", "JSON object"),
            (
                Endpoint::ChatCompletions,
                br#"{"messages":[{}]}"#,
                "model: field required",
            ),
            (
                Endpoint::ChatCompletions,
                br#"{"model":"m"}"#,
                "messages: field required",
            ),
            (
                Endpoint::ChatCompletions,
                br#"{"model":"m","messages":[]}"#,
                "at least one",
            ),
            (
                Endpoint::ChatCompletions,
                br#"{"model":"m","messages":[{}],"max_tokens":0}"#,
                "max_tokens: must be",
            ),
            (
                Endpoint::ChatCompletions,
                br#"{"model":"m","messages":[{}],"stream":1}"#,
                "stream: must be",
            ),
            (
                Endpoint::Responses,
                br#"{"model":"m","input":5}"#,
                "input: must be",
            ),
            (
                Endpoint::Responses,
                br#"{"model":"m","max_output_tokens":-1}"#,
                "max_output_tokens",
            ),
        ];
        for (e, body, want) in cases {
            let err = parse(*e, &h(), body).unwrap_err();
            assert!(err.message.contains(want), "{want}: {}", err.message);
        }
    }

    #[test]
    fn responses_parse() {
        let b = br#"{"model":"gpt-5","instructions":"be brief","input":[{"role":"user","content":"hi"}],"stream":true,"max_output_tokens":500}"#;
        let p = parse(Endpoint::Responses, &h(), b).unwrap();
        assert!(p.stream && p.include_usage);
        assert_eq!(p.max_tokens, Some(500));
        assert!(p.session.is_some());
    }

    #[test]
    fn body_edits() {
        let b = br#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let out = upstream_body(Endpoint::ChatCompletions, b, Some("gpt-4.1"), true, false)
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "gpt-4.1");
        assert_eq!(v["stream_options"]["include_usage"], true);
        let b = br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
        assert!(
            upstream_body(Endpoint::ChatCompletions, b, None, true, false)
                .unwrap()
                .is_none()
        );
        let b = br#"{"model":"gpt-5","store":true,"input":"x"}"#;
        let out = upstream_body(Endpoint::Responses, b, None, false, true)
            .unwrap()
            .unwrap();
        assert_eq!(
            &out[..],
            br#"{"model":"gpt-5","store":false,"input":"x","stream":true}"#
        );
        assert!(
            upstream_body(Endpoint::Responses, b, None, false, false)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn responses_stream_collected() {
        let sse = b"event: response.created\r\ndata: {\"type\":\"response.created\",\"response\":{\"status\":\"in_progress\"}}\r\n\r\nevent: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"status\":\"completed\",\"usage\":{\"input_tokens\":1}}}\n\n";
        assert_eq!(
            collect_responses_sse(sse).unwrap(),
            br#"{"status":"completed","usage":{"input_tokens":1}}"#
        );
        let cut = collect_responses_sse(b"event: response.created\ndata: {}\n\n").unwrap();
        assert!(serde_json::from_slice::<serde_json::Value>(&cut).unwrap()["error"].is_object());
    }

    #[test]
    fn usage_chunk_dropped_only_when_usage_only() {
        assert_eq!(
            drop_usage_chunk(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n"),
            Some(Bytes::new())
        );
        assert_eq!(
            drop_usage_chunk(
                b"data: {\"choices\":[{\"delta\":{}}],\"usage\":{\"prompt_tokens\":1}}\n\n"
            ),
            None
        );
        assert_eq!(
            drop_usage_chunk(b"data: {\"choices\":[],\"usage\":null}\n\n"),
            None
        );
        assert_eq!(drop_usage_chunk(b"data: [DONE]\n\n"), None);
    }
}
