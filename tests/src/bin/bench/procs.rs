//! Child server processes and their memory.
//!
//! Each server under test is this binary re-executed with `--child ...` (see `child.rs`). The
//! parent keeps the child's stdin open; dropping a [`Server`] closes it (the child exits) and then
//! kills and reaps the child, so no server outlives the run even if the parent fails midway.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

/// A fixed master key for SQL-backed children, so boot neither writes `master.key` nor warns.
const MASTER_KEY: &str = "0707070707070707070707070707070707070707070707070707070707070707";

/// A running child server.
pub struct Server {
    pub name: String,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub pid: u32,
    /// Users (each with a key) the server was seeded with; 1 for the proxy.
    pub users: usize,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Server {
    /// Starts `bench --child <args>` and waits (bounded) for its `LISTENING <addr>` line.
    pub async fn spawn(name: &str, args: &[String]) -> Result<Server, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
        let mut child = Command::new(exe)
            .arg("--child")
            .args(args)
            .env("SUB2API_MASTER_KEY", MASTER_KEY)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn {name}: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let pid = child.id();
        // Reading the first line blocks: do it off the runtime, with a bound.
        let line = tokio::time::timeout(
            Duration::from_secs(120),
            tokio::task::spawn_blocking(move || {
                let mut lines = BufReader::new(stdout).lines();
                lines.next().transpose().map_err(|e| e.to_string())
            }),
        )
        .await;
        let mut server = Server {
            name: name.to_owned(),
            base: String::new(),
            pid,
            users: 1,
            child,
            stdin,
        };
        let addr = match line {
            Ok(Ok(Ok(Some(line)))) => line.strip_prefix("LISTENING ").map(str::to_owned),
            _ => None,
        };
        match addr {
            Some(addr) => {
                server.base = format!("http://{}", addr.trim());
                eprintln!("bench: {name} (pid {pid}) listening at {}", server.base);
                Ok(server)
            }
            None => Err(format!(
                "{name}: the child did not announce its address (see its stderr above)"
            )),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident and peak resident memory of a process, in bytes, from `/proc/<pid>/status`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rss {
    pub rss: u64,
    pub hwm: u64,
}

pub fn rss(pid: u32) -> Rss {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    Rss {
        rss: field("VmRSS:"),
        hwm: field("VmHWM:"),
    }
}

/// Bytes as MB (10^6), the unit of the targets.
pub fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// CPU time (user + system, all threads) a process has used so far, from `/proc/<pid>/stat`.
/// Under contention from other processes, CPU per request is steadier than throughput.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
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
