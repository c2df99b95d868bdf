//! Runs every example binary the way a reader would (`cargo run -p sub2api-examples --bin ...`)
//! and checks that it exits by itself, successfully, having printed what it promises.

use std::process::{Command, Output};

fn run(exe: &str) -> String {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(exe).output().expect("run the example");
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    assert!(
        status.success(),
        "{exe} failed ({status})\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&stderr)
    );
    stdout
}

/// The USD amount printed after `marker` on the first line containing it.
fn usd_after(out: &str, marker: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no `{marker}` in:\n{out}"));
    let rest = &line[line.find(marker).unwrap() + marker.len()..];
    rest.split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("no amount in `{line}`"))
}

#[test]
fn custom_relay_serves_both_requests_and_charges() {
    let out = run(env!("CARGO_BIN_EXE_custom_relay"));
    assert!(
        out.contains("non-stream reply: HTTP 200 OK: \"Hello from the sub2api mock vendor"),
        "{out}"
    );
    assert!(out.contains("stream reply: HTTP 200 OK, "), "{out}");
    let left = usd_after(&out, "balance: ");
    assert!(left > 0.0 && left < 1.0, "{out}");
    assert!(out.contains("0.00 USD held"), "{out}");
}

#[test]
fn metering_only_shows_the_balance_decreasing() {
    let out = run(env!("CARGO_BIN_EXE_metering_only"));
    assert!(out.contains("GET / -> my existing app"), "{out}");
    let before = usd_after(&out, "balance before: ");
    let after1 = usd_after(
        &out,
        "request 1 (stream: false): HTTP 200 OK; balance after: ",
    );
    let after2 = usd_after(
        &out,
        "request 2 (stream: true): HTTP 200 OK; balance after: ",
    );
    assert_eq!(before, 2.0);
    assert!(before > after1 && after1 > after2, "{out}");
    assert!(out.contains("unknown key -> HTTP 401"), "{out}");
    assert!(out.contains("vendor saw 2 requests"), "{out}");
}

#[test]
fn actix_embed_serves_its_own_route_and_the_relay_under_ai() {
    let out = run(env!("CARGO_BIN_EXE_actix_embed"));
    assert!(out.contains("GET / -> my actix app"), "{out}");
    assert!(
        out.contains(r#"GET /ai/healthz -> {"status":"ok"}"#),
        "{out}"
    );
    assert!(
        out.contains("POST /ai/v1/messages -> HTTP 200 OK: \"Hello from the sub2api mock vendor"),
        "{out}"
    );
    let left = usd_after(&out, "GET /ai/v1/usage -> balance ");
    assert!(left > 0.0 && left < 5.0, "{out}");
    assert!(out.contains("the vendor saw /v1/messages\n"), "{out}");
}
