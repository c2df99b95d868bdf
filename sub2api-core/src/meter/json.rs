//! A scanner for non-stream JSON bodies of the OpenAI and Gemini endpoints: keeps the body
//! (bounded), parses it once when asked. Past [`MAX_BODY_BYTES`] only a tail window is kept,
//! where the vendors put the usage object.

use serde_json::Value;

use super::UsageScanner;
use super::sse::object_after_key;
use crate::domain::Usage;

/// The largest body kept whole.
pub const MAX_BODY_BYTES: usize = 32 << 20;
const TAIL_BYTES: usize = 64 << 10;

/// Which body shape is read, and how its usage maps to [`Usage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonShape {
    /// A `chat.completion`: `usage.prompt_tokens`...
    Chat,
    /// A `response` object: `usage.input_tokens`..., `status`.
    Responses,
    /// A `GenerateContentResponse`: `usageMetadata`.
    Gemini,
}

impl JsonShape {
    fn usage_key(self) -> &'static str {
        match self {
            JsonShape::Chat | JsonShape::Responses => "usage",
            JsonShape::Gemini => "usageMetadata",
        }
    }

    pub fn usage(self, v: &Value) -> Usage {
        match self {
            JsonShape::Chat => super::openai::chat_usage(v),
            JsonShape::Responses => super::openai::responses_usage(v),
            JsonShape::Gemini => super::gemini::gemini_usage(v),
        }
    }
}

#[derive(Debug)]
pub struct JsonBodyScanner {
    shape: JsonShape,
    body: Vec<u8>,
    tail: Option<Vec<u8>>,
    fed: u64,
    parsed_at: Option<u64>,
    usage: Usage,
    model: Option<String>,
    is_final: bool,
    error: bool,
}

impl JsonBodyScanner {
    pub fn new(shape: JsonShape) -> Self {
        JsonBodyScanner {
            shape,
            body: Vec::new(),
            tail: None,
            fed: 0,
            parsed_at: None,
            usage: Usage::default(),
            model: None,
            is_final: false,
            error: false,
        }
    }

    fn parse(&mut self) {
        self.usage = Usage::default();
        self.model = None;
        self.is_final = false;
        self.error = false;
        let key = self.shape.usage_key();
        match &self.tail {
            None => {
                let Ok(v) = serde_json::from_slice::<Value>(&self.body) else {
                    return;
                };
                self.error = v.get("error").is_some_and(|e| !e.is_null())
                    || (self.shape == JsonShape::Responses && v["status"] == "failed");
                self.model = v
                    .get("model")
                    .or_else(|| v.get("modelVersion"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                if let Some(u) = v.get(key).filter(|u| u.is_object()) {
                    self.usage = self.shape.usage(u);
                    self.is_final = true;
                }
            }
            Some(tail) => {
                if let Some(u) = object_after_key(tail, key) {
                    self.usage = self.shape.usage(&u);
                    self.is_final = true;
                }
            }
        }
    }
}

impl UsageScanner for JsonBodyScanner {
    fn feed(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        self.fed += chunk.len() as u64;
        match &mut self.tail {
            None if self.body.len() + chunk.len() <= MAX_BODY_BYTES => {
                self.body.extend_from_slice(chunk)
            }
            None => {
                let mut tail = self.body[self.body.len().saturating_sub(TAIL_BYTES)..].to_vec();
                tail.extend_from_slice(chunk);
                self.body = Vec::new();
                self.tail = Some(tail);
            }
            Some(tail) => {
                tail.extend_from_slice(chunk);
                if tail.len() > 2 * TAIL_BYTES {
                    tail.drain(..tail.len() - TAIL_BYTES);
                }
            }
        }
    }

    fn is_final(&self) -> bool {
        self.is_final
    }

    fn usage(&mut self) -> Usage {
        if self.parsed_at != Some(self.fed) {
            self.parse();
            self.parsed_at = Some(self.fed);
        }
        self.usage
    }

    fn saw_error(&self) -> bool {
        self.error
    }

    fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }
}
