//! Keeping the relay's work on a runtime that outlives actix's workers.

use std::sync::OnceLock;

use tokio::runtime::{Handle, Runtime};
use tokio::sync::mpsc;

/// The adapter's shared relay runtime, started on first use and never stopped (it is a static),
/// so work spawned on it survives any server stop until the process exits. One worker per core
/// (tokio's default), as `#[tokio::main]` would start: streams' upstream connections, drains,
/// settlements and store connections run here; actix's workers poll the calls.
pub(crate) fn shared() -> Handle {
    static SHARED: OnceLock<Runtime> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .thread_name("sub2api-relay")
                .enable_all()
                .build()
                .expect("start the sub2api relay runtime")
        })
        .handle()
        .clone()
}

/// Held by everything of a relay mount: the handlers an actix worker owns, the relay calls it
/// polls and the response bodies it writes. When the last one is gone, every relay call and body
/// has finished or been dropped, and what they left behind (drains, settlements) is tracked by
/// the relay, so [`Relay::shutdown`] can wait for it.
///
/// [`Relay::shutdown`]: sub2api_core::relay::Relay::shutdown
pub(crate) type Alive = mpsc::Sender<std::convert::Infallible>;
