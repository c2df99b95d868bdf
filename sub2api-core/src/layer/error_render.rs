//! Renders a [`RelayError`] as a response in the caller's dialect: Anthropic, OpenAI or Google
//! JSON, with `retry-after` when the client should come back later. After this layer the service
//! is infallible, which is what HTTP servers want.

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::{HeaderValue, Request, Response, header};
use tower::{Layer, Service};

use crate::body::{RelayBody, full};
use crate::dialect::Dialect;
use crate::error::RelayError;
use crate::request::RequestId;

#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorRenderLayer;

impl<S> Layer<S> for ErrorRenderLayer {
    type Service = ErrorRender<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ErrorRender { inner }
    }
}

#[derive(Clone, Debug)]
pub struct ErrorRender<S> {
    inner: S,
}

/// The response for an error, in a dialect.
pub fn render(dialect: Dialect, err: &RelayError, request_id: Option<&str>) -> Response<RelayBody> {
    let body = dialect.error_body(err.class, &err.message, request_id);
    let mut res = Response::new(full(body));
    *res.status_mut() = err.class.status();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(after) = err.retry_after {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    res
}

impl<S, B> Service<Request<B>> for ErrorRender<S>
where
    S: Service<Request<B>, Response = Response<RelayBody>, Error = RelayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<RelayBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<RelayBody>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(_)) | Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let dialect = Dialect::from_path(req.uri().path());
        let id = req.extensions().get::<RequestId>().cloned();
        let fut = self.inner.call(req);
        Box::pin(async move {
            Ok(match fut.await {
                Ok(res) => res,
                Err(e) => {
                    tracing::debug!(error = %e, "request refused");
                    render(dialect, &e, id.as_ref().map(|i| i.as_str()))
                }
            })
        })
    }
}
