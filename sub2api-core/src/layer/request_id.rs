//! `x-request-id` out. The id is the settlement's idempotency key, so the relay always generates
//! it: trusting a client-supplied id would let a client replay an id and have its second request
//! "already settled", i.e. free.
//!
//! ```
//! use sub2api_core::layer::request_id::RequestIdLayer;
//! let layer = RequestIdLayer;
//! # let _ = layer;
//! ```

use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};

use crate::request::RequestId;

pub const HEADER: &str = "x-request-id";

#[derive(Clone, Copy, Debug, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

#[derive(Clone, Debug)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for RequestIdService<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<RB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = RequestId::generate();
        req.extensions_mut().insert(id.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut res = fut.await?;
            if let Ok(v) = HeaderValue::from_str(id.as_str()) {
                res.headers_mut().insert(HEADER, v);
            }
            Ok(res)
        })
    }
}
