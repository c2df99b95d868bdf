//! Pooled HTTP clients: one for direct connections and one per upstream proxy, built on first
//! use and kept, so every account behind the same proxy shares its connection pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::domain::ProxyUrl;

/// The client settings the relay uses upstream: rustls (ring), HTTP/1.1 and HTTP/2, no automatic
/// decompression (the meter must see the bytes the vendor sent), no proxy from the environment.
pub fn builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .no_proxy()
}

/// Direct and per-proxy clients.
#[derive(Clone)]
pub struct ClientPool {
    direct: reqwest::Client,
    proxied: Arc<Mutex<HashMap<String, reqwest::Client>>>,
}

impl std::fmt::Debug for ClientPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.proxied.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("ClientPool").field("proxies", &n).finish()
    }
}

impl Default for ClientPool {
    fn default() -> Self {
        ClientPool::new(
            builder()
                .build()
                .expect("reqwest client with the ring provider"),
        )
    }
}

impl ClientPool {
    /// `direct` serves accounts without a proxy (and is the caller's to configure).
    pub fn new(direct: reqwest::Client) -> Self {
        ClientPool {
            direct,
            proxied: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The client for an account's proxy (or the direct one).
    pub fn client(&self, proxy: Option<&ProxyUrl>) -> Result<reqwest::Client, String> {
        let Some(proxy) = proxy else {
            return Ok(self.direct.clone());
        };
        let mut map = self.proxied.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(proxy.expose()) {
            return Ok(c.clone());
        }
        let p = reqwest::Proxy::all(proxy.expose())
            .map_err(|e| format!("invalid proxy {proxy}: {}", e.without_url()))?;
        let client = builder()
            .proxy(p)
            .build()
            .map_err(|e| format!("proxy client for {proxy}: {e}"))?;
        map.insert(proxy.expose().to_owned(), client.clone());
        Ok(client)
    }
}
