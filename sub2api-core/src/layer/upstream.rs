//! Builds the vendor request for the leased account and sends it on a pooled client: the
//! account's base URL and credentials, the header whitelist (the client's own credentials never
//! leave), `anthropic-version` when missing. Connection failures and a missing response head
//! within the first-byte timeout are reported as unreachable, which failover may retry.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use sub2api_core::layer::upstream::Upstream;
//! use sub2api_core::memory::MemoryAccountProvider;
//! let upstream = Upstream::new(Upstream::default_client(), Arc::new(MemoryAccountProvider::new(vec![])), Duration::from_secs(600));
//! # let _ = upstream;
//! ```

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use tower::Service;

use crate::account_provider::AccountProvider;
use crate::body::{RelayBody, boxed};
use crate::domain::{Account, Credentials};
use crate::error::RelayError;
use crate::protocol::anthropic;

#[derive(Clone)]
pub struct Upstream {
    client: reqwest::Client,
    accounts: Arc<dyn AccountProvider>,
    first_byte_timeout: Duration,
}

impl Upstream {
    pub fn new(client: reqwest::Client, accounts: Arc<dyn AccountProvider>, first_byte_timeout: Duration) -> Self {
        Upstream { client, accounts, first_byte_timeout }
    }

    /// A pooled HTTP/1.1 + HTTP/2-capable client with rustls (ring) and no automatic
    /// decompression, so the meter sees the bytes the vendor sent.
    pub fn default_client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .no_proxy()
            .build()
            .expect("reqwest client with the ring provider")
    }
}

fn apply_credentials(headers: &mut HeaderMap, creds: &Credentials) -> Result<(), RelayError> {
    let bad = |_| RelayError::internal("account credentials are not a valid header value");
    match creds {
        Credentials::ApiKey(k) => {
            let mut v = HeaderValue::from_str(k.expose()).map_err(bad)?;
            v.set_sensitive(true);
            headers.insert(HeaderName::from_static("x-api-key"), v);
        }
        Credentials::Bearer(t) => {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", t.expose())).map_err(bad)?;
            v.set_sensitive(true);
            headers.insert(http::header::AUTHORIZATION, v);
        }
    }
    Ok(())
}

fn client_response(res: reqwest::Response) -> Response<RelayBody> {
    let res: Response<reqwest::Body> = res.into();
    let (parts, body) = res.into_parts();
    let mut out = Response::new(boxed(body));
    *out.status_mut() = parts.status;
    for name in anthropic::RETURNED_HEADERS {
        if let Some(v) = parts.headers.get(*name) {
            out.headers_mut().insert(HeaderName::from_static(name), v.clone());
        }
    }
    // Failover reads these to park the account until the vendor's reset. They only travel on
    // failures; a successful response never shows which account's limits served it.
    if !parts.status.is_success() {
        for (k, v) in parts.headers.iter() {
            if k.as_str().starts_with("anthropic-ratelimit-") {
                out.headers_mut().append(k.clone(), v.clone());
            }
        }
    }
    out
}

impl Service<Request<Bytes>> for Upstream {
    type Response = Response<RelayBody>;
    type Error = RelayError;
    type Future = BoxFuture<'static, Result<Response<RelayBody>, RelayError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), RelayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let account = req
                .extensions()
                .get::<Arc<Account>>()
                .cloned()
                .ok_or_else(|| RelayError::internal("upstream needs a scheduled account"))?;
            let creds = this.accounts.credentials(&account).await.map_err(|e| {
                tracing::error!(account = %account.name, error = %e, "no credentials");
                RelayError::unreachable(account.clone(), "upstream account has no credentials")
            })?;
            let (parts, body) = req.into_parts();
            let mut headers = anthropic::upstream_headers(&parts.headers);
            apply_credentials(&mut headers, &creds)?;
            let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let url = format!("{}{}", account.base_url.trim_end_matches('/'), path);
            let send = this.client.request(parts.method, url).headers(headers).body(body).send();
            match tokio::time::timeout(this.first_byte_timeout, send).await {
                Ok(Ok(res)) => Ok(client_response(res)),
                Ok(Err(e)) => {
                    tracing::warn!(account = %account.name, error = %without_url(&e), "upstream request failed");
                    Err(RelayError::unreachable(account, "upstream unreachable"))
                }
                Err(_) => Err(RelayError::unreachable(account, "upstream did not answer in time")),
            }
        })
    }
}

/// reqwest errors print the URL; ours carry no secrets in URLs, but keep logs to the cause.
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "<upstream>");
    }
    s
}
