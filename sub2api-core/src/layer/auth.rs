//! API key -> [`Principal`]. Keys arrive as `x-api-key`, `Authorization: Bearer`,
//! `x-goog-api-key` or (Gemini routes only) `?key=`. Lookups are by SHA-256 and cached for a short
//! time (positive and negative), so the hot path does no database round trip; admin changes call
//! [`KeyCache::invalidate`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use sub2api_core::layer::auth::{AuthLayer, KeyCache};
//! use sub2api_core::memory::MemoryDirectory;
//! let cache = Arc::new(KeyCache::new(Arc::new(MemoryDirectory::new())));
//! let layer = AuthLayer::new(cache);
//! # let _ = layer;
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use tower::{Layer, Service};

use crate::api::quota::KeyQuotas;
use crate::domain::{KeyHash, Principal};
use crate::error::RelayError;
use crate::store::Directory;

/// The client's address as the HTTP server saw it. Adapters insert it into the request
/// extensions (axum: from `ConnectInfo`, actix: `peer_addr`); keys with an IP allowlist are
/// refused when it is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// Handed to the reserve layer (in the request extensions) for keys with a quota.
#[derive(Clone)]
pub struct QuotaAccess(pub Arc<dyn KeyQuotas>);

/// Cached key lookups over a [`Directory`].
pub struct KeyCache {
    directory: Arc<dyn Directory>,
    quotas: Option<Arc<dyn KeyQuotas>>,
    entries: Mutex<HashMap<KeyHash, (Option<Principal>, Instant)>>,
    ttl: Duration,
    negative_ttl: Duration,
}

impl KeyCache {
    pub fn new(directory: Arc<dyn Directory>) -> Self {
        KeyCache {
            quotas: directory.clone().key_quotas(),
            directory,
            entries: Mutex::new(HashMap::new()),
            ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(2),
        }
    }

    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The principal of a key that works now (an expired key finds nothing).
    pub async fn lookup(&self, key: &str) -> Result<Option<Principal>, RelayError> {
        let now = crate::account_provider::now_ms();
        Ok(self
            .lookup_any(key)
            .await?
            .filter(|p| !p.rules.is_expired(now)))
    }

    /// Resolves a key for a request from `client`: refuses unknown, disabled and expired keys
    /// (401) and clients outside the key's IP allowlist (403).
    pub async fn authorize(
        &self,
        key: &str,
        client: Option<std::net::IpAddr>,
    ) -> Result<Principal, RelayError> {
        let principal = self
            .lookup_any(key)
            .await?
            .ok_or_else(|| RelayError::authentication("invalid API key"))?;
        if principal
            .rules
            .is_expired(crate::account_provider::now_ms())
        {
            return Err(RelayError::authentication("this API key has expired"));
        }
        if !principal.rules.allows_ip(client) {
            return Err(RelayError::new(
                crate::dialect::ErrorClass::Permission,
                "this API key may not be used from this address",
            ));
        }
        Ok(principal)
    }

    /// The key quota accounting of the directory, if it keeps one.
    pub fn quotas(&self) -> Option<&Arc<dyn KeyQuotas>> {
        self.quotas.as_ref()
    }

    async fn lookup_any(&self, key: &str) -> Result<Option<Principal>, RelayError> {
        let hash = KeyHash::of(key);
        let now = Instant::now();
        if let Some((p, exp)) = self.entries.lock().unwrap().get(&hash)
            && *exp > now
        {
            return Ok(p.clone());
        }
        let p = self.directory.principal(&hash).await.map_err(|e| {
            tracing::error!(error = %e, "key lookup failed");
            RelayError::overloaded(
                "authentication temporarily unavailable",
                Some(Duration::from_secs(1)),
            )
        })?;
        let ttl = if p.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        };
        let mut entries = self.entries.lock().unwrap();
        if entries.len() > 100_000 {
            entries.retain(|_, (_, exp)| *exp > now);
        }
        entries.insert(hash, (p.clone(), now + ttl));
        Ok(p)
    }

    /// Forgets one key (after it was disabled or changed).
    pub fn invalidate(&self, key: &KeyHash) {
        self.entries.lock().unwrap().remove(key);
    }

    pub fn clear(&self) {
        self.entries.lock().unwrap().clear();
    }
}

/// The API key a request carries, wherever the client's SDK puts it.
pub fn extract_key<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    allow_query: bool,
) -> Option<&'a str> {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    header("x-api-key")
        .or_else(|| {
            header("authorization").and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
        })
        .or_else(|| header("x-goog-api-key"))
        .or_else(|| {
            if !allow_query {
                return None;
            }
            query?
                .split('&')
                .find_map(|kv| kv.strip_prefix("key="))
                .filter(|k| !k.is_empty())
        })
}

#[derive(Clone)]
pub struct AuthLayer {
    cache: Arc<KeyCache>,
}

impl AuthLayer {
    pub fn new(cache: Arc<KeyCache>) -> Self {
        AuthLayer { cache }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            cache: self.cache.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    cache: Arc<KeyCache>,
}

impl<S, B, RB> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response<RB>, Error = RelayError> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<RB>;
    type Error = RelayError;
    type Future = BoxFuture<'static, Result<Response<RB>, RelayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RelayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let mut inner = super::take_ready(&mut self.inner);
        let cache = self.cache.clone();
        Box::pin(async move {
            let gemini = crate::dialect::Dialect::from_path(req.uri().path())
                == crate::dialect::Dialect::Gemini;
            let key = extract_key(req.headers(), req.uri().query(), gemini)
                .ok_or_else(|| {
                    RelayError::authentication(
                        "missing API key: send it as x-api-key or Authorization: Bearer",
                    )
                })?
                .to_owned();
            let client = req.extensions().get::<ClientAddr>().map(|c| c.0.ip());
            let principal = cache.authorize(&key, client).await?;
            if principal.rules.quota.is_some() {
                let quotas = cache.quotas().cloned().ok_or_else(|| {
                    RelayError::internal(
                        "this key has a quota, but the relay's directory keeps no key quotas",
                    )
                })?;
                req.extensions_mut().insert(QuotaAccess(quotas));
            }
            req.extensions_mut().insert(principal);
            inner.call(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_every_place() {
        let mut h = HeaderMap::new();
        assert_eq!(extract_key(&h, Some("key=abc"), true), Some("abc"));
        assert_eq!(extract_key(&h, Some("key=abc"), false), None);
        h.insert("authorization", "Bearer sk-1".parse().unwrap());
        assert_eq!(extract_key(&h, None, false), Some("sk-1"));
        h.insert("x-api-key", "sk-2".parse().unwrap());
        assert_eq!(extract_key(&h, None, false), Some("sk-2"));
    }
}
