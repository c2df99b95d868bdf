//! OpenAI routes of the mock: `POST /v1/chat/completions`, `POST /v1/responses`, and the
//! ChatGPT backend's `POST /backend-api/codex/responses` (which, like the real one, wants
//! `store: false` and a `chatgpt-account-id`). Stream and non-stream, the same knobs as
//! `/v1/messages` ([`super::dialect`]).
//!
//! Chat streams end `data: [DONE]`; the usage chunk (`choices: []`) is sent only when the request
//! asked for `stream_options.include_usage`, as OpenAI does.

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use http::header::CACHE_CONTROL;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use serde_json::{Value, json};

use super::dialect::{
    Shape, arrive, bearer, chat_usage_json, data_frame, error, json_reply, named_frame, respond,
    responses_usage_json, stream_body, take_fault, usage_for,
};
use super::sse::pieces;
use super::state::MockState;

const CREATED: u64 = 1_735_689_600;

fn output_cap(v: &Value, keys: &[&str]) -> Option<u64> {
    keys.iter().find_map(|k| v.get(*k).and_then(Value::as_u64))
}

fn sse_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat(
    State(state): State<MockState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let model = parsed
        .as_ref()
        .and_then(|v| v["model"].as_str())
        .map(str::to_owned);
    let stream = parsed.as_ref().and_then(|v| v["stream"].as_bool()) == Some(true);
    let key = bearer(&headers);
    let a = match arrive(
        &state,
        Shape::OpenAi,
        &method,
        &uri,
        &headers,
        &body,
        key,
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
            Shape::OpenAi,
            StatusCode::UNAUTHORIZED,
            "You didn't provide an API key.",
        );
    }
    let Some(req) = parsed.filter(|v| v.is_object()) else {
        return error(
            a.guard,
            Shape::OpenAi,
            StatusCode::BAD_REQUEST,
            "We could not parse the JSON body of your request.",
        );
    };
    let Some(model) = model else {
        return error(
            a.guard,
            Shape::OpenAi,
            StatusCode::BAD_REQUEST,
            "you must provide a model parameter",
        );
    };
    if !req["messages"].as_array().is_some_and(|m| !m.is_empty()) {
        return error(
            a.guard,
            Shape::OpenAi,
            StatusCode::BAD_REQUEST,
            "'messages' must be a non-empty array",
        );
    }
    let (guard, plan, ending) = match take_fault(&state, a, Shape::OpenAi, stream) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let cap = output_cap(&req, &["max_completion_tokens", "max_tokens"]);
    let words = cap.map_or(plan.reply_words, |c| plan.reply_words.min(c as usize));
    let finish = if cap.is_some_and(|c| (c as usize) < plan.reply_words) {
        "length"
    } else {
        "stop"
    };
    let usage = usage_for(&plan, body.len(), words as u64);
    guard.set_usage(usage.clone());
    let id = format!("chatcmpl-{}", &guard.request_id()["req_mock_".len()..]);
    let text = pieces(words);
    if !stream {
        let reply = json!({
            "id": id, "object": "chat.completion", "created": CREATED, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text.concat(), "refusal": null}, "logprobs": null, "finish_reason": finish}],
            "usage": chat_usage_json(&usage),
            "system_fingerprint": "fp_mock",
        });
        return match ending {
            super::sse::Ending::CutAfter(_) => respond(
                guard,
                StatusCode::OK,
                "application/json",
                HeaderMap::new(),
                super::sse::truncated(Bytes::from(reply.to_string())),
            ),
            _ => json_reply(guard, &reply),
        };
    }
    let include_usage = req["stream_options"]["include_usage"].as_bool() == Some(true);
    let chunk = |choices: Value| {
        let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": CREATED, "model": model, "system_fingerprint": "fp_mock", "choices": choices});
        if include_usage {
            c["usage"] = Value::Null;
        }
        data_frame(&c)
    };
    let mut frames = vec![chunk(
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
    )];
    for p in &text {
        frames.push(chunk(
            json!([{"index": 0, "delta": {"content": p}, "logprobs": null, "finish_reason": null}]),
        ));
    }
    frames.push(chunk(
        json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish}]),
    ));
    if include_usage {
        frames.push(data_frame(&json!({
            "id": id, "object": "chat.completion.chunk", "created": CREATED, "model": model, "system_fingerprint": "fp_mock",
            "choices": [], "usage": chat_usage_json(&usage),
        })));
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let err = data_frame(
        &json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error", "param": null, "code": null}}),
    );
    let body = stream_body(frames, ending, plan.event_delay, err);
    respond(
        guard,
        StatusCode::OK,
        "text/event-stream",
        sse_headers(),
        body,
    )
}

/// `POST /v1/responses`.
pub(crate) async fn responses(
    state: State<MockState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    responses_on(state, Shape::OpenAi, method, uri, headers, body).await
}

/// `POST /backend-api/codex/responses`: the ChatGPT backend Codex OAuth accounts use.
pub(crate) async fn codex(
    state: State<MockState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    responses_on(state, Shape::Codex, method, uri, headers, body).await
}

async fn responses_on(
    State(state): State<MockState>,
    shape: Shape,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let model = parsed
        .as_ref()
        .and_then(|v| v["model"].as_str())
        .map(str::to_owned);
    let stream = parsed.as_ref().and_then(|v| v["stream"].as_bool()) == Some(true);
    let key = bearer(&headers);
    let a = match arrive(
        &state,
        shape,
        &method,
        &uri,
        &headers,
        &body,
        key,
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
            shape,
            StatusCode::UNAUTHORIZED,
            "Missing bearer authentication in header",
        );
    }
    let Some(req) = parsed.filter(|v| v.is_object()) else {
        return error(
            a.guard,
            shape,
            StatusCode::BAD_REQUEST,
            "We could not parse the JSON body of your request.",
        );
    };
    let Some(model) = model else {
        return error(
            a.guard,
            shape,
            StatusCode::BAD_REQUEST,
            "Missing required parameter: 'model'.",
        );
    };
    if shape == Shape::Codex {
        if req["store"].as_bool() != Some(false) {
            return error(
                a.guard,
                shape,
                StatusCode::BAD_REQUEST,
                "Store must be set to false",
            );
        }
        if !stream {
            return error(
                a.guard,
                shape,
                StatusCode::BAD_REQUEST,
                "Stream must be set to true",
            );
        }
        if headers.get("chatgpt-account-id").is_none() {
            return error(
                a.guard,
                shape,
                StatusCode::BAD_REQUEST,
                "chatgpt-account-id header is required",
            );
        }
    }
    let (guard, plan, ending) = match take_fault(&state, a, shape, stream) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let cap = output_cap(&req, &["max_output_tokens"]);
    let words = cap.map_or(plan.reply_words, |c| plan.reply_words.min(c as usize));
    let incomplete = cap.is_some_and(|c| (c as usize) < plan.reply_words);
    let usage = usage_for(&plan, body.len(), words as u64);
    guard.set_usage(usage.clone());
    let suffix = guard.request_id()["req_mock_".len()..].to_owned();
    let id = format!("resp_mock_{suffix}");
    let item_id = format!("msg_mock_{suffix}");
    let text = pieces(words);
    let status = if incomplete {
        "incomplete"
    } else {
        "completed"
    };
    let output = json!([{"id": item_id, "type": "message", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": text.concat(), "annotations": []}]}]);
    let response = |status: &str, output: Value, usage: Value| {
        let mut r = json!({
            "id": id, "object": "response", "created_at": CREATED, "status": status, "model": model,
            "output": output, "usage": usage, "store": req["store"].as_bool().unwrap_or(true),
        });
        if status == "incomplete" {
            r["incomplete_details"] = json!({"reason": "max_output_tokens"});
        }
        r
    };
    if !stream {
        let reply = response(status, output, responses_usage_json(&usage));
        return match ending {
            super::sse::Ending::CutAfter(_) => respond(
                guard,
                StatusCode::OK,
                "application/json",
                HeaderMap::new(),
                super::sse::truncated(Bytes::from(reply.to_string())),
            ),
            _ => json_reply(guard, &reply),
        };
    }
    let mut seq = 0u64;
    let mut ev = |name: &str, mut v: Value| {
        v["type"] = json!(name);
        v["sequence_number"] = json!(seq);
        seq += 1;
        named_frame(name, &v)
    };
    let mut frames = vec![
        ev(
            "response.created",
            json!({"response": response("in_progress", json!([]), Value::Null)}),
        ),
        ev(
            "response.in_progress",
            json!({"response": response("in_progress", json!([]), Value::Null)}),
        ),
        ev(
            "response.output_item.added",
            json!({"output_index": 0, "item": {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}}),
        ),
        ev(
            "response.content_part.added",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
        ),
    ];
    for p in &text {
        frames.push(ev(
            "response.output_text.delta",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "delta": p}),
        ));
    }
    frames.push(ev(
        "response.output_text.done",
        json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": text.concat()}),
    ));
    frames.push(ev(
        "response.output_item.done",
        json!({"output_index": 0, "item": output[0].clone()}),
    ));
    let terminal = if incomplete {
        "response.incomplete"
    } else {
        "response.completed"
    };
    frames.push(ev(
        terminal,
        json!({"response": response(status, output.clone(), responses_usage_json(&usage))}),
    ));
    let err = named_frame(
        "error",
        &json!({"type": "error", "code": "server_error", "message": "The server had an error while processing your request.", "param": null}),
    );
    let body = stream_body(frames, ending, plan.event_delay, err);
    respond(
        guard,
        StatusCode::OK,
        "text/event-stream",
        sse_headers(),
        body,
    )
}
