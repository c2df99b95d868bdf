use serde::{Deserialize, Serialize};

use super::{AccountId, GroupId, KeyId, UserId};
use crate::money::Money;

/// Tokens one response consumed, normalised across vendors: `input_tokens` is uncached input only,
/// cache writes are split by TTL, reasoning is inside `output_tokens`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_5m_tokens: u64,
    pub cache_creation_1h_tokens: u64,
    pub cache_read_tokens: u64,
    pub web_search_requests: u64,
}

impl Usage {
    /// All prompt-side tokens (uncached + written + read), which selects the long-context tier.
    pub fn prompt_tokens(&self) -> u64 {
        self.input_tokens
            + self.cache_creation_5m_tokens
            + self.cache_creation_1h_tokens
            + self.cache_read_tokens
    }

    pub fn cache_creation_tokens(&self) -> u64 {
        self.cache_creation_5m_tokens + self.cache_creation_1h_tokens
    }

    pub fn is_empty(&self) -> bool {
        *self == Usage::default()
    }
}

/// One billed (or refused-to-bill) request, as written to the usage log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub request_id: String,
    pub user_id: UserId,
    pub key_id: KeyId,
    pub group_id: GroupId,
    pub account_id: Option<AccountId>,
    pub model: String,
    pub usage: Usage,
    pub cost: Money,
    pub stream: bool,
    /// How the response ended (see the settlement table).
    pub ending: crate::meter::Ending,
    pub duration_ms: u64,
    /// Unix milliseconds.
    pub created_at: i64,
}
