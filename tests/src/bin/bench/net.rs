//! Serving with or without `TCP_NODELAY`, and the mock vendor.
//!
//! Stock `axum::serve` leaves Nagle's algorithm on for accepted sockets. A server that writes an
//! SSE event as its own small segment then waits for the previous segment's ACK, which the peer
//! (on a kept-alive connection) delays by up to 40 ms: every stream pays about 40 ms. This bench
//! measured that on the relay's own hop and on the mock's, and `sub2api_axum::no_delay` now sets
//! `TCP_NODELAY` in the `sub2api` binary and in `MockVendor`. Every server here does the same by
//! default; `--nagle` serves all of them the stock way (the mock then through its public router,
//! since `MockVendor` no longer offers Nagle), to show what it costs.

use std::net::{Ipv4Addr, SocketAddr};

use axum::Router;
use axum::serve::ListenerExt;
use sub2api_axum::mock::{self, MockState, MockVendor};
use tokio::net::TcpListener;

/// Serves `app` on `listener` until the process ends, with the peer address available to
/// handlers (`ConnectInfo`) as the `sub2api` binary serves it.
pub async fn serve(listener: TcpListener, app: Router, nagle: bool) -> std::io::Result<()> {
    let listener = listener.tap_io(move |tcp| {
        if !nagle {
            let _ = tcp.set_nodelay(true);
        }
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

/// Records kept by the mock: enough to debug, bounded so a long run does not grow.
const MOCK_RECORDS: usize = 256;

/// The mock's routes over a fresh bounded state (the `--child mock` server).
pub fn mock_app() -> Router {
    mock::router(MockState::with_record_capacity(MOCK_RECORDS))
}

/// The mock vendor on `127.0.0.1:0`: its knobs and counters, and its URL.
pub struct Vendor {
    pub state: MockState,
    pub base: String,
    /// The stock server (`TCP_NODELAY`), or none when `--nagle` serves the router here.
    _stock: Option<MockVendor>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Vendor {
    pub async fn start(nagle: bool) -> std::io::Result<Vendor> {
        let state = MockState::with_record_capacity(MOCK_RECORDS);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        if !nagle {
            let stock = MockVendor::start_with(addr, state.clone()).await?;
            return Ok(Vendor {
                state,
                base: stock.base_url(),
                _stock: Some(stock),
                task: None,
            });
        }
        let listener = TcpListener::bind(addr).await?;
        let base = format!("http://{}", listener.local_addr()?);
        let app = mock::router(state.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = serve(listener, app, true).await {
                eprintln!("bench: mock vendor stopped: {e}");
            }
        });
        Ok(Vendor {
            state,
            base,
            _stock: None,
            task: Some(task),
        })
    }
}

impl Drop for Vendor {
    fn drop(&mut self) {
        self.state.open_all_gates();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
