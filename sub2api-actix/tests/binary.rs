//! The `sub2api-actix` binary: boots from a config file plus `SUB2API_*` overrides, prints the
//! keys it generated, relays, and stops cleanly on SIGTERM.

#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use sub2api_axum::mock::MockVendor;
use sub2api_core::layer::upstream::Upstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_the_config_and_stops_on_sigterm() {
    let vendor = MockVendor::start().await;
    let config = format!(
        r#"
database_url = "memory"
[[groups]]
name = "g"
[[accounts]]
name = "mock"
api_key = "sk-mock"
base_url = "{}"
groups = ["g"]
[[users]]
email = "bin@example.com"
balance_usd = "3.00"
[[keys]]
user = "bin@example.com"
group = "g"
"#,
        vendor.base_url()
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let path = std::env::temp_dir().join(format!(
        "sub2api-actix-bin-{}-{nanos}.toml",
        std::process::id()
    ));
    std::fs::write(&path, config).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_sub2api-actix"))
        .arg("--config")
        .arg(&path)
        .env("SUB2API_LISTEN", "127.0.0.1:0")
        .env("SUB2API_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start sub2api-actix");
    // Read stdout on a thread; hand over the generated key and the address as they appear.
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let (mut key, mut base) = (None, None);
    while key.is_none() || base.is_none() {
        let line = rx
            .recv()
            .await
            .expect("the binary printed its key and address");
        if let Some(k) = line.strip_prefix("generated key `seed-g` for bin@example.com: ") {
            key = Some(k.to_owned());
        } else if let Some(addr) = line.strip_prefix("sub2api-actix listening on ") {
            base = Some(addr.to_owned());
        }
    }
    let (key, base) = (key.unwrap(), base.unwrap());
    std::fs::remove_file(&path).unwrap();

    let client = Upstream::default_client();
    let res = client
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", &key)
        .header("content-type", "application/json")
        .body(r#"{"model":"claude-sonnet-4-5","max_tokens":32,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(text.contains("event: message_stop"), "{text}");
    assert_eq!(
        vendor.last_request().unwrap().api_key.as_deref(),
        Some("sk-mock")
    );
    let usage = client
        .get(format!("{base}/v1/usage"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    let usage: serde_json::Value = serde_json::from_slice(&usage.bytes().await.unwrap()).unwrap();
    assert_ne!(
        usage["balance_usd"], "3.00",
        "the request was charged: {usage}"
    );
    drop(client);

    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    reader.join().unwrap();
}
