//! A mock vendor (Anthropic, OpenAI, ChatGPT/Codex backend, Gemini, Code Assist, and their OAuth
//! token endpoints) for end-to-end tests, benchmarks and `sub2api demo`.
//!
//! There is no internet here (DESIGN §8), so every relay test talks to this server instead of
//! `api.anthropic.com`. It follows the Messages wire format (PROTOCOLS.md), reports usage by a
//! rule a test can compute ([`usage`]), injects vendor failures on demand ([`Knob`], [`Fault`],
//! the `x-mock-fault` header) and records everything it saw ([`MockState`]).
//!
//! Routes: `POST /v1/messages` (any query, e.g. `?beta=true`; stream and non-stream),
//! `POST /v1/messages/count_tokens`, `GET /v1/models`; OpenAI `POST /v1/chat/completions` and
//! `POST /v1/responses`, Codex `POST /backend-api/codex/responses` ([`openai`]); Gemini
//! `POST /v1beta/models/{model}:{method}` (and `/v1/models/...`) and Code Assist
//! `POST /v1internal:{method}` ([`gemini`]); token endpoints `POST /v1/oauth/token`,
//! `/oauth/token`, `/token` ([`OAuthMock`]). The same fault knobs apply to every model route, each
//! answered in its vendor's shapes ([`dialect`]). Anything else is a recorded 404.
//! A credential (`x-api-key` or `Authorization: Bearer`) is required; `anthropic-version` is only
//! recorded, so a test can assert the relay added it.
//!
//! ```
//! use std::time::Duration;
//! use sub2api_axum::mock::{Fault, Knob, MockVendor, Scope};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let vendor = MockVendor::start().await;
//! // Point an account's base_url at the mock.
//! let base_url = vendor.base_url();
//! assert!(base_url.starts_with("http://127.0.0.1:"));
//!
//! // The account with key "sk-a" gets two 529s, then normal replies.
//! vendor.set("sk-a", Knob::FailTimes(Fault::Overloaded, 2));
//! // Every key waits 20 ms before the first byte.
//! vendor.set(Scope::AllKeys, Knob::FirstByteDelay(Duration::from_millis(20)));
//! // Hold sk-b's responses until the test lets them go.
//! vendor.close_gate("sk-b");
//!
//! // ... drive the relay, then observe:
//! assert_eq!(vendor.count("sk-a"), 0);
//! vendor.open_gate("sk-b");
//! vendor.shutdown().await;
//! # }
//! ```

mod body;
mod dialect;
mod gemini;
mod knobs;
mod messages;
mod oauth;
mod openai;
pub mod payments;
mod sse;
mod state;
pub mod usage;

#[cfg(test)]
mod tests;

use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Deref;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use knobs::{DEFAULT_REPLY_WORDS, Fault, Knob, Scope, rfc3339};
pub use messages::{FAULT_HEADER, MODELS, api_key};
pub use oauth::{MOCK_CHATGPT_ACCOUNT_ID, OAuthMock};
pub use sse::pieces as reply_pieces;
pub use state::{KeyStats, MockState, Outcome, RecordedRequest};
pub use usage::{CacheCreation, ServerToolUse, Usage};

/// Anthropic accepts request bodies up to 32 MB; the mock must not refuse what the relay passes.
const BODY_LIMIT: usize = 32 * 1024 * 1024;

/// Records kept by the standalone server (counters still cover every request).
const STANDALONE_RECORDS: usize = 1000;

/// The mock's routes over `state`, for callers that serve it themselves.
pub fn router(state: MockState) -> Router {
    router_with(state, OAuthMock::default())
}

/// [`router`] with the token endpoints' state (see [`OAuthMock`]).
pub fn router_with(state: MockState, oauth: OAuthMock) -> Router {
    let tokens = Router::new()
        .route("/v1/oauth/token", post(oauth::token))
        .route("/oauth/token", post(oauth::token))
        .route("/token", post(oauth::token))
        .with_state((state.clone(), oauth));
    Router::new()
        .route("/v1/messages", post(messages::messages))
        .route("/v1/messages/count_tokens", post(messages::count_tokens))
        .route("/v1/models", get(messages::models))
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/responses", post(openai::responses))
        .route("/backend-api/codex/responses", post(openai::codex))
        .route("/v1beta/models/{model}", post(gemini::models))
        .route("/v1/models/{model}", post(gemini::models))
        .route("/v1internal:generateContent", post(gemini::code_assist))
        .route(
            "/v1internal:streamGenerateContent",
            post(gemini::code_assist),
        )
        .route("/v1internal:countTokens", post(gemini::code_assist))
        .fallback(messages::not_found)
        .with_state(state)
        .merge(tokens)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(state::note_peer))
}

/// A running mock vendor on its own port. Derefs to its [`MockState`] for knobs and records.
///
/// Dropping it stops accepting connections (in-flight responses finish in the background);
/// [`shutdown`](Self::shutdown) does the same and waits for them.
pub struct MockVendor {
    addr: SocketAddr,
    state: MockState,
    oauth: OAuthMock,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl MockVendor {
    /// Serves a fresh mock on `127.0.0.1` with an ephemeral port, so tests run in parallel.
    ///
    /// # Panics
    /// If the loopback address cannot be bound (a broken test environment).
    pub async fn start() -> MockVendor {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .expect("bind the mock vendor on 127.0.0.1:0")
    }

    /// Serves a fresh mock on `addr`.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<MockVendor> {
        Self::start_with(addr, MockState::new()).await
    }

    /// Serves `state` on `addr` (e.g. a [`MockState::with_record_capacity`] for benchmarks).
    pub async fn start_with(addr: SocketAddr, state: MockState) -> std::io::Result<MockVendor> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let oauth = OAuthMock::default();
        let app = router_with(state.clone(), oauth.clone());
        let task = tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let served = axum::serve(crate::no_delay(listener), app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "mock vendor stopped with an error");
            }
        });
        Ok(MockVendor {
            addr,
            state,
            oauth,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The bound address (the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for an account's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The knobs and records; clone it to keep it past the server.
    pub fn state(&self) -> &MockState {
        &self.state
    }

    /// The token endpoints' state: grant refresh tokens, count refreshes.
    pub fn oauth(&self) -> &OAuthMock {
        &self.oauth
    }

    /// Stops accepting, opens every gate, and waits until open responses have finished.
    pub async fn shutdown(mut self) {
        self.state.open_all_gates();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Deref for MockVendor {
    type Target = MockState;

    fn deref(&self) -> &MockState {
        &self.state
    }
}

impl Drop for MockVendor {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            self.state.open_all_gates();
            let _ = stop.send(());
        }
    }
}

impl std::fmt::Debug for MockVendor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockVendor")
            .field("addr", &self.addr)
            .field("state", &self.state)
            .finish()
    }
}

/// Serves the mock on `addr` until ctrl-c (`sub2api mock-vendor`). Drive faults per request with
/// the `x-mock-fault` header, e.g. `x-mock-fault: 429` or `x-mock-fault: cut-after=5`.
pub async fn serve_standalone(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let base_url = format!("http://{}", listener.local_addr()?);
    tracing::info!(%base_url, "mock Anthropic vendor listening (ctrl-c to stop)");
    let app = router(MockState::with_record_capacity(STANDALONE_RECORDS));
    axum::serve(crate::no_delay(listener), app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
