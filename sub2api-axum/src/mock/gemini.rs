//! Gemini routes of the mock: `POST /v1beta/models/{model}:{generateContent|
//! streamGenerateContent|countTokens}` (also under `/v1/models/`), keys via `x-goog-api-key`,
//! `?key=` or Bearer; and Code Assist's `POST /v1internal:{method}` (Gemini CLI accounts),
//! Bearer only, requests wrapped `{model, project, request}` and responses `{response}`.
//!
//! Streams (`alt=sse`) send one chunk per word, each with the cumulative `usageMetadata`; the last
//! carries `finishReason`.

use axum::extract::{Path, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{Value, json};

use super::dialect::{
    Shape, arrive, bearer, data_frame, error, gemini_usage_json, json_reply, respond, stream_body,
    take_fault, usage_for,
};
use super::sse::{Ending, pieces};
use super::state::MockState;
use super::usage::tokens_for_bytes;

fn gemini_key(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    if let Some(k) = headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
    {
        return Some(k.to_owned());
    }
    if let Some(k) = uri
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("key=")))
        .filter(|k| !k.is_empty())
    {
        return Some(k.to_owned());
    }
    bearer(headers)
}

/// `POST /v1beta/models/{model}:{method}` and `/v1/models/{model}:{method}`.
pub(crate) async fn models(
    State(state): State<MockState>,
    Path(model_method): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (model, action) = model_method
        .rsplit_once(':')
        .unwrap_or((model_method.as_str(), ""));
    let stream = action == "streamGenerateContent";
    let key = gemini_key(&headers, &uri);
    let a = match arrive(
        &state,
        Shape::Gemini,
        &method,
        &uri,
        &headers,
        &body,
        key,
        Some(model.to_owned()),
        stream,
    )
    .await
    {
        Ok(a) => a,
        Err(r) => return r,
    };
    if a.key.is_none() {
        return error(
            a.guard,
            Shape::Gemini,
            StatusCode::FORBIDDEN,
            "Method doesn't allow unregistered callers. Please use an API key.",
        );
    }
    if !matches!(
        action,
        "generateContent" | "streamGenerateContent" | "countTokens"
    ) {
        return error(
            a.guard,
            Shape::Gemini,
            StatusCode::NOT_FOUND,
            &format!("method {action} not found"),
        );
    }
    let Some(req) = serde_json::from_slice::<Value>(&body)
        .ok()
        .filter(|v| v.is_object())
    else {
        return error(
            a.guard,
            Shape::Gemini,
            StatusCode::BAD_REQUEST,
            "Invalid JSON payload received.",
        );
    };
    if stream
        && !uri
            .query()
            .unwrap_or("")
            .split('&')
            .any(|kv| kv == "alt=sse")
    {
        return error(
            a.guard,
            Shape::Gemini,
            StatusCode::BAD_REQUEST,
            "mock vendor: streams are served with alt=sse only",
        );
    }
    answer(
        &state,
        a,
        Shape::Gemini,
        action,
        model,
        &req,
        body.len(),
        false,
    )
    .await
}

/// `POST /v1internal:{method}` (Code Assist).
pub(crate) async fn code_assist(
    State(state): State<MockState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let action = uri
        .path()
        .strip_prefix("/v1internal:")
        .unwrap_or("")
        .to_owned();
    let stream = action == "streamGenerateContent";
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let model = parsed
        .as_ref()
        .and_then(|v| {
            v["model"]
                .as_str()
                .or_else(|| v["request"]["model"].as_str())
        })
        .map(|m| m.strip_prefix("models/").unwrap_or(m).to_owned());
    let a = match arrive(
        &state,
        Shape::Gemini,
        &method,
        &uri,
        &headers,
        &body,
        bearer(&headers),
        model.clone(),
        stream,
    )
    .await
    {
        Ok(a) => a,
        Err(r) => return r,
    };
    if a.key.is_none() {
        return error(
            a.guard,
            Shape::Gemini,
            StatusCode::UNAUTHORIZED,
            "Request is missing required authentication credential.",
        );
    }
    let Some(req) = parsed
        .as_ref()
        .and_then(|v| v.get("request"))
        .filter(|r| r.is_object())
        .cloned()
    else {
        return error(
            a.guard,
            Shape::Gemini,
            StatusCode::BAD_REQUEST,
            "Code Assist requests are {model, project, request}",
        );
    };
    let Some(model) = model else {
        return error(
            a.guard,
            Shape::Gemini,
            StatusCode::BAD_REQUEST,
            "model is required",
        );
    };
    answer(
        &state,
        a,
        Shape::Gemini,
        &action,
        &model,
        &req,
        body.len(),
        true,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn answer(
    state: &MockState,
    a: super::dialect::Arrived,
    shape: Shape,
    action: &str,
    model: &str,
    req: &Value,
    body_len: usize,
    wrapped: bool,
) -> Response {
    let wrap = |v: Value| {
        if wrapped {
            json!({"response": v, "traceId": "mock-trace"})
        } else {
            v
        }
    };
    if action == "countTokens" {
        let total = tokens_for_bytes(body_len);
        return json_reply(a.guard, &wrap(json!({"totalTokens": total})));
    }
    if !req["contents"].as_array().is_some_and(|c| !c.is_empty()) {
        return error(
            a.guard,
            shape,
            StatusCode::BAD_REQUEST,
            "* GenerateContentRequest.contents: contents is not specified",
        );
    }
    let stream = action == "streamGenerateContent";
    let (guard, plan, ending) = match take_fault(state, a, shape, stream) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let cap = req["generationConfig"]["maxOutputTokens"].as_u64();
    let words = cap.map_or(plan.reply_words, |c| plan.reply_words.min(c as usize));
    let finish = if cap.is_some_and(|c| (c as usize) < plan.reply_words) {
        "MAX_TOKENS"
    } else {
        "STOP"
    };
    let usage = usage_for(&plan, body_len, words as u64);
    guard.set_usage(usage.clone());
    let text = pieces(words);
    let chunk = |parts: Value, finish: Option<&str>, out: u64| {
        let mut cand = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        if let Some(f) = finish {
            cand["finishReason"] = json!(f);
        }
        wrap(json!({
            "candidates": [cand],
            "usageMetadata": gemini_usage_json(&usage, out),
            "modelVersion": model,
            "responseId": "mock-response",
        }))
    };
    if !stream {
        let reply = chunk(
            json!([{"text": text.concat()}]),
            Some(finish),
            usage.output_tokens,
        );
        return match ending {
            Ending::CutAfter(_) => respond(
                guard,
                StatusCode::OK,
                "application/json",
                HeaderMap::new(),
                super::sse::truncated(Bytes::from(reply.to_string())),
            ),
            _ => json_reply(guard, &reply),
        };
    }
    // The cumulative output grows with the words; the last chunk reports the final usage.
    let n = text.len().max(1) as u64;
    let mut frames = Vec::with_capacity(text.len());
    for (i, p) in text.iter().enumerate() {
        let last = i + 1 == text.len();
        let out = if last {
            usage.output_tokens
        } else {
            usage.output_tokens * (i as u64 + 1) / n
        };
        frames.push(data_frame(&chunk(
            json!([{"text": p}]),
            last.then_some(finish),
            out,
        )));
    }
    if text.is_empty() {
        frames.push(data_frame(&chunk(
            json!([{"text": ""}]),
            Some(finish),
            usage.output_tokens,
        )));
    }
    let err = data_frame(
        &json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}}),
    );
    let body = stream_body(frames, ending, plan.event_delay, err);
    let mut h = HeaderMap::new();
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    respond(guard, StatusCode::OK, "text/event-stream", h, body)
}
