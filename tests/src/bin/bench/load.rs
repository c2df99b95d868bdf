//! The load generator: N workers on one pooled client, each looping small Messages requests for a
//! fixed time, recording time to last byte.
//!
//! Closed loop (a worker sends its next request when the previous body has been read), so the
//! concurrency is exact and throughput is what the server sustains at it. Every request has a
//! different first message, so the relay's prefix-hash stickiness spreads them over the pool as
//! distinct conversations would. A request counts as an error unless it answered 200 and its whole
//! body arrived and ends the way the mock ends a reply.

use std::time::{Duration, Instant};

use sub2api_tests::KEY;

use crate::procs::{self, Server};

/// `max_tokens` of every request: above the mock's default 12-word reply, so nothing is capped,
/// and small, so the relay's worst-case hold stays small.
const MAX_TOKENS: u64 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    NonStream,
    Stream,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::NonStream => "non-stream",
            Mode::Stream => "stream",
        }
    }
}

/// Where requests go.
#[derive(Clone, Debug)]
pub struct Target {
    pub messages: String,
    pub metrics: String,
    pub pid: u32,
    /// Users (and keys) seeded in the server; worker `w` uses key `w % users`.
    pub users: usize,
}

impl Target {
    pub fn of(server: &Server) -> Target {
        Target {
            messages: format!("{}/v1/messages", server.base),
            metrics: format!("{}/metrics", server.base),
            pid: server.pid,
            users: server.users,
        }
    }
}

/// One measured cell.
#[derive(Clone, Debug, Default)]
pub struct Cell {
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// Sorted latencies (time to last byte) of the successful requests.
    pub latencies: Vec<Duration>,
    /// Settlements the server counted during the measured part (`None`: no `/metrics`, the proxy).
    pub settled: Option<u64>,
    /// CPU time the server process used during the measured part.
    pub server_cpu: Option<Duration>,
    /// CPU time the bench process (load generator and mock vendor) used meanwhile.
    pub client_cpu: Option<Duration>,
}

impl Cell {
    /// Server CPU per successful request, in microseconds.
    pub fn cpu_us(&self) -> Option<f64> {
        self.per_request_us(self.server_cpu?)
    }

    /// Load generator + mock CPU per successful request, in microseconds.
    pub fn client_cpu_us(&self) -> Option<f64> {
        self.per_request_us(self.client_cpu?)
    }

    fn per_request_us(&self, cpu: Duration) -> Option<f64> {
        (self.ok > 0).then(|| cpu.as_secs_f64() * 1e6 / self.ok as f64)
    }

    /// Adds a slice of the same target.
    fn merge(&mut self, other: Cell) {
        let add = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.settled = match (self.settled, other.settled) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.server_cpu = add(self.server_cpu, other.server_cpu);
        self.client_cpu = add(self.client_cpu, other.client_cpu);
    }

    pub fn rps(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.ok as f64 / self.elapsed.as_secs_f64()
        }
    }

    /// Nearest-rank percentile, `p` in (0, 100].
    pub fn pct(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }
}

/// A request body; `tag` makes the first message unique.
pub fn body(mode: Mode, tag: &str) -> String {
    format!(
        r#"{{"model":"claude-sonnet-4-5","max_tokens":{MAX_TOKENS},"stream":{},"messages":[{{"role":"user","content":"Benchmark request {tag}: say hello."}}]}}"#,
        mode == Mode::Stream
    )
}

/// The API key of seeded user `i` (`--users N` seeds users 0..N; user 0 is the tests' own).
pub fn api_key(i: usize) -> String {
    if i == 0 {
        KEY.to_owned()
    } else {
        format!("sk-bench-user-{i}")
    }
}

/// Sends one request the way a client would, with `key`.
pub fn request(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    mode: Mode,
    tag: &str,
) -> reqwest::RequestBuilder {
    client
        .post(url)
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .body(body(mode, tag))
}

/// Whether a complete body is a complete reply of the mock.
pub fn complete(mode: Mode, body: &[u8]) -> bool {
    let needle: &[u8] = match mode {
        Mode::Stream => b"event: message_stop",
        Mode::NonStream => b"\"usage\"",
    };
    body.windows(needle.len()).any(|w| w == needle)
}

/// Measures `targets` under the same conditions: each is warmed up for `warmup` (discarded),
/// then they take turns in `rounds` slices of `secs / rounds` each (A B A B ...), so a change in
/// the machine's background load during the cell hits every target alike. Counts, CPU times and
/// settlements are summed over a target's slices, latencies pooled.
pub async fn compare(
    client: &reqwest::Client,
    targets: &[&Target],
    mode: Mode,
    conc: usize,
    warmup: Duration,
    secs: Duration,
    rounds: u32,
) -> Vec<Cell> {
    for t in targets {
        let _ = run(client, t, mode, conc, warmup).await;
    }
    let rounds = rounds.max(1);
    let mut cells = vec![Cell::default(); targets.len()];
    for _ in 0..rounds {
        for (cell, t) in cells.iter_mut().zip(targets) {
            cell.merge(slice(client, t, mode, conc, secs / rounds).await);
        }
    }
    for c in &mut cells {
        c.latencies.sort_unstable();
    }
    cells
}

/// One measured slice, with the server's CPU time and settlements and the load generator's
/// (this process: workers and mock) CPU time over it.
async fn slice(
    client: &reqwest::Client,
    target: &Target,
    mode: Mode,
    conc: usize,
    secs: Duration,
) -> Cell {
    let before = settled(client, target).await;
    let cpu_before = procs::cpu_time(target.pid);
    let own_before = procs::cpu_time(std::process::id());
    let mut cell = run(client, target, mode, conc, secs).await;
    cell.server_cpu = procs::cpu_time(target.pid)
        .zip(cpu_before)
        .map(|(a, b)| a.saturating_sub(b));
    cell.client_cpu = procs::cpu_time(std::process::id())
        .zip(own_before)
        .map(|(a, b)| a.saturating_sub(b));
    cell.settled = settled(client, target)
        .await
        .zip(before)
        .map(|(a, b)| a.saturating_sub(b));
    cell
}

/// `conc` workers for `secs`; each stops after the deadline once its current request is done.
pub async fn run(
    client: &reqwest::Client,
    target: &Target,
    mode: Mode,
    conc: usize,
    secs: Duration,
) -> Cell {
    static RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run_id = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let start = Instant::now();
    let deadline = start + secs;
    let workers: Vec<_> = (0..conc)
        .map(|w| {
            let client = client.clone();
            let url = target.messages.clone();
            let key = api_key(w % target.users.max(1));
            tokio::spawn(async move {
                let mut cell = Cell {
                    latencies: Vec::with_capacity(4096),
                    ..Cell::default()
                };
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    let tag = format!("{run_id}-{w}-{n}");
                    let t0 = Instant::now();
                    let outcome = match request(&client, &url, &key, mode, &tag).send().await {
                        Ok(res) if res.status() == reqwest::StatusCode::OK => {
                            match res.bytes().await {
                                Ok(b) if complete(mode, &b) => Ok(()),
                                Ok(b) => Err(format!(
                                    "incomplete body: {}",
                                    String::from_utf8_lossy(&b[..b.len().min(200)])
                                )),
                                Err(e) => Err(format!("body: {e}")),
                            }
                        }
                        Ok(res) => {
                            let status = res.status();
                            let text = res.text().await.unwrap_or_default();
                            Err(format!("{status}: {}", &text[..text.len().min(200)]))
                        }
                        Err(e) => Err(format!("send: {e}")),
                    };
                    match outcome {
                        Ok(()) => {
                            cell.ok += 1;
                            cell.latencies.push(t0.elapsed());
                        }
                        Err(e) => {
                            cell.errors += 1;
                            cell.first_error.get_or_insert(e);
                            // A refusing server answers fast; don't spin on it.
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
                cell
            })
        })
        .collect();
    let mut total = Cell::default();
    for w in workers {
        let cell = w.await.expect("worker");
        total.ok += cell.ok;
        total.errors += cell.errors;
        if total.first_error.is_none() {
            total.first_error = cell.first_error;
        }
        total.latencies.extend(cell.latencies);
    }
    total.elapsed = start.elapsed();
    total
}

/// The relay's `sub2api_settlements_total` (None for a server without `/metrics`).
pub async fn settled(client: &reqwest::Client, target: &Target) -> Option<u64> {
    let text = client
        .get(&target.metrics)
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("sub2api_settlements_total "))
        .and_then(|v| v.trim().parse().ok())
}
