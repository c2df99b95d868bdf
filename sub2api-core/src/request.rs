//! What the relay knows about a request after parsing it: the [`RelayRequest`] context that the
//! inner layers read from the request extensions.

use std::sync::Arc;
use std::time::Instant;

use crate::dialect::Dialect;
use crate::meter::CostEstimate;
use crate::scheduler::SessionKey;

/// The id of one relay request: the idempotency key of its settlement, echoed as `x-request-id`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(pub Arc<str>);

impl RequestId {
    /// A UUIDv7: time-ordered, so the indexes keyed by request id (holds, the journal, the usage
    /// log) grow at their right edge instead of touching a random page per insert, which is most
    /// of what a durable ledger writes; its 74 random bits still make it unguessable.
    pub fn generate() -> Self {
        let mut buf = [0u8; 4 + uuid::fmt::Simple::LENGTH];
        buf[..4].copy_from_slice(b"req_");
        let hex = uuid::Uuid::now_v7()
            .simple()
            .encode_lower(&mut buf[4..])
            .len();
        let id = std::str::from_utf8(&buf[..4 + hex]).expect("ASCII");
        RequestId(Arc::from(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which relay operation a request is. The endpoint decides the wire format of the body and of
/// the response (and so the usage scanner); [`Endpoint::dialect`] is the family it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /v1/messages`: relayed and billed.
    Messages,
    /// `POST /v1/messages/count_tokens`: relayed, never billed.
    CountTokens,
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/responses` (and `/backend-api/codex/responses`).
    Responses,
    /// `POST /v1beta/models/{model}:generateContent`.
    GenerateContent,
    /// `POST /v1beta/models/{model}:streamGenerateContent` (SSE with `alt=sse`).
    StreamGenerateContent,
    /// `POST /v1beta/models/{model}:countTokens`: relayed, never billed.
    GeminiCountTokens,
}

impl Endpoint {
    pub fn billable(self) -> bool {
        !matches!(self, Endpoint::CountTokens | Endpoint::GeminiCountTokens)
    }

    pub fn dialect(self) -> Dialect {
        match self {
            Endpoint::Messages | Endpoint::CountTokens => Dialect::Anthropic,
            Endpoint::ChatCompletions | Endpoint::Responses => Dialect::OpenAi,
            Endpoint::GenerateContent
            | Endpoint::StreamGenerateContent
            | Endpoint::GeminiCountTokens => Dialect::Gemini,
        }
    }

    /// The Gemini method name in the path (`models/{model}:{method}`).
    pub fn gemini_method(self) -> Option<&'static str> {
        match self {
            Endpoint::GenerateContent => Some("generateContent"),
            Endpoint::StreamGenerateContent => Some("streamGenerateContent"),
            Endpoint::GeminiCountTokens => Some("countTokens"),
            _ => None,
        }
    }
}

/// A parsed relay request.
#[derive(Clone, Debug)]
pub struct RelayRequest {
    pub request_id: RequestId,
    pub dialect: Dialect,
    pub endpoint: Endpoint,
    /// The model the client asked for: what is priced, logged and echoed back in responses
    /// (an account's model mapping changes only what goes upstream).
    pub model: String,
    pub stream: bool,
    pub session: Option<SessionKey>,
    pub estimate: CostEstimate,
    /// Chat Completions streams: the client asked for the usage chunk
    /// (`stream_options.include_usage`). The relay always asks upstream and removes the chunk
    /// again when this is false. True for every other endpoint.
    pub include_usage: bool,
    pub received_at: Instant,
}

#[cfg(test)]
mod tests {
    use super::RequestId;

    #[test]
    fn generated_ids_are_prefixed_hex_and_time_ordered() {
        let ids: Vec<RequestId> = (0..1000).map(|_| RequestId::generate()).collect();
        for id in &ids {
            let hex = id.as_str().strip_prefix("req_").expect("req_ prefix");
            assert_eq!(hex.len(), 32, "{id:?}");
            assert!(
                hex.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
        }
        // UUIDv7: generated later sorts later, so the indexes keyed by it grow at one edge.
        assert!(ids.windows(2).all(|w| w[0].as_str() < w[1].as_str()));
    }
}
