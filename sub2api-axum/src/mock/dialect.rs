//! What the OpenAI, Codex and Gemini routes of the mock share: the order of work (record ->
//! `x-mock-fault` -> gate -> first-byte delay), responses that carry the in-flight guard, each
//! vendor's error shape, its rate-limit signals, and the usage rule mapped onto its fields.
//!
//! The usage rule is the Anthropic one ([`super::usage`]): total input `ceil(body_bytes / 4)`,
//! output = words generated; a [`Knob::Usage`](super::Knob::Usage) override is reported in each
//! vendor's own fields (cache reads as `cached_tokens` / `cachedContentTokenCount`, a quarter of
//! the output as Gemini `thoughtsTokenCount`), so a test computes the bill the same way for every
//! dialect: `input_tokens` uncached input, `cache_read_input_tokens` reads, `output_tokens` output.

use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use serde_json::{Value, json};

use super::body::TrackedBody;
use super::knobs::{Fault, HeaderKnobs, Plan, parse_fault_header};
use super::messages::FAULT_HEADER;
use super::sse::Ending;
use super::state::{ArrivingRequest, InFlightGuard, MockState};
use super::usage::{Usage, tokens_for_bytes};

/// Which vendor's shapes a route answers in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    OpenAi,
    /// The ChatGPT backend (`/backend-api/codex/responses`): OpenAI shapes, Codex limits.
    Codex,
    Gemini,
}

/// A request past its record, fault header, gate and first-byte delay.
pub(crate) struct Arrived {
    pub guard: InFlightGuard,
    pub key: Option<String>,
    pub header: Option<HeaderKnobs>,
    pub plan: Plan,
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn arrive(
    state: &MockState,
    shape: Shape,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    key: Option<String>,
    model: Option<String>,
    stream: bool,
) -> Result<Arrived, Response> {
    let guard = state.begin(ArrivingRequest {
        method,
        uri,
        headers,
        body,
        api_key: key.clone(),
        model,
        stream,
    });
    let header = match headers.get(FAULT_HEADER) {
        None => None,
        Some(v) => match v
            .to_str()
            .map_err(|_| "not visible ASCII".to_owned())
            .and_then(parse_fault_header)
        {
            Ok(k) => Some(k),
            Err(e) => {
                return Err(error(
                    guard,
                    shape,
                    StatusCode::BAD_REQUEST,
                    &format!("{FAULT_HEADER}: {e}"),
                ));
            }
        },
    };
    let key_str = key.as_deref().unwrap_or("");
    let plan = state.plan(key_str, header.as_ref());
    state.pass_gates(key_str).await;
    if !plan.first_byte_delay.is_zero() {
        tokio::time::sleep(plan.first_byte_delay).await;
    }
    Ok(Arrived {
        guard,
        key,
        header,
        plan,
    })
}

/// A response carrying the request's in-flight guard.
pub(crate) fn respond(
    guard: InFlightGuard,
    status: StatusCode,
    content_type: &'static str,
    extra: HeaderMap,
    body: Body,
) -> Response {
    guard.set_status(status.as_u16());
    let mut response = Response::new(Body::new(TrackedBody::new(body, guard)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().extend(extra);
    response
}

pub(crate) fn json_reply(guard: InFlightGuard, v: &Value) -> Response {
    respond(
        guard,
        StatusCode::OK,
        "application/json",
        HeaderMap::new(),
        Body::from(v.to_string()),
    )
}

fn google_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    }
}

fn openai_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 404 => "invalid_request_error",
        401 => "invalid_request_error",
        429 => "rate_limit_exceeded",
        _ => "server_error",
    }
}

/// The vendor's error body for a status.
pub(crate) fn error_json(shape: Shape, status: StatusCode, message: &str) -> Value {
    match shape {
        Shape::Gemini => {
            json!({"error": {"code": status.as_u16(), "message": message, "status": google_status(status)}})
        }
        Shape::OpenAi | Shape::Codex => {
            json!({"error": {"message": message, "type": openai_type(status), "param": null, "code": null}})
        }
    }
}

pub(crate) fn error(
    guard: InFlightGuard,
    shape: Shape,
    status: StatusCode,
    message: &str,
) -> Response {
    error_with(
        guard,
        shape,
        status,
        error_json(shape, status, message),
        HeaderMap::new(),
    )
}

fn error_with(
    guard: InFlightGuard,
    _shape: Shape,
    status: StatusCode,
    body: Value,
    extra: HeaderMap,
) -> Response {
    respond(
        guard,
        status,
        "application/json",
        extra,
        Body::from(body.to_string()),
    )
}

fn put(h: &mut HeaderMap, name: &str, value: String) {
    h.insert(
        HeaderName::try_from(name).expect("header name"),
        HeaderValue::try_from(value).expect("header value"),
    );
}

/// Seconds until a rate limit lifts, from a fault.
fn reset_secs(retry_after_secs: Option<u64>, reset_at: Option<SystemTime>) -> Option<u64> {
    retry_after_secs.or_else(|| {
        reset_at.map(|at| {
            let d = at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            d.as_secs() + u64::from(d.subsec_nanos() > 0)
        })
    })
}

/// The request's fault, consumed: `Ok(ending)` to answer (maybe cut), `Err(response)` when the
/// fault is the whole answer. Each vendor signals a rate limit its own way: OpenAI with
/// `x-ratelimit-*` durations, Codex with `usage_limit_reached` / `resets_in_seconds` and the
/// `x-codex-*` windows, Gemini with `RetryInfo.retryDelay`; none sends `retry-after`, so the relay
/// must read the vendor's own signal.
pub(crate) fn take_fault(
    state: &MockState,
    a: Arrived,
    shape: Shape,
    stream: bool,
) -> Result<(InFlightGuard, Plan, Ending), Response> {
    let key = a.key.as_deref().unwrap_or("");
    let fault = state.take_fault(key, a.header.as_ref());
    let guard = a.guard;
    let ending = match fault {
        None => Ending::Normal,
        Some(Fault::RateLimited {
            retry_after_secs,
            reset_at,
        }) => {
            let secs = reset_secs(retry_after_secs, reset_at);
            let mut h = HeaderMap::new();
            let body = match (shape, secs) {
                (Shape::Codex, Some(s)) => {
                    put(&mut h, "x-codex-primary-used-percent", "100".into());
                    put(&mut h, "x-codex-primary-reset-after-seconds", s.to_string());
                    put(&mut h, "x-codex-primary-window-minutes", "300".into());
                    put(&mut h, "x-codex-secondary-used-percent", "35".into());
                    put(
                        &mut h,
                        "x-codex-secondary-reset-after-seconds",
                        (s + 86_400).to_string(),
                    );
                    json!({"error": {"type": "usage_limit_reached", "message": "The usage limit has been reached", "plan_type": "plus", "resets_in_seconds": s}})
                }
                (Shape::Gemini, Some(s)) => json!({"error": {
                    "code": 429,
                    "message": "Resource has been exhausted (e.g. check quota).",
                    "status": "RESOURCE_EXHAUSTED",
                    "details": [
                        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": "generate_content_requests"}]},
                        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{s}s")}
                    ]
                }}),
                (Shape::OpenAi, Some(s)) => {
                    put(&mut h, "x-ratelimit-limit-requests", "500".into());
                    put(&mut h, "x-ratelimit-remaining-requests", "0".into());
                    put(&mut h, "x-ratelimit-reset-requests", format!("{s}s"));
                    error_json(
                        shape,
                        StatusCode::TOO_MANY_REQUESTS,
                        "Rate limit reached for requests (mock vendor)",
                    )
                }
                (_, None) => error_json(
                    shape,
                    StatusCode::TOO_MANY_REQUESTS,
                    "Rate limited (mock vendor)",
                ),
            };
            return Err(error_with(
                guard,
                shape,
                StatusCode::TOO_MANY_REQUESTS,
                body,
                h,
            ));
        }
        Some(Fault::Overloaded) => {
            return Err(error(
                guard,
                shape,
                StatusCode::SERVICE_UNAVAILABLE,
                "The server is overloaded",
            ));
        }
        Some(Fault::Unauthorized) => {
            return Err(error(
                guard,
                shape,
                StatusCode::UNAUTHORIZED,
                "Invalid credentials (mock vendor)",
            ));
        }
        Some(Fault::ServerError) => {
            return Err(error(
                guard,
                shape,
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error",
            ));
        }
        Some(Fault::CutAfter(n)) => Ending::CutAfter(n),
        Some(Fault::ErrorEventAfter(_)) if !stream => {
            return Err(error(
                guard,
                shape,
                StatusCode::SERVICE_UNAVAILABLE,
                "The server is overloaded",
            ));
        }
        Some(Fault::ErrorEventAfter(n)) => Ending::ErrorAfter(n),
    };
    Ok((guard, a.plan, ending))
}

/// The usage a reply reports: the override, or the rule.
pub(crate) fn usage_for(plan: &Plan, body_len: usize, words: u64) -> Usage {
    plan.usage.clone().unwrap_or_else(|| Usage {
        input_tokens: tokens_for_bytes(body_len),
        output_tokens: words,
        ..Usage::default()
    })
}

/// Chat Completions `usage`.
pub(crate) fn chat_usage_json(u: &Usage) -> Value {
    let mut details = json!({"cached_tokens": u.cache_read_input_tokens, "audio_tokens": 0});
    if u.cache_creation_input_tokens > 0 {
        details["cache_write_tokens"] = json!(u.cache_creation_input_tokens);
    }
    let prompt = u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens;
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": u.output_tokens,
        "total_tokens": prompt + u.output_tokens,
        "prompt_tokens_details": details,
        "completion_tokens_details": {"reasoning_tokens": u.output_tokens / 4, "audio_tokens": 0},
    })
}

/// Responses `usage`.
pub(crate) fn responses_usage_json(u: &Usage) -> Value {
    let input = u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens;
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": u.cache_read_input_tokens},
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": u.output_tokens / 4},
        "total_tokens": input + u.output_tokens,
    })
}

/// Gemini `usageMetadata` with `output` tokens generated so far (a quarter of them thoughts).
pub(crate) fn gemini_usage_json(u: &Usage, output: u64) -> Value {
    let prompt = u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens;
    let thoughts = output / 4;
    let mut v = json!({
        "promptTokenCount": prompt,
        "candidatesTokenCount": output - thoughts,
        "totalTokenCount": prompt + output,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    });
    if thoughts > 0 {
        v["thoughtsTokenCount"] = json!(thoughts);
    }
    if u.cache_read_input_tokens > 0 {
        v["cachedContentTokenCount"] = json!(u.cache_read_input_tokens);
    }
    v
}

/// `data: JSON\n\n`.
pub(crate) fn data_frame(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// `event: NAME\ndata: JSON\n\n`.
pub(crate) fn named_frame(name: &str, v: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {v}\n\n"))
}

/// The Bearer token of a request, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .then(|| token.trim().to_owned())
}

/// Streams `frames` with the fault's ending; `error_frame` is the vendor's in-band error.
pub(crate) fn stream_body(
    mut frames: Vec<Bytes>,
    ending: Ending,
    delay: Duration,
    error_frame: Bytes,
) -> Body {
    match ending {
        Ending::ErrorAfter(n) => {
            frames.truncate(n);
            frames.push(error_frame);
            super::sse::body(frames, Ending::Normal, delay)
        }
        other => super::sse::body(frames, other, delay),
    }
}
