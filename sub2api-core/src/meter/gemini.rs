//! Usage scanner for Gemini `streamGenerateContent?alt=sse` (PROTOCOLS.md, "Gemini").
//!
//! Every `data:` is a whole `GenerateContentResponse` chunk whose `usageMetadata` is cumulative:
//! the last one seen is the usage. The stream is final at the chunk that carries a
//! `finishReason` together with usage (Gemini's last chunk); a chunk without usage metadata is
//! skipped unparsed and counted for cut streams. Thoughts are billed as output, cached input as
//! cache reads, tool-use prompt tokens as input.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::UsageScanner;
use super::sse::{Event, Handler, SseReader, contains, object_after_key};
use crate::domain::Usage;

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

/// `usageMetadata` -> [`Usage`].
pub fn gemini_usage(u: &Value) -> Usage {
    let prompt = n(u, "promptTokenCount");
    let cached = n(u, "cachedContentTokenCount");
    Usage {
        input_tokens: prompt.saturating_sub(cached) + n(u, "toolUsePromptTokenCount"),
        output_tokens: n(u, "candidatesTokenCount") + n(u, "thoughtsTokenCount"),
        cache_creation_5m_tokens: 0,
        cache_creation_1h_tokens: 0,
        cache_read_tokens: cached,
        web_search_requests: 0,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Chunk {
    usage_metadata: Option<Value>,
    #[serde(default)]
    candidates: Vec<Candidate>,
    model_version: Option<String>,
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    finish_reason: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    usage: Option<Usage>,
    model: Option<String>,
    finished: bool,
    error: bool,
    chunks: u64,
}

impl Handler for State {
    fn wants(&self, _name: &[u8]) -> bool {
        true
    }

    fn event(&mut self, e: Event<'_>) {
        let data = e.data;
        let interesting = contains(data, b"\"usageMetadata\"")
            || contains(data, b"\"finishReason\"")
            || contains(data, b"\"error\"");
        if !interesting {
            self.chunks += 1;
            return;
        }
        if e.truncated {
            self.chunks += 1;
            if let Some(u) = object_after_key(data, "usageMetadata") {
                self.usage = Some(gemini_usage(&u));
            }
            return;
        }
        let Ok(c) = serde_json::from_slice::<Chunk>(data) else {
            self.chunks += 1;
            return;
        };
        if c.error.is_some() {
            self.error = true;
            return;
        }
        if !c.candidates.is_empty() {
            self.chunks += 1;
        }
        if let Some(m) = c.model_version {
            self.model = Some(m);
        }
        if let Some(u) = c.usage_metadata.as_ref().filter(|u| u.is_object()) {
            self.usage = Some(gemini_usage(u));
            if c.candidates
                .iter()
                .any(|x| x.finish_reason.as_deref().is_some_and(|r| !r.is_empty()))
            {
                self.finished = true;
            }
        }
    }
}

/// Scanner for a Gemini SSE stream.
#[derive(Debug, Default)]
pub struct GeminiSseScanner {
    reader: SseReader,
    state: State,
}

impl GeminiSseScanner {
    pub fn new() -> Self {
        Self::default()
    }
}

impl UsageScanner for GeminiSseScanner {
    fn feed(&mut self, chunk: &[u8]) {
        self.reader.feed(chunk, &mut self.state);
    }

    fn is_final(&self) -> bool {
        self.state.finished
    }

    /// The last usage seen (cumulative); before the final chunk, output is at least one token per
    /// content chunk.
    fn usage(&mut self) -> Usage {
        let mut u = self.state.usage.unwrap_or_default();
        if !self.state.finished {
            u.output_tokens = u.output_tokens.max(self.state.chunks);
        }
        u
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
    use super::super::testing::{every_chunking, sse_every_ending};
    use super::*;

    fn usage(input: u64, read: u64, output: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: read,
            ..Usage::default()
        }
    }

    const STREAM: &str = r#"data: {"candidates": [{"content": {"parts": [{"text": "Hello \"usageMetadata\": {\"promptTokenCount\": 1}"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 1200,"cachedContentTokenCount": 1024,"totalTokenCount": 1205,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 1200}]},"modelVersion": "gemini-2.5-flash","responseId": "r1"}

data: {"candidates": [{"content": {"parts": [{"text": " wörld 🌍"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 1200,"cachedContentTokenCount": 1024,"candidatesTokenCount": 4,"totalTokenCount": 1210},"modelVersion": "gemini-2.5-flash","responseId": "r1"}

data: {"candidates": [{"content": {"parts": [{"text": "!"}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 1200,"cachedContentTokenCount": 1024,"candidatesTokenCount": 9,"thoughtsTokenCount": 120,"totalTokenCount": 1329},"modelVersion": "gemini-2.5-flash","responseId": "r1"}

"#;

    #[test]
    fn stream_keeps_the_last_usage_and_bills_thoughts_as_output() {
        let o = sse_every_ending(GeminiSseScanner::new, STREAM);
        assert_eq!(o.usage, usage(176, 1024, 129));
        assert!(o.is_final && !o.saw_error);
        assert_eq!(o.model.as_deref(), Some("gemini-2.5-flash"));
    }

    #[test]
    fn cut_stream_keeps_the_usage_so_far() {
        let cut = &STREAM[..STREAM.rfind("data: ").unwrap()];
        let o = sse_every_ending(GeminiSseScanner::new, cut);
        assert!(!o.is_final);
        assert_eq!(o.usage, usage(176, 1024, 4));
        let bare = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]}}]}\n\ndata: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"b\"}]}}]}\n\n";
        assert_eq!(
            sse_every_ending(GeminiSseScanner::new, bare).usage,
            usage(0, 0, 2)
        );
    }

    #[test]
    fn error_chunk_and_tool_prompt() {
        let e = "data: {\"error\": {\"code\": 503, \"message\": \"overloaded\", \"status\": \"UNAVAILABLE\"}}\n\n";
        let o = sse_every_ending(GeminiSseScanner::new, e);
        assert!(o.saw_error && !o.is_final);
        let t = "data: {\"candidates\":[{\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":10,\"toolUsePromptTokenCount\":5,\"candidatesTokenCount\":2}}\n\n";
        assert_eq!(
            sse_every_ending(GeminiSseScanner::new, t).usage,
            usage(15, 0, 2)
        );
    }

    #[test]
    fn json_body() {
        let body = r#"{
  "candidates": [{"content": {"parts": [{"text": "{\"usageMetadata\":{\"promptTokenCount\":5}}"}], "role": "model"}, "finishReason": "STOP", "index": 0}],
  "usageMetadata": {"promptTokenCount": 50, "cachedContentTokenCount": 20, "candidatesTokenCount": 7, "thoughtsTokenCount": 3, "totalTokenCount": 60},
  "modelVersion": "gemini-2.5-pro"
}"#;
        let o = every_chunking(|| JsonBodyScanner::new(JsonShape::Gemini), body.as_bytes());
        assert_eq!(o.usage, usage(30, 20, 10));
        assert!(o.is_final);
        assert_eq!(o.model.as_deref(), Some("gemini-2.5-pro"));
    }
}
