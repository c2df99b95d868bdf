//! The Gemini API as the relay needs it (PROTOCOLS.md, "Gemini"): routes with the model in the
//! path, body validation, the upstream URL per account (API key: the same path with the mapped
//! model; Code Assist OAuth: `v1internal:{method}`), and Code Assist's request envelope
//! (`{model, project, request}`) and response envelope (`{response}`).

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use serde_json::value::RawValue;

use super::json::Object;
use super::{ParsedBody, prefix_hash};
use crate::error::RelayError;
use crate::request::Endpoint;

/// Client headers that may go upstream (never `x-goog-api-key`, `authorization` or the `key`
/// query parameter: those are the client's relay key).
pub const FORWARDED_HEADERS: &[&str] =
    &["content-type", "accept", "user-agent", "x-goog-api-client"];

/// Upstream response headers a client may see.
pub const RETURNED_HEADERS: &[&str] = &["content-type", "retry-after", "cache-control"];

/// A Gemini route: `/{v1beta|v1}/models/{model}:{method}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub endpoint: Endpoint,
    /// `v1beta` or `v1`.
    pub version: &'static str,
    pub model: String,
}

/// Parses a Gemini path; `None` for anything else.
pub fn route(path: &str) -> Option<Route> {
    let (version, rest) = if let Some(r) = path.strip_prefix("/v1beta/models/") {
        ("v1beta", r)
    } else if let Some(r) = path.strip_prefix("/v1/models/") {
        ("v1", r)
    } else {
        return None;
    };
    let (model, method) = rest.rsplit_once(':')?;
    let endpoint = match method {
        "generateContent" => Endpoint::GenerateContent,
        "streamGenerateContent" => Endpoint::StreamGenerateContent,
        "countTokens" => Endpoint::GeminiCountTokens,
        _ => return None,
    };
    let model = model.strip_prefix("models/").unwrap_or(model);
    if model.is_empty() || model.contains('/') {
        return None;
    }
    Some(Route {
        endpoint,
        version,
        model: model.to_owned(),
    })
}

/// Validates a generateContent / countTokens body (model from the path).
pub fn parse(route: &Route, body: &[u8]) -> Result<ParsedBody, RelayError> {
    if body.is_empty() {
        return Err(RelayError::invalid(
            "request body is empty; expected a JSON object",
        ));
    }
    let o = Object::parse(body).map_err(|e| {
        if e.is_data() {
            RelayError::invalid(format!(
                "Invalid JSON payload: the request body must be a JSON object ({e})"
            ))
        } else {
            RelayError::invalid(format!("Invalid JSON payload received: {e}"))
        }
    })?;
    let contents = match o.get("contents") {
        Some(c) => Some(
            serde_json::from_str::<Vec<&RawValue>>(c.get()).map_err(|_| {
                RelayError::invalid("Invalid value at 'contents': must be a list of Content")
            })?,
        ),
        None => None,
    };
    let counting = route.endpoint == Endpoint::GeminiCountTokens;
    match &contents {
        None if counting && o.contains("generateContentRequest") => {}
        None => {
            return Err(RelayError::invalid(
                "* GenerateContentRequest.contents: contents is not specified",
            ));
        }
        Some(c) if c.is_empty() && !counting => {
            return Err(RelayError::invalid(
                "* GenerateContentRequest.contents: contents is not specified",
            ));
        }
        Some(_) => {}
    }
    let config = o
        .get_as::<serde_json::Value>("generationConfig")
        .unwrap_or_default();
    let max = match config.get("maxOutputTokens") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=1_000_000).contains(&n) => Some(n),
            _ => {
                return Err(RelayError::invalid(
                    "Invalid value at 'generation_config.max_output_tokens'",
                ));
            }
        },
    };
    let candidates = config
        .get("candidateCount")
        .and_then(|v| v.as_u64())
        .unwrap_or(1)
        .clamp(1, 8);
    let system = o.get("systemInstruction").map(|s| s.get().to_owned());
    let first = contents
        .as_ref()
        .and_then(|c| c.first())
        .map(|f| f.get().to_owned());
    Ok(ParsedBody {
        model: route.model.clone(),
        stream: route.endpoint == Endpoint::StreamGenerateContent,
        max_tokens: max.map(|m| m * candidates),
        session: prefix_hash(system.as_deref(), first.as_deref()),
        cache_ttl: None,
        include_usage: true,
    })
}

/// The query for upstream: the client's parameters minus its key, and `alt=sse` on a stream (the
/// meter reads SSE; the JSON-array stream is never requested).
pub fn upstream_query(client_query: Option<&str>, stream: bool) -> String {
    let mut params: Vec<&str> = client_query
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("key=") && !kv.starts_with("alt="))
        .collect();
    if stream {
        params.push("alt=sse");
    }
    if params.is_empty() {
        String::new()
    } else {
        format!("?{}", params.join("&"))
    }
}

/// `/v1beta/models/{model}:{method}{query}` for an API-key account.
pub fn apikey_path(route: &Route, upstream_model: &str, client_query: Option<&str>) -> String {
    let method = route.endpoint.gemini_method().unwrap_or("generateContent");
    let stream = route.endpoint == Endpoint::StreamGenerateContent;
    format!(
        "/{}/models/{upstream_model}:{method}{}",
        route.version,
        upstream_query(client_query, stream)
    )
}

/// `/v1internal:{method}` for a Code Assist account.
pub fn code_assist_path(endpoint: Endpoint) -> String {
    let method = endpoint.gemini_method().unwrap_or("generateContent");
    let q = if endpoint == Endpoint::StreamGenerateContent {
        "?alt=sse"
    } else {
        ""
    };
    format!("/v1internal:{method}{q}")
}

/// Code Assist's request envelope: `{"model", "project", "request": <the Gemini body>}`
/// (countTokens: `{"request": {"model": "models/..", ...body}}`).
pub fn wrap_code_assist(
    endpoint: Endpoint,
    model: &str,
    project: Option<&str>,
    body: &[u8],
) -> Result<Bytes, RelayError> {
    let raw: &RawValue = serde_json::from_slice(body)
        .map_err(|e| RelayError::invalid(format!("Invalid JSON payload received: {e}")))?;
    if endpoint == Endpoint::GeminiCountTokens {
        let mut inner = Object::parse(body)
            .map_err(|e| RelayError::invalid(format!("Invalid JSON payload received: {e}")))?;
        inner.set_first("model", &format!("models/{model}"));
        let inner = serde_json::value::RawValue::from_string(
            String::from_utf8(inner.to_vec()).expect("JSON is UTF-8"),
        )
        .expect("valid JSON");
        let mut o = Object::parse(b"{}").expect("empty object");
        o.set_raw("request", inner);
        return Ok(Bytes::from(o.to_vec()));
    }
    let mut out = Vec::with_capacity(body.len() + 128);
    out.extend_from_slice(b"{\"model\":");
    serde_json::to_writer(&mut out, model).expect("string");
    if let Some(p) = project {
        out.extend_from_slice(b",\"project\":");
        serde_json::to_writer(&mut out, p).expect("string");
    }
    out.extend_from_slice(b",\"request\":");
    out.extend_from_slice(raw.get().as_bytes());
    out.push(b'}');
    Ok(Bytes::from(out))
}

/// Code Assist's response envelope removed: `{"response": X, ...}` -> `X`. `None` when the
/// payload has no envelope (an error, or already plain).
pub fn unwrap_code_assist(payload: &[u8]) -> Option<Vec<u8>> {
    #[derive(serde::Deserialize)]
    struct Env<'a> {
        #[serde(borrow)]
        response: Option<&'a RawValue>,
    }
    let env: Env<'_> = serde_json::from_slice(payload).ok()?;
    env.response.map(|r| r.get().as_bytes().to_vec())
}

/// `GET /v1beta/models` (and `/v1/models` for a Gemini key) in Google's list shape.
pub fn models_listing(ids: &[String]) -> Bytes {
    let models: Vec<_> = ids
        .iter()
        .map(|id| {
            serde_json::json!({
                "name": format!("models/{id}"),
                "displayName": id,
                "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"],
            })
        })
        .collect();
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({"models": models})).expect("static JSON shape"),
    )
}

/// Copies the whitelisted client headers.
pub fn upstream_headers(client: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(FORWARDED_HEADERS.len() + 2);
    for name in FORWARDED_HEADERS {
        if let Some(v) = client.get(*name) {
            out.insert(HeaderName::from_static(name), v.clone());
        }
    }
    out.entry(http::header::CONTENT_TYPE)
        .or_insert(http::HeaderValue::from_static("application/json"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = route("/v1beta/models/gemini-2.5-flash:streamGenerateContent").unwrap();
        assert_eq!(
            (r.endpoint, r.version, r.model.as_str()),
            (
                Endpoint::StreamGenerateContent,
                "v1beta",
                "gemini-2.5-flash"
            )
        );
        let r = route("/v1/models/gemini-2.5-pro:countTokens").unwrap();
        assert_eq!((r.endpoint, r.version), (Endpoint::GeminiCountTokens, "v1"));
        assert!(route("/v1/models").is_none());
        assert!(route("/v1beta/models/x:embedContent").is_none());
        assert!(route("/v1beta/models/:generateContent").is_none());
    }

    #[test]
    fn parse_and_validate() {
        let r = route("/v1beta/models/gemini-2.5-flash:generateContent").unwrap();
        let p = parse(&r, br#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":64}}"#).unwrap();
        assert_eq!(p.model, "gemini-2.5-flash");
        assert_eq!(p.max_tokens, Some(64));
        assert!(!p.stream);
        for (body, want) in [
            (&b"{bad"[..], "Invalid JSON payload"),
            (b"[]", "Invalid JSON payload"),
            (b"{}", "contents is not specified"),
            (br#"{"contents":{}}"#, "Invalid value at 'contents'"),
            (
                br#"{"contents":[{}],"generationConfig":{"maxOutputTokens":-3}}"#,
                "max_output_tokens",
            ),
        ] {
            let e = parse(&r, body).unwrap_err();
            assert!(e.message.contains(want), "{want}: {}", e.message);
        }
        let c = route("/v1beta/models/gemini-2.5-flash:countTokens").unwrap();
        assert!(parse(&c, br#"{"generateContentRequest":{}}"#).is_ok());
    }

    #[test]
    fn upstream_urls() {
        let r = route("/v1beta/models/gemini-2.5-flash:streamGenerateContent").unwrap();
        assert_eq!(
            apikey_path(&r, "gemini-2.5-pro", Some("alt=sse&key=sk-client")),
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
        );
        let r = route("/v1/models/gemini-2.5-flash:generateContent").unwrap();
        assert_eq!(
            apikey_path(&r, "gemini-2.5-flash", Some("key=x")),
            "/v1/models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(
            code_assist_path(Endpoint::StreamGenerateContent),
            "/v1internal:streamGenerateContent?alt=sse"
        );
    }

    #[test]
    fn code_assist_envelopes() {
        let body = br#"{"contents":[{"parts":[{"text":"hi"}]}]}"#;
        let w = wrap_code_assist(
            Endpoint::GenerateContent,
            "gemini-2.5-pro",
            Some("proj-1"),
            body,
        )
        .unwrap();
        assert_eq!(&w[..], br#"{"model":"gemini-2.5-pro","project":"proj-1","request":{"contents":[{"parts":[{"text":"hi"}]}]}}"#);
        let w =
            wrap_code_assist(Endpoint::GeminiCountTokens, "gemini-2.5-pro", None, body).unwrap();
        assert_eq!(&w[..], br#"{"request":{"model":"models/gemini-2.5-pro","contents":[{"parts":[{"text":"hi"}]}]}}"#);
        assert_eq!(
            unwrap_code_assist(br#"{"response":{"a":1},"traceId":"t"}"#).unwrap(),
            br#"{"a":1}"#
        );
        assert!(unwrap_code_assist(br#"{"error":{}}"#).is_none());
    }
}
