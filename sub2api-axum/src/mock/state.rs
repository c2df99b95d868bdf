//! The mock's shared state: knobs in, records and counters out.
//!
//! Tests drive the mock through [`MockState`] and observe it through the same handle: every
//! request is recorded with what it carried and what the mock did, and in-flight counts are kept
//! per key so a test can prove the relay's concurrency limits. Every change bumps a
//! `tokio::sync::watch` version, so the `wait_*` methods await a signal instead of polling with
//! sleeps (DESIGN §8).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::{HeaderMap, Method, Uri};
use serde_json::Value;
use tokio::sync::watch;

use super::knobs::{Fault, HeaderKnobs, Knob, KnobSet, Plan, Scope};
use super::usage::Usage;

/// How a response ended, as seen from the mock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The handler or the response body is still running.
    InFlight,
    /// The whole response body was handed to the HTTP stack.
    Completed,
    /// The mock ended the body with an error on purpose ([`Fault::CutAfter`]).
    Aborted,
    /// The response (or the handler, before the head) was dropped before its end: the client
    /// hung up, or the relay stopped reading.
    DroppedByClient,
}

tokio::task_local! {
    /// The peer of the request being handled, set around every handler by [`note_peer`]: the
    /// records get it without every handler taking `ConnectInfo`.
    static PEER: SocketAddr;
}

/// Runs the rest of the request with its peer noted (when the server provides it).
pub(crate) async fn note_peer(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        Some(&axum::extract::ConnectInfo(peer)) => PEER.scope(peer, next.run(req)).await,
        None => next.run(req).await,
    }
}

/// One request the mock received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// Arrival order, from 0, over the mock's lifetime.
    pub seq: usize,
    /// The `request_id` / `request-id` the mock answered with.
    pub request_id: String,
    pub method: Method,
    /// Path and query, e.g. `/v1/messages?beta=true`.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// `x-api-key`, else the `Authorization: Bearer` token.
    pub api_key: Option<String>,
    /// `anthropic-version` if present (missing is recorded, not refused).
    pub anthropic_version: Option<String>,
    /// `model` from the body, if it parsed.
    pub model: Option<String>,
    /// `stream: true` in the body.
    pub stream: bool,
    /// Status of the response head, once produced.
    pub status: Option<u16>,
    /// The usage the mock reported (successful messages only).
    pub usage: Option<Usage>,
    pub outcome: Outcome,
    /// Body chunks handed to the HTTP stack; for a stream, one per SSE event.
    pub chunks_sent: usize,
    /// The client's end of the connection the request came on, when the mock is served with
    /// connect info (as [`MockVendor`](super::MockVendor) is): which of a client's pooled
    /// connections carried it.
    pub peer: Option<SocketAddr>,
}

impl RecordedRequest {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Counters for one key (or all keys, see [`MockState::total`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyStats {
    pub requests: u64,
    pub in_flight: u64,
    pub max_in_flight: u64,
    pub completed: u64,
    pub aborted: u64,
    pub dropped_by_client: u64,
}

/// Knobs, gates, records and counters behind one `Arc`; clone freely.
#[derive(Clone)]
pub struct MockState {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct Inner {
    records: VecDeque<RecordedRequest>,
    /// `seq` of `records[0]`.
    first_seq: usize,
    next_seq: usize,
    capacity: Option<usize>,
    stats: HashMap<String, KeyStats>,
    total: KeyStats,
    all_knobs: KnobSet,
    key_knobs: HashMap<String, KnobSet>,
    gates: HashMap<Scope, watch::Sender<bool>>,
    header_fault_counts: HashMap<(String, String), u32>,
}

impl Inner {
    fn record_mut(&mut self, seq: usize) -> Option<&mut RecordedRequest> {
        let index = seq.checked_sub(self.first_seq)?;
        self.records.get_mut(index)
    }

    fn knobs_mut(&mut self, scope: Scope) -> &mut KnobSet {
        match scope {
            Scope::AllKeys => &mut self.all_knobs,
            Scope::Key(key) => self.key_knobs.entry(key).or_default(),
        }
    }
}

impl Default for MockState {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MockState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockState")
            .field("total", &self.total())
            .finish_non_exhaustive()
    }
}

impl MockState {
    /// A state that keeps every request record (what tests want).
    pub fn new() -> Self {
        let (changed, _) = watch::channel(0);
        MockState {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner::default()),
                changed,
            }),
        }
    }

    /// A state that keeps only the newest `capacity` records (long-running demo and benchmark
    /// servers would otherwise hold every body forever). Counters still cover every request.
    pub fn with_record_capacity(capacity: usize) -> Self {
        let state = Self::new();
        state.lock().capacity = Some(capacity);
        state
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` under the lock, then wakes every waiter.
    fn update<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let out = f(&mut self.lock());
        self.shared.changed.send_modify(|v| *v = v.wrapping_add(1));
        out
    }

    // ---- knobs --------------------------------------------------------------------------------

    /// Sets one knob for a key (`"sk-..."`) or for [`Scope::AllKeys`].
    pub fn set(&self, scope: impl Into<Scope>, knob: Knob) {
        let scope = scope.into();
        self.update(|inner| inner.knobs_mut(scope).apply(knob));
    }

    /// Removes the fault of a scope (other knobs stay).
    pub fn clear_fault(&self, scope: impl Into<Scope>) {
        let scope = scope.into();
        self.update(|inner| inner.knobs_mut(scope).fault = None);
    }

    /// Removes every knob of a scope and opens its gate.
    pub fn clear(&self, scope: impl Into<Scope>) {
        let scope = scope.into();
        self.update(|inner| {
            match &scope {
                Scope::AllKeys => inner.all_knobs = KnobSet::default(),
                Scope::Key(key) => {
                    inner.key_knobs.remove(key);
                }
            }
            if let Some(gate) = inner.gates.remove(&scope) {
                gate.send_replace(true);
            }
        });
    }

    /// Closes the gate of a scope: matching `/v1/messages` requests are recorded and counted in
    /// flight, but their response head waits until [`open_gate`](Self::open_gate).
    pub fn close_gate(&self, scope: impl Into<Scope>) {
        let scope = scope.into();
        self.update(|inner| {
            inner
                .gates
                .entry(scope)
                .or_insert_with(|| watch::channel(false).0)
                .send_replace(false);
        });
    }

    /// Opens the gate of a scope, releasing every request waiting at it.
    pub fn open_gate(&self, scope: impl Into<Scope>) {
        let scope = scope.into();
        self.update(|inner| {
            if let Some(gate) = inner.gates.get(&scope) {
                gate.send_replace(true);
            }
        });
    }

    /// Opens every gate (used on shutdown so nothing waits forever).
    pub fn open_all_gates(&self) {
        self.update(|inner| {
            for gate in inner.gates.values() {
                gate.send_replace(true);
            }
        });
    }

    pub(crate) fn plan(&self, key: &str, header: Option<&HeaderKnobs>) -> Plan {
        let inner = self.lock();
        let mut layers: Vec<&KnobSet> = Vec::with_capacity(3);
        if let Some(header) = header {
            layers.push(&header.set);
        }
        if let Some(knobs) = inner.key_knobs.get(key) {
            layers.push(knobs);
        }
        layers.push(&inner.all_knobs);
        Plan::resolve(&layers)
    }

    /// The fault for this request, consuming a `FailTimes` / `times=N` count. A header fault is
    /// final; a spent key rule falls through to the all-keys rule.
    pub(crate) fn take_fault(&self, key: &str, header: Option<&HeaderKnobs>) -> Option<Fault> {
        let mut inner = self.lock();
        if let Some(header) = header
            && let Some(fault) = &header.fault
        {
            let Some(times) = header.times else {
                return Some(fault.clone());
            };
            let seen = inner
                .header_fault_counts
                .entry((key.to_owned(), header.raw.clone()))
                .or_default();
            *seen += 1;
            return (*seen <= times).then(|| fault.clone());
        }
        if let Some(fault) = inner
            .key_knobs
            .get_mut(key)
            .and_then(|k| k.fault.as_mut())
            .and_then(|rule| rule.take())
        {
            return Some(fault);
        }
        inner.all_knobs.fault.as_mut().and_then(|rule| rule.take())
    }

    /// Waits at the key's gate and at the all-keys gate, if closed.
    pub(crate) async fn pass_gates(&self, key: &str) {
        let receivers: Vec<watch::Receiver<bool>> = {
            let inner = self.lock();
            [Scope::Key(key.to_owned()), Scope::AllKeys]
                .iter()
                .filter_map(|scope| inner.gates.get(scope).map(|gate| gate.subscribe()))
                .collect()
        };
        for mut gate in receivers {
            // An error means the gate was removed (cleared): go on.
            let _ = gate.wait_for(|open| *open).await;
        }
    }

    // ---- records ------------------------------------------------------------------------------

    /// Records an arriving request and counts it in flight until the returned guard is finished
    /// or dropped.
    pub(crate) fn begin(&self, request: ArrivingRequest<'_>) -> InFlightGuard {
        let key = request.api_key.clone().unwrap_or_default();
        let (seq, request_id) = self.update(|inner| {
            let seq = inner.next_seq;
            inner.next_seq += 1;
            let request_id = format!("req_mock_{seq:08}");
            if let Some(cap) = inner.capacity {
                while inner.records.len() >= cap.max(1) {
                    inner.records.pop_front();
                    inner.first_seq += 1;
                }
            }
            if inner.records.is_empty() {
                inner.first_seq = seq;
            }
            inner.records.push_back(RecordedRequest {
                seq,
                request_id: request_id.clone(),
                method: request.method.clone(),
                path: request.uri.path_and_query().map_or_else(
                    || request.uri.path().to_owned(),
                    |pq| pq.as_str().to_owned(),
                ),
                headers: request.headers.clone(),
                body: request.body.clone(),
                anthropic_version: request
                    .headers
                    .get("anthropic-version")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                api_key: request.api_key,
                model: request.model,
                stream: request.stream,
                status: None,
                usage: None,
                outcome: Outcome::InFlight,
                chunks_sent: 0,
                peer: PEER.try_with(|peer| *peer).ok(),
            });
            for stats in [
                inner.stats.entry(key.clone()).or_default(),
                &mut inner.total,
            ] {
                stats.requests += 1;
                stats.in_flight += 1;
                stats.max_in_flight = stats.max_in_flight.max(stats.in_flight);
            }
            (seq, request_id)
        });
        InFlightGuard {
            state: self.clone(),
            seq,
            key,
            request_id,
            finished: false,
        }
    }

    /// A snapshot of the kept records, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().records.iter().cloned().collect()
    }

    /// The kept records of one key (`""` = requests without a key).
    pub fn requests_for(&self, key: &str) -> Vec<RecordedRequest> {
        self.lock()
            .records
            .iter()
            .filter(|r| r.api_key.as_deref().unwrap_or("") == key)
            .cloned()
            .collect()
    }

    /// The record with this `seq`, if still kept.
    pub fn request(&self, seq: usize) -> Option<RecordedRequest> {
        self.lock().record_mut(seq).map(|r| r.clone())
    }

    /// The newest record.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.lock().records.back().cloned()
    }

    /// Requests received so far, all keys (including any no longer kept).
    pub fn request_count(&self) -> usize {
        self.lock().next_seq
    }

    /// Counters of one key (`""` = requests without a key).
    pub fn stats(&self, key: &str) -> KeyStats {
        self.lock().stats.get(key).copied().unwrap_or_default()
    }

    /// Counters over all keys.
    pub fn total(&self) -> KeyStats {
        self.lock().total
    }

    /// Requests received for a key.
    pub fn count(&self, key: &str) -> u64 {
        self.stats(key).requests
    }

    /// Requests of a key between arrival and the end (or drop) of their response body.
    pub fn in_flight(&self, key: &str) -> u64 {
        self.stats(key).in_flight
    }

    /// The highest [`in_flight`](Self::in_flight) seen for a key.
    pub fn max_in_flight(&self, key: &str) -> u64 {
        self.stats(key).max_in_flight
    }

    // ---- waiting ------------------------------------------------------------------------------

    /// Resolves once `pred` holds; re-checked on every state change, never by polling.
    pub async fn wait_until(&self, mut pred: impl FnMut(&MockState) -> bool) {
        // Subscribe before checking so a change between the check and the await is not lost.
        let mut changes = self.shared.changed.subscribe();
        while !pred(self) {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Resolves once `n` requests (all keys) have arrived.
    pub async fn wait_for_requests(&self, n: usize) {
        self.wait_until(|s| s.request_count() >= n).await
    }

    /// Resolves once `n` requests of `key` have arrived.
    pub async fn wait_for_requests_for(&self, key: &str, n: u64) {
        self.wait_until(|s| s.count(key) >= n).await
    }

    /// Resolves once at least `n` requests of `key` are in flight at the same time.
    pub async fn wait_for_in_flight(&self, key: &str, n: u64) {
        self.wait_until(|s| s.in_flight(key) >= n).await
    }

    /// Resolves once no request is in flight.
    pub async fn wait_idle(&self) {
        self.wait_until(|s| s.total().in_flight == 0).await
    }

    /// Resolves with the record `seq` once its outcome is no longer [`Outcome::InFlight`]
    /// (or `None` if the record is not kept).
    pub async fn wait_for_outcome(&self, seq: usize) -> Option<RecordedRequest> {
        let mut found = None;
        self.wait_until(|s| match s.request(seq) {
            Some(r) if r.outcome == Outcome::InFlight => false,
            other => {
                found = other;
                true
            }
        })
        .await;
        found
    }
}

/// What the handler knows about a request when it arrives.
pub(crate) struct ArrivingRequest<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub body: &'a Bytes,
    pub api_key: Option<String>,
    pub model: Option<String>,
    pub stream: bool,
}

/// Keeps a request counted in flight; carried from the handler into the response body, so the
/// count ends when the body ends or is dropped (the way tower-http's in-flight layer does it).
pub(crate) struct InFlightGuard {
    state: MockState,
    seq: usize,
    key: String,
    request_id: String,
    finished: bool,
}

impl InFlightGuard {
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    fn edit(&self, f: impl FnOnce(&mut RecordedRequest)) {
        self.state.update(|inner| {
            if let Some(record) = inner.record_mut(self.seq) {
                f(record)
            }
        });
    }

    pub fn set_status(&self, status: u16) {
        self.edit(|r| r.status = Some(status));
    }

    pub fn set_usage(&self, usage: Usage) {
        self.edit(|r| r.usage = Some(usage));
    }

    pub fn chunk_sent(&self) {
        self.edit(|r| r.chunks_sent += 1);
    }

    pub fn finish(mut self, outcome: Outcome) {
        self.close(outcome);
    }

    fn close(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let key = std::mem::take(&mut self.key);
        self.state.update(|inner| {
            if let Some(record) = inner.record_mut(self.seq) {
                record.outcome = outcome;
            }
            let key_stats = inner.stats.entry(key).or_default();
            for stats in [key_stats, &mut inner.total] {
                stats.in_flight -= 1;
                match outcome {
                    Outcome::Completed => stats.completed += 1,
                    Outcome::Aborted => stats.aborted += 1,
                    Outcome::DroppedByClient => stats.dropped_by_client += 1,
                    Outcome::InFlight => {}
                }
            }
        });
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.close(Outcome::DroppedByClient);
    }
}
