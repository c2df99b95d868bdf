//! The actix adapter against the axum adapter: the same relay configuration, the same mock
//! vendor, the same load, in one run (issue "sub2api-actix and the examples": within 10%).
//!
//! ```sh
//! cargo run --release -p sub2api-actix --example adapter_bench -- [--secs 3] [--conc 1,16,64] [--rounds 3] [--warmup 0.5]
//! ```
//!
//! Like-for-like, as `bench` (tests/src/bin/bench.rs) measures the relay against a proxy: each
//! server is this example re-executed as a child process (`--child axum|actix --vendor URL`), so
//! it has no threads but its own and its CPU time can be read from `/proc/<pid>/stat`; the mock
//! vendor and the load generator stay in the parent. A child binds `127.0.0.1:0`, prints
//! `LISTENING <addr>`, and serves until its stdin closes.
//!
//! Threads (see [`WORKERS`]): each child is booted on a tokio runtime of 2 workers, as the
//! `sub2api` and `sub2api-actix` binaries' `#[tokio::main]` starts one per core on a 2-core
//! machine. The axum child serves HTTP on those same 2 workers (`sub2api_axum::serve`); the actix
//! child adds 2 actix workers (`sub2api_actix::spawn_with`, `workers: 2`) that parse and write
//! HTTP while the relay's calls run on the tokio runtime, which has to outlive actix's per-worker
//! runtimes. So the relay runs on 2 tokio workers in both, and actix has 2 more HTTP threads: the
//! CPU time per request, summed over all of a child's threads, is the like-for-like figure.
//!
//! Every cell (mode × concurrency) warms both servers up, then they take turns in `--rounds`
//! slices of `secs / rounds` (axum, actix, axum, actix, ...), so a change in the machine's
//! background load hits both alike. CPU per request (user + system of the server process over
//! its slices) is steadier than throughput on a shared machine. Every request is billed (memory
//! ledger, strict holds); the settlements each server counted are checked against its successes.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use sub2api_axum::boot::boot;
use sub2api_axum::mock::{MockState, MockVendor};
use sub2api_core::config::Config;

const KEY: &str = "sk-bench";

/// Worker threads: of each child's tokio runtime, and of the actix server.
const WORKERS: usize = 2;

const USAGE: &str = "usage: adapter_bench [--secs 3] [--conc 1,16,64] [--rounds 3] [--warmup 0.5]";

/// Four accounts at the mock, one user with 1,000,000 USD and one key; memory ledger, strict holds.
/// Written as the config file would be, so seed fields added later keep their defaults here.
fn config(vendor: &str) -> Config {
    let accounts: Vec<_> = (0..4)
        .map(|i| {
            serde_json::json!({
                "name": format!("a{i}"), "platform": "anthropic", "type": "apikey",
                "api_key": format!("acct-{i}"), "base_url": vendor,
                "concurrency": 1024, "groups": ["default"],
            })
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "database_url": "memory",
        "groups": [{"name": "default", "platform": "anthropic"}],
        "accounts": accounts,
        "users": [{"email": "bench@example.com", "balance_usd": 1_000_000}],
        "keys": [{"user": "bench@example.com", "group": "default", "key": KEY, "name": "bench"}],
    }))
    .expect("bench config")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        return match child(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("adapter_bench child: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let opts = match Opts::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(parent(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("adapter_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The children: one server each.

/// `--child axum|actix --vendor URL`: boots the relay, serves it on `127.0.0.1:0`, announces the
/// address, and exits when stdin closes (the parent is done, or gone).
fn child(args: &[String]) -> Result<(), String> {
    let kind = args.first().map(String::as_str);
    let vendor = args
        .windows(2)
        .find(|w| w[0] == "--vendor")
        .map(|w| w[1].clone())
        .ok_or("--vendor URL is required")?;
    if !matches!(kind, Some("axum" | "actix")) {
        return Err("--child axum|actix".into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(async {
        let booted = boot(config(&vendor))
            .await
            .map_err(|e| format!("boot: {e}"))?;
        let relay = booted.relay.clone();
        // The child ends by `process::exit`; the store must live until then.
        std::mem::forget(booted);
        if kind == Some("axum") {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| e.to_string())?;
            announce(listener.local_addr().map_err(|e| e.to_string())?)?;
            let router = sub2api_axum::router(&relay);
            sub2api_axum::serve(listener, router, relay, std::future::pending())
                .await
                .map_err(|e| e.to_string())
        } else {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            let options = sub2api_actix::ServeOptions {
                workers: WORKERS,
                ..Default::default()
            };
            // Called inside this runtime, so the relay's work runs on it.
            let server =
                sub2api_actix::spawn_with(relay, listener, options).map_err(|e| e.to_string())?;
            announce(server.addr())?;
            // Serves until the stdin watcher ends the process.
            std::future::pending::<()>().await;
            drop(server);
            Ok(())
        }
    })
}

fn announce(addr: std::net::SocketAddr) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "LISTENING {addr}")
        .and_then(|()| out.flush())
        .map_err(|e| e.to_string())?;
    std::thread::spawn(|| {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 64];
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    Ok(())
}

/// A child server. Dropping it closes its stdin, then kills and reaps it, so no server outlives
/// the run even when the parent fails midway.
struct Server {
    name: &'static str,
    messages: String,
    metrics: String,
    pid: u32,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Server {
    async fn spawn(name: &'static str, vendor: &str) -> Result<Server, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
        let mut child = Command::new(exe)
            .args(["--child", name, "--vendor", vendor])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn {name}: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let pid = child.id();
        let mut server = Server {
            name,
            messages: String::new(),
            metrics: String::new(),
            pid,
            child,
            stdin,
        };
        let line = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::task::spawn_blocking(move || BufReader::new(stdout).lines().next()),
        )
        .await;
        let addr = match line {
            Ok(Ok(Some(Ok(line)))) => line.strip_prefix("LISTENING ").map(str::to_owned),
            _ => None,
        }
        .ok_or_else(|| format!("{name}: the child did not announce its address"))?;
        server.messages = format!("http://{}/v1/messages", addr.trim());
        server.metrics = format!("http://{}/metrics", addr.trim());
        eprintln!(
            "adapter_bench: {} (pid {pid}) at {}",
            server.name, server.messages
        );
        Ok(server)
    }

    /// User + system CPU time of all the child's threads so far.
    fn cpu(&self) -> Duration {
        let text = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // Fields after `(comm)`: utime is field 14, stime 15 (1-based, counting pid and comm).
        let rest = text.rfind(')').map_or("", |i| &text[i + 1..]);
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|s| s.parse().unwrap_or(0))
            .collect();
        let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
        Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
    }

    /// Threads of the child (`/proc/<pid>/status`), to report the thread budget as run.
    fn threads(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `getconf CLK_TCK` (100 on every usual Linux).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

// ---------------------------------------------------------------------------------------------
// The parent: mock vendor, load generator, report.

struct Opts {
    secs: f64,
    warmup: f64,
    rounds: u32,
    conc: Vec<usize>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut o = Opts {
            secs: 3.0,
            warmup: 0.5,
            rounds: 3,
            conc: vec![1, 16, 64],
        };
        let mut it = args.iter();
        let num = |v: Option<&String>, name: &str| -> Result<f64, String> {
            v.and_then(|s| s.parse::<f64>().ok())
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| format!("{name} needs a positive number\n{USAGE}"))
        };
        while let Some(a) = it.next() {
            match a.as_str() {
                "--secs" => o.secs = num(it.next(), "--secs")?,
                "--warmup" => o.warmup = num(it.next(), "--warmup")?,
                "--rounds" => o.rounds = num(it.next(), "--rounds")?.max(1.0) as u32,
                "--conc" => {
                    o.conc = it
                        .next()
                        .ok_or(USAGE)?
                        .split(',')
                        .map(|s| s.trim().parse::<usize>().ok().filter(|&c| c > 0))
                        .collect::<Option<_>>()
                        .ok_or_else(|| format!("--conc needs e.g. 1,16,64\n{USAGE}"))?;
                }
                "-h" | "--help" => return Err(USAGE.into()),
                other => return Err(format!("unknown option {other}\n{USAGE}")),
            }
        }
        Ok(o)
    }
}

#[derive(Default)]
struct Cell {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    latencies: Vec<Duration>,
    cpu: Duration,
    settled: u64,
}

impl Cell {
    fn merge(&mut self, o: Cell) {
        self.ok += o.ok;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        self.elapsed += o.elapsed;
        self.latencies.extend(o.latencies);
        self.cpu += o.cpu;
        self.settled += o.settled;
    }

    fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn cpu_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.ok.max(1) as f64
    }

    /// Nearest-rank percentile in ms, `p` in (0, 100].
    fn pct(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1].as_secs_f64() * 1e3
    }
}

async fn parent(opts: Opts) -> Result<(), String> {
    let loadavg = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let load_start = loadavg();
    let vendor = MockVendor::start_with(
        "127.0.0.1:0".parse().unwrap(),
        MockState::with_record_capacity(256),
    )
    .await
    .map_err(|e| format!("mock vendor: {e}"))?;
    let servers = [
        Server::spawn("axum", &vendor.base_url()).await?,
        Server::spawn("actix", &vendor.base_url()).await?,
    ];
    let client = sub2api_core::layer::upstream::Upstream::default_client();
    let warmup = Duration::from_secs_f64(opts.warmup);
    let slice = Duration::from_secs_f64(opts.secs / opts.rounds as f64);

    let mut rows = Vec::new();
    for stream in [false, true] {
        for &conc in &opts.conc {
            for s in &servers {
                run(&client, &s.messages, stream, conc, warmup).await;
            }
            let mut cells = [Cell::default(), Cell::default()];
            for _ in 0..opts.rounds {
                for (cell, s) in cells.iter_mut().zip(&servers) {
                    let settled = settlements(&client, s).await;
                    let cpu = s.cpu();
                    let mut part = run(&client, &s.messages, stream, conc, slice).await;
                    part.cpu = s.cpu().saturating_sub(cpu);
                    // Settlement is asynchronous to the response: give it a moment to land.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    part.settled = settlements(&client, s).await.saturating_sub(settled);
                    cell.merge(part);
                }
            }
            for c in &mut cells {
                c.latencies.sort_unstable();
            }
            let [ax, ac] = &cells;
            eprintln!(
                "adapter_bench: {} c={conc}: axum {:.0} req/s {:.0} µs/req, actix {:.0} req/s {:.0} µs/req",
                mode(stream),
                ax.rps(),
                ax.cpu_us(),
                ac.rps(),
                ac.cpu_us()
            );
            rows.push((stream, conc, cells));
        }
    }
    let threads = [servers[0].threads(), servers[1].threads()];
    drop(servers);
    let load_end = loadavg();

    println!(
        "`adapter_bench --secs {} --conc {} --rounds {} --warmup {}`; {} cores (nproc); \
         loadavg at start `{load_start}`, at end `{load_end}`; \
         threads: axum child {}, actix child {}\n",
        opts.secs,
        opts.conc
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        opts.rounds,
        opts.warmup,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        threads[0],
        threads[1],
    );
    println!(
        "| mode | c | axum req/s | actix req/s | actix/axum | axum p50/p99 ms | actix p50/p99 ms | \
         axum CPU µs/req | actix CPU µs/req | CPU actix/axum |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut notes = Vec::new();
    for (stream, conc, [ax, ac]) in &rows {
        println!(
            "| {} | {conc} | {:.0} | {:.0} | {:.0}% | {:.2} / {:.2} | {:.2} / {:.2} | {:.0} | {:.0} | {:.0}% |",
            mode(*stream),
            ax.rps(),
            ac.rps(),
            100.0 * ac.rps() / ax.rps().max(1e-9),
            ax.pct(50.0),
            ax.pct(99.0),
            ac.pct(50.0),
            ac.pct(99.0),
            ax.cpu_us(),
            ac.cpu_us(),
            100.0 * ac.cpu_us() / ax.cpu_us().max(1e-9),
        );
        for (name, c) in [("axum", ax), ("actix", ac)] {
            if c.errors > 0 {
                notes.push(format!(
                    "{name} {} c={conc}: {} errors, first: {}",
                    mode(*stream),
                    c.errors,
                    c.first_error.as_deref().unwrap_or("?")
                ));
            }
            if c.settled < c.ok {
                notes.push(format!(
                    "{name} {} c={conc}: {} settlements for {} successes",
                    mode(*stream),
                    c.settled,
                    c.ok
                ));
            }
        }
    }
    for n in notes {
        println!("\n- {n}");
    }
    Ok(())
}

fn mode(stream: bool) -> &'static str {
    if stream { "stream" } else { "non-stream" }
}

/// The server's `sub2api_settlements_total`.
async fn settlements(client: &reqwest::Client, server: &Server) -> u64 {
    let text = match client.get(&server.metrics).send().await {
        Ok(res) => res.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.lines()
        .find_map(|l| l.strip_prefix("sub2api_settlements_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Closed-loop load: `conc` workers each send their next request once the previous body is read,
/// until `secs` is over. A request counts only if it answered 200 with a whole reply of the mock.
/// Every request has a distinct first message, so stickiness spreads them over the pool.
async fn run(
    client: &reqwest::Client,
    url: &str,
    stream: bool,
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
            let url = url.to_owned();
            tokio::spawn(async move {
                let mut cell = Cell::default();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    let body = format!(
                        r#"{{"model":"claude-haiku-4-5","max_tokens":64,"stream":{stream},"messages":[{{"role":"user","content":"bench {run_id}-{w}-{n}"}}]}}"#
                    );
                    let t0 = Instant::now();
                    let res = client
                        .post(&url)
                        .header("x-api-key", KEY)
                        .header("content-type", "application/json")
                        .header("anthropic-version", "2023-06-01")
                        .body(body)
                        .send()
                        .await;
                    let outcome = match res {
                        Ok(res) if res.status() == reqwest::StatusCode::OK => {
                            match res.bytes().await {
                                Ok(b) if complete(stream, &b) => Ok(()),
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
        total.merge(w.await.expect("load worker"));
    }
    total.elapsed = start.elapsed();
    total
}

/// Whether a body is a whole reply of the mock.
fn complete(stream: bool, body: &[u8]) -> bool {
    let needle: &[u8] = if stream {
        b"event: message_stop"
    } else {
        b"\"usage\""
    };
    body.windows(needle.len()).any(|w| w == needle)
}
