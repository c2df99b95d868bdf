//! The usage the mock reports, computed by a fixed rule so tests can predict every number.
//!
//! The relay meters tokens from the vendor's `usage`, so the mock must report numbers a test can
//! compute on its own from the request it sent:
//!
//! * **total input** = `ceil(body_bytes / 4)` of the raw request body;
//! * **cache creation**: the prompt is read in Anthropic's cache order as a list of *items*: each
//!   tool definition (`tools[i]`), each system block (a plain-string `system` is one item), each
//!   message content block (a plain-string `content` is one item). An item's size is the length of
//!   its compact JSON (`serde_json::to_string`). Every item carrying
//!   `cache_control: {"type":"ephemeral"}` is a breakpoint; the items since the previous breakpoint
//!   (or the start) are a segment worth `ceil(segment_bytes / 4)` tokens, written to the 1h cache
//!   when the breakpoint says `"ttl":"1h"` and to the 5m cache otherwise (`"5m"` or no ttl). The
//!   sum is capped at the total input;
//! * **input_tokens** = total input − cache creation (it counts uncached input only, as Anthropic's
//!   does); **cache_read_input_tokens** = 0 (set an override to test reads);
//! * **output_tokens** = words generated = `min(max_tokens, reply words)`.
//!
//! [`Usage`] is also the type of the per-key override, reported verbatim.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The 5m/1h split of `cache_creation_input_tokens`, as in Anthropic's `usage.cache_creation`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheCreation {
    pub ephemeral_5m_input_tokens: u64,
    pub ephemeral_1h_input_tokens: u64,
}

/// Anthropic's `usage.server_tool_use`; only reported when an override sets it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerToolUse {
    pub web_search_requests: u64,
    pub web_fetch_requests: u64,
}

/// Anthropic's `usage` object with every field the relay meters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation: CacheCreation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_tool_use: Option<ServerToolUse>,
}

impl Usage {
    /// The full `usage` JSON of a non-stream Message.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("usage serializes")
    }

    /// `message_start`'s usage: the input side, with output_tokens as the placeholder 1 that
    /// Anthropic sends before any text exists.
    pub(crate) fn start_json(&self) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation": self.cache_creation,
            "output_tokens": 1,
        })
    }

    /// `message_delta`'s usage: cumulative output, plus the input fields (never the 5m/1h split,
    /// which exists only in `message_start`) when `full` is asked for.
    pub(crate) fn delta_json(&self, full: bool) -> Value {
        let mut usage = json!({ "output_tokens": self.output_tokens });
        if full {
            usage["input_tokens"] = json!(self.input_tokens);
            usage["cache_creation_input_tokens"] = json!(self.cache_creation_input_tokens);
            usage["cache_read_input_tokens"] = json!(self.cache_read_input_tokens);
        }
        if let Some(tools) = self.server_tool_use {
            usage["server_tool_use"] = json!(tools);
        }
        usage
    }
}

/// Tokens for `bytes` bytes: the mock's one conversion, `ceil(bytes / 4)`.
pub fn tokens_for_bytes(bytes: usize) -> u64 {
    bytes.div_ceil(4) as u64
}

/// The usage for a request body by the rule in the module docs.
pub fn estimate_usage(body_len: usize, body: &Value, output_tokens: u64) -> Usage {
    let total = tokens_for_bytes(body_len);
    let (five_min, one_hour) = cache_creation_tokens(body);
    // Cap at the total input; the 1h part is written first (Anthropic orders 1h breakpoints first).
    let one_hour = one_hour.min(total);
    let five_min = five_min.min(total - one_hour);
    let creation = one_hour + five_min;
    Usage {
        input_tokens: total - creation,
        output_tokens,
        cache_creation_input_tokens: creation,
        cache_read_input_tokens: 0,
        cache_creation: CacheCreation {
            ephemeral_5m_input_tokens: five_min,
            ephemeral_1h_input_tokens: one_hour,
        },
        server_tool_use: None,
    }
}

/// `(5m tokens, 1h tokens)` of the cache_control-marked segments of the prompt.
pub fn cache_creation_tokens(body: &Value) -> (u64, u64) {
    let mut items: Vec<&Value> = Vec::new();
    if let Some(tools) = body.get("tools").and_then(Value::as_array) {
        items.extend(tools);
    }
    match body.get("system") {
        Some(Value::Array(blocks)) => items.extend(blocks),
        Some(other @ Value::String(_)) => items.push(other),
        _ => {}
    }
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        for message in messages {
            match message.get("content") {
                Some(Value::Array(blocks)) => items.extend(blocks),
                Some(other) => items.push(other),
                None => {}
            }
        }
    }

    let (mut five_min, mut one_hour, mut segment) = (0u64, 0u64, 0usize);
    for item in items {
        segment += serde_json::to_string(item).map_or(0, |s| s.len());
        let Some(marker) = item.get("cache_control") else {
            continue;
        };
        if marker.get("type").and_then(Value::as_str) != Some("ephemeral") {
            continue;
        }
        let tokens = tokens_for_bytes(segment);
        segment = 0;
        if marker.get("ttl").and_then(Value::as_str) == Some("1h") {
            one_hour += tokens;
        } else {
            five_min += tokens;
        }
    }
    (five_min, one_hour)
}
