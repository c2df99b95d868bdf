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
    pub fn generate() -> Self {
        RequestId(Arc::from(format!("req_{}", uuid::Uuid::new_v4().simple())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which relay operation a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /v1/messages`: relayed and billed.
    Messages,
    /// `POST /v1/messages/count_tokens`: relayed, never billed.
    CountTokens,
}

impl Endpoint {
    pub fn billable(self) -> bool {
        matches!(self, Endpoint::Messages)
    }
}

/// A parsed relay request.
#[derive(Clone, Debug)]
pub struct RelayRequest {
    pub request_id: RequestId,
    pub dialect: Dialect,
    pub endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
    pub session: Option<SessionKey>,
    pub estimate: CostEstimate,
    pub received_at: Instant,
}
