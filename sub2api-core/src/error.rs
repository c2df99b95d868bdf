//! [`RelayError`]: a refusal the client can act on, rendered in its dialect by
//! [`crate::layer::error_render`].

use std::time::Duration;

use crate::dialect::ErrorClass;
use std::sync::Arc;

use crate::domain::Account;

/// An error on the relay path. The message is shown to the client, so it never contains a secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RelayError {
    pub class: ErrorClass,
    pub message: String,
    pub retry_after: Option<Duration>,
    /// Set when an upstream attempt failed before any response: failover may try another account.
    pub unreachable_account: Option<Arc<Account>>,
}

impl RelayError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        RelayError {
            class,
            message: message.into(),
            retry_after: None,
            unreachable_account: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::InvalidRequest, message)
    }

    pub fn authentication(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Authentication, message)
    }

    pub fn billing(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Billing, message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::RequestTooLarge, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::NotFound, message)
    }

    pub fn rate_limited(message: impl Into<String>, retry_after: Duration) -> Self {
        RelayError {
            retry_after: Some(retry_after),
            ..Self::new(ErrorClass::RateLimited, message)
        }
    }

    pub fn overloaded(message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        RelayError {
            retry_after,
            ..Self::new(ErrorClass::Overloaded, message)
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Api, message)
    }

    pub fn unreachable(account: Arc<Account>, message: impl Into<String>) -> Self {
        RelayError {
            unreachable_account: Some(account),
            ..Self::new(ErrorClass::Overloaded, message)
        }
    }
}
