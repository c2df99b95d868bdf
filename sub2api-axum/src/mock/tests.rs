//! The mock's own tests: wire shapes, usage rule, every knob, gate, records.
//! Most go through `tower::ServiceExt::oneshot`; the abrupt-cut and server tests use raw TCP.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

use super::*;

fn setup() -> (MockState, Router) {
    let state = MockState::new();
    let app = router(state.clone());
    (state, app)
}

fn request(path: &str, key: Option<&str>, body: &str, extra: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::post(path)
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01");
    if let Some(key) = key {
        builder = builder.header("x-api-key", key);
    }
    for (name, value) in extra {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::from(body.to_owned())).unwrap()
}

fn body(max_tokens: u64, stream: bool) -> String {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": [{ "role": "user", "content": "Say hello." }],
    })
    .to_string()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Result<Bytes, axum::Error>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(self.body.as_ref().expect("body read")).expect("JSON body")
    }

    fn events(&self) -> Vec<(String, Value)> {
        parse_events(&String::from_utf8_lossy(
            self.body.as_ref().expect("body read"),
        ))
    }
}

async fn send(app: &Router, req: Request<Body>) -> Reply {
    let (parts, body) = app.clone().oneshot(req).await.unwrap().into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.map(|c| c.to_bytes()),
    }
}

async fn post(app: &Router, key: &str, body: &str, extra: &[(&str, &str)]) -> Reply {
    send(app, request("/v1/messages", Some(key), body, extra)).await
}

/// `(event name, data)` per frame; also checks each frame's `type` equals its event name.
fn parse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|f| !f.is_empty())
        .map(|frame| {
            let mut lines = frame.lines();
            let event = lines.next().unwrap().strip_prefix("event: ").unwrap();
            let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
            assert!(lines.next().is_none(), "one data line per frame");
            let data: Value = serde_json::from_str(data).unwrap();
            assert_eq!(data["type"], event);
            (event.to_owned(), data)
        })
        .collect()
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

fn assert_error(reply: &Reply, status: u16, kind: &str) {
    assert_eq!(reply.status.as_u16(), status);
    let json = reply.json();
    assert_eq!(json["type"], "error");
    assert_eq!(json["error"]["type"], kind);
    assert!(json["error"]["message"].is_string());
    assert_eq!(
        json["request_id"].as_str(),
        reply.headers["request-id"].to_str().ok()
    );
}

/// Raw HTTP/1.1 so a test sees exactly what went over the socket.
async fn raw_post(addr: SocketAddr, key: &str, body: &str, extra: &[(&str, &str)]) -> String {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: {addr}\r\nx-api-key: {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(body.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn non_stream_reply_has_the_message_shape_and_computed_usage() {
    let (state, app) = setup();
    let body = body(1024, false);
    let reply = post(&app, "sk-a", &body, &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert!(reply.headers.contains_key("content-length"));
    let json = reply.json();
    assert_eq!(json["type"], "message");
    assert_eq!(json["role"], "assistant");
    assert_eq!(json["model"], "claude-sonnet-4-5");
    assert!(json["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(json["content"][0]["type"], "text");
    assert_eq!(json["content"][0]["text"], reply_pieces(12).concat());
    assert_eq!(json["stop_reason"], "end_turn");
    let input = body.len().div_ceil(4) as u64;
    assert_eq!(
        json["usage"],
        json!({
            "input_tokens": input,
            "output_tokens": 12,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation": { "ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0 },
        })
    );

    let record = state.last_request().unwrap();
    assert_eq!(record.api_key.as_deref(), Some("sk-a"));
    assert_eq!(record.anthropic_version.as_deref(), Some("2023-06-01"));
    assert_eq!(record.model.as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!(record.body, Bytes::from(body));
    assert_eq!(record.status, Some(200));
    assert_eq!(record.usage.as_ref().unwrap().input_tokens, input);
    assert_eq!(record.outcome, Outcome::Completed);
    assert_eq!(state.in_flight("sk-a"), 0);
    assert_eq!(state.stats("sk-a").completed, 1);
}

#[tokio::test]
async fn stream_reply_follows_the_event_sequence() {
    let (state, app) = setup();
    let body = body(1024, true);
    let reply = post(&app, "sk-a", &body, &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "text/event-stream");
    let events = reply.events();
    let mut expected = vec!["message_start", "ping", "content_block_start"];
    expected.extend(std::iter::repeat_n("content_block_delta", 12));
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names(&events), expected);

    let start = &events[0].1["message"];
    assert_eq!(start["model"], "claude-sonnet-4-5");
    assert_eq!(
        start["usage"]["input_tokens"],
        body.len().div_ceil(4) as u64
    );
    assert_eq!(start["usage"]["output_tokens"], 1);
    assert_eq!(
        start["usage"]["cache_creation"]["ephemeral_1h_input_tokens"],
        0
    );
    let text: String = events[3..15]
        .iter()
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(text, reply_pieces(12).concat());
    let delta = &events[16].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"], json!({ "output_tokens": 12 }));

    let record = state.last_request().unwrap();
    assert!(record.stream);
    assert_eq!(record.chunks_sent, events.len());
    assert_eq!(record.outcome, Outcome::Completed);
}

#[tokio::test]
async fn max_tokens_caps_the_reply_and_beta_query_is_served() {
    let (state, app) = setup();
    let reply = send(
        &app,
        request("/v1/messages?beta=true", Some("sk-a"), &body(5, true), &[]),
    )
    .await;
    let events = reply.events();
    assert_eq!(events.len(), 5 + 6);
    assert_eq!(events[9].1["delta"]["stop_reason"], "max_tokens");
    assert_eq!(events[9].1["usage"]["output_tokens"], 5);
    assert_eq!(state.last_request().unwrap().path, "/v1/messages?beta=true");
}

#[tokio::test]
async fn cache_control_marks_are_reported_as_cache_creation() {
    let (_, app) = setup();
    // Compact JSON, so the item sizes are the literal lengths.
    let system = r#"{"type":"text","text":"You are a careful assistant with a long system prompt.","cache_control":{"type":"ephemeral","ttl":"1h"}}"#;
    let first = r#"{"type":"text","text":"A question","cache_control":{"type":"ephemeral"}}"#;
    let second = r#"{"type":"text","text":"not cached"}"#;
    let reply_block = r#"{"type":"text","text":"prior answer"}"#;
    let third = r#"{"type":"text","text":"again","cache_control":{"type":"ephemeral","ttl":"5m"}}"#;
    let body = format!(
        r#"{{"model":"m","max_tokens":3,"system":[{system}],"messages":[{{"role":"user","content":[{first},{second}]}},{{"role":"assistant","content":[{reply_block}]}},{{"role":"user","content":[{third}]}}]}}"#
    );
    let one_hour = system.len().div_ceil(4) as u64;
    let five_min = (first.len().div_ceil(4)
        + (second.len() + reply_block.len() + third.len()).div_ceil(4)) as u64;
    let total = body.len().div_ceil(4) as u64;

    let usage = post(&app, "sk-a", &body, &[]).await.json()["usage"].clone();
    assert_eq!(
        usage["cache_creation"]["ephemeral_1h_input_tokens"],
        one_hour
    );
    assert_eq!(
        usage["cache_creation"]["ephemeral_5m_input_tokens"],
        five_min
    );
    assert_eq!(usage["cache_creation_input_tokens"], one_hour + five_min);
    assert_eq!(usage["input_tokens"], total - one_hour - five_min);
    assert_eq!(usage["cache_read_input_tokens"], 0);
    assert_eq!(usage["output_tokens"], 3);

    // Same split in the stream's message_start.
    let stream_body = body.replacen(r#""max_tokens":3"#, r#""max_tokens":3,"stream":true"#, 1);
    let events = post(&app, "sk-a", &stream_body, &[]).await.events();
    let start = &events[0].1["message"]["usage"];
    assert_eq!(
        start["cache_creation"]["ephemeral_1h_input_tokens"],
        one_hour
    );
    assert_eq!(
        start["cache_creation"]["ephemeral_5m_input_tokens"],
        five_min
    );
}

#[tokio::test]
async fn usage_override_is_reported_verbatim_for_its_key_only() {
    let (state, app) = setup();
    let usage = Usage {
        input_tokens: 11,
        output_tokens: 222,
        cache_creation_input_tokens: 30,
        cache_read_input_tokens: 4000,
        cache_creation: CacheCreation {
            ephemeral_5m_input_tokens: 10,
            ephemeral_1h_input_tokens: 20,
        },
        server_tool_use: Some(ServerToolUse {
            web_search_requests: 2,
            web_fetch_requests: 0,
        }),
    };
    state.set("sk-a", Knob::Usage(usage.clone()));

    let json = post(&app, "sk-a", &body(64, false), &[]).await.json();
    assert_eq!(json["usage"], usage.to_json());
    assert_eq!(json["usage"]["server_tool_use"]["web_search_requests"], 2);
    assert_eq!(state.last_request().unwrap().usage, Some(usage.clone()));

    state.set("sk-a", Knob::FullDeltaUsage(true));
    let events = post(&app, "sk-a", &body(64, true), &[]).await.events();
    let start = &events[0].1["message"]["usage"];
    assert_eq!(start["input_tokens"], 11);
    assert_eq!(start["cache_read_input_tokens"], 4000);
    assert_eq!(start["cache_creation"]["ephemeral_1h_input_tokens"], 20);
    assert_eq!(start["output_tokens"], 1);
    let delta = &events[events.len() - 2].1["usage"];
    assert_eq!(delta["output_tokens"], 222);
    assert_eq!(delta["input_tokens"], 11);
    assert_eq!(delta["cache_read_input_tokens"], 4000);
    assert!(delta.get("cache_creation").is_none());

    let other = post(&app, "sk-b", &body(64, false), &[]).await.json();
    assert_eq!(other["usage"]["output_tokens"], 12);
}

#[tokio::test]
async fn knobs_resolve_header_then_key_then_all_keys() {
    let (state, app) = setup();
    state.set(Scope::AllKeys, Knob::ReplyWords(3));
    state.set("sk-a", Knob::ReplyWords(5));
    let words = |reply: Reply| reply.json()["usage"]["output_tokens"].as_u64().unwrap();
    assert_eq!(words(post(&app, "sk-b", &body(64, false), &[]).await), 3);
    assert_eq!(words(post(&app, "sk-a", &body(64, false), &[]).await), 5);
    let header = [(FAULT_HEADER, "words=2")];
    assert_eq!(
        words(post(&app, "sk-a", &body(64, false), &header).await),
        2
    );
    state.clear("sk-a");
    assert_eq!(words(post(&app, "sk-a", &body(64, false), &[]).await), 3);
}

#[tokio::test]
async fn rate_limit_fault_sets_reset_headers() {
    let (state, app) = setup();
    let reset = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    state.set(
        "sk-a",
        Knob::Fault(Fault::RateLimited {
            retry_after_secs: Some(42),
            reset_at: Some(reset),
        }),
    );
    let reply = post(&app, "sk-a", &body(64, false), &[]).await;
    assert_error(&reply, 429, "rate_limit_error");
    let h = &reply.headers;
    assert_eq!(h["retry-after"], "42");
    assert_eq!(
        h["anthropic-ratelimit-requests-reset"],
        "2030-03-17T17:46:40Z"
    );
    assert_eq!(
        h["anthropic-ratelimit-tokens-reset"],
        "2030-03-17T17:46:40Z"
    );
    assert_eq!(h["anthropic-ratelimit-unified-reset"], "1900000000");
    assert_eq!(h["anthropic-ratelimit-unified-status"], "rejected");
    assert_eq!(state.last_request().unwrap().usage, None);

    // Other keys are untouched; a 429 without reset info has no reset headers.
    assert_eq!(post(&app, "sk-b", &body(64, false), &[]).await.status, 200);
    state.set("sk-b", Knob::Fault(Fault::rate_limited_without_reset()));
    let bare = post(&app, "sk-b", &body(64, false), &[]).await;
    assert_error(&bare, 429, "rate_limit_error");
    assert!(!bare.headers.contains_key("retry-after"));
    assert!(
        !bare
            .headers
            .contains_key("anthropic-ratelimit-unified-reset")
    );

    // Relative constructor: reset about `wait` from now.
    let fault = Fault::rate_limited_for(Duration::from_millis(2500));
    let Fault::RateLimited {
        retry_after_secs,
        reset_at,
    } = fault
    else {
        unreachable!()
    };
    assert_eq!(retry_after_secs, Some(3));
    assert!(reset_at.unwrap() > SystemTime::now());
}

#[tokio::test]
async fn status_faults_answer_in_anthropic_error_shape() {
    let (state, app) = setup();
    for (fault, status, kind) in [
        (Fault::Overloaded, 529, "overloaded_error"),
        (Fault::Unauthorized, 401, "authentication_error"),
        (Fault::ServerError, 500, "api_error"),
    ] {
        state.set(Scope::AllKeys, Knob::Fault(fault));
        assert_error(
            &post(&app, "sk-a", &body(64, true), &[]).await,
            status,
            kind,
        );
    }
    state.clear_fault(Scope::AllKeys);
    assert_eq!(post(&app, "sk-a", &body(64, true), &[]).await.status, 200);
}

#[tokio::test]
async fn header_faults_work_without_programmatic_setup() {
    let (_, app) = setup();
    for (item, status, kind) in [
        ("529", 529, "overloaded_error"),
        ("overloaded", 529, "overloaded_error"),
        ("401", 401, "authentication_error"),
        ("500", 500, "api_error"),
        ("429", 429, "rate_limit_error"),
    ] {
        let reply = post(&app, "sk-a", &body(64, false), &[(FAULT_HEADER, item)]).await;
        assert_error(&reply, status, kind);
    }
    let reply = post(
        &app,
        "sk-a",
        &body(64, false),
        &[(FAULT_HEADER, "rate-limit=7")],
    )
    .await;
    assert_eq!(reply.headers["retry-after"], "7");

    for bad in ["bogus", "cut-after", "cut-after=x", "529, 401", "times=2"] {
        let reply = post(&app, "sk-a", &body(64, false), &[(FAULT_HEADER, bad)]).await;
        assert_error(&reply, 400, "invalid_request_error");
    }
}

#[tokio::test]
async fn fail_times_fails_n_requests_then_succeeds() {
    let (state, app) = setup();
    state.set("sk-a", Knob::FailTimes(Fault::Overloaded, 2));
    let statuses = async |key: &str| {
        let mut out = Vec::new();
        for _ in 0..4 {
            out.push(post(&app, key, &body(64, false), &[]).await.status.as_u16());
        }
        out
    };
    assert_eq!(statuses("sk-a").await, [529, 529, 200, 200]);

    // A spent key rule falls through to the all-keys rule.
    state.set(Scope::AllKeys, Knob::Fault(Fault::ServerError));
    state.set("sk-b", Knob::FailTimes(Fault::Unauthorized, 1));
    assert_eq!(statuses("sk-b").await, [401, 500, 500, 500]);

    // Invalid requests do not spend a failure.
    state.clear(Scope::AllKeys);
    state.set("sk-c", Knob::FailTimes(Fault::Overloaded, 1));
    let bad = post(&app, "sk-c", r#"{"model":"m"}"#, &[]).await;
    assert_error(&bad, 400, "invalid_request_error");
    assert_eq!(statuses("sk-c").await, [529, 200, 200, 200]);

    // Header form: counted per key and header value.
    let header = [(FAULT_HEADER, "529, times=1")];
    let first = post(&app, "sk-d", &body(64, false), &header).await;
    let second = post(&app, "sk-d", &body(64, false), &header).await;
    let other_key = post(&app, "sk-e", &body(64, false), &header).await;
    assert_eq!(
        [first.status, second.status, other_key.status].map(|s| s.as_u16()),
        [529, 200, 529]
    );
}

#[tokio::test]
async fn cut_after_ends_the_tcp_response_abruptly() {
    let vendor = MockVendor::start().await;
    let raw = raw_post(
        vendor.addr(),
        "sk-a",
        &body(64, true),
        &[(FAULT_HEADER, "cut-after=4")],
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(
        raw.to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
    );
    assert_eq!(raw.matches("event: ").count(), 4, "{raw}");
    assert!(raw.contains("event: content_block_delta"));
    assert!(!raw.contains("message_stop"));
    assert!(!raw.ends_with("0\r\n\r\n"), "no terminating chunk: {raw:?}");
    let record = vendor.wait_for_outcome(0).await.unwrap();
    assert_eq!(record.outcome, Outcome::Aborted);
    assert_eq!(record.chunks_sent, 4);
    assert_eq!(vendor.stats("sk-a").aborted, 1);
    vendor.shutdown().await;
}

#[tokio::test]
async fn cut_after_knob_makes_the_body_fail() {
    let (state, app) = setup();
    state.set("sk-a", Knob::Fault(Fault::CutAfter(2)));
    let stream = post(&app, "sk-a", &body(64, true), &[]).await;
    assert_eq!(stream.status, 200);
    assert!(stream.body.is_err());
    let whole = post(&app, "sk-a", &body(64, false), &[]).await;
    assert_eq!(whole.status, 200);
    assert!(whole.body.is_err());
    assert!(
        state
            .requests()
            .iter()
            .all(|r| r.outcome == Outcome::Aborted)
    );
    assert_eq!(state.in_flight("sk-a"), 0);
}

#[tokio::test]
async fn error_event_after_n_events() {
    let (state, app) = setup();
    let reply = post(
        &app,
        "sk-a",
        &body(64, true),
        &[(FAULT_HEADER, "error-after=3")],
    )
    .await;
    let events = reply.events();
    assert_eq!(
        names(&events),
        ["message_start", "ping", "content_block_start", "error"]
    );
    assert_eq!(events[3].1["error"]["type"], "overloaded_error");
    assert_eq!(state.last_request().unwrap().outcome, Outcome::Completed);

    // Non-stream: nothing was sent yet, so it is a plain 529.
    state.set("sk-a", Knob::Fault(Fault::ErrorEventAfter(3)));
    assert_error(
        &post(&app, "sk-a", &body(64, false), &[]).await,
        529,
        "overloaded_error",
    );
}

#[tokio::test]
async fn delays_hold_the_first_byte_and_space_the_events() {
    let (state, app) = setup();
    state.set("sk-a", Knob::FirstByteDelay(Duration::from_millis(60)));
    let started = Instant::now();
    let _ = app
        .clone()
        .oneshot(request("/v1/messages", Some("sk-a"), &body(64, true), &[]))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(60));

    let started = Instant::now();
    let header = [(FAULT_HEADER, "event-delay-ms=10, words=2")];
    let reply = post(&app, "sk-b", &body(64, true), &header).await;
    assert_eq!(reply.events().len(), 8);
    assert!(started.elapsed() >= Duration::from_millis(70));
}

#[tokio::test]
async fn gate_holds_responses_until_opened() {
    let (state, app) = setup();
    state.close_gate("sk-a");
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { post(&app, "sk-a", &body(64, true), &[]).await })
        })
        .collect();
    state.wait_for_in_flight("sk-a", 3).await;
    assert_eq!(state.count("sk-a"), 3);
    assert!(
        state
            .requests_for("sk-a")
            .iter()
            .all(|r| r.status.is_none())
    );

    // Other keys pass.
    assert_eq!(post(&app, "sk-b", &body(64, false), &[]).await.status, 200);

    state.open_gate("sk-a");
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.events().last().unwrap().0, "message_stop");
    }
    assert_eq!(state.in_flight("sk-a"), 0);
    assert_eq!(state.max_in_flight("sk-a"), 3);
    assert_eq!(state.max_in_flight("sk-b"), 1);
    assert_eq!(state.total().max_in_flight, 4);
}

#[tokio::test]
async fn dropping_the_body_early_is_recorded() {
    let (state, app) = setup();
    state.set("sk-a", Knob::EventDelay(Duration::from_millis(5)));
    let response = app
        .clone()
        .oneshot(request("/v1/messages", Some("sk-a"), &body(64, true), &[]))
        .await
        .unwrap();
    assert_eq!(state.in_flight("sk-a"), 1);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.starts_with(b"event: message_start\n"));
    drop(body);

    let record = state.wait_for_outcome(0).await.unwrap();
    assert_eq!(record.outcome, Outcome::DroppedByClient);
    assert_eq!(record.chunks_sent, 1);
    assert_eq!(state.in_flight("sk-a"), 0);
    assert_eq!(state.stats("sk-a").dropped_by_client, 1);
}

#[tokio::test]
async fn count_tokens_and_models() {
    let (state, app) = setup();
    let body = r#"{"model":"m","messages":[{"role":"user","content":"count me"}]}"#;
    let reply = send(
        &app,
        request("/v1/messages/count_tokens", Some("sk-a"), body, &[]),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json(),
        json!({ "input_tokens": body.len().div_ceil(4) })
    );
    let bad = send(
        &app,
        request(
            "/v1/messages/count_tokens",
            Some("sk-a"),
            r#"{"model":"m"}"#,
            &[],
        ),
    )
    .await;
    assert_error(&bad, 400, "invalid_request_error");

    let models = send(
        &app,
        Request::get("/v1/models")
            .header("x-api-key", "sk-a")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(models.status, 200);
    let json = models.json();
    assert_eq!(json["data"].as_array().unwrap().len(), MODELS.len());
    assert_eq!(json["data"][0]["type"], "model");
    assert_eq!(json["has_more"], false);
    assert_eq!(state.count("sk-a"), 3);
}

#[tokio::test]
async fn malformed_bodies_are_invalid_requests() {
    let (state, app) = setup();
    for bad in [
        "{not json",
        "[]",
        r#"{"max_tokens":5,"messages":[]}"#,
        r#"{"model":"m","messages":[]}"#,
        r#"{"model":"m","max_tokens":5}"#,
        r#"{"model":"m","max_tokens":0,"messages":[]}"#,
        r#"{"model":"m","max_tokens":5,"messages":{}}"#,
    ] {
        let reply = post(&app, "sk-a", bad, &[]).await;
        assert_error(&reply, 400, "invalid_request_error");
    }
    assert!(state.requests().iter().all(|r| r.status == Some(400)));
}

#[tokio::test]
async fn credentials_are_required_and_version_is_only_recorded() {
    let (state, app) = setup();
    let reply = send(&app, request("/v1/messages", None, &body(64, false), &[])).await;
    assert_error(&reply, 401, "authentication_error");

    let bearer = Request::post("/v1/messages")
        .header("authorization", "Bearer oauth-token")
        .body(Body::from(body(64, false)))
        .unwrap();
    assert_eq!(send(&app, bearer).await.status, 200);
    let record = state.last_request().unwrap();
    assert_eq!(record.api_key.as_deref(), Some("oauth-token"));
    assert_eq!(record.anthropic_version, None);
    assert_eq!(state.count(""), 1);

    let missing = send(&app, Request::get("/v1/nope").body(Body::empty()).unwrap()).await;
    assert_error(&missing, 404, "not_found_error");
}

#[tokio::test]
async fn waiting_for_requests_awaits_a_signal() {
    let (state, app) = setup();
    let waiter = tokio::spawn({
        let state = state.clone();
        async move {
            state.wait_for_requests(2).await;
            state.wait_idle().await;
            state.request_count()
        }
    });
    post(&app, "sk-a", &body(64, false), &[]).await;
    post(&app, "sk-b", &body(64, false), &[]).await;
    assert_eq!(waiter.await.unwrap(), 2);
    state.wait_for_requests_for("sk-b", 1).await;
}

#[tokio::test]
async fn record_capacity_keeps_the_newest() {
    let state = MockState::with_record_capacity(2);
    let app = router(state.clone());
    for _ in 0..3 {
        post(&app, "sk-a", &body(64, false), &[]).await;
    }
    let seqs: Vec<usize> = state.requests().iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [1, 2]);
    assert_eq!(state.request_count(), 3);
    assert_eq!(state.count("sk-a"), 3);
    assert!(state.request(0).is_none());
}

#[tokio::test]
async fn vendor_serves_on_an_ephemeral_port_and_shuts_down() {
    let vendor = MockVendor::start().await;
    assert_eq!(vendor.base_url(), format!("http://{}", vendor.addr()));
    let raw = raw_post(vendor.addr(), "sk-a", &body(64, false), &[]).await;
    assert!(raw.starts_with("HTTP/1.1 200"));
    assert!(raw.to_ascii_lowercase().contains("content-length:"));
    assert!(raw.contains(r#""type":"message""#));
    let addr = vendor.addr();
    let state = vendor.state().clone();
    vendor.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err());
    assert_eq!(state.stats("sk-a").completed, 1);
}

#[test]
fn rfc3339_formats_utc_seconds() {
    let at = |secs: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
    assert_eq!(at(0), "1970-01-01T00:00:00Z");
    assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
    assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(at(4_102_444_800), "2100-01-01T00:00:00Z");
}
