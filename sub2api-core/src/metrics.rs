//! Relay counters, exposed in Prometheus text format at `/metrics`. Plain atomics: they are bumped
//! on the hot path and must cost nothing there.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

#[derive(Default, Debug)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub settled: AtomicU64,
    pub charged_nanos: AtomicU64,
    pub hold_overruns: AtomicU64,
    pub settle_failures: AtomicU64,
    pub failovers: AtomicU64,
    pub client_aborts: AtomicU64,
    pub upstream_cuts: AtomicU64,
    pub refused_insufficient: AtomicU64,
    pub open_responses: AtomicI64,
}

impl Metrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let c = |s: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        c(
            &mut s,
            "sub2api_relay_requests_total",
            "Relay requests that reached the upstream stage.",
            self.requests.load(Relaxed),
        );
        c(
            &mut s,
            "sub2api_settlements_total",
            "Responses settled.",
            self.settled.load(Relaxed),
        );
        c(
            &mut s,
            "sub2api_charged_nanousd_total",
            "Nano-USD charged.",
            self.charged_nanos.load(Relaxed),
        );
        c(
            &mut s,
            "sub2api_hold_overruns_total",
            "Settlements whose metered cost exceeded the hold.",
            self.hold_overruns.load(Relaxed),
        );
        c(
            &mut s,
            "sub2api_settle_failures_total",
            "Settlements the ledger refused or could not commit.",
            self.settle_failures.load(Relaxed),
        );
        c(
            &mut s,
            "sub2api_failovers_total",
            "Upstream attempts retried on another account.",
            self.failovers.load(Relaxed),
        );
        c(
            &mut s,
            "sub2api_client_aborts_total",
            "Responses whose client left before the end.",
            self.client_aborts.load(Relaxed),
        );
        c(
            &mut s,
            "sub2api_upstream_cuts_total",
            "Responses that upstream ended without final usage.",
            self.upstream_cuts.load(Relaxed),
        );
        c(
            &mut s,
            "sub2api_refused_insufficient_total",
            "Requests refused for insufficient balance.",
            self.refused_insufficient.load(Relaxed),
        );
        let _ = writeln!(
            s,
            "# HELP sub2api_open_responses Metered responses currently streaming.\n# TYPE sub2api_open_responses gauge\nsub2api_open_responses {}",
            self.open_responses.load(Relaxed)
        );
        s
    }
}
