//! The wire dialect a client speaks. It decides how errors are rendered (JSON body, or an SSE
//! `error` event once a stream has started) and which usage scanner reads the response.

use bytes::Bytes;
use http::StatusCode;
use serde_json::json;

/// The API shape a client expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    Anthropic,
    OpenAi,
    Gemini,
}

/// The error classes a relay refusal maps to; each dialect names them its own way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    InvalidRequest,
    Authentication,
    Billing,
    Permission,
    NotFound,
    RequestTooLarge,
    RateLimited,
    Api,
    Timeout,
    Overloaded,
}

impl ErrorClass {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorClass::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorClass::Authentication => StatusCode::UNAUTHORIZED,
            ErrorClass::Billing => StatusCode::PAYMENT_REQUIRED,
            ErrorClass::Permission => StatusCode::FORBIDDEN,
            ErrorClass::NotFound => StatusCode::NOT_FOUND,
            ErrorClass::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorClass::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorClass::Api => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorClass::Timeout => StatusCode::GATEWAY_TIMEOUT,
            // Anthropic uses 529; for a relay, "no account can serve you right now" is a 503.
            ErrorClass::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn anthropic_type(self) -> &'static str {
        match self {
            ErrorClass::InvalidRequest => "invalid_request_error",
            ErrorClass::Authentication => "authentication_error",
            ErrorClass::Billing => "billing_error",
            ErrorClass::Permission => "permission_error",
            ErrorClass::NotFound => "not_found_error",
            ErrorClass::RequestTooLarge => "request_too_large",
            ErrorClass::RateLimited => "rate_limit_error",
            ErrorClass::Api => "api_error",
            ErrorClass::Timeout => "timeout_error",
            ErrorClass::Overloaded => "overloaded_error",
        }
    }

    fn openai_type_code(self) -> (&'static str, &'static str) {
        match self {
            ErrorClass::InvalidRequest => ("invalid_request_error", "invalid_request"),
            ErrorClass::Authentication => ("invalid_request_error", "invalid_api_key"),
            ErrorClass::Billing => ("insufficient_quota", "insufficient_quota"),
            ErrorClass::Permission => ("invalid_request_error", "permission_denied"),
            ErrorClass::NotFound => ("invalid_request_error", "not_found"),
            ErrorClass::RequestTooLarge => ("invalid_request_error", "request_too_large"),
            ErrorClass::RateLimited => ("rate_limit_exceeded", "rate_limit_exceeded"),
            ErrorClass::Api => ("api_error", "internal_error"),
            ErrorClass::Timeout => ("api_error", "timeout"),
            ErrorClass::Overloaded => ("server_error", "overloaded"),
        }
    }

    fn google_status(self) -> &'static str {
        match self {
            ErrorClass::InvalidRequest | ErrorClass::RequestTooLarge => "INVALID_ARGUMENT",
            ErrorClass::Authentication => "UNAUTHENTICATED",
            ErrorClass::Billing | ErrorClass::RateLimited => "RESOURCE_EXHAUSTED",
            ErrorClass::Permission => "PERMISSION_DENIED",
            ErrorClass::NotFound => "NOT_FOUND",
            ErrorClass::Api => "INTERNAL",
            ErrorClass::Timeout => "DEADLINE_EXCEEDED",
            ErrorClass::Overloaded => "UNAVAILABLE",
        }
    }
}

impl Dialect {
    /// The dialect of a relay route, from its path alone (so even an unauthenticated or malformed
    /// request is answered in the caller's shape).
    pub fn from_path(path: &str) -> Dialect {
        if path.starts_with("/v1beta/") || path.starts_with("/v1/models/") && path.contains(':') {
            Dialect::Gemini
        } else if path.starts_with("/v1/chat/")
            || path.starts_with("/v1/responses")
            || path.contains("/codex/")
        {
            Dialect::OpenAi
        } else {
            Dialect::Anthropic
        }
    }

    /// The JSON error body in this dialect.
    pub fn error_body(self, class: ErrorClass, message: &str, request_id: Option<&str>) -> Bytes {
        let v = match self {
            Dialect::Anthropic => {
                let mut v = json!({"type": "error", "error": {"type": class.anthropic_type(), "message": message}});
                if let Some(id) = request_id {
                    v["request_id"] = json!(id);
                }
                v
            }
            Dialect::OpenAi => {
                let (ty, code) = class.openai_type_code();
                json!({"error": {"message": message, "type": ty, "param": null, "code": code}})
            }
            Dialect::Gemini => json!({"error": {
                "code": class.status().as_u16(),
                "message": message,
                "status": class.google_status(),
            }}),
        };
        Bytes::from(serde_json::to_vec(&v).expect("static JSON shape"))
    }

    /// The same error as an SSE frame, for a stream that has already started (the status line is
    /// gone, so the error must travel in-band).
    pub fn sse_error(self, class: ErrorClass, message: &str) -> Bytes {
        let body = self.error_body(class, message, None);
        let body = std::str::from_utf8(&body).expect("serde_json writes UTF-8");
        Bytes::from(match self {
            Dialect::Anthropic => format!("event: error\ndata: {body}\n\n"),
            Dialect::OpenAi | Dialect::Gemini => format!("data: {body}\n\n"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialect_from_path() {
        assert_eq!(Dialect::from_path("/v1/messages"), Dialect::Anthropic);
        assert_eq!(Dialect::from_path("/v1/chat/completions"), Dialect::OpenAi);
        assert_eq!(
            Dialect::from_path("/v1beta/models/gemini-2.5-pro:generateContent"),
            Dialect::Gemini
        );
        assert_eq!(
            Dialect::from_path("/v1/models/gemini-2.5-pro:streamGenerateContent"),
            Dialect::Gemini
        );
        assert_eq!(Dialect::from_path("/v1/models"), Dialect::Anthropic);
    }

    #[test]
    fn anthropic_error_shape() {
        let b = Dialect::Anthropic.error_body(ErrorClass::Billing, "no money", Some("req_1"));
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "billing_error");
        assert_eq!(v["request_id"], "req_1");
        let sse = Dialect::Anthropic.sse_error(ErrorClass::Api, "cut");
        assert!(sse.starts_with(b"event: error\ndata: {"));
        assert!(sse.ends_with(b"\n\n"));
    }
}
