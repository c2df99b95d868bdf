//! Route handlers: `/v1/messages`, `/v1/messages/count_tokens`, `/v1/models` and a 404 fallback.
//!
//! Order of work on `/v1/messages`, chosen so each knob means one thing:
//! record (in flight from here) -> parse `x-mock-fault` -> gate -> first-byte delay -> auth ->
//! body validation -> fault (a `FailTimes` count is only spent by valid requests) -> reply.
//! Knobs and gates apply to `/v1/messages` only; the other routes always answer.

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use serde_json::{Value, json};

use super::body::TrackedBody;
use super::knobs::{Fault, HeaderKnobs, parse_fault_header, rfc3339, unix_secs};
use super::sse::{self, Ending, Reply};
use super::state::{ArrivingRequest, InFlightGuard, MockState};
use super::usage::{estimate_usage, tokens_for_bytes};

/// The per-request fault header (see [`knobs`](super::knobs) for its syntax).
pub const FAULT_HEADER: &str = "x-mock-fault";

/// Anthropic's 529 has no constant in `http`.
fn overloaded_status() -> StatusCode {
    StatusCode::from_u16(529).expect("529 is a valid status")
}

/// The caller's credential: `x-api-key`, else the `Authorization: Bearer` token.
pub fn api_key(headers: &HeaderMap) -> Option<String> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok())
        && !key.is_empty()
    {
        return Some(key.to_owned());
    }
    let auth = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

/// Wraps `body` with the request's guard and sets the head.
fn respond(
    guard: InFlightGuard,
    status: StatusCode,
    content_type: &'static str,
    extra: HeaderMap,
    body: Body,
) -> Response {
    guard.set_status(status.as_u16());
    let request_id = HeaderValue::from_str(guard.request_id()).expect("request id is ASCII");
    let mut response = Response::new(Body::new(TrackedBody::new(body, guard)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(HeaderName::from_static("request-id"), request_id);
    headers.extend(extra);
    response
}

/// Anthropic's error shape: `{"type":"error","error":{"type":T,"message":M},"request_id":..}`.
fn error(
    guard: InFlightGuard,
    status: StatusCode,
    kind: &str,
    message: &str,
    extra: HeaderMap,
) -> Response {
    let body = json!({
        "type": "error",
        "error": { "type": kind, "message": message },
        "request_id": guard.request_id(),
    });
    respond(
        guard,
        status,
        "application/json",
        extra,
        Body::from(body.to_string()),
    )
}

fn invalid(guard: InFlightGuard, message: &str) -> Response {
    error(
        guard,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        message,
        HeaderMap::new(),
    )
}

fn missing_key(guard: InFlightGuard) -> Response {
    error(
        guard,
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        "x-api-key header is required",
        HeaderMap::new(),
    )
}

/// A request body that passed validation.
struct Valid {
    json: Value,
    model: String,
    max_tokens: u64,
    stream: bool,
}

/// Best-effort `model` and `stream` for the record, before validation.
fn peek(json: Option<&Value>) -> (Option<String>, bool) {
    let model = json
        .and_then(|j| j.get("model"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let stream = json.and_then(|j| j.get("stream")).and_then(Value::as_bool) == Some(true);
    (model, stream)
}

/// Anthropic's required fields; `need_max_tokens` is false for count_tokens.
fn validate(
    parsed: Result<Value, serde_json::Error>,
    need_max_tokens: bool,
) -> Result<Valid, String> {
    let json = parsed.map_err(|e| format!("There was an error parsing the body: {e}"))?;
    if !json.is_object() {
        return Err("request body must be a JSON object".to_owned());
    }
    let model = match json.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(_) => return Err("model: Input should be a valid string".to_owned()),
        None => return Err("model: Field required".to_owned()),
    };
    let max_tokens = match json.get("max_tokens") {
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => n,
            _ => return Err("max_tokens: Input should be greater than or equal to 1".to_owned()),
        },
        None if need_max_tokens => return Err("max_tokens: Field required".to_owned()),
        None => 0,
    };
    match json.get("messages") {
        Some(Value::Array(list)) => {
            // Anthropic checks every message's shape; the relay deliberately does not (it is the
            // vendor's rule to enforce), so this is where a vendor-side 400 comes from in tests.
            for (i, m) in list.iter().enumerate() {
                let role = m.get("role").and_then(Value::as_str);
                if !matches!(role, Some("user" | "assistant")) || m.get("content").is_none() {
                    return Err(format!(
                        "messages.{i}: Input should be a valid message with role and content"
                    ));
                }
            }
        }
        Some(_) => return Err("messages: Input should be a valid list".to_owned()),
        None => return Err("messages: Field required".to_owned()),
    }
    let stream = json.get("stream").and_then(Value::as_bool) == Some(true);
    Ok(Valid {
        json,
        model,
        max_tokens,
        stream,
    })
}

/// Starts the record of any request.
fn arrive(
    state: &MockState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    parsed: Option<&Value>,
) -> InFlightGuard {
    let (model, stream) = peek(parsed);
    state.begin(ArrivingRequest {
        method,
        uri,
        headers,
        body,
        api_key: api_key(headers),
        model,
        stream,
    })
}

/// The 429 response headers for a rate-limit fault.
fn rate_limit_headers(
    retry_after_secs: Option<u64>,
    reset_at: Option<std::time::SystemTime>,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut put = |name: &str, value: String| {
        headers.insert(
            HeaderName::try_from(name).expect("static header name"),
            HeaderValue::try_from(value).expect("ASCII header value"),
        );
    };
    if let Some(secs) = retry_after_secs {
        put(RETRY_AFTER.as_str(), secs.to_string());
    }
    if let Some(at) = reset_at {
        let stamp = rfc3339(at);
        for kind in ["requests", "tokens", "input-tokens", "output-tokens"] {
            put(
                &format!("anthropic-ratelimit-{kind}-limit"),
                "1000".to_owned(),
            );
            put(
                &format!("anthropic-ratelimit-{kind}-remaining"),
                "0".to_owned(),
            );
            put(&format!("anthropic-ratelimit-{kind}-reset"), stamp.clone());
        }
        put("anthropic-ratelimit-unified-status", "rejected".to_owned());
        put(
            "anthropic-ratelimit-unified-reset",
            unix_secs(at).to_string(),
        );
    }
    headers
}

/// `POST /v1/messages` (any query, e.g. `?beta=true`).
pub(crate) async fn messages(
    State(state): State<MockState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed = serde_json::from_slice::<Value>(&body);
    let guard = arrive(&state, &method, &uri, &headers, &body, parsed.as_ref().ok());
    let key = api_key(&headers);
    let key_str = key.as_deref().unwrap_or("");

    let header_knobs: Option<HeaderKnobs> = match headers.get(FAULT_HEADER) {
        None => None,
        Some(value) => {
            let parsed = value
                .to_str()
                .map_err(|_| "not visible ASCII".to_owned())
                .and_then(parse_fault_header);
            match parsed {
                Ok(knobs) => Some(knobs),
                Err(e) => return invalid(guard, &format!("{FAULT_HEADER}: {e}")),
            }
        }
    };
    let plan = state.plan(key_str, header_knobs.as_ref());

    state.pass_gates(key_str).await;
    if !plan.first_byte_delay.is_zero() {
        tokio::time::sleep(plan.first_byte_delay).await;
    }
    if key.is_none() {
        return missing_key(guard);
    }
    let request = match validate(parsed, true) {
        Ok(r) => r,
        Err(message) => return invalid(guard, &message),
    };

    let ending = match state.take_fault(key_str, header_knobs.as_ref()) {
        None => Ending::Normal,
        Some(Fault::RateLimited {
            retry_after_secs,
            reset_at,
        }) => {
            return error(
                guard,
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "This request would exceed your rate limit (mock vendor).",
                rate_limit_headers(retry_after_secs, reset_at),
            );
        }
        Some(Fault::Overloaded) => return overloaded(guard),
        Some(Fault::Unauthorized) => {
            return error(
                guard,
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid x-api-key",
                HeaderMap::new(),
            );
        }
        Some(Fault::ServerError) => {
            return error(
                guard,
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "Internal server error",
                HeaderMap::new(),
            );
        }
        Some(Fault::CutAfter(n)) => Ending::CutAfter(n),
        Some(Fault::ErrorEventAfter(_)) if !request.stream => return overloaded(guard),
        Some(Fault::ErrorEventAfter(n)) => Ending::ErrorAfter(n),
    };

    let words = plan
        .reply_words
        .min(usize::try_from(request.max_tokens).unwrap_or(usize::MAX));
    let stop_reason = if (request.max_tokens as u128) < plan.reply_words as u128 {
        "max_tokens"
    } else {
        "end_turn"
    };
    let usage = plan
        .usage
        .clone()
        .unwrap_or_else(|| estimate_usage(body.len(), &request.json, words as u64));
    guard.set_usage(usage.clone());
    let id = format!("msg_mock_{}", &guard.request_id()["req_mock_".len()..]);
    let pieces = sse::pieces(words);
    let reply = Reply {
        id: &id,
        model: &request.model,
        pieces: &pieces,
        stop_reason,
        usage: &usage,
        full_delta_usage: plan.full_delta_usage,
    };

    if request.stream {
        let mut extra = HeaderMap::new();
        extra.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        let body = sse::body(reply.frames(), ending, plan.event_delay);
        return respond(guard, StatusCode::OK, "text/event-stream", extra, body);
    }
    let bytes = Bytes::from(reply.message_json().to_string());
    let body = match ending {
        Ending::CutAfter(_) => sse::truncated(bytes),
        _ => Body::from(bytes),
    };
    respond(
        guard,
        StatusCode::OK,
        "application/json",
        HeaderMap::new(),
        body,
    )
}

fn overloaded(guard: InFlightGuard) -> Response {
    error(
        guard,
        overloaded_status(),
        "overloaded_error",
        "Overloaded",
        HeaderMap::new(),
    )
}

/// `POST /v1/messages/count_tokens`: `{"input_tokens": ceil(body_bytes / 4)}`, the same total the
/// messages route would meter for this body.
pub(crate) async fn count_tokens(
    State(state): State<MockState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed = serde_json::from_slice::<Value>(&body);
    let guard = arrive(&state, &method, &uri, &headers, &body, parsed.as_ref().ok());
    if api_key(&headers).is_none() {
        return missing_key(guard);
    }
    if let Err(message) = validate(parsed, false) {
        return invalid(guard, &message);
    }
    let reply = json!({ "input_tokens": tokens_for_bytes(body.len()) });
    respond(
        guard,
        StatusCode::OK,
        "application/json",
        HeaderMap::new(),
        Body::from(reply.to_string()),
    )
}

/// Models the mock lists; any model name is accepted by `/v1/messages` anyway.
pub const MODELS: [(&str, &str); 4] = [
    ("claude-opus-4-1-20250805", "Claude Opus 4.1"),
    ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5"),
    ("claude-sonnet-4-20250514", "Claude Sonnet 4"),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5"),
];

/// `GET /v1/models` in Anthropic's list shape.
pub(crate) async fn models(
    State(state): State<MockState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let guard = arrive(&state, &method, &uri, &headers, &Bytes::new(), None);
    if api_key(&headers).is_none() {
        return missing_key(guard);
    }
    let data: Vec<Value> = MODELS
        .iter()
        .map(|(id, name)| {
            json!({
                "type": "model",
                "id": id,
                "display_name": name,
                "created_at": "2025-01-01T00:00:00Z",
            })
        })
        .collect();
    let reply = json!({
        "data": data,
        "has_more": false,
        "first_id": MODELS[0].0,
        "last_id": MODELS[MODELS.len() - 1].0,
    });
    respond(
        guard,
        StatusCode::OK,
        "application/json",
        HeaderMap::new(),
        Body::from(reply.to_string()),
    )
}

/// Anything else: recorded, then 404 `not_found_error`.
pub(crate) async fn not_found(
    State(state): State<MockState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let guard = arrive(&state, &method, &uri, &headers, &body, None);
    let message = format!("{method} {} not found", uri.path());
    error(
        guard,
        StatusCode::NOT_FOUND,
        "not_found_error",
        &message,
        HeaderMap::new(),
    )
}
