//! Vendor wire formats: request validation, sticky-session keys, upstream header and body policy
//! per dialect, and response rewriting. Response usage is read by the scanners in
//! [`crate::meter`].

pub mod anthropic;
pub mod claude_code;
pub mod gemini;
pub mod json;
pub mod openai;
pub mod reframe;

use sha2::{Digest, Sha256};

use crate::meter::{CacheTtl, CostEstimate};

/// What parsing a request body yields, whatever its dialect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedBody {
    pub model: String,
    pub stream: bool,
    /// The output cap the body sets (all choices together); `None`: the model's limit.
    pub max_tokens: Option<u64>,
    /// The conversation's own session id or a hash of its stable prefix (not yet namespaced).
    pub session: Option<String>,
    pub cache_ttl: Option<CacheTtl>,
    /// Chat Completions: the client asked for the usage chunk (true everywhere else).
    pub include_usage: bool,
}

impl ParsedBody {
    pub fn estimate(&self, body_bytes: usize) -> CostEstimate {
        CostEstimate {
            model: self.model.clone(),
            body_bytes: body_bytes as u64,
            cache_ttl: self.cache_ttl,
            max_output_tokens: self.max_tokens,
            alternatives: Vec::new(),
        }
    }
}

/// A stable key for clients that send no session id: the system prompt and first message are
/// the same on every turn of a conversation, so they keep it on one account (and its cache).
pub(crate) fn prefix_hash(system: Option<&str>, first: Option<&str>) -> Option<String> {
    if system.is_none() && first.is_none() {
        return None;
    }
    let mut h = Sha256::new();
    if let Some(s) = system {
        h.update(s.as_bytes());
    }
    h.update([0]);
    if let Some(f) = first {
        h.update(f.as_bytes());
    }
    Some(format!("h{}", &hex::encode(h.finalize())[..32]))
}
