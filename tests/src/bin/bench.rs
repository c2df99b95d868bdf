//! `bench`: the relay against a bare pass-through proxy on the same HTTP stack, in one run.
//!
//! ```sh
//! cargo run --release -p sub2api-tests --bin bench -- [--quick] [--secs S] [--out FILE]
//! ```
//!
//! Performance is measured here rather than in timed tests (DESIGN §8): one run puts the relay
//! and a bare proxy (axum server + pooled reqwest client, no metering) in front of the same mock
//! vendor, drives both with the same load, and reports ratios and percentiles, so the figures
//! describe the relay's own cost on this machine rather than the machine. See BENCHMARKS.md.
//!
//! Every server runs in a child process (this binary re-executed with `--child ...`, see
//! [`child`]), so its resident memory is its own; the load generator and the mock vendor live in
//! the parent.
//!
//! The modules live in `bench/`; a crate root looks for modules beside itself, hence the
//! `#[path]` attributes.

#[path = "bench/child.rs"]
mod child;
#[path = "bench/db.rs"]
mod db;
#[path = "bench/load.rs"]
mod load;
#[path = "bench/memory.rs"]
mod memory;
#[path = "bench/net.rs"]
mod net;
#[path = "bench/procs.rs"]
mod procs;
#[path = "bench/report.rs"]
mod report;

use std::path::PathBuf;
use std::time::Duration;

use sub2api_core::layer::upstream::Upstream;

use load::{Mode, Target};
use procs::Server;
use report::{CorePair, LedgerRow, MemoryRow, Report};

/// Which parts of the run to do (`--sections core,ledger,memory`).
#[derive(Clone, Debug)]
struct Sections {
    core: bool,
    ledger: bool,
    memory: bool,
    adapters: bool,
}

/// Command-line options of the parent (the load generator).
#[derive(Clone, Debug)]
pub struct Opts {
    /// Measured seconds per cell.
    secs: f64,
    /// Unmeasured seconds before each cell (connections, pools, caches).
    warmup: f64,
    /// Slices per cell: the servers compared take turns this many times.
    rounds: u32,
    /// Concurrency levels of the relay-vs-proxy table.
    conc: Vec<usize>,
    /// Concurrency of the ledger comparison.
    ledger_conc: usize,
    /// Streams held open for the memory line.
    streams: usize,
    /// Mock delay between stream events while streams are held open.
    event_delay_ms: u64,
    pg_url: String,
    out: Option<PathBuf>,
    sections: Sections,
    /// Leave Nagle's algorithm on in every server (see `net.rs`).
    nagle: bool,
    /// Users (each with a key and a wallet) the relays are seeded with; workers spread over them.
    users: usize,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut o = Opts {
            secs: 3.0,
            warmup: 0.5,
            rounds: 3,
            conc: vec![1, 16, 64],
            ledger_conc: 64,
            streams: 1000,
            event_delay_ms: 500,
            pg_url: std::env::var("SUB2API_TEST_PG_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
            out: None,
            sections: Sections {
                core: true,
                ledger: true,
                memory: true,
                adapters: true,
            },
            nagle: false,
            users: 1,
        };
        let mut secs_given = false;
        let mut rounds_given = false;
        let mut quick = false;
        let mut it = args.iter();
        let num = |v: Option<&String>, name: &str| -> Result<f64, String> {
            v.and_then(|s| s.parse::<f64>().ok())
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| format!("{name} needs a positive number"))
        };
        while let Some(a) = it.next() {
            match a.as_str() {
                "--quick" => quick = true,
                "--nagle" => o.nagle = true,
                "--users" => o.users = num(it.next(), "--users")? as usize,
                "--secs" => {
                    o.secs = num(it.next(), "--secs")?;
                    secs_given = true;
                }
                "--warmup" => o.warmup = num(it.next(), "--warmup")?,
                "--rounds" => {
                    o.rounds = num(it.next(), "--rounds")? as u32;
                    rounds_given = true;
                }
                "--conc" => {
                    o.conc = it
                        .next()
                        .ok_or("--conc needs a list, e.g. 1,16,64")?
                        .split(',')
                        .map(|s| {
                            s.trim()
                                .parse::<usize>()
                                .map_err(|e| format!("--conc: {e}"))
                        })
                        .collect::<Result<_, _>>()?;
                    if o.conc.contains(&0) {
                        return Err("--conc: concurrency must be at least 1".into());
                    }
                }
                "--ledger-conc" => o.ledger_conc = num(it.next(), "--ledger-conc")? as usize,
                "--streams" => o.streams = num(it.next(), "--streams")? as usize,
                "--event-delay-ms" => o.event_delay_ms = num(it.next(), "--event-delay-ms")? as u64,
                "--pg" => o.pg_url = it.next().ok_or("--pg needs a URL")?.clone(),
                "--out" => o.out = Some(PathBuf::from(it.next().ok_or("--out needs a file")?)),
                "--sections" => {
                    let list = it
                        .next()
                        .ok_or("--sections needs core,ledger,memory,adapters")?;
                    o.sections = Sections {
                        core: false,
                        ledger: false,
                        memory: false,
                        adapters: false,
                    };
                    for s in list.split(',') {
                        match s.trim() {
                            "core" => o.sections.core = true,
                            "ledger" => o.sections.ledger = true,
                            "memory" => o.sections.memory = true,
                            "adapters" => o.sections.adapters = true,
                            other => return Err(format!("--sections: unknown section {other}")),
                        }
                    }
                }
                "-h" | "--help" => return Err(USAGE.into()),
                other => return Err(format!("unknown option {other}\n{USAGE}")),
            }
        }
        if quick {
            if !secs_given {
                o.secs = 0.5;
            }
            o.warmup = o.warmup.min(0.2);
            if !rounds_given {
                o.rounds = 1;
            }
            o.event_delay_ms = o.event_delay_ms.min(250);
        }
        Ok(o)
    }
}

const USAGE: &str = "usage: bench [--quick] [--secs S] [--warmup S] [--rounds 3] [--conc 1,16,64] [--ledger-conc 64] \
[--streams 1000] [--event-delay-ms 500] [--pg URL] [--sections core,ledger,memory,adapters] [--nagle] [--users 1] [--out FILE]";

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        return child::main(&args[2..]);
    }
    let opts = match Opts::parse(&args[1..]) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(opts, &args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(opts: Opts, args: &[String]) -> Result<(), String> {
    let vendor = net::Vendor::start(opts.nagle)
        .await
        .map_err(|e| format!("mock vendor: {e}"))?;
    let vendor_url = vendor.base.clone();
    // `bench --child relay|proxy ...` for this run.
    let spawn = |name: String, kind: &'static str, db: Option<String>| {
        let mut args = vec![kind.to_owned(), "--vendor".to_owned(), vendor_url.clone()];
        if let Some(db) = db {
            args.extend(["--db".to_owned(), db]);
        }
        if opts.nagle {
            args.push("--nagle".to_owned());
        }
        let users = if kind.starts_with("relay") {
            opts.users.max(1)
        } else {
            1
        };
        if users > 1 {
            args.extend(["--users".to_owned(), users.to_string()]);
        }
        async move {
            let mut server = Server::spawn(&name, &args).await?;
            server.users = users;
            Ok::<_, String>(server)
        }
    };
    let client = Upstream::default_client();
    let cell = Duration::from_secs_f64(opts.secs);
    let warmup = Duration::from_secs_f64(opts.warmup);
    let mut report = Report::new(args, &opts);
    eprintln!("bench: mock vendor at {vendor_url}");

    if opts.sections.core {
        let proxy = spawn("proxy".into(), "proxy", None).await?;
        let relay = spawn("relay".into(), "relay", Some("memory".into())).await?;
        report.core = compare_pair(
            &client,
            [&proxy, &relay],
            &opts,
            warmup,
            cell,
            |m, c, p, r| format!("bench: {m} c={c}: proxy {p:.0} req/s, relay {r:.0} req/s"),
        )
        .await;
        report.core_rss = Some((procs::rss(proxy.pid), procs::rss(relay.pid)));
    }

    if opts.sections.adapters {
        // The same relay on both adapters (issue "sub2api-actix"): axum as in the core section,
        // actix with 2 HTTP workers in front of the same 2-worker relay runtime.
        let axum = spawn("relay-axum".into(), "relay", Some("memory".into())).await?;
        let actix = spawn("relay-actix".into(), "relay-actix", Some("memory".into())).await?;
        report.adapters = compare_pair(
            &client,
            [&axum, &actix],
            &opts,
            warmup,
            cell,
            |m, c, a, x| {
                format!("bench: adapters {m} c={c}: axum {a:.0} req/s, actix {x:.0} req/s")
            },
        )
        .await;
    }

    if opts.sections.ledger {
        let pg = db::PgSchema::create(&opts.pg_url).await;
        let sqlite = db::SqliteFile::new();
        let sqlite_normal = db::SqliteFile::new();
        let mut ledgers: Vec<(String, String)> = vec![
            ("memory".into(), "memory".into()),
            ("sqlite".into(), sqlite.url.clone()),
            (
                "sqlite-normal".into(),
                format!("{}#normal", sqlite_normal.url),
            ),
        ];
        match &pg {
            Ok(schema) => ledgers.push(("postgres".into(), schema.url.clone())),
            Err(e) => report.notes.push(format!("Postgres skipped: {e}")),
        }
        let mut servers = Vec::new();
        for (name, url) in &ledgers {
            match spawn(format!("relay-{name}"), "relay", Some(url.clone())).await {
                Ok(server) => servers.push((name.clone(), server)),
                Err(e) => {
                    drop(servers);
                    if let Ok(schema) = pg {
                        schema.drop().await;
                    }
                    return Err(e);
                }
            }
        }
        let targets: Vec<Target> = servers.iter().map(|(_, s)| Target::of(s)).collect();
        let targets: Vec<&Target> = targets.iter().collect();
        for mode in [Mode::NonStream, Mode::Stream] {
            let cells = load::compare(
                &client,
                &targets,
                mode,
                opts.ledger_conc,
                warmup,
                cell,
                opts.rounds,
            )
            .await;
            for ((name, _), cell) in servers.iter().zip(cells) {
                eprintln!(
                    "bench: ledger {name} {} c={}: {:.0} req/s",
                    mode.name(),
                    opts.ledger_conc,
                    cell.rps()
                );
                report.ledger.push(LedgerRow {
                    ledger: name.clone(),
                    mode,
                    conc: opts.ledger_conc,
                    cell,
                });
            }
        }
        drop(servers);
        if let Ok(schema) = pg {
            schema.drop().await;
        }
        drop(sqlite);
        drop(sqlite_normal);
    }

    if opts.sections.memory {
        let delay = Duration::from_millis(opts.event_delay_ms);
        // Fresh servers: the memory usage log and ledger of the core run would be counted too.
        let relay = spawn("relay-mem".into(), "relay", Some("memory".into())).await?;
        let proxy = spawn("proxy-mem".into(), "proxy", None).await?;
        for server in [&relay, &proxy] {
            let held = memory::hold_open(&client, server, &vendor.state, opts.streams, delay).await;
            eprintln!(
                "bench: {} with {} open streams: {:.1} MB (idle {:.1} MB)",
                server.name,
                held.peak_open,
                procs::mb(held.rss_open),
                procs::mb(held.rss_idle)
            );
            report.memory.push(MemoryRow {
                server: server.name.clone(),
                held,
            });
        }
    }

    drop(vendor);
    let text = report.render();
    println!("{text}");
    if let Some(path) = &opts.out {
        std::fs::write(path, &text).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("bench: report written to {}", path.display());
    }
    Ok(())
}

/// Two servers compared cell by cell (every mode and concurrency of `opts`), taking turns.
/// `progress` names a cell's throughputs for stderr.
async fn compare_pair(
    client: &reqwest::Client,
    [a, b]: [&Server; 2],
    opts: &Opts,
    warmup: Duration,
    cell: Duration,
    progress: impl Fn(&str, usize, f64, f64) -> String,
) -> Vec<CorePair> {
    let mut pairs = Vec::new();
    for mode in [Mode::NonStream, Mode::Stream] {
        for &c in &opts.conc {
            let targets = [&Target::of(a), &Target::of(b)];
            let [x, y]: [load::Cell; 2] =
                load::compare(client, &targets, mode, c, warmup, cell, opts.rounds)
                    .await
                    .try_into()
                    .expect("two cells");
            eprintln!("{}", progress(mode.name(), c, x.rps(), y.rps()));
            pairs.push(CorePair {
                mode,
                conc: c,
                proxy: x,
                relay: y,
            });
        }
    }
    pairs
}
