//! Builds the vendor request for the leased account ([`build`]) and sends it on a pooled client
//! (one per upstream proxy, [`ClientPool`]): the account's base URL, credentials and identity
//! policy, the header whitelist (the client's own credentials never leave), the per-account body
//! edits. Connection failures and a missing response head within the first-byte timeout are
//! reported as unreachable, which failover may retry.
//!
//! Response side: a successful body is rewritten here for what depends on the account (the
//! mapped model named back as the client's, Code Assist's envelope removed), before the meter
//! sees it, so the scanners always read the client's dialect; the usage is untouched by these
//! rewrites, so billing stays exact. The response carries a [`UsedCredential`] so failover can
//! tell the provider which token a 401 refused.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use sub2api_core::layer::upstream::Upstream;
//! use sub2api_core::memory::MemoryAccountProvider;
//! let upstream = Upstream::new(Upstream::default_client(), Arc::new(MemoryAccountProvider::new(vec![])), Duration::from_secs(600));
//! # let _ = upstream;
//! ```

pub mod build;
mod client;
mod home;
mod url_cache;

pub use build::{ResponsePlan, fits};
pub use client::{ClientPool, builder as client_builder};

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderName, Request, Response};
use tower::Service;

use crate::account_provider::{AccountProvider, fingerprint};
use crate::body::{RelayBody, boxed};
use crate::dialect::Dialect;
use crate::domain::Account;
use crate::error::RelayError;
use crate::protocol::reframe::{SseRewrite, WholeRewrite, map_event_data};
use crate::protocol::{anthropic, gemini, json::replace_strings_at, openai};
use crate::request::RelayRequest;
use crate::runtime::{Entered, LocalRuntime};

/// Where an attempt's request is sent and read.
enum Route {
    /// On the runtime polling the request (the usual case).
    Here,
    /// On the thread's own connection, polled there ([`LocalRuntime`]).
    Local(tokio::runtime::Handle),
    /// On the shared clients, from a task on the relay's home runtime ([`home`]).
    Home(tokio::runtime::Handle),
}

/// Which credentials an attempt used (a fingerprint of the token, never the token), set on the
/// response for failover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedCredential(pub u64);

#[derive(Clone)]
pub struct Upstream {
    clients: ClientPool,
    accounts: Arc<dyn AccountProvider>,
    first_byte_timeout: Duration,
}

impl Upstream {
    /// `client` serves accounts without a proxy; proxied accounts get pooled clients of their own.
    pub fn new(
        client: reqwest::Client,
        accounts: Arc<dyn AccountProvider>,
        first_byte_timeout: Duration,
    ) -> Self {
        Self::with_clients(ClientPool::new(client), accounts, first_byte_timeout)
    }

    pub fn with_clients(
        clients: ClientPool,
        accounts: Arc<dyn AccountProvider>,
        first_byte_timeout: Duration,
    ) -> Self {
        Upstream {
            clients,
            accounts,
            first_byte_timeout,
        }
    }

    /// A pooled HTTP/1.1 + HTTP/2-capable client with rustls (ring) and no automatic
    /// decompression, so the meter sees the bytes the vendor sent.
    pub fn default_client() -> reqwest::Client {
        client::builder()
            .build()
            .expect("reqwest client with the ring provider")
    }

    pub fn clients(&self) -> &ClientPool {
        &self.clients
    }
}

/// Response headers that show the vendor's limits; failover reads them to park the account.
fn is_limit_header(name: &str) -> bool {
    name.starts_with("anthropic-ratelimit-")
        || name.starts_with("x-codex-")
        || name.starts_with("x-ratelimit-")
}

fn client_response(res: Response<RelayBody>, dialect: Dialect) -> Response<RelayBody> {
    let (parts, body) = res.into_parts();
    let mut out = Response::new(body);
    *out.status_mut() = parts.status;
    let returned = match dialect {
        Dialect::Anthropic => anthropic::RETURNED_HEADERS,
        Dialect::OpenAi => openai::RETURNED_HEADERS,
        Dialect::Gemini => gemini::RETURNED_HEADERS,
    };
    for name in returned {
        if let Some(v) = parts.headers.get(*name) {
            out.headers_mut()
                .insert(HeaderName::from_static(name), v.clone());
        }
    }
    // Failover reads these to park the account until the vendor's reset. They only travel on
    // failures; a successful response never shows which account's limits served it.
    if !parts.status.is_success() {
        for (k, v) in parts.headers.iter() {
            if is_limit_header(k.as_str()) {
                out.headers_mut().append(k.clone(), v.clone());
            }
        }
    }
    out
}

/// Where a response names its model.
const MODEL_PATHS: &[&[&str]] = &[
    &["model"],
    &["message", "model"],
    &["response", "model"],
    &["modelVersion"],
];

/// Rewrites one payload per the plan; `None` when nothing changes.
fn rewrite_payload(plan: &ResponsePlan, payload: &[u8]) -> Option<Vec<u8>> {
    let unwrapped = if plan.unwrap_code_assist {
        gemini::unwrap_code_assist(payload)
    } else {
        None
    };
    let current: &[u8] = unwrapped.as_deref().unwrap_or(payload);
    let renamed = plan
        .model_back
        .as_deref()
        .and_then(|m| replace_strings_at(current, MODEL_PATHS, m));
    renamed.or(unwrapped)
}

/// Applies the plan to a successful response body.
fn rewrite_body(body: RelayBody, plan: ResponsePlan, stream: bool) -> RelayBody {
    if plan.is_empty() {
        return body;
    }
    if plan.collect_responses {
        return boxed(WholeRewrite::new(
            body,
            Box::new(move |sse: &[u8]| {
                let collected = openai::collect_responses_sse(sse)?;
                Some(rewrite_payload(&plan, &collected).unwrap_or(collected))
            }),
        ));
    }
    if stream {
        boxed(SseRewrite::new(
            body,
            Box::new(move |event: &[u8]| {
                map_event_data(event, |data| rewrite_payload(&plan, data))
            }),
        ))
    } else {
        boxed(WholeRewrite::new(
            body,
            Box::new(move |b: &[u8]| rewrite_payload(&plan, b)),
        ))
    }
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
            let (parts, body) = req.into_parts();
            let ctx = parts
                .extensions
                .get::<RelayRequest>()
                .ok_or_else(|| RelayError::internal("upstream needs the parse layer before it"))?;
            let creds = this.accounts.credentials(&account).await.map_err(|e| {
                tracing::error!(account = %account.name, error = %e, "no credentials");
                RelayError::unreachable(account.clone(), "upstream account has no credentials")
            })?;
            let built = build::build(ctx, &parts, &body, &account, &creds)?;
            // A request its server polls on one thread's own runtime (an actix worker): a
            // non-stream one goes out on that thread's own connection, anything else is sent and
            // read on the relay's home runtime, the one it is polled inside (see `home`).
            let polled_on = parts.extensions.get::<LocalRuntime>();
            let local = polled_on
                .filter(|_| !ctx.stream && account.options.proxy.is_none())
                .and_then(|rt| Some((this.clients.local_client()?, rt.handle().clone())));
            let (client, route) = match local {
                Some((client, rt)) => (client, Route::Local(rt)),
                None => {
                    let client = this
                        .clients
                        .client(account.options.proxy.as_ref())
                        .map_err(|e| {
                            tracing::error!(account = %account.name, error = %e, "account proxy unusable");
                            RelayError::unreachable(
                                account.clone(),
                                "upstream account proxy is unusable",
                            )
                        })?;
                    let route = match polled_on {
                        Some(_) => Route::Home(tokio::runtime::Handle::current()),
                        None => Route::Here,
                    };
                    (client, route)
                }
            };
            let request = match url_cache::parsed(&built.url) {
                Some(url) => client.request(built.method, url),
                None => client.request(built.method, built.url),
            };
            let request = request.headers(built.headers).body(built.body);
            let sent = async move {
                let sent = match route {
                    Route::Here => request.send().await,
                    Route::Local(rt) => Entered::new(rt, request.send()).await,
                    Route::Home(home) => return home::send(&home, request).await,
                };
                sent.map(|res| http::Response::from(res).map(boxed))
                    .map_err(|e| e.without_url().to_string())
            };
            let res = match tokio::time::timeout(this.first_byte_timeout, sent).await {
                Ok(Ok(res)) => res,
                Ok(Err(e)) => {
                    tracing::warn!(account = %account.name, error = %e, "upstream request failed");
                    return Err(RelayError::unreachable(account, "upstream unreachable"));
                }
                Err(_) => {
                    return Err(RelayError::unreachable(
                        account,
                        "upstream did not answer in time",
                    ));
                }
            };
            let mut res = client_response(res, ctx.dialect);
            if res.status().is_success() {
                if built.plan.collect_responses {
                    res.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                }
                res = res.map(|b| rewrite_body(b, built.plan, ctx.stream));
            }
            if let Some(token) = creds.bearer() {
                res.extensions_mut()
                    .insert(UsedCredential(fingerprint(token)));
            }
            Ok(res)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_rewrites() {
        let plan = ResponsePlan {
            model_back: Some("gemini-2.5-flash".into()),
            unwrap_code_assist: true,
            collect_responses: false,
        };
        let out = rewrite_payload(
            &plan,
            br#"{"response":{"candidates":[],"modelVersion":"gemini-2.5-pro"},"traceId":"t"}"#,
        )
        .unwrap();
        assert_eq!(
            out,
            br#"{"candidates":[],"modelVersion":"gemini-2.5-flash"}"#
        );
        let plan = ResponsePlan {
            model_back: None,
            unwrap_code_assist: true,
            collect_responses: false,
        };
        assert_eq!(
            rewrite_payload(&plan, br#"{"response":{"a":1}}"#).unwrap(),
            br#"{"a":1}"#
        );
        assert!(rewrite_payload(&plan, br#"{"error":{}}"#).is_none());
    }
}
