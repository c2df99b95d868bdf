//! The `sub2api` binary itself, as an operator runs it: seed file, SQLite in the working
//! directory, graceful stop, `kill -9` with a hold in flight, restart, `ledger verify`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use sub2api_axum::mock::{MockVendor, Scope};

struct Relay {
    child: Child,
    base: String,
}

fn workdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sub2api-bin-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_config(dir: &Path, vendor: &str) {
    let toml = format!(
        r#"
listen = "127.0.0.1:0"

[[groups]]
name = "default"

[[accounts]]
name = "a1"
api_key = "acct-1"
base_url = "{vendor}"
concurrency = 8
groups = ["default"]

[[users]]
email = "alice@example.com"
balance_usd = "10.00"

[[keys]]
user = "alice@example.com"
group = "default"
key = "sk-bin-alice"
"#
    );
    std::fs::write(dir.join("sub2api.toml"), toml).unwrap();
}

/// Starts `sub2api serve` in `dir` and waits for its "listening" line (a signal, not a sleep).
fn start(dir: &Path) -> Relay {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sub2api"))
        .arg("serve")
        .current_dir(dir)
        .env("SUB2API_LOG", "warn")
        .env_remove("SUB2API_LISTEN")
        .env_remove("SUB2API_DATABASE_URL")
        .env_remove("SUB2API_MASTER_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let base = loop {
        let line = lines.next().expect("relay printed its address").unwrap();
        if let Some(url) = line.strip_prefix("sub2api listening on ") {
            break url.to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Relay { child, base }
}

async fn usage(client: &reqwest::Client, base: &str) -> serde_json::Value {
    let res = client
        .get(format!("{base}/v1/usage"))
        .header("x-api-key", "sk-bin-alice")
        .send()
        .await
        .unwrap();
    serde_json::from_slice(&res.bytes().await.unwrap()).unwrap()
}

fn body(stream: bool, n: u32) -> String {
    serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 256,
        "stream": stream,
        "messages": [{"role": "user", "content": format!("hello {n}")}],
    })
    .to_string()
}

#[tokio::test]
async fn the_binary_survives_kill_9_with_a_hold_in_flight_and_keeps_every_charge() {
    let vendor = MockVendor::start().await;
    let dir = workdir();
    write_config(&dir, &vendor.base_url());
    let client = sub2api_core::layer::upstream::Upstream::default_client();

    let mut relay = start(&dir);
    assert!(
        dir.join("data/sub2api.db").exists(),
        "SQLite file in ./data by default"
    );
    assert!(
        dir.join("data/master.key").exists(),
        "master key generated beside it"
    );
    let res = client
        .post(format!("{}/v1/messages", relay.base))
        .header("x-api-key", "sk-bin-alice")
        .body(body(false, 1))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let charged: serde_json::Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    let usage_1 = &charged["usage"];
    // claude-sonnet-4-5: $3/M in, $15/M out.
    let cost_nanos = usage_1["input_tokens"].as_i64().unwrap() * 3000
        + usage_1["output_tokens"].as_i64().unwrap() * 15000;
    let after_first = 10_000_000_000i64 - cost_nanos;

    // A second request holds money and waits at the vendor: kill -9 the relay right then.
    vendor.close_gate(Scope::AllKeys);
    let pending = {
        let client = client.clone();
        let url = format!("{}/v1/messages", relay.base);
        tokio::spawn(async move {
            client
                .post(url)
                .header("x-api-key", "sk-bin-alice")
                .body(body(true, 2))
                .send()
                .await
        })
    };
    vendor.wait_for_requests(2).await;
    let held = usage(&client, &relay.base).await;
    let available =
        sub2api_core::money::Money::parse_usd(held["balance_usd"].as_str().unwrap()).unwrap();
    assert!(
        available.nanos() < after_first,
        "the hold is visible: {held}"
    );
    relay.child.kill().unwrap(); // SIGKILL
    relay.child.wait().unwrap();
    let _ = pending.await;
    vendor.open_all_gates();

    // Restart: the dead request's hold is released, the settled charge kept, nothing reset.
    let mut relay = start(&dir);
    let u = usage(&client, &relay.base).await;
    let want = format!("{}", sub2api_core::money::Money::from_nanos(after_first));
    assert_eq!(u["balance_usd"], want, "{u}");

    // Graceful stop: SIGTERM, exit 0.
    let pid = relay.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        relay.child.wait().unwrap().success(),
        "clean exit on SIGTERM"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_sub2api"))
        .args(["ledger", "verify"])
        .current_dir(&dir)
        .env("SUB2API_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ledger ok"));
    let _ = std::fs::remove_dir_all(&dir);
}
