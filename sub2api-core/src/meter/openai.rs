//! Usage scanners for OpenAI Chat Completions and Responses streams (PROTOCOLS.md, "OpenAI").
//!
//! Chat: `data: {chat.completion.chunk}` lines ended by `data: [DONE]`; usage arrives in one
//! chunk with `choices: []` just before `[DONE]` (the relay always asks for it). The stream is
//! final at `[DONE]` once usage was seen, so the `[DONE]` frame waits for the settlement. Only
//! payloads that carry a `"usage": {` or `"error"` are parsed.
//!
//! Responses: named events; only the terminal `response.completed | response.incomplete |
//! response.failed` (and `error`) payloads are kept and parsed, every `*.delta` is counted for
//! cut streams.
//!
//! Both normalise usage as the relay bills it: uncached input = prompt - cached (- cache
//! writes), cache reads separately, reasoning inside output.

use serde_json::Value;

use super::UsageScanner;
use super::sse::{Event, Handler, SseReader, contains, has_object_key, object_after_key};
use crate::domain::Usage;

fn n(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_u64().unwrap_or(0)
}

/// Chat Completions `usage` -> [`Usage`].
pub fn chat_usage(u: &Value) -> Usage {
    let prompt = n(u, &["prompt_tokens"]);
    let cached = n(u, &["prompt_tokens_details", "cached_tokens"]);
    let written = n(u, &["prompt_tokens_details", "cache_write_tokens"]);
    Usage {
        input_tokens: prompt.saturating_sub(cached).saturating_sub(written),
        output_tokens: n(u, &["completion_tokens"]),
        cache_creation_5m_tokens: written,
        cache_creation_1h_tokens: 0,
        cache_read_tokens: cached,
        web_search_requests: 0,
    }
}

/// Responses `usage` -> [`Usage`].
pub fn responses_usage(u: &Value) -> Usage {
    let input = n(u, &["input_tokens"]);
    let cached = n(u, &["input_tokens_details", "cached_tokens"]);
    Usage {
        input_tokens: input.saturating_sub(cached),
        output_tokens: n(u, &["output_tokens"]),
        cache_creation_5m_tokens: 0,
        cache_creation_1h_tokens: 0,
        cache_read_tokens: cached,
        web_search_requests: 0,
    }
}

#[derive(Debug, Default)]
struct ChatState {
    usage: Option<Usage>,
    model: Option<String>,
    done: bool,
    error: bool,
    chunks: u64,
}

impl Handler for ChatState {
    fn wants(&self, _name: &[u8]) -> bool {
        true
    }

    fn event(&mut self, e: Event<'_>) {
        let data = e.data;
        if data.trim_ascii() == b"[DONE]" {
            self.done = true;
            return;
        }
        let has_usage = has_object_key(data, "usage");
        if !has_usage && !contains(data, b"\"error\"") {
            self.chunks += 1;
            return;
        }
        if e.truncated {
            if let Some(u) = object_after_key(data, "usage") {
                self.usage = Some(chat_usage(&u));
            }
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            self.chunks += 1;
            return;
        };
        let is_error = v.get("error").is_some_and(|x| !x.is_null());
        self.error |= is_error;
        if let Some(m) = v.get("model").and_then(Value::as_str) {
            self.model = Some(m.to_owned());
        }
        match v.get("usage").filter(|u| u.is_object()) {
            Some(u) => self.usage = Some(chat_usage(u)),
            None if !is_error => self.chunks += 1,
            None => {}
        }
        if v.get("choices")
            .and_then(Value::as_array)
            .is_some_and(|c| !c.is_empty())
            && has_usage
        {
            // A compatible server that reports running usage on content chunks.
            self.chunks += 1;
        }
    }
}

/// Scanner for a Chat Completions SSE stream.
#[derive(Debug, Default)]
pub struct ChatSseScanner {
    reader: SseReader,
    state: ChatState,
}

impl ChatSseScanner {
    pub fn new() -> Self {
        Self::default()
    }
}

impl UsageScanner for ChatSseScanner {
    fn feed(&mut self, chunk: &[u8]) {
        self.reader.feed(chunk, &mut self.state);
    }

    fn is_final(&self) -> bool {
        self.state.done && self.state.usage.is_some()
    }

    /// Before the final usage, a cut stream is billed one output token per content chunk (the
    /// input side is only reported at the end).
    fn usage(&mut self) -> Usage {
        match self.state.usage {
            Some(u) if self.is_final() => u,
            Some(mut u) => {
                u.output_tokens = u.output_tokens.max(self.state.chunks);
                u
            }
            None => Usage {
                output_tokens: self.state.chunks,
                ..Usage::default()
            },
        }
    }

    fn saw_error(&self) -> bool {
        self.state.error
    }

    fn model(&self) -> Option<&str> {
        self.state.model.as_deref()
    }
}

const TERMINAL: [&[u8]; 3] = [
    b"response.completed",
    b"response.incomplete",
    b"response.failed",
];

#[derive(Debug, Default)]
struct ResponsesState {
    usage: Option<Usage>,
    model: Option<String>,
    terminal: bool,
    error: bool,
    deltas: u64,
}

impl ResponsesState {
    fn terminal_payload(&mut self, data: &[u8], truncated: bool, failed: bool) {
        self.terminal = true;
        if failed {
            self.error = true;
        }
        if truncated {
            if let Some(u) = object_after_key(data, "usage") {
                self.usage = Some(responses_usage(&u));
            }
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        let r = &v["response"];
        if let Some(m) = r.get("model").and_then(Value::as_str) {
            self.model = Some(m.to_owned());
        }
        if let Some(u) = r.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(responses_usage(u));
        }
    }
}

impl Handler for ResponsesState {
    fn wants(&self, name: &[u8]) -> bool {
        name.is_empty() || name == b"error" || TERMINAL.contains(&name)
    }

    fn event(&mut self, e: Event<'_>) {
        if !e.name.is_empty() {
            if e.name.ends_with(b".delta") {
                self.deltas += 1;
            } else if e.name == b"error" {
                self.error = true;
            } else if TERMINAL.contains(&e.name) {
                self.terminal_payload(e.data, e.truncated, e.name == b"response.failed");
            }
            return;
        }
        // No `event:` line: the payload's `type` says what it is.
        let data = e.data;
        let kind = TERMINAL
            .iter()
            .find(|t| contains(data, &[&b"\"type\":\""[..], **t, &b"\""[..]].concat()));
        if let Some(kind) = kind {
            self.terminal_payload(data, e.truncated, *kind == b"response.failed");
        } else if contains(data, b"\"type\":\"error\"") {
            self.error = true;
        } else if contains(data, b".delta\"") {
            self.deltas += 1;
        }
    }
}

/// Scanner for a Responses SSE stream.
#[derive(Debug, Default)]
pub struct ResponsesSseScanner {
    reader: SseReader,
    state: ResponsesState,
}

impl ResponsesSseScanner {
    pub fn new() -> Self {
        Self::default()
    }
}

impl UsageScanner for ResponsesSseScanner {
    fn feed(&mut self, chunk: &[u8]) {
        self.reader.feed(chunk, &mut self.state);
    }

    fn is_final(&self) -> bool {
        self.state.terminal && self.state.usage.is_some()
    }

    fn usage(&mut self) -> Usage {
        match self.state.usage {
            Some(u) => u,
            None => Usage {
                output_tokens: self.state.deltas,
                ..Usage::default()
            },
        }
    }

    fn saw_error(&self) -> bool {
        self.state.error
    }

    fn model(&self) -> Option<&str> {
        self.state.model.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::super::json::{JsonBodyScanner, JsonShape};
    use super::super::testing::{Outcome, every_chunking, sse_every_ending};
    use super::*;

    fn usage(input: u64, read: u64, write: u64, output: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cache_creation_5m_tokens: write,
            cache_read_tokens: read,
            ..Usage::default()
        }
    }

    const CHAT: &str = r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"content":"Hello \"usage\": {\"prompt_tokens\": 99} [DONE]"},"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"content":" 你好 🌍"},"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":2006,"completion_tokens":300,"total_tokens":2306,"prompt_tokens_details":{"cached_tokens":1920,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":64,"audio_tokens":0}}}

data: [DONE]

"#;

    #[test]
    fn chat_stream_with_cached_tokens() {
        let o = sse_every_ending(ChatSseScanner::new, CHAT);
        assert_eq!(o.usage, usage(86, 1920, 0, 300));
        assert!(o.is_final && !o.saw_error);
        assert_eq!(o.model.as_deref(), Some("gpt-4o-2024-08-06"));
    }

    #[test]
    fn chat_stream_cut_before_usage_counts_chunks() {
        let cut = &CHAT[..CHAT.find("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[]").unwrap()];
        let o = sse_every_ending(ChatSseScanner::new, cut);
        assert_eq!(o.usage, usage(0, 0, 0, 4));
        assert!(!o.is_final);
        // Usage seen but no [DONE]: not final; the usage is still what the vendor said.
        let no_done = &CHAT[..CHAT.find("data: [DONE]").unwrap()];
        let o = sse_every_ending(ChatSseScanner::new, no_done);
        assert!(!o.is_final);
        assert_eq!(o.usage, usage(86, 1920, 0, 300));
    }

    #[test]
    fn chat_stream_error_chunk() {
        let s = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n";
        let o = sse_every_ending(ChatSseScanner::new, s);
        assert!(o.saw_error && !o.is_final);
        assert_eq!(o.usage.output_tokens, 1);
    }

    #[test]
    fn chat_stream_cache_writes() {
        let s = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1000,\"completion_tokens\":5,\"prompt_tokens_details\":{\"cached_tokens\":100,\"cache_write_tokens\":400}}}\n\ndata: [DONE]\n\n";
        assert_eq!(
            sse_every_ending(ChatSseScanner::new, s).usage,
            usage(500, 100, 400, 5)
        );
    }

    const RESPONSES: &str = r#"event: response.created
data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1","object":"response","status":"in_progress","model":"gpt-5-2025-08-07","output":[],"usage":null}}

event: response.in_progress
data: {"type":"response.in_progress","sequence_number":1,"response":{"id":"resp_1","status":"in_progress","usage":null}}

event: response.output_item.added
data: {"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"id":"msg_1","type":"message","status":"in_progress","content":[],"role":"assistant"}}

event: response.output_text.delta
data: {"type":"response.output_text.delta","sequence_number":3,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hi \"usage\":{\"input_tokens\":5} event: response.completed"}

event: response.output_text.delta
data: {"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_1","output_index":0,"content_index":0,"delta":" there ✓"}

event: response.output_text.done
data: {"type":"response.output_text.done","sequence_number":5,"item_id":"msg_1","output_index":0,"content_index":0,"text":"Hi there"}

event: response.completed
data: {"type":"response.completed","sequence_number":6,"response":{"id":"resp_1","object":"response","status":"completed","model":"gpt-5-2025-08-07","output":[{"id":"msg_1","type":"message","content":[{"type":"output_text","text":"Hi there"}]}],"usage":{"input_tokens":5000,"input_tokens_details":{"cached_tokens":4096},"output_tokens":700,"output_tokens_details":{"reasoning_tokens":512},"total_tokens":5700}}}

"#;

    #[test]
    fn responses_stream_with_cached_tokens() {
        let o = sse_every_ending(ResponsesSseScanner::new, RESPONSES);
        assert_eq!(o.usage, usage(904, 4096, 0, 700));
        assert!(o.is_final && !o.saw_error);
        assert_eq!(o.model.as_deref(), Some("gpt-5-2025-08-07"));
        // Without event lines the payload's type decides.
        let bare: String = RESPONSES
            .lines()
            .filter(|l| !l.starts_with("event:"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(sse_every_ending(ResponsesSseScanner::new, &bare), o);
    }

    #[test]
    fn responses_incomplete_and_failed() {
        let inc = "event: response.incomplete\ndata: {\"type\":\"response.incomplete\",\"response\":{\"status\":\"incomplete\",\"usage\":{\"input_tokens\":10,\"output_tokens\":64}}}\n\n";
        let o = sse_every_ending(ResponsesSseScanner::new, inc);
        assert!(o.is_final && !o.saw_error);
        assert_eq!(o.usage, usage(10, 0, 0, 64));
        let failed = "event: response.output_text.delta\ndata: {\"delta\":\"x\"}\n\nevent: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"status\":\"failed\",\"error\":{\"code\":\"server_error\"},\"usage\":{\"input_tokens\":10,\"output_tokens\":3}}}\n\n";
        let o = sse_every_ending(ResponsesSseScanner::new, failed);
        assert!(o.is_final && o.saw_error);
        assert_eq!(o.usage, usage(10, 0, 0, 3));
        let failed_no_usage = "event: response.output_text.delta\ndata: {\"delta\":\"x\"}\n\nevent: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"status\":\"failed\",\"usage\":null}}\n\n";
        let o = sse_every_ending(ResponsesSseScanner::new, failed_no_usage);
        assert!(!o.is_final && o.saw_error);
        assert_eq!(o.usage, usage(0, 0, 0, 1));
    }

    #[test]
    fn responses_cut_counts_deltas() {
        let cut = &RESPONSES[..RESPONSES.find("\n\nevent: response.completed").unwrap() + 2];
        let o = sse_every_ending(ResponsesSseScanner::new, cut);
        assert!(!o.is_final);
        assert_eq!(o.usage, usage(0, 0, 0, 2));
    }

    #[test]
    fn json_bodies() {
        let chat = r#"{"id":"chatcmpl-2","object":"chat.completion","model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"{\"usage\":{\"prompt_tokens\":1}}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":120,"completion_tokens":30,"total_tokens":150,"prompt_tokens_details":{"cached_tokens":100}},"system_fingerprint":"fp"}"#;
        let o: Outcome = every_chunking(|| JsonBodyScanner::new(JsonShape::Chat), chat.as_bytes());
        assert_eq!(o.usage, usage(20, 100, 0, 30));
        assert!(o.is_final && !o.saw_error);
        let resp = r#"{"id":"resp_2","object":"response","status":"completed","model":"gpt-5","output":[],"usage":{"input_tokens":300,"input_tokens_details":{"cached_tokens":200},"output_tokens":50,"output_tokens_details":{"reasoning_tokens":10}}}"#;
        let o = every_chunking(
            || JsonBodyScanner::new(JsonShape::Responses),
            resp.as_bytes(),
        );
        assert_eq!(o.usage, usage(100, 200, 0, 50));
        assert!(o.is_final);
        let err = r#"{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}"#;
        let o = every_chunking(|| JsonBodyScanner::new(JsonShape::Chat), err.as_bytes());
        assert!(o.saw_error && !o.is_final);
        let o = every_chunking(
            || JsonBodyScanner::new(JsonShape::Chat),
            &chat.as_bytes()[..chat.len() / 2],
        );
        assert!(!o.is_final);
    }
}
