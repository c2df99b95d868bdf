//! Pooled HTTP clients: one for direct connections and one per upstream proxy, built on first
//! use and kept, so every account behind the same proxy shares its connection pool.
//!
//! A pool may also build *local* direct clients, one per thread: a request polled from start to
//! end on one single-threaded runtime (it carries [`LocalRuntime`]) is sent on its thread's own
//! client, whose connections live on that runtime, next to their only reader. An actix worker
//! then relays a non-stream request without waking another thread. Streams stay on the shared
//! clients: a stream's drain, after its client left, may outlast the worker's runtime.
//!
//! [`LocalRuntime`]: crate::runtime::LocalRuntime

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
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

/// Builds one thread's local direct client.
type BuildLocal = dyn Fn() -> reqwest::Client + Send + Sync;

thread_local! {
    /// This thread's local clients, one per pool that has built one here. A pool that is gone
    /// leaves a dead entry, swept when another pool builds its client.
    static LOCAL: RefCell<Vec<(Weak<BuildLocal>, reqwest::Client)>> = const { RefCell::new(Vec::new()) };
}

/// Direct and per-proxy clients.
#[derive(Clone)]
pub struct ClientPool {
    direct: reqwest::Client,
    proxied: Arc<Mutex<HashMap<String, reqwest::Client>>>,
    local: Option<Arc<BuildLocal>>,
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
            local: None,
        }
    }

    /// Lets requests polled on one single-threaded runtime use a direct client of their thread's
    /// own, built by `build` on the thread's first such request (configure it as `direct`).
    pub fn with_local_clients(
        mut self,
        build: impl Fn() -> reqwest::Client + Send + Sync + 'static,
    ) -> Self {
        self.local = Some(Arc::new(build));
        self
    }

    /// This thread's local direct client; `None` when the pool builds none.
    ///
    /// Call it only on the thread of the request's [`LocalRuntime`](crate::runtime::LocalRuntime),
    /// inside that runtime's context: a connection's task is spawned where it is opened. (A
    /// connection whose runtime has gone is found closed by the client's pool and replaced.)
    pub fn local_client(&self) -> Option<reqwest::Client> {
        let build = self.local.as_ref()?;
        LOCAL.with_borrow_mut(|clients| {
            if let Some((_, c)) = clients
                .iter()
                .find(|(b, _)| std::ptr::addr_eq(b.as_ptr(), Arc::as_ptr(build)))
            {
                return Some(c.clone());
            }
            clients.retain(|(b, _)| b.strong_count() > 0);
            let client = build();
            clients.push((Arc::downgrade(build), client.clone()));
            Some(client)
        })
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
