//! The markdown report: the machine and command first (figures mean nothing without them), then
//! one table per question, then each target read against its figure.

use std::fmt::Write;
use std::time::Duration;

use crate::Opts;
use crate::load::{Cell, Mode};
use crate::memory::Held;
use crate::procs::{Rss, mb};

pub struct CorePair {
    pub mode: Mode,
    pub conc: usize,
    pub proxy: Cell,
    pub relay: Cell,
}

impl CorePair {
    /// A line for each side that had errors, naming it `names[0]` / `names[1]`.
    fn errors(&self, names: [&str; 2], out: &mut Vec<String>) {
        for (who, c) in names.into_iter().zip([&self.proxy, &self.relay]) {
            if let Some(e) = &c.first_error {
                out.push(format!(
                    "{who} {} c={}: {} errors, first: {e}",
                    self.mode.name(),
                    self.conc,
                    c.errors
                ));
            }
        }
    }
}

pub struct LedgerRow {
    pub ledger: String,
    pub mode: Mode,
    pub conc: usize,
    pub cell: Cell,
}

pub struct MemoryRow {
    pub server: String,
    pub held: Held,
}

pub struct Report {
    header: String,
    pub core: Vec<CorePair>,
    /// (proxy, relay) memory after the core cells.
    pub core_rss: Option<(Rss, Rss)>,
    pub ledger: Vec<LedgerRow>,
    pub memory: Vec<MemoryRow>,
    /// axum (`proxy` side) against actix (`relay` side), the same relay behind both.
    pub adapters: Vec<CorePair>,
    pub notes: Vec<String>,
}

/// Throughput ratio target at c=64 (issue "relay core").
const TARGET_RATIO: f64 = 0.70;
/// Added p99 target at c=16, in ms.
const TARGET_ADDED_P99_MS: f64 = 1.0;
/// Relay VmRSS target with 1,000 open streams, in MB.
const TARGET_RSS_MB: f64 = 100.0;
/// SQLite vs memory throughput target (issue "sqlx").
const TARGET_SQLITE: f64 = 0.60;

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./,=:@%+".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores (nproc), {cpu}, kernel `{}`", kernel.trim())
}

fn cpu(c: &Cell) -> String {
    c.cpu_us().map_or("-".into(), |us| format!("{us:.0}"))
}

fn client_cpu(c: &Cell) -> String {
    c.client_cpu_us()
        .map_or("-".into(), |us| format!("{us:.0}"))
}

/// `settled / ok` of a relay cell.
fn settled(c: &Cell) -> String {
    c.settled.map_or("-".into(), |n| format!("{n} / {}", c.ok))
}

/// The 1/5/15-minute load averages: other work on the machine competes for the same cores.
fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" / ")
}

fn verdict(met: bool) -> &'static str {
    if met { "**met**" } else { "**not met**" }
}

impl Report {
    pub fn new(args: &[String], opts: &Opts) -> Report {
        let rest: Vec<String> = args.iter().skip(1).map(|a| shell_quote(a)).collect();
        let mut cmd = "cargo run --release -p sub2api-tests --bin bench".to_owned();
        if !rest.is_empty() {
            cmd.push_str(" -- ");
            cmd.push_str(&rest.join(" "));
        }
        let mut h = String::new();
        let _ = writeln!(h, "# sub2api-rs benchmark\n");
        let _ = writeln!(h, "- machine: {}", machine());
        let _ = writeln!(h, "- load average (1/5/15 min) at start: {}", loadavg());
        let _ = writeln!(h, "- command: `{cmd}`");
        let _ = writeln!(
            h,
            "- binary: `{}`",
            args.iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let _ = writeln!(
            h,
            "- cells: {} s measured per server after {} s warm-up, in {} alternating slices (servers compared take turns); closed-loop workers on one pooled reqwest client; \
             latency = time to last byte; mock vendor (default 12-word reply) and load generator in the parent \
             process, each server in its own child process; relay with billing on (strict holds, {} seeded user(s) with 1,000,000 USD each, workers spread over their keys); \
             accepted sockets {}",
            opts.secs,
            opts.warmup,
            opts.rounds,
            opts.users,
            if opts.nagle {
                "with Nagle's algorithm on (`--nagle`, stock `axum::serve`)"
            } else {
                "with TCP_NODELAY"
            }
        );
        Report {
            header: h,
            core: vec![],
            core_rss: None,
            ledger: vec![],
            memory: vec![],
            adapters: vec![],
            notes: vec![],
        }
    }

    pub fn render(&self) -> String {
        let mut s = self.header.clone();
        let _ = writeln!(s, "- load average (1/5/15 min) at end: {}", loadavg());
        let mut targets = Vec::new();
        let mut errors = Vec::new();

        if !self.core.is_empty() {
            let _ = writeln!(s, "\n## Relay vs bare proxy (memory ledger)\n");
            let _ = writeln!(
                s,
                "| cell | proxy req/s | relay req/s | relay/proxy | proxy p50 ms | relay p50 ms | proxy p99 ms | relay p99 ms | added p99 ms | proxy CPU µs/req | relay CPU µs/req | bench CPU µs/req proxy/relay | errors proxy/relay | relay settled / ok |"
            );
            let _ = writeln!(
                s,
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            for p in &self.core {
                let ratio = p.relay.rps() / p.proxy.rps().max(f64::MIN_POSITIVE);
                let added =
                    p.relay.pct(99.0).as_secs_f64() * 1e3 - p.proxy.pct(99.0).as_secs_f64() * 1e3;
                let _ = writeln!(
                    s,
                    "| {} c={} | {:.0} | {:.0} | {:.0}% | {} | {} | {} | {} | {:+.3} | {} | {} | {}/{} | {}/{} | {} |",
                    p.mode.name(),
                    p.conc,
                    p.proxy.rps(),
                    p.relay.rps(),
                    ratio * 100.0,
                    ms(p.proxy.pct(50.0)),
                    ms(p.relay.pct(50.0)),
                    ms(p.proxy.pct(99.0)),
                    ms(p.relay.pct(99.0)),
                    added,
                    cpu(&p.proxy),
                    cpu(&p.relay),
                    client_cpu(&p.proxy),
                    client_cpu(&p.relay),
                    p.proxy.errors,
                    p.relay.errors,
                    settled(&p.relay)
                );
                p.errors(["proxy", "relay"], &mut errors);
                if p.conc == 64 {
                    targets.push(format!(
                        "relay ≥ {:.0}% of the proxy's throughput at c=64 ({}): {:.0}% → {}",
                        TARGET_RATIO * 100.0,
                        p.mode.name(),
                        ratio * 100.0,
                        verdict(ratio >= TARGET_RATIO)
                    ));
                }
                if p.conc == 16 {
                    targets.push(format!(
                        "p99 added latency < {TARGET_ADDED_P99_MS} ms at c=16 ({}): {added:+.3} ms → {}",
                        p.mode.name(),
                        verdict(added < TARGET_ADDED_P99_MS)
                    ));
                }
            }
            if let Some((proxy, relay)) = self.core_rss {
                let _ = writeln!(
                    s,
                    "\nAfter these cells: proxy VmRSS {:.1} MB (peak {:.1} MB), relay VmRSS {:.1} MB (peak {:.1} MB).",
                    mb(proxy.rss),
                    mb(proxy.hwm),
                    mb(relay.rss),
                    mb(relay.hwm)
                );
            }
        }

        if !self.adapters.is_empty() {
            let _ = writeln!(s, "\n## Adapters: actix-web against axum (memory ledger)\n");
            let _ = writeln!(
                s,
                "| cell | axum req/s | actix req/s | actix/axum | axum p50/p99 ms | actix p50/p99 ms | axum CPU µs/req | actix CPU µs/req | CPU actix/axum | errors axum/actix | settled / ok axum, actix |"
            );
            let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            for p in &self.adapters {
                let (a, x) = (&p.proxy, &p.relay);
                let ratio = x.rps() / a.rps().max(f64::MIN_POSITIVE);
                let cpu_ratio = match (a.cpu_us(), x.cpu_us()) {
                    (Some(a), Some(x)) if a > 0.0 => format!("{:.0}%", x / a * 100.0),
                    _ => "–".into(),
                };
                let _ = writeln!(
                    s,
                    "| {} c={} | {:.0} | {:.0} | {:.0}% | {} / {} | {} / {} | {} | {} | {} | {}/{} | {}, {} |",
                    p.mode.name(),
                    p.conc,
                    a.rps(),
                    x.rps(),
                    ratio * 100.0,
                    ms(a.pct(50.0)),
                    ms(a.pct(99.0)),
                    ms(x.pct(50.0)),
                    ms(x.pct(99.0)),
                    cpu(a),
                    cpu(x),
                    cpu_ratio,
                    a.errors,
                    x.errors,
                    settled(a),
                    settled(x)
                );
                p.errors(["axum", "actix"], &mut errors);
                targets.push(format!(
                    "actix within 10% of axum ({} c={}): throughput {:.0}% → {}",
                    p.mode.name(),
                    p.conc,
                    ratio * 100.0,
                    verdict((0.9..=1.1).contains(&ratio))
                ));
            }
        }

        if !self.memory.is_empty() {
            let _ = writeln!(s, "\n## Memory with streams held open\n");
            let _ = writeln!(
                s,
                "| server | streams open at once | idle VmRSS MB | VmRSS with streams open MB | per stream KB | VmHWM MB | all open after | completed / errors |"
            );
            let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
            for m in &self.memory {
                let h = &m.held;
                let per = (h.rss_open.saturating_sub(h.rss_idle)) as f64
                    / h.peak_open.max(1) as f64
                    / 1e3;
                let _ = writeln!(
                    s,
                    "| {} | {} / {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} / {} |",
                    m.server,
                    h.peak_open,
                    h.streams,
                    mb(h.rss_idle),
                    mb(h.rss_open),
                    per,
                    mb(h.hwm),
                    h.open_time
                        .map_or("never".into(), |d| format!("{:.2} s", d.as_secs_f64())),
                    h.completed,
                    h.errors
                );
                if let Some(e) = &h.first_error {
                    errors.push(format!(
                        "{} holding streams: {} errors, first: {e}",
                        m.server, h.errors
                    ));
                }
                if m.server.starts_with("relay") {
                    let all = h.peak_open == h.streams;
                    targets.push(format!(
                        "relay VmRSS < {TARGET_RSS_MB:.0} MB with {} open streams: {:.1} MB with {} open → {}",
                        h.streams,
                        mb(h.rss_open),
                        h.peak_open,
                        if all { verdict(mb(h.rss_open) < TARGET_RSS_MB) } else { "**not measured** (not all streams were open at once)" }
                    ));
                }
            }
        }

        if !self.ledger.is_empty() {
            let conc = self.ledger[0].conc;
            let _ = writeln!(s, "\n## Billed throughput by ledger (c={conc})\n");
            let _ = writeln!(
                s,
                "| ledger | mode | req/s | vs memory | p50 ms | p99 ms | relay CPU µs/req | settled / ok | errors |"
            );
            let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
            for r in &self.ledger {
                let memory = self
                    .ledger
                    .iter()
                    .find(|m| m.ledger == "memory" && m.mode == r.mode);
                let ratio = memory.map(|m| r.cell.rps() / m.cell.rps().max(f64::MIN_POSITIVE));
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
                    r.ledger,
                    r.mode.name(),
                    r.cell.rps(),
                    ratio.map_or("-".into(), |x| format!("{:.0}%", x * 100.0)),
                    ms(r.cell.pct(50.0)),
                    ms(r.cell.pct(99.0)),
                    cpu(&r.cell),
                    settled(&r.cell),
                    r.cell.errors
                );
                if let Some(e) = &r.cell.first_error {
                    errors.push(format!(
                        "ledger {} {}: {} errors, first: {e}",
                        r.ledger,
                        r.mode.name(),
                        r.cell.errors
                    ));
                }
                if r.ledger == "sqlite"
                    && let Some(x) = ratio
                {
                    targets.push(format!(
                        "SQLite ≥ {:.0}% of memory ({}, c={conc}): {:.0}% → {}",
                        TARGET_SQLITE * 100.0,
                        r.mode.name(),
                        x * 100.0,
                        verdict(x >= TARGET_SQLITE)
                    ));
                }
            }
        }

        if !targets.is_empty() {
            let _ = writeln!(s, "\n## Targets\n");
            for t in &targets {
                let _ = writeln!(s, "- {t}");
            }
        }
        if !errors.is_empty() || !self.notes.is_empty() {
            let _ = writeln!(s, "\n## Notes\n");
            for n in self.notes.iter().chain(&errors) {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }
}
