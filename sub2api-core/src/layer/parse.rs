//! Reads the body (bounded) and parses what the inner layers need into a
//! [`RelayRequest`]: dialect, endpoint, model, stream flag, sticky session key (namespaced by API
//! key) and the worst-case cost estimate, for Anthropic Messages, OpenAI Chat Completions and
//! Responses, and Gemini generateContent. Bad input is refused here, in the caller's dialect,
//! before anything is held or sent upstream; so is a dialect the key's group does not serve.
//!
//! ```
//! use sub2api_core::layer::parse::ParseLayer;
//! let layer = ParseLayer::new(32 * 1024 * 1024);
//! # let _ = layer;
//! ```

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower::{Layer, Service};

use crate::BoxError;
use crate::account_provider::AccountProvider;
use crate::dialect::Dialect;
use crate::domain::Platform;
use crate::domain::Principal;
use crate::error::RelayError;
use crate::protocol::{anthropic, gemini, openai};
use crate::request::{Endpoint, RelayRequest, RequestId};
use crate::scheduler::SessionKey;

#[derive(Clone)]
pub struct ParseLayer {
    max_body_bytes: usize,
    accounts: Option<Arc<dyn AccountProvider>>,
}

impl ParseLayer {
    pub fn new(max_body_bytes: usize) -> Self {
        ParseLayer {
            max_body_bytes,
            accounts: None,
        }
    }

    /// Lets the estimate know what the key's accounts map the model to, so a model alias the
    /// price table does not know is held (and billed) as the model it is mapped to.
    pub fn with_accounts(mut self, accounts: Arc<dyn AccountProvider>) -> Self {
        self.accounts = Some(accounts);
        self
    }
}

impl<S> Layer<S> for ParseLayer {
    type Service = Parse<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Parse {
            inner,
            max_body_bytes: self.max_body_bytes,
            accounts: self.accounts.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Parse<S> {
    inner: S,
    max_body_bytes: usize,
    accounts: Option<Arc<dyn AccountProvider>>,
}

/// The relay endpoint a path names.
pub fn endpoint(path: &str) -> Option<(Dialect, Endpoint)> {
    let e = match path {
        "/v1/messages" => Endpoint::Messages,
        "/v1/messages/count_tokens" => Endpoint::CountTokens,
        "/v1/chat/completions" => Endpoint::ChatCompletions,
        "/v1/responses" | "/backend-api/codex/responses" => Endpoint::Responses,
        _ => gemini::route(path)?.endpoint,
    };
    Some((e.dialect(), e))
}

/// The platform whose accounts serve a dialect.
pub fn platform_of(dialect: Dialect) -> Platform {
    match dialect {
        Dialect::Anthropic => Platform::Anthropic,
        Dialect::OpenAi => Platform::Openai,
        Dialect::Gemini => Platform::Gemini,
    }
}

/// Collects a body up to `limit` bytes.
pub async fn collect_bounded<B>(body: B, limit: usize) -> Result<Bytes, RelayError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(RelayError::too_large(format!(
            "request body exceeds the relay's limit of {limit} bytes"
        ))),
        Err(e) => Err(RelayError::invalid(format!(
            "could not read request body: {e}"
        ))),
    }
}

impl<S, B, RB> Service<Request<B>> for Parse<S>
where
    S: Service<Request<Bytes>, Response = Response<RB>, Error = RelayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<RB>;
    type Error = RelayError;
    type Future = BoxFuture<'static, Result<Response<RB>, RelayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RelayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mut inner = super::take_ready(&mut self.inner);
        let limit = self.max_body_bytes;
        let accounts = self.accounts.clone();
        Box::pin(async move {
            let received_at = Instant::now();
            let (mut parts, body) = req.into_parts();
            let (dialect, endpoint) = endpoint(parts.uri.path()).ok_or_else(|| {
                RelayError::not_found(format!("no relay route for {}", parts.uri.path()))
            })?;
            if parts.method != http::Method::POST {
                return Err(RelayError::not_found(format!(
                    "{} {} is not a relay route",
                    parts.method,
                    parts.uri.path()
                )));
            }
            // A key's pool speaks one vendor API; the relay does not translate between them.
            if let Some(p) = parts.extensions.get::<Principal>()
                && p.group.platform != platform_of(dialect)
            {
                return Err(RelayError::invalid(format!(
                    "this API key belongs to a {} group; call its API instead of {}",
                    p.group.platform.as_str(),
                    parts.uri.path()
                )));
            }
            let body = collect_bounded(body, limit).await?;
            let parsed = match dialect {
                Dialect::Anthropic => anthropic::parse(endpoint, &body)?,
                Dialect::OpenAi => openai::parse(endpoint, &parts.headers, &body)?,
                Dialect::Gemini => {
                    let route = gemini::route(parts.uri.path())
                        .ok_or_else(|| RelayError::not_found("no Gemini route"))?;
                    gemini::parse(&route, &body)?
                }
            };
            // Sessions are per API key: two tenants sending the same session id never share a binding.
            let ns = parts
                .extensions
                .get::<Principal>()
                .map(|p| p.key.0)
                .unwrap_or(0);
            let session = parsed
                .session
                .as_ref()
                .map(|s| SessionKey(format!("{ns}:{s}")));
            let request_id = parts
                .extensions
                .get::<RequestId>()
                .cloned()
                .unwrap_or_else(RequestId::generate);
            let mut estimate = parsed.estimate(body.len());
            if let (Some(accounts), Some(p)) = (&accounts, parts.extensions.get::<Principal>()) {
                for a in accounts
                    .pool(p.group.id)
                    .iter()
                    .filter(|a| a.serves_model(&parsed.model))
                {
                    let m = a.upstream_model(&parsed.model);
                    if m != parsed.model && !estimate.alternatives.iter().any(|x| *x == m) {
                        estimate.alternatives.push(m.into_owned());
                    }
                }
            }
            let ctx = RelayRequest {
                request_id,
                dialect,
                endpoint,
                model: parsed.model.clone(),
                stream: parsed.stream,
                session,
                estimate,
                include_usage: parsed.include_usage,
                received_at,
            };
            parts.extensions.insert(ctx);
            inner.call(Request::from_parts(parts, body)).await
        })
    }
}
