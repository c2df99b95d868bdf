//! [`Relay`]: the whole request path assembled from the layers, plus the small local endpoints
//! (`/v1/models`, `/v1/usage`, `/healthz`, `/readyz`, `/metrics`). Adapters mount
//! [`Relay::app`] and stay glue.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body;
use tokio_util::task::TaskTracker;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::BoxError;
use crate::account_provider::AccountProvider;
use crate::body::{IncomingBody, RelayBody, boxed, full};
use crate::dialect::Dialect;
use crate::domain::Platform;
use crate::error::RelayError;
use crate::layer::auth::{AuthLayer, KeyCache, extract_key};
use crate::layer::error_render::{ErrorRenderLayer, render};
use crate::layer::failover::FailoverLayer;
use crate::layer::limit::{KeyLimiter, LimitLayer, Limiter};
use crate::layer::meter::{MeterLayer, MeterSettings};
use crate::layer::parse::ParseLayer;
use crate::layer::request_id::RequestIdLayer;
use crate::layer::reserve::ReserveLayer;
use crate::layer::schedule::ScheduleLayer;
use crate::layer::stream_wait::StreamWaitLayer;
use crate::layer::upstream::{ClientPool, Upstream};
use crate::ledger::Ledger;
use crate::meter::{Meter, PricedMeter};
use crate::metrics::Metrics;
use crate::pricing::PriceTable;
use crate::scheduler::Scheduler;
use crate::store::{Directory, UsageLog};

/// Tunables of the request path.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Largest request body accepted (Anthropic's own limit is 32 MB).
    pub max_body_bytes: usize,
    /// How long upstream is read for final usage after a client hung up.
    pub drain_timeout: Duration,
    /// How long to wait for the vendor's response head.
    pub first_byte_timeout: Duration,
    /// Upstream attempts per request, the first included.
    pub max_attempts: u32,
    /// Anthropic streams that wait this long (for a slot or the vendor) get `200` and SSE
    /// `ping`s until their answer is ready (see [`crate::layer::stream_wait`]); `None`: off.
    pub stream_wait_pings_after: Option<Duration>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            max_body_bytes: 32 * 1024 * 1024,
            drain_timeout: Duration::from_secs(60),
            first_byte_timeout: Duration::from_secs(600),
            max_attempts: 3,
            stream_wait_pings_after: None,
        }
    }
}

/// The parts a relay is made of. Everything is a trait object, so any mix of memory, SQL and
/// Redis implementations (or your own) can be assembled.
#[derive(Clone)]
pub struct RelayParts {
    pub directory: Arc<dyn Directory>,
    pub accounts: Arc<dyn AccountProvider>,
    pub scheduler: Arc<dyn Scheduler>,
    pub ledger: Arc<dyn Ledger>,
    pub usage_log: Arc<dyn UsageLog>,
    pub prices: Arc<PriceTable>,
    pub meter: Arc<dyn Meter>,
    /// Per-key and per-user concurrency and RPM; `None`: counted in this process
    /// ([`KeyLimiter`]). A cluster passes one shared by its nodes (`sub2api_redis::RedisLimiter`),
    /// or a user's limit would be multiplied by the number of nodes.
    pub limiter: Option<Arc<dyn Limiter>>,
}

impl RelayParts {
    /// Uses the standard [`PricedMeter`] over `prices`.
    pub fn priced_meter(prices: &Arc<PriceTable>) -> Arc<dyn Meter> {
        Arc::new(PricedMeter::new(prices.clone()))
    }
}

/// The service type adapters mount.
pub type RelayService = BoxCloneSyncService<Request<IncomingBody>, Response<RelayBody>, Infallible>;

/// An assembled relay.
#[derive(Clone)]
pub struct Relay {
    parts: RelayParts,
    keys: Arc<KeyCache>,
    metrics: Arc<Metrics>,
    tracker: TaskTracker,
    stack: RelayService,
}

impl Relay {
    /// Upstream requests go out on [`Upstream::default_client`]s: a shared one, and one per
    /// thread for servers that poll a request on one thread's runtime (see
    /// [`ClientPool::with_local_clients`]).
    pub fn new(parts: RelayParts, config: RelayConfig) -> Self {
        let clients = ClientPool::new(Upstream::default_client())
            .with_local_clients(Upstream::default_client);
        Self::with_clients(parts, config, clients)
    }

    /// Upstream requests go out on `client`, one for every thread: served by actix, every request
    /// then goes upstream from the relay's home runtime (see [`crate::runtime`]).
    pub fn with_client(parts: RelayParts, config: RelayConfig, client: reqwest::Client) -> Self {
        Self::with_clients(parts, config, ClientPool::new(client))
    }

    /// Upstream requests go out on `clients`.
    pub fn with_clients(parts: RelayParts, config: RelayConfig, clients: ClientPool) -> Self {
        let keys = Arc::new(KeyCache::new(parts.directory.clone()));
        let metrics = Arc::new(Metrics::default());
        let tracker = TaskTracker::new();
        let upstream =
            Upstream::with_clients(clients, parts.accounts.clone(), config.first_byte_timeout);
        let stack = ServiceBuilder::new()
            .layer(RequestIdLayer)
            .layer(ErrorRenderLayer)
            .layer(AuthLayer::new(keys.clone()))
            .layer(ParseLayer::new(config.max_body_bytes).with_accounts(parts.accounts.clone()))
            .layer(StreamWaitLayer::new(config.stream_wait_pings_after))
            .layer(LimitLayer::new(
                parts
                    .limiter
                    .clone()
                    .unwrap_or_else(|| Arc::new(KeyLimiter::default())),
            ))
            .layer(
                ReserveLayer::new(parts.ledger.clone(), parts.meter.clone())
                    .with_tracker(tracker.clone()),
            )
            .layer(MeterLayer::new(MeterSettings {
                ledger: parts.ledger.clone(),
                meter: parts.meter.clone(),
                usage_log: parts.usage_log.clone(),
                metrics: metrics.clone(),
                tracker: tracker.clone(),
                drain_timeout: config.drain_timeout,
            }))
            .layer(FailoverLayer::new(
                parts.accounts.clone(),
                config.max_attempts,
                metrics.clone(),
            ))
            .layer(
                ScheduleLayer::new(parts.scheduler.clone()).with_accounts(parts.accounts.clone()),
            )
            .service(upstream);
        Relay {
            parts,
            keys,
            metrics,
            tracker,
            stack: BoxCloneSyncService::new(stack),
        }
    }

    pub fn parts(&self) -> &RelayParts {
        &self.parts
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn key_cache(&self) -> &Arc<KeyCache> {
        &self.keys
    }

    /// The relay stack alone (every `POST` route [`crate::layer::parse::endpoint`] knows).
    pub fn stack(&self) -> RelayService {
        self.stack.clone()
    }

    /// Every relay route as one service; adapters mount it for the paths in [`Relay::ROUTES`].
    pub fn app(&self) -> RelayApp {
        RelayApp {
            relay: self.clone(),
        }
    }

    /// The routes [`Relay::app`] answers.
    /// Patterns use `{name}` for one path segment (axum and actix-web both read them).
    pub const ROUTES: &'static [(&'static str, &'static str)] = &[
        ("POST", "/v1/messages"),
        ("POST", "/v1/messages/count_tokens"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/responses"),
        ("POST", "/backend-api/codex/responses"),
        ("POST", "/v1beta/models/{model}"),
        ("POST", "/v1/models/{model}"),
        ("GET", "/v1beta/models"),
        ("GET", "/v1/models"),
        ("GET", "/v1/usage"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
    ];

    /// Waits for every drain and settlement still running, then flushes the usage log. Call after
    /// the server stopped accepting and finished its open responses.
    pub async fn shutdown(&self) {
        self.tracker.close();
        self.tracker.wait().await;
        if let Err(e) = self.parts.usage_log.flush().await {
            tracing::error!(error = %e, "usage log flush failed at shutdown");
        }
    }

    async fn models(&self, req: &http::request::Parts) -> Result<Response<RelayBody>, RelayError> {
        let principal = self.authenticate(req).await?;
        let ids = self.parts.prices.models(principal.group.platform);
        let body = match principal.group.platform {
            Platform::Anthropic => crate::protocol::anthropic::models_listing(&ids),
            Platform::Openai => crate::protocol::openai::models_listing(&ids),
            Platform::Gemini => crate::protocol::gemini::models_listing(&ids),
        };
        Ok(json(StatusCode::OK, body))
    }

    async fn usage(&self, req: &http::request::Parts) -> Result<Response<RelayBody>, RelayError> {
        let principal = self.authenticate(req).await?;
        let balance = self
            .parts
            .ledger
            .balance(principal.user)
            .await
            .map_err(crate::layer::reserve::refusal)?;
        let available = balance.available();
        let v = serde_json::json!({
            "isValid": true,
            "planName": principal.group.name,
            "remaining": available.as_f64_for_display(),
            "unit": "USD",
            "balance_usd": available.to_string(),
        });
        Ok(json(StatusCode::OK, Bytes::from(v.to_string())))
    }

    async fn authenticate(
        &self,
        req: &http::request::Parts,
    ) -> Result<crate::domain::Principal, RelayError> {
        let key = extract_key(
            &req.headers,
            req.uri.query(),
            Dialect::from_path(req.uri.path()) == Dialect::Gemini,
        )
        .ok_or_else(|| RelayError::authentication("missing API key"))?;
        self.keys
            .lookup(key)
            .await?
            .ok_or_else(|| RelayError::authentication("invalid API key"))
    }
}

fn json(status: StatusCode, body: Bytes) -> Response<RelayBody> {
    let mut res = Response::new(full(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// All relay routes in one service.
#[derive(Clone)]
pub struct RelayApp {
    relay: Relay,
}

impl RelayApp {
    /// Accepts any request body type an adapter has.
    pub fn call_with<B>(&self, req: Request<B>) -> BoxFuture<'static, Response<RelayBody>>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let mut this = self.clone();
        Box::pin(async move {
            match this.call(req.map(boxed)).await {
                Ok(r) => r,
                Err(never) => match never {},
            }
        })
    }
}

impl Service<Request<IncomingBody>> for RelayApp {
    type Response = Response<RelayBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<RelayBody>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<IncomingBody>) -> Self::Future {
        if req.method() == Method::POST && crate::layer::parse::endpoint(req.uri().path()).is_some()
        {
            return Box::pin(self.relay.stack.clone().oneshot(req));
        }
        let relay = self.relay.clone();
        let (req, _body) = req.into_parts();
        Box::pin(async move {
            let local = match (&req.method, req.uri.path()) {
                (&Method::GET, "/healthz") => Ok(json(
                    StatusCode::OK,
                    Bytes::from_static(b"{\"status\":\"ok\"}"),
                )),
                (&Method::GET, "/readyz") => Ok(json(
                    StatusCode::OK,
                    Bytes::from_static(b"{\"status\":\"ready\"}"),
                )),
                (&Method::GET, "/metrics") => {
                    let mut r = Response::new(full(relay.metrics.render()));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    Ok(r)
                }
                (&Method::GET, "/v1/models" | "/v1beta/models") => relay.models(&req).await,
                (&Method::GET, "/v1/usage") => relay.usage(&req).await,
                (m, p) => Err(RelayError::not_found(format!("no route for {m} {p}"))),
            };
            Ok(local.unwrap_or_else(|e| render(Dialect::from_path(req.uri.path()), &e, None)))
        })
    }
}
