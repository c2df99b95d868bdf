//! # actix_embed: the full relay inside an existing actix-web app
//!
//! Shows an actix-web application with its own routes that mounts the complete relay (auth,
//! holds, metering, scheduling, failover; every route of `Relay::ROUTES`) under `/ai` with
//! `sub2api_actix::scope`. Clients point their SDK at `http://host/ai` (e.g.
//! `ANTHROPIC_BASE_URL=http://127.0.0.1:8080/ai`); the relay sees `/v1/messages`.
//!
//! The relay is booted the way the server binaries do it (`sub2api_axum::boot`, here with the
//! in-memory store) against the built-in mock vendor. The example asks its own route and the
//! relay, prints the answers, stops the server gracefully and exits:
//!
//! ```text
//! cargo run -p sub2api-examples --bin actix_embed
//! ```

use actix_web::{App, HttpResponse, HttpServer, web};
use sub2api_axum::boot::boot;
use sub2api_axum::mock::MockVendor;
use sub2api_core::config::Config;
use sub2api_core::layer::upstream::Upstream;

const CONFIG: &str = r#"
database_url = "memory"
[[groups]]
name = "team"
[[accounts]]
name = "mock-1"
api_key = "sk-mock-1"
base_url = "VENDOR"
groups = ["team"]
[[users]]
email = "team@example.com"
balance_usd = "5.00"
[[keys]]
user = "team@example.com"
group = "team"
key = "sk-team-example"
"#;

async fn index() -> HttpResponse {
    HttpResponse::Ok().body("my actix app; the AI relay lives under /ai")
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let vendor = MockVendor::start().await;
    let config: Config = toml::from_str(&CONFIG.replace("VENDOR", &vendor.base_url()))?;
    let booted = boot(config).await?;

    let relay = booted.relay.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = HttpServer::new(move || {
        App::new()
            .route("/", web::get().to(index))
            .service(sub2api_actix::scope("/ai", relay.clone()))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    let handle = server.handle();
    let running = actix_web::rt::spawn(server);

    let client = Upstream::default_client();
    println!(
        "GET / -> {}",
        client.get(format!("{base}/")).send().await?.text().await?
    );
    println!(
        "GET /ai/healthz -> {}",
        client
            .get(format!("{base}/ai/healthz"))
            .send()
            .await?
            .text()
            .await?
    );
    let body = serde_json::json!({
        "model": "claude-sonnet-4-5", "max_tokens": 64,
        "messages": [{ "role": "user", "content": "Hello from actix!" }],
    });
    let res = client
        .post(format!("{base}/ai/v1/messages"))
        .header("x-api-key", "sk-team-example")
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await?;
    let status = res.status();
    let reply: serde_json::Value = serde_json::from_slice(&res.bytes().await?)?;
    println!(
        "POST /ai/v1/messages -> HTTP {status}: {}",
        reply["content"][0]["text"]
    );
    if !status.is_success() {
        return Err(format!("relay refused: {reply}").into());
    }
    let usage = client
        .get(format!("{base}/ai/v1/usage"))
        .header("x-api-key", "sk-team-example")
        .send()
        .await?;
    let usage: serde_json::Value = serde_json::from_slice(&usage.bytes().await?)?;
    println!(
        "GET /ai/v1/usage -> balance {} USD",
        usage["balance_usd"].as_str().unwrap_or("?")
    );
    println!(
        "the vendor saw {}",
        vendor.last_request().map(|r| r.path).unwrap_or_default()
    );

    // Stop accepting, let open responses finish, then wait for the relay's settlements.
    handle.stop(true).await;
    running.await??;
    booted.shutdown().await;
    Ok(())
}
