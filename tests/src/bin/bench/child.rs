//! The servers under test, each run as a child process of the bench (`bench --child ...`).
//!
//! A child process holds only the server, so its VmRSS is the server's memory, and the two
//! servers compete for the CPU with the same load generator and mock in the parent. A child binds
//! `127.0.0.1:0`, prints `LISTENING <addr>` on stdout, and serves until its stdin closes (the
//! parent dropped it, or died) or it is killed.
//!
//! - `--child relay-actix --vendor URL [--db …]`: the same relay served by the actix adapter.
//! - `--child relay --vendor URL --db memory|sqlite://…[#normal]|postgres://…`: the full relay, booted
//!   through `sub2api_axum::boot` exactly as the end-to-end tests do (4 accounts at the mock,
//!   a user with 1,000,000 USD, billing on), served by `sub2api_axum::router`. `--users N` seeds
//!   N such users, each with its own key.
//! - `--child proxy --vendor URL`: a bare pass-through on the same stack (axum + the relay's
//!   pooled reqwest client): the same header whitelist, body read whole, response body streamed
//!   back; no auth, no scheduling, no metering, no ledger. The floor the relay is compared to.
//!
//! - `--child mock`: the mock vendor alone (bounded records), for profiling a server by hand
//!   (`bench --child mock`, then `bench --child relay --vendor <its address>`, then perf/curl).
//!
//! `--nagle` (all): leave Nagle's algorithm on for accepted sockets (see `net.rs`).

use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::{HeaderName, HeaderValue, StatusCode};
use sub2api_axum::boot::boot;
use sub2api_core::layer::upstream::Upstream;
use sub2api_core::money::Money;
use sub2api_core::protocol::anthropic;
use sub2api_tests::{AccountSpec, Spec, config_for};

/// Accounts in the relay's pool, all pointing at the mock.
const ACCOUNTS: usize = 4;
/// Per-account concurrency: high enough that the 1,000-stream memory test never queues.
const ACCOUNT_CONCURRENCY: u32 = 1024;
/// The seeded balance, so no request of a run is refused for money.
const BALANCE_USD: i64 = 1_000_000;
/// Same as the relay's default `max_body_bytes`.
const MAX_BODY: usize = 32 * 1024 * 1024;

pub fn main(args: &[String]) -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SUB2API_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sqlx=warn")),
        )
        .init();
    let kind = args.first().map(String::as_str);
    let flag = |name: &str| args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone());
    let nagle = args.iter().any(|a| a == "--nagle");
    if kind == Some("mock") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        return match rt.block_on(serve(crate::net::mock_app(), nagle)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench child: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(vendor) = flag("--vendor") else {
        eprintln!("bench child: --vendor URL is required");
        return ExitCode::from(2);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async {
        let db = flag("--db").unwrap_or_else(|| "memory".into());
        let users = flag("--users").and_then(|n| n.parse().ok()).unwrap_or(1);
        let app = match kind {
            Some("relay") => sub2api_axum::router(&relay(&vendor, &db, users).await?),
            Some("relay-actix") => {
                // The same relay served by the actix adapter: 2 actix workers poll the requests,
                // this runtime is the relay's home (its drains, settlements and streams' upstream
                // connections must outlive actix's per-worker runtimes), as the `sub2api-actix`
                // binary does.
                let relay = relay(&vendor, &db, users).await?;
                let listener =
                    std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
                let options = sub2api_actix::ServeOptions {
                    workers: 2,
                    ..Default::default()
                };
                let server = sub2api_actix::spawn_with(relay, listener, options)
                    .map_err(|e| e.to_string())?;
                announce(server.addr())?;
                std::future::pending::<()>().await;
                drop(server);
                return Ok(());
            }
            Some("proxy") => proxy_app(&vendor),
            _ => return Err("bench child: relay, relay-actix, proxy or mock".to_owned()),
        };
        serve(app, nagle).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench child: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Binds, announces the address to the parent, and serves until stdin closes.
async fn serve(app: Router, nagle: bool) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    announce(listener.local_addr().map_err(|e| e.to_string())?)?;
    crate::net::serve(listener, app, nagle)
        .await
        .map_err(|e| e.to_string())
}

/// Tells the parent where we listen, and exits when it closes our stdin (it is done with us, or
/// gone).
fn announce(addr: std::net::SocketAddr) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "LISTENING {addr}")
        .and_then(|()| out.flush())
        .map_err(|e| e.to_string())?;
    drop(out);
    std::thread::spawn(|| {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 256];
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    Ok(())
}

async fn relay(vendor: &str, db: &str, users: usize) -> Result<sub2api_core::relay::Relay, String> {
    let spec = Spec {
        accounts: (1..=ACCOUNTS)
            .map(|i| AccountSpec {
                concurrency: ACCOUNT_CONCURRENCY,
                ..AccountSpec::new(i)
            })
            .collect(),
        balance: Money::usd(BALANCE_USD),
        // `sqlite://…#normal`: the same file-backed store with `sqlite_synchronous = "normal"`.
        database_url: db.trim_end_matches("#normal").to_owned(),
        ..Spec::default()
    };
    let mut config = config_for(&spec, vendor);
    if db.ends_with("#normal") {
        config.sqlite_synchronous = Some("normal".into());
    }
    // `--users N`: N-1 more users like the tests' one, each with its own key (see load::api_key),
    // to see whether a ledger is limited by one hot wallet or by its per-request cost.
    let (user, key) = (config.users[0].clone(), config.keys[0].clone());
    for i in 1..users {
        let mut u = user.clone();
        u.email = format!("bench-{i}@example.com");
        let mut k = key.clone();
        k.user = u.email.clone();
        k.key = Some(crate::load::api_key(i));
        k.name = Some(format!("bench-{i}"));
        config.users.push(u);
        config.keys.push(k);
    }
    let booted = boot(config).await.map_err(|e| format!("relay boot: {e}"))?;
    let relay = booted.relay.clone();
    // The child exits by process::exit; keep the store and relay alive until then.
    std::mem::forget(booted);
    Ok(relay)
}

#[derive(Clone)]
struct Proxy {
    client: reqwest::Client,
    vendor: Arc<str>,
    key: HeaderValue,
}

fn proxy_app(vendor: &str) -> Router {
    let proxy = Proxy {
        client: Upstream::default_client(),
        vendor: Arc::from(vendor.trim_end_matches('/')),
        key: HeaderValue::from_static("acct-proxy"),
    };
    Router::new()
        .route("/v1/messages", post(forward))
        .with_state(proxy)
}

/// The whole proxy: what the relay's upstream layer does, without anything around it.
async fn forward(State(p): State<Proxy>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let mut headers = anthropic::upstream_headers(&parts.headers);
    headers.insert(HeaderName::from_static("x-api-key"), p.key.clone());
    let path = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let url = format!("{}{path}", p.vendor);
    match p
        .client
        .request(parts.method, url)
        .headers(headers)
        .body(body)
        .send()
        .await
    {
        Ok(res) => {
            let res: http::Response<reqwest::Body> = res.into();
            let (up, body) = res.into_parts();
            let mut out = Response::new(Body::new(body));
            *out.status_mut() = up.status;
            for name in anthropic::RETURNED_HEADERS {
                if let Some(v) = up.headers.get(*name) {
                    out.headers_mut()
                        .insert(HeaderName::from_static(name), v.clone());
                }
            }
            out
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
