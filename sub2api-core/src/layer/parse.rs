//! Reads the body (bounded) and parses what the inner layers need into a
//! [`RelayRequest`]: dialect, endpoint, model, stream flag, sticky session key (namespaced by API
//! key) and the worst-case cost estimate. Bad input is refused here, before anything is held or
//! sent upstream.
//!
//! ```
//! use sub2api_core::layer::parse::ParseLayer;
//! let layer = ParseLayer::new(32 * 1024 * 1024);
//! # let _ = layer;
//! ```

use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower::{Layer, Service};

use crate::BoxError;
use crate::dialect::Dialect;
use crate::domain::Principal;
use crate::error::RelayError;
use crate::protocol::anthropic;
use crate::request::{Endpoint, RelayRequest, RequestId};
use crate::scheduler::SessionKey;

#[derive(Clone, Copy, Debug)]
pub struct ParseLayer {
    max_body_bytes: usize,
}

impl ParseLayer {
    pub fn new(max_body_bytes: usize) -> Self {
        ParseLayer { max_body_bytes }
    }
}

impl<S> Layer<S> for ParseLayer {
    type Service = Parse<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Parse { inner, max_body_bytes: self.max_body_bytes }
    }
}

#[derive(Clone, Debug)]
pub struct Parse<S> {
    inner: S,
    max_body_bytes: usize,
}

/// The relay endpoint a path names.
pub fn endpoint(path: &str) -> Option<(Dialect, Endpoint)> {
    match path {
        "/v1/messages" => Some((Dialect::Anthropic, Endpoint::Messages)),
        "/v1/messages/count_tokens" => Some((Dialect::Anthropic, Endpoint::CountTokens)),
        _ => None,
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
        Err(e) if e.is::<LengthLimitError>() => {
            Err(RelayError::too_large(format!("request body exceeds the relay's limit of {limit} bytes")))
        }
        Err(e) => Err(RelayError::invalid(format!("could not read request body: {e}"))),
    }
}

impl<S, B, RB> Service<Request<B>> for Parse<S>
where
    S: Service<Request<Bytes>, Response = Response<RB>, Error = RelayError> + Clone + Send + 'static,
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
        Box::pin(async move {
            let received_at = Instant::now();
            let (mut parts, body) = req.into_parts();
            let (dialect, endpoint) = endpoint(parts.uri.path())
                .ok_or_else(|| RelayError::not_found(format!("no relay route for {}", parts.uri.path())))?;
            if parts.method != http::Method::POST {
                return Err(RelayError::not_found(format!("{} {} is not a relay route", parts.method, parts.uri.path())));
            }
            let body = collect_bounded(body, limit).await?;
            let parsed = anthropic::parse(endpoint, &body)?;
            // Sessions are per API key: two tenants sending the same session id never share a binding.
            let ns = parts.extensions.get::<Principal>().map(|p| p.key.0).unwrap_or(0);
            let session = parsed.session.as_ref().map(|s| SessionKey(format!("{ns}:{s}")));
            let request_id = parts.extensions.get::<RequestId>().cloned().unwrap_or_else(RequestId::generate);
            let ctx = RelayRequest {
                request_id,
                dialect,
                endpoint,
                model: parsed.model.clone(),
                stream: parsed.stream,
                session,
                estimate: parsed.estimate(body.len()),
                received_at,
            };
            parts.extensions.insert(ctx);
            inner.call(Request::from_parts(parts, body)).await
        })
    }
}
