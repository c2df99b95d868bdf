//! The tower layers of the request path (DESIGN §2), outermost first:
//!
//! | layer | what it does |
//! |---|---|
//! | [`request_id`] | `x-request-id` in and out |
//! | [`error_render`] | renders any [`RelayError`](crate::error::RelayError) in the caller's dialect |
//! | [`auth`] | API key -> [`Principal`](crate::domain::Principal) (cached, hashed lookup) |
//! | [`parse`] | bounded body; model, stream, session, cost estimate -> [`RelayRequest`](crate::request::RelayRequest) |
//! | [`stream_wait`] | opt-in: SSE pings to an Anthropic stream while it waits |
//! | [`limit`] | per-key and per-user concurrency (waiting queue) and RPM |
//! | [`reserve`] | holds the worst-case cost before anything goes upstream |
//! | [`meter`] | meters the response as it streams and settles exactly once |
//! | [`failover`] | classifies upstream failures; another account before the first byte |
//! | [`schedule`] | picks the account and carries its lease in the response body |
//! | [`upstream`] | builds and sends the vendor request |
//!
//! Each is usable alone; [`crate::relay::Relay`] assembles them all.

pub mod auth;
pub mod error_render;
pub mod failover;
pub mod limit;
pub mod meter;
pub mod parse;
pub mod request_id;
pub mod reserve;
pub mod schedule;
pub mod stream_wait;
pub mod upstream;

/// Swaps a ready clone of `inner` out of `&mut self`, the tower idiom for moving a service into
/// a `'static` future while keeping the polled-ready one.
pub(crate) fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}
