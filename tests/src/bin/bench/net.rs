//! Serving with or without `TCP_NODELAY`, and the mock vendor served that way.
//!
//! `axum::serve` leaves Nagle's algorithm on for accepted sockets, and so do the mock vendor's
//! own `MockVendor::start*` and the `sub2api` binary. A server that writes an SSE event as its own
//! small segment then waits for the previous segment's ACK, which the peer delays by up to 40 ms
//! (Linux delayed ACK): every stream pays about 40 ms, on the mock's hop and on the server's. That
//! is the same for the relay and the proxy, but it buries the relay's own cost under a constant,
//! and no real vendor streams that way. So by default every server here (mock, relay, proxy) sets
//! `TCP_NODELAY` on accepted sockets; `--nagle` serves them as stock `axum::serve` does, to show
//! the effect. The mock is the crate's own router over a bounded [`MockState`], served here
//! because `MockVendor::start_with` offers no socket option.

use std::net::{Ipv4Addr, SocketAddr};

use axum::Router;
use axum::serve::ListenerExt;
use sub2api_axum::mock::{self, MockState};
use tokio::net::TcpListener;

/// Serves `app` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, app: Router, nagle: bool) -> std::io::Result<()> {
    let listener = listener.tap_io(move |tcp| {
        if !nagle {
            let _ = tcp.set_nodelay(true);
        }
    });
    axum::serve(listener, app).await
}

/// Records kept by the mock: enough to debug, bounded so a long run does not grow.
const MOCK_RECORDS: usize = 256;

/// The mock vendor on `127.0.0.1:0`; derefs to its knobs and counters.
pub struct Vendor {
    pub state: MockState,
    pub base: String,
    task: tokio::task::JoinHandle<()>,
}

/// The mock's routes over a fresh bounded state (the `--child mock` server).
pub fn mock_app() -> Router {
    mock::router(MockState::with_record_capacity(MOCK_RECORDS))
}

impl Vendor {
    pub async fn start(nagle: bool) -> std::io::Result<Vendor> {
        let state = MockState::with_record_capacity(MOCK_RECORDS);
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
        let base = format!("http://{}", listener.local_addr()?);
        let app = mock::router(state.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = serve(listener, app, nagle).await {
                eprintln!("bench: mock vendor stopped: {e}");
            }
        });
        Ok(Vendor { state, base, task })
    }
}

impl Drop for Vendor {
    fn drop(&mut self) {
        self.state.open_all_gates();
        self.task.abort();
    }
}
